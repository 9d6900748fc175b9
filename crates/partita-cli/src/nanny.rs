//! The nanny: `partita worker` as a supervisor of its own worker process (Dask's `Nanny`).
//!
//! Key decisions:
//! - **The same command line, once more, as the child** (`--no-nanny` appended; the
//!   program by the path it was invoked with), so a custom worker binary (one linking
//!   more ops) or `python -m partita worker` supervises itself without knowing how it was
//!   started. The child gets a pipe on stdin that only
//!   the nanny holds and, on Linux, dies with it (`PR_SET_PDEATHSIG`, set by the child when
//!   `PARTITA_NANNY_PID` names its parent): no worker outlives its nanny.
//! - **Restart what crashed, or was told to, not what stopped.** A worker the scheduler
//!   restarts (`Client::restart`) exits with code 75 and is started again at once. A
//!   child killed by a signal (the OOM killer, a segfault, the nanny's own memory check)
//!   or ending in a Rust panic (exit code 101) is started again, after a pause that
//!   doubles from 1 s to 30 s while it keeps dying within a minute. A child that exits by itself (0: retired; another code: an error such as an
//!   unreachable scheduler, which a restart would not fix) ends the nanny with its code.
//! - **Memory is watched from outside**: with a memory limit, the child's resident memory
//!   is sampled every 100 ms and the child killed above the terminate fraction (Dask's
//!   0.95): the worker spills and pauses by itself below that, but one task can blow
//!   through everything, and the machine should not swap or kill something else.
//! - **Signals go to the worker as a retirement**: SIGINT/SIGTERM become SIGTERM for the
//!   child, which hands its values off and exits; a second signal kills it.
//! - **A worker whose event loop stops turning is killed and started again**: the
//!   child's loop sends a datagram (its pid and a secret the nanny gave it) to the
//!   nanny's socket every second it runs (`WorkerOptions::liveness`); past `--liveness-timeout` without one (a task run on
//!   the loop that never returns, a deadlock) the nanny kills it. The check starts with
//!   the first beat, so a slow start (imports, reaching the scheduler) is not judged;
//!   the scheduler has written such a worker off already (its heartbeats stopped too),
//!   but only the nanny can give the machine's share of the cluster back.
//! - **A worker that lost its scheduler comes back**: the connection broke without the
//!   scheduler closing it on purpose (it wrote the worker off, a network fault, a crash),
//!   so the child exits with [`SCHEDULER_LOST_EXIT_CODE`] and is started again after the
//!   usual pause. That new child tries to join for `--death-timeout`, reading the
//!   cluster file again before each try (a scheduler started again may listen on another
//!   port, with new credentials unless `--reuse-credentials`): if no scheduler answers,
//!   that error ends the nanny. A scheduler shutting down,
//!   retiring the worker or refusing its messages closes the connection on purpose: the
//!   worker ends with an error, as before, and so does the nanny.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How the nanny watches its worker.
#[derive(Clone, Debug)]
pub(crate) struct NannyOptions {
    /// The worker's memory limit in bytes (0: none, nothing watched).
    pub memory_limit: u64,
    /// Kill the worker above this fraction of `memory_limit` (0: never).
    pub terminate: f64,
    /// Stop (and kill the worker) when stdin reaches its end.
    pub watch_stdin: bool,
    /// How long the worker may take to retire after a signal before it is killed.
    pub retire_timeout: Duration,
    /// How long the worker's event loop may go without a beat before it is killed
    /// (zero: never).
    pub liveness_timeout: Duration,
}

/// The environment variable naming the nanny's pid for its child.
pub(crate) const NANNY_PID: &str = "PARTITA_NANNY_PID";
/// The environment variable giving the child its nanny's identity, which it tells the
/// scheduler: a new worker from the same nanny replaces the old one at once.
pub(crate) const NANNY_ID: &str = "PARTITA_NANNY_ID";

/// The environment variable naming the nanny's socket for the child's beats.
pub(crate) const NANNY_LIVENESS: &str = "PARTITA_NANNY_LIVENESS";
/// The environment variable giving the child the secret its beats carry (hex).
pub(crate) const NANNY_SECRET: &str = "PARTITA_NANNY_SECRET";

/// The worker's exit code when the scheduler restarts it (`Client::restart`): started
/// again at once (EX_TEMPFAIL).
pub(crate) const RESTART_EXIT_CODE: i32 = 75;

/// The worker's exit code when its connection to the scheduler broke without the
/// scheduler closing it: started again after a pause, as after a crash (EX_UNAVAILABLE).
pub(crate) const SCHEDULER_LOST_EXIT_CODE: i32 = 69;

/// How often the nanny looks at the time since the last beat.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// A worker that lived this long before dying is restarted after the first pause again.
const LIVED_LONG: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What ended one run of the child.
enum Ended {
    /// It exited (or died) by itself, or was killed for its memory.
    Exited(ExitStatus),
    /// The nanny was told to stop; the exit code to end with.
    Stopped(i32),
}

/// Supervise worker processes until one exits by itself or the nanny is stopped; the
/// process's exit code.
pub(crate) async fn run(options: NannyOptions) -> i32 {
    let mut stdin = std::pin::pin!(crate::stdin_end(options.watch_stdin));
    let mut pause = FIRST_PAUSE;
    // Unique while this nanny lives (a pid alone may be reused by another machine's).
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = format!("{}-{}", std::process::id(), since.as_nanos());
    let beats = match options.liveness_timeout.is_zero() {
        true => None,
        false => Beats::bind(&id),
    };
    loop {
        let started = Instant::now();
        let status = match supervise_once(&options, &id, beats.as_ref(), stdin.as_mut()).await {
            Ok(Ended::Exited(status)) => status,
            Ok(Ended::Stopped(code)) => return code,
            Err(e) => {
                tracing::error!("nanny: cannot start the worker process: {e}");
                return 1;
            }
        };
        if status.code() == Some(RESTART_EXIT_CODE) {
            tracing::info!("nanny: the cluster restarts; starting a fresh worker process");
            pause = FIRST_PAUSE;
            continue;
        }
        if !crashed(&status) {
            tracing::info!("nanny: the worker process exited ({status}); stopping");
            return status.code().unwrap_or(1);
        }
        if started.elapsed() >= LIVED_LONG {
            pause = FIRST_PAUSE;
        }
        tracing::warn!(
            "nanny: the worker process died ({status}); starting a new one in {:.0?}",
            pause
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            why = crate::signal() => {
                tracing::info!("nanny: {why}; stopping");
                return 0;
            }
            _ = stdin.as_mut() => return 0,
        }
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Died of a signal or a panic (exit code 101), or lost its scheduler: worth starting
/// again.
fn crashed(status: &ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal().is_some() {
            return true;
        }
    }
    matches!(status.code(), Some(101 | SCHEDULER_LOST_EXIT_CODE))
}

/// The nanny's datagram socket for its children's beats: in Linux's abstract namespace
/// (nothing on disk, gone with the process however it ends), elsewhere a file in the
/// temporary folder removed when dropped.
struct Beats {
    socket: tokio::net::UnixDatagram,
    /// What the child is told: `@name` (abstract) or a path.
    address: String,
    /// Random bytes only the nanny and its child know, which a beat must carry after the
    /// pid: anyone may send to the socket (an abstract name has no file permissions), so
    /// without them another user's process could keep a stuck worker alive.
    secret: [u8; SECRET_BYTES],
    /// The file to remove, if any.
    file: Option<std::path::PathBuf>,
}

impl Beats {
    /// A socket named by the nanny's `id`; `None` (with a warning: the worker then runs
    /// unwatched) if it cannot be made.
    fn bind(id: &str) -> Option<Beats> {
        let bound = Self::try_bind(id).and_then(|mut beats| {
            getrandom::fill(&mut beats.secret).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(beats)
        });
        match bound {
            Ok(beats) => Some(beats),
            Err(e) => {
                tracing::warn!(
                    "nanny: cannot make a socket for the worker's beats ({e}); its event \
                     loop is not watched"
                );
                None
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn try_bind(id: &str) -> std::io::Result<Beats> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("partita-nanny-{id}");
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&address)?;
        socket.set_nonblocking(true)?;
        Ok(Beats {
            socket: tokio::net::UnixDatagram::from_std(socket)?,
            address: format!("@{name}"),
            secret: [0; SECRET_BYTES],
            file: None,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn try_bind(id: &str) -> std::io::Result<Beats> {
        let path = std::env::temp_dir().join(format!("partita-nanny-{id}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        Ok(Beats {
            socket,
            address: path.display().to_string(),
            secret: [0; SECRET_BYTES],
            file: Some(path),
        })
    }

    /// Whether a beat from `pid` is queued now, reading all that is queued (with a pid
    /// no child has, 0: dropping beats of children that are gone).
    fn queued_from(&self, pid: u32) -> bool {
        let mut buf = [0u8; 64];
        let mut found = false;
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            found |= self.is_beat_of(&buf[..n], pid);
        }
        found
    }

    /// A child's beat is its pid, four bytes little-endian, then the secret.
    fn is_beat_of(&self, datagram: &[u8], pid: u32) -> bool {
        datagram.len() == 4 + SECRET_BYTES
            && datagram[..4] == pid.to_le_bytes()
            && datagram[4..] == self.secret
    }

    /// The next beat from the process `pid` (others are ignored); never, without `beats`.
    async fn from(beats: Option<&Beats>, pid: u32) {
        let Some(beats) = beats else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 64];
        loop {
            if let Ok(n) = beats.socket.recv(&mut buf).await
                && beats.is_beat_of(&buf[..n], pid)
            {
                return;
            }
        }
    }
}

/// Bytes of the secret a beat carries.
const SECRET_BYTES: usize = 16;

impl Drop for Beats {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Start one worker process and watch it until it ends or the nanny is told to stop.
async fn supervise_once(
    options: &NannyOptions,
    id: &str,
    beats: Option<&Beats>,
    mut stdin: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> std::io::Result<Ended> {
    // The program as it was invoked, not `current_exe` (which resolves symbolic links): a
    // virtualenv's `python` finds its packages only when run by its own path.
    let exe = match std::env::args_os().next() {
        Some(program) if !program.is_empty() => std::path::PathBuf::from(program),
        _ => std::env::current_exe()?,
    };
    let mut command = tokio::process::Command::new(exe);
    if let Some(beats) = beats {
        beats.queued_from(0);
        command.env(NANNY_LIVENESS, &beats.address);
        let secret: String = beats.secret.iter().map(|b| format!("{b:02x}")).collect();
        command.env(NANNY_SECRET, secret);
    }
    let mut child = command
        .args(std::env::args_os().skip(1))
        .arg("--no-nanny")
        .env(NANNY_PID, std::process::id().to_string())
        .env(NANNY_ID, id)
        // A pipe only this process holds: the child's `--exit-on-stdin-close` (when
        // given) then follows the nanny, not whoever started it.
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let _pipe = child.stdin.take();
    let pid = child.id().unwrap_or(0);
    tracing::info!("nanny: worker process {pid} started");
    let limit = options.memory_limit as f64 * options.terminate;
    let watch_memory = options.memory_limit > 0 && options.terminate > 0.0;
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Judged from the first beat on: starting (imports, joining) is not.
    let mut last_beat: Option<Instant> = None;
    let mut last_check = Instant::now();
    // One listener for the whole run: none is missed between turns of the loop.
    let mut stop = std::pin::pin!(crate::signal());
    loop {
        tokio::select! {
            status = child.wait() => return Ok(Ended::Exited(status?)),
            () = Beats::from(beats, pid) => last_beat = Some(Instant::now()),
            _ = check.tick(), if last_beat.is_some() => {
                // The nanny itself was stopped (SIGSTOP, a paused machine): the child gets
                // a fresh period, not the blame.
                if last_check.elapsed() > 4 * LIVENESS_CHECK {
                    last_beat = Some(Instant::now());
                }
                last_check = Instant::now();
                if beats.is_some_and(|b| b.queued_from(pid)) {
                    last_beat = Some(Instant::now());
                }
                let silent = last_beat.map_or(Duration::ZERO, |t| t.elapsed());
                if silent > options.liveness_timeout {
                    tracing::warn!(
                        "nanny: worker process {pid}'s event loop has not turned for {:.1} s \
                         (a task blocking it, or a deadlock); killing it",
                        silent.as_secs_f64()
                    );
                    let _ = child.start_kill();
                    return Ok(Ended::Exited(child.wait().await?));
                }
            }
            _ = sample.tick(), if watch_memory => {
                let rss = partita_distributed::rss_of(pid);
                if rss as f64 > limit {
                    tracing::warn!(
                        "nanny: worker process {pid} uses {} MiB, over {:.0}% of its {} MiB \
                         memory limit; killing it",
                        rss >> 20,
                        options.terminate * 100.0,
                        options.memory_limit >> 20
                    );
                    let _ = child.start_kill();
                    return Ok(Ended::Exited(child.wait().await?));
                }
            }
            why = stop.as_mut() => {
                tracing::info!("nanny: {why}; asking worker process {pid} to retire");
                return Ok(Ended::Stopped(retire(&mut child, pid, options).await));
            }
            _ = stdin.as_mut() => {
                tracing::info!("nanny: standard input closed; stopping the worker");
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(Ended::Stopped(0));
            }
        }
    }
}

/// Pass the stop on to the child as SIGTERM (a graceful retirement) and wait for it: at
/// most its retirement timeout and a little more, or until a second signal kills it.
async fn retire(child: &mut tokio::process::Child, pid: u32, options: &NannyOptions) -> i32 {
    if let Err(e) = terminate(pid) {
        tracing::warn!("nanny: cannot signal worker process {pid}: {e}; killing it");
        let _ = child.start_kill();
    }
    let backstop = options.retire_timeout + Duration::from_secs(5);
    let killed = tokio::select! {
        status = child.wait() => return status.map_or(1, |s| s.code().unwrap_or(1)),
        why = crate::signal() => format!("{why} again"),
        _ = tokio::time::sleep(backstop) => format!("not retired within {backstop:?}"),
    };
    tracing::warn!("nanny: {killed}; killing worker process {pid}");
    let _ = child.start_kill();
    let _ = child.wait().await;
    1
}

/// Send SIGTERM to `pid`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours; the
    // child is not reaped yet (we hold it), so the pid is still its own.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn terminate(_pid: u32) -> std::io::Result<()> {
    Err(std::io::Error::other("signals need Unix"))
}

/// In a worker started by a nanny: die with it (Linux), and stop at once if it is gone
/// already (the race before the first call).
#[allow(unsafe_code)]
pub(crate) fn follow_nanny() {
    let Some(nanny) = std::env::var(NANNY_PID)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if rc != 0 {
            tracing::warn!(
                "cannot tie this worker to its nanny: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(unix)]
    if std::os::unix::process::parent_id() != nanny {
        tracing::error!("the nanny (process {nanny}) is gone; stopping");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::crashed;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn only_beats_carrying_the_secret_count() {
        use std::os::linux::net::SocketAddrExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!("test-{}-{nanos}", std::process::id());
        let beats = super::Beats::bind(&id).expect("an abstract socket");
        assert_ne!(beats.secret, [0; super::SECRET_BYTES], "a random secret");
        let name = beats.address.strip_prefix('@').unwrap();
        let to = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let pid = 4242u32.to_le_bytes();
        let send = |bytes: &[u8]| {
            sender.send_to_addr(bytes, &to).unwrap();
        };
        let beat = || {
            let wait = super::Beats::from(Some(&beats), 4242);
            tokio::time::timeout(std::time::Duration::from_millis(300), wait)
        };
        send(&pid); // the pid alone, as anyone could send it
        send(&[&pid[..], &[7; super::SECRET_BYTES]].concat()); // a wrong secret
        assert!(beat().await.is_err(), "not beats");
        send(&[&pid[..], &beats.secret[..]].concat());
        assert!(beat().await.is_ok(), "a beat");
        let secret = super::super::parse_hex(
            &(beats.secret.iter())
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        assert_eq!(secret.as_deref(), Some(&beats.secret[..]));
        assert_eq!(super::super::parse_hex("abc"), None);
        assert_eq!(super::super::parse_hex("zz"), None);
    }

    #[cfg(unix)]
    #[test]
    fn crashes_are_signals_and_panics_not_errors() {
        use std::os::unix::process::ExitStatusExt;
        use std::process::ExitStatus;
        // Raw wait statuses: a signal number, or an exit code shifted by 8.
        assert!(crashed(&ExitStatus::from_raw(9)));
        assert!(crashed(&ExitStatus::from_raw(11)));
        assert!(crashed(&ExitStatus::from_raw(101 << 8)));
        assert!(crashed(&ExitStatus::from_raw(
            super::SCHEDULER_LOST_EXIT_CODE << 8
        )));
        assert!(!crashed(&ExitStatus::from_raw(0)));
        assert!(!crashed(&ExitStatus::from_raw(1 << 8)));
    }
}

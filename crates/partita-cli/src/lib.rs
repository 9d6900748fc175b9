//! `partita`: run the scheduler or a worker of a partita cluster.
//!
//! ```text
//! partita scheduler --listen 0.0.0.0:8786 --cluster-file cluster.json [--metrics 127.0.0.1:8787]
//! partita worker --cluster-file cluster.json --nthreads 4 --memory-limit 8GiB
//! partita info --cluster-file cluster.json
//! ```
//!
//! Logs go to stderr through `tracing` (`RUST_LOG=debug` for more). Both commands turn
//! transparent huge pages off for their process (`MIMALLOC_ALLOW_THP=1` keeps them); see
//! `small_pages_only` for why.
//!
//! The command is a library function, [`main`], so a project with ops of its own can build
//! a worker binary that links them (a worker can only run ops whose crate it links):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     // my_ops::link();  // reference the crate defining your ops
//!     partita_cli::main()
//! }
//! ```
//!
//! `partita worker` is a nanny (`nanny.rs`) that runs the process's own command line again
//! (`std::env::args_os`, plus `--no-nanny`) as the worker (`python -m partita worker ...`
//! does start itself again so): a program calling [`main_from`] whose own command line
//! would not start the same worker should pass `--no-nanny`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod nanny;
use partita_distributed::{
    ClusterFile, Resources, SchedulerOptions, SchedulerServer, WorkerExit, WorkerOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "partita",
    version,
    about = "Run the scheduler or a worker of a partita cluster, or show its state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Exit when standard input reaches its end: a parent that started this process with a
    /// pipe (as `LocalCluster` does) takes it along when it exits, even if it is killed.
    #[arg(long, global = true)]
    exit_on_stdin_close: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a scheduler: it makes the cluster's certificate and token and writes them,
    /// with its address, to the cluster file (mode 0600) that workers and clients join with.
    Scheduler {
        /// Address and UDP port to listen on (QUIC); port 0 picks a free one.
        #[arg(long, default_value = "0.0.0.0:8786")]
        listen: SocketAddr,
        /// Where to write the cluster file.
        #[arg(long, default_value = "partita-cluster.json")]
        cluster_file: PathBuf,
        /// Address peers should dial, when it differs from the listening one (NAT, a
        /// hostname); defaults to the bound address.
        #[arg(long)]
        advertise: Option<String>,
        /// Also serve GET /metrics (Prometheus text: workers, memory, tasks by state,
        /// counters) and GET /info (JSON) over plain HTTP at this address (TCP), e.g.
        /// 127.0.0.1:8787. Read-only and without authentication: keep it on localhost or
        /// a trusted network. Off unless given.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Keep the certificate, key and token of the cluster file when it exists (a
        /// scheduler started again after a crash or an upgrade): workers and clients
        /// holding a copy of the file join without a new one, and with a fixed --listen
        /// port workers started with --death-timeout rejoin on their own. Without it,
        /// every start makes new credentials (workers started with this cluster file's
        /// path read it again and join them too).
        #[arg(long)]
        reuse_credentials: bool,
    },
    /// Print what the scheduler knows of the cluster now: its workers (threads, memory
    /// limit, memory in use, values held and spilled, tasks running and assigned), tasks by
    /// state, and counters since it started.
    Info {
        /// The cluster file the scheduler wrote.
        #[arg(long)]
        cluster_file: PathBuf,
        /// Print JSON (the `ClusterInfo` structure) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start a worker that joins the cluster named by a cluster file and runs its tasks.
    Worker {
        /// The cluster file the scheduler wrote.
        #[arg(long)]
        cluster_file: PathBuf,
        /// Threads running tasks (default: one per core). Polars inside the worker uses
        /// POLARS_MAX_THREADS threads (default: one per core); with several workers on one
        /// machine, set it to this (LocalCluster does; it also sets
        /// POLARS_HOT_TABLE_SIZE=131072, quicker on group-bys of many groups).
        #[arg(long)]
        nthreads: Option<u32>,
        /// Memory limit: values spill to disk above 60% of it and new tasks pause above
        /// 80%. Bytes or with a unit: 512MB, 8GiB, 2e9. 0 means no limit. With glibc, set
        /// MALLOC_TRIM_THRESHOLD_=65536 so freed memory goes back to the system (LocalCluster
        /// does).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        memory_limit: u64,
        /// IP address this worker's data server binds to and announces to its peers.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// A name for logs.
        #[arg(long)]
        name: Option<String>,
        /// Folder for spill files (a private directory inside it, removed on exit).
        #[arg(long)]
        spill_dir: Option<PathBuf>,
        /// Seconds to retire gracefully when asked to stop (SIGINT, SIGTERM): the worker
        /// takes no new tasks, lets its running ones finish and hands the values only it
        /// holds to other workers, then exits. Past this, or on a second signal, it exits
        /// at once (its values are recomputed elsewhere, as after a crash).
        #[arg(long, default_value = "60", value_parser = parse_seconds)]
        retire_timeout: std::time::Duration,
        /// Run the worker in this process, without a nanny. By default (on Unix) this
        /// process is a nanny: it runs the worker as a child process, starts a new one when
        /// it crashes or is killed (after 1 s, doubling to 30 s while it keeps dying), and
        /// kills it when its memory passes --memory-terminate of --memory-limit.
        #[arg(long)]
        no_nanny: bool,
        /// With --memory-limit and a nanny: kill (and restart) the worker when its
        /// resident memory passes this fraction of the limit. 0 disables.
        #[arg(long, default_value = "0.95", value_parser = parse_fraction)]
        memory_terminate: f64,
        /// Seconds the worker's event loop may go without turning before its nanny kills
        /// and restarts it: a task that blocks the loop forever (one run there because
        /// its kind was quick so far) or a deadlock. The scheduler has given such a worker
        /// up after its heartbeat timeout already; this gets the process back. 0 disables.
        #[arg(long, default_value = "60", value_parser = parse_liveness)]
        liveness_timeout: std::time::Duration,
        /// Seconds to keep trying to reach a scheduler that does not answer (Dask's
        /// --death-timeout), pausing up to 5 s between tries: a worker started before its
        /// scheduler, or started again by its nanny after losing it, waits this long for
        /// it. A scheduler that refuses the worker (a wrong token) is not tried again.
        #[arg(long, default_value = "60", value_parser = parse_seconds)]
        death_timeout: std::time::Duration,
        /// Abstract resources this worker offers, as NAME=AMOUNT pairs separated by spaces
        /// or commas: "GPU=2 MEMORY=10e9" (Dask's --resources). A task submitted asking
        /// for resources runs only on a worker offering at least that much, and a worker
        /// runs such tasks only while their sum fits what it offers. Names and amounts
        /// mean whatever you decide; nothing is measured.
        #[arg(long, default_value = "", value_parser = parse_resources)]
        resources: Resources,
    },
}

/// `"GPU=2 MEMORY=10e9"`: abstract resources.
fn parse_resources(text: &str) -> Result<Resources, String> {
    Resources::parse(text).map_err(|e| e.to_string())
}

/// `0.95`: a fraction of a whole, from 0 to 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{text:?} is not a fraction from 0 to 1 (such as 0.95)"
        )),
    }
}

/// `60`, `2.5`: a duration in seconds.
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 =
        (text.trim().parse()).map_err(|_| format!("{text:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{text:?} is not a number of seconds"))
}

/// `--liveness-timeout`: 0 (off) or at least 3 s, as beats come about every second.
fn parse_liveness(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_seconds(text)?;
    if !d.is_zero() && d < std::time::Duration::from_secs(3) {
        return Err(format!(
            "{text:?}: at least 3 seconds (the worker beats about every second), or 0 for off"
        ));
    }
    Ok(d)
}

/// `512MB`, `8GiB`, `2e9`, `1000`: a byte count.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    // The unit is the alphabetic tail, so an exponent ("2e9") stays in the number.
    let split = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 512MB, 8GiB or a byte count)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{text:?} is not a size"));
    }
    Ok((n * scale) as u64)
}

/// Parse the command line and run the scheduler or worker it asks for.
pub fn main() -> ExitCode {
    // The code itself, not just failure: a nanny restarts a worker ending in 101 (a panic),
    // 75 (a cluster restart) or 69 (the connection to the scheduler broke).
    match u8::try_from(main_from(std::env::args_os())) {
        Ok(code) => ExitCode::from(code),
        Err(_) => ExitCode::FAILURE,
    }
}

/// [`main`] with the arguments given (the first is the program's name); returns the exit
/// status (0 on success). Bad arguments and `--help` print and exit, as any command does.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // A host process (Python) may have set a subscriber already; keep it then.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a LocalCluster's logs are files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    partita_distributed::link_collections();
    let cli = Cli::parse_from(args);
    if let Command::Info { cluster_file, json } = &cli.command {
        // A client: it runs its own runtime.
        return match print_info(cluster_file, *json) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                1
            }
        };
    }
    small_pages_only();
    if let Command::Worker {
        no_nanny: false,
        memory_limit,
        memory_terminate,
        retire_timeout,
        liveness_timeout,
        ..
    } = &cli.command
        && cfg!(unix)
    {
        let options = nanny::NannyOptions {
            memory_limit: *memory_limit,
            terminate: *memory_terminate,
            watch_stdin: cli.exit_on_stdin_close,
            retire_timeout: *retire_timeout,
            liveness_timeout: *liveness_timeout,
        };
        return match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(nanny::run(options)),
            Err(e) => {
                tracing::error!("cannot start the nanny's runtime: {e}");
                1
            }
        };
    }
    if matches!(cli.command, Command::Worker { .. }) {
        nanny::follow_nanny();
    }
    // The scheduler is one state machine: on one thread, a message from a peer goes from
    // quinn to the state machine and its answers back without waking another thread
    // (10,000 Python tasks: 2.2 s -> 1.75 s). Workers keep a pool: their data transfers
    // overlap with the event loop (frames q1-q2 were 20-40% slower on one thread).
    let mut builder = match cli.command {
        Command::Scheduler { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    // The process's own work runs as a task of the runtime, not on the thread blocking on
    // it: in a worker, quinn's drivers wake the event loop on the same runtime threads then,
    // not across to the main thread (10,000 Python tasks: 8% less CPU in the workers).
    let result = runtime.block_on(async {
        let task = tokio::spawn(run(cli.command, cli.exit_on_stdin_close));
        task.await
    });
    let result = match result {
        Ok(r) => r,
        // Like a panic on the main thread: 101, which a nanny restarts.
        Err(e) if e.is_panic() => {
            tracing::error!("the process's main task panicked: {e}");
            return 101;
        }
        Err(e) => Err(partita_core::Error::Internal(format!(
            "the process's main task failed: {e}"
        ))),
    };
    match result {
        Ok(code) => {
            if code == nanny::RESTART_EXIT_CODE {
                // Out now, for the nanny's fresh process: tasks still running on the
                // blocking pool (Python calls too, in `python -m partita`) are not waited
                // for, nor is an interpreter's shutdown.
                runtime.shutdown_background();
                #[cfg(unix)]
                #[allow(unsafe_code)]
                // SAFETY: `_exit` ends the process at once and touches no memory of ours;
                // nothing buffered is lost (logs go to stderr unbuffered), and skipping
                // atexit handlers is the point (a library's may wait for a running call).
                unsafe {
                    libc::_exit(code)
                };
                #[cfg(not(unix))]
                std::process::exit(code);
            }
            code
        }
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

/// Transparent huge pages off for this process (Linux), unless `MIMALLOC_ALLOW_THP` is
/// set. mimalloc commits its 1 GiB arenas up front and advises huge pages for them, so the
/// first touch of any byte in 2 MiB faults in and zeroes all 2 MiB: a scheduler or worker
/// whose small objects are spread over its arena grew 25-85 MB during its first 10,000
/// Python tasks, all of it huge pages, and on this VM zeroing them cost the scheduler over
/// 100 ms of that first graph (0.42-0.57 s against 0.23-0.25 s with them off). The flag
/// holds from the next page fault on, also for regions advised earlier, and for the
/// process's children.
#[allow(unsafe_code)]
fn small_pages_only() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of
        // ours; the unused arguments must be zero.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                "transparent huge pages stay on: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Resolves once stdin reaches end of file (the parent holding the pipe is gone).
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// SIGINT (Ctrl-C) or SIGTERM (`kill`, a container or service manager stopping it).
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}

/// Stdin reaching its end when asked to watch it; never otherwise.
async fn stdin_end(watch_stdin: bool) {
    if watch_stdin {
        let _ = stdin_closed().await;
    } else {
        std::future::pending::<()>().await;
    }
}

/// A signal, or stdin closing when asked to watch it.
async fn stop_signal(watch_stdin: bool) -> &'static str {
    tokio::select! {
        why = signal() => why,
        _ = stdin_end(watch_stdin) => "standard input closed",
    }
}

/// Run a worker until the scheduler closes it; a signal retires it gracefully first
/// (bounded by `retire_timeout`; a second signal stops it at once), stdin closing (its
/// `LocalCluster` is gone) stops it at once. `Ok` carries the exit code (75 when the
/// scheduler restarts the cluster, 69 when the connection to it broke: both for the nanny
/// to start a fresh process).
async fn work(
    cluster: ClusterFile,
    options: WorkerOptions,
    watch_stdin: bool,
    retire_timeout: std::time::Duration,
) -> partita_core::Result<i32> {
    let (retire, retire_asked) = tokio::sync::oneshot::channel::<()>();
    let asked = async move {
        if retire_asked.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let worker = async move {
        match partita_distributed::run_worker_until(cluster, options, asked).await? {
            WorkerExit::Restart => Ok(nanny::RESTART_EXIT_CODE),
            WorkerExit::Stopped => Ok(0),
            WorkerExit::SchedulerLost => Ok(nanny::SCHEDULER_LOST_EXIT_CODE),
        }
    };
    let mut worker = std::pin::pin!(worker);
    let mut stdin = std::pin::pin!(stdin_end(watch_stdin));
    tokio::select! {
        r = &mut worker => return r,
        _ = &mut stdin => {
            tracing::info!("standard input closed; worker stopping");
            return Ok(0);
        }
        why = signal() => tracing::info!(
            "{why}; retiring: handing values off first (signal again to stop at once)"
        ),
    }
    let _ = retire.send(());
    tokio::select! {
        r = &mut worker => r,
        _ = &mut stdin => {
            tracing::info!("standard input closed; worker stopping");
            Ok(0)
        }
        why = signal() => {
            tracing::warn!("{why} again; stopping without finishing the retirement");
            Ok(0)
        }
        _ = tokio::time::sleep(retire_timeout) => {
            tracing::warn!("not retired within {retire_timeout:?}; stopping anyway");
            Ok(0)
        }
    }
}

/// `partita info`: ask the scheduler and print its answer.
fn print_info(cluster_file: &std::path::Path, json: bool) -> partita_core::Result<()> {
    let client = partita_distributed::Client::connect(cluster_file)?;
    let info = client.info()?;
    if json {
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| partita_core::Error::Codec(format!("cluster info as JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", describe(&client.scheduler_address(), &info));
    }
    Ok(())
}

/// `bytes` for people: 1.5 GiB, 300 MiB, 12 KiB, 7 B.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The text `partita info` prints.
fn describe(scheduler: &str, info: &partita_distributed::ClusterInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "scheduler {scheduler}");
    let _ = writeln!(out, "workers: {}", info.workers.len());
    for w in &info.workers {
        let m = &w.metrics;
        let limit = match w.memory_limit {
            0 => "no limit".to_string(),
            n => format!("limit {}", human_bytes(n)),
        };
        let offers = match w.resources.is_empty() {
            true => String::new(),
            false => format!(", offers {}", w.resources),
        };
        let _ = writeln!(
            out,
            "  {} at {}: {} threads{offers}, {limit}, memory {}; holds {} values ({}, {} \
             spilled); running {}, assigned {}{}{}",
            w.peer.id,
            w.peer.address,
            w.nthreads,
            human_bytes(m.rss),
            w.held,
            human_bytes(m.managed_bytes),
            human_bytes(m.spilled_bytes),
            m.executing,
            w.processing,
            if m.paused { ", paused (memory)" } else { "" },
            if w.retiring { ", retiring" } else { "" },
        );
    }
    let t = &info.tasks;
    let _ = writeln!(
        out,
        "tasks: {} in memory, {} processing, {} queued, {} waiting, {} erred, {} released",
        t.memory, t.processing, t.queued, t.waiting, t.erred, t.released
    );
    let s = &info.stats;
    let _ = writeln!(
        out,
        "since start: {} tasks finished, {} recomputed, {} values lost with {} workers, \
         {} workers retired, {} of {} steal requests granted",
        s.tasks_finished,
        s.recomputed,
        s.lost_values,
        s.workers_lost,
        s.workers_retired,
        s.steals,
        s.steal_requests
    );
    out
}

/// The process's work; `Ok` carries its exit code.
async fn run(command: Command, watch_stdin: bool) -> partita_core::Result<i32> {
    match command {
        Command::Info { .. } => Err(partita_core::Error::Internal(
            "`partita info` runs as a client, outside the runtime".into(),
        )),
        Command::Scheduler {
            listen,
            cluster_file,
            advertise,
            metrics,
            reuse_credentials,
        } => {
            let mut options = SchedulerOptions::new(listen, cluster_file);
            options.advertise = advertise;
            options.metrics = metrics;
            options.reuse_credentials = reuse_credentials;
            let server = SchedulerServer::bind(options).await?;
            let stop = server.shutdown_handle();
            tokio::spawn(async move {
                let why = stop_signal(watch_stdin).await;
                tracing::info!("{why}; scheduler shutting down");
                let _ = stop.send(true);
            });
            server.run().await.map(|()| 0)
        }
        Command::Worker {
            cluster_file,
            nthreads,
            memory_limit,
            host,
            name,
            spill_dir,
            retire_timeout,
            resources,
            death_timeout,
            ..
        } => {
            let cluster = ClusterFile::read(&cluster_file)?;
            let mut options = WorkerOptions {
                cluster_file: Some(cluster_file),
                memory_limit,
                host,
                spill_dir,
                resources,
                death_timeout,
                ..WorkerOptions::default()
            };
            if let Some(n) = nthreads {
                options.nthreads = n.max(1);
            }
            if let Some(n) = name {
                options.name = n;
            }
            options.nanny = std::env::var(nanny::NANNY_ID).ok();
            options.liveness = std::env::var(nanny::NANNY_LIVENESS).ok();
            options.liveness_secret = std::env::var(nanny::NANNY_SECRET)
                .ok()
                .and_then(|hex| parse_hex(&hex))
                .unwrap_or_default();
            if options.liveness.is_some() && options.liveness_secret.is_empty() {
                tracing::warn!(
                    "{} is set but {} is missing or not hex: the nanny will ignore this \
                     worker's beats and not watch its event loop",
                    nanny::NANNY_LIVENESS,
                    nanny::NANNY_SECRET
                );
            }
            work(cluster, options, watch_stdin, retire_timeout).await
        }
    }
}

/// Bytes from hex digits (the nanny's secret); `None` if `text` is not that.
fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        Cli, Command, Resources, describe, human_bytes, parse_fraction, parse_liveness,
        parse_seconds, parse_size,
    };
    use clap::Parser;
    use partita_distributed::{ClusterInfo, TaskCounts, WorkerMetrics, WorkerStatus};
    use partita_proto::messages::{Peer, WorkerId};

    #[test]
    fn info_text_names_every_worker_and_count() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        let worker = |id, paused| WorkerStatus {
            peer: Peer {
                id: WorkerId(id),
                address: format!("10.0.0.{id}:9000"),
            },
            nthreads: 4,
            memory_limit: if id == 1 { 8 << 30 } else { 0 },
            processing: 3,
            held: 12,
            metrics: WorkerMetrics {
                managed_bytes: 300 << 20,
                spilled_bytes: 0,
                rss: 2 << 30,
                executing: 2,
                pending: 1,
                paused,
            },
            retiring: id == 2,
            resources: match id {
                2 => Resources::parse("GPU=2").unwrap(),
                _ => Resources::default(),
            },
        };
        let info = ClusterInfo {
            workers: vec![worker(1, false), worker(2, true)],
            tasks: TaskCounts {
                memory: 24,
                processing: 6,
                erred: 1,
                ..TaskCounts::default()
            },
            stats: Default::default(),
        };
        let text = describe("10.0.0.9:8786", &info);
        assert!(
            text.starts_with("scheduler 10.0.0.9:8786\nworkers: 2\n"),
            "{text}"
        );
        assert!(text.contains("worker-1 at 10.0.0.1:9000: 4 threads, limit 8.0 GiB, memory 2.0 GiB; holds 12 values (300.0 MiB, 0 B spilled); running 2, assigned 3\n"), "{text}");
        assert!(
            text.contains("worker-2 at 10.0.0.2:9000: 4 threads, offers GPU=2, no limit,"),
            "{text}"
        );
        assert!(
            text.contains("assigned 3, paused (memory), retiring\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "tasks: 24 in memory, 6 processing, 0 queued, 0 waiting, 1 erred, 0 released"
            ),
            "{text}"
        );
    }

    #[test]
    fn memory_terminate_is_a_fraction() {
        assert_eq!(parse_fraction("0.95"), Ok(0.95));
        assert_eq!(parse_fraction("0"), Ok(0.0));
        assert!(parse_fraction("-1").unwrap_err().contains("from 0 to 1"));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("most").is_err());
    }

    #[test]
    fn retire_timeouts_are_seconds() {
        use std::time::Duration;
        assert_eq!(parse_seconds("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_seconds("soon").unwrap_err().contains("seconds"));
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_liveness("0"), Ok(Duration::ZERO));
        assert_eq!(parse_liveness("3"), Ok(Duration::from_secs(3)));
        assert!(parse_liveness("1").unwrap_err().contains("at least 3"));
    }

    #[test]
    fn worker_resources_parse_as_dask_writes_them() {
        let cli = Cli::try_parse_from([
            "partita",
            "worker",
            "--cluster-file",
            "c.json",
            "--resources",
            "GPU=2 MEMORY=10e9",
        ])
        .unwrap();
        let Command::Worker { resources, .. } = cli.command else {
            panic!("a worker");
        };
        assert_eq!(resources.to_string(), "GPU=2 MEMORY=10000000000");
        let none = Cli::try_parse_from(["partita", "worker", "--cluster-file", "c.json"]);
        assert!(
            matches!(none.unwrap().command, Command::Worker { resources, .. } if resources.is_empty())
        );
        let bad = [
            "partita",
            "worker",
            "--cluster-file",
            "c",
            "--resources",
            "GPU",
        ];
        let err = Cli::try_parse_from(bad).unwrap_err().to_string();
        assert!(err.contains("NAME=AMOUNT"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("2e9"), Ok(2_000_000_000));
        assert_eq!(parse_size("1.5 kib"), Ok(1536));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("-3").is_err());
    }
}

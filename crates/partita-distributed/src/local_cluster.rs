//! [`LocalCluster`]: a scheduler and N worker processes on this machine, for tests, benches
//! and notebooks; every process it starts is killed when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partita_core::{Error, Result};

use crate::client::Client;

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    /// Worker processes.
    pub n_workers: usize,
    /// Threads per worker.
    pub threads_per_worker: u32,
    /// Memory limit per worker in bytes (0 = none).
    pub memory_limit: u64,
    /// The `partita` binary; found by [`find_binary`] when `None`.
    pub binary: Option<PathBuf>,
    /// Extra arguments before the subcommand (the Python package passes `-m partita`).
    pub prefix_args: Vec<String>,
    /// Have the scheduler serve `/metrics` and `/info` here (`127.0.0.1:0`: a free port);
    /// [`LocalCluster::metrics_address`] says where. `None` (the default) serves nothing.
    pub metrics: Option<std::net::SocketAddr>,
    /// Run each worker under a nanny (`partita worker` without `--no-nanny`): a worker
    /// that crashes or passes 95% of its memory limit is started again. Off by default,
    /// so [`LocalCluster::kill_worker`] kills a worker for good (chaos tests).
    pub nanny: bool,
    /// Abstract resources every worker offers (`--resources`; Dask's `LocalCluster(resources=)`).
    pub resources: crate::Resources,
    /// More `partita worker` arguments for every worker (`--liveness-timeout 5`, say).
    pub worker_args: Vec<String>,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            n_workers: 2,
            threads_per_worker: 1,
            memory_limit: 0,
            binary: None,
            prefix_args: Vec::new(),
            metrics: None,
            nanny: false,
            resources: crate::Resources::default(),
            worker_args: Vec::new(),
        }
    }
}

/// The `partita` executable: `$PARTITA_BIN`, else next to the running executable (or one
/// folder up, as for test binaries in `target/*/deps`), else `partita` on the `PATH`.
pub fn find_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PARTITA_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("partita");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("partita")
}

/// How [`LocalCluster::adapt`] scales (Dask's `cluster.adapt` arguments).
#[derive(Clone, Debug)]
pub struct AdaptOptions {
    /// Never fewer worker processes than this.
    pub minimum: usize,
    /// Never more than this; `None`: as many as this machine's cores give workers of
    /// `threads_per_worker` threads (at least `minimum`), so a burst of work cannot start
    /// hundreds of processes.
    pub maximum: Option<usize>,
    /// How often to ask the scheduler (at least 10 ms).
    pub interval: Duration,
    /// How long the work in sight should take on the cluster wanted.
    pub target_duration: Duration,
    /// Retire workers only after this many answers in a row asked for fewer.
    pub wait_count: u32,
}

impl Default for AdaptOptions {
    fn default() -> Self {
        AdaptOptions {
            minimum: 0,
            maximum: None,
            interval: Duration::from_secs(1),
            target_duration: Duration::from_secs(5),
            wait_count: 3,
        }
    }
}

/// A scheduler and workers running as child processes.
#[derive(Debug)]
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// `None` after [`LocalCluster::kill_scheduler`].
    scheduler: Option<Child>,
    /// How the scheduler was started, to start it again.
    scheduler_args: Vec<String>,
    /// Logs of earlier scheduler processes kept so far (`scheduler.1.log`, ...).
    scheduler_starts: usize,
    processes: Arc<Processes>,
    adaptive: Option<Adaptive>,
}

/// The worker processes, shared with the thread of [`LocalCluster::adapt`].
#[derive(Debug)]
struct Processes {
    options: LocalClusterOptions,
    binary: PathBuf,
    dir: PathBuf,
    /// By worker number (its name is `local-{i}`); `None` once it is gone.
    workers: Mutex<Vec<Option<Child>>>,
}

/// The thread of [`LocalCluster::adapt`] and how to stop it.
#[derive(Debug)]
struct Adaptive {
    options: AdaptOptions,
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Adaptive {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LocalCluster {
    /// Start the scheduler, then the workers, and wait until every worker has joined.
    pub fn start(options: LocalClusterOptions) -> Result<LocalCluster> {
        let binary = options.binary.clone().unwrap_or_else(find_binary);
        let dir = tempfile::Builder::new()
            .prefix("partita-cluster-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir().display().to_string(),
                source,
            })?;
        let file = dir.path().join("cluster.json");
        let mut scheduler_args = vec![
            "scheduler".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cluster-file".into(),
            file.display().to_string(),
        ];
        if let Some(addr) = options.metrics {
            scheduler_args.extend(["--metrics".into(), addr.to_string()]);
        }
        let scheduler =
            spawn_scheduler(&binary, &options.prefix_args, &scheduler_args, dir.path())?;
        let processes = Arc::new(Processes {
            options,
            binary,
            dir: dir.path().to_path_buf(),
            workers: Mutex::new(Vec::new()),
        });
        let mut cluster = LocalCluster {
            dir,
            scheduler: Some(scheduler),
            scheduler_args,
            scheduler_starts: 0,
            processes,
            adaptive: None,
        };
        cluster.wait_for_cluster_file(None)?;
        let n = cluster.processes.options.n_workers;
        for _ in 0..n {
            cluster.add_worker()?;
        }
        cluster.wait_for_workers(n)?;
        Ok(cluster)
    }

    /// Wait (at most 30 s) until `n` workers have joined; a worker process that exits first
    /// (bad arguments, say) is an error with its log.
    fn wait_for_workers(&self, n: usize) -> Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let have = client.workers()?.len();
            if have >= n {
                return Ok(());
            }
            if let Some((i, status)) = self.processes.exited() {
                return Err(Error::Transport(format!(
                    "worker {i} exited ({status}) before joining: {}",
                    self.log(&format!("worker-{i}"))
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Transport(format!(
                    "only {have} of {n} workers joined within 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (at most 30 s) until the scheduler has written the cluster file: a file other
    /// than `before` (the one it replaces, if any).
    fn wait_for_cluster_file(&mut self, before: Option<FileIdentity>) -> Result<()> {
        let file = self.cluster_file();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = file_identity(&file);
            if now.is_some() && now != before {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.scheduler.as_mut().map(Child::try_wait) {
                return Err(Error::Transport(format!(
                    "the scheduler exited ({status}) before writing its cluster file: {}",
                    self.log("scheduler")
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Transport(
                    "the scheduler wrote no cluster file within 30 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the scheduler and start it again with the same credentials
    /// ([`LocalCluster::kill_scheduler`], then [`LocalCluster::start_scheduler`]), for chaos
    /// tests.
    pub fn restart_scheduler(&mut self) -> Result<()> {
        self.kill_scheduler();
        self.start_scheduler()
    }

    /// Kill the scheduler (SIGKILL, no goodbye), for chaos tests. Workers notice when
    /// their connection times out (5 s) and exit; those with a nanny
    /// ([`LocalClusterOptions::nanny`]) are started again and wait for a scheduler for
    /// their `--death-timeout` (60 s), reading the cluster file again before each try.
    /// What it knew (tasks, results, data on the workers) is lost; clients connect again
    /// at their next call once it is started again (see [`Client::reconnect`]).
    pub fn kill_scheduler(&mut self) {
        if let Some(child) = self.scheduler.take() {
            kill(child);
        }
    }

    /// Start the scheduler again after [`LocalCluster::kill_scheduler`], with the cluster
    /// file's credentials (`--reuse-credentials`) on a new port; returns once it has
    /// written the cluster file. Waiting workers join it, and clients connect again at
    /// their next call. Adaptive scaling, if on, goes on with the new scheduler.
    pub fn start_scheduler(&mut self) -> Result<()> {
        if self.scheduler.is_some() {
            return Err(Error::Internal(
                "the scheduler is running: kill it first (or restart_scheduler)".into(),
            ));
        }
        let log = self.dir.path().join("scheduler.log");
        let earlier = self
            .dir
            .path()
            .join(format!("scheduler.{}.log", self.scheduler_starts + 1));
        match std::fs::rename(&log, &earlier) {
            // Numbered now, so a start that fails keeps the earlier log too.
            Ok(()) => self.scheduler_starts += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: log.display().to_string(),
                    source,
                });
            }
        }
        let before = file_identity(&self.cluster_file());
        let mut args = self.scheduler_args.clone();
        args.push("--reuse-credentials".into());
        let options = &self.processes.options;
        self.scheduler = Some(spawn_scheduler(
            &self.processes.binary,
            &options.prefix_args,
            &args,
            self.dir.path(),
        )?);
        self.wait_for_cluster_file(before)?;
        if let Some(options) = self.adaptive.as_ref().map(|a| a.options.clone()) {
            // Its client was the old scheduler's.
            self.adapt(options)?;
        }
        Ok(())
    }

    /// Where the scheduler serves `/metrics` and `/info` (`host:port`), when
    /// [`LocalClusterOptions::metrics`] asked for them.
    pub fn metrics_address(&self) -> Option<String> {
        crate::ClusterFile::read(&self.cluster_file())
            .ok()
            .and_then(|c| c.metrics)
    }

    /// Start one more worker process; returns its index.
    pub fn add_worker(&mut self) -> Result<usize> {
        self.processes.start(None)
    }

    /// Start one more worker process offering `resources` instead of the options' (a
    /// cluster where some workers have what others lack); returns its index.
    pub fn add_worker_offering(&mut self, resources: &crate::Resources) -> Result<usize> {
        self.processes.start(Some(resources))
    }

    /// Worker processes running now (started and not exited; one still joining counts).
    pub fn running_workers(&self) -> usize {
        self.processes.running()
    }

    /// Have `n` worker processes (Dask's `cluster.scale(n)`): start more, or retire some
    /// gracefully, the least busy and emptiest first as the scheduler picks them, their
    /// values handed to the workers that stay; returns once the cluster has `n` workers
    /// (an error after `timeout`). Stops [`LocalCluster::adapt`]. An error, with the
    /// workers that could go gone, when values are held and `n` is 0.
    pub fn scale(&mut self, n: usize, timeout: Duration) -> Result<()> {
        self.adaptive = None;
        let deadline = Instant::now() + timeout;
        let running = self.processes.running();
        let client = self.client()?;
        if n > running {
            for _ in running..n {
                self.processes.start(None)?;
            }
            return client.wait_for_workers(n, timeout);
        }
        if n == running {
            return Ok(());
        }
        // Every process joined first, so the scheduler chooses among all of them.
        client.wait_for_workers(running, timeout)?;
        let to_close = client.workers_to_close(running - n)?;
        let addresses: Vec<&str> = to_close.iter().map(|p| p.address.as_str()).collect();
        if !addresses.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            client.retire_workers_within(&addresses, Some(left))?;
        }
        let want = running - to_close.len();
        while self.processes.running() > want {
            if Instant::now() > deadline {
                return Err(Error::Transport(format!(
                    "{} worker processes still run {timeout:?} after being retired",
                    self.processes.running() - want
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if want > n {
            return Err(Error::Transport(format!(
                "scaled to {want} workers, not {n}: the workers left hold values that would \
                 have nowhere to go"
            )));
        }
        Ok(())
    }

    /// Scale with the load (Dask's `cluster.adapt`): a thread asks the scheduler every
    /// `interval` how many workers would finish the work in sight in `target_duration`
    /// ([`Client::adaptive_target`]), starts processes at once when that (within
    /// `minimum..=maximum`) is more than run, and retires the idle workers it names once
    /// `wait_count` answers in a row asked for fewer. Replaces an earlier `adapt`;
    /// [`LocalCluster::scale`] or dropping the cluster stops it.
    pub fn adapt(&mut self, mut options: AdaptOptions) -> Result<()> {
        let maximum = options.maximum.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let threads = self.processes.options.threads_per_worker.max(1) as usize;
            (cores / threads).max(1).max(options.minimum)
        });
        if options.minimum > maximum {
            return Err(Error::Shape(format!(
                "adapt: minimum {} is above maximum {maximum}",
                options.minimum
            )));
        }
        options.maximum = Some(maximum);
        if options.interval < MIN_ADAPT_INTERVAL {
            return Err(Error::Shape(format!(
                "adapt: the interval must be at least {MIN_ADAPT_INTERVAL:?}, got {:?}",
                options.interval
            )));
        }
        self.adaptive = None;
        let client = self.client()?;
        // Its scheduler gone, the thread stops (start_scheduler starts another with a
        // client of its own) rather than keep whoever stops it waiting.
        client.set_reconnect_timeout(Duration::ZERO);
        let processes = Arc::clone(&self.processes);
        let (stop, stopped) = std::sync::mpsc::channel();
        let kept = options.clone();
        let thread = std::thread::Builder::new()
            .name("partita-adapt".into())
            .spawn(move || adapt_loop(&processes, &client, &options, &stopped))
            .map_err(|e| Error::Internal(format!("cannot start the adaptive thread: {e}")))?;
        self.adaptive = Some(Adaptive {
            options: kept,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Stop scaling with the load; the workers running stay.
    pub fn stop_adapting(&mut self) {
        self.adaptive = None;
    }

    /// Whether [`LocalCluster::adapt`] is on (its thread stops by itself when its
    /// scheduler is gone).
    pub fn is_adaptive(&self) -> bool {
        (self.adaptive.as_ref())
            .is_some_and(|a| a.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }
}

/// The shortest [`AdaptOptions::interval`]: each step is a request to the scheduler.
const MIN_ADAPT_INTERVAL: Duration = Duration::from_millis(10);

/// How long the adaptive thread waits for idle workers to retire before it goes on (they
/// go on retiring); bounds how long stopping it can take.
const ADAPT_RETIRE_WAIT: Duration = Duration::from_secs(10);

/// The thread of [`LocalCluster::adapt`]: one step per `interval` until told to stop.
fn adapt_loop(
    processes: &Processes,
    client: &Client,
    options: &AdaptOptions,
    stopped: &std::sync::mpsc::Receiver<()>,
) {
    let mut below = 0u32;
    loop {
        match stopped.recv_timeout(options.interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // Told to stop, or the cluster is gone.
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = adapt_step(processes, client, options, &mut below) {
            if !client.is_connected() {
                tracing::warn!("adaptive scaling stops: {e}");
                return;
            }
            tracing::warn!("adaptive scaling: {e}");
        }
    }
}

/// Ask once and act: start processes up to the target, or retire the workers named after
/// `wait_count` answers in a row below the processes running.
fn adapt_step(
    processes: &Processes,
    client: &Client,
    options: &AdaptOptions,
    below: &mut u32,
) -> Result<()> {
    let advice = client.adaptive_target(options.target_duration)?;
    let running = processes.running();
    let maximum = options.maximum.unwrap_or(usize::MAX);
    let want = (advice.workers as usize).clamp(options.minimum, maximum);
    if want > running {
        *below = 0;
        tracing::info!("adaptive scaling: {running} -> {want} workers");
        for _ in running..want {
            processes.start(None)?;
        }
    } else if want < running && !advice.to_close.is_empty() {
        *below += 1;
        if *below >= options.wait_count {
            *below = 0;
            // Counted against the open workers the advice is about, not the processes
            // (some may be starting or leaving): never below the minimum.
            let open = advice.workers as usize + advice.to_close.len();
            let addresses: Vec<&str> = (advice.to_close.iter())
                .take(open.saturating_sub(want))
                .map(|p| p.address.as_str())
                .collect();
            if !addresses.is_empty() {
                tracing::info!("adaptive scaling: retiring {addresses:?}");
                client.retire_workers_within(&addresses, Some(ADAPT_RETIRE_WAIT))?;
            }
        }
    } else {
        *below = 0;
    }
    Ok(())
}

impl Processes {
    /// Worker processes not exited (reaping those that did).
    fn running(&self) -> usize {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for slot in workers.iter_mut() {
            if slot
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
            {
                let _ = slot.take().map(|mut c| c.wait());
            }
        }
        workers.iter().flatten().count()
    }

    /// Start worker number `len`, offering `resources` or the options'; returns its index.
    fn start(&self, resources: Option<&crate::Resources>) -> Result<usize> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let i = workers.len();
        let nthreads = self.options.threads_per_worker.to_string();
        let memory = self.options.memory_limit.to_string();
        let file = self.dir.join("cluster.json").display().to_string();
        let (name, spill) = (format!("local-{i}"), self.dir.display().to_string());
        let resources = resources.unwrap_or(&self.options.resources).to_string();
        let mut args = vec![
            "worker",
            "--cluster-file",
            &file,
            "--nthreads",
            &nthreads,
            "--memory-limit",
            &memory,
            "--name",
            &name,
            "--spill-dir",
            &spill,
        ];
        if !self.options.nanny {
            args.push("--no-nanny");
        }
        if !resources.is_empty() {
            args.extend(["--resources", &resources]);
        }
        args.extend(self.options.worker_args.iter().map(String::as_str));
        let child = spawn(
            &self.binary,
            &self.options.prefix_args,
            &args,
            &[(POLARS_THREADS, &nthreads), HOT_TABLE],
            &self.dir.join(format!("worker-{i}.log")),
        )?;
        workers.push(Some(child));
        Ok(i)
    }
}

impl LocalCluster {
    /// The cluster file clients and workers join with.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.path().join("cluster.json")
    }

    /// The folder holding the cluster file, logs and spill directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client of this cluster.
    pub fn client(&self) -> Result<Client> {
        Client::connect(self.cluster_file())
    }

    /// Kill worker `i` with SIGKILL (no goodbye), for chaos tests (with
    /// [`LocalClusterOptions::nanny`], the nanny and so its worker).
    pub fn kill_worker(&mut self, i: usize) -> Result<()> {
        let child = self.processes.take(i)?;
        kill(child);
        Ok(())
    }

    /// Ask worker `i` to stop as `partita worker` is asked to (SIGTERM): it retires
    /// gracefully, handing the values only it holds to the other workers, and exits; waits
    /// up to `timeout` for that. An error if it is not running, is not done in time (it is
    /// killed then), or exits with a failure.
    #[cfg(unix)]
    pub fn retire_worker(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let mut child = self.processes.take(i)?;
        terminate(&child)?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = child.try_wait().map_err(|source| Error::Io {
                path: format!("worker process {}", child.id()),
                source,
            })?;
            match status {
                Some(s) if s.success() => return Ok(()),
                Some(s) => {
                    return Err(Error::Transport(format!(
                        "worker {i} exited with {s} while retiring: {}",
                        self.log(&format!("worker-{i}"))
                    )));
                }
                None if Instant::now() > deadline => {
                    kill(child);
                    return Err(Error::Transport(format!(
                        "worker {i} did not retire within {timeout:?}; killed"
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The scheduler's process id; `None` after [`LocalCluster::kill_scheduler`].
    pub fn scheduler_pid(&self) -> Option<u32> {
        self.scheduler.as_ref().map(Child::id)
    }

    /// The process ids of the running workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.processes.running();
        let workers = (self.processes.workers.lock()).unwrap_or_else(|e| e.into_inner());
        workers.iter().flatten().map(Child::id).collect()
    }

    /// A process's log so far (`"scheduler"` or `"worker-3"`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// Polars' thread pool size. A worker told to use `threads_per_worker` threads gets as many
/// polars threads: with polars' default (one per core) each of two one-thread workers on
/// two cores ran its partial group-bys on two polars threads, four busy threads on two
/// cores; with one, q3's partials were 2-28% quicker (medians) and H2O q1-q5 were
/// quicker in 13 of 15 alternated pairs (BENCHMARKS.md). Dask's nanny likewise sets `OMP_NUM_THREADS` and its kin for workers.
const POLARS_THREADS: &str = "POLARS_MAX_THREADS";

/// Slots of the table in which polars 0.55's streaming group-by pre-aggregates each thread's
/// rows (default 4,096; a key that finds no slot evicts another to a second pass). With
/// fewer slots than a partition has groups, most rows take that second pass; 131,072 slots
/// hold H2O's 100,000-group partials (q3, q5, q7) and q9's 10,000 without evictions. On
/// `LocalCluster(2, 1)` on an Intel Xeon VM, three alternated rounds against 8,192 slots
/// (medians of 7, s; BENCHMARKS.md): q2 0.215-0.230 (from 0.248-0.257), q5 0.296-0.318
/// (0.361-0.365), q7 0.423-0.436 (0.443-0.455), q9 0.343-0.354 (0.424-0.440); q3 and q4
/// within noise, q1 0.097-0.111 (0.093-0.101: the bigger table is allocated per
/// partial). 32,768 slots slowed q5 (a table too big for the cache that still evicts).
/// Only the worker processes get it: in a user's own process Python polars reads the same
/// variable.
const HOT_TABLE: (&str, &str) = ("POLARS_HOT_TABLE_SIZE", "131072");

/// Start `binary` with `args`, output to `log`, and `env` set where this process's own
/// environment does not set the variable already (the user's choice wins).
fn spawn(
    binary: &Path,
    prefix: &[String],
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Child> {
    let io = |source| Error::Io {
        path: log.display().to_string(),
        source,
    };
    let out = std::fs::File::create(log).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    // A pipe on stdin that only this process holds: the child exits when it closes, so
    // no scheduler or worker outlives the program that started it, even one killed hard.
    let mut command = Command::new(binary);
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
        // glibc keeps freed large blocks otherwise (its mmap threshold grows with them),
        // and a worker whose memory never shrinks after spilling stays paused.
        command.env("MALLOC_TRIM_THRESHOLD_", "65536");
    }
    for (name, value) in env {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    command
        .args(prefix)
        .args(args)
        .arg("--exit-on-stdin-close")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| Error::Io {
            path: format!(
                "{} (the partita binary; set PARTITA_BIN or put it on the PATH)",
                binary.display()
            ),
            source,
        })
}

/// The scheduler process, logging to `scheduler.log` in `dir`.
fn spawn_scheduler(binary: &Path, prefix: &[String], args: &[String], dir: &Path) -> Result<Child> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(binary, prefix, &args, &[], &dir.join("scheduler.log"))
}

/// What tells one cluster file from the one that replaced it: each write renames a new
/// file into place (a new inode on Unix), and its modification time.
type FileIdentity = (u64, std::time::SystemTime);

fn file_identity(path: &Path) -> Option<FileIdentity> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((inode, meta.modified().ok()?))
}

/// Send SIGTERM to `child`.
#[cfg(unix)]
#[allow(unsafe_code)]
fn terminate(child: &Child) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| Error::Internal(format!("process id {} out of range", child.id())))?;
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours; the
    // child is not reaped yet (we hold its `Child`), so the pid is still its own.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(Error::Io {
            path: format!("worker process {pid}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Processes {
    /// The first worker process that has exited, and how (it stays in the list).
    fn exited(&self) -> Option<(usize, std::process::ExitStatus)> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        (workers.iter_mut().enumerate()).find_map(|(i, c)| Some((i, c.as_mut()?.try_wait().ok()??)))
    }

    /// Worker `i`'s process, taken out of the list.
    fn take(&self, i: usize) -> Result<Child> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        (workers.get_mut(i).and_then(Option::take))
            .ok_or_else(|| Error::Internal(format!("no running worker {i}")))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // The adaptive thread first: it could start a worker after the others are killed.
        self.adaptive = None;
        let children: Vec<Child> = {
            let mut workers = (self.processes.workers.lock()).unwrap_or_else(|e| e.into_inner());
            workers.drain(..).flatten().collect()
        };
        for child in children {
            kill(child);
        }
        self.kill_scheduler();
    }
}

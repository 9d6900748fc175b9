//! The worker process: runs tasks the scheduler sends, serves its values to peers, fetches
//! the inputs it lacks, spills to disk under memory pressure; [`WorkerState`] decides, this
//! runtime does.
//!
//! One task owns the state machine. Ops run on tokio's blocking pool (the state machine
//! keeps at most `nthreads` running); fetches, spills and data requests run as tasks and
//! report back as events. Values live in a shared map the data server reads from. Spill
//! files go to a directory of this worker's own, removed when the worker stops.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partita_core::{Error, Key, Op, Result, Value};
use partita_proto::messages::{
    DataOpen, DataPush, DataResponse, Hello, PushReply, Resources, Role, RunReply, RunRequest,
    TaskFailure, ToWorker, WorkerId,
};
use partita_proto::worker::{WorkerAction, WorkerConfig, WorkerEvent, WorkerState};
use partita_proto::{Time, moving_average};
use tokio::sync::{mpsc, oneshot};

use crate::cluster_file::{ClusterFile, ServerConfigs};
use crate::task_context::{self, WorkerHandle};
use crate::wire::{Outbox, Peers, framed, join, read_msg, spawn_writer, write_value};

/// How to start a worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Threads running tasks.
    pub nthreads: u32,
    /// Bytes; 0 = unlimited (no spilling).
    pub memory_limit: u64,
    /// The IP the data server binds to and announces (`127.0.0.1` by default).
    pub host: String,
    /// A name for logs.
    pub name: String,
    /// Where spill files go (a fresh directory inside it); the system temp dir by default.
    pub spill_dir: Option<PathBuf>,
    /// The identity of the nanny that started this worker process, if any: the
    /// scheduler drops the worker that nanny started before when this one joins.
    pub nanny: Option<String>,
    /// Abstract resources it offers to tasks that ask for them (Dask's `--resources`).
    pub resources: Resources,
    /// A nanny's datagram socket (Unix) to tell that this worker's event loop turns: one
    /// datagram (this process's id) at most every second while it does. A task blocking
    /// the loop (one run inline because its kind was quick) or a deadlock stops them, and
    /// the nanny restarts the process. `@name` is a socket in Linux's abstract namespace
    /// (no file to clean up); anything else a path.
    pub liveness: Option<String>,
    /// Bytes each beat carries after this process's id: the nanny's secret (from
    /// `PARTITA_NANNY_SECRET`), without which it ignores a beat.
    pub liveness_secret: Vec<u8>,
    /// How long to keep trying to join a scheduler that cannot be reached (Dask's
    /// `death_timeout`): a worker started before its scheduler, or started again by its
    /// nanny while the scheduler restarts. Zero: one try. A scheduler that refuses the
    /// worker (a wrong token, another protocol version) is never tried again.
    pub death_timeout: Duration,
    /// The cluster file the worker was started with, read again before each further try
    /// to join (see `death_timeout`): a scheduler started again on another port or with new
    /// credentials is joined. `None`: the credentials given are the only ones tried.
    pub cluster_file: Option<PathBuf>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            nthreads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_limit: 0,
            host: "127.0.0.1".into(),
            name: format!("worker-{}", std::process::id()),
            spill_dir: None,
            nanny: None,
            resources: Resources::default(),
            liveness: None,
            liveness_secret: Vec::new(),
            death_timeout: Duration::ZERO,
            cluster_file: None,
        }
    }
}

/// The event loop's beats to its nanny ([`WorkerOptions::liveness`]): a non-blocking
/// datagram at most every [`Liveness::EVERY`]; a full or missing socket is not the
/// worker's problem (the nanny, if any, judges).
struct Liveness {
    #[cfg(unix)]
    socket: std::os::unix::net::UnixDatagram,
    /// What each beat sends: this process's id (little-endian) and the nanny's secret.
    #[cfg(unix)]
    beat: Vec<u8>,
    last: Option<Instant>,
}

impl Liveness {
    const EVERY: Duration = Duration::from_secs(1);

    #[cfg(unix)]
    fn connect(to: &str, secret: &[u8]) -> Option<Liveness> {
        use std::os::unix::net::UnixDatagram;
        let connect = |s: UnixDatagram| -> std::io::Result<UnixDatagram> {
            #[cfg(target_os = "linux")]
            if let Some(name) = to.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.connect_addr(&address)?;
                return Ok(s);
            }
            s.connect(to)?;
            Ok(s)
        };
        let socket = UnixDatagram::unbound()
            .and_then(connect)
            .and_then(|s| s.set_nonblocking(true).map(|()| s));
        match socket {
            Ok(socket) => Some(Liveness {
                socket,
                beat: [&std::process::id().to_le_bytes()[..], secret].concat(),
                last: None,
            }),
            Err(e) => {
                tracing::warn!("cannot reach the nanny at {to}: {e}");
                None
            }
        }
    }

    #[cfg(not(unix))]
    fn connect(_to: &str, _secret: &[u8]) -> Option<Liveness> {
        None
    }

    fn beat(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        #[cfg(unix)]
        let _ = self.socket.send(&self.beat);
    }
}

/// What the runtime's tasks hold in common.
struct Shared {
    store: Mutex<HashMap<Key, Value>>,
    spill_dir: PathBuf,
    spilled: Mutex<HashMap<Key, PathBuf>>,
    next_spill: AtomicU64,
    requests: Mutex<HashMap<u64, oneshot::Sender<Option<Value>>>>,
    next_request: AtomicU64,
    events: mpsc::UnboundedSender<WorkerEvent>,
    peers: Peers,
    /// Time ops of each task group (`Key::group`) take on this worker: (moving average in
    /// micros, count).
    durations: Mutex<HashMap<String, (u64, u32)>>,
    /// What tasks see of this worker ([`crate::task_context`]).
    handle: WorkerHandle,
}

/// Ops of a kind (task group, `Key::group`) whose moving average is under this many
/// microseconds after at least [`INLINE_MIN_RUNS`] runs here run on the event loop's own
/// thread: handing such a task to a pool thread and its result back (two thread wake-ups,
/// about 100 us on a small VM) costs more than running it.
const INLINE_MAX_MICROS: u64 = 50;
const INLINE_MIN_RUNS: u32 = 8;

impl Shared {
    /// Hold `value` under `key` for tasks and peers; returns its size.
    fn keep(&self, key: &Key, value: Value) -> u64 {
        let nbytes = value.nbytes() as u64;
        locked(&self.store).insert(key.clone(), value);
        nbytes
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the spill directory however the worker stops (short of SIGKILL).
struct SpillDirGuard(PathBuf);

impl Drop for SpillDirGuard {
    fn drop(&mut self) {
        let mut current = LOCAL_DIRECTORY.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == Some(&self.0) {
            *current = None;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The private folder of the worker running in this process, while one runs.
static LOCAL_DIRECTORY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The private folder of the worker running in this process (its spill files live there;
/// removed when it stops, short of a SIGKILL), or `None` outside a worker: where code running in tasks may
/// keep files of its own (Dask's `get_worker().local_directory`).
pub fn local_directory() -> Option<PathBuf> {
    LOCAL_DIRECTORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// How a worker's run ended, when not in an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// The scheduler closed it (it retired), or its process stopped it.
    Stopped,
    /// The scheduler told it to exit for its nanny to start a fresh process
    /// ([`crate::Client::restart`]).
    Restart,
    /// The connection to the scheduler broke without the scheduler closing this worker
    /// (it gave the worker up after missed heartbeats, the network failed, the scheduler
    /// died): a fresh process may join again, if the scheduler is there.
    SchedulerLost,
}

/// Join the cluster and work until the scheduler closes this worker or the connection to
/// it breaks ([`WorkerExit`] says which); an error if it cannot join.
pub async fn run_worker(cluster: ClusterFile, options: WorkerOptions) -> Result<WorkerExit> {
    run_worker_until(cluster, options, std::future::pending()).await
}

/// [`run_worker`], retiring gracefully once `retire` completes (a signal, say): the
/// worker asks the scheduler to retire it, goes on serving its values while they are
/// handed off to other workers and its running tasks finish, and returns `Ok` when the
/// scheduler closes it.
pub async fn run_worker_until(
    cluster: ClusterFile,
    options: WorkerOptions,
    retire: impl std::future::Future<Output = ()>,
) -> Result<WorkerExit> {
    let Joined {
        cluster,
        endpoint,
        servers,
        address,
        link: (conn, send, mut recv, id),
    } = join_patiently(cluster, &options).await?;
    let cluster = Arc::new(cluster);
    let id = WorkerId(id);
    tracing::info!(worker = %id, %address, "joined the scheduler at {}", cluster.address);

    let base = options.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let spill_dir = base.join(format!("partita-spill-{}-{}", std::process::id(), id.0));
    std::fs::create_dir_all(&spill_dir).map_err(|source| Error::Io {
        path: spill_dir.display().to_string(),
        source,
    })?;
    let _guard = SpillDirGuard(spill_dir.clone());
    *LOCAL_DIRECTORY.lock().unwrap_or_else(|e| e.into_inner()) = Some(spill_dir.clone());

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let handle = WorkerHandle {
        cluster: Arc::clone(&cluster),
        events: events_tx.clone(),
        rejoining: Arc::new(Mutex::new(Some(HashMap::new()))),
        uses_cluster: Arc::default(),
    };
    let _registration = task_context::register_worker(handle.clone());
    let shared = Arc::new(Shared {
        store: Mutex::new(HashMap::new()),
        spill_dir,
        spilled: Mutex::new(HashMap::new()),
        next_spill: AtomicU64::new(0),
        requests: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        events: events_tx.clone(),
        peers: Peers::new(endpoint.clone(), Arc::clone(&cluster), options.name.clone()),
        durations: Mutex::new(HashMap::new()),
        handle,
    });

    // To the scheduler.
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    spawn_writer(send, out_rx);
    // From the scheduler; its loss ends the worker.
    let (lost_tx, mut lost) = oneshot::channel::<String>();
    let tx = events_tx.clone();
    tokio::spawn(async move {
        let reason = loop {
            match read_msg::<ToWorker>(&mut recv).await {
                Ok(Some(msg)) => {
                    if tx.send(WorkerEvent::FromScheduler(msg)).is_err() {
                        break "worker stopped".to_string();
                    }
                }
                Ok(None) => break "the scheduler closed the connection".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        let _ = lost_tx.send(reason);
    });
    // The data server.
    tokio::spawn(serve_data(
        endpoint.clone(),
        servers,
        Arc::clone(&cluster),
        Arc::clone(&shared),
    ));
    // Memory samples.
    let tx = events_tx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx
                .send(WorkerEvent::MemorySample { rss: rss_bytes() })
                .is_err()
            {
                break;
            }
        }
    });

    let start = Instant::now();
    let now = || Time(start.elapsed().as_micros() as u64);
    let mut config = WorkerConfig::new(id, options.nthreads, options.memory_limit);
    config.heartbeat_interval = Duration::from_millis(500);
    config.resources = options.resources.clone();
    let mut state = WorkerState::new(config, now());
    let mut outbox = Outbox::default();
    let mut retire = std::pin::pin!(retire);
    let mut retire_asked = false;
    let mut stop = None;
    let mut liveness = (options.liveness.as_deref())
        .and_then(|to| Liveness::connect(to, &options.liveness_secret));
    let result = loop {
        let wake = state
            .poll_timeout()
            .map(|t| t.since(now()))
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => break Ok(WorkerExit::Stopped) },
            _ = tokio::time::sleep(wake) => WorkerEvent::Tick,
            _ = &mut retire, if !retire_asked => {
                retire_asked = true;
                tracing::info!(worker = %id, "asking the scheduler to retire this worker");
                WorkerEvent::Retire
            }
            reason = &mut lost => {
                let reason = reason.unwrap_or_else(|_| "reader stopped".into());
                // Closed on purpose (shutting down, retired, a message refused): over.
                // Written off (code 2: missed heartbeats) or broken (a timeout, a reset):
                // a fresh process may join again.
                let why = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
                if let Ok(quinn::ConnectionError::ApplicationClosed(close)) = &why
                    && close.error_code != quinn::VarInt::from_u32(2)
                {
                    break Err(Error::Transport(format!(
                        "the scheduler closed the connection: {reason}"
                    )));
                }
                tracing::error!(worker = %id, "lost the scheduler: {reason}");
                break Ok(WorkerExit::SchedulerLost);
            }
        };
        // Results of tasks run inline come first, then whatever else arrived; what this
        // pass says to the scheduler leaves in one piece when nothing is left to handle.
        let mut inline = Vec::new();
        let mut first = Some(event);
        while let Some(event) = (first.take())
            .or_else(|| inline.pop())
            .or_else(|| events.try_recv().ok())
        {
            // Here, not on a timer of its own: a long run of events handled counts as
            // turning, one that never returns stops the beats.
            if let Some(l) = &mut liveness {
                l.beat();
            }
            let actions = state.handle(event, now());
            perform(
                &shared,
                &mut outbox,
                &out_tx,
                actions,
                &mut inline,
                &mut stop,
            );
        }
        outbox.flush(&out_tx);
        if let Some((reason, restart)) = stop.take() {
            tracing::info!(worker = %id, "stopping: {reason}");
            break Ok(match restart {
                true => WorkerExit::Restart,
                false => WorkerExit::Stopped,
            });
        }
    };
    conn.close(0u32.into(), b"worker stopping");
    endpoint.close(0u32.into(), b"worker stopping");
    // Tasks waiting to rejoin learn that no thread is coming.
    locked(&shared.handle.rejoining).take();
    result
}

/// A worker that has joined: the credentials and data server it joined with and its
/// connection to the scheduler.
struct Joined {
    cluster: ClusterFile,
    endpoint: quinn::Endpoint,
    servers: ServerConfigs,
    address: String,
    /// What [`join`] gave: the connection, its control stream and the worker's id.
    link: (quinn::Connection, quinn::SendStream, quinn::RecvStream, u32),
}

/// Bind the data server for `cluster`'s credentials on `host`; its address (`host:port`).
fn bind_data_server(
    cluster: &ClusterFile,
    host: &str,
) -> Result<(quinn::Endpoint, ServerConfigs, String)> {
    let bind = crate::wire::resolve(&format!("{host}:0"))?;
    let servers = cluster.server_configs()?;
    let endpoint = crate::cluster_file::endpoint(bind, Some(&servers))
        .map_err(|e| Error::Transport(format!("cannot bind the data server on {bind}: {e}")))?;
    let port = endpoint
        .local_addr()
        .map_err(|e| Error::Transport(format!("no local address: {e}")))?
        .port();
    Ok((endpoint, servers, format!("{host}:{port}")))
}

/// [`join`], tried again while the scheduler cannot be reached (not when it refuses this
/// worker), pausing 100 ms, doubling to 5 s, for up to [`WorkerOptions::death_timeout`].
/// Before each new try the cluster file ([`WorkerOptions::cluster_file`]) is read again: a
/// scheduler started again is found at its new address, and with new credentials the
/// data server is bound again with them.
async fn join_patiently(mut cluster: ClusterFile, options: &WorkerOptions) -> Result<Joined> {
    let deadline = Instant::now() + options.death_timeout;
    let mut pause = Duration::from_millis(100);
    let (mut endpoint, mut servers, mut address) = bind_data_server(&cluster, &options.host)?;
    loop {
        let role = Role::Worker {
            nthreads: options.nthreads,
            memory_limit: options.memory_limit,
            address: address.clone(),
            nanny: options.nanny.clone(),
            resources: options.resources.clone(),
        };
        match join(&endpoint, &cluster, role, &options.name).await {
            Ok(link) => {
                return Ok(Joined {
                    cluster,
                    endpoint,
                    servers,
                    address,
                    link,
                });
            }
            Err(Error::Transport(e)) if Instant::now() + pause < deadline => {
                tracing::warn!("{e}; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
        let Some(path) = &options.cluster_file else {
            continue;
        };
        match ClusterFile::read(path) {
            Ok(fresh) if fresh.same_credentials(&cluster) => cluster = fresh,
            Ok(fresh) => match bind_data_server(&fresh, &options.host) {
                Ok(bound) => {
                    tracing::info!(
                        "{} holds new credentials (a scheduler started again): joining with them",
                        path.display()
                    );
                    endpoint.close(0u32.into(), b"new credentials");
                    (endpoint, servers, address) = bound;
                    cluster = fresh;
                }
                Err(e) => tracing::warn!(
                    "cannot serve data with the new credentials of {} ({e}); trying as before",
                    path.display()
                ),
            },
            Err(e) => tracing::warn!("cannot read the cluster file again ({e}); trying as before"),
        }
    }
}

/// Carry out the state machine's actions; quick tasks run here and their results go to
/// `inline` for the caller to hand back.
fn perform(
    shared: &Arc<Shared>,
    outbox: &mut Outbox,
    out: &mpsc::UnboundedSender<Vec<u8>>,
    actions: Vec<WorkerAction>,
    inline: &mut Vec<WorkerEvent>,
    stop: &mut Option<(String, bool)>,
) {
    for action in actions {
        match action {
            WorkerAction::SendToScheduler(msg) => {
                if let Err(e) = outbox.push(&msg, out) {
                    tracing::error!("cannot encode a message to the scheduler: {e}");
                }
            }
            WorkerAction::Execute {
                key,
                payload,
                inputs,
            } => {
                if is_quick(shared, &key) {
                    let run = || run_task(shared, key.clone(), &payload, &inputs);
                    match task_context::run_as(&key, &shared.handle, true, run) {
                        (event, false) => inline.push(event),
                        // It needs a thread of its own: drop this run, do it there.
                        (event, true) => {
                            if matches!(event, WorkerEvent::ExecuteDone { .. }) {
                                locked(&shared.store).remove(&key);
                            }
                            execute(shared, key, payload.into_vec(), inputs);
                        }
                    }
                } else {
                    execute(shared, key, payload.into_vec(), inputs);
                }
            }
            WorkerAction::Fetch { keys, from, .. } => {
                let shared = Arc::clone(shared);
                tokio::spawn(async move {
                    let start = Instant::now();
                    let results = shared.peers.fetch_many(&from.address, &keys).await;
                    tracing::debug!(
                        keys = keys.len(),
                        from = %from.id,
                        micros = start.elapsed().as_micros() as u64,
                        "fetched"
                    );
                    for (key, result) in keys.into_iter().zip(results) {
                        let event = match result {
                            Ok(value) => {
                                let nbytes = shared.keep(&key, value);
                                WorkerEvent::FetchDone {
                                    key,
                                    from: from.id,
                                    nbytes,
                                }
                            }
                            Err(e) => {
                                tracing::warn!("fetching {key} from {} failed: {e}", from.id);
                                WorkerEvent::FetchFailed { key, from: from.id }
                            }
                        };
                        let _ = shared.events.send(event);
                    }
                });
            }
            WorkerAction::SendData {
                request_id, key, ..
            } => {
                let value = locked(&shared.store).get(&key).cloned();
                if let Some(reply) = locked(&shared.requests).remove(&request_id) {
                    let _ = reply.send(value);
                }
            }
            WorkerAction::DataMissing { request_id, .. } => {
                if let Some(reply) = locked(&shared.requests).remove(&request_id) {
                    let _ = reply.send(None);
                }
            }
            WorkerAction::Spill { key } => spill(shared, key),
            WorkerAction::Unspill { key } => unspill(shared, key),
            WorkerAction::DeleteSpilled { key } => {
                if let Some(path) = locked(&shared.spilled).remove(&key) {
                    let _ = std::fs::remove_file(path);
                }
            }
            WorkerAction::DropValue { key } => {
                locked(&shared.store).remove(&key);
            }
            WorkerAction::Rejoined { key } => {
                let wake = (locked(&shared.handle.rejoining).as_mut()).and_then(|r| r.remove(&key));
                if let Some(wake) = wake {
                    let _ = wake.send(());
                }
            }
            WorkerAction::Log(level, line) => crate::wire::log(level, &line),
            WorkerAction::Stop { reason, restart } => *stop = Some((reason, restart)),
        }
    }
}

/// Has this task's kind been quick enough here to run on the event loop's thread?
/// Never one whose kind used the cluster from inside ([`task_context`]): those block.
fn is_quick(shared: &Shared, key: &Key) -> bool {
    locked(&shared.durations)
        .get(key.group())
        .is_some_and(|&(avg, n)| n >= INLINE_MIN_RUNS && avg < INLINE_MAX_MICROS)
        && !locked(&shared.handle.uses_cluster).contains(key.group())
}

/// What this process has used so far, for the debug task stream: a task that took longer
/// than usual either computed longer (`cpu_micros`, over all threads: polars runs a plan on
/// its own pool), waited for a core (`waited_micros`: runnable but not running) or faulted
/// in fresh memory (`minflt`). Process-wide, so tasks running at the same time share them.
/// Linux's counters (`/proc/self/task/*/schedstat`, `/proc/self/stat`); zero elsewhere.
#[derive(Default)]
struct Usage {
    cpu_micros: u64,
    waited_micros: u64,
    minflt: u64,
}

impl Usage {
    fn now() -> Usage {
        let mut usage = Usage::default();
        for thread in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
            let Ok(thread) = thread else { continue };
            // schedstat: nanoseconds on a core, nanoseconds runnable in a queue, timeslices.
            let Ok(text) = std::fs::read_to_string(thread.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>());
            if let (Some(Ok(cpu)), Some(Ok(waited))) = (fields.next(), fields.next()) {
                usage.cpu_micros += cpu / 1000;
                usage.waited_micros += waited / 1000;
            }
        }
        // stat: minor faults are the 10th field; the command name (2nd) may hold spaces,
        // so count from the parenthesis that closes it.
        if let Ok(text) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, rest)) = text.rsplit_once(')')
            && let Some(Ok(minflt)) = rest.split_ascii_whitespace().nth(7).map(str::parse)
        {
            usage.minflt = minflt;
        }
        usage
    }

    /// Used between `before` and now (threads that ended in between are not counted).
    fn since(&self, before: &Usage) -> Usage {
        Usage {
            cpu_micros: self.cpu_micros.saturating_sub(before.cpu_micros),
            waited_micros: self.waited_micros.saturating_sub(before.waited_micros),
            minflt: self.minflt.saturating_sub(before.minflt),
        }
    }
}

/// Decode and run one task's op on the blocking pool.
fn execute(shared: &Arc<Shared>, key: Key, payload: Vec<u8>, inputs: Vec<Key>) {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let run = || run_task(&shared, key.clone(), &payload, &inputs);
        let (event, _) = task_context::run_as(&key, &shared.handle, false, run);
        let _ = shared.events.send(event);
    });
}

/// Run one task's op on this thread, keep its value and say how it went.
fn run_task(shared: &Shared, key: Key, payload: &[u8], inputs: &[Key]) -> WorkerEvent {
    let values: std::result::Result<Vec<Value>, Key> = {
        let store = locked(&shared.store);
        inputs
            .iter()
            .map(|k| store.get(k).cloned().ok_or_else(|| k.clone()))
            .collect()
    };
    let start = Instant::now();
    let usage = tracing::enabled!(tracing::Level::DEBUG).then(Usage::now);
    let result = match values {
        Err(missing) => Err(Error::Internal(format!(
            "input {missing} of task {key} is not in this worker's memory"
        ))),
        Ok(values) => decode_op(&key, payload)
            .and_then(|op| partita_core::op::execute_guarded(&key, op.as_ref(), &values)),
    };
    let micros = start.elapsed().as_micros() as u64;
    // With the log's timestamps, `RUST_LOG=partita_distributed=debug` gives a task stream.
    if let Some(before) = usage {
        let used = Usage::now().since(&before);
        tracing::debug!(
            task = %key,
            micros,
            cpu_micros = used.cpu_micros,
            waited_micros = used.waited_micros,
            minflt = used.minflt,
            ok = result.is_ok(),
            "ran"
        );
    }
    {
        let mut durations = locked(&shared.durations);
        // By group: delayed calls have a name each (`inc-17`), timed by name none would
        // ever count as quick.
        let group = key.group();
        match durations.get_mut(group) {
            Some(d) => *d = (moving_average(d.0, micros), d.1.saturating_add(1)),
            None => {
                durations.insert(group.to_string(), (micros, 1));
            }
        }
    }
    match result {
        Ok(value) => {
            let nbytes = shared.keep(&key, value);
            WorkerEvent::ExecuteDone { key, nbytes }
        }
        Err(e) => WorkerEvent::ExecuteFailed {
            error: failure_of(&key, &e),
            key,
        },
    }
}

/// An op's error as it travels: the task that really failed (inside a fused chain, the
/// inner one), whether it panicked, and the message without the task prefix.
pub fn failure_of(key: &Key, error: &Error) -> TaskFailure {
    match error {
        Error::Compute { key, source } => TaskFailure::from_error(key.clone(), source),
        Error::Panic { key, message } => TaskFailure {
            task: key.clone(),
            panicked: true,
            message: message.clone(),
            kind: String::new(),
        },
        other => TaskFailure::from_error(key.clone(), other),
    }
}

/// A task's op from its wire form (MessagePack of the `typetag` trait object).
pub fn decode_op(key: &Key, payload: &[u8]) -> Result<Arc<dyn Op>> {
    rmp_serde::from_slice::<Arc<dyn Op>>(payload).map_err(|e| {
        let text = e.to_string();
        if text.contains("`python-") {
            return Error::NotImplemented(format!(
                "task {key} is a Python function, and this worker has no Python; start \
                 workers that can run it with `python -m partita worker ...` (pt.LocalCluster \
                 does)"
            ));
        }
        Error::Codec(format!(
            "task {key}: this worker cannot decode its op ({e}); is the worker built with the \
             crate that defines it?"
        ))
    })
}

/// A task's op in wire form; closures (which cannot leave their process) are an error
/// naming the task.
pub fn encode_op(key: &Key, op: &Arc<dyn Op>) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(op)
        .map_err(|e| Error::Codec(format!("task {key} cannot run on a cluster: {e}")))
}

fn spill(shared: &Arc<Shared>, key: Key) {
    let Some(value) = locked(&shared.store).get(&key).cloned() else {
        let _ = shared.events.send(WorkerEvent::SpillFailed {
            key,
            error: "not in memory".into(),
        });
        return;
    };
    let n = shared.next_spill.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        tracing::info!(
            "memory above target: spilling least recently used values to {}",
            shared.spill_dir.display()
        );
    }
    tracing::debug!("spilling {key}");
    let path = shared.spill_dir.join(format!("{n}.value"));
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let written = crate::spill_file::write(&path, &value);
        let event = match written {
            Ok(()) => {
                locked(&shared.spilled).insert(key.clone(), path);
                locked(&shared.store).remove(&key);
                WorkerEvent::Spilled { key }
            }
            Err(e) => WorkerEvent::SpillFailed {
                key,
                error: e.to_string(),
            },
        };
        let _ = shared.events.send(event);
    });
}

fn unspill(shared: &Arc<Shared>, key: Key) {
    let path = locked(&shared.spilled).get(&key).cloned();
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        let read = match path {
            None => Err(Error::Internal(format!("{key} has no spill file"))),
            Some(path) => crate::spill_file::read(&path).inspect(|_| {
                locked(&shared.spilled).remove(&key);
                let _ = std::fs::remove_file(&path);
            }),
        };
        let event = match read {
            Ok(value) => {
                let nbytes = shared.keep(&key, value);
                WorkerEvent::Unspilled { key, nbytes }
            }
            Err(e) => WorkerEvent::UnspillFailed {
                key,
                error: e.to_string(),
            },
        };
        let _ = shared.events.send(event);
    });
}

/// Serve values to peers and clients: one stream per request.
async fn serve_data(
    endpoint: quinn::Endpoint,
    servers: ServerConfigs,
    cluster: Arc<ClusterFile>,
    shared: Arc<Shared>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (cluster, shared) = (Arc::clone(&cluster), Arc::clone(&shared));
        let remote = incoming.remote_address();
        let Ok(connecting) = servers.accept(incoming) else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(conn) = connecting.await else { return };
            loop {
                let Ok((send, recv)) = conn.accept_bi().await else {
                    return;
                };
                let (cluster, shared, conn) =
                    (Arc::clone(&cluster), Arc::clone(&shared), conn.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(send, recv, &cluster, &shared).await {
                        tracing::warn!(%remote, "data request refused: {e}");
                        if matches!(e, Error::Auth(_) | Error::Codec(_)) {
                            conn.close(1u32.into(), b"refused");
                        }
                    }
                });
            }
        });
    }
}

async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cluster: &ClusterFile,
    shared: &Shared,
) -> Result<()> {
    let hello: Hello = read_msg(&mut recv)
        .await?
        .ok_or_else(|| Error::Transport("data stream closed before its hello".into()))?;
    hello.check(&cluster.token)?;
    let open: DataOpen = read_msg(&mut recv)
        .await?
        .ok_or_else(|| Error::Transport("data stream closed before its request".into()))?;
    let request = match open {
        DataOpen::Fetch(request) => request,
        DataOpen::Push(push) => return receive(send, recv, push, shared).await,
        DataOpen::Run(run) => return run_here(send, run).await,
    };
    // Ask the state machine for every key at once, then answer in the request's order.
    let mut pending = Vec::with_capacity(request.keys.len());
    for key in &request.keys {
        let local = shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        locked(&shared.requests).insert(local, tx);
        let _ = shared.events.send(WorkerEvent::PeerWantsData {
            request_id: local,
            key: key.clone(),
        });
        pending.push(rx);
    }
    for (key, rx) in request.keys.into_iter().zip(pending) {
        let value = rx.await.ok().flatten();
        let write = |e| Error::Transport(format!("sending {key}: {e}"));
        match value {
            Some(value) => {
                let data = |nbytes, body| DataResponse::Data {
                    request_id: request.request_id,
                    key: key.clone(),
                    nbytes,
                    body,
                };
                let what = format!("sending {key}");
                write_value(&mut send, Vec::new(), &value, data, &what).await?;
            }
            None => {
                let header = framed(&DataResponse::Missing {
                    request_id: request.request_id,
                    key: key.clone(),
                })?;
                send.write_all(&header).await.map_err(write)?;
            }
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

/// Run a client's op here (its `run`) on the blocking pool, outside the task slots, and
/// answer with its value or its failure.
async fn run_here(mut send: quinn::SendStream, run: RunRequest) -> Result<()> {
    let RunRequest { key, payload } = run;
    let result = tokio::task::spawn_blocking(move || {
        decode_op(&key, &payload)
            .and_then(|op| partita_core::op::execute_guarded(&key, op.as_ref(), &[]))
            .map_err(|e| failure_of(&key, &e))
    })
    .await
    .map_err(|e| Error::Internal(format!("running a client's op: {e}")))?;
    match result {
        Ok(value) => {
            let reply = |nbytes, body| RunReply::Value { nbytes, body };
            let what = "answering a client's run";
            write_value(&mut send, Vec::new(), &value, reply, what).await?;
        }
        Err(error) => crate::wire::write_msg(&mut send, &RunReply::Failed { error }).await?,
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

/// Keep a value a client pushed (its scatter) unless this worker holds the key already,
/// tell the state machine, and answer the client.
async fn receive(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    push: DataPush,
    shared: &Shared,
) -> Result<()> {
    let DataPush {
        key,
        nbytes,
        body,
        copy,
    } = push;
    // A stream cut short is the stream's error; a value that does not decode (a codec
    // this worker lacks, damaged bytes) is refused with the reason.
    let reply = match crate::wire::read_value(&mut recv, nbytes, body, &key).await? {
        Ok(value) => {
            let nbytes = value.nbytes() as u64;
            let fresh = match locked(&shared.store).entry(key.clone()) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(value);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => false,
            };
            if fresh {
                let _ = shared.events.send(WorkerEvent::Received {
                    key: key.clone(),
                    nbytes,
                    copy,
                });
                PushReply::Stored { key }
            } else {
                PushReply::Refused {
                    key,
                    reason: "this worker holds that key already".into(),
                }
            }
        }
        Err(e) => {
            tracing::warn!("a pushed value for {key} was refused: {e}");
            PushReply::Refused {
                key,
                reason: e.to_string(),
            }
        }
    };
    crate::wire::write_msg(&mut send, &reply).await?;
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

/// The process's resident memory in bytes (Linux: `VmRSS` of /proc/self/status), 0 where
/// unknown.
pub fn rss_bytes() -> u64 {
    rss_from("/proc/self/status")
}

/// Process `pid`'s resident memory in bytes (Linux; 0 elsewhere or once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    rss_from(&format!("/proc/{pid}/status"))
}

fn rss_from(path: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(path) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::Usage;

    /// The task stream's usage figures move with the work: CPU time with computing, minor
    /// faults with touching memory the process never had.
    #[cfg(target_os = "linux")]
    #[test]
    fn usage_counts_computing_and_fresh_memory() {
        let before = Usage::now();
        let start = std::time::Instant::now();
        let mut x = 1u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        // 64 MiB written page by page: 16,384 fresh pages (fewer if they come huge).
        let mut fresh = vec![0u8; 64 << 20];
        for page in fresh.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&fresh);
        let used = Usage::now().since(&before);
        assert!(used.cpu_micros >= 20_000, "cpu {} µs", used.cpu_micros);
        assert!(used.minflt >= 32, "{} minor faults", used.minflt);
    }
}

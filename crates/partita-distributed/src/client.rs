//! The client: submits graphs to the scheduler and gathers results straight from workers.
//!
//! [`Client`] implements partita's [`Scheduler`] trait, so any array, frame or delayed
//! graph computes on a cluster unchanged (`x.compute(&client)`). It owns a small tokio
//! runtime; its methods block, so call them from ordinary threads, not from async code.
//!
//! It also hands out [`Future`]s, Dask-style: [`Client::submit`] sends a graph and returns
//! at once with one future per wanted key; a future keeps its key alive on the cluster
//! until the last clone of it is dropped, and can be waited on, gathered, cancelled, or
//! iterated in completion order ([`Client::as_completed`]). Key decisions:
//! - **One status table, fed by the reader task.** Every `KeyInMemory`/`KeyErred`/
//!   `Cancelled` the scheduler sends updates the status of the futures for that key before
//!   it is forwarded to whoever waits, under one lock, so a waiter that checks the status
//!   and subscribes under that lock never misses the change.
//! - **Submission is confirmed.** `submit` follows the graph with a `ListWorkers` request;
//!   the scheduler handles one client's messages in order, so the answer to it means the
//!   graph was accepted, and a refusal arrives before it (an error from `submit` itself).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use partita_core::{
    Error, Execution, ExecutionContext, ExecutionPlan, Key, Op, Result, RunStats, Scheduler, Value,
};
use partita_proto::messages::{
    AdaptiveTarget, ClusterInfo, CoordReply, Coordinate, DatasetReply, FromClient, Peer, Resources,
    Restrictions, Role, TaskFailure, TaskRecord, TaskSpec, ToClient, WorkerId, task_priority,
};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

use crate::cluster_file::ClusterFile;
use crate::dataset::Dataset;
use crate::wire::{Peers, framed, join, read_msg, spawn_writer};
use crate::worker::encode_op;

/// Messages for one waiting computation.
type Inbox = mpsc::UnboundedSender<ToClient>;

#[derive(Default)]
struct Routes {
    /// Waiting computations by the keys they want.
    by_key: HashMap<Key, Vec<(u64, Inbox)>>,
    /// Every waiting computation (for messages not about one key).
    all: HashMap<u64, Inbox>,
    /// The keys each subscription listens to (to unsubscribe without a full scan).
    keys_of: HashMap<u64, Vec<Key>>,
    /// Coordination requests waiting for their answer, by request number (an answer goes
    /// to its requester only: many tasks of a worker may wait on one connection).
    by_request: HashMap<u64, Inbox>,
    next: u64,
    /// Keys with live futures: how many futures, and what the scheduler last said.
    tracked: HashMap<Key, (usize, KeyState)>,
    /// The connection to the scheduler is gone: nothing will be routed any more, so a
    /// computation registering now is told at once, and a new future is lost.
    closed: bool,
    /// Which connection routes here: bumped when the client connects again, so a reader
    /// of an older connection neither routes nor closes anything any more.
    generation: u64,
}

/// What the client knows of a key it holds futures for.
#[derive(Clone, Debug)]
enum KeyState {
    Pending,
    Finished(Vec<Peer>),
    Erred(TaskFailure),
    Cancelled,
    /// The connection to the scheduler is gone.
    Lost,
}

/// Where a [`Future`]'s key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutureStatus {
    /// Not computed yet (or being recomputed after its holders died).
    Pending,
    /// In memory on some worker.
    Finished,
    /// Its task (or one it depends on) failed.
    Error,
    /// Cancelled by this client.
    Cancelled,
    /// The connection to the scheduler was lost.
    Lost,
}

impl KeyState {
    fn status(&self) -> FutureStatus {
        match self {
            KeyState::Pending => FutureStatus::Pending,
            KeyState::Finished(_) => FutureStatus::Finished,
            KeyState::Erred(_) => FutureStatus::Error,
            KeyState::Cancelled => FutureStatus::Cancelled,
            KeyState::Lost => FutureStatus::Lost,
        }
    }

    /// The error `key` ended with, as the local schedulers report it: a failed task (maybe
    /// a dependency), cancellation, or the lost connection; `None` while pending or done.
    fn error(&self, key: &Key) -> Option<Error> {
        match self {
            KeyState::Pending | KeyState::Finished(_) => None,
            KeyState::Erred(failure) => Some(rebuild_error(failure.clone())),
            KeyState::Cancelled => Some(Error::Compute {
                key: key.clone(),
                source: Box::new(Error::Cancelled),
            }),
            KeyState::Lost => Some(scheduler_gone()),
        }
    }
}

/// How a submission runs (Dask's keyword arguments of `submit` and `compute`).
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// Times a failing task is run again before its error counts; `None`: the client's
    /// ([`Client::set_retries`]).
    pub retries: Option<u32>,
    /// The workers its tasks may run on: addresses (`host:port`, as [`Client::workers`]
    /// lists them) or hosts (any worker there); empty: anywhere. A task whose workers are
    /// all gone waits for one to join (the scheduler logs a warning), as Dask's do.
    pub workers: Vec<String>,
    /// With `workers`: run anywhere while none of them is connected, rather than wait.
    pub allow_other_workers: bool,
    /// What each of its tasks holds while it runs (Dask's `resources=`, e.g. `GPU=1`):
    /// only workers offering at least that much run them (`partita worker --resources`),
    /// each as many at once as its offer covers. Tasks wait for such a worker to join.
    pub resources: Resources,
    /// Higher goes first (Dask's `priority=`): its tasks are started before any of a
    /// lower priority not started yet, wherever they wait (the scheduler's queues, the
    /// workers' ready queues); within one priority, the graph's own order. Running tasks
    /// are never interrupted. 0 by default.
    pub priority: i32,
}

impl SubmitOptions {
    /// Just a number of retries.
    pub fn retries(n: u32) -> SubmitOptions {
        SubmitOptions {
            retries: Some(n),
            ..SubmitOptions::default()
        }
    }

    /// Only on these workers (addresses or hosts).
    pub fn on_workers(workers: impl IntoIterator<Item = impl Into<String>>) -> SubmitOptions {
        SubmitOptions {
            workers: workers.into_iter().map(Into::into).collect(),
            ..SubmitOptions::default()
        }
    }

    /// Its tasks hold these resources while they run.
    pub fn with_resources(resources: Resources) -> SubmitOptions {
        SubmitOptions {
            resources,
            ..SubmitOptions::default()
        }
    }

    /// Added to the graph order of each task (lower runs first): a priority step outranks
    /// any graph order, which is a `u32` ([`partita_proto::messages::task_priority`]).
    fn priority_offset(&self) -> i64 {
        task_priority(self.priority, 0)
    }

    fn restrictions(&self) -> Option<Restrictions> {
        let r = Restrictions {
            workers: self.workers.clone(),
            loose: self.allow_other_workers,
            resources: self.resources.clone(),
        };
        (!r.is_empty()).then_some(r)
    }
}

/// A connection to a partita cluster. Cheap to share (a clone is the same connection):
/// the connection lives while the client, a clone or any of its futures does.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Applied to what this handle computes, persists and submits ([`Client::with_options`]).
    options: SubmitOptions,
}

struct Inner {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    /// The cluster file this client was connected with, read again before connecting
    /// again (a scheduler started again may listen on another port, with other
    /// credentials); `None` when the credentials were handed over ([`Client::connect_with`]).
    cluster_file: Option<PathBuf>,
    /// The connection now: replaced when the client connects again ([`Client::reconnect`]).
    session: Mutex<Arc<Session>>,
    /// Held while connecting again, so one thread does it and the others wait for it.
    reconnecting: Mutex<()>,
    /// How long a call on a client whose scheduler is gone keeps trying to connect again,
    /// in milliseconds ([`Client::set_reconnect_timeout`]).
    reconnect_timeout_ms: AtomicU64,
    routes: Arc<Mutex<Routes>>,
    /// How many running computations and futures of this client want each key: the
    /// scheduler keeps one "wanted" mark per client, released when the last is done.
    held: Mutex<HashMap<Key, usize>>,
    /// Times a failing task is run again before its error counts ([`Client::set_retries`]).
    retries: AtomicU32,
    /// Numbers this client's requests that are answered by number ([`Client::replicate`]).
    next_request: AtomicU64,
}

/// One connection to a scheduler: what it was made with, and how to reach it and its
/// workers.
struct Session {
    cluster: Arc<ClusterFile>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    peers: Arc<Peers>,
    conn: quinn::Connection,
}

/// How long a client whose scheduler went away tries to connect again, by default.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest one try to connect again may take before the next (which reads the
/// cluster file again).
const RECONNECT_TRY: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("scheduler", &self.inner.session().cluster.address)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Connect with the cluster file the scheduler wrote. If the scheduler goes away, the
    /// next call reads the file again and connects to whatever scheduler it names then
    /// (see [`Client::reconnect`]).
    pub fn connect(cluster_file: impl AsRef<Path>) -> Result<Client> {
        let path = cluster_file.as_ref();
        // Read again from wherever the process is by then.
        let again = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Client::open(ClusterFile::read(path)?, Some(again))
    }

    /// Run a task whose op fails again, up to `n` times, before its error counts (Dask's
    /// `retries=`), for everything this client submits from now on: computes through the
    /// [`Scheduler`] trait, [`Client::submit`] and [`Client::submit_task`]. A retry runs on
    /// whichever worker the scheduler picks. Workers dying under a task are another matter
    /// (the scheduler's `allowed_failures`). Default 0.
    pub fn set_retries(&self, n: u32) {
        self.inner.retries.store(n, Ordering::Relaxed);
    }

    /// Retries given to tasks submitted now (see [`Client::set_retries`]).
    pub fn retries(&self) -> u32 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Connect with credentials in hand. Connecting again (see [`Client::reconnect`]) uses
    /// the same ones: a scheduler started again with `--reuse-credentials` on a fixed
    /// `--listen` address.
    pub fn connect_with(cluster: ClusterFile) -> Result<Client> {
        Client::open(cluster, None)
    }

    fn open(cluster: ClusterFile, cluster_file: Option<PathBuf>) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("partita-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the client runtime: {e}")))?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let endpoint = runtime.block_on(async {
            let bind = crate::wire::resolve("0.0.0.0:0")?;
            crate::cluster_file::endpoint(bind, None)
                .map_err(|e| Error::Transport(format!("cannot open a UDP socket: {e}")))
        })?;
        let session = runtime.block_on(Session::open(&endpoint, cluster, &routes, 0))?;
        Ok(Client {
            options: SubmitOptions::default(),
            inner: Arc::new(Inner {
                runtime,
                endpoint,
                cluster_file,
                session: Mutex::new(Arc::new(session)),
                reconnecting: Mutex::new(()),
                reconnect_timeout_ms: AtomicU64::new(RECONNECT_TIMEOUT.as_millis() as u64),
                routes,
                held: Mutex::new(HashMap::new()),
                retries: AtomicU32::new(0),
                next_request: AtomicU64::new(1),
            }),
        })
    }

    /// How long a call keeps trying to connect again once the scheduler has gone away
    /// (default 10 s); zero never connects again, so every call fails at once with "lost
    /// the connection to the scheduler".
    pub fn set_reconnect_timeout(&self, timeout: Duration) {
        (self.inner.reconnect_timeout_ms).store(
            timeout.as_millis().min(u64::MAX.into()) as u64,
            Ordering::Relaxed,
        );
    }

    /// See [`Client::set_reconnect_timeout`].
    pub fn reconnect_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.reconnect_timeout_ms.load(Ordering::Relaxed))
    }

    /// Connect again to the scheduler if the connection is gone, trying for up to
    /// `timeout` (the cluster file is read again before each try; a refusal, such as a
    /// wrong token, ends it). Calls that start work (computes, submits, scatters,
    /// requests) do this by themselves, for the [`Client::set_reconnect_timeout`] time,
    /// once the loss is known: at once when the scheduler closed the connection, after the
    /// 5 s idle timeout when it was killed (a call in between fails with "lost the
    /// connection to the scheduler"). The new scheduler knows nothing of the old one's
    /// keys: futures from before are lost until a computation produces their keys again,
    /// persisted values must be persisted again, and leases and subscriptions went with
    /// the old scheduler. Does nothing when connected.
    pub fn reconnect(&self, timeout: Duration) -> Result<()> {
        self.inner.reconnect(timeout)
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> String {
        self.inner.session().cluster.address.clone()
    }

    /// Where the scheduler serves `/metrics` and `/info` (`host:port`, from the cluster
    /// file), if it was started with `--metrics`; Dask's `client.dashboard_link`.
    pub fn metrics_address(&self) -> Option<String> {
        self.inner.session().cluster.metrics.clone()
    }

    /// The workers connected now, with their thread counts.
    pub fn workers(&self) -> Result<Vec<(Peer, u32)>> {
        self.inner.workers()
    }

    /// Whether the connection to the scheduler is open.
    pub fn is_connected(&self) -> bool {
        self.inner.connected()
    }
    /// A snapshot of the cluster from the scheduler: every worker (address, threads,
    /// memory limit, tasks assigned, values held, and its last report of memory in use,
    /// spilled bytes, running tasks and whether it is paused), the tasks by state, and
    /// counters (tasks finished, recomputed, workers lost, steals). Dask's
    /// `client.scheduler_info()`.
    pub fn info(&self) -> Result<ClusterInfo> {
        self.inner.request(
            &[FromClient::Info],
            Duration::from_secs(10),
            "answer",
            |msg| match msg {
                ToClient::Info { info } => Some(Ok(info)),
                _ => None,
            },
        )
    }

    /// This client with `options` for what it computes, persists or submits without
    /// options of its own (`x.compute(&c)`, `x.persist(&c)`, [`Client::submit`]): the same
    /// connection, futures and retries setting. Dask's `workers=` on `compute` and
    /// `persist`: `x.persist(&client.with_options(SubmitOptions::on_workers([addr])))`.
    pub fn with_options(&self, options: SubmitOptions) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            options,
        }
    }

    /// Wait until at least `n` workers are connected.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.workers()?.len();
            if have >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Transport(format!(
                    "only {have} of {n} workers joined within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Session {
    /// Join the scheduler `cluster` names, and start reading what it sends into `routes`
    /// as connection number `generation` (see [`Routes::generation`]).
    async fn open(
        endpoint: &quinn::Endpoint,
        cluster: ClusterFile,
        routes: &Arc<Mutex<Routes>>,
        generation: u64,
    ) -> Result<Session> {
        let cluster = Arc::new(cluster);
        let name = format!("client-{}", std::process::id());
        let (conn, send, mut recv, _id) = join(endpoint, &cluster, Role::Client, &name).await?;
        let (out, rx) = mpsc::unbounded_channel();
        spawn_writer(send, rx);
        let reader_out = out.clone();
        let routes = Arc::clone(routes);
        let peers = Arc::new(Peers::new(endpoint.clone(), Arc::clone(&cluster), name));
        let reader_peers = Arc::clone(&peers);
        let reader_conn = conn.clone();
        tokio::spawn(async move {
            loop {
                match read_msg::<ToClient>(&mut recv).await {
                    Ok(Some(msg)) => {
                        if let ToClient::WorkerLeft { peer } = &msg {
                            // Fetches from it fail now rather than at its timeout.
                            reader_peers.forget(&peer.address);
                        }
                        let orphaned = route(&routes, msg, generation);
                        // Keys it alone held (as far as we heard): moved to another
                        // worker (it retired), or lost and being recomputed. Ask.
                        if !orphaned.is_empty()
                            && let Ok(frame) = framed(&FromClient::WhoHas { keys: orphaned })
                        {
                            let _ = reader_out.send(frame);
                        }
                    }
                    end => {
                        // Nothing more can be read (the scheduler went, or sent
                        // something unreadable): close, and wake every waiter.
                        if let Err(e) = end
                            && reader_conn.close_reason().is_none()
                        {
                            tracing::warn!("unreadable message from the scheduler: {e}");
                            reader_conn.close(3u32.into(), b"unreadable message");
                        } else {
                            reader_conn.close(0u32.into(), b"client stopped reading");
                        }
                        let mut r = lock(&routes);
                        // Unless the client has connected again meanwhile.
                        if r.generation == generation {
                            close_routes(&mut r);
                        }
                        break;
                    }
                }
            }
        });
        Ok(Session {
            cluster,
            out,
            peers,
            conn,
        })
    }
}

/// The connection is gone: wake every waiter (their receivers end), fail whatever
/// registers from now on, and mark every key not known to be final as lost.
fn close_routes(r: &mut Routes) {
    r.closed = true;
    r.by_key.clear();
    r.all.clear();
    r.by_request.clear();
    for (_, state) in r.tracked.values_mut() {
        if matches!(state, KeyState::Pending | KeyState::Finished(_)) {
            *state = KeyState::Lost;
        }
    }
}

impl Inner {
    /// The connection now.
    fn session(&self) -> Arc<Session> {
        Arc::clone(&lock(&self.session))
    }

    /// The session requests registered in `r` go out on: the current one while the
    /// routes are open (a reconnect closes them before it replaces the session, and opens
    /// them after), and only if it is connection `on` when one is named; `None` once that
    /// connection is gone.
    fn live_session(&self, r: &Routes, on: Option<u64>) -> Option<Arc<Session>> {
        let elsewhere = on.is_some_and(|g| !same_generation(r.generation, g));
        (!r.closed && !elsewhere).then(|| self.session())
    }

    fn connected(&self) -> bool {
        self.session().conn.close_reason().is_none() && !lock(&self.routes).closed
    }

    /// Before a call that starts work: connected, or connected again within the
    /// [`Client::set_reconnect_timeout`] time, or the error saying the scheduler is gone.
    fn ensure_connected(&self) -> Result<()> {
        if self.connected() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.reconnect_timeout_ms.load(Ordering::Relaxed));
        if timeout.is_zero() {
            return Err(scheduler_gone());
        }
        self.reconnect(timeout)
    }

    /// See [`Client::reconnect`]. Bounded by `timeout` from the call, whoever else is
    /// connecting meanwhile: a thread that waited for another's try does not start a
    /// full one of its own.
    fn reconnect(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let _one = lock(&self.reconnecting);
        if self.connected() {
            // Connected, or another thread connected again while this one waited.
            return Ok(());
        }
        // From here on the old connection routes nothing (its reader may not have seen
        // the end yet) and whoever registers is told at once; keys from before are lost.
        let generation = {
            let mut r = lock(&self.routes);
            close_routes(&mut r);
            r.generation += 1;
            r.generation
        };
        let mut pause = Duration::from_millis(50);
        loop {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let cluster = match &self.cluster_file {
                Some(path) => ClusterFile::read(path),
                None => Ok(ClusterFile::clone(&self.session().cluster)),
            };
            // A try that hangs (a scheduler that never answers) is cut short, so the
            // cluster file is read again for the next one.
            let attempt = cluster.and_then(|cluster| {
                let address = cluster.address.clone();
                let open = Session::open(&self.endpoint, cluster, &self.routes, generation);
                let patience = left.clamp(Duration::from_millis(100), RECONNECT_TRY);
                (self.runtime)
                    .block_on(async { tokio::time::timeout(patience, open).await })
                    .unwrap_or_else(|_| {
                        Err(Error::Transport(format!(
                            "the scheduler at {address} did not answer"
                        )))
                    })
            });
            let e = match attempt {
                Ok(session) => {
                    let session = Arc::new(session);
                    let old = std::mem::replace(&mut *lock(&self.session), Arc::clone(&session));
                    old.conn.close(0u32.into(), b"client connected again");
                    let mut r = lock(&self.routes);
                    // Open for new work, unless the new connection ended already (its
                    // reader closed the routes then).
                    if r.generation == generation && session.conn.close_reason().is_none() {
                        r.closed = false;
                    }
                    drop(r);
                    tracing::info!(
                        "connected again to the scheduler at {}",
                        session.cluster.address
                    );
                    return Ok(());
                }
                Err(e) => e,
            };
            // A refusal (a wrong token) is not retried; anything else until the deadline.
            let out_of_time = deadline.is_some_and(|d| Instant::now() + pause >= d);
            if matches!(e, Error::Auth(_)) || out_of_time {
                return Err(Error::Transport(format!(
                    "lost the connection to the scheduler, and could not connect again \
                     within {:?}: {e}",
                    start.elapsed()
                )));
            }
            tracing::debug!("connecting again to the scheduler failed: {e}");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

impl Inner {
    /// Push each value to its worker, concurrently; the first failure is the error.
    fn push_all(&self, pushes: Vec<(Peer, Key, Value)>, copy: bool) -> Result<()> {
        let mut running = tokio::task::JoinSet::new();
        for (peer, key, value) in pushes {
            let peers = Arc::clone(&self.session().peers);
            running.spawn_on(
                async move { peers.push(&peer.address, &key, &value, copy).await },
                self.runtime.handle(),
            );
        }
        self.runtime.block_on(async {
            while let Some(done) = running.join_next().await {
                done.map_err(|e| Error::Internal(format!("a push task failed: {e}")))??;
            }
            Ok::<(), Error>(())
        })
    }

    fn send(&self, msg: &FromClient) -> Result<()> {
        send_on(&self.session(), msg)
    }

    /// Subscribe to messages about `keys`, and the connection they come on: send what
    /// they answer on it, not on whatever connection there is by then (a reconnect in
    /// between ends the receiver, and the new scheduler must not get the message).
    /// `None` once the connection is gone (the receiver has ended then).
    fn register(
        &self,
        keys: &[Key],
    ) -> (u64, mpsc::UnboundedReceiver<ToClient>, Option<Arc<Session>>) {
        let mut r = lock(&self.routes);
        let (id, rx) = register_locked(&mut r, keys);
        let session = self.live_session(&r, None);
        (id, rx, session)
    }

    fn unregister(&self, id: u64) {
        let mut r = lock(&self.routes);
        r.all.remove(&id);
        for k in r.keys_of.remove(&id).unwrap_or_default() {
            if let Some(v) = r.by_key.get_mut(&k) {
                v.retain(|(i, _)| *i != id);
                if v.is_empty() {
                    r.by_key.remove(&k);
                }
            }
        }
    }

    fn workers(&self) -> Result<Vec<(Peer, u32)>> {
        self.request(
            &[FromClient::ListWorkers],
            Duration::from_secs(10),
            "answer",
            |msg| match msg {
                ToClient::Workers { workers } => Some(Ok(workers)),
                _ => None,
            },
        )
    }

    /// Send `msgs`, then wait up to `timeout` for the first reply `pick` accepts
    /// (`Some`); other messages are skipped. `what` names the awaited reply in the error
    /// ("the scheduler did not {what} in 10 s").
    fn request<T>(
        &self,
        msgs: &[FromClient],
        timeout: Duration,
        what: &str,
        pick: impl FnMut(ToClient) -> Option<Result<T>>,
    ) -> Result<T> {
        self.ensure_connected()?;
        self.request_here(msgs, timeout, what, pick)
    }

    /// [`Inner::request`] on the connection there is, without connecting again: for a
    /// call that checked the connection itself before making futures, which a reconnect
    /// in between would leave lost while the new scheduler computed their keys.
    fn request_here<T>(
        &self,
        msgs: &[FromClient],
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(ToClient) -> Option<Result<T>>,
    ) -> Result<T> {
        let (id, mut rx, session) = self.register(&[]);
        let result = (|| {
            let session = session.ok_or_else(scheduler_gone)?;
            for msg in msgs {
                send_on(&session, msg)?;
            }
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = self
                    .runtime
                    .block_on(async { tokio::time::timeout(left, rx.recv()).await });
                match msg {
                    Ok(Some(m)) => {
                        if let Some(done) = pick(m) {
                            return done;
                        }
                    }
                    Ok(None) => return Err(scheduler_gone()),
                    Err(_) => {
                        return Err(Error::Transport(format!(
                            "the scheduler did not {what} in {timeout:?}"
                        )));
                    }
                }
            }
        })();
        self.unregister(id);
        result
    }

    /// Fetch a computed value from the workers holding it, trying each in turn.
    fn gather_one(&self, key: &Key, holders: &[Peer]) -> Result<Value> {
        let mut last = None;
        for peer in holders {
            match (self.runtime).block_on(self.session().peers.fetch(&peer.address, key)) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Transport(format!("no worker holds {key} any more"))))
    }
}

/// Subscribe to messages about `keys` (and to every message not about one key), with the
/// routes already locked.
fn register_locked(r: &mut Routes, keys: &[Key]) -> (u64, mpsc::UnboundedReceiver<ToClient>) {
    let (tx, rx) = mpsc::unbounded_channel();
    r.next += 1;
    let id = r.next;
    if r.closed {
        // No sender left: the receiver ends at once, as if the scheduler had just gone.
        return (id, rx);
    }
    for k in keys {
        r.by_key
            .entry(k.clone())
            .or_default()
            .push((id, tx.clone()));
    }
    r.all.insert(id, tx);
    r.keys_of.insert(id, keys.to_vec());
    (id, rx)
}

/// The error a local scheduler would have given for this failure.
fn rebuild_error(failure: TaskFailure) -> Error {
    if failure.panicked {
        Error::Panic {
            key: failure.task,
            message: failure.message,
        }
    } else {
        Error::Compute {
            source: Box::new(failure.source_error()),
            key: failure.task,
        }
    }
}

impl Inner {
    /// Gather `key` into `values`; when no holder answers (it died after the scheduler
    /// said so, or the value moved), ask the scheduler again where the key is, a bounded
    /// number of times per key.
    fn gather_or_ask(
        &self,
        session: &Session,
        key: Key,
        holders: &[Peer],
        values: &mut HashMap<Key, Value>,
        failures: &mut HashMap<Key, u32>,
    ) -> Result<()> {
        match self.gather_one(&key, holders) {
            Ok(value) => {
                values.insert(key, value);
                Ok(())
            }
            Err(e) if failures.get(&key).copied().unwrap_or(0) < MAX_GATHER_RETRIES => {
                *failures.entry(key.clone()).or_default() += 1;
                tracing::warn!("gathering {key} failed ({e}); asking the scheduler again");
                std::thread::sleep(Duration::from_millis(200));
                send_on(session, &FromClient::WhoHas { keys: vec![key] })
            }
            Err(e) => Err(e),
        }
    }
}

fn unexpected_reply(reply: &DatasetReply) -> Error {
    Error::Transport(format!(
        "the scheduler answered a dataset request with {reply:?}"
    ))
}

/// How many failed gathers of one key a computation tolerates (each followed by a
/// `WhoHas`): per key, so values moved by a rebalance (each costing one retry) cannot use
/// up a budget the computation's other keys share.
const MAX_GATHER_RETRIES: u32 = 50;

/// How a coordination wait ended ([`Client::coordinate`]).
pub(crate) enum Answer {
    Reply(CoordReply),
    /// Withdrawn; the answer sent before the withdrawal arrived, if one was.
    Stopped(Stopped, Option<CoordReply>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    TimedOut,
    Interrupted,
}

fn scheduler_gone() -> Error {
    Error::Transport("lost the connection to the scheduler".into())
}

/// Bits of a connection's number ([`Routes::generation`]) that leases carry: numbers
/// are compared on these bits only.
pub(crate) const GENERATION_BITS: u32 = 24;

/// Are these the same connection's numbers (on their [`GENERATION_BITS`])?
pub(crate) fn same_generation(a: u64, b: u64) -> bool {
    let mask = (1u64 << GENERATION_BITS) - 1;
    a & mask == b & mask
}

fn send_on(session: &Session, msg: &FromClient) -> Result<()> {
    (session.out)
        .send(framed(msg)?)
        .map_err(|_| Error::Transport("the connection to the scheduler is closed".into()))
}

/// Record what `msg` says of tracked keys and hand it to the computations waiting for
/// it. Returns the keys a `WorkerLeft` left without a known holder.
fn route(routes: &Mutex<Routes>, msg: ToClient, generation: u64) -> Vec<Key> {
    let mut orphaned = Vec::new();
    let mut r = lock(routes);
    if r.generation != generation {
        return orphaned;
    }
    match &msg {
        ToClient::KeyInMemory { key, workers, .. } => {
            if let Some((_, state)) = r.tracked.get_mut(key) {
                *state = KeyState::Finished(workers.clone());
            }
        }
        ToClient::KeyErred { key, error } => {
            if let Some((_, state)) = r.tracked.get_mut(key) {
                *state = KeyState::Erred(error.clone());
            }
        }
        ToClient::Cancelled { key } => {
            if let Some((_, state)) = r.tracked.get_mut(key) {
                *state = KeyState::Cancelled;
            }
        }
        ToClient::WhoHasReply { holders }
        | ToClient::Replicated { holders, .. }
        | ToClient::Rebalanced { holders, .. } => {
            for (key, workers) in holders {
                if let Some((_, state)) = r.tracked.get_mut(key)
                    && matches!(state, KeyState::Pending | KeyState::Finished(_))
                {
                    // No holder: it is being recomputed, a KeyInMemory will follow.
                    *state = if workers.is_empty() {
                        KeyState::Pending
                    } else {
                        KeyState::Finished(workers.clone())
                    };
                }
            }
        }
        ToClient::WorkerLeft { peer } => {
            for (key, (_, state)) in r.tracked.iter_mut() {
                if let KeyState::Finished(holders) = state
                    && holders.iter().any(|p| p.id == peer.id)
                {
                    holders.retain(|p| p.id != peer.id);
                    if holders.is_empty() {
                        *state = KeyState::Pending;
                        orphaned.push(key.clone());
                    }
                }
            }
        }
        ToClient::GraphRefused { .. }
        | ToClient::Workers { .. }
        | ToClient::Info { .. }
        | ToClient::ScatterTo { .. }
        | ToClient::ScatterRefused { .. }
        | ToClient::Retiring { .. }
        | ToClient::Dataset { .. }
        | ToClient::Restarting { .. }
        | ToClient::TaskStream { .. }
        | ToClient::Coordinated { .. }
        | ToClient::AdaptiveTarget { .. } => {}
    }
    let key = match &msg {
        ToClient::KeyInMemory { key, .. }
        | ToClient::KeyErred { key, .. }
        | ToClient::Cancelled { key } => Some(key),
        ToClient::GraphRefused { .. }
        | ToClient::WhoHasReply { .. }
        | ToClient::Workers { .. }
        | ToClient::Info { .. }
        | ToClient::ScatterTo { .. }
        | ToClient::ScatterRefused { .. }
        | ToClient::WorkerLeft { .. }
        | ToClient::Replicated { .. }
        | ToClient::Rebalanced { .. }
        | ToClient::Retiring { .. }
        | ToClient::Dataset { .. }
        | ToClient::Restarting { .. }
        | ToClient::TaskStream { .. }
        | ToClient::Coordinated { .. }
        | ToClient::AdaptiveTarget { .. } => None,
    };
    if let ToClient::Coordinated { request, .. } = &msg {
        if let Some(tx) = r.by_request.get(request) {
            let _ = tx.send(msg);
        }
        return orphaned;
    }
    match key {
        Some(k) => {
            for (_, tx) in r.by_key.get(k).into_iter().flatten() {
                let _ = tx.send(msg.clone());
            }
        }
        None => {
            for tx in r.all.values() {
                let _ = tx.send(msg.clone());
            }
        }
    }
    orphaned
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.session().conn.close(0u32.into(), b"client closing");
        self.endpoint.close(0u32.into(), b"client closing");
        // Let the close frame leave before the runtime stops: without it the scheduler
        // noticed the client gone only at the idle timeout, and kept every key it wanted
        // (values on the workers) 5 s longer. Bounded; skipped on a runtime's own thread.
        if tokio::runtime::Handle::try_current().is_err() {
            let endpoint = self.endpoint.clone();
            self.runtime.block_on(async move {
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
            });
        }
    }
}

/// A plan's tasks as the scheduler takes them, and its distinct outputs.
fn task_specs(
    plan: &ExecutionPlan,
    options: &SubmitOptions,
    retries: u32,
    inner: &Inner,
) -> Result<Specs> {
    let restrictions = options.restrictions();
    let graph = &plan.graph;
    let mut tasks = Vec::with_capacity(graph.len());
    // Tasks standing for values persisted on this cluster: the key it has them under.
    let mut on_cluster: HashMap<&Key, Key> = HashMap::new();
    let cluster_key = |on_cluster: &HashMap<&Key, Key>, k: &Key| -> Key {
        on_cluster.get(k).cloned().unwrap_or_else(|| k.clone())
    };
    for id in graph.ids() {
        let key = graph.key(id);
        let op = graph.op(id);
        if let Some(p) = Persisted::of(op.as_ref())
            && p.future.inner.same_cluster(inner)
        {
            if p.future.status() == FutureStatus::Lost {
                return Err(Error::Transport(format!(
                    "{} was persisted on a scheduler this client lost the connection to \
                     (restarted or gone): persist it again",
                    p.future.key
                )));
            }
            on_cluster.insert(key, p.future.key.clone());
            continue;
        }
        tasks.push(TaskSpec {
            key: key.clone(),
            deps: (graph.dependencies(id).iter())
                .map(|d| cluster_key(&on_cluster, graph.key(*d)))
                .collect(),
            payload: ByteBuf::from(encode_op(key, op)?),
            priority: task_priority(options.priority, plan.priority[id.index()]),
            retries,
            restrictions: restrictions.clone(),
        });
    }
    let mut wanted: Vec<Key> = Vec::new();
    let mut seen = HashSet::new();
    let mut output_keys = Vec::with_capacity(plan.outputs.len());
    for id in &plan.outputs {
        let k = cluster_key(&on_cluster, graph.key(*id));
        if seen.insert(k.clone()) {
            wanted.push(k.clone());
        }
        output_keys.push(k);
    }
    Ok(Specs {
        tasks,
        wanted,
        output_keys,
    })
}

/// A plan as the scheduler gets it.
struct Specs {
    /// One per task, except those standing for values persisted on this cluster.
    tasks: Vec<TaskSpec>,
    /// The outputs' keys on the cluster, once each.
    wanted: Vec<Key>,
    /// Per entry of the plan's outputs, its key on the cluster.
    output_keys: Vec<Key>,
}

impl Inner {
    /// Whether `other` is a client of the same cluster (the same scheduler and token):
    /// keys one of them keeps there, the other can name in its graphs.
    fn same_cluster(&self, other: &Inner) -> bool {
        std::ptr::eq(self, other) || {
            let (ours, theirs) = (self.session(), other.session());
            ours.cluster.address == theirs.cluster.address
                && ours.cluster.token == theirs.cluster.token
        }
    }

    /// One more holder of each key in `keys`.
    fn hold(&self, keys: &[Key]) {
        let mut held = lock(&self.held);
        for k in keys {
            *held.entry(k.clone()).or_default() += 1;
        }
    }

    /// One holder fewer of each key in `keys`; the scheduler may forget those nobody in
    /// this client holds any more.
    fn unhold(&self, keys: &[Key]) {
        let released: Vec<Key> = {
            let mut held = lock(&self.held);
            (keys.iter())
                .filter(|k| match held.get_mut(*k) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        held.remove(*k);
                        true
                    }
                })
                .cloned()
                .collect()
        };
        if !released.is_empty() {
            let _ = self.send(&FromClient::ReleaseKeys { keys: released });
        }
    }
}

impl Scheduler for Client {
    fn name(&self) -> &str {
        "distributed"
    }

    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        self.inner.execute(plan, ctx, &self.options)
    }

    /// Compute `plan` and leave its outputs on the workers: one [`Persisted`] per output,
    /// holding a future for it. Nothing comes back to this process.
    fn persist(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Vec<Arc<dyn Op>>> {
        if ctx.observer.is_some() {
            return Err(observers_not_supported());
        }
        let futures = self.submit_plan(plan, &self.options)?;
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        let distinct: HashSet<&Key> = keys.iter().collect();
        let total = distinct.len();
        loop {
            if ctx.cancel.is_cancelled() {
                let _ = self.cancel(&futures);
                return Err(Error::Cancelled);
            }
            let waited = self
                .inner
                .wait_done(&keys, Some(Duration::from_millis(100)));
            if let Some(p) = &ctx.progress {
                let routes = lock(&self.inner.routes);
                let done = (distinct.iter())
                    .filter(|k| {
                        (routes.tracked.get(**k))
                            .is_some_and(|(_, s)| !matches!(s, KeyState::Pending))
                    })
                    .count();
                drop(routes);
                p.advanced(done, total);
            }
            match waited {
                Ok(()) => break,
                // Not done within the interval: look at the cancel flag again.
                Err(_) if futures.iter().all(|f| f.status() != FutureStatus::Lost) => {}
                Err(e) => return Err(e),
            }
        }
        // The first failure is the error, as when computing.
        if let Some(e) = futures.iter().find_map(|f| f.state().error(&f.key)) {
            return Err(e);
        }
        if let Some(p) = &ctx.progress {
            p.finished(total, total, true);
        }
        Ok(Persisted::ops(futures))
    }
}

fn observers_not_supported() -> Error {
    Error::NotImplemented(
        "per-task observers on a cluster (tasks run in other processes); use the progress \
         callback"
            .into(),
    )
}

/// What [`Client::rebalance`] moved: each key with the workers holding it now, and the
/// bytes moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebalanced {
    pub moved: Vec<(Key, Vec<Peer>)>,
    pub nbytes: u64,
}

/// A value persisted on a cluster ([`Scheduler::persist`] of a [`Client`]): the task
/// stands for its future's key there. Clients of that cluster send no task for it, and
/// later graphs read the value where it is, on the workers; the future keeps it there
/// while this op (any graph, array or frame holding it) lives. Any other scheduler runs
/// it by fetching the value ([`Future::result`]). It cannot be sent to another cluster.
#[derive(Debug)]
pub struct Persisted {
    future: Future,
}

impl Persisted {
    /// The op standing for `future`'s value on its cluster.
    pub fn new(future: Future) -> Persisted {
        Persisted { future }
    }

    /// One op per future, in order: the blocks or partitions of a collection kept on the
    /// cluster ([`partita_array::Array::from_ops`], [`partita_frame::DataFrame::from_ops`]).
    pub fn ops(futures: impl IntoIterator<Item = Future>) -> Vec<Arc<dyn Op>> {
        (futures.into_iter())
            .map(|future| Arc::new(Persisted { future }) as Arc<dyn Op>)
            .collect()
    }

    /// `op` as a persisted value, if it is one.
    pub fn of(op: &dyn Op) -> Option<&Persisted> {
        op.remote_handle()?.downcast_ref::<Persisted>()
    }

    /// The future holding the value on its cluster.
    pub fn future(&self) -> &Future {
        &self.future
    }
}

impl serde::Serialize for Persisted {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(format!(
            "it is {}, persisted on another cluster; compute it, or persist it with this \
             cluster's client",
            self.future.key
        )))
    }
}

impl<'de> serde::Deserialize<'de> for Persisted {
    fn deserialize<D: serde::Deserializer<'de>>(_d: D) -> std::result::Result<Persisted, D::Error> {
        Err(serde::de::Error::custom(
            "a value persisted on a cluster is never sent as a task",
        ))
    }
}

#[typetag::serde(name = "persisted")]
impl Op for Persisted {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        self.future.result()
    }

    fn name(&self) -> &str {
        "persisted"
    }

    fn remote_handle(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl Inner {
    fn execute(
        &self,
        plan: &ExecutionPlan,
        ctx: &ExecutionContext,
        options: &SubmitOptions,
    ) -> Result<Execution> {
        let started = Instant::now();
        if ctx.observer.is_some() {
            return Err(observers_not_supported());
        }
        self.ensure_connected()?;
        let retries = (options.retries).unwrap_or_else(|| self.retries.load(Ordering::Relaxed));
        let Specs {
            tasks,
            wanted,
            output_keys,
        } = task_specs(plan, options, retries, self)?;
        let seen: HashSet<Key> = wanted.iter().cloned().collect();
        let tasks_sent = tasks.len();
        self.hold(&wanted);
        let (route_id, mut rx, session) = self.register(&wanted);
        let result = (|| {
            // Everything this computation says goes to the scheduler it submitted to.
            let session = session.ok_or_else(scheduler_gone)?;
            send_on(
                &session,
                &FromClient::SubmitGraph {
                    tasks,
                    wanted: wanted.clone(),
                },
            )?;
            let total = wanted.len();
            let mut values: HashMap<Key, Value> = HashMap::with_capacity(total);
            let mut failed_gathers: HashMap<Key, u32> = HashMap::new();
            while values.len() < total {
                if ctx.cancel.is_cancelled() {
                    let _ = send_on(
                        &session,
                        &FromClient::Cancel {
                            keys: wanted.clone(),
                        },
                    );
                    return Err(Error::Cancelled);
                }
                let msg = self.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                });
                let found = match msg {
                    Err(_) => continue,
                    Ok(None) => return Err(scheduler_gone()),
                    Ok(Some(ToClient::KeyInMemory { key, workers, .. })) => vec![(key, workers)],
                    // Where a key we could not gather lives now; no holder means it is
                    // being recomputed and a KeyInMemory will follow.
                    Ok(Some(ToClient::WhoHasReply { holders })) => holders
                        .into_iter()
                        .filter(|(_, workers)| !workers.is_empty())
                        .collect(),
                    Ok(Some(ToClient::KeyErred { error, .. })) => {
                        // The failure that stopped this key (maybe a dependency's), rebuilt
                        // as the local schedulers report it.
                        return Err(rebuild_error(error));
                    }
                    Ok(Some(ToClient::GraphRefused { error })) => {
                        return Err(Error::Graph(format!(
                            "the scheduler refused the graph: {error}"
                        )));
                    }
                    Ok(Some(ToClient::Cancelled { key })) => {
                        return Err(Error::Compute {
                            key,
                            source: Box::new(Error::Cancelled),
                        });
                    }
                    Ok(Some(_)) => continue,
                };
                for (key, workers) in found {
                    if !values.contains_key(&key) && seen.contains(&key) {
                        self.gather_or_ask(
                            &session,
                            key,
                            &workers,
                            &mut values,
                            &mut failed_gathers,
                        )?;
                    }
                }
                if let Some(p) = &ctx.progress {
                    p.advanced(values.len(), total);
                }
            }
            Ok(values)
        })();
        self.unregister(route_id);
        // Whatever happened, this computation no longer wants its outputs kept.
        self.unhold(&wanted);
        let values = result?;
        if let Some(p) = &ctx.progress {
            p.finished(values.len(), values.len(), true);
        }
        let out = output_keys.iter().map(|k| values[k].clone()).collect();
        Ok(Execution {
            values: out,
            stats: RunStats {
                tasks_run: tasks_sent,
                elapsed: started.elapsed(),
                ..RunStats::default()
            },
        })
    }
}

// ---------------------------------------------------------------------------------------
// Futures

/// A key computing (or computed) on the cluster, Dask-style. Clones share the key; the
/// cluster keeps the value while any future for it (or a running computation) exists.
pub struct Future {
    key: Key,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Future {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Future")
            .field("key", &self.key)
            .field("status", &self.status())
            .finish()
    }
}

impl Future {
    fn new(inner: &Arc<Inner>, key: Key) -> Future {
        let mut routes = lock(&inner.routes);
        let closed = routes.closed;
        let entry = (routes.tracked.entry(key.clone())).or_insert((0, KeyState::Pending));
        entry.0 += 1;
        if closed && matches!(entry.1, KeyState::Pending) {
            entry.1 = KeyState::Lost;
        }
        drop(routes);
        inner.hold(std::slice::from_ref(&key));
        Future {
            key,
            inner: Arc::clone(inner),
        }
    }

    /// The key this future stands for.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// What the client last heard about the key.
    pub fn status(&self) -> FutureStatus {
        self.state().status()
    }

    /// Whether it finished, failed, was cancelled or lost (anything but pending).
    pub fn done(&self) -> bool {
        self.status() != FutureStatus::Pending
    }

    fn state(&self) -> KeyState {
        (lock(&self.inner.routes).tracked.get(&self.key)).map_or(KeyState::Lost, |(_, s)| s.clone())
    }

    /// Block until the key is done (see [`Future::done`]), or `timeout` passes (then an
    /// error saying so).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<FutureStatus> {
        self.inner
            .wait_done(std::slice::from_ref(&self.key), timeout)?;
        Ok(self.status())
    }

    /// Why it ended without a value, once done: the error [`Future::result`] would return
    /// (a failed task, a cancellation, the lost connection), without fetching anything;
    /// `None` while pending or once finished (Dask's `future.exception()`).
    pub fn error(&self) -> Option<Error> {
        self.state().error(&self.key)
    }

    /// Wait for the value and fetch it from a worker holding it. A failed task gives the
    /// error the local schedulers would (naming the task that failed).
    pub fn result(&self) -> Result<Value> {
        self.inner.result(&self.key)
    }

    /// Have the cluster run the key to the end even once no client wants it (Dask's
    /// `fire_and_forget`): for tasks run for what they do (write a file, call a service),
    /// not for a value anyone gathers. Dropping this future afterwards does not stop it;
    /// the value is released once computed (or its error once it fails).
    pub fn fire_and_forget(&self) -> Result<()> {
        self.inner.send(&FromClient::FireAndForget {
            keys: vec![self.key.clone()],
        })
    }

    /// Ask the scheduler to stop computing the key and forget it (for this client).
    pub fn cancel(&self) -> Result<()> {
        self.inner.send(&FromClient::Cancel {
            keys: vec![self.key.clone()],
        })
    }
}

impl Clone for Future {
    fn clone(&self) -> Future {
        Future::new(&self.inner, self.key.clone())
    }
}

impl Drop for Future {
    fn drop(&mut self) {
        {
            let mut r = lock(&self.inner.routes);
            if let Some((n, _)) = r.tracked.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    r.tracked.remove(&self.key);
                }
            }
        }
        self.inner.unhold(std::slice::from_ref(&self.key));
    }
}

impl Inner {
    /// Block until none of `keys` is pending, or `timeout` passes.
    fn wait_done(&self, keys: &[Key], timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let pending = |r: &Routes| {
            keys.iter().any(|k| {
                r.tracked
                    .get(k)
                    .is_some_and(|(_, s)| matches!(s, KeyState::Pending))
            })
        };
        let (id, mut rx) = {
            let mut r = lock(&self.routes);
            if !pending(&r) {
                return Ok(());
            }
            register_locked(&mut r, keys)
        };
        let result = loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            let msg = self
                .runtime
                .block_on(async { tokio::time::timeout(left, rx.recv()).await });
            match msg {
                Ok(Some(_)) | Ok(None) if !pending(&lock(&self.routes)) => break Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => break Err(scheduler_gone()),
                Err(_) if deadline.is_some() => {
                    break Err(Error::Transport(format!(
                        "futures not done within {:?}",
                        timeout.unwrap_or_default()
                    )));
                }
                Err(_) => continue,
            }
        };
        self.unregister(id);
        result
    }

    /// Wait for `key` and fetch its value; when no holder answers (it died after the
    /// scheduler said where the key was), ask again a bounded number of times.
    fn result(&self, key: &Key) -> Result<Value> {
        let mut failures = 0;
        loop {
            self.wait_done(std::slice::from_ref(key), None)?;
            let state = (lock(&self.routes).tracked.get(key)).map(|(_, s)| s.clone());
            match state {
                Some(KeyState::Finished(holders)) => match self.gather_one(key, &holders) {
                    Ok(v) => return Ok(v),
                    Err(e) if failures < MAX_GATHER_RETRIES => {
                        failures += 1;
                        tracing::warn!("gathering {key} failed ({e}); asking the scheduler again");
                        // Unless the scheduler said something final meanwhile (a restart
                        // cancels it while its holder exits): that would be lost, and the
                        // key, forgotten there, would stay pending for good.
                        if let Some((_, s)) = lock(&self.routes).tracked.get_mut(key)
                            && matches!(s, KeyState::Finished(_))
                        {
                            *s = KeyState::Pending;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                        self.send(&FromClient::WhoHas {
                            keys: vec![key.clone()],
                        })?;
                    }
                    Err(e) => return Err(e),
                },
                Some(KeyState::Pending) => continue,
                Some(other) => return Err(other.error(key).unwrap_or_else(scheduler_gone)),
                None => return Err(scheduler_gone()),
            }
        }
    }
}

impl Client {
    /// Send `graph` to the cluster and return at once with a future per key of `outputs`
    /// (in that order); the graph is optimized as [`partita_core::compute`] would. An
    /// error if the scheduler refuses the graph, or an op cannot leave this process.
    pub fn submit(&self, graph: partita_core::Graph, outputs: &[Key]) -> Result<Vec<Future>> {
        self.submit_with(graph, outputs, &self.options)
    }

    /// [`Client::submit`] whose tasks are each run again up to `retries` times when they
    /// fail (Dask's `client.compute(x, retries=n)`), whatever [`Client::set_retries`] says.
    pub fn submit_with_retries(
        &self,
        graph: partita_core::Graph,
        outputs: &[Key],
        retries: u32,
    ) -> Result<Vec<Future>> {
        self.submit_with(graph, outputs, &SubmitOptions::retries(retries))
    }

    /// [`Client::submit`] with options: retries, and the workers its tasks may run on
    /// (Dask's `client.compute(x, workers=..., allow_other_workers=...)`).
    pub fn submit_with(
        &self,
        graph: partita_core::Graph,
        outputs: &[Key],
        options: &SubmitOptions,
    ) -> Result<Vec<Future>> {
        let plan = ExecutionPlan::new(graph, outputs, partita_core::OptimizeOptions::default())?;
        self.submit_plan(&plan, options)
    }

    /// Submit several collections (arrays, frames, delayed values) in one graph, so work
    /// they share runs once; one future per output key of each collection.
    pub fn submit_collections(
        &self,
        collections: &[&dyn partita_core::Collection],
    ) -> Result<Vec<Vec<Future>>> {
        self.submit_collections_with(collections, &self.options)
    }

    /// [`Client::submit_collections`] with its own number of retries per task (see
    /// [`Client::submit_with_retries`]).
    pub fn submit_collections_with_retries(
        &self,
        collections: &[&dyn partita_core::Collection],
        retries: u32,
    ) -> Result<Vec<Vec<Future>>> {
        self.submit_collections_with(collections, &SubmitOptions::retries(retries))
    }

    /// [`Client::submit_collections`] with options (retries, worker restrictions).
    pub fn submit_collections_with(
        &self,
        collections: &[&dyn partita_core::Collection],
        options: &SubmitOptions,
    ) -> Result<Vec<Vec<Future>>> {
        let roots: Vec<_> = collections.iter().map(|c| Arc::clone(c.layer())).collect();
        let graph = partita_core::layer::Layer::materialize(&roots)?;
        let per: Vec<Vec<Key>> = collections.iter().map(|c| c.output_keys()).collect();
        let all: Vec<Key> = per.iter().flatten().cloned().collect();
        let mut futures = self.submit_with(graph, &all, options)?.into_iter();
        Ok(per
            .iter()
            .map(|keys| futures.by_ref().take(keys.len()).collect())
            .collect())
    }

    /// Submit one task `key = op(deps...)` whose inputs are keys the cluster already has
    /// or computes (those of live futures): how `client.submit(f, *args)` reaches the
    /// cluster. Pass the futures of the inputs in `deps` so they are kept until it is sent.
    pub fn submit_task(
        &self,
        key: Key,
        op: Arc<dyn partita_core::Op>,
        deps: &[Future],
    ) -> Result<Future> {
        self.submit_task_with(key, op, deps, &self.options)
    }

    /// [`Client::submit_task`] with its own number of retries (Dask's
    /// `client.submit(f, retries=n)`), whatever [`Client::set_retries`] says.
    pub fn submit_task_with_retries(
        &self,
        key: Key,
        op: Arc<dyn partita_core::Op>,
        deps: &[Future],
        retries: u32,
    ) -> Result<Future> {
        self.submit_task_with(key, op, deps, &SubmitOptions::retries(retries))
    }

    /// [`Client::submit_task`] with options: retries, and the workers it may run on
    /// (Dask's `client.submit(f, workers=..., allow_other_workers=...)`).
    pub fn submit_task_with(
        &self,
        key: Key,
        op: Arc<dyn partita_core::Op>,
        deps: &[Future],
        options: &SubmitOptions,
    ) -> Result<Future> {
        let spec = TaskSpec {
            payload: ByteBuf::from(encode_op(&key, &op)?),
            deps: deps.iter().map(|f| f.key.clone()).collect(),
            key: key.clone(),
            priority: options.priority_offset(),
            retries: options.retries.unwrap_or_else(|| self.retries()),
            restrictions: options.restrictions(),
        };
        let mut futures = self.submit_specs(vec![spec], vec![key.clone()], &[key])?;
        Ok(futures.remove(0))
    }

    fn submit_plan(&self, plan: &ExecutionPlan, options: &SubmitOptions) -> Result<Vec<Future>> {
        let retries = options.retries.unwrap_or_else(|| self.retries());
        let specs = task_specs(plan, options, retries, &self.inner)?;
        self.submit_specs(specs.tasks, specs.wanted, &specs.output_keys)
    }

    fn submit_specs(
        &self,
        tasks: Vec<TaskSpec>,
        wanted: Vec<Key>,
        outputs: &[Key],
    ) -> Result<Vec<Future>> {
        let inner = &self.inner;
        inner.ensure_connected()?;
        let futures: Vec<Future> = (outputs.iter())
            .map(|key| {
                let key = key.clone();
                let mut r = lock(&inner.routes);
                // A key that erred, was cancelled or lost with an earlier scheduler
                // starts over with this graph (unless the scheduler is gone: then
                // nothing would ever finish it).
                let closed = r.closed;
                if let Some((_, s)) = r.tracked.get_mut(&key)
                    && matches!(s, KeyState::Erred(_) | KeyState::Cancelled | KeyState::Lost)
                    && !closed
                {
                    *s = KeyState::Pending;
                }
                drop(r);
                Future::new(inner, key)
            })
            .collect();
        // A ListWorkers answered after the graph means the scheduler accepted it.
        inner.request_here(
            &[
                FromClient::SubmitGraph { tasks, wanted },
                FromClient::ListWorkers,
            ],
            Duration::from_secs(60),
            "confirm the graph",
            |msg| match msg {
                ToClient::Workers { .. } => Some(Ok(())),
                ToClient::GraphRefused { error } => Some(Err(Error::Graph(format!(
                    "the scheduler refused the graph: {error}"
                )))),
                _ => None,
            },
        )?;
        Ok(futures)
    }

    /// Put values held in this process on the cluster, Dask's `client.scatter`: one
    /// future per value, in order, usable as an input of later tasks
    /// ([`Client::submit_task`]) like any other. Each value goes straight from here to one
    /// worker (the scheduler picks the one holding the fewest bytes), in its own encoding,
    /// never through the scheduler; all are pushed concurrently, and this returns once
    /// every worker has kept its value. A scattered value has no lineage: if every copy is
    /// lost with its workers, its future (and whatever reads it) errs saying so, and it
    /// must be scattered again. An error if no worker is connected, or a worker refuses a
    /// value (one whose codec it does not link, such as a Python object for the plain
    /// `partita` worker); nothing is left on the cluster then.
    pub fn scatter(&self, values: Vec<Value>) -> Result<Vec<Future>> {
        self.scatter_on(values, &[])
    }

    /// [`Client::scatter`] onto the given workers only (addresses or hosts; all if empty),
    /// Dask's `scatter(data, workers=...)`: an error naming them if none is connected.
    pub fn scatter_on(&self, values: Vec<Value>, workers: &[String]) -> Result<Vec<Future>> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        inner.ensure_connected()?;
        // Names no other client makes (a random token per call), like Dask's
        // `ndarray-<token>`: `scatter-<token>-<i>`.
        let mut token = [0u8; 8];
        getrandom::fill(&mut token)
            .map_err(|e| Error::Internal(format!("no random numbers for a key: {e}")))?;
        let token = u64::from_le_bytes(token);
        let keys: Vec<Key> = (0..values.len())
            .map(|i| Key::named(format!("scatter-{token:016x}-{i}")))
            .collect();
        let futures: Vec<Future> = keys.iter().map(|k| Future::new(inner, k.clone())).collect();
        let sized = (keys.iter().zip(&values))
            .map(|(k, v)| (k.clone(), v.nbytes() as u64))
            .collect();
        let first = keys[0].clone();
        let placements = inner.request_here(
            &[FromClient::Scatter {
                keys: sized,
                workers: workers.to_vec(),
            }],
            Duration::from_secs(60),
            "place the scattered values",
            |msg| match msg {
                ToClient::ScatterTo { placements }
                    if placements.first().is_some_and(|(k, _)| *k == first) =>
                {
                    Some(Ok(placements))
                }
                ToClient::ScatterRefused { key, error } if key == first => Some(Err(
                    Error::Transport(format!("the scheduler refused to scatter: {error}")),
                )),
                _ => None,
            },
        )?;
        let by_key: HashMap<Key, Peer> = placements.into_iter().collect();
        let mut pushes = Vec::with_capacity(keys.len());
        for (key, value) in keys.into_iter().zip(values) {
            let Some(peer) = by_key.get(&key).cloned() else {
                return Err(Error::Internal(format!(
                    "the scheduler placed no worker for {key}"
                )));
            };
            pushes.push((peer, key, value));
        }
        // The first failure is the error; dropping the futures then releases every key,
        // and the scheduler has the workers drop whatever arrived.
        inner.push_all(pushes, false)?;
        Ok(futures)
    }

    /// [`Client::scatter`], then a copy of each value on every other worker connected now
    /// (Dask's `scatter(broadcast=True)`): tasks anywhere read it without fetching it, and
    /// it is lost only with the last worker holding it. Workers that join later get no
    /// copy. The copies leave once each value is in memory (the scheduler accepts a copy
    /// of a value it knows to be held), and are freed with it.
    pub fn scatter_broadcast(&self, values: Vec<Value>) -> Result<Vec<Future>> {
        self.scatter_broadcast_on(values, &[])
    }

    /// [`Client::scatter_broadcast`] to the given workers only (addresses or hosts; all
    /// if empty): Dask's `scatter(data, workers=..., broadcast=True)`.
    pub fn scatter_broadcast_on(&self, values: Vec<Value>, only: &[String]) -> Result<Vec<Future>> {
        let futures = self.scatter_on(values.clone(), only)?;
        self.wait(&futures, Some(Duration::from_secs(60)))?;
        let allowed = Restrictions {
            workers: only.to_vec(),
            loose: false,
            resources: Resources::default(),
        };
        let workers: Vec<(Peer, u32)> = (self.workers()?.into_iter())
            .filter(|(p, _)| only.is_empty() || allowed.lists(&p.address))
            .collect();
        let holders = self.who_has(&futures)?;
        let mut copies = Vec::new();
        for ((key, held), value) in holders.into_iter().zip(values) {
            for (peer, _) in &workers {
                if !held.iter().any(|h| h.id == peer.id) {
                    copies.push((peer.clone(), key.clone(), value.clone()));
                }
            }
        }
        self.inner.push_all(copies, true)?;
        Ok(futures)
    }

    /// Run `op` (with no inputs) on every worker connected now, at once and outside any
    /// graph, and return each worker's result (Dask's `client.run`): for looking around
    /// (versions, process ids, memory) or preparing a worker (loading a model, setting
    /// up logging). It runs beside the worker's tasks, not in one of their slots; nothing
    /// is kept. A worker whose op failed has its error, naming `run-<op name>`.
    pub fn run(&self, op: Arc<dyn Op>) -> Result<Vec<(Peer, Result<Value>)>> {
        let key = Key::named(format!("run-{}", op.name()));
        let payload = Arc::new(encode_op(&key, &op)?);
        let workers = self.workers()?;
        let inner = &self.inner;
        let session = inner.session();
        let results = inner.runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, (peer, _)) in workers.iter().enumerate() {
                let (peers, payload, key) = (
                    Arc::clone(&session.peers),
                    Arc::clone(&payload),
                    key.clone(),
                );
                let address = peer.address.clone();
                set.spawn(async move { (i, peers.run(&address, &key, &payload).await) });
            }
            let mut out: Vec<Option<Result<Value>>> = (0..workers.len()).map(|_| None).collect();
            while let Some(joined) = set.join_next().await {
                if let Ok((i, result)) = joined {
                    out[i] = Some(match result {
                        Ok(Ok(value)) => Ok(value),
                        Ok(Err(failure)) => Err(rebuild_error(failure)),
                        Err(e) => Err(e),
                    });
                }
            }
            out
        });
        Ok((workers.into_iter().zip(results))
            .map(|((peer, _), r)| {
                let r = r.unwrap_or_else(|| {
                    Err(Error::Internal(format!("no answer from {}", peer.address)))
                });
                (peer, r)
            })
            .collect())
    }

    /// Wait until every future is done; the error of the first that failed, if any.
    fn wait_finished(&self, futures: &[Future]) -> Result<()> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        self.inner.wait_done(&keys, None)?;
        match futures.iter().find_map(|f| f.state().error(&f.key)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copy each future's value to at least `n` workers (every worker if `None`; never
    /// more than there are), worker to worker, the workers holding the fewest bytes
    /// first; Dask's `client.replicate`. Waits for the futures to finish (an error if one
    /// failed) and for the copies, and returns where each value is then. Copies are never
    /// removed here; they go when the value is released. A copy whose fetch failed (its
    /// holder died meanwhile) is simply missing from the answer.
    pub fn replicate(&self, futures: &[Future], n: Option<usize>) -> Result<Vec<(Key, Vec<Peer>)>> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if n == Some(0) {
            return Err(Error::Graph(
                "replicate to 0 workers: n must be at least 1".into(),
            ));
        }
        self.wait_finished(futures)?;
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let n = n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let holders = self.inner.request(
            &[FromClient::Replicate { request, keys, n }],
            Duration::from_secs(3600),
            "finish replicating",
            |msg| match msg {
                ToClient::Replicated {
                    request: r,
                    holders,
                } if r == request => Some(Ok(holders)),
                _ => None,
            },
        )?;
        Ok(holders)
    }

    /// Even out the bytes the workers hold (Dask's `client.rebalance`): values move from
    /// workers holding more than the mean to the emptiest holding less, each copy kept by
    /// its recipient before the sender drops its own, until the senders are down to the
    /// mean or no move would leave the recipient at most there. `futures`: only their
    /// values (after waiting for them; an error if one failed), all values when `None`;
    /// `workers`: only among the workers at these addresses or on these hosts (an error
    /// naming one no worker matches), all when empty. Returns what moved and where it is
    /// now.
    pub fn rebalance(&self, futures: Option<&[Future]>, workers: &[&str]) -> Result<Rebalanced> {
        let keys = match futures {
            Some(futures) => {
                self.wait_finished(futures)?;
                Some(futures.iter().map(|f| f.key.clone()).collect())
            }
            None => None,
        };
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let workers = workers.iter().map(|w| w.to_string()).collect();
        let msg = FromClient::Rebalance {
            request,
            keys,
            workers,
        };
        self.inner.request(
            &[msg],
            Duration::from_secs(3600),
            "finish rebalancing",
            |msg| match msg {
                ToClient::Rebalanced {
                    request: r,
                    holders,
                    nbytes,
                    refused,
                } if r == request => Some(match refused {
                    Some(why) => Err(Error::Transport(format!("rebalance refused: {why}"))),
                    None => Ok(Rebalanced {
                        moved: holders,
                        nbytes,
                    }),
                }),
                _ => None,
            },
        )
    }

    /// Retire the workers at `addresses` gracefully (Dask's `client.retire_workers`): they
    /// get no new work, their tasks not started move elsewhere, running ones finish, and
    /// every value only they hold that is still needed moves to another worker; then they
    /// stop. Returns the retired workers once they are gone. All or none: an error naming
    /// the address if one is unknown, or if no worker would be left to take their values.
    pub fn retire_workers(&self, addresses: &[&str]) -> Result<Vec<Peer>> {
        self.retire_workers_within(addresses, None)
    }

    /// [`Client::retire_workers`] waiting at most `timeout` for them to be gone: an
    /// error after it (they go on retiring: running tasks finish first).
    pub fn retire_workers_within(
        &self,
        addresses: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Vec<Peer>> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let inner = &self.inner;
        let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        inner.ensure_connected()?;
        let (id, mut rx, session) = inner.register(&[]);
        let result = (|| {
            let session = session.ok_or_else(scheduler_gone)?;
            send_on(
                &session,
                &FromClient::RetireWorkers {
                    addresses: addresses.clone(),
                },
            )?;
            let mut retiring: Option<Vec<Peer>> = None;
            let mut gone: HashSet<WorkerId> = HashSet::new();
            loop {
                if let Some(workers) = &retiring
                    && workers.iter().all(|p| gone.contains(&p.id))
                {
                    return Ok(workers.clone());
                }
                let msg = match deadline {
                    None => inner.runtime.block_on(rx.recv()),
                    Some(at) => {
                        // Made inside the runtime: a timer needs its reactor.
                        let wait = async { tokio::time::timeout_at(at, rx.recv()).await };
                        inner.runtime.block_on(wait).map_err(|_| {
                            Error::Transport(format!(
                                "workers {addresses:?} still retiring after {:?}",
                                timeout.unwrap_or_default()
                            ))
                        })?
                    }
                };
                match msg {
                    None => return Err(scheduler_gone()),
                    Some(ToClient::Retiring { workers, refused }) if retiring.is_none() => {
                        if let Some((address, why)) = refused.first() {
                            return Err(Error::Transport(format!(
                                "the scheduler refused to retire worker {address}: {why}"
                            )));
                        }
                        retiring = Some(workers);
                    }
                    Some(ToClient::WorkerLeft { peer }) => {
                        gone.insert(peer.id);
                    }
                    Some(_) => {}
                }
            }
        })();
        inner.unregister(id);
        result
    }

    /// Forget every task and restart every worker process (Dask's `client.restart`, for
    /// a cluster whose memory or state went bad): running work stops, all data on the
    /// workers goes, every client's futures are cancelled and published datasets dropped.
    /// Returns once as many workers as before are connected again (an error after
    /// `timeout`). Every worker must run under a nanny (`partita worker` without
    /// `--no-nanny`; [`crate::LocalClusterOptions::nanny`]): otherwise an error naming
    /// one, and nothing is done.
    pub fn restart(&self, timeout: Duration) -> Result<()> {
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let n = self.inner.request(
            &[FromClient::Restart { request }],
            Duration::from_secs(60),
            "answer the restart",
            |msg| match msg {
                ToClient::Restarting {
                    request: r,
                    workers,
                    refused,
                } if r == request => Some(match refused {
                    Some(why) => Err(Error::Transport(format!(
                        "the scheduler refused to restart the cluster: {why}"
                    ))),
                    None => Ok(workers),
                }),
                _ => None,
            },
        )?;
        self.wait_for_workers(n as usize, timeout)
    }

    /// Publish `data` under `name` for any client of this cluster to get
    /// ([`Client::get_dataset`]); Dask's `client.publish_dataset`. Its values stay on the
    /// workers (recomputed from lineage if lost) after this client and its futures are
    /// gone, until [`Client::unpublish_dataset`]. Only data on the cluster is published:
    /// futures of this cluster and arrays or frames persisted with a client of it (an
    /// error naming the block otherwise). An error if `name` is taken, unless `replace`.
    pub fn publish_dataset(&self, name: &str, data: &Dataset, replace: bool) -> Result<()> {
        let (futures, payload) = data.encode()?;
        if let Some(f) = futures.iter().find(|f| !f.inner.same_cluster(&self.inner)) {
            return Err(Error::Graph(format!(
                "cannot publish {name:?}: {} belongs to another cluster",
                f.key
            )));
        }
        let keys = futures.iter().map(|f| f.key.clone()).collect();
        let reply = self.dataset_request(|request| FromClient::PublishDataset {
            request,
            name: name.to_string(),
            keys,
            payload: ByteBuf::from(payload),
            replace,
        })?;
        // The futures lived until the scheduler counted the dataset's hold on their keys.
        drop(futures);
        match reply {
            DatasetReply::Done => Ok(()),
            DatasetReply::Refused { error } => Err(Error::Graph(error)),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// The dataset published under `name`, its keys now wanted by this client as any
    /// future's are (they stay while the returned futures or collection live, even if the
    /// dataset is unpublished); `None` if nothing is published under that name.
    pub fn get_dataset(&self, name: &str) -> Result<Option<Dataset>> {
        let reply = self.dataset_request(|request| FromClient::GetDataset {
            request,
            name: name.to_string(),
        })?;
        let (keys, payload) = match reply {
            DatasetReply::Found { keys, payload } => (keys, payload),
            DatasetReply::Refused { .. } => return Ok(None),
            other => return Err(unexpected_reply(&other)),
        };
        let futures = match self.submit_specs(Vec::new(), keys.clone(), &keys) {
            Ok(futures) => futures,
            Err(e) => {
                // Unpublished (and its keys forgotten) since the answer: not there now.
                let again = self.dataset_request(|request| FromClient::GetDataset {
                    request,
                    name: name.to_string(),
                })?;
                if matches!(again, DatasetReply::Refused { .. }) {
                    return Ok(None);
                }
                return Err(Error::Context {
                    context: format!("getting dataset {name:?}"),
                    source: Box::new(e),
                });
            }
        };
        Dataset::decode(name, &payload, futures).map(Some)
    }

    /// Forget the dataset `name`: its values go once no client holds them. `false` if
    /// nothing was published under that name.
    pub fn unpublish_dataset(&self, name: &str) -> Result<bool> {
        let reply = self.dataset_request(|request| FromClient::UnpublishDataset {
            request,
            name: name.to_string(),
        })?;
        match reply {
            DatasetReply::Done => Ok(true),
            DatasetReply::Refused { .. } => Ok(false),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// How many open workers the scheduler recommends to finish the work in sight in
    /// about `target_duration`, and, when that is fewer than now, which to retire (idle
    /// ones, the emptiest first, leaving room for the values held): Dask's
    /// `adaptive_target`. It changes nothing; [`crate::LocalCluster::adapt`] acts on it.
    pub fn adaptive_target(&self, target_duration: Duration) -> Result<AdaptiveTarget> {
        let target_micros = u64::try_from(target_duration.as_micros()).unwrap_or(u64::MAX);
        self.adaptive_request(|request| FromClient::AdaptiveTarget {
            request,
            target_micros,
        })
    }

    /// The `n` open workers to retire for a manual scale-down: the least busy, then those
    /// holding the fewest bytes (fewer when fewer are open; never every worker while one
    /// holds values). Dask's `workers_to_close`.
    pub fn workers_to_close(&self, n: usize) -> Result<Vec<Peer>> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(self
            .adaptive_request(|request| FromClient::WorkersToClose { request, n })?
            .to_close)
    }

    fn adaptive_request(&self, msg: impl FnOnce(u64) -> FromClient) -> Result<AdaptiveTarget> {
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        self.inner.request(
            &[msg(request)],
            Duration::from_secs(30),
            "answer how many workers it wants",
            |msg| match msg {
                ToClient::AdaptiveTarget { request: r, target } if r == request => Some(Ok(target)),
                _ => None,
            },
        )
    }

    /// The task runs the scheduler remembers (its last 100,000) numbered `since` or later,
    /// oldest first, and the number the next run will get: Dask's task stream. Pass
    /// `u64::MAX` for just that number, then that number later for what ran in between:
    /// where each task ran, when (Unix microseconds; the scheduler's clock), its output's
    /// size, and whether it raised.
    pub fn task_stream(&self, since: u64) -> Result<(u64, Vec<TaskRecord>)> {
        let mut all: Vec<TaskRecord> = Vec::new();
        let mut from = since;
        loop {
            let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
            let (next, records) = self.inner.request(
                &[FromClient::TaskStream {
                    request,
                    since: from,
                }],
                Duration::from_secs(60),
                "answer a task stream request",
                |msg| match msg {
                    ToClient::TaskStream {
                        request: r,
                        next,
                        records,
                    } if r == request => Some(Ok((next, records))),
                    _ => None,
                },
            )?;
            // An answer holds a bounded number of bytes: ask for the rest.
            let more = records
                .last()
                .map(|r| r.seq + 1)
                .filter(|after| *after < next);
            all.extend(records);
            match more {
                Some(after) => from = after,
                None => return Ok((next, all)),
            }
        }
    }

    /// The names of the datasets published now, sorted; Dask's `client.list_datasets()`.
    pub fn list_datasets(&self) -> Result<Vec<String>> {
        match self.dataset_request(|request| FromClient::ListDatasets { request })? {
            DatasetReply::Names { names } => Ok(names),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// Send a coordination operation without waiting for its answer (dropped when it
    /// comes): for ends that must not block, such as a subscription dropped.
    /// Only on connection `generation` ([`Routes::generation`]): nothing is sent once
    /// that connection is gone.
    pub(crate) fn coordinate_nowait(&self, op: Coordinate, generation: u64) -> Result<()> {
        let session = self
            .inner
            .live_session(&lock(&self.inner.routes), Some(generation));
        let Some(session) = session else {
            return Ok(());
        };
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        send_on(&session, &FromClient::Coordinate { request, op })
    }

    /// Send a coordination operation and wait for its answer: at most `timeout` (then it
    /// is withdrawn), polling `interrupted` every 50 ms (then too). A withdrawn operation
    /// may have been answered meanwhile: that answer is the one returned, with what
    /// stopped the wait.
    pub(crate) fn coordinate(
        &self,
        op: Coordinate,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Answer> {
        self.coordinate_on(op, timeout, interrupted)
            .map(|(answer, _)| answer)
    }

    /// [`Client::coordinate`] on connection `generation` only, for what belongs to the
    /// scheduler of that connection (a lease, a subscription): `None`, with nothing sent,
    /// once that connection is gone, and no reconnecting for it.
    pub(crate) fn coordinate_in(
        &self,
        generation: u64,
        op: Coordinate,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<Answer>> {
        Ok(self
            .coordinate_at(Some(generation), op, timeout, interrupted)?
            .map(|(answer, _)| answer))
    }

    /// [`Client::coordinate`], also saying on which connection it was answered (a number
    /// bumped each time the client connects again, [`Routes::generation`]): leases and
    /// subscriptions are the scheduler's of their connection, and went with it.
    pub(crate) fn coordinate_on(
        &self,
        op: Coordinate,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(Answer, u64)> {
        self.coordinate_at(None, op, timeout, interrupted)?
            .ok_or_else(scheduler_gone)
    }

    /// A coordination request on the connection there is (connecting again if it is
    /// gone), or only on connection `expected` (`None` once that is gone).
    fn coordinate_at(
        &self,
        expected: Option<u64>,
        op: Coordinate,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<(Answer, u64)>> {
        if expected.is_none() {
            self.inner.ensure_connected()?;
        }
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A reconnect clears the requests waiting (ending this one's receiver), so an
        // answer that comes is from this connection; the request and its withdrawal go
        // on this connection's session.
        let (generation, session) = {
            let mut routes = lock(&self.inner.routes);
            let session = match (self.inner.live_session(&routes, expected), expected) {
                (Some(session), _) => session,
                (None, Some(_)) => return Ok(None),
                (None, None) => return Err(scheduler_gone()),
            };
            routes.by_request.insert(request, tx);
            (routes.generation, session)
        };
        let result = (|| {
            send_on(&session, &FromClient::Coordinate { request, op })?;
            let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            let mut stopped: Option<Stopped> = None;
            let mut give_up_at = None;
            loop {
                let slice = Duration::from_millis(50);
                let wait = match deadline {
                    Some(d) if stopped.is_none() => d.saturating_duration_since(Instant::now()),
                    _ => slice,
                }
                .min(slice);
                let msg = (self.inner.runtime)
                    .block_on(async { tokio::time::timeout(wait, rx.recv()).await });
                match msg {
                    Ok(Some(ToClient::Coordinated { request: r, reply })) if r == request => {
                        let answer = match (stopped, reply) {
                            (None, reply) => Answer::Reply(reply),
                            (Some(how), CoordReply::Abandoned) => Answer::Stopped(how, None),
                            (Some(how), reply) => Answer::Stopped(how, Some(reply)),
                        };
                        return Ok(Some((answer, generation)));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(scheduler_gone()),
                    // Lost before this request was listed, nobody would say so.
                    Err(_) if session.conn.close_reason().is_some() => {
                        return Err(scheduler_gone());
                    }
                    Err(_) => {}
                }
                if stopped.is_none() {
                    let why = if interrupted() {
                        Some(Stopped::Interrupted)
                    } else if deadline.is_some_and(|d| Instant::now() >= d) {
                        Some(Stopped::TimedOut)
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        let op = Coordinate::Abandon;
                        send_on(&session, &FromClient::Coordinate { request, op })?;
                        stopped = Some(why);
                        give_up_at = Some(Instant::now() + Duration::from_secs(60));
                    }
                } else if give_up_at.is_some_and(|t| Instant::now() >= t) {
                    return Err(Error::Transport(
                        "the scheduler did not answer a withdrawn coordination request in 60 s"
                            .into(),
                    ));
                }
            }
        })();
        let mut routes = lock(&self.inner.routes);
        routes.by_request.remove(&request);
        // For what belongs to that connection, its loss meanwhile is not an error: the
        // connection is gone, as if it had been before the call.
        let gone = routes.closed
            || routes.generation != generation
            || session.conn.close_reason().is_some();
        drop(routes);
        match result {
            Err(_) if expected.is_some() && gone => Ok(None),
            other => other,
        }
    }

    /// Is `future` of this client's cluster (this connection)?
    pub(crate) fn owns(&self, future: &Future) -> bool {
        future.inner.same_cluster(&self.inner)
    }

    /// Futures of an item's keys, which the scheduler has this client want already.
    pub(crate) fn item_futures(&self, keys: Vec<Key>) -> Result<Vec<Future>> {
        self.submit_specs(Vec::new(), keys.clone(), &keys)
    }

    /// Send the dataset request `make(request number)` and wait for its answer.
    fn dataset_request(&self, make: impl FnOnce(u64) -> FromClient) -> Result<DatasetReply> {
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        self.inner.request(
            &[make(request)],
            Duration::from_secs(60),
            "answer a dataset request",
            |msg| match msg {
                ToClient::Dataset { request: r, reply } if r == request => Some(Ok(reply)),
                _ => None,
            },
        )
    }

    /// Where each future's value is held now, in order: the workers holding its key (none
    /// while it is pending or after it failed); Dask's `client.who_has(futures)`.
    pub fn who_has(&self, futures: &[Future]) -> Result<Vec<(Key, Vec<Peer>)>> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let asked = keys.clone();
        self.inner.request(
            &[FromClient::WhoHas { keys }],
            Duration::from_secs(10),
            "answer",
            // The reply to this request, not another's (a gather asks too).
            |msg| match msg {
                ToClient::WhoHasReply { holders }
                    if holders.iter().map(|(k, _)| k).eq(asked.iter()) =>
                {
                    Some(Ok(holders))
                }
                _ => None,
            },
        )
    }

    /// The values of `futures`, in order, fetched concurrently once all are done; the
    /// first failure is the error.
    pub fn gather(&self, futures: &[Future]) -> Result<Vec<Value>> {
        let inner = &self.inner;
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        inner.wait_done(&keys, None)?;
        let states: Vec<Option<KeyState>> = {
            let r = lock(&inner.routes);
            (keys.iter())
                .map(|k| r.tracked.get(k).map(|(_, s)| s.clone()))
                .collect()
        };
        // One request per holder for up to GATHER_BATCH keys, the requests concurrent.
        const GATHER_BATCH: usize = 256;
        let mut by_holder: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, state) in states.iter().enumerate() {
            if let Some(KeyState::Finished(holders)) = state
                && let Some(peer) = holders.first()
            {
                by_holder.entry(&peer.address).or_default().push(i);
            }
        }
        let session = inner.session();
        let fetched: Vec<Option<Value>> = inner.runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (address, indices) in by_holder {
                for batch in indices.chunks(GATHER_BATCH) {
                    let batch = batch.to_vec();
                    let wanted: Vec<Key> = batch.iter().map(|&i| keys[i].clone()).collect();
                    let (peers, address) = (Arc::clone(&session.peers), address.to_string());
                    set.spawn(async move {
                        let values = peers.fetch_many(&address, &wanted).await;
                        (batch, values)
                    });
                }
            }
            let mut out: Vec<Option<Value>> = vec![None; keys.len()];
            while let Some(Ok((batch, values))) = set.join_next().await {
                for (i, v) in batch.into_iter().zip(values) {
                    out[i] = v.ok();
                }
            }
            out
        });
        // Whatever did not come back at once (a failure, a holder that died) goes the slow
        // way, which also turns errors into the local schedulers' errors.
        (fetched.into_iter().zip(&keys))
            .map(|(v, k)| match v {
                Some(v) => Ok(v),
                None => inner.result(k),
            })
            .collect()
    }

    /// Cancel every future in `futures` (see [`Future::cancel`]).
    pub fn cancel(&self, futures: &[Future]) -> Result<()> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        self.inner.send(&FromClient::Cancel { keys })
    }

    /// Block until every future is done, or `timeout` passes (then an error saying so).
    pub fn wait(&self, futures: &[Future], timeout: Option<Duration>) -> Result<()> {
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        self.inner.wait_done(&keys, timeout)
    }

    /// The futures in the order they finish (or fail, or are cancelled).
    pub fn as_completed(&self, futures: Vec<Future>) -> AsCompleted {
        let inner = Arc::clone(&self.inner);
        let mut remaining: HashMap<Key, Vec<Future>> = HashMap::new();
        let mut ready = std::collections::VecDeque::new();
        let keys: Vec<Key> = futures.iter().map(|f| f.key.clone()).collect();
        let mut r = lock(&inner.routes);
        let (id, rx) = register_locked(&mut r, &keys);
        for f in futures {
            let pending =
                (r.tracked.get(&f.key)).is_some_and(|(_, s)| matches!(s, KeyState::Pending));
            if pending {
                remaining.entry(f.key.clone()).or_default().push(f);
            } else {
                ready.push_back(f);
            }
        }
        drop(r);
        AsCompleted {
            inner,
            route: id,
            rx,
            remaining,
            ready,
        }
    }
}

/// Futures in completion order: an iterator from [`Client::as_completed`].
pub struct AsCompleted {
    inner: Arc<Inner>,
    route: u64,
    rx: mpsc::UnboundedReceiver<ToClient>,
    remaining: HashMap<Key, Vec<Future>>,
    ready: std::collections::VecDeque<Future>,
}

impl std::fmt::Debug for AsCompleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("ready", &self.ready.len())
            .field("remaining", &self.remaining.len())
            .finish()
    }
}

impl Iterator for AsCompleted {
    type Item = Future;

    fn next(&mut self) -> Option<Future> {
        loop {
            if let Poll::Ready(next) = self.next_by(None) {
                return next;
            }
        }
    }
}

impl AsCompleted {
    /// Like `next`, but waiting at most `timeout`: `Poll::Pending` when nothing finished
    /// meanwhile (so a caller can check for Ctrl-C and wait again), else what `next` gives.
    pub fn next_timeout(&mut self, timeout: Duration) -> Poll<Option<Future>> {
        self.next_by(Some(Instant::now() + timeout))
    }

    fn next_by(&mut self, deadline: Option<Instant>) -> Poll<Option<Future>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(f));
            }
            if self.remaining.is_empty() {
                return Poll::Ready(None);
            }
            let msg = match deadline {
                None => self.inner.runtime.block_on(self.rx.recv()),
                Some(d) => {
                    let d = tokio::time::Instant::from_std(d);
                    let rx = &mut self.rx;
                    match (self.inner.runtime)
                        .block_on(async { tokio::time::timeout_at(d, rx.recv()).await })
                    {
                        Ok(msg) => msg,
                        Err(_) => return Poll::Pending,
                    }
                }
            };
            let r = lock(&self.inner.routes);
            let is_done =
                |k: &Key| (r.tracked.get(k)).is_none_or(|(_, s)| !matches!(s, KeyState::Pending));
            let gone = msg.is_none();
            let done: Vec<Key> = match msg {
                Some(
                    ToClient::KeyInMemory { key, .. }
                    | ToClient::KeyErred { key, .. }
                    | ToClient::Cancelled { key },
                ) => vec![key],
                Some(ToClient::WhoHasReply { holders }) => {
                    holders.into_iter().map(|(k, _)| k).collect()
                }
                Some(_) => continue,
                // The scheduler is gone: every remaining future is done (lost), whatever
                // its state says, since no more news can come.
                None => self.remaining.keys().cloned().collect(),
            };
            let done: Vec<Key> = match gone {
                true => done,
                false => done.into_iter().filter(|k| is_done(k)).collect(),
            };
            drop(r);
            for k in done {
                self.ready
                    .extend(self.remaining.remove(&k).unwrap_or_default());
            }
        }
    }
}

impl Drop for AsCompleted {
    fn drop(&mut self) {
        self.inner.unregister(self.route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u32) -> Peer {
        Peer {
            id: WorkerId(id),
            address: format!("127.0.0.1:{}", 9000 + id),
        }
    }

    fn in_memory(key: &Key, on: &[u32]) -> ToClient {
        ToClient::KeyInMemory {
            key: key.clone(),
            workers: on.iter().map(|&i| peer(i)).collect(),
            nbytes: 8,
        }
    }

    #[test]
    fn user_priorities_move_whole_bands_of_graph_order_without_overflow() {
        let offset = |priority| {
            SubmitOptions {
                priority,
                ..SubmitOptions::default()
            }
            .priority_offset()
        };
        assert_eq!(offset(0), 0);
        // Priority 1 goes before any graph order of priority 0, and after any of 2.
        assert!(offset(1) + i64::from(u32::MAX) < offset(0));
        assert!(offset(2) + i64::from(u32::MAX) < offset(1));
        // The extremes stay in range with any graph order added.
        assert!(offset(i32::MIN).checked_add(i64::from(u32::MAX)).is_some());
        assert!(offset(i32::MAX) < offset(i32::MAX - 1));
        assert_eq!(offset(i32::MIN), offset(i32::MIN + 1));
    }

    fn holders(routes: &Mutex<Routes>, key: &Key) -> Option<Vec<u32>> {
        match &lock(routes).tracked[key].1 {
            KeyState::Finished(peers) => Some(peers.iter().map(|p| p.id.0).collect()),
            KeyState::Pending => None,
            other => panic!("{key} is {other:?}"),
        }
    }

    #[test]
    fn computations_registering_after_the_scheduler_went_are_told_at_once() {
        let routes = Mutex::new(Routes::default());
        let (_id, mut before) = register_locked(&mut lock(&routes), &[Key::named("a")]);
        lock(&routes).closed = true;
        let (_id, mut after) = register_locked(&mut lock(&routes), &[Key::named("a")]);
        assert!(matches!(
            after.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        // One registered before stays registered: the reader's clearing ends it.
        assert!(matches!(
            before.try_recv(),
            Err(mpsc::error::TryRecvError::Empty)
        ));
        assert!(lock(&routes).all.len() == 1);
    }

    #[test]
    fn a_reader_of_an_earlier_connection_routes_nothing() {
        let routes = Mutex::new(Routes::default());
        let a = Key::named("a");
        lock(&routes)
            .tracked
            .insert(a.clone(), (1, KeyState::Pending));
        let (_id, mut rx) = register_locked(&mut lock(&routes), std::slice::from_ref(&a));
        // The client connected again: connection 1 routes, connection 0 no longer does.
        lock(&routes).generation = 1;
        route(&routes, in_memory(&a, &[1]), 0);
        assert_eq!(holders(&routes, &a), None);
        assert!(rx.try_recv().is_err());
        route(&routes, in_memory(&a, &[2]), 1);
        assert_eq!(holders(&routes, &a), Some(vec![2]));
        assert!(matches!(rx.try_recv(), Ok(ToClient::KeyInMemory { .. })));
    }

    #[test]
    fn a_worker_that_left_is_no_longer_asked_for_values() {
        let routes = Mutex::new(Routes::default());
        let (a, b, c) = (Key::named("a"), Key::named("b"), Key::named("c"));
        for k in [&a, &b, &c] {
            lock(&routes)
                .tracked
                .insert(k.clone(), (1, KeyState::Pending));
        }
        let (_id, mut rx) = register_locked(&mut lock(&routes), &[]);
        route(&routes, in_memory(&a, &[1, 2]), 0);
        route(&routes, in_memory(&b, &[1]), 0);
        route(&routes, in_memory(&c, &[2]), 0);
        let orphaned = route(&routes, ToClient::WorkerLeft { peer: peer(1) }, 0);
        // `a` is still on worker 2; `b`'s only copy is gone (the client asks where it is
        // now: moved off a retiring worker, or being recomputed); `c` is untouched.
        assert_eq!(holders(&routes, &a), Some(vec![2]));
        assert_eq!(holders(&routes, &b), None);
        assert_eq!(holders(&routes, &c), Some(vec![2]));
        assert_eq!(orphaned, std::slice::from_ref(&b));
        let reply = ToClient::WhoHasReply {
            holders: vec![(b.clone(), vec![peer(3)])],
        };
        assert!(route(&routes, reply, 0).is_empty());
        assert_eq!(holders(&routes, &b), Some(vec![3]));
        route(&routes, in_memory(&b, &[2]), 0);
        assert_eq!(holders(&routes, &b), Some(vec![2]));
        // Waiting computations hear of it too (to drop their own holder lists).
        assert!(matches!(rx.try_recv(), Ok(ToClient::WorkerLeft { peer }) if peer.id.0 == 1));
    }
}

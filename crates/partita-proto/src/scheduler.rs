//! The scheduler's decisions as a state machine: `handle(event, now) -> actions`.
//!
//! Tasks move through Dask's states: `Released` (known, nothing running, no data),
//! `Waiting` (wanted, dependencies not all in memory), `Queued` (ready, waiting for a
//! worker slot), `Processing` (sent to a worker), `Memory`, `Erred`; `Forgotten` tasks are
//! dropped from the state entirely.
//!
//! Key decisions:
//! - **Keys are identity.** Two submissions of the same key share one task; each client has a
//!   wanted set, and a task lives while a client wants it, a published dataset lists it
//!   (`FromClient::PublishDataset`: named keys that outlive their client), or a dependent
//!   that will still run needs its data. Data nobody needs is freed on every worker
//!   holding it; a released task
//!   is kept (as lineage) while any dependent is known, and forgotten after.
//! - **Root-task queuing.** Ready tasks without dependencies wait in a priority queue and are
//!   sent only when a worker has a free slot (`ceil(nthreads * worker_saturation)`), so file
//!   readers cannot run far ahead of their consumers. Other tasks are placed at once by
//!   locality plus occupancy. A group whose tasks are known to be quick and small gets more
//!   slots, as many as fill `root_queue_target` of work per thread while their outputs stay
//!   under `ROOT_QUEUE_BYTES`: two 20 us calls in flight leave a worker idle for most of each
//!   round trip to the scheduler, and small outputs held ahead cost nothing. Durations and
//!   sizes are learnt per task group (`Key::group`, Dask's `key_split`), so delayed calls
//!   (`inc-17`, `inc-18`) share one.
//! - **Roots in runs.** Each worker takes queued roots from a run of the queue of its own
//!   (a worker without one takes a run nobody has, or the later half of the longest), so
//!   neighbours in priority order, which usually feed the same consumer, are made on the
//!   same worker; taking turns at the queue's front split every reduction group in two.
//! - **Moving data costs latency too.** Placement counts, for inputs held elsewhere, their
//!   bytes at the assumed bandwidth plus `transfer_latency` per fetch and a little per key,
//!   so a task reading a hundred small values is not moved away from them for a few
//!   microseconds of queued work.
//! - **Worker death is lineage.** A dead worker's running tasks go back to waiting (each gets
//!   a `suspicious` mark; `allowed_failures` marks err it); values only it held and still
//!   needed are recomputed, transitively through released dependencies.
//! - **Scattered values are tasks without an op.** A client's `Scatter` makes each value a
//!   task "processing" on the worker chosen for it (the one holding the fewest bytes),
//!   never sent there and never stolen; the client pushes the value to that worker, whose
//!   `TaskFinished` puts it in memory like any result. Having no lineage, a scattered value
//!   whose every copy is lost errs (with its dependents) instead of being recomputed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use partita_core::Key;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_bytes::ByteBuf;

use crate::coordination::{Coordination, Effects};
use crate::messages::{
    AdaptiveTarget, ClientId, CoordReply, Coordinate, DatasetReply, DepLocation, FromClient,
    FromWorker, Peer, Resources, Restrictions, TASK_STREAM_LENGTH, TaskFailure, TaskRecord,
    TaskSpec, ToClient, ToWorker, WorkerId, WorkerMetrics,
};
use crate::root_queue::RootQueue;
use crate::{Time, moving_average};

/// A burst of ready tasks is co-assigned in runs only if, for each task, moving its
/// inputs costs at most this much more (microseconds at the configured bandwidth) on one
/// worker than on another.
const COASSIGN_MAX_COST_SPREAD: u64 = 1_000;

/// What each input fetched from another worker costs beyond its bytes, in microseconds:
/// both workers encode, track and decode it (10-20 us a key measured on loopback).
const TRANSFER_MICROS_PER_KEY: u64 = 20;

/// Tunables of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A worker silent for this long is treated as dead.
    pub heartbeat_timeout: Duration,
    /// A task running on this many workers that died is erred.
    pub allowed_failures: u32,
    /// Root tasks in flight per worker: `ceil(nthreads * worker_saturation)`, at least 1.
    pub worker_saturation: f64,
    /// Move not-yet-started tasks from saturated workers to idle ones.
    pub work_stealing: bool,
    /// Assumed network bandwidth, bytes per second, for locality costs.
    pub bandwidth: u64,
    /// What fetching inputs from other workers costs before the first byte (a round trip
    /// and the requests on both ends), for locality costs: without it a task reading a
    /// hundred small values held elsewhere looks free to move for any difference in queued
    /// work, and a tree reduction's steps fetch half their inputs.
    pub transfer_latency: Duration,
    /// Duration assumed for a task whose group has never finished.
    pub default_task_duration: Duration,
    /// Root tasks of a group known to be quick may fill this much work per thread (more
    /// than `worker_saturation` slots), up to [`MAX_ROOT_SLOTS`] per thread and as long as
    /// their outputs stay under [`ROOT_QUEUE_BYTES`].
    pub root_queue_target: Duration,
    /// The Unix time, in microseconds, of [`Time::ZERO`]: turns times into wall-clock
    /// ones for the task stream (0 in simulations).
    pub clock_origin_unix_micros: u64,
}

/// The records in one answer to [`FromClient::TaskStream`] stay under this estimate
/// (a worker address, the numbers and the names, with room to spare): far below
/// [`crate::messages::MAX_CONTROL_MESSAGE_BYTES`].
const TASK_STREAM_REPLY_BYTES: usize = 16 << 20;

/// Queued tasks whose durations [`SchedulerState::adaptive_target`] adds up; the rest
/// are taken to be like them (Dask's hundred).
const ADAPTIVE_SAMPLE: usize = 100;

/// Most root tasks in flight per worker thread, however quick they are.
pub const MAX_ROOT_SLOTS: usize = 256;

/// Extra root slots (beyond `worker_saturation`) go only to groups whose outputs, that many
/// of them, stay under this many bytes per thread: readers producing megabytes keep two.
pub const ROOT_QUEUE_BYTES: u64 = 256 << 10;

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            heartbeat_timeout: Duration::from_secs(30),
            allowed_failures: 3,
            worker_saturation: 1.1,
            work_stealing: true,
            bandwidth: 100_000_000,
            transfer_latency: Duration::from_millis(1),
            default_task_duration: Duration::from_millis(500),
            root_queue_target: Duration::from_millis(5),
            clock_origin_unix_micros: 0,
        }
    }
}

/// Where a task is in its life; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TaskStatus {
    Released,
    Waiting,
    Queued,
    Processing,
    Memory,
    Erred,
    Forgotten,
}

/// How important a log line is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// What happened, as the runtime tells the scheduler.
#[derive(Clone, Debug)]
pub enum SchedulerEvent {
    /// A worker completed its handshake.
    WorkerJoined {
        worker: WorkerId,
        nthreads: u32,
        memory_limit: u64,
        address: String,
        /// Its nanny's identity ([`crate::messages::Role::Worker`]).
        nanny: Option<String>,
        /// The abstract resources it offers (none, mostly).
        resources: Resources,
    },
    /// A worker's connection closed.
    WorkerLost { worker: WorkerId, reason: String },
    /// A worker sent a message.
    FromWorker { worker: WorkerId, msg: FromWorker },
    /// A client completed its handshake.
    ClientConnected { client: ClientId },
    /// A client's connection closed: everything it wanted is released.
    ClientGone { client: ClientId },
    /// A client sent a message.
    FromClient { client: ClientId, msg: FromClient },
    /// Time passed: check heartbeats (due at [`SchedulerState::poll_timeout`]).
    Tick,
}

/// What the runtime must do.
#[derive(Clone, PartialEq, Debug)]
pub enum SchedulerAction {
    SendToWorker(WorkerId, ToWorker),
    SendToClient(ClientId, ToClient),
    /// Drop the worker's connection (it was declared dead).
    CloseWorker(WorkerId, String),
    Log(LogLevel, String),
}

pub use crate::messages::{ClusterInfo, SchedulerStats, TaskCounts, WorkerStatus};

/// Why a task erred: the failure that stopped it (its own, or a dependency's).
type Failure = TaskFailure;

/// `deps` without repeats (a task may read one input twice).
fn distinct(deps: &[Key]) -> Vec<Key> {
    let mut seen = FxHashSet::default();
    deps.iter().filter(|d| seen.insert(*d)).cloned().collect()
}

/// The keys of a hash set in key order, for walks whose order decides something.
fn sorted(keys: &FxHashSet<Key>) -> Vec<Key> {
    let mut keys: Vec<Key> = keys.iter().cloned().collect();
    keys.sort_unstable();
    keys
}

/// Statuses of a task that will still run, so its dependencies' values are needed.
fn is_active(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Waiting | TaskStatus::Queued | TaskStatus::Processing
    )
}

#[derive(Debug)]
struct Task {
    payload: ByteBuf,
    deps: Vec<Key>,
    /// Known (not forgotten) dependents (a hash set: string keys compare slowly, and a
    /// value read by thousands of tasks gains and loses dependents often).
    dependents: FxHashSet<Key>,
    /// Dependents that will still run (waiting, queued or processing), counted once per
    /// entry in their `deps`; kept by [`SchedulerState::set_status`] so "is this value still
    /// needed?" is O(1) even for a value a hundred thousand tasks read.
    active_dependents: u32,
    /// Distinct dependencies not in memory, kept by [`SchedulerState::set_status`] so a
    /// finishing input readies a task reading a hundred inputs without rescanning them.
    missing_deps: u32,
    priority: i64,
    seq: u64,
    retries_left: u32,
    status: TaskStatus,
    who_has: BTreeSet<WorkerId>,
    nbytes: u64,
    processing_on: Option<WorkerId>,
    /// Its worker refused to hand it over (it had started it): not asked again while it
    /// stays there. Without this, stealing asked for the same running task after every
    /// event, and an idle worker never got the queued one behind it.
    started: bool,
    /// Occupancy this task added to its worker, removed exactly when it leaves.
    occupancy: u64,
    wanted_by: BTreeSet<ClientId>,
    suspicious: u32,
    lost: bool,
    failure: Option<Failure>,
    /// A value a client pushed ([`FromClient::Scatter`]): there is no op to run.
    scattered: bool,
    /// Datasets listing it ([`FromClient::PublishDataset`]): wanted while any does.
    published: u32,
    /// The workers it may run on ([`TaskSpec::restrictions`]); boxed, being rare.
    restrictions: Option<Box<Restrictions>>,
    /// Wanted until it is in memory or has erred ([`FromClient::FireAndForget`]).
    fire_and_forget: bool,
}

impl Task {
    /// A released task, known to nobody yet: no dependents, holders, worker or wants.
    fn released(payload: ByteBuf, deps: Vec<Key>, priority: i64, seq: u64, retries: u32) -> Task {
        Task {
            payload,
            deps,
            dependents: FxHashSet::default(),
            active_dependents: 0,
            missing_deps: 0,
            priority,
            seq,
            retries_left: retries,
            status: TaskStatus::Released,
            who_has: BTreeSet::new(),
            nbytes: 0,
            processing_on: None,
            occupancy: 0,
            wanted_by: BTreeSet::new(),
            suspicious: 0,
            lost: false,
            started: false,
            failure: None,
            scattered: false,
            published: 0,
            restrictions: None,
            fire_and_forget: false,
        }
    }
}

#[derive(Debug)]
struct WorkerInfo {
    nthreads: u32,
    memory_limit: u64,
    address: String,
    /// Hash sets, changed on every task: walks over them that decide anything sort first.
    processing: FxHashSet<Key>,
    /// Estimated microseconds of work assigned and not finished.
    occupancy: u64,
    has_what: FxHashSet<Key>,
    last_seen: Time,
    metrics: WorkerMetrics,
    /// The extra root slots of [`SchedulerState::fill_slots`] found this worker full with
    /// this many tasks in flight (0: not yet); it is not asked again until it has fewer.
    /// (A limit raised meanwhile, as durations are learnt, applies from its next finish.)
    full_of_roots_at: usize,
    /// Leaving gracefully: no new work; its values are handed off, then it is closed.
    retiring: bool,
    /// Acquisitions in flight that take values off it while it retires.
    handoffs: usize,
    /// Keys it is acquiring (replicas, values handed to it): a retiring worker waits for
    /// them, which then move on, instead of closing before they land.
    acquisitions: usize,
    /// The nanny that started it ([`SchedulerEvent::WorkerJoined`]).
    nanny: Option<String>,
    /// The abstract resources it offers.
    resources: Resources,
    /// Its processing tasks that seceded ([`FromWorker::Seceded`]): running, but holding
    /// no thread, so not counted as its load.
    long_running: FxHashSet<Key>,
}

impl WorkerInfo {
    /// Tasks counted against its threads: those processing there, less the seceded.
    fn busy(&self) -> usize {
        self.processing.len() - self.long_running.len()
    }
}

/// A run of a task in the task stream ([`TaskRecord`] on the wire, where the worker is
/// its address: kept as an id here so recording a run allocates nothing).
#[derive(Debug)]
struct Run {
    seq: u64,
    key: Key,
    worker: WorkerId,
    micros: u64,
    stop: u64,
    nbytes: u64,
    erred: bool,
}

/// Whom an acquisition in flight ([`ToWorker::AcquireReplicas`]) serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A retiring worker handing the value off.
    Handoff(WorkerId),
    /// A client's [`FromClient::Replicate`] request.
    Replica(ClientId, u64),
    /// A client's [`FromClient::Rebalance`] request, moving the value off this worker.
    Rebalance(ClientId, u64, WorkerId),
}

/// A rebalance in flight ([`FromClient::Rebalance`]).
#[derive(Debug, Default)]
struct Rebalancing {
    /// Moves not settled yet.
    left: usize,
    /// Keys whose sender dropped its copy, and their bytes.
    moved: Vec<Key>,
    nbytes: u64,
}

/// What of a task's dependencies each worker lacks: (microseconds to move their bytes at
/// the configured bandwidth, how many they are).
struct MissingInputs {
    /// For a worker holding none of them.
    none_held: (u64, u64),
    /// For each worker holding some.
    holders: BTreeMap<WorkerId, (u64, u64)>,
}

impl MissingInputs {
    fn on(&self, worker: WorkerId) -> (u64, u64) {
        self.holders.get(&worker).copied().unwrap_or(self.none_held)
    }
}

/// The scheduler: tasks, workers, clients and the decisions between them.
#[derive(Debug)]
pub struct SchedulerState {
    config: SchedulerConfig,
    tasks: FxHashMap<Key, Task>,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    clients: BTreeMap<ClientId, BTreeSet<Key>>,
    /// Ready root tasks waiting for a slot, by (priority, seq), in runs that workers take
    /// from (see [`Self::fill_slots`] and [`crate::root_queue`]).
    queue: RootQueue,
    /// Steal requests in flight: key -> (victim, thief).
    steals: BTreeMap<Key, (WorkerId, WorkerId)>,
    /// What tasks of each group (`Key::group`) take: moving averages
    /// ([`crate::moving_average`]) of micros and output bytes, and the count.
    durations: FxHashMap<String, (u64, u64, u64)>,
    next_seq: u64,
    stats: SchedulerStats,
    /// Values being fetched to be kept (replicas, hand-offs): key -> recipient -> whom
    /// the copy serves.
    acquiring: FxHashMap<Key, BTreeMap<WorkerId, Vec<Purpose>>>,
    /// Replicate requests in flight: (client, request) -> (their keys, acquisitions left).
    replications: BTreeMap<(ClientId, u64), (Vec<Key>, usize)>,
    /// Rebalance requests in flight.
    rebalances: BTreeMap<(ClientId, u64), Rebalancing>,
    /// Workers retiring now: with none, closing retired workers costs nothing per event.
    retiring: usize,
    /// The last runs of tasks, for [`FromClient::TaskStream`], and the next one's number.
    task_stream: VecDeque<Run>,
    task_stream_next: u64,
    /// The address of every worker that has joined (runs name workers gone since).
    addresses: FxHashMap<WorkerId, String>,
    /// The time of the event being handled.
    now: Time,
    /// Published datasets by name: their keys (each counted in its task's `published`)
    /// and the payload their publisher attached.
    datasets: BTreeMap<String, (Vec<Key>, ByteBuf)>,
    /// Named events, semaphores, variables and queues; their items' keys are counted in
    /// their tasks' `published` too.
    coordination: Coordination,
    /// Ready tasks (status `Queued`) that no open worker may run (their restrictions
    /// name none connected): Dask's "no-worker" state, by (priority, seq). Retried when
    /// a worker joins.
    no_worker: BTreeMap<(i64, u64), Key>,
    /// Kinds of worker (lists, resources) warned about since `no_worker` was last empty.
    no_worker_warned: FxHashSet<String>,
    out: Vec<SchedulerAction>,
}

impl SchedulerState {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> SchedulerState {
        SchedulerState {
            config,
            tasks: FxHashMap::default(),
            workers: BTreeMap::new(),
            clients: BTreeMap::new(),
            queue: RootQueue::default(),
            steals: BTreeMap::new(),
            durations: FxHashMap::default(),
            next_seq: 0,
            stats: SchedulerStats::default(),
            acquiring: FxHashMap::default(),
            replications: BTreeMap::new(),
            rebalances: BTreeMap::new(),
            retiring: 0,
            task_stream: VecDeque::new(),
            task_stream_next: 0,
            addresses: FxHashMap::default(),
            now: Time::ZERO,
            datasets: BTreeMap::new(),
            coordination: Coordination::default(),
            no_worker: BTreeMap::new(),
            no_worker_warned: FxHashSet::default(),
            out: Vec::new(),
        }
    }

    /// The state of `key`; `Forgotten` for keys the scheduler does not know.
    pub fn task_status(&self, key: &Key) -> TaskStatus {
        self.tasks
            .get(key)
            .map_or(TaskStatus::Forgotten, |t| t.status)
    }

    /// Workers holding `key`'s value.
    pub fn who_has(&self, key: &Key) -> Vec<WorkerId> {
        self.tasks
            .get(key)
            .map_or(Vec::new(), |t| t.who_has.iter().copied().collect())
    }

    /// The worker `key` was sent to, while it is processing.
    pub fn processing_on(&self, key: &Key) -> Option<WorkerId> {
        self.tasks.get(key).and_then(|t| t.processing_on)
    }

    /// Why an erred task failed.
    pub fn error(&self, key: &Key) -> Option<&TaskFailure> {
        self.tasks.get(key)?.failure.as_ref()
    }

    /// Connected workers.
    pub fn workers(&self) -> Vec<WorkerId> {
        self.workers.keys().copied().collect()
    }

    /// Number of tasks known (not forgotten).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// A connected worker's threads, memory limit, load and last reported metrics.
    pub fn worker(&self, id: WorkerId) -> Option<WorkerStatus> {
        let w = self.workers.get(&id)?;
        Some(WorkerStatus {
            peer: Peer {
                id,
                address: w.address.clone(),
            },
            nthreads: w.nthreads,
            memory_limit: w.memory_limit,
            processing: w.processing.len() as u64,
            held: w.has_what.len() as u64,
            metrics: w.metrics,
            retiring: w.retiring,
            resources: w.resources.clone(),
        })
    }

    /// Workers, tasks by state and counters: what [`FromClient::Info`] answers. One pass
    /// over the tasks, so it is for people and monitoring, not for every event.
    pub fn info(&self) -> ClusterInfo {
        let mut tasks = TaskCounts::default();
        for t in self.tasks.values() {
            let count = match t.status {
                TaskStatus::Released => &mut tasks.released,
                TaskStatus::Waiting => &mut tasks.waiting,
                TaskStatus::Queued => &mut tasks.queued,
                TaskStatus::Processing => &mut tasks.processing,
                TaskStatus::Memory => &mut tasks.memory,
                TaskStatus::Erred => &mut tasks.erred,
                TaskStatus::Forgotten => continue,
            };
            *count += 1;
        }
        ClusterInfo {
            workers: (self.workers.keys())
                .filter_map(|id| self.worker(*id))
                .collect(),
            tasks,
            stats: self.stats,
        }
    }

    /// How many open workers would finish the work in sight in about `target` (Dask's
    /// `adaptive_target`), and which to close when that is fewer than now; see
    /// ARCHITECTURE.md, "Adaptive scaling". Changes nothing.
    pub fn adaptive_target(&self, target: Duration) -> AdaptiveTarget {
        let target = target.as_micros().max(1);
        let open: Vec<&WorkerInfo> = self.workers.values().filter(|w| !w.retiring).collect();
        // Ready tasks without a thread: queued roots and those no open worker may run,
        // each with its share of the work waiting for it.
        let waiting = self.queue.len() + self.no_worker.len();
        let sample: Vec<u64> = (self.queue.keys().chain(self.no_worker.values()))
            .take(ADAPTIVE_SAMPLE)
            .map(|k| self.work_behind(k))
            .collect();
        let queued_micros = if sample.is_empty() {
            0
        } else {
            // Dask's extrapolation from the first hundred.
            sample.iter().map(|&m| u128::from(m)).sum::<u128>() * waiting as u128
                / sample.len() as u128
        };
        let occupancy: u128 = open.iter().map(|w| u128::from(w.occupancy)).sum();
        let ready = waiting + open.iter().map(|w| w.busy()).sum::<usize>();
        // Threads for the work, but not more than there are tasks to run on them.
        let threads = (occupancy + queued_micros)
            .div_ceil(target)
            .min(ready as u128);
        let nthreads: u128 = open.iter().map(|w| u128::from(w.nthreads)).sum();
        let mut workers = if nthreads == 0 {
            threads
        } else {
            (threads * open.len() as u128).div_ceil(nthreads)
        };
        if ready > 0 {
            workers = workers.max(1);
        }
        // Memory: more workers while managed bytes pass 60% of the limits.
        let limit: u128 = open.iter().map(|w| u128::from(w.memory_limit)).sum();
        let used: u128 = open
            .iter()
            .map(|w| u128::from(w.metrics.managed_bytes))
            .sum();
        if limit > 0 && used * 10 > limit * 6 {
            workers = workers.max(2 * open.len() as u128);
        }
        let workers = usize::try_from(workers).unwrap_or(usize::MAX);
        if workers >= open.len() {
            return AdaptiveTarget {
                workers: u32::try_from(workers).unwrap_or(u32::MAX),
                to_close: Vec::new(),
            };
        }
        let to_close = self.workers_to_close(open.len() - workers, true);
        AdaptiveTarget {
            workers: (open.len() - to_close.len()) as u32,
            to_close,
        }
    }

    /// Microseconds of work a ready task stands for: its own, plus its share of each
    /// dependent waiting for it (a dependent of `k` inputs counts a `k`th). Root-task
    /// queuing holds readers back while their consumers run, so the queue alone shows a
    /// map over files as its quick reads and hides the work that follows them.
    fn work_behind(&self, key: &Key) -> u64 {
        let own = self.estimate(key);
        let Some(t) = self.tasks.get(key) else {
            return own;
        };
        let (mut seen, mut share) = (0u64, 0u64);
        for d in t.dependents.iter().take(ADAPTIVE_SAMPLE) {
            seen += 1;
            if let Some(dt) = self.tasks.get(d)
                && dt.status == TaskStatus::Waiting
            {
                share += self.estimate(d) / dt.deps.len().max(1) as u64;
            }
        }
        // A value read by many: the dependents not looked at are taken to be alike.
        let scaled = u128::from(share) * t.dependents.len() as u128 / u128::from(seen.max(1));
        own.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// Up to `n` open workers to close: the least busy, then those holding the fewest
    /// bytes. With `idle_only` (adaptive scaling), only workers running nothing, and only
    /// as many as leave the workers kept at most half full of the values held (their
    /// memory limits, when all have one: Dask's `memory_ratio` of 2, below the 60% that
    /// asks for more workers, so the size does not swing). Never every open worker while
    /// values are held or moving ([`Self::values_held`]).
    fn workers_to_close(&self, n: usize, idle_only: bool) -> Vec<Peer> {
        let bytes = self.open_bytes();
        let total: u128 = bytes.values().map(|b| u128::from(*b)).sum();
        let mut candidates: Vec<(usize, u64, WorkerId)> = (bytes.iter())
            .map(|(id, b)| (self.workers[id].processing.len(), *b, *id))
            .collect();
        candidates.sort_unstable();
        let limited = (bytes.keys()).all(|id| self.workers[id].memory_limit > 0);
        let mut kept_limit: u128 = (bytes.keys())
            .map(|id| u128::from(self.workers[id].memory_limit))
            .sum();
        let held = self.values_held();
        let mut kept = candidates.len();
        let mut out = Vec::new();
        for (busy, _, id) in candidates {
            if out.len() == n || (idle_only && busy > 0) {
                break;
            }
            let w = &self.workers[&id];
            let limit_left = kept_limit - u128::from(w.memory_limit);
            let room = kept > 1 || !held;
            if !room || (idle_only && limited && limit_left < 2 * total) {
                break;
            }
            kept -= 1;
            kept_limit = limit_left;
            out.push(Peer {
                id,
                address: w.address.clone(),
            });
        }
        out
    }

    /// Whether any worker holds a value or one is moving between workers: the last open
    /// workers must not all go then.
    fn values_held(&self) -> bool {
        !self.acquiring.is_empty() || self.workers.values().any(|w| !w.has_what.is_empty())
    }

    /// Counters.
    pub fn stats(&self) -> SchedulerStats {
        self.stats
    }

    /// When the next heartbeat check is due: deliver [`SchedulerEvent::Tick`] then.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.workers
            .values()
            .map(|w| w.last_seen + self.config.heartbeat_timeout)
            .min()
    }

    /// Apply one event; returns what the runtime must do, in order.
    pub fn handle(&mut self, event: SchedulerEvent, now: Time) -> Vec<SchedulerAction> {
        self.now = now;
        match event {
            SchedulerEvent::WorkerJoined {
                worker,
                nthreads,
                memory_limit,
                address,
                nanny,
                resources,
            } => {
                self.replace_from_nanny(nanny.as_deref());
                let offer = match resources.check() {
                    Ok(()) => resources,
                    Err(e) => {
                        self.log(LogLevel::Warn, format!("{worker} offers no resources: {e}"));
                        Resources::default()
                    }
                };
                self.worker_joined(worker, nthreads, memory_limit, address, offer, now);
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.nanny = nanny;
                }
            }
            SchedulerEvent::WorkerLost { worker, reason } => {
                if self.workers.contains_key(&worker) {
                    self.remove_worker(worker, &reason, false);
                }
            }
            SchedulerEvent::FromWorker { worker, msg } => self.worker_message(worker, msg, now),
            SchedulerEvent::ClientConnected { client } => {
                self.clients.entry(client).or_default();
            }
            SchedulerEvent::ClientGone { client } => {
                let fx = self.coordination.client_gone(client);
                self.coordination_effects(fx);
                let keys = self.clients.remove(&client).unwrap_or_default();
                self.release_keys(client, keys.into_iter().collect());
            }
            SchedulerEvent::FromClient { client, msg } => self.client_message(client, msg),
            SchedulerEvent::Tick => self.check_heartbeats(now),
        }
        self.fill_slots();
        if self.config.work_stealing {
            self.balance();
            self.balance_resources();
        }
        self.close_retired();
        if self.no_worker.is_empty() && !self.no_worker_warned.is_empty() {
            self.no_worker_warned.clear();
        }
        std::mem::take(&mut self.out)
    }

    fn log(&mut self, level: LogLevel, text: String) {
        self.out.push(SchedulerAction::Log(level, text));
    }

    fn worker_joined(
        &mut self,
        id: WorkerId,
        nthreads: u32,
        limit: u64,
        addr: String,
        resources: Resources,
        now: Time,
    ) {
        if self.workers.contains_key(&id) {
            self.log(
                LogLevel::Warn,
                format!("{id} joined twice; ignoring the second"),
            );
            return;
        }
        let offers = match resources.is_empty() {
            true => String::new(),
            false => format!(", offering {resources}"),
        };
        self.log(
            LogLevel::Info,
            format!("{id} joined with {nthreads} threads at {addr}{offers}"),
        );
        self.workers.insert(
            id,
            WorkerInfo {
                nthreads: nthreads.max(1),
                memory_limit: limit,
                address: addr,
                processing: FxHashSet::default(),
                long_running: FxHashSet::default(),
                occupancy: 0,
                has_what: FxHashSet::default(),
                last_seen: now,
                metrics: WorkerMetrics::default(),
                full_of_roots_at: 0,
                retiring: false,
                handoffs: 0,
                acquisitions: 0,
                nanny: None,
                resources,
            },
        );
        self.addresses.insert(id, self.workers[&id].address.clone());
        self.retry_no_worker(id);
    }

    /// Place the tasks waiting for a worker their restrictions allow, if `id` is one.
    fn retry_no_worker(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        // A loose task waits only for the resources it asks for.
        let ready: Vec<((i64, u64), Key)> = (self.no_worker.iter())
            .filter(|(_, k)| {
                (self.tasks.get(*k))
                    .and_then(|t| t.restrictions.as_ref())
                    .is_none_or(|r| r.allows(&w.address, &w.resources, !r.loose))
            })
            .map(|(pos, k)| (*pos, k.clone()))
            .collect();
        for (pos, key) in ready {
            self.no_worker.remove(&pos);
            self.make_ready(key);
        }
    }

    /// A worker joining from `nanny`: the worker that nanny started before is dead (a
    /// nanny starts a new worker only once the old one has exited), so it goes now rather
    /// than when its connection times out.
    fn replace_from_nanny(&mut self, nanny: Option<&str>) {
        let Some(nanny) = nanny else { return };
        let old: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| w.nanny.as_deref() == Some(nanny))
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            let reason = "its nanny started a new worker process".to_string();
            self.out
                .push(SchedulerAction::CloseWorker(id, reason.clone()));
            self.remove_worker(id, &reason, false);
        }
    }

    fn check_heartbeats(&mut self, now: Time) {
        let timeout = self.config.heartbeat_timeout;
        let dead: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| now >= w.last_seen + timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let reason = format!("no heartbeat for {} ms", timeout.as_millis());
            self.out
                .push(SchedulerAction::CloseWorker(id, reason.clone()));
            self.remove_worker(id, &reason, false);
        }
    }

    fn worker_message(&mut self, worker: WorkerId, msg: FromWorker, now: Time) {
        let Some(info) = self.workers.get_mut(&worker) else {
            self.log(
                LogLevel::Warn,
                format!("message from unknown {worker} ignored: {msg:?}"),
            );
            return;
        };
        info.last_seen = now;
        match msg {
            FromWorker::Heartbeat(metrics) => info.metrics = metrics,
            FromWorker::TaskFinished {
                key,
                nbytes,
                compute_micros,
            } => {
                let key = self.canonical(key);
                self.task_finished(worker, key, nbytes, compute_micros)
            }
            FromWorker::TaskErred { key, error } => {
                let key = self.canonical(key);
                self.task_erred(worker, key, error)
            }
            FromWorker::StealResponse { key, stolen } => {
                let key = self.canonical(key);
                self.steal_response(worker, key, stolen)
            }
            FromWorker::AddKeys { keys } => {
                let mut kept = Vec::new();
                for (key, _) in keys {
                    let key = self.canonical(key);
                    match self.tasks.get_mut(&key) {
                        Some(t) if t.status == TaskStatus::Memory => {
                            t.who_has.insert(worker);
                            if let Some(w) = self.workers.get_mut(&worker) {
                                w.has_what.insert(key.clone());
                            }
                            kept.push(key.clone());
                        }
                        _ => self.free_on(worker, key.clone()),
                    }
                    // After the copy is counted: a Replicated answer lists it.
                    self.acquired(&key, worker);
                }
                // A copy that reached a worker retiring meanwhile moves on.
                if self.workers.get(&worker).is_some_and(|w| w.retiring) {
                    self.hand_off(worker, kept);
                }
            }
            FromWorker::MissingData { key, from_worker } => {
                let key = self.canonical(key);
                self.missing_data(worker, key.clone(), from_worker);
                self.acquired(&key, worker);
            }
            FromWorker::Retire => self.retire(worker),
            FromWorker::Seceded { key } => {
                let key = self.canonical(key);
                self.seceded(worker, key)
            }
        }
    }

    fn client_message(&mut self, client: ClientId, msg: FromClient) {
        match msg {
            FromClient::SubmitGraph { tasks, wanted } => self.submit(client, tasks, wanted),
            FromClient::ReleaseKeys { keys } => self.release_keys(client, keys),
            FromClient::Cancel { keys } => {
                self.release_keys(client, keys.clone());
                for key in keys {
                    self.out.push(SchedulerAction::SendToClient(
                        client,
                        ToClient::Cancelled { key },
                    ));
                }
            }
            FromClient::WhoHas { keys } => {
                let holders = keys
                    .into_iter()
                    .map(|k| {
                        let peers = self.peers_holding(&k);
                        (k, peers)
                    })
                    .collect();
                let reply = ToClient::WhoHasReply { holders };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::ListWorkers => {
                let workers = (self.workers.iter())
                    .map(|(id, w)| {
                        let peer = Peer {
                            id: *id,
                            address: w.address.clone(),
                        };
                        (peer, w.nthreads)
                    })
                    .collect();
                let reply = ToClient::Workers { workers };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::Info => {
                let reply = ToClient::Info { info: self.info() };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::Scatter { keys, workers } => self.scatter(client, keys, workers),
            FromClient::Replicate { request, keys, n } => self.replicate(client, request, keys, n),
            FromClient::RetireWorkers { addresses } => self.retire_workers(client, addresses),
            FromClient::Rebalance {
                request,
                keys,
                workers,
            } => self.rebalance(client, request, keys, workers),
            FromClient::PublishDataset {
                request,
                name,
                keys,
                payload,
                replace,
            } => {
                let reply = self.publish(name, keys, payload, replace);
                self.dataset_reply(client, request, reply);
            }
            FromClient::GetDataset { request, name } => {
                let reply = match self.datasets.get(&name) {
                    Some((keys, payload)) => DatasetReply::Found {
                        keys: keys.clone(),
                        payload: payload.clone(),
                    },
                    None => DatasetReply::Refused {
                        error: format!("no dataset named {name:?} is published"),
                    },
                };
                self.dataset_reply(client, request, reply);
            }
            FromClient::UnpublishDataset { request, name } => {
                let reply = match self.datasets.remove(&name) {
                    Some((keys, _)) => {
                        self.unpublish_keys(keys);
                        DatasetReply::Done
                    }
                    None => DatasetReply::Refused {
                        error: format!("no dataset named {name:?} is published"),
                    },
                };
                self.dataset_reply(client, request, reply);
            }
            FromClient::ListDatasets { request } => {
                let names = self.datasets.keys().cloned().collect();
                self.dataset_reply(client, request, DatasetReply::Names { names });
            }
            FromClient::Restart { request } => self.restart(client, request),
            FromClient::AdaptiveTarget {
                request,
                target_micros,
            } => {
                let target = self.adaptive_target(Duration::from_micros(target_micros));
                let reply = ToClient::AdaptiveTarget { request, target };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::WorkersToClose { request, n } => {
                let to_close = self.workers_to_close(n as usize, false);
                let open = self.open_workers().len() - to_close.len();
                let target = AdaptiveTarget {
                    workers: open as u32,
                    to_close,
                };
                let reply = ToClient::AdaptiveTarget { request, target };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::Coordinate { request, op } => self.coordinate(client, request, op),
            FromClient::TaskStream { request, since } => {
                let first = self
                    .task_stream
                    .front()
                    .map_or(self.task_stream_next, |r| r.seq);
                let skip = usize::try_from(since.saturating_sub(first)).unwrap_or(usize::MAX);
                // At most TASK_STREAM_REPLY_BYTES (estimated) per answer: the client asks
                // again from the number after the last it got.
                let mut bytes = 0;
                let records = (self.task_stream.iter().skip(skip))
                    .take_while(|r| {
                        bytes += 128 + r.key.name().len() + 11 * r.key.index().len();
                        bytes <= TASK_STREAM_REPLY_BYTES
                    })
                    .map(|r| TaskRecord {
                        seq: r.seq,
                        key: r.key.clone(),
                        worker: self.addresses.get(&r.worker).cloned().unwrap_or_default(),
                        start: r.stop.saturating_sub(r.micros),
                        stop: r.stop,
                        nbytes: r.nbytes,
                        erred: r.erred,
                    })
                    .collect();
                let next = self.task_stream_next;
                let reply = ToClient::TaskStream {
                    request,
                    next,
                    records,
                };
                self.out.push(SchedulerAction::SendToClient(client, reply));
            }
            FromClient::FireAndForget { keys } => {
                let mut fired = Vec::new();
                for k in keys {
                    let k = self.canonical(k);
                    if let Some(t) = self.tasks.get_mut(&k)
                        && !matches!(t.status, TaskStatus::Memory | TaskStatus::Erred)
                    {
                        t.fire_and_forget = true;
                        fired.push(k);
                    }
                }
                self.activate(fired);
            }
        }
    }

    /// Forget every task, cancel every client's futures, and have every worker exit for
    /// its nanny to start it afresh (see [`FromClient::Restart`]). The workers go from the
    /// state at once: their replacements join as new workers.
    fn restart(&mut self, client: ClientId, request: u64) {
        let reply = |workers: u32, refused: Option<String>| {
            let msg = ToClient::Restarting {
                request,
                workers,
                refused,
            };
            SchedulerAction::SendToClient(client, msg)
        };
        if let Some(w) = self.workers.values().find(|w| w.nanny.is_none()) {
            let why = format!(
                "worker {} runs without a nanny (started with --no-nanny), so nothing would \
                 start it again; restart needs every worker under a nanny",
                w.address
            );
            self.out.push(reply(0, Some(why)));
            return;
        }
        // Its nanny would start it again, undoing the retirement someone asked for.
        if let Some(w) = self.workers.values().find(|w| w.retiring) {
            let why = format!("worker {} is retiring; restart once it has left", w.address);
            self.out.push(reply(0, Some(why)));
            return;
        }
        self.log(
            LogLevel::Warn,
            format!(
                "restarting: {} workers, {} tasks forgotten",
                self.workers.len(),
                self.tasks.len()
            ),
        );
        for (c, keys) in &mut self.clients {
            for key in std::mem::take(keys) {
                let msg = ToClient::Cancelled { key };
                self.out.push(SchedulerAction::SendToClient(*c, msg));
            }
        }
        for ((c, request), (keys, _)) in std::mem::take(&mut self.replications) {
            let holders = keys.into_iter().map(|k| (k, Vec::new())).collect();
            let msg = ToClient::Replicated { request, holders };
            self.out.push(SchedulerAction::SendToClient(c, msg));
        }
        for (c, request) in std::mem::take(&mut self.rebalances).into_keys() {
            let msg = ToClient::Rebalanced {
                request,
                holders: Vec::new(),
                nbytes: 0,
                refused: Some("the cluster restarted meanwhile".into()),
            };
            self.out.push(SchedulerAction::SendToClient(c, msg));
        }
        let (items, refusals) = self.coordination.drop_items();
        for (client, request, reply) in refusals.replies {
            let msg = ToClient::Coordinated { request, reply };
            self.out.push(SchedulerAction::SendToClient(client, msg));
        }
        if !items.is_empty() {
            self.log(
                LogLevel::Warn,
                format!(
                    "restarting: {} emptied (their data is gone)",
                    items.join(", ")
                ),
            );
        }
        if !self.datasets.is_empty() {
            let names: Vec<String> = std::mem::take(&mut self.datasets).into_keys().collect();
            self.log(
                LogLevel::Warn,
                format!("restarting: datasets {names:?} unpublished (their data is gone)"),
            );
        }
        self.tasks.clear();
        self.steals.clear();
        self.acquiring.clear();
        self.no_worker.clear();
        self.no_worker_warned.clear();
        self.queue = RootQueue::default();
        self.retiring = 0;
        let workers = std::mem::take(&mut self.workers);
        let n = workers.len();
        for (id, w) in workers {
            // No CloseWorker: closing the connection could drop the message; the worker
            // exits, its connection closes, and the runtime's WorkerLost finds it gone.
            self.out
                .push(SchedulerAction::SendToWorker(id, ToWorker::Restart));
            self.tell_clients_left(id, w.address);
        }
        self.out
            .push(reply(u32::try_from(n).unwrap_or(u32::MAX), None));
    }

    /// A coordination operation ([`crate::coordination`]): an item's keys must be known
    /// (refused naming the first that is not) and are held while it is.
    fn coordinate(&mut self, client: ClientId, request: u64, mut op: Coordinate) {
        if let Coordinate::VariableSet { name, item } | Coordinate::QueuePut { name, item, .. } =
            &mut op
        {
            let keys: Vec<Key> = std::mem::take(&mut item.keys)
                .into_iter()
                .map(|k| self.canonical(k))
                .collect();
            if let Some(k) = keys.iter().find(|k| !self.tasks.contains_key(*k)) {
                let error = format!(
                    "cannot keep {k} in {name:?}: it is not on the cluster (no live future holds it)"
                );
                let msg = ToClient::Coordinated {
                    request,
                    reply: CoordReply::Refused { error },
                };
                self.out.push(SchedulerAction::SendToClient(client, msg));
                return;
            }
            for k in &keys {
                self.tasks.get_mut(k).expect("checked above").published += 1;
            }
            self.activate(keys.clone());
            item.keys = keys;
        }
        let fx = self.coordination.apply(client, request, op);
        self.coordination_effects(fx);
    }

    /// Send the answers (an item's keys wanted by its getter first), then let go of the
    /// keys of items gone.
    fn coordination_effects(&mut self, fx: Effects) {
        for (client, request, reply) in fx.replies {
            if let CoordReply::Item(item) = &reply
                && self.clients.contains_key(&client)
            {
                for k in &item.keys {
                    if let Some(t) = self.tasks.get_mut(k) {
                        t.wanted_by.insert(client);
                        self.clients.entry(client).or_default().insert(k.clone());
                    }
                }
            }
            let msg = ToClient::Coordinated { request, reply };
            self.out.push(SchedulerAction::SendToClient(client, msg));
        }
        if !fx.released.is_empty() {
            self.unpublish_keys(fx.released);
        }
    }

    fn dataset_reply(&mut self, client: ClientId, request: u64, reply: DatasetReply) {
        let msg = ToClient::Dataset { request, reply };
        self.out.push(SchedulerAction::SendToClient(client, msg));
    }

    /// Keep `keys` under `name` (see [`FromClient::PublishDataset`]).
    fn publish(
        &mut self,
        name: String,
        keys: Vec<Key>,
        payload: ByteBuf,
        replace: bool,
    ) -> DatasetReply {
        if self.datasets.contains_key(&name) && !replace {
            return DatasetReply::Refused {
                error: format!("a dataset named {name:?} is already published"),
            };
        }
        let keys: Vec<Key> = keys.into_iter().map(|k| self.canonical(k)).collect();
        if let Some(k) = keys.iter().find(|k| !self.tasks.contains_key(*k)) {
            return DatasetReply::Refused {
                error: format!(
                    "cannot publish {name:?}: {k} is not on the cluster (no live future holds it)"
                ),
            };
        }
        for k in &keys {
            self.tasks.get_mut(k).expect("checked above").published += 1;
        }
        // Known only as lineage (nobody wanted it): computed again, as for a submit.
        self.activate(keys.clone());
        if let Some((old, _)) = self.datasets.insert(name, (keys, payload)) {
            self.unpublish_keys(old);
        }
        DatasetReply::Done
    }

    /// One dataset fewer lists each of `keys`: those nothing else needs go.
    fn unpublish_keys(&mut self, keys: Vec<Key>) {
        for k in &keys {
            if let Some(t) = self.tasks.get_mut(k) {
                t.published = t.published.saturating_sub(1);
            }
        }
        self.settle(keys);
    }

    /// Place values `client` is about to push: each becomes a task without an op,
    /// processing on the worker holding the fewest bytes (values placed by this request
    /// counted), wanted by `client`. See the module docs.
    fn scatter(&mut self, client: ClientId, keys: Vec<(Key, u64)>, workers: Vec<String>) {
        let Some((first, _)) = keys.first() else {
            let reply = ToClient::ScatterTo {
                placements: Vec::new(),
            };
            self.out.push(SchedulerAction::SendToClient(client, reply));
            return;
        };
        let first = first.clone();
        let refuse = |error: String| {
            let key = first.clone();
            SchedulerAction::SendToClient(client, ToClient::ScatterRefused { key, error })
        };
        let only = Restrictions {
            workers,
            loose: false,
            resources: Resources::default(),
        };
        let mut held = self.open_bytes();
        if !only.workers.is_empty() {
            held.retain(|id, _| only.lists(&self.workers[id].address));
        }
        if held.is_empty() {
            let error = match only.workers.is_empty() {
                true => "no worker is connected to hold scattered values".to_string(),
                false => format!(
                    "no worker among {:?} is connected to hold scattered values",
                    only.workers
                ),
            };
            self.out.push(refuse(error));
            return;
        }
        let mut seen = FxHashSet::default();
        for (key, _) in &keys {
            if self.tasks.contains_key(key) || !seen.insert(key) {
                let error = format!("key {key} is already known: scattered keys must be new");
                self.out.push(refuse(error));
                return;
            }
        }
        let mut placements = Vec::with_capacity(keys.len());
        for (key, nbytes) in keys {
            let worker =
                Self::take_emptiest(&mut held, nbytes, |_| true).expect("workers checked above");
            self.next_seq += 1;
            self.tasks.insert(
                key.clone(),
                Task {
                    nbytes,
                    processing_on: Some(worker),
                    // Never offered to a thief: only this worker will receive the value.
                    started: true,
                    wanted_by: BTreeSet::from([client]),
                    scattered: true,
                    ..Task::released(ByteBuf::new(), Vec::new(), 0, self.next_seq, 0)
                },
            );
            self.set_status(&key, TaskStatus::Processing);
            let w = self.workers.get_mut(&worker).expect("chosen from the map");
            w.processing.insert(key.clone());
            self.clients.entry(client).or_default().insert(key.clone());
            let peer = Peer {
                id: worker,
                address: w.address.clone(),
            };
            placements.push((key, peer));
        }
        let reply = ToClient::ScatterTo { placements };
        self.out.push(SchedulerAction::SendToClient(client, reply));
    }

    /// Why a scattered value cannot be had any more.
    fn scatter_lost(key: &Key, how: &str) -> TaskFailure {
        TaskFailure::error(
            key.clone(),
            format!(
                "the scattered value {how}, and a scattered value cannot be recomputed: \
                 scatter it again"
            ),
        )
    }

    /// The task map's own copy of `key` when it has one: keys arriving in messages have
    /// names of their own, and every later comparison with a copy that shares the map's
    /// name stops at its address instead of reading the name (see `Key`'s `PartialEq`).
    /// Workers that take new work: every one not retiring.
    fn open_workers(&self) -> Vec<WorkerId> {
        (self.workers.iter())
            .filter(|(_, w)| !w.retiring)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Bytes each open worker holds or will hold: its values and its tasks' outputs as
    /// known, or the managed bytes it reported if more. One pass over what they hold.
    fn open_bytes(&self) -> BTreeMap<WorkerId, u64> {
        (self.workers.iter())
            .filter(|(_, w)| !w.retiring)
            .map(|(id, w)| {
                let known: u64 = (w.has_what.iter().chain(&w.processing))
                    .filter_map(|k| self.tasks.get(k))
                    .map(|t| t.nbytes)
                    .sum();
                (*id, known.max(w.metrics.managed_bytes))
            })
            .collect()
    }

    /// The worker in `bytes` holding the fewest (ties: the lowest id) that `ok` accepts,
    /// charged `nbytes` more for the next choice.
    fn take_emptiest(
        bytes: &mut BTreeMap<WorkerId, u64>,
        nbytes: u64,
        ok: impl Fn(&WorkerId) -> bool,
    ) -> Option<WorkerId> {
        let (&to, _) = (bytes.iter())
            .filter(|(w, _)| ok(w))
            .min_by_key(|(w, b)| (**b, **w))?;
        *bytes.get_mut(&to).expect("chosen from the map") += nbytes;
        Some(to)
    }

    /// Ask `worker` to fetch and keep `keys` for `purpose`, in one message; a key it is
    /// acquiring already serves one more purpose and is not asked for again.
    fn acquire(&mut self, worker: WorkerId, keys: Vec<Key>, purpose: Purpose) {
        let mut locations = Vec::new();
        for key in keys {
            let purposes = (self.acquiring.entry(key.clone()).or_default())
                .entry(worker)
                .or_default();
            purposes.push(purpose);
            if purposes.len() == 1 {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.acquisitions += 1;
                }
                locations.push(DepLocation {
                    who_has: self.peers_holding(&key),
                    nbytes: self.tasks.get(&key).map_or(0, |t| t.nbytes),
                    key,
                });
            }
            if let Purpose::Handoff(from) = purpose
                && let Some(w) = self.workers.get_mut(&from)
            {
                w.handoffs += 1;
            }
        }
        if !locations.is_empty() {
            let msg = ToWorker::AcquireReplicas { keys: locations };
            self.out.push(SchedulerAction::SendToWorker(worker, msg));
        }
    }

    /// `worker`'s acquisition of `key` is over (kept, failed, or the worker left): settle
    /// whom it served.
    fn acquired(&mut self, key: &Key, worker: WorkerId) {
        let Some(by_worker) = self.acquiring.get_mut(key) else {
            return;
        };
        let purposes = by_worker.remove(&worker).unwrap_or_default();
        if by_worker.is_empty() {
            self.acquiring.remove(key);
        }
        // A copy that also serves a replicate request adds a holder: no sender drops its.
        let replicating = (purposes.iter()).any(|p| matches!(p, Purpose::Replica(..)));
        if !purposes.is_empty()
            && let Some(w) = self.workers.get_mut(&worker)
        {
            w.acquisitions = w.acquisitions.saturating_sub(1);
        }
        for purpose in purposes {
            match purpose {
                Purpose::Handoff(from) => {
                    if let Some(w) = self.workers.get_mut(&from) {
                        w.handoffs = w.handoffs.saturating_sub(1);
                    }
                }
                Purpose::Replica(client, request) => {
                    let Some((_, left)) = self.replications.get_mut(&(client, request)) else {
                        continue;
                    };
                    *left -= 1;
                    if *left == 0 {
                        let (keys, _) =
                            (self.replications.remove(&(client, request))).expect("found above");
                        self.replicated(client, request, &keys);
                    }
                }
                Purpose::Rebalance(client, request, from) => {
                    let moved = match replicating {
                        true => None,
                        false => self.finish_move(key, worker, from),
                    };
                    let Some(r) = self.rebalances.get_mut(&(client, request)) else {
                        continue;
                    };
                    if let Some(nbytes) = moved {
                        r.moved.push(key.clone());
                        r.nbytes += nbytes;
                    }
                    r.left -= 1;
                    if r.left == 0 {
                        let r = (self.rebalances.remove(&(client, request))).expect("found above");
                        self.rebalanced(client, request, r, None);
                    }
                }
            }
        }
    }

    fn replicated(&mut self, client: ClientId, request: u64, keys: &[Key]) {
        let holders = (keys.iter())
            .map(|k| (k.clone(), self.peers_holding(k)))
            .collect();
        let reply = ToClient::Replicated { request, holders };
        self.out.push(SchedulerAction::SendToClient(client, reply));
    }

    /// Copy each key in memory to open workers lacking it, the emptiest first, until `n`
    /// (default: every open worker) hold it or are acquiring it; answer once all settled.
    fn replicate(&mut self, client: ClientId, request: u64, keys: Vec<Key>, n: Option<u32>) {
        let keys: Vec<Key> = distinct(&keys)
            .into_iter()
            .map(|k| self.canonical(k))
            .collect();
        let mut bytes = self.open_bytes();
        let want = n.map_or(bytes.len(), |n| (n as usize).min(bytes.len()));
        let mut plan: BTreeMap<WorkerId, Vec<Key>> = BTreeMap::new();
        let mut joined = Vec::new();
        for key in &keys {
            let Some(t) = self.tasks.get(key) else {
                continue;
            };
            if t.status != TaskStatus::Memory {
                continue;
            }
            let in_flight: Vec<WorkerId> =
                (self.acquiring.get(key)).map_or(Vec::new(), |m| m.keys().copied().collect());
            let has = |w: &WorkerId| t.who_has.contains(w) || in_flight.contains(w);
            let mut copies = bytes.keys().filter(|w| has(w)).count();
            joined.extend(in_flight.iter().map(|w| (key.clone(), *w)));
            let mut chosen = Vec::new();
            while copies < want {
                let fresh = |w: &WorkerId| !has(w) && !chosen.contains(w);
                let Some(to) = Self::take_emptiest(&mut bytes, t.nbytes, fresh) else {
                    break;
                };
                chosen.push(to);
                plan.entry(to).or_default().push(key.clone());
                copies += 1;
            }
        }
        let purpose = Purpose::Replica(client, request);
        let mut pending = 0;
        for (key, w) in joined {
            if let Some(p) = self.acquiring.get_mut(&key).and_then(|m| m.get_mut(&w)) {
                p.push(purpose);
                pending += 1;
            }
        }
        for (to, keys) in plan {
            pending += keys.len();
            self.acquire(to, keys, purpose);
        }
        if pending == 0 {
            self.replicated(client, request, &keys);
        } else {
            self.replications.insert((client, request), (keys, pending));
        }
    }

    /// Even out the bytes open workers hold ([`FromClient::Rebalance`]): for each worker
    /// above the mean, fullest first, its largest values go to the emptiest worker lacking
    /// them while it stays above the mean and the recipient would not pass it. Each move
    /// is an acquisition; the sender drops its copy once the recipient reports its own
    /// ([`Self::finish_move`]).
    fn rebalance(
        &mut self,
        client: ClientId,
        request: u64,
        keys: Option<Vec<Key>>,
        addresses: Vec<String>,
    ) {
        let mut scope: BTreeSet<WorkerId> = self.open_workers().into_iter().collect();
        if !addresses.is_empty() {
            // Each entry is a worker's address, or a host naming every worker on it (as
            // in restrictions).
            let mut chosen = BTreeSet::new();
            for a in &addresses {
                let entry = Restrictions {
                    workers: vec![a.clone()],
                    loose: false,
                    resources: Resources::default(),
                };
                let matching: Vec<(WorkerId, bool)> = (self.workers.iter())
                    .filter(|(_, w)| entry.lists(&w.address))
                    .map(|(id, w)| (*id, w.retiring))
                    .collect();
                let open: Vec<WorkerId> = (matching.iter())
                    .filter(|(_, retiring)| !retiring)
                    .map(|(id, _)| *id)
                    .collect();
                let why = match (matching.len(), open.len()) {
                    (_, 1..) => {
                        chosen.extend(open);
                        continue;
                    }
                    (0, _) => format!("no worker has the address or host {a}"),
                    (1, _) => format!("the worker at {a} is retiring"),
                    (_, _) => format!("every worker on {a} is retiring"),
                };
                let r = Rebalancing::default();
                return self.rebalanced(client, request, r, Some(why));
            }
            scope = chosen;
        }
        let mut bytes: BTreeMap<WorkerId, u64> = (self.open_bytes().into_iter())
            .filter(|(w, _)| scope.contains(w))
            .collect();
        let only: Option<FxHashSet<Key>> =
            keys.map(|ks| ks.into_iter().map(|k| self.canonical(k)).collect());
        let mut plan: BTreeMap<(WorkerId, WorkerId), Vec<Key>> = BTreeMap::new();
        // A key two senders hold moves once (both would drop their copies otherwise).
        let mut planned: FxHashSet<Key> = FxHashSet::default();
        if bytes.len() >= 2 {
            let mean = bytes.values().sum::<u64>() / bytes.len() as u64;
            let mut senders: Vec<(u64, WorkerId)> = (bytes.iter())
                .filter(|(_, b)| **b > mean)
                .map(|(w, b)| (*b, *w))
                .collect();
            senders.sort_by(|a, b| b.cmp(a));
            for (_, from) in senders {
                let mut candidates: Vec<(u64, &Key)> = (self.workers[&from].has_what.iter())
                    .filter_map(|k| {
                        let t = self.tasks.get(k)?;
                        let movable = t.status == TaskStatus::Memory
                            && t.nbytes > 0
                            && !self.read_on(k, from)
                            && !planned.contains(k)
                            && !self.acquiring.contains_key(k)
                            && only.as_ref().is_none_or(|o| o.contains(k));
                        movable.then_some((t.nbytes, k))
                    })
                    .collect();
                // Largest first (ties by key, for a plan that does not depend on hashing).
                candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
                for (nbytes, key) in candidates {
                    if bytes[&from] <= mean {
                        break;
                    }
                    let holders = &self.tasks[key].who_has;
                    let Some((&to, &has)) = (bytes.iter())
                        .filter(|(w, _)| !holders.contains(w))
                        .min_by_key(|(w, b)| (**b, **w))
                    else {
                        continue;
                    };
                    if has + nbytes > mean {
                        continue; // a smaller value may fit
                    }
                    *bytes.get_mut(&to).expect("chosen from the map") += nbytes;
                    *bytes.get_mut(&from).expect("a sender") -= nbytes;
                    planned.insert(key.clone());
                    plan.entry((to, from)).or_default().push(key.clone());
                }
            }
        }
        let left: usize = plan.values().map(Vec::len).sum();
        if left == 0 {
            return self.rebalanced(client, request, Rebalancing::default(), None);
        }
        self.rebalances.insert(
            (client, request),
            Rebalancing {
                left,
                ..Rebalancing::default()
            },
        );
        for ((to, from), keys) in plan {
            self.acquire(to, keys, Purpose::Rebalance(client, request, from));
        }
    }

    /// Whether a task processing on `worker` reads `key` (a value it must keep there).
    fn read_on(&self, key: &Key, worker: WorkerId) -> bool {
        (self.tasks.get(key)).is_some_and(|t| {
            (t.dependents.iter())
                .any(|d| (self.tasks.get(d)).is_some_and(|dt| dt.processing_on == Some(worker)))
        })
    }

    /// A rebalancing copy of `key` settled at `to`: if `to` (still here and open) holds it
    /// now and `from` still does too, without a task running there that reads it, `from`
    /// drops its copy. The bytes moved, if it did.
    fn finish_move(&mut self, key: &Key, to: WorkerId, from: WorkerId) -> Option<u64> {
        let t = self.tasks.get(key)?;
        let moved = t.status == TaskStatus::Memory
            && to != from
            && self.workers.get(&to).is_some_and(|w| !w.retiring)
            && t.who_has.contains(&to)
            && t.who_has.contains(&from)
            && !self.read_on(key, from);
        if !moved {
            return None;
        }
        let nbytes = t.nbytes;
        (self.tasks.get_mut(key)?).who_has.remove(&from);
        if let Some(w) = self.workers.get_mut(&from) {
            w.has_what.remove(key);
            // Until its next heartbeat says so: a rebalance right after sees it lighter.
            w.metrics.managed_bytes = w.metrics.managed_bytes.saturating_sub(nbytes);
        }
        self.free_on(from, key.clone());
        Some(nbytes)
    }

    fn rebalanced(
        &mut self,
        client: ClientId,
        request: u64,
        r: Rebalancing,
        refused: Option<String>,
    ) {
        let holders = (r.moved.iter())
            .map(|k| (k.clone(), self.peers_holding(k)))
            .collect();
        let msg = ToClient::Rebalanced {
            request,
            holders,
            nbytes: r.nbytes,
            refused,
        };
        self.out.push(SchedulerAction::SendToClient(client, msg));
    }

    /// A client asks these workers to retire: all of them, or none if an address is
    /// unknown or no open worker would be left to take the values they hold.
    fn retire_workers(&mut self, client: ClientId, addresses: Vec<String>) {
        let mut refused = Vec::new();
        let mut chosen = BTreeSet::new();
        for a in &addresses {
            match self.workers.iter().find(|(_, w)| &w.address == a) {
                Some((id, _)) => {
                    chosen.insert(*id);
                }
                None => refused.push((a.clone(), "no worker has this address".to_string())),
            }
        }
        let open_left = (self.open_workers().iter())
            .filter(|id| !chosen.contains(id))
            .count();
        // With nothing held or moving anywhere, every worker may go (an idle cluster
        // scaled to zero).
        if refused.is_empty() && open_left == 0 && !chosen.is_empty() && self.values_held() {
            for id in &chosen {
                let why = "no open worker would be left to take its values".to_string();
                refused.push((self.workers[id].address.clone(), why));
            }
        }
        let mut workers = Vec::new();
        if refused.is_empty() {
            workers = (chosen.iter())
                .map(|id| Peer {
                    id: *id,
                    address: self.workers[id].address.clone(),
                })
                .collect();
            self.retire_all(&chosen.into_iter().collect::<Vec<_>>());
        }
        let reply = ToClient::Retiring { workers, refused };
        self.out.push(SchedulerAction::SendToClient(client, reply));
    }

    /// Start `id`'s retirement: no new work; its tasks not started are asked back (and
    /// placed elsewhere when handed over); the values only it holds are handed off.
    fn retire(&mut self, id: WorkerId) {
        self.retire_all(&[id]);
    }

    /// [`Self::retire`] several workers: all leave the open set before any hands values
    /// off, so none hands them to another that is leaving too.
    fn retire_all(&mut self, ids: &[WorkerId]) {
        let mut leaving = Vec::new();
        for &id in ids {
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if w.retiring {
                continue;
            }
            w.retiring = true;
            self.retiring += 1;
            self.queue.leave(id);
            leaving.push(id);
        }
        for id in leaving {
            self.hand_off_all(id);
        }
    }

    /// A retiring worker's tasks not started are asked back; its values handed off.
    fn hand_off_all(&mut self, id: WorkerId) {
        let w = &self.workers[&id];
        let (processing, held) = (sorted(&w.processing), sorted(&w.has_what));
        self.log(
            LogLevel::Info,
            format!("{id} retiring: handing {} values off", held.len()),
        );
        for key in processing {
            let unstarted = (self.tasks.get(&key)).is_some_and(|t| !t.started && !t.scattered);
            if unstarted && !self.steals.contains_key(&key) {
                let msg = ToWorker::StealRequest { key };
                self.out.push(SchedulerAction::SendToWorker(id, msg));
            }
        }
        self.hand_off(id, held);
    }

    /// Have open workers acquire those of `keys` that retiring `from` holds, that are still
    /// needed and that no open worker holds or is acquiring; each goes to the open worker
    /// holding the fewest bytes.
    fn hand_off(&mut self, from: WorkerId, keys: Vec<Key>) {
        let mut bytes: Option<BTreeMap<WorkerId, u64>> = None;
        let mut plan: BTreeMap<WorkerId, Vec<Key>> = BTreeMap::new();
        for key in keys {
            let Some(t) = self.tasks.get(&key) else {
                continue;
            };
            if t.status != TaskStatus::Memory || !self.is_needed(&key) {
                continue;
            }
            let open = |w: &WorkerId| self.workers.get(w).is_some_and(|i| !i.retiring);
            if t.who_has.iter().any(open) {
                continue;
            }
            // Being acquired already (a replica, or from another retiring holder): join.
            if let Some(&to) = self.acquiring.get(&key).and_then(|m| m.keys().next()) {
                plan.entry(to).or_default().push(key);
                continue;
            }
            let nbytes = t.nbytes;
            let bytes = bytes.get_or_insert_with(|| self.open_bytes());
            let Some(to) = Self::take_emptiest(bytes, nbytes, |_| true) else {
                return; // no open worker: it closes with what it holds
            };
            plan.entry(to).or_default().push(key);
        }
        for (to, keys) in plan {
            self.acquire(to, keys, Purpose::Handoff(from));
        }
    }

    /// Close retiring workers with nothing left to run or hand off, and, when no open
    /// worker is left to take anything, every retiring worker at once.
    fn close_retired(&mut self) {
        if self.retiring == 0 {
            return;
        }
        let none_open = self.workers.values().all(|w| w.retiring);
        let done: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| {
                w.retiring
                    && (none_open
                        || (w.processing.is_empty() && w.handoffs == 0 && w.acquisitions == 0))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let reason = if none_open {
                "retired (no open worker was left to take its values)"
            } else {
                "retired"
            };
            let msg = ToWorker::Close {
                reason: reason.to_string(),
            };
            self.out.push(SchedulerAction::SendToWorker(id, msg));
            self.remove_worker(id, reason, true);
        }
    }

    fn canonical(&self, key: Key) -> Key {
        match self.tasks.get_key_value(&key) {
            Some((k, _)) => k.clone(),
            None => key,
        }
    }

    fn peers_holding(&self, key: &Key) -> Vec<Peer> {
        let Some(t) = self.tasks.get(key) else {
            return Vec::new();
        };
        (t.who_has.iter())
            .filter_map(|id| {
                let w = self.workers.get(id)?;
                Some(Peer {
                    id: *id,
                    address: w.address.clone(),
                })
            })
            .collect()
    }

    /// Check a submission as a whole; `Err` is the message for the client.
    fn validate(&self, tasks: &[TaskSpec], wanted: &[Key]) -> Result<(), partita_core::Error> {
        use partita_core::Error;
        // New keys and their positions in the submission.
        let mut new: FxHashMap<&Key, usize> = FxHashMap::default();
        new.reserve(tasks.len());
        for (i, spec) in tasks.iter().enumerate() {
            if self.tasks.contains_key(&spec.key) {
                continue;
            }
            if let Some(Err(e)) = (spec.restrictions.as_ref()).map(|r| r.resources.check()) {
                return Err(Error::Graph(format!("task {}: {e}", spec.key)));
            }
            if new.insert(&spec.key, i).is_some() {
                return Err(Error::DuplicateKey {
                    key: spec.key.clone(),
                });
            }
        }
        // Clients send tasks after their dependencies; then there can be no cycle (known
        // tasks cannot depend on new ones) and the sort below is skipped.
        let mut in_order = true;
        for (i, spec) in tasks.iter().enumerate() {
            if new.get(&spec.key) != Some(&i) {
                continue;
            }
            for d in &spec.deps {
                match new.get(d) {
                    Some(&j) => in_order &= j < i,
                    None if self.tasks.contains_key(d) => {}
                    None => {
                        return Err(Error::MissingDependency {
                            key: spec.key.clone(),
                            missing: d.clone(),
                        });
                    }
                }
            }
        }
        if let Some(k) = wanted
            .iter()
            .find(|k| !new.contains_key(k) && !self.tasks.contains_key(*k))
        {
            return Err(Error::KeyNotFound { key: k.clone() });
        }
        if in_order {
            return Ok(());
        }
        // Kahn's algorithm over the new tasks only.
        let mut pending: FxHashMap<&Key, usize> = FxHashMap::default();
        let mut dependents: FxHashMap<&Key, Vec<&Key>> = FxHashMap::default();
        for (k, &i) in &new {
            let deps = || tasks[i].deps.iter().filter(|d| new.contains_key(d));
            pending.insert(k, deps().count());
            for d in deps() {
                dependents.entry(d).or_default().push(k);
            }
        }
        let mut ready: Vec<&Key> = pending
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut done = 0;
        while let Some(k) = ready.pop() {
            done += 1;
            for dep in dependents.get(k).into_iter().flatten() {
                let n = pending.get_mut(dep).expect("every new key has a count");
                *n -= 1;
                if *n == 0 {
                    ready.push(dep);
                }
            }
        }
        if done < new.len() {
            let mut stuck: Vec<Key> = pending
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, _)| (*k).clone())
                .collect();
            stuck.sort();
            return Err(Error::Cycle {
                key: stuck[0].clone(),
                cycle: stuck,
            });
        }
        Ok(())
    }

    fn submit(&mut self, client: ClientId, specs: Vec<TaskSpec>, wanted: Vec<Key>) {
        if let Err(e) = self.validate(&specs, &wanted) {
            let reply = ToClient::GraphRefused {
                error: e.to_string(),
            };
            self.out.push(SchedulerAction::SendToClient(client, reply));
            return;
        }
        let mut added = Vec::with_capacity(specs.len());
        self.tasks.reserve(specs.len());
        for spec in specs {
            if self.tasks.contains_key(&spec.key) {
                continue;
            }
            self.next_seq += 1;
            // Dependencies share the names of their tasks' keys (submitted earlier, or
            // earlier in this submission: clients send tasks after their dependencies).
            let deps = (spec.deps.into_iter()).map(|d| self.canonical(d)).collect();
            let mut task = Task::released(
                spec.payload,
                deps,
                spec.priority,
                self.next_seq,
                spec.retries,
            );
            // An empty list would allow no worker at all: it means none.
            task.restrictions = (spec.restrictions).filter(|r| !r.is_empty()).map(Box::new);
            self.tasks.insert(spec.key.clone(), task);
            added.push(spec.key);
        }
        for k in &added {
            let deps = distinct(&self.tasks[k].deps);
            let mut missing = 0;
            for d in deps {
                if let Some(dt) = self.tasks.get_mut(&d) {
                    dt.dependents.insert(k.clone());
                    missing += u32::from(dt.status != TaskStatus::Memory);
                }
            }
            self.tasks.get_mut(k).expect("just added").missing_deps = missing;
        }
        let wanted: Vec<Key> = wanted.into_iter().map(|k| self.canonical(k)).collect();
        let mine = self.clients.entry(client).or_default();
        for k in &wanted {
            mine.insert(k.clone());
        }
        for k in &wanted {
            let Some(t) = self.tasks.get_mut(k) else {
                continue;
            };
            t.wanted_by.insert(client);
            match t.status {
                TaskStatus::Memory => {
                    let msg = self.in_memory_msg(k);
                    self.out.push(SchedulerAction::SendToClient(client, msg));
                }
                TaskStatus::Erred => {
                    let error = self.client_error(k);
                    let msg = ToClient::KeyErred {
                        key: k.clone(),
                        error,
                    };
                    self.out.push(SchedulerAction::SendToClient(client, msg));
                }
                _ => {}
            }
        }
        self.activate(wanted);
        // New tasks nobody wants (not reachable from any wanted key) are forgotten at once.
        self.settle(added);
    }

    fn in_memory_msg(&self, key: &Key) -> ToClient {
        ToClient::KeyInMemory {
            key: key.clone(),
            workers: self.peers_holding(key),
            nbytes: self.tasks.get(key).map_or(0, |t| t.nbytes),
        }
    }

    fn client_error(&self, key: &Key) -> TaskFailure {
        match self.tasks.get(key).and_then(|t| t.failure.as_ref()) {
            // Like the local schedulers: a dependent's error is the failure that stopped it,
            // which names the task that failed.
            Some(f) => f.clone(),
            None => TaskFailure::error(key.clone(), "erred"),
        }
    }

    fn release_keys(&mut self, client: ClientId, keys: Vec<Key>) {
        let mut work = Vec::new();
        for k in keys {
            let k = self.canonical(k);
            if let Some(set) = self.clients.get_mut(&client) {
                set.remove(&k);
            }
            if let Some(t) = self.tasks.get_mut(&k)
                && t.wanted_by.remove(&client)
            {
                work.push(k);
            }
        }
        self.settle(work);
    }

    /// Will some client or some dependent that is still to run read this task's value?
    fn is_needed(&self, key: &Key) -> bool {
        let Some(t) = self.tasks.get(key) else {
            return false;
        };
        !t.wanted_by.is_empty() || t.published > 0 || t.active_dependents > 0 || t.fire_and_forget
    }

    /// The one place a task's status changes, so its dependencies' `active_dependents`
    /// counts stay exact.
    fn set_status(&mut self, key: &Key, status: TaskStatus) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        let (was, now) = (is_active(t.status), is_active(status));
        let (was_held, now_held) = (t.status == TaskStatus::Memory, status == TaskStatus::Memory);
        t.status = status;
        if was_held != now_held {
            let dependents = std::mem::take(&mut t.dependents);
            for d in &dependents {
                if let Some(dt) = self.tasks.get_mut(d) {
                    if now_held {
                        dt.missing_deps = dt.missing_deps.saturating_sub(1);
                    } else {
                        dt.missing_deps += 1;
                    }
                }
            }
            self.tasks.get_mut(key).expect("checked above").dependents = dependents;
        }
        if was == now {
            return;
        }
        let t = self.tasks.get_mut(key).expect("checked above");
        let deps = std::mem::take(&mut t.deps);
        for d in &deps {
            if let Some(dt) = self.tasks.get_mut(d) {
                if now {
                    dt.active_dependents += 1;
                } else {
                    dt.active_dependents = dt.active_dependents.saturating_sub(1);
                }
            }
        }
        self.tasks.get_mut(key).expect("checked above").deps = deps;
    }

    /// Recount what the scheduler keeps incrementally and compare; for tests and the
    /// simulator. `Err` names the first inconsistency.
    pub fn check_consistency(&self) -> std::result::Result<(), String> {
        let mut active: FxHashMap<&Key, u32> = FxHashMap::default();
        for (k, t) in &self.tasks {
            for d in &t.deps {
                if !self.tasks.contains_key(d) {
                    return Err(format!("{k} depends on forgotten {d}"));
                }
                if !self.tasks[d].dependents.contains(k) {
                    return Err(format!("{d} does not list its dependent {k}"));
                }
                if is_active(t.status) {
                    *active.entry(d).or_default() += 1;
                }
            }
            if (t.status == TaskStatus::Processing) != t.processing_on.is_some() {
                return Err(format!("{k} is {:?} on {:?}", t.status, t.processing_on));
            }
        }
        for (k, t) in &self.tasks {
            let missing = (distinct(&t.deps).iter())
                .filter(|d| self.tasks[*d].status != TaskStatus::Memory)
                .count() as u32;
            if t.missing_deps != missing {
                return Err(format!(
                    "{k} misses {missing} dependencies but counts {}",
                    t.missing_deps
                ));
            }
            let counted = active.get(k).copied().unwrap_or(0);
            if t.active_dependents != counted {
                return Err(format!(
                    "{k} has {counted} active dependents but counts {}",
                    t.active_dependents
                ));
            }
        }
        self.coordination.check()?;
        let mut published: FxHashMap<&Key, u32> = FxHashMap::default();
        for k in self.coordination.held_keys() {
            if !self.tasks.contains_key(k) {
                return Err(format!("a coordination item holds forgotten {k}"));
            }
            *published.entry(k).or_default() += 1;
        }
        for (name, (keys, _)) in &self.datasets {
            for k in keys {
                if !self.tasks.contains_key(k) {
                    return Err(format!("dataset {name:?} lists forgotten {k}"));
                }
                *published.entry(k).or_default() += 1;
            }
        }
        for (k, t) in &self.tasks {
            if t.fire_and_forget && matches!(t.status, TaskStatus::Memory | TaskStatus::Erred) {
                return Err(format!(
                    "{k} is done ({:?}) but still fired and forgotten",
                    t.status
                ));
            }
            let counted = published.get(k).copied().unwrap_or(0);
            if t.published != counted {
                return Err(format!(
                    "{k} is in {counted} datasets but counts {}",
                    t.published
                ));
            }
        }
        self.queue.check(|w| self.workers.contains_key(w))?;
        for ((prio, seq), k) in &self.no_worker {
            match self.tasks.get(k) {
                Some(t)
                    if t.status == TaskStatus::Queued
                        && (t.priority, t.seq) == (*prio, *seq)
                        && t.missing_deps == 0
                        && (t.restrictions.as_ref())
                            .is_some_and(|r| !r.loose || !r.resources.is_empty()) => {}
                Some(t) => {
                    return Err(format!(
                        "{k} waits for a worker as {:?}, missing {} inputs, restricted {:?}",
                        t.status, t.missing_deps, t.restrictions
                    ));
                }
                None => return Err(format!("forgotten {k} waits for a worker")),
            }
        }
        for (id, w) in &self.workers {
            if let Some(k) = w.long_running.iter().find(|k| !w.processing.contains(*k)) {
                return Err(format!(
                    "{k} is long-running on {id} but not processing there"
                ));
            }
        }
        let mut acquisitions: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for by_worker in self.acquiring.values() {
            for to in by_worker.keys() {
                *acquisitions.entry(*to).or_default() += 1;
            }
        }
        for (id, w) in &self.workers {
            let counted = acquisitions.get(id).copied().unwrap_or(0);
            if w.acquisitions != counted {
                return Err(format!(
                    "{id} acquires {counted} keys but {} are counted",
                    w.acquisitions
                ));
            }
        }
        let retiring = self.workers.values().filter(|w| w.retiring).count();
        if retiring != self.retiring {
            return Err(format!(
                "{retiring} workers retire but {} are counted",
                self.retiring
            ));
        }
        self.check_holders()?;
        self.check_purposes()
    }

    /// Each task's holders and each worker's values agree.
    fn check_holders(&self) -> std::result::Result<(), String> {
        for (k, t) in &self.tasks {
            for w in &t.who_has {
                match self.workers.get(w) {
                    Some(info) if info.has_what.contains(k) => {}
                    Some(_) => return Err(format!("{k} is held by {w}, which does not list it")),
                    None => return Err(format!("{k} is held by {w}, which is gone")),
                }
            }
        }
        for (id, w) in &self.workers {
            for k in &w.has_what {
                if !self.tasks.get(k).is_some_and(|t| t.who_has.contains(id)) {
                    return Err(format!(
                        "{id} lists {k}, which does not name it as a holder"
                    ));
                }
            }
        }
        Ok(())
    }

    /// What each acquisition in flight serves matches the counts kept for it: hand-offs
    /// per retiring worker, moves left per replicate and rebalance request.
    fn check_purposes(&self) -> std::result::Result<(), String> {
        let mut handoffs: BTreeMap<WorkerId, usize> = BTreeMap::new();
        let mut replicas: BTreeMap<(ClientId, u64), usize> = BTreeMap::new();
        let mut moves: BTreeMap<(ClientId, u64), usize> = BTreeMap::new();
        for purposes in self.acquiring.values().flat_map(|m| m.values()) {
            for p in purposes {
                match *p {
                    Purpose::Handoff(from) => *handoffs.entry(from).or_default() += 1,
                    Purpose::Replica(c, r) => *replicas.entry((c, r)).or_default() += 1,
                    Purpose::Rebalance(c, r, _) => *moves.entry((c, r)).or_default() += 1,
                }
            }
        }
        for (id, w) in &self.workers {
            let counted = handoffs.get(id).copied().unwrap_or(0);
            if w.handoffs != counted {
                return Err(format!(
                    "{id} hands off {counted} keys but {} are counted",
                    w.handoffs
                ));
            }
        }
        for (request, (_, left)) in &self.replications {
            let counted = replicas.get(request).copied().unwrap_or(0);
            if *left != counted {
                return Err(format!(
                    "replicate request {request:?} waits for {counted} copies but counts {left}"
                ));
            }
        }
        for (request, r) in &self.rebalances {
            let counted = moves.get(request).copied().unwrap_or(0);
            if r.left != counted {
                return Err(format!(
                    "rebalance request {request:?} waits for {counted} moves but counts {}",
                    r.left
                ));
            }
        }
        Ok(())
    }

    /// Release what is no longer needed and forget what is no longer known to matter,
    /// starting from `work` and following dependencies (iteratively, never recursively).
    fn settle(&mut self, mut work: Vec<Key>) {
        while let Some(k) = work.pop() {
            let needed = self.is_needed(&k);
            let Some(t) = self.tasks.get_mut(&k) else {
                continue;
            };
            match t.status {
                TaskStatus::Waiting | TaskStatus::Queued if !needed => {
                    self.queue.remove(&(t.priority, t.seq));
                    self.no_worker.remove(&(t.priority, t.seq));
                    work.extend(t.deps.iter().cloned());
                    self.set_status(&k, TaskStatus::Released);
                }
                TaskStatus::Memory if !needed => {
                    let holders = std::mem::take(&mut t.who_has);
                    self.set_status(&k, TaskStatus::Released);
                    for w in holders {
                        if let Some(info) = self.workers.get_mut(&w) {
                            info.has_what.remove(&k);
                        }
                        self.free_on(w, k.clone());
                    }
                }
                // A value still on its way nobody needs any more: if it arrives, the worker
                // is told to drop it (`task_finished` for a task not processing there).
                TaskStatus::Processing if !needed && t.scattered => {
                    self.unassign(&k);
                    self.set_status(&k, TaskStatus::Released);
                }
                // A processing task nobody needs is released when it finishes.
                _ => {}
            }
            let t = &self.tasks[&k];
            let forgettable = matches!(t.status, TaskStatus::Released | TaskStatus::Erred);
            if forgettable
                && t.wanted_by.is_empty()
                && t.published == 0
                && !t.fire_and_forget
                && t.dependents.is_empty()
            {
                let t = self.tasks.remove(&k).expect("checked above");
                for d in t.deps {
                    if let Some(dt) = self.tasks.get_mut(&d) {
                        dt.dependents.remove(&k);
                        work.push(d);
                    }
                }
            }
        }
    }

    /// Tell `worker` to forget `key`, merging with a FreeKeys just sent to it.
    fn free_on(&mut self, worker: WorkerId, key: Key) {
        if let Some(SchedulerAction::SendToWorker(w, ToWorker::FreeKeys { keys })) =
            self.out.last_mut()
            && *w == worker
        {
            keys.push(key);
            return;
        }
        let msg = ToWorker::FreeKeys { keys: vec![key] };
        self.out.push(SchedulerAction::SendToWorker(worker, msg));
    }

    /// Move released tasks in `keys` (and, transitively, their released dependencies) to
    /// waiting; then start, queue or err every waiting task examined.
    fn activate(&mut self, keys: Vec<Key>) {
        let mut stack = keys;
        let mut seen = FxHashSet::default();
        let mut examined = Vec::new();
        while let Some(k) = stack.pop() {
            let Some(t) = self.tasks.get(&k) else {
                continue;
            };
            match t.status {
                TaskStatus::Released => self.set_status(&k, TaskStatus::Waiting),
                TaskStatus::Waiting => {}
                _ => continue,
            }
            if !seen.insert(k.clone()) {
                continue;
            }
            let t = &self.tasks[&k];
            for d in &t.deps {
                if (self.tasks.get(d)).is_some_and(|dt| dt.status == TaskStatus::Released) {
                    stack.push(d.clone());
                }
            }
            examined.push(k);
        }
        // Dependencies were discovered after their dependents: start them first.
        for k in examined.into_iter().rev() {
            let Some(t) = self.tasks.get(&k) else {
                continue;
            };
            if t.status != TaskStatus::Waiting {
                continue;
            }
            if t.missing_deps == 0 {
                self.make_ready(k);
                continue;
            }
            let mut all_in_memory = true;
            let mut failed = None;
            for d in &t.deps {
                match self.tasks.get(d) {
                    Some(dt) if dt.status == TaskStatus::Memory => {}
                    Some(dt) if dt.status == TaskStatus::Erred => {
                        failed = dt.failure.clone();
                        break;
                    }
                    Some(_) => all_in_memory = false,
                    None => {
                        failed = Some(TaskFailure::error(
                            k.clone(),
                            format!("its dependency {d} was forgotten"),
                        ));
                        break;
                    }
                }
            }
            if let Some(f) = failed {
                self.err(k, f);
            } else if all_in_memory {
                self.make_ready(k);
            }
        }
    }

    fn make_ready(&mut self, key: Key) {
        let Some(t) = self.tasks.get(&key) else {
            return;
        };
        if t.scattered {
            // Only its pusher had the value: there is nothing to run.
            let failure = Self::scatter_lost(
                &key,
                "is no longer on the cluster (lost with its workers, or released)",
            );
            self.err(key, failure);
            return;
        }
        let allowed = (t.restrictions.as_deref()).map(|r| {
            let mut fit = self.open_workers();
            fit.retain(|id| {
                r.resources.is_empty() || self.workers[id].resources.covers(&r.resources)
            });
            let mut listed = fit.clone();
            listed.retain(|id| r.workers.is_empty() || r.lists(&self.workers[id].address));
            (listed, fit, r.loose, r.resources.is_empty())
        });
        let candidates = match allowed {
            // Restricted: placed at once among the workers allowed (never queued as a
            // root: the queue's runs are for any worker).
            Some((listed, ..)) if !listed.is_empty() => listed,
            // Loose, none of its list connected: any worker with the resources asked.
            Some((_, fit, true, false)) if !fit.is_empty() => fit,
            Some((_, _, false, _) | (_, _, true, false)) => {
                let r = t.restrictions.as_deref().expect("restricted");
                let what = match (r.workers.is_empty(), r.resources.is_empty()) {
                    (false, true) => format!("a worker among {:?}", r.workers),
                    (true, _) => format!("a worker offering {}", r.resources),
                    (false, false) if r.loose => format!("a worker offering {}", r.resources),
                    (false, false) => {
                        format!("a worker among {:?} offering {}", r.workers, r.resources)
                    }
                };
                // Once per kind of worker while tasks wait (a restricted graph is many).
                let warn = (!self.no_worker_warned.contains(&what))
                    .then(|| format!("{key} waits for {what}: none is connected"));
                if warn.is_some() {
                    self.no_worker_warned.insert(what);
                }
                self.no_worker.insert((t.priority, t.seq), key.clone());
                self.set_status(&key, TaskStatus::Queued);
                if let Some(text) = warn {
                    self.log(LogLevel::Warn, text);
                }
                return;
            }
            // Unrestricted, or loosely restricted to workers not connected.
            _ if t.deps.is_empty() => Vec::new(), // roots wait in the queue for a slot
            _ => self.open_workers(),
        };
        if candidates.is_empty() {
            self.queue.insert((t.priority, t.seq), key.clone());
            self.set_status(&key, TaskStatus::Queued);
            return;
        }
        if let Some(w) = self.choose_worker(&key, &candidates) {
            self.assign(key, w);
        }
    }

    /// Make ready tasks that became ready together (the dependents of one result). When
    /// there are many and moving their inputs costs about the same on every worker (they
    /// all read the same small values), they go to workers in contiguous runs of priority
    /// order, a share per thread, rather than alternating one by one: neighbours in
    /// priority order usually feed the same consumer (a tree reduction's group), which then
    /// finds most of its inputs where it runs. Like Dask's co-assignment of root-ish tasks.
    fn make_ready_burst(&mut self, keys: Vec<Key>) {
        let candidates = self.open_workers();
        let threads: u64 = (candidates.iter())
            .map(|id| u64::from(self.workers[id].nthreads))
            .sum();
        if candidates.len() < 2 || (keys.len() as u64) < 2 * threads {
            for k in keys {
                self.make_ready(k);
            }
            return;
        }
        let mut together = Vec::new();
        for k in keys {
            let Some(t) = self.tasks.get(&k) else {
                continue;
            };
            // Bytes only: tasks reading the same inputs fetch them once per worker.
            let inputs = self.missing_inputs(&k);
            let costs = candidates.iter().map(|w| inputs.on(*w).0);
            let (lo, hi) = costs.fold((u64::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
            if t.deps.is_empty() || t.restrictions.is_some() || hi - lo > COASSIGN_MAX_COST_SPREAD {
                self.make_ready(k);
            } else {
                together.push((t.priority, t.seq, k));
            }
        }
        together.sort_unstable();
        // The least loaded workers (per thread) take the first runs.
        let mut order: Vec<(u64, WorkerId, u64)> = (self.workers.iter())
            .filter(|(_, w)| !w.retiring)
            .map(|(id, w)| {
                (
                    w.occupancy / u64::from(w.nthreads),
                    *id,
                    u64::from(w.nthreads),
                )
            })
            .collect();
        order.sort_unstable();
        let n = together.len() as u64;
        let mut tasks = together.into_iter();
        let mut given = 0u64;
        let mut threads_done = 0u64;
        for (_, worker, nthreads) in order {
            threads_done += nthreads;
            let upto = (n * threads_done).div_ceil(threads);
            for (_, _, k) in tasks.by_ref().take((upto - given) as usize) {
                self.assign(k, worker);
            }
            given = upto;
        }
    }

    fn estimate(&self, key: &Key) -> u64 {
        match self.durations.get(key.group()) {
            Some((avg, _, n)) if *n > 0 => *avg,
            _ => self.config.default_task_duration.as_micros() as u64,
        }
    }

    /// Microseconds to move `key`'s dependencies that `worker` does not hold: their bytes
    /// at the configured bandwidth, a per-key overhead, and the transfer latency once.
    fn transfer_cost(&self, key: &Key, worker: WorkerId) -> u64 {
        self.fetch_cost(self.missing_inputs(key).on(worker))
    }

    /// [`Self::transfer_cost`] of inputs whose bytes take `micros` and that are `keys` many.
    fn fetch_cost(&self, (micros, keys): (u64, u64)) -> u64 {
        match keys {
            0 => 0,
            _ => micros
                .saturating_add(keys.saturating_mul(TRANSFER_MICROS_PER_KEY))
                .saturating_add(self.config.transfer_latency.as_micros() as u64),
        }
    }

    /// What of `key`'s dependencies each worker lacks, from one walk over them (not one
    /// per worker: a sum of 100 inputs placed on 64 workers would read them 6,400 times).
    fn missing_inputs(&self, key: &Key) -> MissingInputs {
        let mut all = (0u128, 0u64);
        let mut held: BTreeMap<WorkerId, (u128, u64)> = BTreeMap::new();
        let deps = self
            .tasks
            .get(key)
            .map(|t| t.deps.as_slice())
            .unwrap_or(&[]);
        for dt in deps.iter().filter_map(|d| self.tasks.get(d)) {
            all = (all.0 + u128::from(dt.nbytes), all.1 + 1);
            for w in &dt.who_has {
                let h = held.entry(*w).or_default();
                *h = (h.0 + u128::from(dt.nbytes), h.1 + 1);
            }
        }
        let bandwidth = u128::from(self.config.bandwidth.max(1));
        let micros = |bytes: u128| u64::try_from(bytes * 1_000_000 / bandwidth).unwrap_or(u64::MAX);
        MissingInputs {
            none_held: (micros(all.0), all.1),
            holders: (held.into_iter())
                .map(|(w, (bytes, keys))| (w, (micros(all.0 - bytes), all.1 - keys)))
                .collect(),
        }
    }

    /// The candidate where the task would finish first: data to move plus queued work per
    /// thread. Ties go to the lowest worker id.
    fn choose_worker(&self, key: &Key, candidates: &[WorkerId]) -> Option<WorkerId> {
        let est = self.estimate(key);
        let inputs = self.missing_inputs(key);
        (candidates.iter())
            .filter_map(|id| {
                let w = self.workers.get(id)?;
                let queued = (self.expected_occupancy(*id, w) + est) / u64::from(w.nthreads);
                Some((self.fetch_cost(inputs.on(*id)).saturating_add(queued), *id))
            })
            .min()
            .map(|(_, id)| id)
    }

    /// `w`'s occupancy with the steals in flight counted where they are going: two tasks
    /// ready together, one of them being stolen by an idle worker, otherwise each went to
    /// the worker the other was leaving, and both were stolen back (a round trip each).
    fn expected_occupancy(&self, id: WorkerId, w: &WorkerInfo) -> u64 {
        (self.steals.iter()).fold(w.occupancy, |occ, (key, &(victim, thief))| {
            if thief == id {
                occ.saturating_add(self.estimate(key))
            } else if victim == id {
                occ.saturating_sub(self.estimate(key))
            } else {
                occ
            }
        })
    }

    /// Root slots per thread that `key`'s group has earned: for quick groups with small
    /// outputs, enough to cover `root_queue_target` in time while what they produce ahead
    /// stays under [`ROOT_QUEUE_BYTES`]; 0 for a group not seen finishing.
    fn quick_slots_per_thread(&self, key: &Key) -> usize {
        let Some(&(est, size, _)) = self.durations.get(key.group()) else {
            return 0;
        };
        let by_time = self.config.root_queue_target.as_micros() as u64 / est.max(1);
        let by_bytes = ROOT_QUEUE_BYTES / size.max(1);
        by_time.min(by_bytes).min(MAX_ROOT_SLOTS as u64) as usize
    }

    /// Root tasks `w` may have in flight: `ceil(nthreads * worker_saturation)`, or more
    /// for a quick group (`per_thread`, from [`Self::quick_slots_per_thread`]).
    fn slots(&self, w: &WorkerInfo, per_thread: usize) -> usize {
        let s = (f64::from(w.nthreads) * self.config.worker_saturation).ceil();
        if !(s.is_finite() && s >= 1.0) {
            return usize::MAX;
        }
        (s as usize).max(per_thread.saturating_mul(w.nthreads as usize))
    }

    fn assign(&mut self, key: Key, worker: WorkerId) {
        let est = self.estimate(&key);
        let deps = {
            let t = &self.tasks[&key];
            (t.deps.iter())
                .map(|d| DepLocation {
                    key: d.clone(),
                    who_has: self.peers_holding(d),
                    nbytes: self.tasks.get(d).map_or(0, |dt| dt.nbytes),
                })
                .collect()
        };
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.processing.insert(key.clone());
        w.occupancy += est;
        self.set_status(&key, TaskStatus::Processing);
        let t = self.tasks.get_mut(&key).expect("assigning a known task");
        t.processing_on = Some(worker);
        t.started = false;
        t.occupancy = est;
        let resources =
            (t.restrictions.as_ref()).map_or_else(Resources::default, |r| r.resources.clone());
        let msg = ToWorker::ComputeTask {
            key,
            payload: t.payload.clone(),
            priority: t.priority,
            deps,
            resources,
        };
        self.out.push(SchedulerAction::SendToWorker(worker, msg));
    }

    /// Take a processing task off its worker (the task's status is the caller's business).
    fn unassign(&mut self, key: &Key) -> Option<WorkerId> {
        self.steals.remove(key);
        let t = self.tasks.get_mut(key)?;
        let w = t.processing_on.take()?;
        if let Some(info) = self.workers.get_mut(&w) {
            info.processing.remove(key);
            info.long_running.remove(key);
            info.occupancy = info.occupancy.saturating_sub(t.occupancy);
        }
        t.occupancy = 0;
        Some(w)
    }

    /// Send queued root tasks to workers with a free slot. Each worker takes from a run of
    /// the queue of its own, lowest priority value first; a worker whose run is empty takes
    /// over a run nobody has, or else the later half of the longest run. Neighbours in
    /// priority order usually feed the same consumer (a reduction's group), so workers
    /// taking turns at the front of the queue would split every group between them, and
    /// each consumer would fetch most of its inputs; in runs, a group's inputs are made
    /// where it will run. (Dask's co-assignment of root tasks, kept with queuing.) Idle
    /// threads are served first, on every worker, before any worker gets the extra slots
    /// that keep it busy between round trips.
    fn fill_slots(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let ids = self.open_workers();
        for idle_threads_only in [true, false] {
            for &id in &ids {
                loop {
                    let w = &self.workers[&id];
                    let most = match idle_threads_only {
                        true => w.nthreads as usize,
                        false => self.slots(w, MAX_ROOT_SLOTS),
                    };
                    if w.metrics.paused || w.busy() >= most {
                        break;
                    }
                    // Found full before and nothing finished since: asking again after
                    // every event, on every worker, was most of the scheduler's time with
                    // dozens of workers.
                    let full_at = w.full_of_roots_at;
                    if !idle_threads_only && full_at > 0 {
                        if w.busy() >= full_at {
                            break;
                        }
                        // Something finished: the limit is looked at afresh.
                        self.workers.get_mut(&id).expect("listed").full_of_roots_at = 0;
                    }
                    let Some((pos, key)) = self.queue.next_for(id) else {
                        return; // the queue is empty
                    };
                    let w = &self.workers[&id];
                    let limit = self.slots(w, self.quick_slots_per_thread(&key)).min(most);
                    if w.busy() >= limit {
                        if !idle_threads_only {
                            self.workers.get_mut(&id).expect("listed").full_of_roots_at = limit;
                        }
                        break;
                    }
                    self.queue.remove(&pos);
                    self.assign(key, id);
                }
            }
        }
    }

    /// Ask saturated workers to hand not-yet-started tasks to idle ones.
    fn balance(&mut self) {
        let mut incoming: BTreeMap<WorkerId, usize> = BTreeMap::new();
        let mut outgoing: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for (victim, thief) in self.steals.values() {
            *outgoing.entry(*victim).or_default() += 1;
            *incoming.entry(*thief).or_default() += 1;
        }
        let thieves: Vec<WorkerId> = (self.workers.iter())
            .filter(|(id, w)| {
                !w.metrics.paused
                    && !w.retiring
                    && w.busy() + incoming.get(id).copied().unwrap_or(0) < w.nthreads as usize
            })
            .map(|(id, _)| *id)
            .collect();
        let mut exhausted = BTreeSet::new();
        for thief in thieves {
            loop {
                let t_info = &self.workers[&thief];
                let load = t_info.busy() + incoming.get(&thief).copied().unwrap_or(0);
                if load >= t_info.nthreads as usize {
                    break;
                }
                // The victim with the most unstarted-looking work beyond its threads.
                // (A retiring worker has been asked for all of its tasks already.)
                let victim = (self.workers.iter())
                    .filter(|(id, w)| **id != thief && !w.retiring && !exhausted.contains(*id))
                    .filter_map(|(id, w)| {
                        let out = outgoing.get(id).copied().unwrap_or(0);
                        let excess = w.busy().saturating_sub(out + w.nthreads as usize);
                        (excess > 0).then_some((std::cmp::Reverse(excess), *id))
                    })
                    .min()
                    .map(|(_, id)| id);
                let Some(victim) = victim else { break };
                // The task the victim would run last, if moving its inputs is cheap.
                let thief_info = &self.workers[&thief];
                let may_move = |t: &Task| {
                    !t.started
                        && (t.restrictions.as_deref()).is_none_or(|r| {
                            r.allows(&thief_info.address, &thief_info.resources, true)
                        })
                };
                let candidate = (self.workers[&victim].processing.iter())
                    .filter(|k| !self.steals.contains_key(*k))
                    .filter(|k| self.tasks.get(*k).is_some_and(may_move))
                    .filter(|k| self.transfer_cost(k, thief) <= self.estimate(k))
                    .filter_map(|k| self.tasks.get(k).map(|t| (t.priority, t.seq, k)))
                    .max()
                    .map(|(_, _, k)| k.clone());
                let Some(key) = candidate else {
                    exhausted.insert(victim);
                    continue;
                };
                *incoming.entry(thief).or_default() += 1;
                *outgoing.entry(victim).or_default() += 1;
                self.request_steal(key, victim, thief, "");
            }
        }
    }

    /// Ask `victim` to hand `key` (not started there) to `thief`; `why` is for the log.
    fn request_steal(&mut self, key: Key, victim: WorkerId, thief: WorkerId, why: &str) {
        self.steals.insert(key.clone(), (victim, thief));
        self.stats.steal_requests += 1;
        self.log(
            LogLevel::Debug,
            format!("asking {victim} to hand {key}{why} to {thief}"),
        );
        let msg = ToWorker::StealRequest { key };
        self.out.push(SchedulerAction::SendToWorker(victim, msg));
    }

    /// Tasks asking for resources wait on their worker while its offer is held, however
    /// many of its threads are idle, so [`SchedulerState::balance`] (which counts
    /// threads) never moves them: ask such a worker to hand the tasks that would wait to
    /// a worker with an idle thread and enough of the resource free. Looks only when a
    /// worker offering resources has an idle thread.
    fn balance_resources(&mut self) {
        let idle = |w: &WorkerInfo| {
            !w.resources.is_empty()
                && !w.metrics.paused
                && !w.retiring
                && w.busy() < w.nthreads as usize
        };
        if !self.workers.values().any(idle) {
            return;
        }
        // What each worker's processing tasks ask for, counted against its offer: the
        // free amounts of possible thieves (steals in flight counted where they go).
        let asks = |s: &Self, k: &Key| -> Option<Resources> {
            let r = s.tasks.get(k)?.restrictions.as_ref()?;
            (!r.resources.is_empty()).then(|| r.resources.clone())
        };
        let mut free: BTreeMap<WorkerId, Resources> = BTreeMap::new();
        for (id, w) in &self.workers {
            if !idle(w) {
                continue;
            }
            let mut left = w.resources.clone();
            for k in w
                .processing
                .iter()
                .filter(|k| self.steals.get(*k).is_none_or(|(v, _)| v != id))
            {
                if let Some(need) = asks(self, k) {
                    left.take(&need);
                }
            }
            for (k, (_, thief)) in &self.steals {
                if thief == id
                    && let Some(need) = asks(self, k)
                {
                    left.take(&need);
                }
            }
            free.insert(*id, left);
        }
        let mut incoming: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for (_, thief) in self.steals.values() {
            *incoming.entry(*thief).or_default() += 1;
        }
        let victims: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, w)| !w.resources.is_empty() && !w.retiring)
            .map(|(id, _)| *id)
            .collect();
        for victim in victims {
            // The worker runs them in priority order while its offer covers them: the
            // rest would wait.
            let w = &self.workers[&victim];
            let mut mine: Vec<(i64, u64, Key, Resources)> = (w.processing.iter())
                .filter(|k| !self.steals.contains_key(*k))
                .filter_map(|k| {
                    let t = self.tasks.get(k)?;
                    Some((t.priority, t.seq, k.clone(), asks(self, k)?))
                })
                .collect();
            if mine.len() < 2 {
                continue;
            }
            mine.sort_by_key(|a| (a.0, a.1));
            let mut left = w.resources.clone();
            let mut waiting = Vec::new();
            for (p, q, k, need) in mine {
                match left.nearly_covers(&need) {
                    true => left.take(&need),
                    false => waiting.push((p, q, k, need)),
                }
            }
            // The last to run first, each to the first worker that can take it now.
            for (_, _, key, need) in waiting.into_iter().rev() {
                let t = &self.tasks[&key];
                if t.started {
                    continue;
                }
                let restrictions = t.restrictions.as_deref();
                let thief = (free.iter())
                    .filter(|(id, _)| **id != victim)
                    .filter(|(id, left)| {
                        let w = &self.workers[*id];
                        let load = w.busy() + incoming.get(*id).copied().unwrap_or(0);
                        load < w.nthreads as usize
                            && left.nearly_covers(&need)
                            && restrictions.is_none_or(|r| r.allows(&w.address, &w.resources, true))
                    })
                    .map(|(id, _)| *id)
                    .find(|id| self.transfer_cost(&key, *id) <= self.estimate(&key));
                let Some(thief) = thief else {
                    continue;
                };
                free.get_mut(&thief).expect("listed").take(&need);
                *incoming.entry(thief).or_default() += 1;
                self.request_steal(key, victim, thief, " (waiting for resources)");
            }
        }
    }

    /// A task processing on `worker` gave its thread back: it has started (so is never
    /// stolen) and no longer counts as the worker's load or occupancy.
    fn seceded(&mut self, worker: WorkerId, key: Key) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if t.processing_on != Some(worker) {
            return;
        }
        t.started = true;
        let occupancy = std::mem::take(&mut t.occupancy);
        self.steals.remove(&key);
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.occupancy = w.occupancy.saturating_sub(occupancy);
        w.long_running.insert(key.clone());
        w.full_of_roots_at = 0;
        self.log(
            LogLevel::Debug,
            format!("{key} seceded on {worker}: not counted as its load"),
        );
    }

    fn steal_response(&mut self, worker: WorkerId, key: Key, stolen: bool) {
        let thief = self.steals.remove(&key).map(|(_, thief)| thief);
        let answer = if stolen { "handed over" } else { "kept" };
        self.log(LogLevel::Debug, format!("{worker} {answer} {key}"));
        if !stolen {
            if let Some(t) = self.tasks.get_mut(&key)
                && t.processing_on == Some(worker)
            {
                t.started = true;
            }
            return;
        }
        // The worker dropped the task: whatever we planned, it must run somewhere else.
        if self
            .tasks
            .get(&key)
            .is_none_or(|t| t.processing_on != Some(worker))
        {
            return;
        }
        self.unassign(&key);
        self.stats.steals += 1;
        match thief.filter(|t| self.workers.contains_key(t)) {
            Some(thief) => self.assign(key, thief),
            None => {
                self.set_status(&key, TaskStatus::Waiting);
                self.activate(vec![key]);
            }
        }
    }

    /// Remember a run of `key` on `worker` that took `micros` and ended now.
    fn record_run(&mut self, key: &Key, worker: WorkerId, micros: u64, nbytes: u64, erred: bool) {
        let stop = self.config.clock_origin_unix_micros + self.now.as_micros();
        if self.task_stream.len() >= TASK_STREAM_LENGTH {
            self.task_stream.pop_front();
        }
        self.task_stream.push_back(Run {
            seq: self.task_stream_next,
            key: key.clone(),
            worker,
            micros,
            stop,
            nbytes,
            erred,
        });
        self.task_stream_next += 1;
    }

    fn task_finished(&mut self, worker: WorkerId, key: Key, nbytes: u64, micros: u64) {
        let on_worker = self
            .tasks
            .get(&key)
            .is_some_and(|t| t.processing_on == Some(worker));
        if !on_worker {
            // Not (or no longer) this worker's task: nobody will track that copy.
            self.free_on(worker, key);
            return;
        }
        // A seceded task's time is mostly waiting on others: it teaches nothing about how
        // long its kind computes.
        let long_running =
            (self.workers.get(&worker)).is_some_and(|w| w.long_running.contains(&key));
        self.unassign(&key);
        // A scattered value arriving is not a task run: it teaches nothing about durations.
        if !self.tasks[&key].scattered {
            self.record_run(&key, worker, micros, nbytes, false);
            match self.durations.get_mut(key.group()) {
                _ if long_running => {}
                Some(d) => {
                    *d = (
                        moving_average(d.0, micros),
                        moving_average(d.1, nbytes),
                        d.2 + 1,
                    )
                }
                None => {
                    self.durations
                        .insert(key.group().to_string(), (micros, nbytes, 1));
                }
            }
            self.stats.tasks_finished += 1;
        }
        self.set_status(&key, TaskStatus::Memory);
        let t = self.tasks.get_mut(&key).expect("checked");
        t.nbytes = nbytes;
        t.who_has.insert(worker);
        // Fired and forgotten: done now (`settle` below releases it if nobody needs it).
        t.fire_and_forget = false;
        if std::mem::take(&mut t.lost) {
            self.stats.recomputed += 1;
        }
        let clients: Vec<ClientId> = t.wanted_by.iter().copied().collect();
        let dependents: Vec<Key> = t.dependents.iter().cloned().collect();
        let deps = t.deps.clone();
        if let Some(w) = self.workers.get_mut(&worker) {
            w.has_what.insert(key.clone());
        }
        if !clients.is_empty() {
            let msg = self.in_memory_msg(&key);
            for c in clients {
                self.out.push(SchedulerAction::SendToClient(c, msg.clone()));
            }
        }
        // Dependents whose last missing input this was are ready now, in priority order.
        let mut ready: Vec<(i64, u64, Key)> = (dependents.into_iter())
            .filter_map(|d| {
                let t = self.tasks.get(&d)?;
                (t.status == TaskStatus::Waiting && t.missing_deps == 0)
                    .then_some((t.priority, t.seq, d))
            })
            .collect();
        ready.sort_unstable();
        self.make_ready_burst(ready.into_iter().map(|(_, _, k)| k).collect());
        let mut work = deps;
        work.push(key.clone());
        self.settle(work);
        if self.workers.get(&worker).is_some_and(|w| w.retiring) {
            self.hand_off(worker, vec![key]);
        }
    }

    fn task_erred(&mut self, worker: WorkerId, key: Key, error: TaskFailure) {
        if self
            .tasks
            .get(&key)
            .is_none_or(|t| t.processing_on != Some(worker))
        {
            self.log(
                LogLevel::Warn,
                format!("{worker} reported {key} erred, but it is not running there"),
            );
            return;
        }
        self.unassign(&key);
        self.record_run(&key, worker, 0, 0, true);
        let t = self.tasks.get_mut(&key).expect("checked");
        if t.retries_left > 0 {
            t.retries_left -= 1;
            self.set_status(&key, TaskStatus::Waiting);
            self.log(
                LogLevel::Info,
                format!("task {key} failed on {worker}, retrying: {error}"),
            );
            self.activate(vec![key]);
        } else {
            self.log(LogLevel::Info, format!("{error}"));
            self.err(key, error);
        }
    }

    /// Err `key` and every dependent still to run, telling the clients that want them.
    fn err(&mut self, key: Key, failure: Failure) {
        let mut stack = vec![key];
        let mut settle = Vec::new();
        while let Some(k) = stack.pop() {
            let Some(t) = self.tasks.get(&k) else {
                continue;
            };
            if !matches!(
                t.status,
                TaskStatus::Released
                    | TaskStatus::Waiting
                    | TaskStatus::Queued
                    | TaskStatus::Processing
            ) {
                continue;
            }
            let (prio, seq) = (t.priority, t.seq);
            self.queue.remove(&(prio, seq));
            self.no_worker.remove(&(prio, seq));
            if let Some(w) = self.unassign(&k) {
                self.free_on(w, k.clone());
            }
            self.set_status(&k, TaskStatus::Erred);
            let t = self.tasks.get_mut(&k).expect("checked");
            t.failure = Some(failure.clone());
            t.fire_and_forget = false;
            let clients: Vec<ClientId> = t.wanted_by.iter().copied().collect();
            stack.extend(sorted(&t.dependents));
            settle.extend(t.deps.iter().cloned());
            settle.push(k.clone());
            let error = self.client_error(&k);
            for c in clients {
                let msg = ToClient::KeyErred {
                    key: k.clone(),
                    error: error.clone(),
                };
                self.out.push(SchedulerAction::SendToClient(c, msg));
            }
        }
        self.settle(settle);
    }

    fn missing_data(&mut self, reporter: WorkerId, key: Key, from: WorkerId) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if t.who_has.remove(&from)
            && let Some(w) = self.workers.get_mut(&from)
        {
            w.has_what.remove(&key);
        }
        let lost = t.status == TaskStatus::Memory && t.who_has.is_empty();
        // The reporter's tasks reading `key` start over with fresh locations.
        let dependents = sorted(&t.dependents);
        let mut retry = Vec::new();
        for d in dependents {
            if self
                .tasks
                .get(&d)
                .is_some_and(|dt| dt.processing_on == Some(reporter))
            {
                self.unassign(&d);
                self.free_on(reporter, d.clone());
                self.set_status(&d, TaskStatus::Waiting);
                retry.push(d);
            }
        }
        if lost {
            self.value_lost(key);
        }
        self.activate(retry);
    }

    /// `key`'s last copy is gone: reset its running dependents and recompute it if needed.
    fn value_lost(&mut self, key: Key) {
        self.stats.lost_values += 1;
        if !self.tasks.contains_key(&key) {
            return;
        }
        self.set_status(&key, TaskStatus::Released);
        let t = self.tasks.get_mut(&key).expect("checked above");
        t.lost = true;
        let dependents = sorted(&t.dependents);
        for d in dependents {
            let Some(dt) = self.tasks.get(&d) else {
                continue;
            };
            if let Some(w) = dt.processing_on {
                self.unassign(&d);
                self.free_on(w, d.clone());
                self.set_status(&d, TaskStatus::Waiting);
            } else if dt.status == TaskStatus::Queued {
                // Ready no longer: sent out later (a slot, or an allowed worker, freeing
                // up), it would wait for an input nobody holds.
                let pos = (dt.priority, dt.seq);
                self.queue.remove(&pos);
                self.no_worker.remove(&pos);
                self.set_status(&d, TaskStatus::Waiting);
            }
        }
        if self.is_needed(&key) {
            self.log(
                LogLevel::Info,
                format!("recomputing {key}: its only copy was lost"),
            );
            self.activate(vec![key]);
        } else {
            self.settle(vec![key]);
        }
    }

    /// Every client hears that worker `id` at `address` left (it stops asking it for values).
    fn tell_clients_left(&mut self, id: WorkerId, address: String) {
        let peer = Peer { id, address };
        for &c in self.clients.keys() {
            let msg = ToClient::WorkerLeft { peer: peer.clone() };
            self.out.push(SchedulerAction::SendToClient(c, msg));
        }
    }

    /// Forget worker `id`: it died (`retired` false: its running tasks count as suspicious)
    /// or retired (its values were handed off; what was not is no longer needed, or
    /// there was nowhere to put it).
    fn remove_worker(&mut self, id: WorkerId, reason: &str, retired: bool) {
        let Some(info) = self.workers.remove(&id) else {
            return;
        };
        if info.retiring {
            self.retiring -= 1;
        }
        self.queue.leave(id);
        if retired {
            self.stats.workers_retired += 1;
            self.log(LogLevel::Info, format!("{id} removed: {reason}"));
        } else {
            self.stats.workers_lost += 1;
            self.log(LogLevel::Warn, format!("{id} removed: {reason}"));
        }
        // First, so clients drop it from where they look for values before they hear of
        // any value recomputed elsewhere.
        self.tell_clients_left(id, info.address.clone());
        self.steals
            .retain(|_, (victim, thief)| *victim != id && *thief != id);
        // Copies it was acquiring will not come.
        let acquiring: Vec<Key> = (self.acquiring.iter())
            .filter(|(_, by_worker)| by_worker.contains_key(&id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in acquiring {
            self.acquired(&k, id);
        }
        let mut retry = Vec::new();
        for k in &sorted(&info.processing) {
            let Some(t) = self.tasks.get_mut(k) else {
                continue;
            };
            t.processing_on = None;
            t.occupancy = 0;
            if !retired {
                t.suspicious += 1;
            }
            if t.scattered {
                let how = format!("was being pushed to {id}, which was removed ({reason})");
                self.err(k.clone(), Self::scatter_lost(k, &how));
            } else if t.suspicious >= self.config.allowed_failures {
                let message = format!(
                    "it was running on {} workers that died (the last was {id}: {reason})",
                    t.suspicious
                );
                self.err(k.clone(), TaskFailure::error(k.clone(), message));
            } else {
                self.set_status(k, TaskStatus::Waiting);
                retry.push(k.clone());
            }
        }
        for k in sorted(&info.has_what) {
            let Some(t) = self.tasks.get_mut(&k) else {
                continue;
            };
            t.who_has.remove(&id);
            if t.who_has.is_empty() && t.status == TaskStatus::Memory {
                if retired && !self.is_needed(&k) {
                    self.settle(vec![k]);
                } else {
                    self.value_lost(k);
                }
            }
        }
        self.activate(retry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Item;
    use std::sync::Arc;

    fn spec(key: &Key, deps: &[&Key], priority: i64) -> TaskSpec {
        TaskSpec {
            key: key.clone(),
            deps: deps.iter().map(|k| (*k).clone()).collect(),
            payload: ByteBuf::new(),
            priority,
            retries: 0,
            restrictions: None,
        }
    }

    /// Worker `id` joining (no memory limit).
    fn joined_event(
        id: u32,
        nthreads: u32,
        address: &str,
        nanny: Option<&str>,
        resources: Resources,
    ) -> SchedulerEvent {
        SchedulerEvent::WorkerJoined {
            worker: WorkerId(id),
            nthreads,
            memory_limit: 0,
            address: address.into(),
            nanny: nanny.map(str::to_string),
            resources,
        }
    }

    fn join(s: &mut SchedulerState, id: u32, nthreads: u32) {
        let e = joined_event(id, nthreads, &format!("w{id}"), None, Resources::default());
        s.handle(e, Time::ZERO);
    }

    fn finish(s: &mut SchedulerState, w: u32, key: &Key, nbytes: u64) -> Vec<SchedulerAction> {
        finish_in(s, w, key, nbytes, 1000)
    }

    fn finish_in(
        s: &mut SchedulerState,
        w: u32,
        key: &Key,
        nbytes: u64,
        compute_micros: u64,
    ) -> Vec<SchedulerAction> {
        let msg = FromWorker::TaskFinished {
            key: key.clone(),
            nbytes,
            compute_micros,
        };
        s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(w),
                msg,
            },
            Time::ZERO,
        )
    }

    fn submit(
        s: &mut SchedulerState,
        c: u32,
        tasks: Vec<TaskSpec>,
        wanted: &[&Key],
    ) -> Vec<SchedulerAction> {
        let msg = FromClient::SubmitGraph {
            tasks,
            wanted: wanted.iter().map(|k| (*k).clone()).collect(),
        };
        s.handle(
            SchedulerEvent::FromClient {
                client: ClientId(c),
                msg,
            },
            Time::ZERO,
        )
    }

    fn computes(actions: &[SchedulerAction]) -> Vec<(u32, Key)> {
        (actions.iter())
            .filter_map(|a| match a {
                SchedulerAction::SendToWorker(w, ToWorker::ComputeTask { key, .. }) => {
                    Some((w.0, key.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn scatter(s: &mut SchedulerState, c: u32, keys: &[(&Key, u64)]) -> Vec<SchedulerAction> {
        scatter_on(s, c, keys, &[])
    }

    fn scatter_on(
        s: &mut SchedulerState,
        c: u32,
        keys: &[(&Key, u64)],
        workers: &[&str],
    ) -> Vec<SchedulerAction> {
        let msg = FromClient::Scatter {
            keys: keys.iter().map(|(k, n)| ((*k).clone(), *n)).collect(),
            workers: workers.iter().map(|w| w.to_string()).collect(),
        };
        s.handle(
            SchedulerEvent::FromClient {
                client: ClientId(c),
                msg,
            },
            Time::ZERO,
        )
    }

    fn to_client(actions: &[SchedulerAction]) -> Vec<ToClient> {
        (actions.iter())
            .filter_map(|a| match a {
                SchedulerAction::SendToClient(_, m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn scattered_values_fill_the_emptiest_workers_and_feed_tasks() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        // No worker yet: refused, nothing kept.
        let (a, b, c) = (Key::named("a"), Key::named("b"), Key::named("c"));
        let refused = to_client(&scatter(&mut s, 0, &[(&a, 10)]));
        assert!(
            matches!(&refused[..], [ToClient::ScatterRefused { key, error }] if *key == a && error.contains("no worker")),
            "{refused:?}"
        );
        assert_eq!(s.task_count(), 0);
        join(&mut s, 0, 1);
        join(&mut s, 1, 1);
        // One worker holds c's 500 bytes: the big value goes to the other, then the small
        // one to c's worker, which holds less counting the big one.
        let ran = computes(&submit(&mut s, 1, vec![spec(&c, &[], 0)], &[&c]));
        let holder = ran[0].0;
        let other = 1 - holder;
        finish(&mut s, holder, &c, 500);
        let actions = scatter(&mut s, 0, &[(&a, 1000), (&b, 10)]);
        assert!(computes(&actions).is_empty(), "nothing to run: {actions:?}");
        let placed: Vec<(Key, u32)> = match &to_client(&actions)[..] {
            [ToClient::ScatterTo { placements }] => placements
                .iter()
                .map(|(k, p)| (k.clone(), p.id.0))
                .collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(placed, [(a.clone(), other), (b.clone(), holder)]);
        assert_eq!(s.task_status(&a), TaskStatus::Processing);
        // A key already known is refused whole.
        let again = to_client(&scatter(&mut s, 0, &[(&Key::named("d"), 1), (&a, 1)]));
        assert!(
            matches!(&again[..], [ToClient::ScatterRefused { key, error }] if key.name() == "d" && error.contains("already known"))
        );
        assert_eq!(s.task_status(&Key::named("d")), TaskStatus::Forgotten);
        // Empty values all go to the emptiest worker, more than its one thread: an idle
        // worker joining steals none of them, as only that worker will receive them.
        let empties: Vec<Key> = (0..4).map(|i| Key::new("e", [i])).collect();
        let sized: Vec<(&Key, u64)> = empties.iter().map(|k| (k, 0)).collect();
        scatter(&mut s, 0, &sized);
        join(&mut s, 2, 4);
        assert!(s.steals.is_empty(), "{:?}", s.steals);
        s.check_consistency().unwrap();
        // The pushes arrive: in memory, the client told, dependents run on them.
        let told = to_client(&finish_in(&mut s, other, &a, 1000, 0));
        assert!(matches!(&told[..], [ToClient::KeyInMemory { key, .. }] if *key == a));
        finish_in(&mut s, holder, &b, 10, 0);
        assert_eq!(s.stats().tasks_finished, 1, "only c ran");
        let d = Key::named("d");
        let actions = submit(&mut s, 0, vec![spec(&d, &[&a, &b], 0)], &[&d]);
        let ran = computes(&actions);
        assert_eq!(ran.len(), 1, "d runs once its inputs are in memory");
        finish(&mut s, ran[0].0, &d, 8);
        // Released by its client: freed on its worker, kept as d's lineage while d is
        // known, forgotten with it.
        let release = |s: &mut SchedulerState, keys: Vec<Key>| {
            let msg = FromClient::ReleaseKeys { keys };
            s.handle(
                SchedulerEvent::FromClient {
                    client: ClientId(0),
                    msg,
                },
                Time::ZERO,
            )
        };
        let actions = release(&mut s, vec![a.clone(), b.clone()]);
        assert!(actions.iter().any(|x| matches!(x,
            SchedulerAction::SendToWorker(w, ToWorker::FreeKeys { keys }) if w.0 == other && keys.contains(&a))));
        assert_eq!(s.task_status(&a), TaskStatus::Released);
        release(&mut s, vec![d.clone()]);
        assert_eq!(s.task_status(&a), TaskStatus::Forgotten);
        s.check_consistency().unwrap();
    }

    /// Each worker asked to acquire keys, with those keys.
    fn acquisitions(actions: &[SchedulerAction]) -> Vec<(u32, Vec<Key>)> {
        (actions.iter())
            .filter_map(|a| match a {
                SchedulerAction::SendToWorker(w, ToWorker::AcquireReplicas { keys }) => {
                    Some((w.0, keys.iter().map(|d| d.key.clone()).collect()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rebalance_moves_the_largest_values_that_fit_and_keeps_running_inputs() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        for id in 0..3 {
            join(&mut s, id, 1);
        }
        // Four values on w0 (1,000 bytes), none elsewhere: the mean is 333.
        let v: Vec<Key> = (0..4).map(|i| Key::new("v", [i])).collect();
        let sizes = [400, 300, 200, 100];
        let sized: Vec<(&Key, u64)> = v.iter().zip(sizes).collect();
        scatter_on(&mut s, 0, &sized, &["w0"]);
        for (k, n) in v.iter().zip(sizes) {
            finish_in(&mut s, 0, k, n, 0);
        }
        // A task reading v3 runs on w0: v3 stays there.
        let t = Key::named("t");
        let ran = computes(&submit(&mut s, 0, vec![spec(&t, &[&v[3]], 0)], &[&t]));
        assert_eq!(ran, [(0, t.clone())]);
        let rebalance =
            |s: &mut SchedulerState, request, keys: Option<Vec<Key>>, workers: &[&str]| {
                let workers = workers.iter().map(|w| w.to_string()).collect();
                let msg = FromClient::Rebalance {
                    request,
                    keys,
                    workers,
                };
                client_says(s, 0, msg)
            };
        let actions = rebalance(&mut s, 7, None, &[]);
        assert!(
            to_client(&actions).is_empty(),
            "answered once the moves settle: {actions:?}"
        );
        let acquired = acquisitions(&actions);
        // 400 bytes would take an empty worker past the mean; 300 and 200 fit, one each.
        assert_eq!(acquired, [(1, vec![v[1].clone()]), (2, vec![v[2].clone()])]);
        s.check_consistency().unwrap();
        // w1 keeps its copy: w0 drops its own.
        let msg = FromWorker::AddKeys {
            keys: vec![(v[1].clone(), 300)],
        };
        let actions = s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(1),
                msg,
            },
            Time::ZERO,
        );
        assert!(actions.iter().any(|a| matches!(a,
            SchedulerAction::SendToWorker(WorkerId(0), ToWorker::FreeKeys { keys }) if keys == &[v[1].clone()])));
        assert_eq!(s.who_has(&v[1]), [WorkerId(1)]);
        assert!(to_client(&actions).is_empty());
        // w2 dies before its copy arrives: w0 keeps v2, and the answer lists the one move.
        let lost = SchedulerEvent::WorkerLost {
            worker: WorkerId(2),
            reason: "test".into(),
        };
        let told = to_client(&s.handle(lost, Time::ZERO));
        let answer = told
            .iter()
            .find(|m| matches!(m, ToClient::Rebalanced { .. }));
        match answer {
            Some(ToClient::Rebalanced {
                request: 7,
                holders,
                nbytes: 300,
                refused: None,
            }) => {
                assert_eq!(holders.len(), 1);
                assert_eq!(holders[0].0, v[1]);
                assert_eq!(
                    holders[0].1.iter().map(|p| p.id).collect::<Vec<_>>(),
                    [WorkerId(1)]
                );
            }
            other => panic!("{other:?} in {told:?}"),
        }
        assert_eq!(s.who_has(&v[2]), [WorkerId(0)]);
        assert_eq!(s.stats().lost_values, 0);
        s.check_consistency().unwrap();
        // Balanced enough among w0 and w1 for these keys (w0 700, w1 300, mean 500: v0's
        // 400 would take w1 past it), and an unknown address is refused, naming it.
        let told = to_client(&rebalance(&mut s, 8, Some(vec![v[0].clone()]), &[]));
        assert!(
            matches!(&told[..], [ToClient::Rebalanced { request: 8, holders, nbytes: 0, refused: None }] if holders.is_empty()),
            "{told:?}"
        );
        let told = to_client(&rebalance(&mut s, 9, None, &["w0", "nowhere"]));
        assert!(
            matches!(&told[..], [ToClient::Rebalanced { request: 9, refused: Some(why), .. }] if why.contains("nowhere")),
            "{told:?}"
        );
        // Once t is done, v3 may go too (w0 708 bytes with t's output, w1 300).
        finish(&mut s, 0, &t, 8);
        let actions = rebalance(&mut s, 10, Some(vec![v[3].clone()]), &["w0", "w1"]);
        let acquired = acquisitions(&actions);
        assert_eq!(acquired, [(1, vec![v[3].clone()])], "{actions:?}");
        s.check_consistency().unwrap();
    }

    #[test]
    fn rebalance_takes_hosts_as_well_as_addresses() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join_at(&mut s, 0, 1, "10.0.0.1:4000");
        join_at(&mut s, 1, 1, "10.0.0.1:4001");
        join_at(&mut s, 2, 1, "10.0.0.2:4000");
        let (a, b) = (Key::named("a"), Key::named("b"));
        scatter_on(&mut s, 0, &[(&a, 100), (&b, 100)], &["10.0.0.1:4000"]);
        finish_in(&mut s, 0, &a, 100, 0);
        finish_in(&mut s, 0, &b, 100, 0);
        let rebalance = |s: &mut SchedulerState, request, workers: &[&str]| {
            let workers = workers.iter().map(|w| w.to_string()).collect();
            let msg = FromClient::Rebalance {
                request,
                keys: None,
                workers,
            };
            client_says(s, 0, msg)
        };
        // The host 10.0.0.1 is its two workers: one value moves to the other one there,
        // none to 10.0.0.2.
        let actions = rebalance(&mut s, 1, &["tcp://10.0.0.1"]);
        let acquired = acquisitions(&actions);
        assert_eq!(acquired.len(), 1, "{actions:?}");
        assert_eq!(acquired[0].0, 1, "{actions:?}");
        s.check_consistency().unwrap();
        // A host no worker is on is refused, naming it.
        let told = to_client(&rebalance(&mut s, 2, &["10.0.0.9"]));
        assert!(
            matches!(&told[..], [ToClient::Rebalanced { request: 2, refused: Some(why), .. }] if why.contains("10.0.0.9")),
            "{told:?}"
        );
    }

    #[test]
    fn rebalance_moves_a_value_two_senders_hold_once() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        for id in 0..3 {
            join(&mut s, id, 1);
        }
        let (v, a, b) = (Key::named("v"), Key::named("a"), Key::named("b"));
        scatter_on(&mut s, 0, &[(&v, 10), (&a, 90)], &["w0"]);
        finish_in(&mut s, 0, &v, 10, 0);
        finish_in(&mut s, 0, &a, 90, 0);
        scatter_on(&mut s, 0, &[(&b, 90)], &["w1"]);
        finish_in(&mut s, 1, &b, 90, 0);
        // w1 holds a copy of v too: 100 bytes each on w0 and w1, none on w2.
        let msg = FromWorker::AddKeys {
            keys: vec![(v.clone(), 10)],
        };
        s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(1),
                msg,
            },
            Time::ZERO,
        );
        assert_eq!(s.who_has(&v), [WorkerId(0), WorkerId(1)]);
        let msg = FromClient::Rebalance {
            request: 1,
            keys: None,
            workers: Vec::new(),
        };
        let actions = client_says(&mut s, 0, msg);
        let acquired = acquisitions(&actions);
        assert_eq!(acquired, [(2, vec![v.clone()])]);
        let msg = FromWorker::AddKeys {
            keys: vec![(v.clone(), 10)],
        };
        let actions = s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(2),
                msg,
            },
            Time::ZERO,
        );
        let freed: Vec<u32> = (actions.iter())
            .filter_map(|a| match a {
                SchedulerAction::SendToWorker(w, ToWorker::FreeKeys { .. }) => Some(w.0),
                _ => None,
            })
            .collect();
        assert_eq!(freed.len(), 1, "one sender drops its copy: {actions:?}");
        assert_eq!(s.who_has(&v).len(), 2);
        s.check_consistency().unwrap();
    }

    #[test]
    fn lost_scattered_values_err_instead_of_running() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        join(&mut s, 1, 1);
        let (a, b, d) = (Key::named("a"), Key::named("b"), Key::named("d"));
        scatter(&mut s, 0, &[(&a, 10), (&b, 10)]);
        // a arrives on worker 0; b's worker 1 dies before b arrives.
        finish_in(&mut s, 0, &a, 10, 0);
        let lose = |s: &mut SchedulerState, w: u32| {
            s.handle(
                SchedulerEvent::WorkerLost {
                    worker: WorkerId(w),
                    reason: "killed".into(),
                },
                Time::ZERO,
            )
        };
        let actions = lose(&mut s, 1);
        assert!(computes(&actions).is_empty());
        match &to_client(&actions)[..] {
            [
                ToClient::WorkerLeft { peer },
                ToClient::KeyErred { key, error },
            ] => {
                assert_eq!(peer.id, WorkerId(1));
                assert_eq!(*key, b);
                assert!(
                    error.message.contains("was being pushed to worker-1"),
                    "{error}"
                );
                assert!(error.message.contains("scatter it again"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // A dependent of a runs where a is; then a's only copy dies with worker 0: a errs,
        // and so does the dependent, and nothing is recomputed.
        join(&mut s, 2, 1);
        let actions = submit(&mut s, 1, vec![spec(&d, &[&a], 0)], &[&d]);
        assert_eq!(computes(&actions), [(0, d.clone())]);
        let actions = lose(&mut s, 0);
        assert!(computes(&actions).is_empty(), "{actions:?}");
        let erred: Vec<Key> = to_client(&actions)
            .into_iter()
            .filter_map(|m| match m {
                ToClient::KeyErred { key, error } => {
                    assert!(error.message.contains("lost with its workers"), "{error}");
                    Some(key)
                }
                _ => None,
            })
            .collect();
        assert_eq!(erred.len(), 2, "{erred:?}");
        assert!(erred.contains(&a) && erred.contains(&d));
        s.check_consistency().unwrap();
        // A value released while still on its way is dropped if it arrives after all.
        let e = Key::named("e");
        scatter(&mut s, 3, &[(&e, 10)]);
        s.handle(
            SchedulerEvent::ClientGone {
                client: ClientId(3),
            },
            Time::ZERO,
        );
        assert_eq!(s.task_status(&e), TaskStatus::Forgotten);
        let actions = finish_in(&mut s, 2, &e, 10, 0);
        assert!(actions.iter().any(|x| matches!(x,
            SchedulerAction::SendToWorker(WorkerId(2), ToWorker::FreeKeys { keys }) if keys.contains(&e))));
        s.check_consistency().unwrap();
    }

    #[test]
    fn keys_from_messages_share_the_task_maps_names() {
        // Every key below has a name of its own, as decoded from separate messages.
        let fresh = |name: &str| Key::named(name.to_string());
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let specs = vec![
            spec(&fresh("a"), &[], 0),
            spec(&fresh("b"), &[&fresh("a")], 0),
        ];
        let actions = submit(&mut s, 0, specs, &[&fresh("b")]);
        let (a, _) = s.tasks.get_key_value(&fresh("a")).expect("a known");
        let (b, tb) = s.tasks.get_key_value(&fresh("b")).expect("b known");
        assert!(Arc::ptr_eq(tb.deps[0].name_arc(), a.name_arc()));
        let wanted = s.clients[&ClientId(0)].iter().next().expect("b wanted");
        assert!(Arc::ptr_eq(wanted.name_arc(), b.name_arc()));
        // A report's key becomes the map's before anything else reads it.
        assert_eq!(computes(&actions), [(0, fresh("a"))]);
        let actions = finish(&mut s, 0, &fresh("a"), 8);
        let sent = computes(&actions);
        assert_eq!(sent, [(0, fresh("b"))]);
        let (b, _) = s.tasks.get_key_value(&fresh("b")).expect("b known");
        assert!(Arc::ptr_eq(sent[0].1.name_arc(), b.name_arc()));
        s.check_consistency().unwrap();
    }

    #[test]
    fn large_input_pulls_its_consumer() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        join(&mut s, 1, 1);
        let (small, big, both, only_small) = (
            Key::named("small"),
            Key::named("big"),
            Key::named("both"),
            Key::named("only-small"),
        );
        let tasks = vec![
            spec(&small, &[], 0),
            spec(&big, &[], 1),
            spec(&both, &[&small, &big], 2),
            spec(&only_small, &[&small], 3),
        ];
        let acts = submit(&mut s, 0, tasks, &[&both, &only_small]);
        assert_eq!(computes(&acts), vec![(0, small.clone()), (1, big.clone())]);
        finish(&mut s, 0, &small, 1024);
        let acts = finish(&mut s, 1, &big, 100 << 20);
        // `both` goes where 100 MiB already are, `only-small` where its 1 KiB is.
        let placed = computes(&acts);
        assert!(placed.contains(&(1, both.clone())), "{placed:?}");
        assert_eq!(s.processing_on(&only_small), Some(WorkerId(0)));
    }

    #[test]
    fn unknown_workers_and_keys_are_ignored() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        let k = Key::new("x", [1]);
        for msg in [
            FromWorker::TaskFinished {
                key: k.clone(),
                nbytes: 1,
                compute_micros: 1,
            },
            FromWorker::TaskErred {
                key: k.clone(),
                error: TaskFailure::error(k.clone(), "e"),
            },
            FromWorker::StealResponse {
                key: k.clone(),
                stolen: true,
            },
            FromWorker::MissingData {
                key: k.clone(),
                from_worker: WorkerId(9),
            },
            FromWorker::AddKeys {
                keys: vec![(k.clone(), 3)],
            },
        ] {
            s.handle(
                SchedulerEvent::FromWorker {
                    worker: WorkerId(7),
                    msg: msg.clone(),
                },
                Time::ZERO,
            );
            join(&mut s, 7, 1);
            s.handle(
                SchedulerEvent::FromWorker {
                    worker: WorkerId(7),
                    msg,
                },
                Time::ZERO,
            );
            s.handle(
                SchedulerEvent::WorkerLost {
                    worker: WorkerId(7),
                    reason: "x".into(),
                },
                Time::ZERO,
            );
        }
        s.handle(
            SchedulerEvent::WorkerLost {
                worker: WorkerId(3),
                reason: "x".into(),
            },
            Time::ZERO,
        );
        let release = FromClient::ReleaseKeys {
            keys: vec![k.clone()],
        };
        s.handle(
            SchedulerEvent::FromClient {
                client: ClientId(4),
                msg: release,
            },
            Time::ZERO,
        );
        assert_eq!(s.task_count(), 0);
    }

    #[test]
    fn clients_hear_that_a_worker_left_before_its_values_come_back() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        join(&mut s, 1, 1);
        for c in [0, 1] {
            let e = SchedulerEvent::ClientConnected {
                client: ClientId(c),
            };
            s.handle(e, Time::ZERO);
        }
        let (a, b) = (Key::named("a"), Key::named("b"));
        let acts = submit(
            &mut s,
            0,
            vec![spec(&a, &[], 0), spec(&b, &[], 1)],
            &[&a, &b],
        );
        for (w, key) in computes(&acts) {
            finish(&mut s, w, &key, 8);
        }
        let on = |s: &SchedulerState, k: &Key| s.who_has(k)[0].0;
        let gone = on(&s, &a);
        let lost = SchedulerEvent::WorkerLost {
            worker: WorkerId(gone),
            reason: "connection lost".into(),
        };
        let acts = s.handle(lost, Time::ZERO);
        // Every connected client hears of it (client 1 wants nothing yet), first thing.
        let left = |c: u32| {
            SchedulerAction::SendToClient(
                ClientId(c),
                ToClient::WorkerLeft {
                    peer: Peer {
                        id: WorkerId(gone),
                        address: format!("w{gone}"),
                    },
                },
            )
        };
        let told: Vec<&SchedulerAction> = (acts.iter())
            .filter(|a| matches!(a, SchedulerAction::SendToClient(..)))
            .collect();
        assert_eq!(told, [&left(0), &left(1)], "{acts:?}");
        // `a` is recomputed on the worker left; client 0 hears of it there.
        let redo = computes(&acts);
        assert_eq!(redo, vec![(1 - gone, a.clone())]);
        let acts = finish(&mut s, 1 - gone, &a, 8);
        assert!(matches!(
            &to_client(&acts)[..],
            [ToClient::KeyInMemory { key, workers, .. }]
                if key == &a && workers.iter().all(|p| p.id.0 == 1 - gone)
        ));
        // Leaving twice (a late heartbeat check) says nothing more.
        let lost = SchedulerEvent::WorkerLost {
            worker: WorkerId(gone),
            reason: "again".into(),
        };
        assert!(to_client(&s.handle(lost, Time::ZERO)).is_empty());
    }

    #[test]
    fn a_worker_from_the_same_nanny_replaces_the_old_one_at_once() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        let joined = |s: &mut SchedulerState, id: u32, nanny: &str| {
            let e = joined_event(id, 1, &format!("w{id}"), Some(nanny), Resources::default());
            s.handle(e, Time::ZERO)
        };
        joined(&mut s, 0, "n1");
        joined(&mut s, 1, "n2");
        let a = Key::named("a");
        let acts = submit(&mut s, 0, vec![spec(&a, &[], 0)], &[&a]);
        let (w, _) = computes(&acts)[0].clone();
        finish(&mut s, w, &a, 8);
        // The nanny of `a`'s worker starts a new worker process: the old one goes now
        // (closed, its value lost and recomputed), not at its connection's timeout.
        let nanny = if w == 0 { "n1" } else { "n2" };
        let acts = joined(&mut s, 7, nanny);
        assert!(
            acts.iter().any(|a| matches!(
                a,
                SchedulerAction::CloseWorker(id, why) if id.0 == w && why.contains("nanny")
            )),
            "{acts:?}"
        );
        assert!(s.worker(WorkerId(w)).is_none());
        assert_eq!(s.workers().len(), 2);
        assert_eq!(s.stats().workers_lost, 1);
        assert!(!computes(&acts).is_empty(), "a is recomputed: {acts:?}");
        // Another nanny's worker replaces nobody.
        joined(&mut s, 8, "n3");
        assert_eq!(s.workers().len(), 3);
    }

    #[test]
    fn bad_graphs_are_refused_naming_the_key() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        let (a, b, c) = (Key::named("a"), Key::named("b"), Key::named("c"));
        let refused = |acts: Vec<SchedulerAction>| match &acts[..] {
            [SchedulerAction::SendToClient(_, ToClient::GraphRefused { error })] => error.clone(),
            other => panic!("expected a refusal, got {other:?}"),
        };
        let err = refused(submit(&mut s, 0, vec![spec(&a, &[&c], 0)], &[&a]));
        assert!(err.contains("'a' depends on 'c'"), "{err}");
        let err = refused(submit(
            &mut s,
            0,
            vec![spec(&a, &[&b], 0), spec(&b, &[&a], 0)],
            &[&a],
        ));
        assert!(err.contains("cycle"), "{err}");
        let err = refused(submit(
            &mut s,
            0,
            vec![spec(&a, &[], 0), spec(&a, &[], 0)],
            &[&a],
        ));
        assert!(err.contains("duplicate key"), "{err}");
        let err = refused(submit(&mut s, 0, vec![spec(&a, &[], 0)], &[&b]));
        assert!(err.contains("'b'"), "{err}");
        let err = refused(submit(&mut s, 0, vec![spec(&a, &[&a], 0)], &[&a]));
        assert!(err.contains("cycle"), "{err}");
        assert_eq!(s.task_count(), 0);
        // Dependents listed before their dependencies are fine, just checked the slow way.
        join(&mut s, 1, 1);
        let acts = submit(
            &mut s,
            0,
            vec![spec(&c, &[&a, &b], 0), spec(&b, &[&a], 0), spec(&a, &[], 0)],
            &[&c],
        );
        assert_eq!(computes(&acts), vec![(1, a.clone())]);
        assert_eq!(s.task_count(), 3);
    }

    #[test]
    fn shared_key_lives_until_both_clients_release_it() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 2);
        let x = Key::new("x", [0]);
        submit(&mut s, 1, vec![spec(&x, &[], 0)], &[&x]);
        submit(&mut s, 2, vec![spec(&x, &[], 0)], &[&x]);
        let acts = finish(&mut s, 0, &x, 10);
        let told: Vec<u32> = (acts.iter())
            .filter_map(|a| match a {
                SchedulerAction::SendToClient(c, ToClient::KeyInMemory { .. }) => Some(c.0),
                _ => None,
            })
            .collect();
        assert_eq!(told, vec![1, 2]);
        let release = |c| SchedulerEvent::FromClient {
            client: ClientId(c),
            msg: FromClient::ReleaseKeys {
                keys: vec![Key::new("x", [0])],
            },
        };
        assert!(s.handle(release(1), Time::ZERO).is_empty());
        assert_eq!(s.task_status(&x), TaskStatus::Memory);
        let acts = s.handle(release(2), Time::ZERO);
        assert_eq!(
            acts,
            vec![SchedulerAction::SendToWorker(
                WorkerId(0),
                ToWorker::FreeKeys {
                    keys: vec![x.clone()]
                }
            )]
        );
        assert_eq!(s.task_status(&x), TaskStatus::Forgotten);
    }

    /// Client `c` sends `msg`; the scheduler stays consistent.
    fn client_says(s: &mut SchedulerState, c: u32, msg: FromClient) -> Vec<SchedulerAction> {
        let client = ClientId(c);
        let acts = s.handle(SchedulerEvent::FromClient { client, msg }, Time::ZERO);
        s.check_consistency().unwrap();
        acts
    }

    #[test]
    fn the_task_stream_remembers_where_and_when_tasks_ran() {
        let config = SchedulerConfig {
            clock_origin_unix_micros: 1_000_000_000,
            ..SchedulerConfig::default()
        };
        let mut s = SchedulerState::new(config);
        join(&mut s, 0, 1);
        let (a, b) = (Key::new("a", [0]), Key::new("b", [0]));
        submit(&mut s, 1, vec![spec(&a, &[], 0), spec(&b, &[&a], 1)], &[&b]);
        let done = FromWorker::TaskFinished {
            key: a.clone(),
            nbytes: 64,
            compute_micros: 2_000,
        };
        s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(0),
                msg: done,
            },
            Time::from_millis(5),
        );
        let failed = FromWorker::TaskErred {
            key: b.clone(),
            error: TaskFailure::error(b.clone(), "no"),
        };
        s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(0),
                msg: failed,
            },
            Time::from_millis(9),
        );
        let stream = |s: &mut SchedulerState, since| match to_client(&client_says(
            s,
            1,
            FromClient::TaskStream { request: 3, since },
        ))
        .as_slice()
        {
            [
                ToClient::TaskStream {
                    request: 3,
                    next,
                    records,
                },
            ] => (*next, records.clone()),
            other => panic!("{other:?}"),
        };
        let (next, records) = stream(&mut s, 0);
        assert_eq!(next, 2);
        let want = |seq, key: &Key, start, stop, nbytes, erred| TaskRecord {
            seq,
            key: key.clone(),
            worker: "w0".into(),
            start,
            stop,
            nbytes,
            erred,
        };
        assert_eq!(
            records,
            [
                want(0, &a, 1_000_003_000, 1_000_005_000, 64, false),
                want(1, &b, 1_000_009_000, 1_000_009_000, 0, true)
            ]
        );
        assert_eq!(stream(&mut s, 1).1, records[1..]);
        assert_eq!(stream(&mut s, u64::MAX), (2, vec![]));
    }

    #[test]
    fn fired_and_forgotten_tasks_run_to_the_end_then_go() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| Key::new(n, [0]));
        let specs = vec![
            spec(&a, &[], 0),
            spec(&b, &[&a], 1),
            spec(&c, &[], 2),
            spec(&d, &[&c], 3),
        ];
        submit(&mut s, 1, specs, &[&b, &d]);
        let fire = FromClient::FireAndForget {
            keys: vec![b.clone(), d.clone(), Key::named("unknown")],
        };
        client_says(&mut s, 1, fire);
        // The client lets go of both: they stay, and so do their inputs.
        let release = FromClient::ReleaseKeys {
            keys: vec![b.clone(), d.clone()],
        };
        client_says(&mut s, 1, release);
        assert_eq!(s.task_status(&b), TaskStatus::Waiting);
        assert_eq!(s.task_status(&a), TaskStatus::Processing);
        // b runs and finishes: released and forgotten with its input.
        finish(&mut s, 0, &a, 8);
        assert_eq!(s.task_status(&b), TaskStatus::Processing);
        finish(&mut s, 0, &b, 8);
        assert_eq!(s.task_status(&b), TaskStatus::Forgotten);
        assert_eq!(s.task_status(&a), TaskStatus::Forgotten);
        // d's input fails: d errs, and goes too (nobody hears of it).
        let failed = FromWorker::TaskErred {
            key: c.clone(),
            error: TaskFailure::error(c.clone(), "no disk"),
        };
        let acts = s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(0),
                msg: failed,
            },
            Time::ZERO,
        );
        assert!(to_client(&acts).is_empty(), "{acts:?}");
        assert_eq!(s.task_status(&d), TaskStatus::Forgotten);
        assert_eq!(s.task_count(), 0);
        s.check_consistency().unwrap();
    }

    fn dataset_request(s: &mut SchedulerState, c: u32, msg: FromClient) -> DatasetReply {
        let acts = client_says(s, c, msg);
        let replies: Vec<DatasetReply> = (to_client(&acts).into_iter())
            .filter_map(|m| match m {
                ToClient::Dataset { reply, .. } => Some(reply),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "{acts:?}");
        replies.into_iter().next().unwrap()
    }

    fn publish(name: &str, keys: &[&Key], replace: bool) -> FromClient {
        FromClient::PublishDataset {
            request: 1,
            name: name.into(),
            keys: keys.iter().map(|k| (*k).clone()).collect(),
            payload: ByteBuf::from(name.as_bytes().to_vec()),
            replace,
        }
    }

    #[test]
    fn coordination_items_hold_their_keys_and_hand_them_to_getters() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 2);
        let (x, y) = (Key::new("x", [0]), Key::new("y", [0]));
        submit(
            &mut s,
            1,
            vec![spec(&x, &[], 0), spec(&y, &[], 0)],
            &[&x, &y],
        );
        finish(&mut s, 0, &x, 10);
        finish(&mut s, 0, &y, 10);
        let coordinate = |s: &mut SchedulerState, c: u32, request: u64, op: Coordinate| {
            let msg = FromClient::Coordinate { request, op };
            let acts = s.handle(
                SchedulerEvent::FromClient {
                    client: ClientId(c),
                    msg,
                },
                Time::ZERO,
            );
            s.check_consistency().unwrap();
            (acts.into_iter())
                .filter_map(|a| match a {
                    SchedulerAction::SendToClient(c, ToClient::Coordinated { request, reply }) => {
                        Some((c.0, request, reply))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let item = |keys: &[&Key]| Item {
            keys: keys.iter().map(|k| (*k).clone()).collect(),
            payload: ByteBuf::new(),
        };
        // An unknown key is refused, naming it.
        let z = Key::new("z", [0]);
        let set = |i| Coordinate::VariableSet {
            name: "v".into(),
            item: i,
        };
        let r = coordinate(&mut s, 1, 1, set(item(&[&z])));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("('z', 0)")));
        // x in a variable, y in a queue: both outlive client 1's release.
        assert_eq!(
            coordinate(&mut s, 1, 2, set(item(&[&x]))),
            [(1, 2, CoordReply::Done)]
        );
        let put = Coordinate::QueuePut {
            name: "q".into(),
            item: item(&[&y]),
            maxsize: 0,
            back: false,
        };
        assert_eq!(coordinate(&mut s, 1, 3, put), [(1, 3, CoordReply::Done)]);
        let release = FromClient::ReleaseKeys {
            keys: vec![x.clone(), y.clone()],
        };
        s.handle(
            SchedulerEvent::FromClient {
                client: ClientId(1),
                msg: release,
            },
            Time::ZERO,
        );
        s.check_consistency().unwrap();
        assert_eq!(s.task_status(&x), TaskStatus::Memory);
        assert_eq!(s.task_status(&y), TaskStatus::Memory);
        // Client 2 takes y from the queue: it wants y now, and the queue holds nothing.
        s.handle(
            SchedulerEvent::ClientConnected {
                client: ClientId(2),
            },
            Time::ZERO,
        );
        let get = Coordinate::QueueGet { name: "q".into() };
        assert_eq!(
            coordinate(&mut s, 2, 1, get),
            [(2, 1, CoordReply::Item(item(&[&y])))]
        );
        assert_eq!(s.task_status(&y), TaskStatus::Memory);
        s.handle(
            SchedulerEvent::ClientGone {
                client: ClientId(2),
            },
            Time::ZERO,
        );
        assert_ne!(s.task_status(&y), TaskStatus::Memory);
        // Deleting the variable lets x go.
        coordinate(
            &mut s,
            1,
            4,
            Coordinate::VariableDelete { name: "v".into() },
        );
        assert_ne!(s.task_status(&x), TaskStatus::Memory);
        // A lock held by a client that leaves goes to the next in line.
        let lock = || Coordinate::Acquire {
            name: "l".into(),
            max_leases: 1,
        };
        let r = coordinate(&mut s, 3, 1, lock());
        assert!(
            matches!(r[..], [(3, 1, CoordReply::Leased { .. })]),
            "{r:?}"
        );
        assert!(coordinate(&mut s, 1, 5, lock()).is_empty());
        let acts = s.handle(
            SchedulerEvent::ClientGone {
                client: ClientId(3),
            },
            Time::ZERO,
        );
        assert!(acts.iter().any(|a| matches!(
            a,
            SchedulerAction::SendToClient(
                ClientId(1),
                ToClient::Coordinated {
                    request: 5,
                    reply: CoordReply::Leased { .. }
                }
            )
        )));
        s.check_consistency().unwrap();
    }

    #[test]
    fn published_keys_outlive_their_client_until_unpublished() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 2);
        let (x, y) = (Key::new("x", [0]), Key::new("y", [0]));
        submit(&mut s, 1, vec![spec(&x, &[], 0), spec(&y, &[&x], 0)], &[&y]);
        let name = |n: &str| n.to_string();
        // Unknown keys and taken names are refused, naming them; nothing changes.
        let z = Key::new("z", [0]);
        let r = dataset_request(&mut s, 1, publish("a", &[&y, &z], false));
        assert!(
            matches!(&r, DatasetReply::Refused { error } if error.contains("('z', 0)")),
            "{r:?}"
        );
        assert_eq!(
            dataset_request(&mut s, 1, publish("a", &[&y], false)),
            DatasetReply::Done
        );
        let r = dataset_request(&mut s, 2, publish("a", &[&y], false));
        assert!(matches!(&r, DatasetReply::Refused { error } if error.contains("\"a\"")));
        // Published while pending: computed, then kept after its only client leaves.
        finish(&mut s, 0, &x, 10);
        finish(&mut s, 0, &y, 20);
        s.handle(
            SchedulerEvent::ClientGone {
                client: ClientId(1),
            },
            Time::ZERO,
        );
        s.check_consistency().unwrap();
        assert_eq!(s.task_status(&y), TaskStatus::Memory);
        // x was only y's input: freed once y is in memory.
        assert_eq!(s.task_status(&x), TaskStatus::Released);
        let get = |n: &str| FromClient::GetDataset {
            request: 2,
            name: n.into(),
        };
        let found = dataset_request(&mut s, 2, get("a"));
        assert_eq!(
            found,
            DatasetReply::Found {
                keys: vec![y.clone()],
                payload: ByteBuf::from(b"a".to_vec())
            }
        );
        let r = dataset_request(&mut s, 2, get("b"));
        assert!(matches!(&r, DatasetReply::Refused { error } if error.contains("\"b\"")));
        // Two datasets share y; replacing one keeps it, the last unpublish frees it.
        assert_eq!(
            dataset_request(&mut s, 2, publish("b", &[&y], false)),
            DatasetReply::Done
        );
        assert_eq!(
            dataset_request(&mut s, 2, publish("a", &[&y], true)),
            DatasetReply::Done
        );
        let list = dataset_request(&mut s, 3, FromClient::ListDatasets { request: 3 });
        assert_eq!(
            list,
            DatasetReply::Names {
                names: vec![name("a"), name("b")]
            }
        );
        let unpublish = |n: &str| FromClient::UnpublishDataset {
            request: 4,
            name: n.into(),
        };
        assert_eq!(
            dataset_request(&mut s, 3, unpublish("a")),
            DatasetReply::Done
        );
        assert_eq!(s.task_status(&y), TaskStatus::Memory);
        let r = dataset_request(&mut s, 3, unpublish("a"));
        assert!(matches!(r, DatasetReply::Refused { .. }));
        let acts = client_says(&mut s, 3, unpublish("b"));
        assert!(acts.contains(&SchedulerAction::SendToWorker(
            WorkerId(0),
            ToWorker::FreeKeys {
                keys: vec![y.clone()]
            }
        )));
        assert_eq!(s.task_status(&y), TaskStatus::Forgotten);
        assert_eq!(s.task_status(&x), TaskStatus::Forgotten);
        s.check_consistency().unwrap();
    }

    #[test]
    fn a_client_getting_a_dataset_wants_its_keys_like_any_submit() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let x = Key::new("x", [0]);
        submit(&mut s, 1, vec![spec(&x, &[], 0)], &[&x]);
        finish(&mut s, 0, &x, 10);
        assert_eq!(
            dataset_request(&mut s, 1, publish("a", &[&x], false)),
            DatasetReply::Done
        );
        s.handle(
            SchedulerEvent::ClientGone {
                client: ClientId(1),
            },
            Time::ZERO,
        );
        // The getter submits the keys it was given, with no tasks: told they are in memory.
        let acts = submit(&mut s, 2, vec![], &[&x]);
        assert!(
            (to_client(&acts).iter())
                .any(|m| matches!(m, ToClient::KeyInMemory { key, .. } if *key == x)),
            "{acts:?}"
        );
        // Unpublished while the getter holds it: kept for the getter.
        let msg = FromClient::UnpublishDataset {
            request: 5,
            name: "a".into(),
        };
        assert_eq!(dataset_request(&mut s, 2, msg), DatasetReply::Done);
        assert_eq!(s.task_status(&x), TaskStatus::Memory);
    }

    fn join_at(
        s: &mut SchedulerState,
        id: u32,
        nthreads: u32,
        address: &str,
    ) -> Vec<SchedulerAction> {
        join_offering(s, id, nthreads, address, Resources::default())
    }

    fn join_offering(
        s: &mut SchedulerState,
        id: u32,
        nthreads: u32,
        address: &str,
        resources: Resources,
    ) -> Vec<SchedulerAction> {
        s.handle(
            joined_event(id, nthreads, address, None, resources),
            Time::ZERO,
        )
    }

    fn only_on(mut spec: TaskSpec, workers: &[&str], loose: bool) -> TaskSpec {
        spec.restrictions = Some(Restrictions {
            workers: workers.iter().map(|w| w.to_string()).collect(),
            loose,
            resources: Resources::default(),
        });
        spec
    }

    fn asking(mut spec: TaskSpec, resources: &str) -> TaskSpec {
        let r = spec.restrictions.get_or_insert_with(|| Restrictions {
            workers: vec![],
            loose: false,
            resources: Resources::default(),
        });
        r.resources = Resources::parse(resources).unwrap();
        spec
    }

    #[test]
    fn tasks_waiting_for_a_resource_move_to_an_idle_worker_offering_it() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        let gpu = Resources::parse("GPU=1").unwrap();
        join_offering(&mut s, 0, 4, "10.0.0.1:4000", gpu.clone());
        let keys: Vec<Key> = (0..4).map(|i| Key::new("g", [i])).collect();
        let specs = (keys.iter().enumerate())
            .map(|(i, k)| asking(spec(k, &[], i as i64), "GPU=1"))
            .collect();
        let refs: Vec<&Key> = keys.iter().collect();
        let acts = submit(&mut s, 1, specs, &refs);
        // One GPU, four threads: all four go to worker 0, where three wait for the GPU.
        assert_eq!(computes(&acts).len(), 4);
        let steals = |acts: &[SchedulerAction]| -> Vec<(u32, Key)> {
            (acts.iter())
                .filter_map(|a| match a {
                    SchedulerAction::SendToWorker(w, ToWorker::StealRequest { key }) => {
                        Some((w.0, key.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        // A worker without a GPU takes none; one offering a GPU takes the last to run,
        // one at a time (its one GPU).
        assert!(steals(&join_at(&mut s, 2, 4, "10.0.0.3:4000")).is_empty());
        let acts = join_offering(&mut s, 1, 4, "10.0.0.2:4000", gpu);
        assert_eq!(steals(&acts), [(0, keys[3].clone())]);
        s.check_consistency().unwrap();
        let handed = FromWorker::StealResponse {
            key: keys[3].clone(),
            stolen: true,
        };
        let acts = s.handle(
            SchedulerEvent::FromWorker {
                worker: WorkerId(0),
                msg: handed,
            },
            Time::ZERO,
        );
        assert_eq!(computes(&acts), [(1, keys[3].clone())]);
        assert!(steals(&acts).is_empty(), "{acts:?}");
        // Done there: worker 1 takes the next that waits.
        let acts = finish(&mut s, 1, &keys[3], 8);
        assert_eq!(steals(&acts), [(0, keys[2].clone())]);
        s.check_consistency().unwrap();
    }

    #[test]
    fn restrictions_match_addresses_and_hosts() {
        let r = Restrictions {
            workers: vec!["10.0.0.1".into(), "10.0.0.2:4000".into(), "::1".into()],
            loose: false,
            resources: Resources::default(),
        };
        assert!(r.lists("10.0.0.1:4000") && r.lists("10.0.0.1:5000"));
        assert!(r.lists("10.0.0.2:4000") && !r.lists("10.0.0.2:4001"));
        assert!(r.lists("[::1]:4000") && !r.lists("10.0.0.3:4000"));
    }

    #[test]
    fn tasks_asking_for_resources_go_only_to_workers_offering_them() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        let gpus = |n: &str| Resources::parse(&format!("GPU={n}")).unwrap();
        join_at(&mut s, 0, 4, "10.0.0.1:4000");
        join_offering(&mut s, 1, 1, "10.0.0.2:4000", gpus("1"));
        let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|n| Key::new(n, [0]));
        // A root asking for a GPU goes to the worker with one at once (not through the
        // root queue, whose slots are any worker's), and carries what it asks for.
        let acts = submit(&mut s, 1, vec![asking(spec(&a, &[], 0), "GPU=1")], &[&a]);
        assert_eq!(computes(&acts), vec![(1, a.clone())]);
        assert!(acts.iter().any(|x| matches!(x,
            SchedulerAction::SendToWorker(_, ToWorker::ComputeTask { resources, .. })
                if *resources == gpus("1"))));
        // More than any worker offers: it waits, and the log says for what.
        let acts = submit(&mut s, 1, vec![asking(spec(&b, &[], 1), "GPU=2")], &[&b]);
        assert!(computes(&acts).is_empty(), "{acts:?}");
        assert_eq!(s.task_status(&b), TaskStatus::Queued);
        assert!(acts.iter().any(
            |a| matches!(a, SchedulerAction::Log(LogLevel::Warn, t) if t.contains("offering GPU=2"))
        ));
        s.check_consistency().unwrap();
        // Loosely restricted to worker 0, which has no GPU: worker 0 is not allowed, the
        // resource still is asked for: it runs on worker 1 (a dependent of a, there).
        let loose = asking(only_on(spec(&c, &[&a], 2), &["10.0.0.1"], true), "GPU=1");
        let acts = submit(&mut s, 1, vec![loose], &[&c]);
        assert!(computes(&acts).is_empty(), "{acts:?}"); // waits for a first
        let acts = finish(&mut s, 1, &a, 8);
        assert_eq!(computes(&acts), vec![(1, c.clone())]);
        // Not stolen by the idle worker without a GPU, however long worker 1 is busy.
        let d_spec = asking(spec(&d, &[], 3), "GPU=1");
        submit(&mut s, 1, vec![d_spec], &[&d]);
        assert_eq!(s.worker(WorkerId(1)).unwrap().processing, 2);
        for t in 1..20 {
            let acts = s.handle(SchedulerEvent::Tick, Time::from_millis(t * 100));
            assert!(!acts.iter().any(|a| matches!(
                a,
                SchedulerAction::SendToWorker(_, ToWorker::StealRequest { .. })
            )));
        }
        // A worker offering enough joins: the waiting task goes to it.
        let acts = join_offering(&mut s, 2, 1, "10.0.0.3:4000", gpus("4"));
        assert_eq!(computes(&acts), vec![(2, b.clone())]);
        assert_eq!(s.worker(WorkerId(2)).unwrap().resources, gpus("4"));
        s.check_consistency().unwrap();
        // A bad amount (the wire may carry anything) is refused naming the task.
        let mut bad = asking(spec(&e, &[], 0), "GPU=1");
        bad.restrictions.as_mut().unwrap().resources = nan_resources();
        let acts = submit(&mut s, 1, vec![bad], &[&e]);
        assert!(matches!(to_client(&acts).as_slice(),
            [ToClient::GraphRefused { error }] if error.contains("e-0") || error.contains("GPU")));
        // So is a worker's: it joins offering nothing.
        let bad_offer = joined_event(3, 1, "10.0.0.4:4000", None, nan_resources());
        let acts = s.handle(bad_offer, Time::ZERO);
        assert!(computes(&acts).is_empty(), "{acts:?}");
        assert!(s.worker(WorkerId(3)).unwrap().resources.is_empty());
        s.check_consistency().unwrap();
    }

    /// Resources holding NaN, as only a decoded message can (constructors refuse it).
    fn nan_resources() -> Resources {
        let bytes =
            crate::messages::encode(&BTreeMap::from([("GPU".to_string(), f64::NAN)])).unwrap();
        crate::messages::decode(&bytes).unwrap()
    }

    #[test]
    fn restricted_tasks_run_only_where_allowed_and_wait_for_such_a_worker() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join_at(&mut s, 0, 1, "10.0.0.1:4000");
        join_at(&mut s, 1, 1, "10.0.0.2:4000");
        let (a, b, c) = (Key::new("a", [0]), Key::new("b", [0]), Key::new("c", [0]));
        // A root restricted to a worker is placed there at once, not queued.
        let acts = submit(
            &mut s,
            1,
            vec![only_on(spec(&a, &[], 0), &["10.0.0.2:4000"], false)],
            &[&a],
        );
        assert_eq!(computes(&acts), vec![(1, a.clone())]);
        // Restricted to a host with no worker: it waits, and the log says why.
        let acts = submit(
            &mut s,
            1,
            vec![only_on(spec(&b, &[], 1), &["10.0.0.3"], false)],
            &[&b],
        );
        assert!(computes(&acts).is_empty(), "{acts:?}");
        assert_eq!(s.task_status(&b), TaskStatus::Queued);
        assert!(acts.iter().any(
            |a| matches!(a, SchedulerAction::Log(LogLevel::Warn, t) if t.contains("10.0.0.3"))
        ));
        s.check_consistency().unwrap();
        // Loosely restricted to it: runs anywhere meanwhile (worker 0 has the free thread).
        let acts = submit(
            &mut s,
            1,
            vec![only_on(spec(&c, &[], 2), &["10.0.0.3"], true)],
            &[&c],
        );
        assert_eq!(computes(&acts), vec![(0, c.clone())]);
        // A worker on that host joins: the waiting task goes to it.
        let acts = join_at(&mut s, 2, 1, "10.0.0.3:5000");
        assert_eq!(computes(&acts), vec![(2, b.clone())]);
        // It dies: the task waits again, though two workers are idle enough.
        finish(&mut s, 1, &a, 8);
        let lost = SchedulerEvent::WorkerLost {
            worker: WorkerId(2),
            reason: "killed".into(),
        };
        let acts = s.handle(lost, Time::ZERO);
        assert!(computes(&acts).is_empty(), "{acts:?}");
        assert_eq!(s.task_status(&b), TaskStatus::Queued);
        s.check_consistency().unwrap();
        // A dependent restricted to worker 0 reads a's value from worker 1.
        let d = Key::new("d", [0]);
        let acts = submit(
            &mut s,
            1,
            vec![only_on(spec(&d, &[&a], 3), &["10.0.0.1:4000"], false)],
            &[&d],
        );
        assert_eq!(computes(&acts), vec![(0, d.clone())]);
        // Released while waiting for a worker: forgotten, nothing left behind.
        let release = FromClient::ReleaseKeys {
            keys: vec![b.clone()],
        };
        client_says(&mut s, 1, release);
        assert_eq!(s.task_status(&b), TaskStatus::Forgotten);
        let acts = join_at(&mut s, 3, 1, "10.0.0.3:5001");
        assert!(computes(&acts).is_empty(), "{acts:?}");
    }

    #[test]
    fn a_waiting_restricted_task_whose_input_is_lost_waits_for_it_too() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join_at(&mut s, 0, 1, "10.0.0.1:4000");
        let (a, d) = (Key::new("a", [0]), Key::new("d", [0]));
        submit(&mut s, 1, vec![spec(&a, &[], 0)], &[&a]);
        finish(&mut s, 0, &a, 8);
        let restricted = only_on(spec(&d, &[&a], 1), &["tcp://10.0.0.9"], false);
        let acts = submit(&mut s, 1, vec![restricted], &[&d]);
        assert!(computes(&acts).is_empty(), "{acts:?}");
        // Its input dies with the only worker: it is no longer ready.
        let lost = SchedulerEvent::WorkerLost {
            worker: WorkerId(0),
            reason: "killed".into(),
        };
        s.handle(lost, Time::ZERO);
        assert_eq!(s.task_status(&d), TaskStatus::Waiting);
        s.check_consistency().unwrap();
        // The allowed worker joins (its scheme-less address matches): the input is
        // computed first, then the task, both there.
        let acts = join_at(&mut s, 9, 1, "10.0.0.9:7000");
        assert_eq!(computes(&acts), vec![(9, a.clone())]);
        let acts = finish(&mut s, 9, &a, 8);
        assert_eq!(computes(&acts), vec![(9, d.clone())]);
        s.check_consistency().unwrap();
    }

    #[test]
    fn restart_forgets_everything_and_needs_nannies() {
        let restart =
            |s: &mut SchedulerState| client_says(s, 1, FromClient::Restart { request: 4 });
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let (a, b) = (Key::new("a", [0]), Key::new("b", [0]));
        submit(&mut s, 1, vec![spec(&a, &[], 0), spec(&b, &[&a], 0)], &[&b]);
        // A worker without a nanny: refused, nothing changes.
        let acts = restart(&mut s);
        assert!(matches!(
            to_client(&acts).as_slice(),
            [ToClient::Restarting { request: 4, workers: 0, refused: Some(why) }] if why.contains("w0")
        ));
        assert_eq!(s.task_status(&a), TaskStatus::Processing);
        let nannied = joined_event(1, 1, "w1", Some("n1"), Resources::default());
        s.handle(nannied, Time::ZERO);
        s.handle(
            SchedulerEvent::WorkerLost {
                worker: WorkerId(0),
                reason: "gone".into(),
            },
            Time::ZERO,
        );
        assert_eq!(
            dataset_request(&mut s, 1, publish("d", &[&b], false)),
            DatasetReply::Done
        );
        // A retiring worker (its nanny would start it again): refused too. (Set by hand:
        // the refusal comes before this event's retirement step would close it.)
        s.workers.get_mut(&WorkerId(1)).unwrap().retiring = true;
        let mut refused = None;
        s.restart(ClientId(1), 4);
        for a in std::mem::take(&mut s.out) {
            if let SchedulerAction::SendToClient(_, ToClient::Restarting { refused: r, .. }) = a {
                refused = r;
            }
        }
        assert!(refused.is_some_and(|why| why.contains("retiring")));
        s.workers.get_mut(&WorkerId(1)).unwrap().retiring = false;
        // Every worker under a nanny: told to restart, gone from the state; the client's
        // keys are cancelled; nothing is left.
        let acts = restart(&mut s);
        assert!(acts.contains(&SchedulerAction::SendToWorker(
            WorkerId(1),
            ToWorker::Restart
        )));
        let told = to_client(&acts);
        assert!(
            told.contains(&ToClient::Cancelled { key: b.clone() }),
            "{told:?}"
        );
        assert!(told.contains(&ToClient::Restarting {
            request: 4,
            workers: 1,
            refused: None
        }));
        assert_eq!(s.task_count(), 0);
        assert!(s.workers().is_empty());
        // The old connection's events are ignored; the nanny's new worker takes new work.
        let late = finish(&mut s, 1, &a, 8);
        assert!(computes(&late).is_empty());
        let fresh = joined_event(2, 1, "w1b", Some("n1"), Resources::default());
        s.handle(fresh, Time::ZERO);
        let acts = submit(&mut s, 1, vec![spec(&a, &[], 0)], &[&a]);
        assert_eq!(computes(&acts), vec![(2, a.clone())]);
        let list = dataset_request(&mut s, 1, FromClient::ListDatasets { request: 5 });
        assert_eq!(list, DatasetReply::Names { names: vec![] });
    }

    #[test]
    fn scattering_on_named_workers_places_only_there() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join_at(&mut s, 0, 1, "10.0.0.1:4000");
        join_at(&mut s, 1, 1, "10.0.0.2:4000");
        let keys: Vec<Key> = (0..4).map(|i| Key::new("sc", [i])).collect();
        let sized: Vec<(&Key, u64)> = keys.iter().map(|k| (k, 100)).collect();
        let acts = scatter_on(&mut s, 1, &sized, &["10.0.0.2"]);
        let told = to_client(&acts);
        let [ToClient::ScatterTo { placements }] = told.as_slice() else {
            panic!("{acts:?}")
        };
        assert!(
            placements.iter().all(|(_, p)| p.id == WorkerId(1)),
            "{placements:?}"
        );
        let other = Key::new("sc", [9]);
        let acts = scatter_on(&mut s, 1, &[(&other, 1)], &["10.0.0.3:1"]);
        assert!(matches!(
            to_client(&acts).as_slice(),
            [ToClient::ScatterRefused { error, .. }] if error.contains("10.0.0.3:1")
        ));
        assert_eq!(s.task_status(&other), TaskStatus::Forgotten);
        s.check_consistency().unwrap();
    }

    #[test]
    fn idle_workers_do_not_steal_tasks_restricted_elsewhere() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join_at(&mut s, 0, 1, "10.0.0.1:4000");
        join_at(&mut s, 1, 1, "10.0.0.2:4000");
        let keys: Vec<Key> = (0..4).map(|i| Key::new("r", [i])).collect();
        let specs = (keys.iter())
            .map(|k| only_on(spec(k, &[], 0), &["10.0.0.1"], false))
            .collect();
        let refs: Vec<&Key> = keys.iter().collect();
        let acts = submit(&mut s, 1, specs, &refs);
        assert_eq!(computes(&acts).iter().filter(|(w, _)| *w == 0).count(), 4);
        let steals = |acts: &[SchedulerAction]| {
            (acts.iter())
                .filter(|a| {
                    matches!(
                        a,
                        SchedulerAction::SendToWorker(_, ToWorker::StealRequest { .. })
                    )
                })
                .count()
        };
        assert_eq!(steals(&acts), 0);
        // Nor when one of them finishes and the balance is looked at again.
        let acts = finish(&mut s, 0, &keys[0], 8);
        assert_eq!(steals(&acts), 0, "{acts:?}");
        assert!(computes(&acts).is_empty(), "{acts:?}");
        s.check_consistency().unwrap();
    }

    #[test]
    fn seceded_tasks_free_their_slot_and_are_never_stolen() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let roots: Vec<Key> = (0..6).map(|i| Key::new("r", [i])).collect();
        let tasks = (roots.iter().enumerate())
            .map(|(i, k)| spec(k, &[], i as i64))
            .collect();
        let acts = submit(&mut s, 0, tasks, &roots.iter().collect::<Vec<_>>());
        // ceil(1 * 1.1) = 2 slots.
        let sent = |acts: &[SchedulerAction]| -> Vec<Key> {
            computes(acts).into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!(sent(&acts), [roots[0].clone(), roots[1].clone()]);
        let seceded = |s: &mut SchedulerState, w: u32, key: &Key| {
            let msg = FromWorker::Seceded { key: key.clone() };
            let worker = WorkerId(w);
            s.handle(SchedulerEvent::FromWorker { worker, msg }, Time::ZERO)
        };
        // r0 waits on tasks it submitted, holding no thread: its slot goes to r2.
        let acts = seceded(&mut s, 0, &roots[0]);
        assert_eq!(sent(&acts), [roots[2].clone()]);
        assert_eq!(s.worker(WorkerId(0)).unwrap().processing, 3);
        s.check_consistency().unwrap();
        // A stray report (another worker, an unknown key) changes nothing.
        assert!(sent(&seceded(&mut s, 0, &Key::new("gone", [0]))).is_empty());
        // An idle worker joining takes queued roots, and steals only unstarted tasks:
        // never r0.
        join(&mut s, 1, 1);
        for _ in 0..3 {
            let mut acts = Vec::new();
            for k in &roots {
                if s.processing_on(k) == Some(WorkerId(1)) {
                    acts.extend(finish(&mut s, 1, k, 8));
                }
            }
            for a in &acts {
                if let SchedulerAction::SendToWorker(_, ToWorker::StealRequest { key }) = a {
                    assert_ne!(key, &roots[0]);
                }
            }
        }
        assert_eq!(s.processing_on(&roots[0]), Some(WorkerId(0)));
        // Finishing it ends its long run.
        finish(&mut s, 0, &roots[0], 8);
        assert_eq!(s.task_status(&roots[0]), TaskStatus::Memory);
        s.check_consistency().unwrap();
    }

    fn roots(name: &str, n: u32) -> (Vec<TaskSpec>, Vec<Key>) {
        let keys: Vec<Key> = (0..n).map(|i| Key::new(name, [i])).collect();
        (keys.iter().map(|k| spec(k, &[], 0)).collect(), keys)
    }

    fn join_limited(s: &mut SchedulerState, id: u32, nthreads: u32, memory_limit: u64) {
        let e = SchedulerEvent::WorkerJoined {
            worker: WorkerId(id),
            nthreads,
            memory_limit,
            address: format!("w{id}"),
            nanny: None,
            resources: Resources::default(),
        };
        s.handle(e, Time::ZERO);
    }

    /// Dask's policy: queued and processing work over the target duration gives threads,
    /// capped by the tasks ready to run, turned into workers at the cluster's threads per
    /// worker; at least one while anything is ready.
    #[test]
    fn adaptive_target_sizes_the_cluster_for_the_work_in_sight() {
        let target = Duration::from_secs(5);
        let mut s = SchedulerState::new(SchedulerConfig::default());
        assert_eq!(s.adaptive_target(target), AdaptiveTarget::default());
        // No worker: 10 roots at the default 500 ms are 5 s of work, one worker.
        let (tasks, keys) = roots("a", 10);
        submit(&mut s, 0, tasks, &keys.iter().collect::<Vec<_>>());
        assert_eq!(s.adaptive_target(target).workers, 1);
        // 30 more: 20 s of work, 4 threads, and with no worker to say how many threads
        // one has, 4 workers.
        let (tasks, keys) = roots("b", 30);
        submit(&mut s, 0, tasks, &keys.iter().collect::<Vec<_>>());
        assert_eq!(s.adaptive_target(target).workers, 4);
        // Two-thread workers: 2 of them.
        join(&mut s, 0, 2);
        let advice = s.adaptive_target(target);
        assert_eq!((advice.workers, advice.to_close.len()), (2, 0));
        // A group learnt to take 100 s: 40 tasks would be 800 threads, but only the 40
        // tasks ready can run at once: 20 two-thread workers.
        let first = s
            .processing_on(&Key::new("a", [0]))
            .map(|_| Key::new("a", [0]));
        let first = first.expect("a root was sent");
        finish_in(&mut s, 0, &first, 1, 100_000_000);
        let advice = s.adaptive_target(target);
        assert_eq!(advice.workers, 20, "{advice:?}");
        // Waiting dependents count too: a root quick to read, its consumer slow.
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let (mut tasks, inputs) = roots("in", 4);
        let outs: Vec<Key> = (0..4).map(|i| Key::new("use", [i])).collect();
        tasks.extend(outs.iter().zip(&inputs).map(|(o, i)| spec(o, &[i], 0)));
        submit(&mut s, 0, tasks, &outs.iter().collect::<Vec<_>>());
        finish_in(&mut s, 0, &inputs[0], 1, 1_000);
        // One `use` processing (500 ms), two inputs queued or processing with their `use`
        // waiting behind them: 2 s of work in 0.5 s is 4 threads, the 4 tasks ready cap it.
        let advice = s.adaptive_target(Duration::from_millis(500));
        assert!(advice.workers >= 3, "{advice:?}");
    }

    /// Idle workers close, the emptiest first; one stays while values are held, and with
    /// memory limits only as many go as leave room for every value.
    #[test]
    fn adaptive_target_closes_idle_workers_keeping_room_for_the_values() {
        let target = Duration::from_secs(5);
        let mut s = SchedulerState::new(SchedulerConfig::default());
        for id in 0..4 {
            join_limited(&mut s, id, 1, 1_000);
        }
        // Nothing anywhere: all four may go.
        let advice = s.adaptive_target(target);
        assert_eq!((advice.workers, advice.to_close.len()), (0, 4));
        // 4 values of 300 bytes, one per worker (idle now): 1,200 bytes keep three workers'
        // 1,000-byte limits at most half full (Dask's memory ratio), not two.
        let (tasks, keys) = roots("v", 4);
        let acts = submit(&mut s, 0, tasks, &keys.iter().collect::<Vec<_>>());
        for (w, k) in computes(&acts) {
            finish(&mut s, w, &k, 300);
        }
        let advice = s.adaptive_target(target);
        assert_eq!(
            (advice.workers, advice.to_close.len()),
            (3, 1),
            "{advice:?}"
        );
        // Without limits, every worker but one holding values.
        let mut s = SchedulerState::new(SchedulerConfig::default());
        for id in 0..3 {
            join(&mut s, id, 1);
        }
        let (tasks, keys) = roots("v", 2);
        let acts = submit(&mut s, 0, tasks, &keys.iter().collect::<Vec<_>>());
        let held_by: Vec<u32> = computes(&acts).iter().map(|(w, _)| *w).collect();
        for (w, k) in computes(&acts) {
            finish(&mut s, w, &k, 10);
        }
        let advice = s.adaptive_target(target);
        assert_eq!(advice.workers, 1, "{advice:?}");
        let closed: Vec<u32> = advice.to_close.iter().map(|p| p.id.0).collect();
        // The empty worker goes first.
        let empty = (0..3)
            .find(|w| !held_by.contains(w))
            .expect("one holds nothing");
        assert_eq!(closed[0], empty, "{closed:?}");
        // A busy worker is never named by the adaptive policy; a manual scale-down names
        // it last.
        let (tasks, keys) = roots("busy", 1);
        let acts = submit(&mut s, 0, tasks, &keys.iter().collect::<Vec<_>>());
        let busy = computes(&acts)[0].0;
        let advice = s.adaptive_target(Duration::from_secs(3600));
        assert!(advice.to_close.iter().all(|p| p.id.0 != busy), "{advice:?}");
        let reply = s.handle(
            SchedulerEvent::FromClient {
                client: ClientId(0),
                msg: FromClient::WorkersToClose { request: 7, n: 2 },
            },
            Time::ZERO,
        );
        let [SchedulerAction::SendToClient(_, ToClient::AdaptiveTarget { request: 7, target })] =
            &reply[..]
        else {
            panic!("{reply:?}");
        };
        assert_eq!(target.workers, 1);
        assert!(target.to_close.iter().all(|p| p.id.0 != busy), "{target:?}");
    }

    #[test]
    fn root_tasks_wait_for_slots_in_priority_order() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 2);
        let roots: Vec<Key> = (0..10).map(|i| Key::new("r", [i])).collect();
        let tasks = roots
            .iter()
            .enumerate()
            .map(|(i, k)| spec(k, &[], 10 - i as i64))
            .collect();
        let acts = submit(&mut s, 0, tasks, &roots.iter().collect::<Vec<_>>());
        // ceil(2 * 1.1) = 3 slots, lowest priority value first.
        let sent: Vec<Key> = computes(&acts).into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            sent,
            vec![roots[9].clone(), roots[8].clone(), roots[7].clone()]
        );
        assert_eq!(s.task_status(&roots[0]), TaskStatus::Queued);
        // A slow task (100 ms, more than `root_queue_target`) frees one slot for one task.
        let acts = finish_in(&mut s, 0, &roots[9], 1, 100_000);
        assert_eq!(computes(&acts), vec![(0, roots[6].clone())]);
    }

    #[test]
    fn workers_take_root_tasks_in_runs_of_the_queue() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        join(&mut s, 1, 1);
        let roots: Vec<Key> = (0..10).map(|i| Key::new("r", [i])).collect();
        let tasks = roots
            .iter()
            .enumerate()
            .map(|(i, k)| spec(k, &[], i as i64))
            .collect();
        let acts = submit(&mut s, 0, tasks, &roots.iter().collect::<Vec<_>>());
        // Each idle thread first (worker 1 splits the queue after r0 at its middle), then
        // a second slot each (ceil(1 * 1.1) = 2), from the front of each worker's run.
        assert_eq!(
            computes(&acts),
            vec![
                (0, roots[0].clone()),
                (1, roots[5].clone()),
                (0, roots[1].clone()),
                (1, roots[6].clone()),
            ]
        );
        s.check_consistency().unwrap();
        // Worker 1 goes through its run, then takes the later half of what is left of
        // worker 0's (r2, r3, r4), keeping to it.
        let mut taken = Vec::new();
        for k in [5, 6, 7, 8, 9] {
            taken.extend(computes(&finish_in(&mut s, 1, &roots[k], 1, 100_000)));
        }
        let want: Vec<(u32, Key)> = [7, 8, 9, 3, 4].map(|i| (1, roots[i].clone())).into();
        assert_eq!(taken, want);
        let acts = finish_in(&mut s, 0, &roots[0], 1, 100_000);
        assert_eq!(computes(&acts), vec![(0, roots[2].clone())]);
        s.check_consistency().unwrap();
    }

    #[test]
    fn quick_root_groups_get_more_slots() {
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        // Delayed calls: a name each, one group ("inc").
        let roots: Vec<Key> = (0..100).map(|i| Key::named(format!("inc-{i}"))).collect();
        let tasks = roots.iter().map(|k| spec(k, &[], 0)).collect();
        let acts = submit(&mut s, 0, tasks, &roots.iter().collect::<Vec<_>>());
        // Unknown duration: ceil(1 * 1.1) = 2 slots.
        let sent: Vec<Key> = computes(&acts).into_iter().map(|(_, k)| k).collect();
        assert_eq!(sent.len(), 2);
        // Known to take 100 us: 5 ms of work per thread fills 50 slots.
        let acts = finish_in(&mut s, 0, &sent[0], 8, 100);
        assert_eq!(computes(&acts).len(), 50 - 1);
        let processing = roots
            .iter()
            .filter(|k| s.task_status(k) == TaskStatus::Processing)
            .count();
        assert_eq!(processing, 50);
        // However quick, at most MAX_ROOT_SLOTS per thread.
        let acts = finish_in(&mut s, 0, &sent[1], 8, 0);
        assert!(computes(&acts).len() <= MAX_ROOT_SLOTS);
        let queued = roots
            .iter()
            .filter(|k| s.task_status(k) == TaskStatus::Queued)
            .count();
        assert_eq!(queued, 0, "100 tasks fit in 256 slots");

        // Quick but producing a megabyte each: held ahead they would cost memory, so the
        // group keeps its two slots.
        let mut s = SchedulerState::new(SchedulerConfig::default());
        join(&mut s, 0, 1);
        let reads: Vec<Key> = (0..20).map(|i| Key::new("read-1f2e", [i])).collect();
        let tasks = reads.iter().map(|k| spec(k, &[], 0)).collect();
        let acts = submit(&mut s, 0, tasks, &reads.iter().collect::<Vec<_>>());
        let sent: Vec<Key> = computes(&acts).into_iter().map(|(_, k)| k).collect();
        assert_eq!(sent.len(), 2);
        let acts = finish_in(&mut s, 0, &sent[0], 1 << 20, 100);
        assert_eq!(computes(&acts).len(), 1);
    }
}

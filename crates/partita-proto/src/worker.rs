//! A worker's decisions as a state machine: `handle(event, now) -> actions`.
//!
//! The worker runs tasks the scheduler sends, fetches missing inputs from peers, serves its
//! values to peers, and bounds its memory. The runtime owns the values themselves; this
//! machine only knows their keys and sizes and tells the runtime what to do with them.
//!
//! Key decisions:
//! - **At most `nthreads` tasks run**; ready tasks wait in priority order (lowest first).
//!   A task asking for abstract resources (Dask's `resources=`) runs only while they are
//!   free here; such tasks wait in their own queue, whose head, while it does not fit, holds
//!   back the others of that queue (a large request is not starved by small ones) but not
//!   the tasks that ask for nothing.
//! - **Fetches are bounded** per peer and in total, and try the holders the scheduler named
//!   one after the other; when all fail the scheduler hears [`FromWorker::MissingData`] per
//!   holder and resends the task with fresh locations (or recomputes the value).
//! - **Memory thresholds like Dask's**, as fractions of `memory_limit`: managed bytes above
//!   `target` spill least-recently-used values until below it; process memory (reported by
//!   [`WorkerEvent::MemorySample`]) above `spill` spills further, and above `pause` stops new
//!   tasks until it drops. A value stays readable in memory until the runtime confirms the
//!   spill, so a task may start on an input that is being written out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use partita_core::Key;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_bytes::ByteBuf;

use crate::Time;
use crate::messages::{
    DepLocation, FromWorker, Peer, Resources, TaskFailure, ToWorker, WorkerId, WorkerMetrics,
};
use crate::scheduler::LogLevel;

/// Tunables of one worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub id: WorkerId,
    pub nthreads: u32,
    /// Bytes; 0 means unlimited (no spilling, no pausing).
    pub memory_limit: u64,
    /// Spill LRU values while managed memory is above this fraction of the limit.
    pub target: f64,
    /// Spill more while process memory is above this fraction.
    pub spill: f64,
    /// Start no new task while process memory is above this fraction.
    pub pause: f64,
    pub heartbeat_interval: Duration,
    /// Requests in flight to one peer, and in total (each may carry many keys).
    pub max_fetches_per_peer: u32,
    pub max_fetches_total: u32,
    /// One request asks a peer for more keys while their expected size stays below this
    /// (Dask's `transfer_message_bytes_limit`); a single larger value still goes alone.
    pub fetch_batch_bytes: u64,
    /// And for at most this many keys (keeps a request far below the message size limit).
    pub fetch_batch_keys: usize,
    /// The abstract resources this worker offers (Dask's `--resources`).
    pub resources: Resources,
}

impl WorkerConfig {
    /// Dask's defaults (0.6 / 0.7 / 0.8, heartbeat every second) for a worker.
    pub fn new(id: WorkerId, nthreads: u32, memory_limit: u64) -> WorkerConfig {
        WorkerConfig {
            id,
            nthreads: nthreads.max(1),
            memory_limit,
            target: 0.6,
            spill: 0.7,
            pause: 0.8,
            heartbeat_interval: Duration::from_secs(1),
            max_fetches_per_peer: 2,
            max_fetches_total: 8,
            fetch_batch_bytes: 50 << 20,
            fetch_batch_keys: 1000,
            resources: Resources::default(),
        }
    }
}

/// What happened, as the runtime tells the worker.
#[derive(Clone, Debug)]
pub enum WorkerEvent {
    FromScheduler(ToWorker),
    /// An `Execute` finished; the runtime holds the value (`nbytes` large).
    ExecuteDone {
        key: Key,
        nbytes: u64,
    },
    ExecuteFailed {
        key: Key,
        error: TaskFailure,
    },
    /// A `Fetch` arrived; the runtime holds the value.
    FetchDone {
        key: Key,
        from: WorkerId,
        nbytes: u64,
    },
    /// A `Fetch` failed (peer unreachable or without the value).
    FetchFailed {
        key: Key,
        from: WorkerId,
    },
    /// A client pushed a value (its `Scatter`); the runtime holds it unless this worker
    /// already did (then it kept the old one and says nothing). A `copy` is a further
    /// replica of a value in memory elsewhere.
    Received {
        key: Key,
        nbytes: u64,
        copy: bool,
    },
    /// A peer (or client) asks for a value on the data server.
    PeerWantsData {
        request_id: u64,
        key: Key,
    },
    /// A `Spill` is written and the value dropped from memory.
    Spilled {
        key: Key,
    },
    SpillFailed {
        key: Key,
        error: String,
    },
    /// An `Unspill` is read back into memory.
    Unspilled {
        key: Key,
        nbytes: u64,
    },
    UnspillFailed {
        key: Key,
        error: String,
    },
    /// The process's resident memory, sampled by the runtime.
    MemorySample {
        rss: u64,
    },
    /// Time passed: send a heartbeat if due ([`WorkerState::poll_timeout`]).
    Tick,
    /// The worker was asked to stop (a signal): ask the scheduler to retire it.
    Retire,
    /// The executing task `key` stops holding a thread while it waits (on tasks it
    /// submitted, say): the next ready task may start. Dask's `secede`.
    Secede {
        key: Key,
    },
    /// The seceded task `key` wants a thread again: answered with
    /// [`WorkerAction::Rejoined`] once one is free (at once if the task is not seceded).
    /// Dask's `rejoin`.
    Rejoin {
        key: Key,
    },
}

/// What the runtime must do.
#[derive(Clone, PartialEq, Debug)]
pub enum WorkerAction {
    SendToScheduler(FromWorker),
    /// Run the op in `payload` on the values of `inputs` (all in memory), then report
    /// `ExecuteDone` or `ExecuteFailed`.
    Execute {
        key: Key,
        payload: ByteBuf,
        inputs: Vec<Key>,
    },
    /// Fetch values from one peer in one request, then report `FetchDone` or
    /// `FetchFailed` for each key (every key exactly once).
    Fetch {
        keys: Vec<Key>,
        from: Peer,
        /// Their expected size in total.
        nbytes: u64,
    },
    /// Answer data request `request_id` with the value.
    SendData {
        request_id: u64,
        key: Key,
        nbytes: u64,
    },
    /// Answer data request `request_id`: not here.
    DataMissing {
        request_id: u64,
        key: Key,
    },
    /// Write the value to disk and drop it from memory, then report `Spilled`.
    Spill {
        key: Key,
    },
    /// Read a spilled value back, then report `Unspilled`.
    Unspill {
        key: Key,
    },
    /// Remove a spilled value's file.
    DeleteSpilled {
        key: Key,
    },
    /// Drop a value held in memory.
    DropValue {
        key: Key,
    },
    /// The scheduler retired this worker: stop (exit for its nanny to start a fresh
    /// process when `restart`).
    Stop {
        reason: String,
        restart: bool,
    },
    Log(LogLevel, String),
    /// The task that asked to rejoin holds a thread again: let it go on.
    Rejoined {
        key: Key,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Some inputs are being fetched.
    Fetching,
    Ready,
    /// Holding a thread while spilled inputs are read back.
    LoadingInputs,
    Executing,
}

#[derive(Debug)]
struct WorkerTask {
    payload: ByteBuf,
    priority: i64,
    seq: u64,
    deps: Vec<Key>,
    phase: Phase,
    started: Time,
    /// The scheduler freed it while executing: drop the result, report nothing.
    released: bool,
    /// What it holds while it runs (taken from `WorkerState::free_resources`).
    resources: Resources,
    /// Executing without holding a thread ([`WorkerEvent::Secede`]).
    seceded: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Memory,
    Spilling,
    Spilled,
    Unspilling,
}

#[derive(Debug)]
struct Stored {
    nbytes: u64,
    place: Place,
    /// Position in the LRU order while in memory.
    lru: u64,
    /// Inputs of a task waiting for others to be unspilled must not be spilled meanwhile.
    pinned: u32,
    /// Freed while being spilled or unspilled: remove once the runtime confirms.
    free_when_settled: bool,
}

#[derive(Debug)]
struct Fetch {
    nbytes: u64,
    /// Holders not yet tried, in preference order.
    untried: Vec<Peer>,
    failed: Vec<WorkerId>,
    in_flight: Option<WorkerId>,
    /// The request it travels in, while in flight.
    batch: u64,
    priority: i64,
    seq: u64,
}

/// One worker's tasks, values, fetches and memory.
#[derive(Debug)]
pub struct WorkerState {
    config: WorkerConfig,
    tasks: FxHashMap<Key, WorkerTask>,
    data: FxHashMap<Key, Stored>,
    lru: BTreeMap<u64, Key>,
    clock: u64,
    ready: BTreeSet<(i64, u64, Key)>,
    /// Ready tasks that ask for resources, in the same order.
    constrained: BTreeSet<(i64, u64, Key)>,
    /// The resources not held by running tasks.
    free_resources: Resources,
    /// Tasks executing or loading inputs: each holds a thread.
    running: u32,
    /// Those of them holding resources: with none, the free resources are reset to the
    /// whole offer (rounding never accumulates). Seceded tasks count here, not in
    /// `running`.
    holding: u32,
    /// Seceded tasks waiting for a thread again, first come first served, ahead of any
    /// ready task.
    rejoining: VecDeque<Key>,
    fetches: FxHashMap<Key, Fetch>,
    /// Fetches waiting to start, most urgent first ...
    fetch_queue: BTreeSet<(i64, u64, Key)>,
    /// ... and the same entries by each untried holder, so starting fetches looks only at
    /// the heads of peers with room (never rescans a long queue for one busy peer).
    fetch_queue_by_peer: BTreeMap<WorkerId, BTreeSet<(i64, u64, Key)>>,
    /// Requests in flight per peer ...
    in_flight: BTreeMap<WorkerId, u32>,
    /// ... and the keys of each request still to be reported.
    batches: FxHashMap<u64, u32>,
    next_batch: u64,
    /// Value key -> tasks waiting for it to arrive or be unspilled.
    waiting_for: FxHashMap<Key, BTreeSet<Key>>,
    /// Value key -> peer requests waiting for it to be unspilled.
    peer_requests: FxHashMap<Key, Vec<u64>>,
    /// Values the scheduler asked this worker to fetch and keep (replicas, hand-offs),
    /// whether or not a task here waits for them.
    replicas: FxHashSet<Key>,
    /// Asked the scheduler to retire it.
    retiring: bool,
    managed: u64,
    spilled: u64,
    spilling: u64,
    rss: u64,
    paused: bool,
    next_heartbeat: Time,
    out: Vec<WorkerAction>,
}

impl WorkerState {
    /// A worker starting at `now`; its first heartbeat is due at once.
    pub fn new(config: WorkerConfig, now: Time) -> WorkerState {
        WorkerState {
            free_resources: config.resources.clone(),
            constrained: BTreeSet::new(),
            config,
            tasks: FxHashMap::default(),
            data: FxHashMap::default(),
            lru: BTreeMap::new(),
            clock: 0,
            ready: BTreeSet::new(),
            running: 0,
            holding: 0,
            rejoining: VecDeque::new(),
            fetches: FxHashMap::default(),
            fetch_queue: BTreeSet::new(),
            fetch_queue_by_peer: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            batches: FxHashMap::default(),
            next_batch: 0,
            waiting_for: FxHashMap::default(),
            peer_requests: FxHashMap::default(),
            replicas: FxHashSet::default(),
            retiring: false,
            managed: 0,
            spilled: 0,
            spilling: 0,
            rss: 0,
            paused: false,
            next_heartbeat: now,
            out: Vec::new(),
        }
    }

    /// This worker's id.
    pub fn id(&self) -> WorkerId {
        self.config.id
    }

    /// Load and memory, as sent in heartbeats.
    pub fn metrics(&self) -> WorkerMetrics {
        WorkerMetrics {
            managed_bytes: self.managed,
            spilled_bytes: self.spilled,
            rss: self.rss,
            executing: self.running,
            pending: u32::try_from(self.tasks.len())
                .unwrap_or(u32::MAX)
                .saturating_sub(self.running),
            paused: self.paused,
        }
    }

    /// Is a value held, in memory or spilled?
    pub fn holds(&self, key: &Key) -> bool {
        self.data.contains_key(key)
    }

    /// Is a value spilled (or being read back)?
    pub fn is_spilled(&self, key: &Key) -> bool {
        self.data
            .get(key)
            .is_some_and(|s| matches!(s.place, Place::Spilled | Place::Unspilling))
    }

    /// When the next heartbeat is due: deliver [`WorkerEvent::Tick`] then.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_heartbeat)
    }

    /// Apply one event; returns what the runtime must do, in order.
    pub fn handle(&mut self, event: WorkerEvent, now: Time) -> Vec<WorkerAction> {
        match event {
            WorkerEvent::FromScheduler(msg) => self.scheduler_message(msg),
            WorkerEvent::ExecuteDone { key, nbytes } => self.execute_done(key, Ok(nbytes), now),
            WorkerEvent::ExecuteFailed { key, error } => self.execute_done(key, Err(error), now),
            WorkerEvent::FetchDone { key, from, nbytes } => self.fetch_done(key, from, nbytes),
            WorkerEvent::FetchFailed { key, from } => self.fetch_failed(key, from),
            WorkerEvent::Received { key, nbytes, copy } => self.received(key, nbytes, copy),
            WorkerEvent::PeerWantsData { request_id, key } => self.peer_wants(request_id, key),
            WorkerEvent::Spilled { key } => self.spilled(key, true),
            WorkerEvent::SpillFailed { key, error } => {
                self.log(LogLevel::Warn, format!("spilling {key} failed: {error}"));
                self.spilled(key, false);
            }
            WorkerEvent::Unspilled { key, nbytes } => self.unspilled(key, nbytes, now),
            WorkerEvent::UnspillFailed { key, error } => self.unspill_failed(key, error),
            WorkerEvent::MemorySample { rss } => {
                self.rss = rss;
                self.check_memory(true);
            }
            WorkerEvent::Tick => {
                if now >= self.next_heartbeat {
                    let hb = FromWorker::Heartbeat(self.metrics());
                    self.out.push(WorkerAction::SendToScheduler(hb));
                    self.next_heartbeat = now + self.config.heartbeat_interval;
                }
            }
            WorkerEvent::Retire => {
                if !std::mem::replace(&mut self.retiring, true) {
                    self.send(FromWorker::Retire);
                }
            }
            WorkerEvent::Secede { key } => self.secede(key),
            WorkerEvent::Rejoin { key } => self.rejoin(key),
        }
        self.check_memory(false);
        self.start_fetches();
        self.start_tasks(now);
        std::mem::take(&mut self.out)
    }

    fn log(&mut self, level: LogLevel, text: String) {
        self.out.push(WorkerAction::Log(level, text));
    }

    fn send(&mut self, msg: FromWorker) {
        self.out.push(WorkerAction::SendToScheduler(msg));
    }

    fn scheduler_message(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::ComputeTask {
                key,
                payload,
                priority,
                deps,
                resources,
            } => self.compute_task(key, payload, priority, deps, resources),
            ToWorker::FreeKeys { keys } => {
                for key in keys {
                    self.free(key);
                }
            }
            ToWorker::StealRequest { key } => {
                let stealable = (self.tasks.get(&key))
                    .is_some_and(|t| matches!(t.phase, Phase::Fetching | Phase::Ready));
                if stealable {
                    self.drop_task(&key);
                }
                self.send(FromWorker::StealResponse {
                    key,
                    stolen: stealable,
                });
            }
            ToWorker::AcquireReplicas { keys } => {
                for dep in keys {
                    self.acquire(dep);
                }
            }
            ToWorker::Close { reason } => self.out.push(WorkerAction::Stop {
                reason,
                restart: false,
            }),
            ToWorker::Restart => self.out.push(WorkerAction::Stop {
                reason: "the cluster is restarting".into(),
                restart: true,
            }),
        }
    }

    /// Fetch `dep` to keep it (a replica or a hand-off); one held already is reported
    /// at once, so the scheduler's acquisition settles.
    fn acquire(&mut self, dep: DepLocation) {
        if let Some(s) = self.data.get_mut(&dep.key) {
            // Being freed (a spill or unspill in flight when FreeKeys came): kept after
            // all, so the scheduler may count on this copy.
            s.free_when_settled = false;
            let keys = vec![(dep.key, s.nbytes)];
            self.send(FromWorker::AddKeys { keys });
            return;
        }
        self.replicas.insert(dep.key.clone());
        self.clock += 1;
        // After the inputs of tasks (lower runs first).
        self.want_fetch(&dep, i64::MAX, self.clock);
    }

    /// Fetch `dep` from the holders it names (merged with a fetch of it under way), at
    /// `priority` or more urgent.
    fn want_fetch(&mut self, dep: &DepLocation, priority: i64, seq: u64) {
        let me = self.config.id;
        let holders: Vec<Peer> = dep.who_has.iter().filter(|p| p.id != me).cloned().collect();
        self.fetches
            .entry(dep.key.clone())
            .or_insert_with(|| Fetch {
                nbytes: dep.nbytes,
                untried: Vec::new(),
                failed: Vec::new(),
                in_flight: None,
                batch: 0,
                priority,
                seq,
            });
        // Out of the queues while its holders and priority change.
        self.unqueue_fetch(&dep.key);
        let fetch = self.fetches.get_mut(&dep.key).expect("inserted above");
        // Fresh locations from the scheduler supersede earlier failures.
        for p in holders {
            if !fetch.untried.contains(&p) && fetch.in_flight != Some(p.id) {
                fetch.failed.retain(|f| *f != p.id);
                fetch.untried.push(p);
            }
        }
        if fetch.in_flight.is_none() {
            fetch.priority = fetch.priority.min(priority);
            self.queue_fetch(&dep.key);
        }
    }

    fn compute_task(
        &mut self,
        key: Key,
        payload: ByteBuf,
        priority: i64,
        deps: Vec<DepLocation>,
        resources: Resources,
    ) {
        if let Some(t) = self.tasks.get_mut(&key) {
            // Freed and sent again while still running: keep the run, report its result
            // (and, to the scheduler that counts it afresh, that it holds no thread).
            t.released = false;
            if t.seceded {
                self.send(FromWorker::Seceded { key });
            }
            return;
        }
        if self.keep_held(&key) {
            let nbytes = self.data[&key].nbytes;
            self.send(FromWorker::TaskFinished {
                key,
                nbytes,
                compute_micros: 0,
            });
            return;
        }
        self.clock += 1;
        let seq = self.clock;
        let mut missing = false;
        for dep in &deps {
            if self.keep_held(&dep.key) {
                continue;
            }
            missing = true;
            self.waiting_for
                .entry(dep.key.clone())
                .or_default()
                .insert(key.clone());
            self.want_fetch(dep, priority, seq);
        }
        let phase = if missing {
            Phase::Fetching
        } else {
            Phase::Ready
        };
        let deps = deps.into_iter().map(|d| d.key).collect();
        self.tasks.insert(
            key.clone(),
            WorkerTask {
                payload,
                priority,
                seq,
                deps,
                phase,
                started: Time::ZERO,
                released: false,
                seceded: false,
                resources,
            },
        );
        if !missing {
            self.enqueue(key);
        }
    }

    /// Whether `key`'s value is here to stay. One being freed (a spill or unspill in flight
    /// when FreeKeys came, as for a copy rebalanced away) is kept after all, and the
    /// scheduler told this worker holds it again, so it is freed with the key.
    fn keep_held(&mut self, key: &Key) -> bool {
        let Some(s) = self.data.get_mut(key) else {
            return false;
        };
        if s.free_when_settled {
            s.free_when_settled = false;
            let keys = vec![(key.clone(), s.nbytes)];
            self.send(FromWorker::AddKeys { keys });
        }
        true
    }

    /// A task whose inputs are here waits for a thread (and its resources).
    fn enqueue(&mut self, key: Key) {
        let t = &self.tasks[&key];
        let queue = match t.resources.is_empty() {
            true => &mut self.ready,
            false => &mut self.constrained,
        };
        queue.insert((t.priority, t.seq, key));
    }

    /// An executing task gives its thread back while it waits: the scheduler stops
    /// counting it as load too.
    fn secede(&mut self, key: Key) {
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        if t.phase != Phase::Executing || t.seceded {
            return;
        }
        t.seceded = true;
        self.running -= 1;
        self.send(FromWorker::Seceded { key });
    }

    /// A seceded task wants a thread back: now if one is free and nobody asked before it,
    /// else when one frees ([`WorkerState::start_tasks`]).
    fn rejoin(&mut self, key: Key) {
        if self.tasks.get(&key).is_none_or(|t| !t.seceded) {
            // Not seceded (or gone): nothing to wait for.
            self.out.push(WorkerAction::Rejoined { key });
            return;
        }
        if !self.rejoining.contains(&key) {
            self.rejoining.push_back(key);
        }
    }

    /// A task stopped holding a thread (unless seceded) and its resources.
    fn release_slot(&mut self, resources: &Resources, seceded: bool) {
        if !seceded {
            self.running -= 1;
        }
        if !resources.is_empty() {
            self.holding -= 1;
            match self.holding {
                0 => self.free_resources = self.config.resources.clone(),
                _ => self.free_resources.give(resources, &self.config.resources),
            }
        }
    }

    /// Remove a task that has not finished (freed or stolen), giving back its thread.
    fn drop_task(&mut self, key: &Key) {
        let Some(t) = self.tasks.get(key) else { return };
        if t.phase == Phase::Executing {
            self.tasks.get_mut(key).expect("checked").released = true;
            return;
        }
        let t = self.tasks.remove(key).expect("checked");
        let entry = (t.priority, t.seq, key.clone());
        if !self.ready.remove(&entry) {
            self.constrained.remove(&entry);
        }
        if t.phase == Phase::LoadingInputs {
            self.release_slot(&t.resources, false);
            for d in &t.deps {
                if let Some(s) = self.data.get_mut(d) {
                    s.pinned = s.pinned.saturating_sub(1);
                }
            }
        }
        for d in &t.deps {
            if let Some(w) = self.waiting_for.get_mut(d) {
                w.remove(key);
                if w.is_empty() {
                    self.waiting_for.remove(d);
                    // Nobody needs a fetch that has not started (unless it is a replica).
                    if !self.replicas.contains(d)
                        && self.fetches.get(d).is_some_and(|f| f.in_flight.is_none())
                    {
                        self.unqueue_fetch(d);
                        self.fetches.remove(d);
                    }
                }
            }
        }
    }

    fn free(&mut self, key: Key) {
        self.drop_task(&key);
        if self.replicas.remove(&key)
            && !self.waiting_for.contains_key(&key)
            && self
                .fetches
                .get(&key)
                .is_some_and(|f| f.in_flight.is_none())
        {
            self.unqueue_fetch(&key);
            self.fetches.remove(&key);
        }
        let Some(s) = self.data.get_mut(&key) else {
            return;
        };
        match s.place {
            Place::Spilling | Place::Unspilling => s.free_when_settled = true,
            Place::Memory => {
                let s = self.data.remove(&key).expect("checked");
                self.managed -= s.nbytes;
                self.lru.remove(&s.lru);
                self.out.push(WorkerAction::DropValue { key: key.clone() });
            }
            Place::Spilled => {
                let s = self.data.remove(&key).expect("checked");
                self.spilled -= s.nbytes;
                self.out
                    .push(WorkerAction::DeleteSpilled { key: key.clone() });
            }
        }
    }

    fn touch(&mut self, key: &Key) {
        self.clock += 1;
        if let Some(s) = self.data.get_mut(key)
            && s.place == Place::Memory
        {
            self.lru.remove(&s.lru);
            s.lru = self.clock;
            self.lru.insert(self.clock, key.clone());
        }
    }

    fn store(&mut self, key: Key, nbytes: u64) {
        self.managed += nbytes;
        let stored = Stored {
            nbytes,
            place: Place::Memory,
            lru: 0,
            pinned: 0,
            free_when_settled: false,
        };
        self.data.insert(key.clone(), stored);
        self.touch(&key);
    }

    fn execute_done(&mut self, key: Key, result: Result<u64, TaskFailure>, now: Time) {
        if self
            .tasks
            .get(&key)
            .is_none_or(|t| t.phase != Phase::Executing)
        {
            self.log(
                LogLevel::Warn,
                format!("result for {key}, which is not executing, ignored"),
            );
            if result.is_ok() {
                self.out.push(WorkerAction::DropValue { key });
            }
            return;
        }
        let t = self.tasks.remove(&key).expect("checked");
        self.release_slot(&t.resources, t.seceded);
        if t.seceded {
            // Finished while waiting to rejoin (the runtime let it go, say, as it stopped).
            self.rejoining.retain(|k| *k != key);
        }
        match result {
            Ok(_) if t.released => self.out.push(WorkerAction::DropValue { key }),
            Ok(nbytes) => {
                self.store(key.clone(), nbytes);
                self.made_while_fetching(&key);
                let compute_micros = now.since(t.started).as_micros() as u64;
                self.send(FromWorker::TaskFinished {
                    key,
                    nbytes,
                    compute_micros,
                });
            }
            Err(_) if t.released => {}
            Err(error) => self.send(FromWorker::TaskErred { key, error }),
        }
    }

    /// A scattered value arrived: held like a result, reported as one (the scheduler has
    /// it processing here), or, for a copy, as a replica like a fetched value. A key this
    /// worker already computes or holds keeps what it has.
    fn received(&mut self, key: Key, nbytes: u64, copy: bool) {
        if self.data.contains_key(&key) || self.tasks.contains_key(&key) {
            self.log(
                LogLevel::Warn,
                format!("pushed value {key} ignored: this worker already has it"),
            );
            self.out.push(WorkerAction::DropValue { key });
            return;
        }
        self.store(key.clone(), nbytes);
        if copy {
            self.send(FromWorker::AddKeys {
                keys: vec![(key, nbytes)],
            });
            return;
        }
        self.send(FromWorker::TaskFinished {
            key,
            nbytes,
            compute_micros: 0,
        });
    }

    fn fetch_done(&mut self, key: Key, from: WorkerId, nbytes: u64) {
        let ours = self
            .fetches
            .get(&key)
            .is_some_and(|f| f.in_flight == Some(from));
        if self
            .data
            .get(&key)
            .is_some_and(|s| s.place == Place::Memory)
        {
            // Held here already (made here while the fetch was out): the runtime's copy is
            // that value, which must stay; only the fetch is over.
            if ours {
                let batch = self.fetches.remove(&key).map_or(0, |f| f.batch);
                self.settle_fetch(batch, from);
            }
            if self.replicas.remove(&key) {
                let nbytes = self.data[&key].nbytes;
                self.send(FromWorker::AddKeys {
                    keys: vec![(key, nbytes)],
                });
            }
            return;
        }
        if !ours || self.data.contains_key(&key) {
            self.out.push(WorkerAction::DropValue { key });
            return;
        }
        let batch = self.fetches.remove(&key).map_or(0, |f| f.batch);
        self.settle_fetch(batch, from);
        let waiting = self.waiting_for.remove(&key).unwrap_or_default();
        let replica = self.replicas.remove(&key);
        if waiting.is_empty() && !replica {
            self.out.push(WorkerAction::DropValue { key });
            return;
        }
        self.store(key.clone(), nbytes);
        self.send(FromWorker::AddKeys {
            keys: vec![(key, nbytes)],
        });
        for t in waiting {
            self.maybe_ready(&t);
        }
    }

    /// `key` was just made here although tasks here wait for a fetch of it (the scheduler
    /// had it recomputed here after its holder was lost): they run on this copy, and a
    /// fetch not yet sent is dropped (one in flight is settled when it answers).
    fn made_while_fetching(&mut self, key: &Key) {
        let Some(waiting) = self.waiting_for.remove(key) else {
            return;
        };
        if self.fetches.get(key).is_some_and(|f| f.in_flight.is_none()) {
            self.unqueue_fetch(key);
            self.fetches.remove(key);
        }
        for t in waiting {
            self.maybe_ready(&t);
        }
    }

    fn maybe_ready(&mut self, key: &Key) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        if t.phase == Phase::Fetching && t.deps.iter().all(|d| self.data.contains_key(d)) {
            t.phase = Phase::Ready;
            self.enqueue(key.clone());
        }
    }

    /// One key of request `batch` to `peer` is reported; the last one frees the request's
    /// slot.
    fn settle_fetch(&mut self, batch: u64, peer: WorkerId) {
        let Some(left) = self.batches.get_mut(&batch) else {
            return;
        };
        *left -= 1;
        if *left > 0 {
            return;
        }
        self.batches.remove(&batch);
        if let Some(n) = self.in_flight.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&peer);
            }
        }
    }

    fn fetch_failed(&mut self, key: Key, from: WorkerId) {
        let Some(f) = self.fetches.get_mut(&key) else {
            return;
        };
        if f.in_flight != Some(from) {
            return;
        }
        f.in_flight = None;
        f.failed.push(from);
        let untried = !f.untried.is_empty();
        let batch = f.batch;
        self.settle_fetch(batch, from);
        if !self.waiting_for.contains_key(&key) && !self.replicas.contains(&key) {
            self.fetches.remove(&key);
        } else if untried {
            self.queue_fetch(&key);
        } else {
            // Every holder failed: the scheduler sorts out where the value is now.
            self.replicas.remove(&key);
            let f = self.fetches.remove(&key).expect("checked");
            for w in f.failed {
                self.send(FromWorker::MissingData {
                    key: key.clone(),
                    from_worker: w,
                });
            }
        }
    }

    /// Put a fetch that is not in flight in the queues (no-op if it is there already).
    fn queue_fetch(&mut self, key: &Key) {
        let Some(f) = self.fetches.get(key) else {
            return;
        };
        let entry = (f.priority, f.seq, key.clone());
        if self.fetch_queue.insert(entry.clone()) {
            for p in &f.untried {
                (self.fetch_queue_by_peer.entry(p.id).or_default()).insert(entry.clone());
            }
        }
    }

    /// Take a fetch out of the queues (no-op if it is not queued).
    fn unqueue_fetch(&mut self, key: &Key) {
        let Some(f) = self.fetches.get(key) else {
            return;
        };
        let entry = (f.priority, f.seq, key.clone());
        if self.fetch_queue.remove(&entry) {
            for p in &f.untried {
                if let Some(q) = self.fetch_queue_by_peer.get_mut(&p.id) {
                    q.remove(&entry);
                    if q.is_empty() {
                        self.fetch_queue_by_peer.remove(&p.id);
                    }
                }
            }
        }
    }

    /// Start queued fetches, most urgent first, each from its least busy holder with room,
    /// within the per-peer and total limits.
    fn start_fetches(&mut self) {
        let total: u32 = self.in_flight.values().sum();
        let mut budget = self.config.max_fetches_total.saturating_sub(total);
        let busy = |in_flight: &BTreeMap<WorkerId, u32>, p: WorkerId| {
            in_flight.get(&p).copied().unwrap_or(0)
        };
        while budget > 0 {
            // The most urgent fetch some holder with room can serve: the smallest head
            // among the queues of peers with room.
            let best = (self.fetch_queue_by_peer.iter())
                .filter(|(p, _)| busy(&self.in_flight, **p) < self.config.max_fetches_per_peer)
                .filter_map(|(_, q)| q.first())
                .min()
                .map(|(_, _, k)| k.clone());
            let Some(key) = best else {
                break;
            };
            // The least busy holder with room, in the scheduler's order on ties.
            let choice = (self.fetches[&key].untried.iter().enumerate())
                .map(|(i, p)| (busy(&self.in_flight, p.id), i))
                .filter(|(n, _)| *n < self.config.max_fetches_per_peer)
                .min();
            let Some((_, i)) = choice else {
                break;
            };
            let peer = self.fetches[&key].untried[i].clone();
            // More of what this peer holds, most urgent first, while the request stays
            // small: one round trip instead of one per key.
            let mut keys = vec![key];
            let mut nbytes = self.fetches[&keys[0]].nbytes;
            if let Some(queue) = self.fetch_queue_by_peer.get(&peer.id) {
                for (_, _, k) in queue {
                    if keys.len() >= self.config.fetch_batch_keys {
                        break;
                    }
                    if k == &keys[0] {
                        continue;
                    }
                    let size = self.fetches[k].nbytes;
                    if nbytes.saturating_add(size) > self.config.fetch_batch_bytes {
                        break;
                    }
                    nbytes += size;
                    keys.push(k.clone());
                }
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            for k in &keys {
                self.unqueue_fetch(k);
                let f = self.fetches.get_mut(k).expect("queued fetches exist");
                f.untried.retain(|p| p.id != peer.id);
                f.in_flight = Some(peer.id);
                f.batch = batch;
            }
            self.batches.insert(batch, keys.len() as u32);
            *self.in_flight.entry(peer.id).or_default() += 1;
            budget -= 1;
            self.out.push(WorkerAction::Fetch {
                keys,
                from: peer,
                nbytes,
            });
        }
    }

    /// May a task start now? Not while paused, unless nothing can bring memory down any
    /// more (no task running, no spill in flight, nothing left to spill): the excess is
    /// then unmanaged memory (allocator caches, libraries), waiting would never end, so
    /// tasks run one at a time.
    fn may_start(&self) -> bool {
        !self.paused
            || (self.running == 0
                && self.spilling == 0
                && !(self.lru.values()).any(|k| self.data.get(k).is_some_and(|s| s.pinned == 0)))
    }

    fn start_tasks(&mut self, now: Time) {
        // Seceded tasks coming back come first: they were running already (and may
        // hold memory that finishing them frees), so a pause does not hold them back.
        while self.running < self.config.nthreads {
            let Some(key) = self.rejoining.pop_front() else {
                break;
            };
            if let Some(t) = self.tasks.get_mut(&key)
                && t.seceded
            {
                t.seceded = false;
                self.running += 1;
            }
            self.out.push(WorkerAction::Rejoined { key });
        }
        while self.may_start() && self.running < self.config.nthreads {
            let Some(key) = self.next_ready() else {
                return;
            };
            let deps = self.tasks[&key].deps.clone();
            if let Some(gone) = deps.iter().find(|d| !self.data.contains_key(*d)) {
                // An input was freed after the task became ready; the MissingData sent
                // then makes the scheduler resend the task with fresh locations.
                let gone = gone.clone();
                self.waiting_for
                    .entry(gone)
                    .or_default()
                    .insert(key.clone());
                self.tasks.get_mut(&key).expect("ready tasks exist").phase = Phase::Fetching;
                continue;
            }
            self.running += 1;
            let resources = &self.tasks[&key].resources;
            if !resources.is_empty() {
                self.holding += 1;
                self.free_resources.take(resources);
            }
            let mut loading = false;
            for d in &deps {
                let Some(s) = self.data.get_mut(d) else {
                    continue;
                };
                s.pinned += 1;
                if s.place == Place::Spilled {
                    s.place = Place::Unspilling;
                    self.out.push(WorkerAction::Unspill { key: d.clone() });
                }
                if s.place == Place::Unspilling {
                    loading = true;
                    self.waiting_for
                        .entry(d.clone())
                        .or_default()
                        .insert(key.clone());
                }
            }
            self.tasks.get_mut(&key).expect("ready tasks exist").phase = Phase::LoadingInputs;
            if !loading {
                self.execute(key, now);
            }
        }
    }

    /// The ready task to start next: the first in priority order of those asking for
    /// nothing and the head of those asking for resources, if what it asks for is free.
    fn next_ready(&mut self) -> Option<Key> {
        let fits = (self.constrained.first())
            .filter(|(_, _, k)| self.free_resources.nearly_covers(&self.tasks[k].resources));
        let take_constrained = match (fits, self.ready.first()) {
            (Some(c), Some(r)) => c < r,
            (fits, _) => fits.is_some(),
        };
        let queue = match take_constrained {
            true => &mut self.constrained,
            false => &mut self.ready,
        };
        queue.pop_first().map(|(_, _, key)| key)
    }

    /// Emit `Execute` for a task whose inputs are all in memory.
    fn execute(&mut self, key: Key, now: Time) {
        let t = self.tasks.get_mut(&key).expect("loading tasks exist");
        t.phase = Phase::Executing;
        t.started = now;
        let inputs = t.deps.clone();
        let payload = t.payload.clone();
        for d in &inputs {
            if let Some(s) = self.data.get_mut(d) {
                s.pinned = s.pinned.saturating_sub(1);
            }
            self.touch(d);
        }
        self.out.push(WorkerAction::Execute {
            key,
            payload,
            inputs,
        });
    }

    fn peer_wants(&mut self, request_id: u64, key: Key) {
        let Some(s) = self.data.get_mut(&key) else {
            self.out.push(WorkerAction::DataMissing { request_id, key });
            return;
        };
        match s.place {
            Place::Memory | Place::Spilling => {
                let nbytes = s.nbytes;
                self.touch(&key);
                self.out.push(WorkerAction::SendData {
                    request_id,
                    key,
                    nbytes,
                });
            }
            Place::Spilled | Place::Unspilling => {
                if s.place == Place::Spilled {
                    s.place = Place::Unspilling;
                    self.out.push(WorkerAction::Unspill { key: key.clone() });
                }
                self.peer_requests.entry(key).or_default().push(request_id);
            }
        }
    }

    fn spilled(&mut self, key: Key, ok: bool) {
        let Some(s) = self.data.get_mut(&key) else {
            return;
        };
        if s.place != Place::Spilling {
            return;
        }
        self.spilling -= s.nbytes;
        if ok {
            s.place = Place::Spilled;
            self.managed -= s.nbytes;
            self.spilled += s.nbytes;
            if s.free_when_settled {
                self.spilled -= s.nbytes;
                self.data.remove(&key);
                self.out.push(WorkerAction::DeleteSpilled { key });
            } else if s.pinned > 0 {
                // A task started loading its inputs while this one was being written out:
                // it needs the value back.
                s.place = Place::Unspilling;
                self.out.push(WorkerAction::Unspill { key: key.clone() });
                let loading: Vec<Key> = (self.tasks.iter())
                    .filter(|(_, t)| t.phase == Phase::LoadingInputs && t.deps.contains(&key))
                    .map(|(k, _)| k.clone())
                    .collect();
                self.waiting_for.entry(key).or_default().extend(loading);
            }
        } else {
            s.place = Place::Memory;
            if s.free_when_settled {
                self.managed -= s.nbytes;
                self.data.remove(&key);
                self.out.push(WorkerAction::DropValue { key });
            } else {
                // Most recent: other values are tried first next time.
                self.touch(&key);
            }
        }
    }

    fn unspilled(&mut self, key: Key, nbytes: u64, now: Time) {
        let Some(s) = self.data.get_mut(&key) else {
            return;
        };
        if s.place != Place::Unspilling {
            return;
        }
        self.spilled -= s.nbytes;
        s.nbytes = nbytes;
        s.place = Place::Memory;
        self.managed += nbytes;
        self.touch(&key);
        for request_id in self.peer_requests.remove(&key).unwrap_or_default() {
            self.out.push(WorkerAction::SendData {
                request_id,
                key: key.clone(),
                nbytes,
            });
        }
        let waiting = self.waiting_for.remove(&key).unwrap_or_default();
        for t in waiting {
            let loaded = self.tasks.get(&t).is_some_and(|task| {
                task.phase == Phase::LoadingInputs
                    && task.deps.iter().all(|d| {
                        self.data
                            .get(d)
                            .is_some_and(|s| matches!(s.place, Place::Memory | Place::Spilling))
                    })
            });
            if loaded {
                self.execute(t, now);
            }
        }
        if self.data.get(&key).is_some_and(|s| s.free_when_settled) {
            let s = self.data.remove(&key).expect("checked");
            self.managed -= s.nbytes;
            self.lru.remove(&s.lru);
            self.out.push(WorkerAction::DropValue { key });
        }
    }

    fn unspill_failed(&mut self, key: Key, error: String) {
        let Some(s) = self.data.get(&key) else { return };
        if s.place != Place::Unspilling {
            return;
        }
        self.log(
            LogLevel::Error,
            format!("reading spilled {key} back failed: {error}"),
        );
        let s = self.data.remove(&key).expect("checked");
        self.spilled -= s.nbytes;
        for request_id in self.peer_requests.remove(&key).unwrap_or_default() {
            self.out.push(WorkerAction::DataMissing {
                request_id,
                key: key.clone(),
            });
        }
        // The value is lost here; the scheduler resets our tasks reading it.
        let me = self.config.id;
        self.send(FromWorker::MissingData {
            key,
            from_worker: me,
        });
    }

    /// Spill and pause as the thresholds say; process memory counts only when freshly
    /// sampled, since spills requested after a sample are not reflected in it.
    fn check_memory(&mut self, fresh_sample: bool) {
        let limit = self.config.memory_limit as f64;
        if limit == 0.0 {
            return;
        }
        let target = (limit * self.config.target) as u64;
        let mut to_free = self
            .managed
            .saturating_sub(self.spilling)
            .saturating_sub(target);
        if fresh_sample && self.rss as f64 > limit * self.config.spill {
            to_free = to_free.max(
                self.rss
                    .saturating_sub(target)
                    .saturating_sub(self.spilling),
            );
        }
        let mut candidates = Vec::new();
        for key in self.lru.values() {
            if to_free == 0 {
                break;
            }
            let s = &self.data[key];
            if s.pinned == 0 {
                to_free = to_free.saturating_sub(s.nbytes);
                candidates.push(key.clone());
            }
        }
        for key in candidates {
            let s = self.data.get_mut(&key).expect("lru keys are held");
            s.place = Place::Spilling;
            self.spilling += s.nbytes;
            self.lru.remove(&s.lru);
            self.out.push(WorkerAction::Spill { key });
        }
        let pause = self.rss as f64 > limit * self.config.pause;
        if pause != self.paused {
            self.paused = pause;
            let (what, mb) = (if pause { "paused" } else { "resumed" }, self.rss >> 20);
            self.log(
                LogLevel::Warn,
                format!("{} {what} at {mb} MiB process memory", self.config.id),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn k(i: u32) -> Key {
        Key::new("v", [i])
    }

    fn peer(i: u32) -> Peer {
        Peer {
            id: WorkerId(i),
            address: format!("w{i}"),
        }
    }

    fn compute(key: Key, priority: i64, deps: Vec<(Key, Vec<u32>)>) -> WorkerEvent {
        let deps = (deps.into_iter())
            .map(|(key, who)| DepLocation {
                key,
                who_has: who.into_iter().map(peer).collect(),
                nbytes: MIB,
            })
            .collect();
        WorkerEvent::FromScheduler(ToWorker::ComputeTask {
            key,
            payload: ByteBuf::new(),
            priority,
            deps,
            resources: Resources::default(),
        })
    }

    fn worker(nthreads: u32, limit: u64) -> WorkerState {
        WorkerState::new(WorkerConfig::new(WorkerId(0), nthreads, limit), Time::ZERO)
    }

    /// Run `key` (no inputs) to completion with an `nbytes` result.
    fn produce(w: &mut WorkerState, key: Key, nbytes: u64) -> Vec<WorkerAction> {
        w.handle(compute(key.clone(), 0, vec![]), Time::ZERO);
        w.handle(WorkerEvent::ExecuteDone { key, nbytes }, Time::ZERO)
    }

    fn executes(acts: &[WorkerAction]) -> Vec<Key> {
        (acts.iter())
            .filter_map(|a| match a {
                WorkerAction::Execute { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tasks_asking_for_resources_run_only_while_they_are_free() {
        let gpus = |n: f64| Resources::new([("GPU", n)]).unwrap();
        let mut config = WorkerConfig::new(WorkerId(0), 4, 0);
        config.resources = gpus(2.0);
        let mut w = WorkerState::new(config, Time::ZERO);
        let asking = |key: Key, priority: i64, n: f64| match compute(key, priority, vec![]) {
            WorkerEvent::FromScheduler(ToWorker::ComputeTask {
                key,
                payload,
                priority,
                deps,
                ..
            }) => WorkerEvent::FromScheduler(ToWorker::ComputeTask {
                key,
                payload,
                priority,
                deps,
                resources: gpus(n),
            }),
            _ => unreachable!(),
        };
        let done = |key: Key| WorkerEvent::ExecuteDone { key, nbytes: 8 };
        let mut started = Vec::new();
        // Two GPUs: k0 and k1 (one each) run, k2 (two) waits at the head of its queue and
        // holds back k3 (one) behind it; k4, asking nothing, takes a third thread.
        for (i, n) in [(0, 1.0), (1, 1.0), (2, 2.0), (3, 1.0)] {
            started.extend(executes(
                &w.handle(asking(k(i), i64::from(i), n), Time::ZERO),
            ));
        }
        started.extend(executes(&w.handle(compute(k(4), 9, vec![]), Time::ZERO)));
        assert_eq!(started, vec![k(0), k(1), k(4)]);
        // One GPU back: not enough for k2; both back: k2 runs, then k3 after it.
        assert_eq!(
            executes(&w.handle(done(k(0)), Time::ZERO)),
            Vec::<Key>::new()
        );
        assert_eq!(executes(&w.handle(done(k(1)), Time::ZERO)), vec![k(2)]);
        assert_eq!(executes(&w.handle(done(k(2)), Time::ZERO)), vec![k(3)]);
        // Freed before it ran, a waiting task gives nothing back twice; stolen likewise.
        w.handle(asking(k(5), 0, 2.0), Time::ZERO);
        w.handle(
            WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys: vec![k(5)] }),
            Time::ZERO,
        );
        assert_eq!(
            executes(&w.handle(done(k(3)), Time::ZERO)),
            Vec::<Key>::new()
        );
        assert_eq!(w.free_resources, gpus(2.0));
        // A task asking for more than there is never runs (the scheduler does not send
        // one; a worker must not count on that).
        assert!(executes(&w.handle(asking(k(6), 0, 3.0), Time::ZERO)).is_empty());
        assert!(executes(&w.handle(asking(k(7), 1, 1.0), Time::ZERO)).is_empty());
        assert_eq!(w.metrics().executing, 1); // k4
    }

    #[test]
    fn a_seceded_task_gives_its_thread_back_until_it_rejoins() {
        let mut w = worker(1, 0);
        let rejoined = |acts: &[WorkerAction]| -> Vec<Key> {
            (acts.iter())
                .filter_map(|a| match a {
                    WorkerAction::Rejoined { key } => Some(key.clone()),
                    _ => None,
                })
                .collect()
        };
        let done = |key: Key| WorkerEvent::ExecuteDone { key, nbytes: 8 };
        assert_eq!(
            executes(&w.handle(compute(k(0), 0, vec![]), Time::ZERO)),
            [k(0)]
        );
        assert!(executes(&w.handle(compute(k(1), 1, vec![]), Time::ZERO)).is_empty());
        assert!(executes(&w.handle(compute(k(2), 2, vec![]), Time::ZERO)).is_empty());
        // k0 secedes: the scheduler hears of it and k1 takes the thread.
        let acts = w.handle(WorkerEvent::Secede { key: k(0) }, Time::ZERO);
        assert_eq!(executes(&acts), [k(1)]);
        assert!(acts.iter().any(|a| matches!(a,
            WorkerAction::SendToScheduler(FromWorker::Seceded { key }) if *key == k(0))));
        assert_eq!(w.metrics().executing, 1);
        // Seceding twice changes nothing.
        assert!(
            w.handle(WorkerEvent::Secede { key: k(0) }, Time::ZERO)
                .is_empty()
        );
        // k0 wants its thread back while k1 holds it: it waits, and gets it before k2.
        assert!(rejoined(&w.handle(WorkerEvent::Rejoin { key: k(0) }, Time::ZERO)).is_empty());
        let acts = w.handle(done(k(1)), Time::ZERO);
        assert_eq!((rejoined(&acts), executes(&acts)), (vec![k(0)], vec![]));
        assert_eq!(w.metrics().executing, 1);
        // Finishing gives the thread back once: k2 runs, and only it.
        assert_eq!(executes(&w.handle(done(k(0)), Time::ZERO)), [k(2)]);
        assert_eq!(w.metrics().executing, 1);
        // A seceded task that finishes gives back no thread it does not hold.
        w.handle(WorkerEvent::Secede { key: k(2) }, Time::ZERO);
        assert_eq!(w.metrics().executing, 0);
        assert_eq!(
            executes(&w.handle(compute(k(3), 3, vec![]), Time::ZERO)),
            [k(3)]
        );
        w.handle(done(k(2)), Time::ZERO);
        assert_eq!(w.metrics().executing, 1);
        // Freed and sent again while seceded: the scheduler hears it holds no thread.
        w.handle(WorkerEvent::Secede { key: k(3) }, Time::ZERO);
        let free = ToWorker::FreeKeys { keys: vec![k(3)] };
        w.handle(WorkerEvent::FromScheduler(free), Time::ZERO);
        let acts = w.handle(compute(k(3), 3, vec![]), Time::ZERO);
        assert!(acts.iter().any(|a| matches!(a,
            WorkerAction::SendToScheduler(FromWorker::Seceded { key }) if *key == k(3))));
        w.handle(done(k(3)), Time::ZERO);
        assert_eq!(w.metrics().executing, 0);
        // Rejoining what never seceded (or is gone) is answered at once.
        assert_eq!(
            rejoined(&w.handle(WorkerEvent::Rejoin { key: k(9) }, Time::ZERO)),
            [k(9)]
        );
        assert!(
            w.handle(WorkerEvent::Secede { key: k(9) }, Time::ZERO)
                .is_empty()
        );
    }

    #[test]
    fn runs_nthreads_tasks_lowest_priority_first() {
        let mut w = worker(2, 0);
        let mut started = Vec::new();
        for (i, prio) in [(0, 5), (1, 1), (2, 3), (3, 0)] {
            started.extend(executes(&w.handle(compute(k(i), prio, vec![]), Time::ZERO)));
        }
        assert_eq!(started, vec![k(0), k(1)]);
        let acts = w.handle(
            WorkerEvent::ExecuteDone {
                key: k(0),
                nbytes: 8,
            },
            Time::from_millis(3),
        );
        assert!(
            acts.contains(&WorkerAction::SendToScheduler(FromWorker::TaskFinished {
                key: k(0),
                nbytes: 8,
                compute_micros: 3000
            }))
        );
        assert_eq!(executes(&acts), vec![k(3)]);
    }

    #[test]
    fn spills_least_recently_used_above_target_and_unspills_inputs() {
        let mut w = worker(1, 10 * MIB);
        for i in 0..6 {
            produce(&mut w, k(i), MIB);
        }
        // 6 MiB = target: nothing spilled. Using v0 makes v1 the oldest.
        w.handle(compute(k(10), 0, vec![(k(0), vec![])]), Time::ZERO);
        let acts = w.handle(
            WorkerEvent::ExecuteDone {
                key: k(10),
                nbytes: MIB,
            },
            Time::ZERO,
        );
        assert!(
            acts.contains(&WorkerAction::Spill { key: k(1) }),
            "{acts:?}"
        );
        // Still in memory until the runtime confirms.
        assert_eq!(w.metrics().managed_bytes, 7 * MIB);
        let acts = produce(&mut w, k(6), MIB);
        assert!(
            acts.contains(&WorkerAction::Spill { key: k(2) }),
            "{acts:?}"
        );
        w.handle(WorkerEvent::Spilled { key: k(1) }, Time::ZERO);
        w.handle(WorkerEvent::Spilled { key: k(2) }, Time::ZERO);
        assert_eq!(
            (w.metrics().managed_bytes, w.metrics().spilled_bytes),
            (6 * MIB, 2 * MIB)
        );
        // A task reading spilled v1 holds a thread while v1 comes back, then runs.
        let acts = w.handle(
            compute(k(20), 0, vec![(k(1), vec![]), (k(3), vec![])]),
            Time::ZERO,
        );
        assert_eq!(acts, vec![WorkerAction::Unspill { key: k(1) }]);
        let acts = w.handle(
            WorkerEvent::Unspilled {
                key: k(1),
                nbytes: MIB,
            },
            Time::ZERO,
        );
        assert_eq!(executes(&acts), vec![k(20)]);
        // v1 and v3 were just used, so the next spill takes v4, not them.
        assert!(
            acts.contains(&WorkerAction::Spill { key: k(4) }),
            "{acts:?}"
        );
        assert!(!w.is_spilled(&k(1)));
    }

    #[test]
    fn free_keys_deletes_spilled_values() {
        let mut w = worker(1, 2 * MIB);
        produce(&mut w, k(0), MIB);
        let acts = produce(&mut w, k(1), MIB);
        assert!(acts.contains(&WorkerAction::Spill { key: k(0) }));
        // Freed while the spill is being written: deleted once it is.
        let free = |keys| WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys });
        assert!(w.handle(free(vec![k(0)]), Time::ZERO).is_empty());
        let acts = w.handle(WorkerEvent::Spilled { key: k(0) }, Time::ZERO);
        assert_eq!(acts, vec![WorkerAction::DeleteSpilled { key: k(0) }]);
        assert_eq!(
            w.handle(free(vec![k(1)]), Time::ZERO),
            vec![WorkerAction::DropValue { key: k(1) }]
        );
        let m = w.metrics();
        assert_eq!(
            (m.managed_bytes, m.spilled_bytes, w.holds(&k(0))),
            (0, 0, false)
        );
    }

    #[test]
    fn a_value_being_freed_and_needed_again_is_kept_and_reported() {
        let mut w = worker(1, 2 * MIB);
        produce(&mut w, k(0), MIB);
        let acts = produce(&mut w, k(1), MIB);
        assert!(acts.contains(&WorkerAction::Spill { key: k(0) }));
        // Freed mid-spill (a copy rebalanced away), then asked to keep it again: it says
        // it holds it, and the spill settling keeps it.
        let free = WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys: vec![k(0)] });
        w.handle(free, Time::ZERO);
        let acquire = ToWorker::AcquireReplicas {
            keys: vec![DepLocation {
                key: k(0),
                who_has: vec![peer(3)],
                nbytes: MIB,
            }],
        };
        let acts = w.handle(WorkerEvent::FromScheduler(acquire), Time::ZERO);
        assert!(matches!(&acts[..],
            [WorkerAction::SendToScheduler(FromWorker::AddKeys { keys })] if keys == &[(k(0), MIB)]));
        let acts = w.handle(WorkerEvent::Spilled { key: k(0) }, Time::ZERO);
        assert!(acts.is_empty(), "{acts:?}");
        assert!(w.holds(&k(0)) && w.is_spilled(&k(0)));
        // The same for a task's input: kept (no fetch), and the scheduler told.
        let acts = produce(&mut w, k(2), MIB);
        assert!(
            acts.contains(&WorkerAction::Spill { key: k(1) }),
            "{acts:?}"
        );
        w.handle(
            WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys: vec![k(1)] }),
            Time::ZERO,
        );
        let acts = w.handle(compute(k(5), 0, vec![(k(1), vec![3])]), Time::ZERO);
        assert!(
            acts.iter().any(|a| matches!(a,
            WorkerAction::SendToScheduler(FromWorker::AddKeys { keys }) if keys == &[(k(1), MIB)])),
            "{acts:?}"
        );
        assert!(
            !acts.iter().any(|a| matches!(a, WorkerAction::Fetch { .. })),
            "{acts:?}"
        );
        let acts = w.handle(WorkerEvent::Spilled { key: k(1) }, Time::ZERO);
        assert!(
            !acts.contains(&WorkerAction::DeleteSpilled { key: k(1) }),
            "{acts:?}"
        );
        assert!(w.holds(&k(1)));
    }

    #[test]
    fn pauses_above_the_pause_fraction() {
        let mut w = worker(1, 10 * MIB);
        produce(&mut w, k(9), MIB);
        let acts = w.handle(WorkerEvent::MemorySample { rss: 9 * MIB }, Time::ZERO);
        assert!(w.metrics().paused);
        assert!(acts.contains(&WorkerAction::Spill { key: k(9) }));
        assert!(executes(&w.handle(compute(k(0), 0, vec![]), Time::ZERO)).is_empty());
        let acts = w.handle(WorkerEvent::Tick, Time::ZERO);
        assert!(
            matches!(&acts[..], [WorkerAction::SendToScheduler(FromWorker::Heartbeat(m))] if m.paused)
        );
        let acts = w.handle(WorkerEvent::MemorySample { rss: MIB }, Time::ZERO);
        assert_eq!(executes(&acts), vec![k(0)]);
    }

    #[test]
    fn a_paused_worker_with_nothing_left_to_free_runs_one_task_at_a_time() {
        // Process memory stays high (unmanaged) after every value went to disk: pausing
        // could never end, so tasks go on, one at a time.
        let mut w = worker(2, 10 * MIB);
        produce(&mut w, k(9), MIB);
        w.handle(WorkerEvent::MemorySample { rss: 9 * MIB }, Time::ZERO);
        assert!(w.metrics().paused);
        let queued = [compute(k(0), 0, vec![]), compute(k(1), 0, vec![])];
        for msg in queued {
            assert!(executes(&w.handle(msg, Time::ZERO)).is_empty());
        }
        let acts = w.handle(WorkerEvent::Spilled { key: k(9) }, Time::ZERO);
        assert_eq!(executes(&acts).len(), 1, "{acts:?}");
        let first = executes(&acts)[0].clone();
        let done = WorkerEvent::ExecuteDone {
            key: first.clone(),
            nbytes: MIB,
        };
        // Its result is in memory and could be spilled: paused again until it is.
        assert!(executes(&w.handle(done, Time::ZERO)).is_empty());
        let acts = w.handle(WorkerEvent::MemorySample { rss: 9 * MIB }, Time::ZERO);
        assert!(acts.contains(&WorkerAction::Spill { key: first.clone() }));
        let acts = w.handle(WorkerEvent::Spilled { key: first }, Time::ZERO);
        assert_eq!(executes(&acts).len(), 1, "{acts:?}");
    }

    #[test]
    fn fetches_are_bounded_per_peer_and_fail_over() {
        // One key per request here; batching has its own test.
        let mut config = WorkerConfig::new(WorkerId(0), 1, 0);
        config.fetch_batch_keys = 1;
        let mut w = WorkerState::new(config, Time::ZERO);
        let deps = (1..=3).map(|i| (k(i), vec![1, 2])).collect();
        let acts = w.handle(compute(k(0), 0, deps), Time::ZERO);
        let fetches: Vec<(Key, u32)> = (acts.iter())
            .filter_map(|a| match a {
                WorkerAction::Fetch { keys, from, .. } => Some((keys[0].clone(), from.id.0)),
                _ => None,
            })
            .collect();
        assert_eq!(fetches, vec![(k(1), 1), (k(2), 2), (k(3), 1)]);
        let acts = w.handle(
            WorkerEvent::FetchFailed {
                key: k(1),
                from: WorkerId(1),
            },
            Time::ZERO,
        );
        assert!(matches!(&acts[..], [WorkerAction::Fetch { from, .. }] if from.id == WorkerId(2)));
        let acts = w.handle(
            WorkerEvent::FetchFailed {
                key: k(1),
                from: WorkerId(2),
            },
            Time::ZERO,
        );
        let missing = |from| {
            WorkerAction::SendToScheduler(FromWorker::MissingData {
                key: k(1),
                from_worker: WorkerId(from),
            })
        };
        assert_eq!(acts, vec![missing(1), missing(2)]);
        for (i, from) in [(2, 2), (3, 1)] {
            w.handle(
                WorkerEvent::FetchDone {
                    key: k(i),
                    from: WorkerId(from),
                    nbytes: 4,
                },
                Time::ZERO,
            );
        }
        // Resent with a fresh holder, the task fetches the last input and runs.
        let acts = w.handle(compute(k(0), 0, vec![(k(1), vec![3])]), Time::ZERO);
        assert!(
            acts.is_empty(),
            "a duplicate ComputeTask is ignored: {acts:?}"
        );
        let free = WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys: vec![k(0)] });
        w.handle(free, Time::ZERO);
        let deps = (1..=3).map(|i| (k(i), vec![3])).collect();
        let acts = w.handle(compute(k(0), 0, deps), Time::ZERO);
        assert!(matches!(&acts[..], [WorkerAction::Fetch { keys, .. }] if keys == &[k(1)]));
        let acts = w.handle(
            WorkerEvent::FetchDone {
                key: k(1),
                from: WorkerId(3),
                nbytes: 4,
            },
            Time::ZERO,
        );
        assert_eq!(executes(&acts), vec![k(0)]);
    }

    fn fetch_requests(acts: &[WorkerAction]) -> Vec<(Vec<Key>, u32)> {
        (acts.iter())
            .filter_map(|a| match a {
                WorkerAction::Fetch { keys, from, .. } => Some((keys.clone(), from.id.0)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fetches_from_one_peer_share_a_request_within_its_size_limit() {
        let mut config = WorkerConfig::new(WorkerId(0), 1, 0);
        config.fetch_batch_bytes = 3 * MIB;
        let mut w = WorkerState::new(config, Time::ZERO);
        // Eight 1 MiB inputs: k1..k6 on peer 1 only, k7 and k8 on peer 2.
        let deps = (1..=8)
            .map(|i| (k(i), vec![if i <= 6 { 1 } else { 2 }]))
            .collect();
        let acts = w.handle(compute(k(0), 0, deps), Time::ZERO);
        // Two requests to peer 1 (three keys each, the size limit), one to peer 2.
        assert_eq!(
            fetch_requests(&acts),
            vec![
                (vec![k(1), k(2), k(3)], 1),
                (vec![k(4), k(5), k(6)], 1),
                (vec![k(7), k(8)], 2),
            ]
        );
        // The request's slot frees only when its last key is reported: a failure of one
        // key leaves the others in flight, and nothing new starts before the peer has room.
        let report = |w: &mut WorkerState, i: u32, from: u32, ok: bool| {
            let event = if ok {
                WorkerEvent::FetchDone {
                    key: k(i),
                    from: WorkerId(from),
                    nbytes: MIB,
                }
            } else {
                WorkerEvent::FetchFailed {
                    key: k(i),
                    from: WorkerId(from),
                }
            };
            w.handle(event, Time::ZERO)
        };
        assert!(fetch_requests(&report(&mut w, 7, 2, true)).is_empty());
        assert!(fetch_requests(&report(&mut w, 8, 2, true)).is_empty());
        for i in 1..=3 {
            let acts = report(&mut w, i, 1, i != 2);
            // k2 had no other holder: the scheduler hears of it.
            if i == 2 {
                assert!(
                    acts.contains(&WorkerAction::SendToScheduler(FromWorker::MissingData {
                        key: k(2),
                        from_worker: WorkerId(1),
                    }))
                );
            }
        }
        for i in 4..=6 {
            report(&mut w, i, 1, true);
        }
        // Released and resent with a fresh holder (as the scheduler does after
        // MissingData), k2 arrives and the task runs; the other inputs stayed.
        let free = WorkerEvent::FromScheduler(ToWorker::FreeKeys { keys: vec![k(0)] });
        w.handle(free, Time::ZERO);
        let fresh = (1..=8)
            .map(|i| (k(i), vec![if i == 2 { 3 } else { 1 }]))
            .collect();
        let acts = w.handle(compute(k(0), 0, fresh), Time::ZERO);
        assert_eq!(fetch_requests(&acts), vec![(vec![k(2)], 3)]);
        assert_eq!(executes(&report(&mut w, 2, 3, true)), vec![k(0)]);
    }

    #[test]
    fn steals_only_unstarted_tasks_and_serves_peers() {
        let mut w = worker(1, 0);
        w.handle(compute(k(0), 0, vec![]), Time::ZERO);
        w.handle(compute(k(1), 1, vec![]), Time::ZERO);
        let steal = |key| WorkerEvent::FromScheduler(ToWorker::StealRequest { key });
        let resp =
            |key, stolen| WorkerAction::SendToScheduler(FromWorker::StealResponse { key, stolen });
        assert_eq!(w.handle(steal(k(0)), Time::ZERO), vec![resp(k(0), false)]);
        assert_eq!(w.handle(steal(k(1)), Time::ZERO), vec![resp(k(1), true)]);
        assert_eq!(w.handle(steal(k(9)), Time::ZERO), vec![resp(k(9), false)]);
        w.handle(
            WorkerEvent::ExecuteDone {
                key: k(0),
                nbytes: 5,
            },
            Time::ZERO,
        );
        let ask = |request_id, key| WorkerEvent::PeerWantsData { request_id, key };
        assert_eq!(
            w.handle(ask(7, k(0)), Time::ZERO),
            vec![WorkerAction::SendData {
                request_id: 7,
                key: k(0),
                nbytes: 5
            }]
        );
        assert_eq!(
            w.handle(ask(8, k(1)), Time::ZERO),
            vec![WorkerAction::DataMissing {
                request_id: 8,
                key: k(1)
            }]
        );
    }

    #[test]
    fn a_fetch_arriving_for_a_value_made_here_meanwhile_keeps_it() {
        let mut w = worker(2, 0);
        // t needs k(1) from worker 1; the fetch goes out.
        let acts = w.handle(compute(k(2), 0, vec![(k(1), vec![1])]), Time::ZERO);
        assert!(acts.iter().any(|a| matches!(a, WorkerAction::Fetch { .. })));
        // Meanwhile this worker is asked to make k(1) itself (its holder was lost), and does.
        produce(&mut w, k(1), 64);
        assert!(w.holds(&k(1)));
        // t runs on the copy made here, without waiting for the fetch ...
        assert_eq!(w.metrics().executing, 1, "t runs");
        // ... which answers after all: the value held here stays.
        let acts = w.handle(
            WorkerEvent::FetchDone {
                key: k(1),
                from: WorkerId(1),
                nbytes: 64,
            },
            Time::ZERO,
        );
        assert!(
            !acts.contains(&WorkerAction::DropValue { key: k(1) }),
            "{acts:?}"
        );
        assert!(w.holds(&k(1)));
        assert_eq!(w.metrics().managed_bytes, 64);
    }

    #[test]
    fn pushed_values_are_held_and_reported_like_results() {
        let mut w = worker(1, 0);
        let receive = |w: &mut WorkerState, key: Key, nbytes: u64, copy: bool| {
            w.handle(WorkerEvent::Received { key, nbytes, copy }, Time::ZERO)
        };
        let acts = receive(&mut w, k(1), 64, false);
        assert!(
            acts.contains(&WorkerAction::SendToScheduler(FromWorker::TaskFinished {
                key: k(1),
                nbytes: 64,
                compute_micros: 0,
            }))
        );
        assert!(w.holds(&k(1)));
        assert_eq!(w.metrics().managed_bytes, 64);
        // Pushed again: the copy is dropped, the first kept, nothing reported.
        let acts = receive(&mut w, k(1), 64, false);
        assert!(acts.contains(&WorkerAction::DropValue { key: k(1) }));
        assert!(!acts.iter().any(|a| matches!(
            a,
            WorkerAction::SendToScheduler(FromWorker::TaskFinished { .. })
        )));
        assert_eq!(w.metrics().managed_bytes, 64);
        // A copy (broadcast) is reported as a replica, like a fetched value.
        let acts = receive(&mut w, k(2), 8, true);
        assert_eq!(
            acts,
            [WorkerAction::SendToScheduler(FromWorker::AddKeys {
                keys: vec![(k(2), 8)],
            })]
        );
        assert!(w.holds(&k(2)));
    }

    #[test]
    fn acquired_values_are_fetched_kept_and_reported() {
        let mut w = worker(1, 0);
        let acquire = |keys: Vec<(Key, Vec<u32>)>| {
            WorkerEvent::FromScheduler(ToWorker::AcquireReplicas {
                keys: (keys.into_iter())
                    .map(|(key, on)| DepLocation {
                        key,
                        who_has: on.into_iter().map(peer).collect(),
                        nbytes: 10,
                    })
                    .collect(),
            })
        };
        let add = |key: Key, nbytes: u64| {
            WorkerAction::SendToScheduler(FromWorker::AddKeys {
                keys: vec![(key, nbytes)],
            })
        };
        // One held already is reported at once.
        produce(&mut w, k(1), 8);
        assert_eq!(
            w.handle(acquire(vec![(k(1), vec![2])]), Time::ZERO),
            [add(k(1), 8)]
        );
        // Others are fetched, with no task waiting, and kept.
        let acts = w.handle(acquire(vec![(k(2), vec![2]), (k(3), vec![3])]), Time::ZERO);
        assert_eq!(fetch_requests(&acts), [(vec![k(2)], 2), (vec![k(3)], 3)]);
        let done = WorkerEvent::FetchDone {
            key: k(2),
            from: WorkerId(2),
            nbytes: 10,
        };
        assert_eq!(w.handle(done, Time::ZERO), [add(k(2), 10)]);
        assert!(w.holds(&k(2)));
        // No holder answers: the scheduler hears which one failed.
        let failed = WorkerEvent::FetchFailed {
            key: k(3),
            from: WorkerId(3),
        };
        let acts = w.handle(failed, Time::ZERO);
        assert_eq!(
            acts,
            [WorkerAction::SendToScheduler(FromWorker::MissingData {
                key: k(3),
                from_worker: WorkerId(3),
            })]
        );
        assert!(!w.holds(&k(3)));
        // A task that read a replica being fetched is stolen: the replica still arrives.
        w.handle(acquire(vec![(k(4), vec![2])]), Time::ZERO);
        w.handle(compute(k(5), 0, vec![(k(4), vec![2])]), Time::ZERO);
        let steal = WorkerEvent::FromScheduler(ToWorker::StealRequest { key: k(5) });
        w.handle(steal, Time::ZERO);
        let done = WorkerEvent::FetchDone {
            key: k(4),
            from: WorkerId(2),
            nbytes: 10,
        };
        assert!(w.handle(done, Time::ZERO).contains(&add(k(4), 10)));
        assert!(w.holds(&k(4)));
        // Asked to stop: it asks to retire once; told to close, it stops.
        let acts = w.handle(WorkerEvent::Retire, Time::ZERO);
        assert_eq!(acts, [WorkerAction::SendToScheduler(FromWorker::Retire)]);
        assert!(w.handle(WorkerEvent::Retire, Time::ZERO).is_empty());
        let close = WorkerEvent::FromScheduler(ToWorker::Close {
            reason: "retired".into(),
        });
        let acts = w.handle(close, Time::ZERO);
        assert_eq!(
            acts,
            [WorkerAction::Stop {
                reason: "retired".into(),
                restart: false,
            }]
        );
    }

    #[test]
    fn unknown_events_do_not_panic() {
        let mut w = worker(1, MIB);
        let key = k(42);
        for e in [
            WorkerEvent::ExecuteDone {
                key: key.clone(),
                nbytes: 1,
            },
            WorkerEvent::ExecuteFailed {
                key: key.clone(),
                error: TaskFailure::error(key.clone(), "x"),
            },
            WorkerEvent::FetchDone {
                key: key.clone(),
                from: WorkerId(3),
                nbytes: 1,
            },
            WorkerEvent::FetchFailed {
                key: key.clone(),
                from: WorkerId(3),
            },
            WorkerEvent::Spilled { key: key.clone() },
            WorkerEvent::SpillFailed {
                key: key.clone(),
                error: "x".into(),
            },
            WorkerEvent::Unspilled {
                key: key.clone(),
                nbytes: 1,
            },
            WorkerEvent::UnspillFailed {
                key: key.clone(),
                error: "x".into(),
            },
            WorkerEvent::FromScheduler(ToWorker::FreeKeys {
                keys: vec![key.clone()],
            }),
        ] {
            w.handle(e, Time::ZERO);
        }
        assert_eq!(
            w.metrics(),
            WorkerState::new(WorkerConfig::new(WorkerId(0), 1, MIB), Time::ZERO).metrics()
        );
    }
}

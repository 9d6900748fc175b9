//! A simulated cluster for testing the state machines: one [`SchedulerState`], N
//! [`WorkerState`]s, a clock, a network with latency and bandwidth, fake task execution and
//! a fake spill store. Like quinn-proto's test pair, it runs whole computations
//! deterministically in milliseconds of real time.
//!
//! Task durations and output sizes come from a table ([`TaskBehavior`], defaults 1 ms and
//! 1 KiB); tasks can be made to fail or to kill their worker, and workers can be killed (or
//! silenced, so only the heartbeat timeout notices) at a given time. The simulation also
//! checks the machines: a worker executing on an input it does not hold in memory, or
//! serving a value it does not have, is recorded in [`SimReport::violations`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use partita_core::{Error, Key, Result};
use serde_bytes::ByteBuf;

use crate::Time;
use crate::messages::{
    ClientId, FromClient, FromWorker, Resources, TaskFailure, TaskSpec, ToClient, WorkerId,
};
use crate::scheduler::{SchedulerAction, SchedulerConfig, SchedulerEvent, SchedulerState};
use crate::worker::{WorkerAction, WorkerConfig, WorkerEvent, WorkerState};

/// How a simulated task behaves when executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskBehavior {
    pub duration: Duration,
    pub nbytes: u64,
    /// Fail this many executions before succeeding.
    pub fail_times: u32,
    /// Kill the worker that starts it (every time).
    pub kills_worker: bool,
}

impl Default for TaskBehavior {
    fn default() -> Self {
        TaskBehavior {
            duration: Duration::from_millis(1),
            nbytes: 1024,
            fail_times: 0,
            kills_worker: false,
        }
    }
}

/// How a worker dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillMode {
    /// The connection closes: the scheduler hears `WorkerLost`.
    Disconnect,
    /// It stops sending anything: only the heartbeat timeout notices.
    Silent,
}

/// The simulated cluster's shape.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub workers: u32,
    pub nthreads: u32,
    /// Per worker; 0 = unlimited.
    pub memory_limit: u64,
    pub latency: Duration,
    /// Bytes per second between workers.
    pub bandwidth: u64,
    pub spill_delay: Duration,
    pub heartbeat_interval: Duration,
    pub scheduler: SchedulerConfig,
    /// Events processed before `run` gives up.
    pub max_steps: u64,
    /// Recount the scheduler's incremental bookkeeping after every event it handles
    /// ([`SchedulerState::check_consistency`]); O(tasks) each time, so off for huge graphs.
    pub check_consistency: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workers: 4,
            nthreads: 2,
            memory_limit: 0,
            latency: Duration::from_micros(100),
            bandwidth: 1_000_000_000,
            spill_delay: Duration::from_micros(200),
            heartbeat_interval: Duration::from_millis(100),
            scheduler: SchedulerConfig {
                heartbeat_timeout: Duration::from_millis(500),
                ..SchedulerConfig::default()
            },
            max_steps: 500_000,
            check_consistency: true,
        }
    }
}

/// What a client heard about a wanted key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    InMemory,
    Erred(String),
    Cancelled,
}

/// What happened during a simulation.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub outcomes: BTreeMap<(ClientId, Key), Outcome>,
    /// Graph refusals per client.
    pub refused: Vec<(ClientId, String)>,
    /// Workers each key was executed on, in order.
    pub placements: BTreeMap<Key, Vec<WorkerId>>,
    /// Workers that stopped when the scheduler retired them.
    pub stopped: Vec<WorkerId>,
    /// What clients heard that is not a key's outcome (`WorkerLeft`, `Replicated`, ...).
    pub client_messages: Vec<(ClientId, ToClient)>,
    /// Peer-to-peer transfers and their bytes.
    pub transfers: u64,
    pub transfer_bytes: u64,
    /// Highest bytes held in memory, per worker.
    pub peak_memory: BTreeMap<WorkerId, u64>,
    /// Wrong moves of a state machine (see module docs); empty when all is well.
    pub violations: Vec<String>,
    pub logs: Vec<String>,
}

impl SimReport {
    /// How many times `key` was executed.
    pub fn executions(&self, key: &Key) -> usize {
        self.placements.get(key).map_or(0, Vec::len)
    }
}

#[derive(Debug)]
enum SimEvent {
    ToScheduler(SchedulerEvent),
    FromWorker(WorkerId, FromWorker),
    ToWorker(WorkerId, WorkerEvent),
    ToClient(ClientId, ToClient),
    SchedulerTick,
    WorkerTick(WorkerId),
    Kill(WorkerId, KillMode),
    Join(WorkerId, u32),
}

#[derive(Debug)]
struct SimWorker {
    state: WorkerState,
    alive: bool,
    /// Killed silently: requests to it hang instead of failing (no connection closes).
    silent: bool,
    memory: Held,
    disk: Held,
}

/// Values by key with their total size kept as they come and go (summing per event would
/// make large simulations quadratic).
#[derive(Debug, Default)]
struct Held {
    values: BTreeMap<Key, u64>,
    total: u64,
}

impl Held {
    fn insert(&mut self, key: Key, nbytes: u64) {
        if let Some(old) = self.values.insert(key, nbytes) {
            self.total -= old;
        }
        self.total += nbytes;
    }

    fn remove(&mut self, key: &Key) -> Option<u64> {
        let n = self.values.remove(key)?;
        self.total -= n;
        Some(n)
    }

    fn contains_key(&self, key: &Key) -> bool {
        self.values.contains_key(key)
    }

    fn clear(&mut self) {
        *self = Held::default();
    }
}

/// The simulated cluster.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    now: Time,
    seq: u64,
    events: BTreeMap<(Time, u64), SimEvent>,
    scheduler: SchedulerState,
    workers: BTreeMap<WorkerId, SimWorker>,
    behaviors: BTreeMap<Key, TaskBehavior>,
    /// Request id -> (requester, key, holder).
    requests: BTreeMap<u64, (WorkerId, Key, WorkerId)>,
    /// Wanted keys without an outcome yet.
    awaiting: BTreeSet<(ClientId, Key)>,
    report: SimReport,
}

impl Sim {
    /// A cluster whose workers `0..config.workers` join at time zero.
    pub fn new(config: SimConfig) -> Sim {
        let scheduler = SchedulerState::new(config.scheduler.clone());
        let mut sim = Sim {
            config,
            now: Time::ZERO,
            seq: 0,
            events: BTreeMap::new(),
            scheduler,
            workers: BTreeMap::new(),
            behaviors: BTreeMap::new(),
            requests: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            report: SimReport::default(),
        };
        for i in 0..sim.config.workers {
            sim.add_worker_at(Time::ZERO, WorkerId(i), sim.config.nthreads);
        }
        sim.push(Time::ZERO, SimEvent::SchedulerTick);
        sim
    }

    /// The scheduler, to inspect task states.
    pub fn scheduler(&self) -> &SchedulerState {
        &self.scheduler
    }

    /// A worker's state machine.
    pub fn worker(&self, id: WorkerId) -> Option<&WorkerState> {
        self.workers.get(&id).map(|w| &w.state)
    }

    /// Bytes a worker holds in memory and on disk now.
    pub fn held_bytes(&self, id: WorkerId) -> (u64, u64) {
        self.workers
            .get(&id)
            .map_or((0, 0), |w| (w.memory.total, w.disk.total))
    }

    /// The simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// What happened so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// Set how `key` behaves when executed.
    pub fn set_behavior(&mut self, key: Key, behavior: TaskBehavior) {
        self.behaviors.insert(key, behavior);
    }

    /// A worker joins at `at`.
    pub fn add_worker_at(&mut self, at: Time, id: WorkerId, nthreads: u32) {
        self.push(at, SimEvent::Join(id, nthreads));
    }

    /// A worker dies at `at`.
    pub fn kill_worker_at(&mut self, at: Time, id: WorkerId, mode: KillMode) {
        self.push(at, SimEvent::Kill(id, mode));
    }

    /// A worker is asked to stop at `at` (a signal): it asks the scheduler to retire it,
    /// and stops when told to.
    pub fn retire_worker_at(&mut self, at: Time, id: WorkerId) {
        self.push(at, SimEvent::ToWorker(id, WorkerEvent::Retire));
    }

    /// Is this worker running (joined, not killed nor stopped)?
    pub fn is_alive(&self, id: WorkerId) -> bool {
        self.workers.get(&id).is_some_and(|w| w.alive)
    }

    /// `client` submits a graph at `at`; `run` waits for every wanted key.
    pub fn submit_at(
        &mut self,
        at: Time,
        client: ClientId,
        tasks: Vec<TaskSpec>,
        wanted: Vec<Key>,
    ) {
        for k in &wanted {
            if !self.report.outcomes.contains_key(&(client, k.clone())) {
                self.awaiting.insert((client, k.clone()));
            }
        }
        let msg = FromClient::SubmitGraph { tasks, wanted };
        self.push(
            at,
            SimEvent::ToScheduler(SchedulerEvent::FromClient { client, msg }),
        );
    }

    /// `client` sends a message at `at` (release, cancel, ...).
    pub fn client_sends_at(&mut self, at: Time, client: ClientId, msg: FromClient) {
        self.push(
            at,
            SimEvent::ToScheduler(SchedulerEvent::FromClient { client, msg }),
        );
    }

    fn push(&mut self, at: Time, event: SimEvent) {
        self.seq += 1;
        self.events.insert((at.max(self.now), self.seq), event);
    }

    fn pending(&self) -> Option<&(ClientId, Key)> {
        self.awaiting.first()
    }

    /// Run until every wanted key has an outcome; an error if `max_steps` pass first or a
    /// machine breaks a rule (see [`SimReport::violations`]).
    pub fn run(&mut self) -> Result<Time> {
        let mut steps = 0;
        while let Some(missing) = self.pending() {
            if let Some(v) = self.report.violations.first() {
                return Err(Error::Internal(format!("simulation violation: {v}")));
            }
            steps += 1;
            if steps > self.config.max_steps || self.events.is_empty() {
                return Err(Error::Internal(format!(
                    "simulation stuck at {} after {steps} events: {} of client {} has no outcome",
                    self.now, missing.1, missing.0
                )));
            }
            self.step();
        }
        Ok(self.now)
    }

    /// Process every event due up to `until`.
    pub fn run_until(&mut self, until: Time) {
        while self
            .events
            .first_key_value()
            .is_some_and(|((t, _), _)| *t <= until)
        {
            self.step();
        }
        self.now = self.now.max(until);
    }

    fn step(&mut self) {
        let Some(((at, _), event)) = self.events.pop_first() else {
            return;
        };
        self.now = at;
        let now = at;
        match event {
            SimEvent::ToScheduler(e) => self.scheduler_handles(e),
            SimEvent::FromWorker(w, msg) => {
                // Messages of a dead worker vanish with its connection.
                if self.workers.get(&w).is_some_and(|sw| sw.alive) {
                    self.scheduler_handles(SchedulerEvent::FromWorker { worker: w, msg });
                }
            }
            SimEvent::ToWorker(w, e) => self.worker_handles(w, e),
            SimEvent::ToClient(c, msg) => self.client_hears(c, msg),
            SimEvent::SchedulerTick => {
                if self.scheduler.poll_timeout().is_some_and(|t| t <= now) {
                    self.scheduler_handles(SchedulerEvent::Tick);
                }
                let next = now + self.config.heartbeat_interval;
                self.push(next, SimEvent::SchedulerTick);
            }
            SimEvent::WorkerTick(w) => {
                let Some(sw) = self.workers.get(&w).filter(|sw| sw.alive) else {
                    return;
                };
                let rss = sw.memory.total;
                self.worker_handles(w, WorkerEvent::MemorySample { rss });
                self.worker_handles(w, WorkerEvent::Tick);
                if let Some(next) = self.workers[&w].state.poll_timeout() {
                    self.push(
                        next.max(now + Duration::from_micros(1)),
                        SimEvent::WorkerTick(w),
                    );
                }
            }
            SimEvent::Kill(w, mode) => self.kill(w, mode),
            SimEvent::Join(id, nthreads) => {
                let mut config = WorkerConfig::new(id, nthreads, self.config.memory_limit);
                config.heartbeat_interval = self.config.heartbeat_interval;
                let sw = SimWorker {
                    state: WorkerState::new(config, now),
                    alive: true,
                    silent: false,
                    memory: Held::default(),
                    disk: Held::default(),
                };
                self.workers.insert(id, sw);
                let e = SchedulerEvent::WorkerJoined {
                    worker: id,
                    nthreads,
                    memory_limit: self.config.memory_limit,
                    address: format!("sim://{id}"),
                    nanny: None,
                    resources: Resources::default(),
                };
                self.scheduler_handles(e);
                self.push(now, SimEvent::WorkerTick(id));
            }
        }
    }

    fn kill(&mut self, w: WorkerId, mode: KillMode) {
        let Some(sw) = self.workers.get_mut(&w).filter(|sw| sw.alive) else {
            return;
        };
        sw.alive = false;
        sw.silent = mode == KillMode::Silent;
        sw.memory.clear();
        sw.disk.clear();
        if mode == KillMode::Disconnect {
            self.fail_requests_to(w);
        }
        self.report
            .logs
            .push(format!("{} killed {w} ({mode:?})", self.now));
        if mode == KillMode::Disconnect {
            let e = SchedulerEvent::WorkerLost {
                worker: w,
                reason: "connection closed".into(),
            };
            self.push(self.now + self.config.latency, SimEvent::ToScheduler(e));
        }
    }

    fn client_hears(&mut self, c: ClientId, msg: ToClient) {
        let outcome = match msg {
            ToClient::KeyInMemory { key, .. } => Some((key, Outcome::InMemory)),
            ToClient::KeyErred { key, error } => Some((key, Outcome::Erred(error.to_string()))),
            ToClient::Cancelled { key } => Some((key, Outcome::Cancelled)),
            ToClient::GraphRefused { error } => {
                self.report.refused.push((c, error));
                None
            }
            other @ (ToClient::WhoHasReply { .. }
            | ToClient::Workers { .. }
            | ToClient::Info { .. }
            | ToClient::ScatterTo { .. }
            | ToClient::ScatterRefused { .. }
            | ToClient::WorkerLeft { .. }
            | ToClient::Replicated { .. }
            | ToClient::Retiring { .. }
            | ToClient::Dataset { .. }
            | ToClient::Restarting { .. }
            | ToClient::TaskStream { .. }
            | ToClient::Coordinated { .. }
            | ToClient::AdaptiveTarget { .. }
            | ToClient::Rebalanced { .. }) => {
                self.report.client_messages.push((c, other));
                None
            }
        };
        if let Some((key, outcome)) = outcome {
            self.awaiting.remove(&(c, key.clone()));
            self.report.outcomes.insert((c, key), outcome);
        }
    }

    fn scheduler_handles(&mut self, e: SchedulerEvent) {
        let actions = self.scheduler.handle(e, self.now);
        if self.config.check_consistency
            && let Err(e) = self.scheduler.check_consistency()
        {
            self.violation(format!("scheduler inconsistent: {e}"));
        }
        let at = self.now + self.config.latency;
        for a in actions {
            match a {
                SchedulerAction::SendToWorker(w, msg) => {
                    self.push(at, SimEvent::ToWorker(w, WorkerEvent::FromScheduler(msg)))
                }
                SchedulerAction::SendToClient(c, msg) => self.push(at, SimEvent::ToClient(c, msg)),
                SchedulerAction::CloseWorker(w, _) => self.kill(w, KillMode::Silent),
                SchedulerAction::Log(level, text) => self
                    .report
                    .logs
                    .push(format!("{} scheduler {level:?}: {text}", self.now)),
            }
        }
    }

    /// Deliver an event to a live worker, applying what the event means for its store first.
    fn worker_handles(&mut self, w: WorkerId, mut e: WorkerEvent) {
        let now = self.now;
        let Some(sw) = self.workers.get_mut(&w).filter(|sw| sw.alive) else {
            // A peer whose connection closed (it stopped, or died loudly) fails the data
            // requests that reach it, as a reset stream does.
            if let WorkerEvent::PeerWantsData { request_id, .. } = e
                && self.workers.get(&w).is_some_and(|sw| !sw.silent)
            {
                self.fail_request(request_id);
            }
            return;
        };
        match &e {
            WorkerEvent::ExecuteDone { key, nbytes }
            | WorkerEvent::FetchDone { key, nbytes, .. } => {
                sw.memory.insert(key.clone(), *nbytes);
            }
            WorkerEvent::Spilled { key } => match sw.memory.remove(key) {
                Some(n) => {
                    sw.disk.insert(key.clone(), n);
                }
                None => {
                    let error = "value not in memory".to_string();
                    e = WorkerEvent::SpillFailed {
                        key: key.clone(),
                        error,
                    };
                }
            },
            WorkerEvent::Unspilled { key, .. } => match sw.disk.remove(key) {
                Some(nbytes) => {
                    sw.memory.insert(key.clone(), nbytes);
                    e = WorkerEvent::Unspilled {
                        key: key.clone(),
                        nbytes,
                    };
                }
                None => {
                    let error = "no spill file".to_string();
                    e = WorkerEvent::UnspillFailed {
                        key: key.clone(),
                        error,
                    };
                }
            },
            _ => {}
        }
        let actions = sw.state.handle(e, now);
        self.track_peak(w);
        for a in actions {
            self.worker_acts(w, a);
        }
        self.track_peak(w);
    }

    fn track_peak(&mut self, w: WorkerId) {
        let Some(sw) = self.workers.get(&w) else {
            return;
        };
        let held = sw.memory.total;
        let peak = self.report.peak_memory.entry(w).or_default();
        *peak = (*peak).max(held);
    }

    fn violation(&mut self, text: String) {
        self.report.violations.push(format!("{}: {text}", self.now));
    }

    fn worker_acts(&mut self, w: WorkerId, action: WorkerAction) {
        let (now, latency) = (self.now, self.config.latency);
        if !self.workers.get(&w).is_some_and(|sw| sw.alive) {
            return;
        }
        match action {
            WorkerAction::SendToScheduler(msg) => {
                self.push(now + latency, SimEvent::FromWorker(w, msg))
            }
            WorkerAction::Execute { key, inputs, .. } => {
                let sw = &self.workers[&w];
                let absent: Vec<String> = inputs
                    .iter()
                    .filter(|k| !sw.memory.contains_key(k))
                    .map(Key::to_string)
                    .collect();
                if !absent.is_empty() {
                    self.violation(format!(
                        "{w} executes {key} without inputs {absent:?} in memory"
                    ));
                }
                self.report
                    .placements
                    .entry(key.clone())
                    .or_default()
                    .push(w);
                let b = self.behaviors.get(&key).cloned().unwrap_or_default();
                if b.kills_worker {
                    self.kill(w, KillMode::Disconnect);
                    return;
                }
                let done = if b.fail_times > 0 {
                    if let Some(b) = self.behaviors.get_mut(&key) {
                        b.fail_times -= 1;
                    }
                    WorkerEvent::ExecuteFailed {
                        error: TaskFailure::error(key.clone(), "simulated failure"),
                        key,
                    }
                } else {
                    WorkerEvent::ExecuteDone {
                        key,
                        nbytes: b.nbytes,
                    }
                };
                self.push(now + b.duration, SimEvent::ToWorker(w, done));
            }
            WorkerAction::Fetch { keys, from, .. } => {
                // The runtime asks for the keys of a batch on one stream; here each is a
                // request of its own, which reports every key exactly once all the same.
                for key in keys {
                    self.seq += 1;
                    let request_id = self.seq;
                    self.requests.insert(request_id, (w, key.clone(), from.id));
                    let ask = WorkerEvent::PeerWantsData { request_id, key };
                    self.push(now + latency, SimEvent::ToWorker(from.id, ask));
                    // A dead peer never answers: the connection attempt fails instead.
                    if !self.workers.get(&from.id).is_some_and(|sw| sw.alive) {
                        self.fail_request(request_id);
                    }
                }
            }
            WorkerAction::SendData {
                request_id,
                key,
                nbytes,
            } => {
                if !self.workers[&w].memory.contains_key(&key) {
                    self.violation(format!(
                        "{w} serves {key}, which it does not hold in memory"
                    ));
                }
                let Some((requester, _, _)) = self.requests.remove(&request_id) else {
                    return;
                };
                self.report.transfers += 1;
                self.report.transfer_bytes += nbytes;
                let micros =
                    u128::from(nbytes) * 1_000_000 / u128::from(self.config.bandwidth.max(1));
                let transfer = Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
                let done = WorkerEvent::FetchDone {
                    key,
                    from: w,
                    nbytes,
                };
                self.push(
                    now + latency + transfer,
                    SimEvent::ToWorker(requester, done),
                );
            }
            WorkerAction::DataMissing { request_id, .. } => self.fail_request(request_id),
            WorkerAction::Spill { key } => self.push(
                now + self.config.spill_delay,
                SimEvent::ToWorker(w, WorkerEvent::Spilled { key }),
            ),
            WorkerAction::Unspill { key } => {
                let e = WorkerEvent::Unspilled { key, nbytes: 0 };
                self.push(now + self.config.spill_delay, SimEvent::ToWorker(w, e));
            }
            WorkerAction::DeleteSpilled { key } => {
                let sw = self.workers.get_mut(&w).expect("checked alive");
                if sw.disk.remove(&key).is_none() {
                    self.violation(format!("{w} deletes spilled {key}, which is not on disk"));
                }
            }
            WorkerAction::DropValue { key } => {
                self.workers
                    .get_mut(&w)
                    .expect("checked alive")
                    .memory
                    .remove(&key);
            }
            // Simulated tasks never secede, so never rejoin.
            WorkerAction::Rejoined { key } => {
                self.violation(format!("{w} lets {key} rejoin, which never seceded"))
            }
            WorkerAction::Log(level, text) => self
                .report
                .logs
                .push(format!("{now} {w} {level:?}: {text}")),
            WorkerAction::Stop { reason, .. } => {
                let sw = self.workers.get_mut(&w).expect("checked alive");
                sw.alive = false;
                sw.memory.clear();
                sw.disk.clear();
                self.report.stopped.push(w);
                self.fail_requests_to(w);
                self.report
                    .logs
                    .push(format!("{now} {w} stopped: {reason}"));
            }
        }
    }

    /// Requests to `w`, which stopped or whose connection closed, fail: even those it had
    /// received and not answered yet (waiting for a value to be read back from disk).
    fn fail_requests_to(&mut self, w: WorkerId) {
        let ids: Vec<u64> = (self.requests.iter())
            .filter(|(_, (_, _, from))| *from == w)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.fail_request(id);
        }
    }

    fn fail_request(&mut self, request_id: u64) {
        let Some((requester, key, from)) = self.requests.remove(&request_id) else {
            return;
        };
        let failed = WorkerEvent::FetchFailed { key, from };
        self.push(
            self.now + self.config.latency * 2,
            SimEvent::ToWorker(requester, failed),
        );
    }
}

/// A task spec with no payload, priority 0 and no retries (see [`order_depth_first`]).
pub fn spec(key: Key, deps: Vec<Key>) -> TaskSpec {
    TaskSpec {
        key,
        deps,
        payload: ByteBuf::new(),
        priority: 0,
        retries: 0,
        restrictions: None,
    }
}

/// Priorities like partita's optimizer: depth-first from the outputs, dependencies in order,
/// so a branch finishes before the next begins.
pub fn order_depth_first(tasks: &mut [TaskSpec], outputs: &[Key]) {
    let index: BTreeMap<Key, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.key.clone(), i))
        .collect();
    let mut done = vec![false; tasks.len()];
    let mut next = 0;
    for out in outputs {
        let Some(&root) = index.get(out) else {
            continue;
        };
        let mut stack = vec![(root, 0usize)];
        while let Some((i, child)) = stack.pop() {
            if done[i] {
                continue;
            }
            match tasks[i].deps.get(child).and_then(|d| index.get(d)) {
                Some(&d) => {
                    stack.push((i, child + 1));
                    stack.push((d, 0));
                }
                None if child < tasks[i].deps.len() => stack.push((i, child + 1)),
                None => {
                    done[i] = true;
                    tasks[i].priority = next;
                    next += 1;
                }
            }
        }
    }
}

/// `name-0 <- name-1 <- ... <- name-(n-1)`; returns the tasks and the last key.
pub fn chain(name: &str, n: u32) -> (Vec<TaskSpec>, Key) {
    let tasks: Vec<TaskSpec> = (0..n)
        .map(|i| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![Key::new(name, [i - 1])]
            };
            spec(Key::new(name, [i]), deps)
        })
        .collect();
    let last = Key::new(name, [n.saturating_sub(1)]);
    (tasks, last)
}

/// `leaves` roots `(name, 0, i)` reduced `split_every` at a time, level by level, to one
/// key, which is returned. Priorities are depth-first.
pub fn tree_reduction(name: &str, leaves: u32, split_every: u32) -> (Vec<TaskSpec>, Key) {
    let split = split_every.max(2);
    let mut tasks: Vec<TaskSpec> = (0..leaves)
        .map(|i| spec(Key::new(name, [0, i]), vec![]))
        .collect();
    let (mut level, mut width) = (0, leaves.max(1));
    while width > 1 {
        let up = width.div_ceil(split);
        for j in 0..up {
            let deps = (j * split..((j + 1) * split).min(width))
                .map(|i| Key::new(name, [level, i]))
                .collect();
            tasks.push(spec(Key::new(name, [level + 1, j]), deps));
        }
        level += 1;
        width = up;
    }
    let root = Key::new(name, [level, 0]);
    order_depth_first(&mut tasks, std::slice::from_ref(&root));
    (tasks, root)
}

/// `n` roots `(name-in, i)`, each mapped by `(name, i)`; returns the tasks and the mapped keys.
pub fn wide_map(name: &str, n: u32) -> (Vec<TaskSpec>, Vec<Key>) {
    let input = format!("{name}-in");
    let mut tasks = Vec::new();
    let mut outs = Vec::new();
    for i in 0..n {
        tasks.push(spec(Key::new(input.as_str(), [i]), vec![]));
        tasks.push(spec(
            Key::new(name, [i]),
            vec![Key::new(input.as_str(), [i])],
        ));
        outs.push(Key::new(name, [i]));
    }
    order_depth_first(&mut tasks, &outs);
    (tasks, outs)
}

/// One root `(name-in, 0)` read by `n` tasks `(name, i)`; returns the tasks and the readers.
pub fn fan_out(name: &str, n: u32) -> (Vec<TaskSpec>, Vec<Key>) {
    let root = Key::new(format!("{name}-in").as_str(), [0]);
    let mut tasks = vec![spec(root.clone(), vec![])];
    let outs: Vec<Key> = (0..n).map(|i| Key::new(name, [i])).collect();
    tasks.extend(outs.iter().map(|k| spec(k.clone(), vec![root.clone()])));
    order_depth_first(&mut tasks, &outs);
    (tasks, outs)
}

//! The wire vocabulary: every control message between scheduler, workers and clients,
//! MessagePack encoding, and length-prefixed framing.
//!
//! Key decisions:
//! - **Control messages only.** Bulk values travel worker to worker on their own streams;
//!   here there is just the header that announces them ([`DataRequest`], [`DataResponse`]).
//! - **Named MessagePack** (`rmp_serde::to_vec_named`): a little larger than positional
//!   encoding, but a peer that adds a field does not shift every other one. The handshake
//!   ([`Hello`]) carries [`PROTOCOL_VERSION`] and peers with another version are refused.
//! - **Untrusted input is an error, never a panic:** [`decode`] and [`FrameDecoder`] bound
//!   sizes by [`MAX_CONTROL_MESSAGE_BYTES`] before allocating and name what was wrong.

use std::collections::BTreeMap;
use std::fmt;

use partita_core::{Error, Key, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version of this vocabulary; a [`Hello`] with another version is refused.
pub const PROTOCOL_VERSION: u32 = 14;

/// Largest encoded control message (64 MiB): a graph of about a million small tasks.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 << 20;

/// A worker's identity within one scheduler's lifetime, assigned by the runtime on connect.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

/// A client's identity within one scheduler's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ClientId(pub u32);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client-{}", self.0)
    }
}

/// A worker and the address its peers fetch data from.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Peer {
    /// The worker.
    pub id: WorkerId,
    /// Where its data server listens (e.g. `"10.0.0.7:8788"`).
    pub address: String,
}

/// What a connecting peer is.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Role {
    /// A worker offering `nthreads` slots, bounded to `memory_limit` bytes (0 = unlimited),
    /// serving its data at `address`.
    Worker {
        nthreads: u32,
        memory_limit: u64,
        address: String,
        /// The nanny that started it, if any (unique per nanny): a worker joining from
        /// the nanny of a connected worker replaces it (that one died; its nanny only
        /// starts a new one once the old has exited).
        #[serde(default)]
        nanny: Option<String>,
        /// What it offers tasks that ask for abstract resources (Dask's `--resources`).
        #[serde(default)]
        resources: Resources,
    },
    /// A client submitting graphs.
    Client,
}

/// The first message on every control connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Worker or client.
    pub role: Role,
    /// The cluster's shared secret, from the cluster file.
    pub token: String,
    /// A name for people (logs, dashboard).
    pub name: String,
}

impl Hello {
    /// Accept this hello if its version matches and its token equals `expected_token`.
    pub fn check(&self, expected_token: &str) -> Result<()> {
        if self.version != PROTOCOL_VERSION {
            return Err(Error::Transport(format!(
                "protocol version mismatch: peer {:?} speaks version {}, this side {}",
                self.name, self.version, PROTOCOL_VERSION
            )));
        }
        if !constant_time_eq(self.token.as_bytes(), expected_token.as_bytes()) {
            return Err(Error::Auth(format!(
                "peer {:?} sent a wrong token",
                self.name
            )));
        }
        Ok(())
    }
}

/// Compare secrets without an early exit that would leak the matching prefix's length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A task as a client submits it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's identity, shared across submissions and clients.
    pub key: Key,
    /// Keys of its inputs, in the order the op receives them.
    pub deps: Vec<Key>,
    /// The encoded op; opaque to the scheduler.
    pub payload: ByteBuf,
    /// Lower runs first: the client's optimizer order within a user priority band
    /// ([`task_priority`]).
    pub priority: i64,
    /// How many times an erring task is run again before it counts as erred.
    pub retries: u32,
    /// Where it may run (Dask's `workers=`); `None`, and left out of the message: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restrictions: Option<Restrictions>,
}

/// A task's [`TaskSpec::priority`]: its graph order (lower first) moved a whole band of
/// 2^32 ahead per step of the user's priority (Dask's `priority=`, higher first), so
/// every queue ordered by it serves a higher user priority first with no field of its
/// own. `i32::MIN` counts as `i32::MIN + 1` (its band would overflow).
pub fn task_priority(user_priority: i32, graph_order: u32) -> i64 {
    -(i64::from(user_priority.max(i32::MIN + 1)) << 32) + i64::from(graph_order)
}

/// The user priority band of a [`TaskSpec::priority`] (lower: more urgent).
pub fn priority_band(priority: i64) -> i64 {
    priority >> 32
}

/// The workers a task may run on (Dask's `workers=` and `allow_other_workers=`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Restrictions {
    /// Worker addresses (`host:port`, as [`Peer::address`]) or hosts (every worker there);
    /// empty: any worker (that has the `resources`).
    pub workers: Vec<String>,
    /// Run anywhere while none of them is connected, instead of waiting for one. The
    /// resources still apply (as in Dask, `allow_other_workers` loosens only the list).
    pub loose: bool,
    /// What it holds while it runs (Dask's `resources=`): only workers offering at least
    /// this much may run it, and a worker runs such tasks only while their sum fits.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

impl Restrictions {
    /// Restricts nothing (no list, no resources): treated as no restrictions at all.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty() && self.resources.is_empty()
    }

    /// May a worker at `address` offering `resources` run it? Its list is ignored when
    /// `listed_only` is false (a loose restriction with no listed worker connected).
    pub fn allows(&self, address: &str, resources: &Resources, listed_only: bool) -> bool {
        resources.covers(&self.resources)
            && (!listed_only || self.workers.is_empty() || self.lists(address))
    }

    /// Does this restriction's list name a worker at `address`? An entry matches its
    /// address or its host, with or without a scheme (`tcp://10.0.0.1:4000`, as Dask
    /// users write them).
    pub fn lists(&self, address: &str) -> bool {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        (self.workers.iter())
            .map(|w| w.split_once("://").map_or(w.as_str(), |(_, rest)| rest))
            .any(|w| w == address || w == host || w == bare)
    }
}

/// Abstract resources by name (Dask's `resources=`: `GPU=2`, `MEMORY=10e9`): what a worker
/// offers, or what a task holds while it runs. Amounts are finite and not negative; the
/// scheduler and workers only compare and add them, they mean what the user says.
#[derive(Clone, Default, PartialEq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resources(BTreeMap<String, f64>);

// Amounts are never NaN ([`Resources::new`] checks; [`Resources::check`] for the wire).
impl Eq for Resources {}

impl Resources {
    /// From `(name, amount)` pairs; a repeated name adds up. An empty name, or an amount
    /// that is negative, NaN or infinite, is an error naming it.
    pub fn new<S: Into<String>>(pairs: impl IntoIterator<Item = (S, f64)>) -> Result<Resources> {
        let mut map = BTreeMap::new();
        for (name, amount) in pairs {
            let name = name.into();
            check_resource(&name, amount)?;
            *map.entry(name).or_insert(0.0) += amount;
        }
        Ok(Resources(map))
    }

    /// Parse Dask's command-line form, `"GPU=2 MEMORY=10e9"` (spaces or commas between).
    pub fn parse(text: &str) -> Result<Resources> {
        let pairs = (text.split([' ', ',']).filter(|s| !s.is_empty()))
            .map(|item| {
                let bad = || {
                    Error::Graph(format!(
                        "resource {item:?} is not NAME=AMOUNT (as in \"GPU=2 MEMORY=10e9\")"
                    ))
                };
                let (name, amount) = item.split_once('=').ok_or_else(bad)?;
                let amount: f64 = amount.trim().parse().map_err(|_| bad())?;
                Ok((name.trim().to_string(), amount))
            })
            .collect::<Result<Vec<_>>>()?;
        Resources::new(pairs)
    }

    /// Every amount valid (a peer's message is checked before it is believed).
    pub fn check(&self) -> Result<()> {
        (self.0.iter()).try_for_each(|(name, amount)| check_resource(name, *amount))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The resources by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Is there at least `need` of every resource `need` names?
    pub fn covers(&self, need: &Resources) -> bool {
        (need.0.iter()).all(|(name, amount)| self.0.get(name).is_some_and(|have| have >= amount))
    }

    /// [`Resources::covers`], forgiving the rounding that taking and giving back
    /// fractions leaves (1, less 0.3, 0.2 and 0.1, given back in that order, is
    /// 0.9999999999999999).
    pub fn nearly_covers(&self, need: &Resources) -> bool {
        (need.0.iter()).all(|(name, amount)| {
            (self.0.get(name)).is_some_and(|have| *have >= amount - 1e-9 * amount.max(1.0))
        })
    }

    /// Take `need` out (a task starts); [`Resources::covers`] must hold.
    pub fn take(&mut self, need: &Resources) {
        for (name, amount) in &need.0 {
            if let Some(have) = self.0.get_mut(name) {
                *have -= amount;
            }
        }
    }

    /// Give `need` back (a task ended), up to `total`: rounding never makes more.
    pub fn give(&mut self, need: &Resources, total: &Resources) {
        for (name, amount) in &need.0 {
            if let (Some(have), Some(max)) = (self.0.get_mut(name), total.0.get(name)) {
                *have = (*have + amount).min(*max);
            }
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, amount) in &self.0 {
            if !std::mem::take(&mut first) {
                f.write_str(" ")?;
            }
            write!(f, "{name}={amount}")?;
        }
        Ok(())
    }
}

fn check_resource(name: &str, amount: f64) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Graph(format!(
            "a resource needs a name (amount {amount})"
        )));
    }
    if name.contains(|c: char| c.is_whitespace() || c == ',' || c == '=') {
        return Err(Error::Graph(format!(
            "resource name {name:?} has a space, comma or '=' (it could not be written as \
             --resources NAME=AMOUNT)"
        )));
    }
    if !amount.is_finite() || amount < 0.0 {
        return Err(Error::Graph(format!(
            "resource {name:?} has amount {amount}: it must be a finite number, 0 or more"
        )));
    }
    Ok(())
}

/// Where a dependency's value can be fetched from.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DepLocation {
    /// The dependency.
    pub key: Key,
    /// The workers holding it, best first.
    pub who_has: Vec<Peer>,
    /// Its size.
    pub nbytes: u64,
}

/// Scheduler to worker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run a task once its dependencies are local.
    ComputeTask {
        key: Key,
        payload: ByteBuf,
        priority: i64,
        deps: Vec<DepLocation>,
        /// What it holds while it runs ([`Restrictions::resources`]); mostly none.
        #[serde(default, skip_serializing_if = "Resources::is_empty")]
        resources: Resources,
    },
    /// Forget these keys: drop their values (and spill files) or pending tasks.
    FreeKeys { keys: Vec<Key> },
    /// Give back `key` if it has not started; answer with [`FromWorker::StealResponse`].
    StealRequest { key: Key },
    /// Fetch these values from their holders and keep them (a replica, or a retiring
    /// worker's values handed off); answered per key with [`FromWorker::AddKeys`], or
    /// [`FromWorker::MissingData`] per holder when none answered.
    AcquireReplicas { keys: Vec<DepLocation> },
    /// Retired: stop now (the scheduler has already removed the worker).
    Close { reason: String },
    /// Exit now, dropping everything, for the nanny to start a fresh process
    /// ([`FromClient::Restart`]; the scheduler has already removed the worker).
    Restart,
}

/// A worker's load and memory, sent periodically.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct WorkerMetrics {
    /// Bytes of values held in memory.
    pub managed_bytes: u64,
    /// Bytes of values spilled to disk.
    pub spilled_bytes: u64,
    /// Last process memory sample.
    pub rss: u64,
    /// Tasks running now.
    pub executing: u32,
    /// Tasks waiting for a thread or for data.
    pub pending: u32,
    /// True while memory is above the pause threshold and no new task starts.
    pub paused: bool,
}

/// Worker to scheduler.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// A task finished; its value (`nbytes` large) is held by the sender.
    TaskFinished {
        key: Key,
        nbytes: u64,
        compute_micros: u64,
    },
    /// A task's op failed.
    TaskErred { key: Key, error: TaskFailure },
    /// The answer to a [`ToWorker::StealRequest`].
    StealResponse { key: Key, stolen: bool },
    /// Load and memory.
    Heartbeat(WorkerMetrics),
    /// The sender now also holds these values (fetched from peers), with their sizes.
    AddKeys { keys: Vec<(Key, u64)> },
    /// `from_worker` could not provide `key` (it does not have it, or is unreachable).
    MissingData { key: Key, from_worker: WorkerId },
    /// The worker wants to stop (it was told to, e.g. by a signal): retire it gracefully,
    /// handing its values off, then send [`ToWorker::Close`].
    Retire,
    /// The executing task `key` gave its thread back while it waits (Dask's `secede`,
    /// its "long-running" task): no longer count it as this worker's load.
    Seceded { key: Key },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Client to scheduler.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FromClient {
    /// Add tasks (keys already known are shared, not replaced) and want `wanted`.
    SubmitGraph {
        tasks: Vec<TaskSpec>,
        wanted: Vec<Key>,
    },
    /// This client no longer wants these keys.
    ReleaseKeys { keys: Vec<Key> },
    /// Like `ReleaseKeys`, answered with [`ToClient::Cancelled`] per key.
    Cancel { keys: Vec<Key> },
    /// Where are these keys held? (to gather them from workers directly)
    WhoHas { keys: Vec<Key> },
    /// Which workers are connected? Answered with [`ToClient::Workers`].
    ListWorkers,
    /// What does the cluster look like now? Answered with [`ToClient::Info`].
    Info,
    /// Values this client will push to workers itself (Dask's `scatter`), each key with
    /// its encoded size: answered with [`ToClient::ScatterTo`] (where to push each) or
    /// [`ToClient::ScatterRefused`]. The client wants the keys from now on. With
    /// `workers` (addresses or hosts, as [`Restrictions::workers`]), only on those.
    Scatter {
        keys: Vec<(Key, u64)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        workers: Vec<String>,
    },
    /// Have each key in memory held by at least `n` workers (all open workers if `None`):
    /// answered with [`ToClient::Replicated`] carrying `request` once every copy made (or
    /// failed). Never removes copies.
    Replicate {
        request: u64,
        keys: Vec<Key>,
        n: Option<u32>,
    },
    /// Retire the workers at these addresses gracefully (Dask's `retire_workers`):
    /// answered at once with [`ToClient::Retiring`]; each is a [`ToClient::WorkerLeft`]
    /// when gone. All or none: an unknown address, or retiring every open worker while
    /// one holds values (they would have nowhere to go), refuses the request.
    RetireWorkers { addresses: Vec<String> },
    /// Keep `keys` on the cluster under `name`, with `payload` (what the client needs to
    /// rebuild the object: opaque here), for any client to get (Dask's `publish_dataset`):
    /// they live until unpublished, whoever else releases them. Refused if a key is not
    /// known (no live future holds it) or, unless `replace`, the name is taken. Answered
    /// with [`ToClient::Dataset`] carrying `request`.
    PublishDataset {
        request: u64,
        name: String,
        keys: Vec<Key>,
        payload: ByteBuf,
        replace: bool,
    },
    /// The keys and payload published under `name` ([`DatasetReply::Found`]), or a
    /// refusal naming it. The keys are not wanted by this client until it submits them.
    GetDataset { request: u64, name: String },
    /// Forget the dataset `name` (its keys go once nothing else wants them).
    UnpublishDataset { request: u64, name: String },
    /// The names published now, sorted ([`DatasetReply::Names`]).
    ListDatasets { request: u64 },
    /// Forget every task and restart every worker process through its nanny (Dask's
    /// `client.restart`): every client's futures are cancelled, published datasets
    /// dropped. Refused (nothing done) if a worker runs without a nanny. Answered with
    /// [`ToClient::Restarting`].
    Restart { request: u64 },
    /// Run these keys to the end even if no client wants them any more (Dask's
    /// `fire_and_forget`): each is kept until it is in memory or has erred, then released
    /// unless something else needs it. Keys already done, or unknown, are left alone.
    FireAndForget { keys: Vec<Key> },
    /// The task runs the scheduler remembers (the last [`TASK_STREAM_LENGTH`]) from
    /// number `since` on (`u64::MAX`: none, just the next number); Dask's task stream.
    /// Answered with [`ToClient::TaskStream`].
    TaskStream { request: u64, since: u64 },
    /// An operation on a named event, semaphore, variable or queue (Dask's coordination
    /// primitives), answered with [`ToClient::Coordinated`] carrying `request`: at once,
    /// or, for one that waits (an event to be set, a lease, a variable's first value, a
    /// queue's next item), when it can go on. [`Coordinate::Abandon`] with the same
    /// `request` withdraws a waiting operation.
    Coordinate { request: u64, op: Coordinate },
    /// How many workers would finish the work in sight in about `target_micros` (Dask's
    /// `adaptive_target`), and, when that is fewer than now, which to close: answered
    /// with [`ToClient::AdaptiveTarget`] carrying `request`. Nothing changes: whoever
    /// starts worker processes acts on it.
    AdaptiveTarget { request: u64, target_micros: u64 },
    /// Which `n` open workers to close for a manual scale-down (Dask's
    /// `workers_to_close`): the least busy, then the emptiest. Answered with
    /// [`ToClient::AdaptiveTarget`] carrying `request` (`workers`: how many stay).
    WorkersToClose { request: u64, n: u32 },
    /// Even out the bytes workers hold (Dask's `rebalance`): values move from workers
    /// holding more than the mean to the emptiest holding less, each copy kept by its
    /// recipient before the sender drops its own; a move that would take the recipient
    /// past the mean is not made, nor one of an input of a task running on the sender.
    /// `keys`: only these (every value when `None`); `workers`: only among the workers at
    /// these addresses (every open worker when empty). Answered with
    /// [`ToClient::Rebalanced`] carrying `request` once every move settled.
    Rebalance {
        request: u64,
        keys: Option<Vec<Key>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        workers: Vec<String>,
    },
}

/// A value kept by a coordination variable or queue: keys of values on the cluster, held
/// while the item is (as a published dataset's), and bytes the scheduler does not read
/// (how the client rebuilds the object around them).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Item {
    pub keys: Vec<Key>,
    pub payload: ByteBuf,
}

/// Operations on the scheduler's named coordination objects; each name space is its own
/// (an event and a queue may share a name). See [`FromClient::Coordinate`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Coordinate {
    /// Set the event: every waiter goes on, and later waits return at once.
    EventSet { name: String },
    /// Clear the event: waits block again.
    EventClear { name: String },
    /// Answered ([`CoordReply::Flag`] `true`) once the event is set.
    EventWait { name: String },
    /// [`CoordReply::Flag`]: is it set?
    EventIsSet { name: String },
    /// Take a lease of the semaphore `name` (a lock is one with a single lease): answered
    /// with its number ([`CoordReply::Leased`]) once one is free, in the order asked. The
    /// first acquire sets `max_leases`; a later one asking for another number is refused.
    Acquire { name: String, max_leases: u32 },
    /// Give back lease `lease` (refused unless this client holds it).
    Release { name: String, lease: u64 },
    /// [`CoordReply::Count`]: leases held now.
    Leases { name: String },
    /// Set the variable (the item replaces any earlier one). Refused, naming it, if a key
    /// is not on the cluster.
    VariableSet { name: String, item: Item },
    /// [`CoordReply::Item`]: the variable's value, once it has one.
    VariableGet { name: String },
    /// Forget the variable (waiting gets go on waiting).
    VariableDelete { name: String },
    /// Append to the queue; [`CoordReply::Done`] once it is in. A queue given a
    /// `maxsize` (by the first put naming one while it exists; another bound is refused;
    /// 0 names none) holds at most that many items (Dask's `Queue(maxsize=)`): every put
    /// waits while it is full or earlier puts wait, its keys held meanwhile. `back` puts
    /// an item a getter could not keep back at the front, never waiting.
    QueuePut {
        name: String,
        item: Item,
        #[serde(default, skip_serializing_if = "is_zero")]
        maxsize: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        back: bool,
    },
    /// [`CoordReply::Item`]: the queue's oldest item, once there is one; it leaves the
    /// queue, its keys now wanted by the getter.
    QueueGet { name: String },
    /// [`CoordReply::Count`]: items in the queue.
    QueueSize { name: String },
    /// Subscribe to the topic `name` (Dask's `Sub`): answered with the subscription's
    /// number ([`CoordReply::Subscribed`]); messages published from now on are kept for
    /// it until taken ([`Coordinate::Next`]) or it ends.
    Subscribe { name: String },
    /// End this client's subscription `id` to `name`; a `Next` waiting on it is refused.
    Unsubscribe { name: String, id: u64 },
    /// Send a message to every subscription of the topic `name` now (Dask's `Pub.put`),
    /// answered with how many ([`CoordReply::Count`]); with none it is dropped. A message
    /// is bytes only: an item holding keys is refused (a queue or variable carries data).
    Publish { name: String, item: Item },
    /// [`CoordReply::Item`]: the oldest message of subscription `id`, once there is one.
    Next { name: String, id: u64 },
    /// Withdraw this client's waiting operation numbered as this request: answered with
    /// [`CoordReply::Abandoned`] if it still waited, not at all if it was answered
    /// already (that answer was sent first).
    Abandon,
}

/// The answer to a [`FromClient::Coordinate`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum CoordReply {
    Done,
    /// A lease was granted: its number, for [`Coordinate::Release`].
    Leased {
        lease: u64,
    },
    Flag(bool),
    Count(u64),
    /// A variable's value or a queue's item; its keys are wanted by the client from now
    /// on (it submits them, as for a dataset, to hold futures of them).
    Item(Item),
    /// Not done, saying why (naming the object or key).
    Refused {
        error: String,
    },
    /// The waiting operation was withdrawn ([`Coordinate::Abandon`]).
    Abandoned,
    /// A subscription's number, for [`Coordinate::Next`] and [`Coordinate::Unsubscribe`].
    Subscribed {
        id: u64,
    },
}

/// Task runs a scheduler remembers for [`FromClient::TaskStream`] (as Dask's task stream).
pub const TASK_STREAM_LENGTH: usize = 100_000;

/// One run of a task: where and when, as the scheduler heard of it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its number in the stream (consecutive).
    pub seq: u64,
    pub key: Key,
    /// The worker's address.
    pub worker: String,
    /// Microseconds since the Unix epoch: the end is when the scheduler heard of it, the
    /// start that less the run time the worker measured (the same as stop for a failed
    /// run, whose time is not reported).
    pub start: u64,
    pub stop: u64,
    /// Its value's size; 0 for a failed run.
    pub nbytes: u64,
    /// The run raised (a retried one too).
    pub erred: bool,
}

/// The answer to a dataset request ([`FromClient::PublishDataset`] and the others).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DatasetReply {
    /// Published or unpublished.
    Done,
    /// Not done, saying why (naming the dataset or key).
    Refused { error: String },
    /// What [`FromClient::GetDataset`] asked for.
    Found { keys: Vec<Key>, payload: ByteBuf },
    /// What [`FromClient::ListDatasets`] asked for.
    Names { names: Vec<String> },
}

/// Why a task failed, kept structured so a client can rebuild the error the local
/// schedulers give (`Error::Compute` or `Error::Panic` naming the task).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task that failed; inside a fused chain, the inner task.
    pub task: Key,
    /// It panicked, rather than returning an error.
    pub panicked: bool,
    /// The panic message, or the error's own text (without the task prefix).
    pub message: String,
    /// The error's kind when it is one of partita's plain-text kinds (`shape`, `schema`,
    /// `type`, ...), so the client rebuilds the same error; empty for anything else.
    #[serde(default)]
    pub kind: String,
}

/// partita's error kinds that are just a message, by their wire name.
const PLAIN_KINDS: [&str; 9] = [
    "graph",
    "shape",
    "schema",
    "type",
    "codec",
    "transport",
    "auth",
    "not-implemented",
    "internal",
];

impl TaskFailure {
    /// `task` returned an error saying `message`.
    pub fn error(task: Key, message: impl Into<String>) -> TaskFailure {
        TaskFailure {
            task,
            panicked: false,
            message: message.into(),
            kind: String::new(),
        }
    }

    /// `task` returned `error` (the error itself, without the task wrapper).
    pub fn from_error(task: Key, error: &partita_core::Error) -> TaskFailure {
        use partita_core::Error as E;
        let (kind, message) = match error {
            E::Graph(m) => ("graph", m),
            E::Shape(m) => ("shape", m),
            E::Schema(m) => ("schema", m),
            E::Type(m) => ("type", m),
            E::Codec(m) => ("codec", m),
            E::Transport(m) => ("transport", m),
            E::Auth(m) => ("auth", m),
            E::NotImplemented(m) => ("not-implemented", m),
            E::Internal(m) => ("internal", m),
            other => return TaskFailure::error(task, other.to_string()),
        };
        debug_assert!(PLAIN_KINDS.contains(&kind));
        TaskFailure {
            task,
            panicked: false,
            message: message.clone(),
            kind: kind.to_string(),
        }
    }

    /// The error the task returned, of its original kind where that is known.
    pub fn source_error(&self) -> partita_core::Error {
        use partita_core::Error as E;
        let m = self.message.clone();
        match self.kind.as_str() {
            "graph" => E::Graph(m),
            "shape" => E::Shape(m),
            "schema" => E::Schema(m),
            "type" => E::Type(m),
            "codec" => E::Codec(m),
            "transport" => E::Transport(m),
            "auth" => E::Auth(m),
            "not-implemented" => E::NotImplemented(m),
            "internal" => E::Internal(m),
            _ => E::External(m.into()),
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.panicked { "panicked" } else { "failed" };
        write!(f, "task {} {verb}: {}", self.task, self.message)
    }
}

/// Scheduler to client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ToClient {
    /// A wanted key is computed and held by `workers`.
    KeyInMemory {
        key: Key,
        workers: Vec<Peer>,
        nbytes: u64,
    },
    /// A wanted key failed; `error` is the failure that stopped it (naming its task).
    KeyErred { key: Key, error: TaskFailure },
    /// A cancelled key is no longer computed for this client.
    Cancelled { key: Key },
    /// A submitted graph was refused as a whole (missing dependency, cycle, ...).
    GraphRefused { error: String },
    /// The answer to [`FromClient::WhoHas`].
    WhoHasReply { holders: Vec<(Key, Vec<Peer>)> },
    /// The answer to [`FromClient::ListWorkers`]: every live worker and its thread count.
    Workers { workers: Vec<(Peer, u32)> },
    /// The answer to [`FromClient::Info`].
    Info { info: ClusterInfo },
    /// The answer to [`FromClient::Scatter`]: the worker to push each value to, in the
    /// request's order.
    ScatterTo { placements: Vec<(Key, Peer)> },
    /// A [`FromClient::Scatter`] refused as a whole (no worker, a key already known);
    /// `key` is the request's first.
    ScatterRefused { key: Key, error: String },
    /// A worker left the cluster (it retired, died or missed its heartbeats): values it
    /// held are no longer there, so a client stops asking it for them.
    WorkerLeft { peer: Peer },
    /// The answer to [`FromClient::Replicate`]: where each key is now.
    Replicated {
        request: u64,
        holders: Vec<(Key, Vec<Peer>)>,
    },
    /// The answer to [`FromClient::RetireWorkers`]: the workers now retiring (or already),
    /// or, if any address was refused (with why), none.
    Retiring {
        workers: Vec<Peer>,
        refused: Vec<(String, String)>,
    },
    /// The answer to a dataset request carrying `request`.
    Dataset { request: u64, reply: DatasetReply },
    /// The answer to [`FromClient::Restart`]: how many workers are restarting (the
    /// cluster has that many again once they are back), or why nothing was done.
    Restarting {
        request: u64,
        workers: u32,
        refused: Option<String>,
    },
    /// The answer to [`FromClient::TaskStream`]: the runs still remembered from the number
    /// asked on, in order, and the number the next run will get.
    TaskStream {
        request: u64,
        next: u64,
        records: Vec<TaskRecord>,
    },
    /// The answer to [`FromClient::Coordinate`] `request`.
    Coordinated { request: u64, reply: CoordReply },
    /// The answer to [`FromClient::AdaptiveTarget`] or [`FromClient::WorkersToClose`].
    AdaptiveTarget {
        request: u64,
        target: AdaptiveTarget,
    },
    /// The answer to [`FromClient::Rebalance`]: each key moved with its holders now and
    /// the bytes moved, or, when the request was refused (an unknown or retiring address,
    /// a restart meanwhile), why.
    Rebalanced {
        request: u64,
        holders: Vec<(Key, Vec<Peer>)>,
        nbytes: u64,
        refused: Option<String>,
    },
}

/// A recommended cluster size ([`FromClient::AdaptiveTarget`]).
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AdaptiveTarget {
    /// Open (not retiring) workers wanted.
    pub workers: u32,
    /// When that is fewer than are open: the workers to retire to get there (as many as
    /// can go now; `workers` counts the rest as staying).
    pub to_close: Vec<Peer>,
}

/// Counters of a scheduler's life so far.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerStats {
    pub tasks_finished: u64,
    /// Tasks finished again after their value had been lost.
    pub recomputed: u64,
    /// Values lost with the workers holding them.
    pub lost_values: u64,
    pub workers_lost: u64,
    /// Workers that left gracefully, their values handed off.
    pub workers_retired: u64,
    pub steal_requests: u64,
    pub steals: u64,
}

/// What the scheduler knows of one worker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub peer: Peer,
    pub nthreads: u32,
    /// Bytes; 0 is no limit.
    pub memory_limit: u64,
    /// Tasks sent to it and not finished.
    pub processing: u64,
    /// Values it holds (in memory or spilled).
    pub held: u64,
    /// What it last reported of its load and memory.
    pub metrics: WorkerMetrics,
    /// Handing its values off before it leaves: it gets no new work.
    #[serde(default)]
    pub retiring: bool,
    /// The abstract resources it offers.
    #[serde(default)]
    pub resources: Resources,
}

/// Tasks the scheduler knows, by state (forgotten ones it no longer knows).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub released: u64,
    pub waiting: u64,
    pub queued: u64,
    pub processing: u64,
    pub memory: u64,
    pub erred: u64,
}

impl TaskCounts {
    /// Each count with its state's name (`"released"`, ..., `"erred"`), in life order.
    pub fn by_state(&self) -> [(&'static str, u64); 6] {
        [
            ("released", self.released),
            ("waiting", self.waiting),
            ("queued", self.queued),
            ("processing", self.processing),
            ("memory", self.memory),
            ("erred", self.erred),
        ]
    }
}

impl SchedulerStats {
    /// Each counter with its field's name.
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("tasks_finished", self.tasks_finished),
            ("recomputed", self.recomputed),
            ("lost_values", self.lost_values),
            ("workers_lost", self.workers_lost),
            ("workers_retired", self.workers_retired),
            ("steal_requests", self.steal_requests),
            ("steals", self.steals),
        ]
    }
}

/// A snapshot of the cluster, for people and monitoring (`Client::info`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Connected workers, by id.
    pub workers: Vec<WorkerStatus>,
    pub tasks: TaskCounts,
    pub stats: SchedulerStats,
}

/// Header of a data request to a worker's data server (worker to worker, or client).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DataRequest {
    /// Chosen by the requester to match the response.
    pub request_id: u64,
    /// The values wanted: one request carries many, answered in this order.
    pub keys: Vec<Key>,
}

/// What a stream to a worker's data server asks for, after its [`Hello`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DataOpen {
    /// Send these values ([`DataResponse`] per key).
    Fetch(DataRequest),
    /// Keep this value, which follows; answered with a [`PushReply`].
    Push(DataPush),
    /// Run this op (no inputs) here, now, outside the task slots, and answer with a
    /// [`RunReply`]: a client's `run` (Dask's `client.run`).
    Run(RunRequest),
}

/// An op to run on a worker outside any graph; `key` names it in errors.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    pub key: Key,
    /// The encoded op, as in [`TaskSpec::payload`].
    pub payload: ByteBuf,
}

/// A worker's answer to a [`RunRequest`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RunReply {
    /// The value follows (`nbytes`, the last `body` of them its bulk), as in
    /// [`DataResponse::Data`].
    Value { nbytes: u64, body: u64 },
    /// The op failed (or did not decode here).
    Failed { error: TaskFailure },
}

/// Header of a value a client pushes to a worker ([`FromClient::Scatter`]): `nbytes` of
/// encoded value follow, the last `body` of them its bulk, as in [`DataResponse::Data`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DataPush {
    pub key: Key,
    pub nbytes: u64,
    pub body: u64,
    /// A further copy of a value the cluster holds already (`scatter(broadcast=True)`):
    /// reported as [`FromWorker::AddKeys`], not as the value arriving.
    #[serde(default)]
    pub copy: bool,
}

/// A worker's answer to a [`DataPush`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PushReply {
    /// Kept (and reported to the scheduler).
    Stored { key: Key },
    /// Not kept, and why (it holds the key already, the value did not decode).
    Refused { key: Key, reason: String },
}

/// Header of the answer for one key of a request, in the request's order; for `Data`,
/// `nbytes` of encoded value follow on the stream before the next header, the last `body`
/// of them the value's bulk (an array's elements), which the receiver reads into an
/// aligned buffer the value can keep (`Value::decode_split`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DataResponse {
    /// The value follows.
    Data {
        request_id: u64,
        key: Key,
        nbytes: u64,
        body: u64,
    },
    /// This worker does not hold the value.
    Missing { request_id: u64, key: Key },
}

/// Encode a message as named MessagePack.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    append_encoded(msg, &mut bytes)?;
    Ok(bytes)
}

/// Append `msg` as named MessagePack to `out` and return its length; on error (it cannot be
/// encoded, or is over the limit) `out` is left as it was.
fn append_encoded<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<usize> {
    let start = out.len();
    let written = match rmp_serde::encode::write_named(out, msg) {
        Ok(()) => out.len() - start,
        Err(e) => {
            out.truncate(start);
            return Err(Error::Codec(format!("cannot encode control message: {e}")));
        }
    };
    if written > MAX_CONTROL_MESSAGE_BYTES {
        out.truncate(start);
        return Err(Error::Codec(format!(
            "control message of {written} bytes exceeds the limit of {MAX_CONTROL_MESSAGE_BYTES} bytes"
        )));
    }
    Ok(written)
}

/// Decode a message; malformed or oversized input is a codec error naming the type.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    if bytes.len() > MAX_CONTROL_MESSAGE_BYTES {
        return Err(Error::Codec(format!(
            "{what} of {} bytes exceeds the limit of {MAX_CONTROL_MESSAGE_BYTES} bytes",
            bytes.len()
        )));
    }
    rmp_serde::from_slice(bytes)
        .map_err(|e| Error::Codec(format!("malformed {what} ({} bytes): {e}", bytes.len())))
}

/// Append `msg` to `out` as one frame: the length prefix of [`frame`], then the message as
/// [`encode`] makes it, written in place (no buffer of its own, no copy). On error `out` is
/// left as it was.
pub fn encode_framed_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match append_encoded(msg, out) {
        // Within the limit, so it fits the u32 prefix.
        Ok(len) => out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes()),
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

/// Prefix `payload` with its length as a little-endian `u32`.
pub fn frame(payload: &[u8]) -> Result<Vec<u8>> {
    if payload.len() > MAX_CONTROL_MESSAGE_BYTES {
        return Err(Error::Codec(format!(
            "frame of {} bytes exceeds the limit of {MAX_CONTROL_MESSAGE_BYTES} bytes",
            payload.len()
        )));
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::Codec(format!("frame of {} bytes is too long", payload.len())))?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Splits a byte stream into frames made by [`frame`], accepting bytes in any pieces.
///
/// A frame declaring more than the limit poisons the decoder: the stream cannot be
/// resynchronized, so every later call returns the same error and the connection should
/// be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
    failed: Option<String>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_CONTROL_MESSAGE_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `limit` bytes.
    pub fn with_limit(limit: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            limit,
            failed: None,
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>> {
        if let Some(msg) = &self.failed {
            return Err(Error::Codec(msg.clone()));
        }
        let avail = &self.buf[self.start..];
        let Some(header) = avail.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*header) as usize;
        if len > self.limit {
            let msg = format!(
                "frame declares {len} bytes, over the limit of {} bytes",
                self.limit
            );
            self.failed = Some(msg.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Err(Error::Codec(msg));
        }
        let Some(body) = avail.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = body.to_vec();
        self.start += 4 + len;
        // Compact once the consumed prefix dominates, so memory tracks the unread part.
        if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn task_failures_keep_their_error_kind_on_the_wire() {
        use partita_core::Error;
        let key = Key::new("x", [1]);
        let shape = TaskFailure::from_error(key.clone(), &Error::Shape("block [0] is 3x4".into()));
        let back: TaskFailure = decode(&encode(&shape).unwrap()).unwrap();
        assert!(matches!(back.source_error(), Error::Shape(m) if m == "block [0] is 3x4"));
        let other = TaskFailure::from_error(key, &Error::External("disk on fire".into()));
        assert!(
            matches!(other.source_error(), Error::External(e) if e.to_string() == "disk on fire")
        );
    }

    use super::*;
    use proptest::prelude::*;

    fn sample_messages() -> Vec<FromClient> {
        vec![
            FromClient::SubmitGraph {
                tasks: vec![TaskSpec {
                    key: Key::new("x", [0, 3]),
                    deps: vec![Key::named("a")],
                    payload: ByteBuf::from(vec![1, 2, 3]),
                    priority: -4,
                    retries: 2,
                    restrictions: None,
                }],
                wanted: vec![Key::new("x", [0, 3])],
            },
            FromClient::ReleaseKeys {
                keys: vec![Key::named("a")],
            },
            FromClient::WhoHas { keys: vec![] },
        ]
    }

    #[test]
    fn resources_parse_compare_and_refuse_bad_amounts() {
        let offer = Resources::parse("GPU=2, MEMORY=10e9 GPU=1").unwrap();
        assert_eq!(offer.to_string(), "GPU=3 MEMORY=10000000000");
        let one_gpu = Resources::new([("GPU", 1.0)]).unwrap();
        assert!(offer.covers(&one_gpu) && offer.covers(&Resources::default()));
        assert!(!one_gpu.covers(&offer));
        assert!(!Resources::default().covers(&one_gpu));
        let mut free = offer.clone();
        free.take(&Resources::new([("GPU", 2.5)]).unwrap());
        assert!(!free.covers(&one_gpu));
        free.give(&Resources::new([("GPU", 2.5)]).unwrap(), &offer);
        assert_eq!(free, offer);
        for bad in ["GPU", "GPU=two", "=1", "GPU=-1", "GPU=nan", "GPU=inf"] {
            let err = Resources::parse(bad).unwrap_err().to_string();
            assert!(err.contains("GPU") || err.contains("name"), "{bad}: {err}");
        }
        let err = Resources::new([("my gpu", 1.0)]).unwrap_err().to_string();
        assert!(err.contains("\"my gpu\"") && err.contains("space"), "{err}");
        // Fractions taken and given back may round below the whole: nearly is enough.
        let mut left = Resources::parse("MEMORY=1").unwrap();
        let whole = left.clone();
        let part = |p| Resources::new([("MEMORY", p)]).unwrap();
        for p in [0.3, 0.2, 0.1] {
            left.take(&part(p));
        }
        for p in [0.3, 0.2, 0.1] {
            left.give(&part(p), &whole);
        }
        assert!(!left.covers(&whole) && left.nearly_covers(&whole), "{left}");
        // Restrictions: resources always apply, the list only while `listed_only`.
        let r = Restrictions {
            workers: vec!["10.0.0.1".into()],
            loose: true,
            resources: one_gpu.clone(),
        };
        assert!(r.allows("10.0.0.1:4000", &offer, true));
        assert!(!r.allows("10.0.0.2:4000", &offer, true));
        assert!(r.allows("10.0.0.2:4000", &offer, false));
        assert!(!r.allows("10.0.0.1:4000", &Resources::default(), false));
        // On the wire: left out when empty, and read back equal.
        let spec = |resources: Resources| TaskSpec {
            key: Key::named("t"),
            deps: vec![],
            payload: ByteBuf::new(),
            priority: 0,
            retries: 0,
            restrictions: Some(Restrictions {
                workers: vec![],
                loose: false,
                resources,
            }),
        };
        let plain = encode(&spec(Resources::default())).unwrap();
        let with = encode(&spec(offer.clone())).unwrap();
        assert!(with.len() > plain.len());
        assert_eq!(decode::<TaskSpec>(&with).unwrap(), spec(offer));
        assert_eq!(
            decode::<TaskSpec>(&plain).unwrap(),
            spec(Resources::default())
        );
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut stream = Vec::new();
        for m in sample_messages() {
            stream.extend(frame(&encode(&m).unwrap()).unwrap());
        }
        let mut dec = FrameDecoder::default();
        let mut out = Vec::new();
        // One byte at a time: frames must come out whole whatever the split.
        for b in stream {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(decode::<FromClient>(&f).unwrap());
            }
        }
        assert_eq!(out, sample_messages());
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn framing_in_place_matches_framing_a_copy() {
        let mut stream = b"earlier".to_vec();
        let mut want = stream.clone();
        for m in sample_messages() {
            encode_framed_into(&m, &mut stream).unwrap();
            want.extend(frame(&encode(&m).unwrap()).unwrap());
        }
        assert_eq!(stream, want);
        // Too large: refused, and what was there stays as it was.
        let huge = FromClient::SubmitGraph {
            tasks: vec![TaskSpec {
                key: Key::named("big"),
                deps: vec![],
                payload: ByteBuf::from(vec![0u8; MAX_CONTROL_MESSAGE_BYTES]),
                priority: 0,
                retries: 0,
                restrictions: None,
            }],
            wanted: vec![],
        };
        let err = encode_framed_into(&huge, &mut stream).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        assert_eq!(stream, want);
    }

    #[test]
    fn oversized_frame_is_refused_and_poisons() {
        let mut dec = FrameDecoder::with_limit(16);
        dec.push(&100u32.to_le_bytes());
        let err = dec.next_frame().unwrap_err().to_string();
        assert!(
            err.contains("declares 100 bytes, over the limit of 16"),
            "{err}"
        );
        dec.push(&[0; 4]);
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn truncated_and_malformed_messages_are_errors() {
        let bytes = encode(&sample_messages()[0]).unwrap();
        let err = decode::<FromClient>(&bytes[..bytes.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed FromClient"), "{err}");
        assert!(decode::<ToWorker>(&[0xc1]).is_err());
        let mut dec = FrameDecoder::default();
        dec.push(&frame(b"abc").unwrap()[..5]);
        assert_eq!(dec.next_frame().unwrap(), None);
    }

    #[test]
    fn hello_checks_version_and_token() {
        let mut hello = Hello {
            version: PROTOCOL_VERSION,
            role: Role::Client,
            token: "secret".into(),
            name: "c".into(),
        };
        assert!(hello.check("secret").is_ok());
        assert!(matches!(hello.check("secreT"), Err(Error::Auth(_))));
        hello.version += 1;
        assert!(matches!(hello.check("secret"), Err(Error::Transport(_))));
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        ("[a-z]{1,6}", proptest::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(n, i)| Key::new(n, i))
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<ToWorker>(&bytes);
            let _ = decode::<FromWorker>(&bytes);
            let _ = decode::<FromClient>(&bytes);
            let _ = decode::<ToClient>(&bytes);
            let _ = decode::<Hello>(&bytes);
            let _ = decode::<DataOpen>(&bytes);
            let _ = decode::<PushReply>(&bytes);
            let mut dec = FrameDecoder::with_limit(1024);
            dec.push(&bytes);
            while let Ok(Some(f)) = dec.next_frame() {
                let _ = decode::<FromWorker>(&f);
            }
        }

        #[test]
        fn worker_messages_round_trip(
            key in arb_key(),
            nbytes in any::<u64>(),
            error in ".{0,20}",
            worker in any::<u32>(),
        ) {
            let msgs = vec![
                FromWorker::TaskFinished { key: key.clone(), nbytes, compute_micros: nbytes / 3 },
                FromWorker::TaskErred { key: key.clone(), error: TaskFailure::error(key.clone(), error) },
                FromWorker::AddKeys { keys: vec![(key.clone(), nbytes)] },
                FromWorker::MissingData { key, from_worker: WorkerId(worker) },
            ];
            for m in msgs {
                prop_assert_eq!(decode::<FromWorker>(&encode(&m).unwrap()).unwrap(), m);
            }
        }
    }
}

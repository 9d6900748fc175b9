//! Dask's coordination primitives on a cluster: [`Event`], [`Lock`], [`Semaphore`],
//! [`Variable`], [`Queue`] and pub/sub topics ([`Pub`], [`Sub`]), named objects the
//! scheduler keeps ([`partita_proto::coordination`]) for every client of the cluster, and
//! so for tasks through [`crate::get_client`].
//!
//! Key decisions:
//! - **Handles are names.** Making one sends nothing; two handles of the same name (in
//!   two processes, say a client and a task) are the same object.
//! - **Waits are the scheduler's answers**, bounded by a timeout on this side; a wait
//!   that ends early (timeout, or the `interrupted` check the bindings use for Ctrl-C) is
//!   withdrawn, and a grant that crossed the withdrawal is undone here (a lease given
//!   back, a queue item put back at the end): nothing is held or lost for a caller that
//!   stopped waiting.
//! - **Values are datasets** ([`Dataset`]): futures, persisted arrays and frames, or a
//!   binding's bytes with futures inside. The scheduler holds their keys while a variable
//!   or queue holds the value; a getter receives futures it holds as its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use partita_core::{Error, Result};
use partita_proto::messages::{CoordReply, Coordinate, Item};
use serde_bytes::ByteBuf;

use crate::client::{Answer, GENERATION_BITS, Stopped};
use crate::{Client, Dataset, task_context};

fn never() -> bool {
    false
}

/// What an answer means when it should have been `Done`, `Flag` or `Count`.
fn refused(reply: CoordReply) -> Error {
    match reply {
        CoordReply::Refused { error } => Error::Graph(error),
        other => Error::Transport(format!(
            "the scheduler answered a coordination request with {other:?}"
        )),
    }
}

/// The answer of an operation that never waits.
fn now(client: &Client, op: Coordinate) -> Result<CoordReply> {
    now_on(client, op).map(|(reply, _)| reply)
}

/// [`now`], and the client's connection that answered (see `Client::coordinate_on`).
fn now_on(client: &Client, op: Coordinate) -> Result<(CoordReply, u64)> {
    match client.coordinate_on(op, None, &never)? {
        (Answer::Reply(CoordReply::Refused { error }), _) => Err(Error::Graph(error)),
        (Answer::Reply(reply), generation) => Ok((reply, generation)),
        (Answer::Stopped(..), _) => Err(Error::Internal(
            "a coordination request that never waits was withdrawn".into(),
        )),
    }
}

fn done(client: &Client, op: Coordinate) -> Result<()> {
    match now(client, op)? {
        CoordReply::Done => Ok(()),
        other => Err(refused(other)),
    }
}

fn interrupted_error() -> Error {
    Error::Cancelled
}

/// A named flag clients and tasks wait on (Dask's `distributed.Event`).
#[derive(Clone, Debug)]
pub struct Event {
    client: Client,
    name: String,
}

impl Event {
    /// The event `name` of `client`'s cluster (not set until someone sets it).
    pub fn new(client: &Client, name: impl Into<String>) -> Event {
        Event {
            client: client.clone(),
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set it: every waiter goes on, and waits return at once until it is cleared.
    pub fn set(&self) -> Result<()> {
        done(
            &self.client,
            Coordinate::EventSet {
                name: self.name.clone(),
            },
        )
    }

    /// Clear it: waits block again.
    pub fn clear(&self) -> Result<()> {
        done(
            &self.client,
            Coordinate::EventClear {
                name: self.name.clone(),
            },
        )
    }

    pub fn is_set(&self) -> Result<bool> {
        match now(
            &self.client,
            Coordinate::EventIsSet {
                name: self.name.clone(),
            },
        )? {
            CoordReply::Flag(set) => Ok(set),
            other => Err(refused(other)),
        }
    }

    /// Wait until it is set (`true`), or `timeout` passes (`false`).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        self.wait_or_interrupt(timeout, &never)
    }

    /// [`Event::wait`], stopping with [`Error::Cancelled`] once `interrupted()` says so
    /// (checked every 50 ms).
    pub fn wait_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let op = Coordinate::EventWait {
            name: self.name.clone(),
        };
        match self.client.coordinate(op, timeout, interrupted)? {
            Answer::Reply(CoordReply::Flag(set)) => Ok(set),
            Answer::Reply(other) => Err(refused(other)),
            Answer::Stopped(Stopped::TimedOut, reply) => Ok(reply.is_some()),
            Answer::Stopped(Stopped::Interrupted, _) => Err(interrupted_error()),
        }
    }
}

/// A named semaphore: at most `max_leases` holders at once across the cluster (Dask's
/// `distributed.Semaphore`). Leases are given in the order asked for. Each is numbered and
/// belongs to the handle that took it (and its clones): another handle of the same name
/// cannot release it. A lease is given back if the client's connection closes (its worker
/// process dies), and when the task that took it ends without releasing it.
#[derive(Clone, Debug)]
pub struct Semaphore {
    client: Client,
    name: String,
    max_leases: u32,
    /// Leases this handle holds, last taken last.
    leases: Arc<Mutex<Vec<u64>>>,
}

impl Semaphore {
    /// The semaphore `name` with `max_leases` leases (the first process to acquire it
    /// sets the number; acquiring it with another is an error).
    pub fn new(client: &Client, name: impl Into<String>, max_leases: u32) -> Semaphore {
        Semaphore {
            client: client.clone(),
            name: name.into(),
            max_leases,
            leases: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Take a lease: `true` once one is held, `false` if `timeout` passed first.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<bool> {
        self.acquire_or_interrupt(timeout, &never)
    }

    /// [`Semaphore::acquire`], stopping with [`Error::Cancelled`] once `interrupted()`
    /// says so (checked every 50 ms); a lease granted meanwhile is given back.
    pub fn acquire_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let lease = self.acquire_lease(timeout, interrupted)?;
        if let Some(lease) = lease {
            locked(&self.leases).push(lease);
        }
        Ok(lease.is_some())
    }

    /// Take a lease and return its number, for [`Semaphore::release_lease`] (the handle
    /// does not keep it): `None` if `timeout` passed first; for bindings that keep leases
    /// themselves.
    pub fn acquire_lease(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<u64>> {
        let op = Coordinate::Acquire {
            name: self.name.clone(),
            max_leases: self.max_leases,
        };
        let (answer, generation) = self.client.coordinate_on(op, timeout, interrupted)?;
        let lease = match answer {
            Answer::Reply(CoordReply::Leased { lease })
            // Granted as the wait timed out: it counts.
            | Answer::Stopped(Stopped::TimedOut, Some(CoordReply::Leased { lease })) => {
                tag_lease(generation, lease)?
            }
            Answer::Reply(other) | Answer::Stopped(_, Some(other @ CoordReply::Refused { .. })) => {
                return Err(refused(other));
            }
            Answer::Stopped(Stopped::Interrupted, Some(CoordReply::Leased { lease })) => {
                release_lease(&self.client, &self.name, tag_lease(generation, lease)?)?;
                return Err(interrupted_error());
            }
            Answer::Stopped(Stopped::Interrupted, _) => return Err(interrupted_error()),
            Answer::Stopped(Stopped::TimedOut, _) => return Ok(None),
        };
        task_context::took_lease(&self.client, &self.name, lease);
        Ok(Some(lease))
    }

    /// Give back the lease this handle took last (an error if it holds none).
    pub fn release(&self) -> Result<()> {
        let Some(lease) = locked(&self.leases).pop() else {
            return Err(Error::Graph(format!(
                "released semaphore {:?} more often than it was acquired (this handle \
                 holds none of its leases)",
                self.name
            )));
        };
        self.release_lease(lease)
    }

    /// Give back lease `lease` ([`Semaphore::acquire_lease`]): an error naming the
    /// semaphore unless this client holds it.
    pub fn release_lease(&self, lease: u64) -> Result<()> {
        task_context::gave_back_lease(&self.name, lease);
        release_lease(&self.client, &self.name, lease)
    }

    /// Leases held now, by anyone.
    pub fn leases(&self) -> Result<u32> {
        let op = Coordinate::Leases {
            name: self.name.clone(),
        };
        match now(&self.client, op)? {
            CoordReply::Count(n) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            other => Err(refused(other)),
        }
    }
}

/// Bits of a lease number the scheduler's own number takes; the [`GENERATION_BITS`] above
/// say which of the client's connections took it (see `Client::coordinate_on`).
const LEASE_BITS: u32 = 64 - GENERATION_BITS;

/// The lease number handed out: the scheduler's, tagged with the connection it came on,
/// so a lease taken from a scheduler since lost is not given back to its successor
/// (which numbers its own leases from 1 again).
fn tag_lease(generation: u64, lease: u64) -> Result<u64> {
    if lease >> LEASE_BITS != 0 {
        return Err(Error::Internal(format!(
            "the scheduler's lease number {lease} does not fit {LEASE_BITS} bits"
        )));
    }
    Ok(generation << LEASE_BITS | lease)
}

/// Give back lease `lease` (as [`tag_lease`] made it) of semaphore `name`, held through
/// `client`: on the connection it was taken on only. One whose connection is gone went
/// with its scheduler (nothing to give back, and nothing sent to the next scheduler).
pub(crate) fn release_lease(client: &Client, name: &str, lease: u64) -> Result<()> {
    let op = Coordinate::Release {
        name: name.to_string(),
        lease: lease & ((1 << LEASE_BITS) - 1),
    };
    match client.coordinate_in(lease >> LEASE_BITS, op, None, &never)? {
        None | Some(Answer::Reply(CoordReply::Done)) => Ok(()),
        Some(Answer::Reply(other)) => Err(refused(other)),
        Some(Answer::Stopped(..)) => Err(Error::Internal(
            "a coordination request that never waits was withdrawn".into(),
        )),
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A named lock across the cluster: a [`Semaphore`] of one lease (Dask's
/// `distributed.Lock`). Not reentrant: a holder acquiring it again waits for itself.
#[derive(Clone, Debug)]
pub struct Lock(Semaphore);

impl Lock {
    pub fn new(client: &Client, name: impl Into<String>) -> Lock {
        Lock(Semaphore::new(client, name, 1))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `true` once held, `false` if `timeout` passed first.
    pub fn acquire(&self, timeout: Option<Duration>) -> Result<bool> {
        self.0.acquire(timeout)
    }

    /// [`Lock::acquire`] stopping with [`Error::Cancelled`] once `interrupted()` says so.
    pub fn acquire_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<bool> {
        self.0.acquire_or_interrupt(timeout, interrupted)
    }

    /// Release it (an error if this client does not hold it).
    pub fn release(&self) -> Result<()> {
        self.0.release()
    }

    /// Is it held now, by anyone?
    pub fn locked(&self) -> Result<bool> {
        Ok(self.0.leases()? > 0)
    }
}

/// An item as it travels: the dataset's keys and payload.
fn item_of(client: &Client, what: &str, value: &Dataset) -> Result<Item> {
    let (futures, payload) = value.encode()?;
    if let Some(f) = futures.iter().find(|f| !client.owns(f)) {
        return Err(Error::Graph(format!(
            "cannot keep {} in {what}: it belongs to another cluster",
            f.key()
        )));
    }
    Ok(Item {
        keys: futures.iter().map(|f| f.key().clone()).collect(),
        payload: ByteBuf::from(payload),
    })
}

/// The value an item stands for, its futures now this client's.
fn value_of(client: &Client, what: &str, item: Item) -> Result<Dataset> {
    let futures = client.item_futures(item.keys)?;
    Dataset::decode(what, &item.payload, futures)
}

/// Wait for the item `op` asks for: its value, `None` if `timeout` passed first, or
/// [`Error::Cancelled`] once `interrupted()` says so, after `undo` on an item that
/// crossed the interrupt (or that this client cannot read).
/// `on`: only on that connection of the client (see `Client::coordinate_on`), for what is
/// its scheduler's (a subscription); an error naming `what` once it is gone.
fn take_item(
    client: &Client,
    what: &str,
    op: Coordinate,
    timeout: Option<Duration>,
    on: Option<u64>,
    interrupted: &dyn Fn() -> bool,
    undo: impl FnOnce(Item) -> Result<()>,
) -> Result<Option<Dataset>> {
    let answer = match on {
        None => client.coordinate(op, timeout, interrupted)?,
        Some(generation) => (client.coordinate_in(generation, op, timeout, interrupted)?)
            .ok_or_else(|| {
                Error::Transport(format!(
                    "{what}: the subscription ended with the connection to its scheduler"
                ))
            })?,
    };
    match answer {
        Answer::Reply(CoordReply::Item(item))
        | Answer::Stopped(Stopped::TimedOut, Some(CoordReply::Item(item))) => {
            match value_of(client, what, item.clone()) {
                Ok(value) => Ok(Some(value)),
                // Not readable here: left where it was for a getter that can.
                Err(e) => {
                    undo(item)?;
                    Err(e)
                }
            }
        }
        Answer::Reply(other) | Answer::Stopped(_, Some(other @ CoordReply::Refused { .. })) => {
            Err(refused(other))
        }
        Answer::Stopped(Stopped::TimedOut, _) => Ok(None),
        Answer::Stopped(Stopped::Interrupted, reply) => {
            if let Some(CoordReply::Item(item)) = reply {
                undo(item)?;
            }
            Err(interrupted_error())
        }
    }
}

/// A named value shared across the cluster (Dask's `distributed.Variable`): futures,
/// persisted collections or a binding's bytes ([`Dataset`]); the data it refers to stays
/// on the cluster while it holds it.
#[derive(Clone, Debug)]
pub struct Variable {
    client: Client,
    name: String,
}

impl Variable {
    pub fn new(client: &Client, name: impl Into<String>) -> Variable {
        Variable {
            client: client.clone(),
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Set its value (replacing any; the old value's data goes once nothing holds it).
    pub fn set(&self, value: &Dataset) -> Result<()> {
        let item = item_of(&self.client, &format!("variable {:?}", self.name), value)?;
        // The futures in `value` hold the keys until the scheduler counts the variable's.
        done(
            &self.client,
            Coordinate::VariableSet {
                name: self.name.clone(),
                item,
            },
        )
    }

    /// Its value, waiting until it has one (`None` if `timeout` passes first).
    pub fn get(&self, timeout: Option<Duration>) -> Result<Option<Dataset>> {
        self.get_or_interrupt(timeout, &never)
    }

    /// [`Variable::get`] stopping with [`Error::Cancelled`] once `interrupted()` says so.
    pub fn get_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<Dataset>> {
        let op = Coordinate::VariableGet {
            name: self.name.clone(),
        };
        let what = format!("variable {:?}", self.name);
        // The keys given with a value that crossed the interrupt: let them go.
        let undo = |item: Item| self.client.item_futures(item.keys).map(drop);
        take_item(&self.client, &what, op, timeout, None, interrupted, undo)
    }

    /// Forget it (its data goes once nothing else holds it).
    pub fn delete(&self) -> Result<()> {
        done(
            &self.client,
            Coordinate::VariableDelete {
                name: self.name.clone(),
            },
        )
    }
}

/// A named first-in first-out queue shared across the cluster (Dask's
/// `distributed.Queue`): each item is taken by one getter. Unbounded, or bounded
/// ([`Queue::with_maxsize`]): a put waits while the queue is full.
#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    name: String,
    maxsize: u64,
}

impl Queue {
    pub fn new(client: &Client, name: impl Into<String>) -> Queue {
        Queue {
            client: client.clone(),
            name: name.into(),
            maxsize: 0,
        }
    }

    /// Bound the queue to `maxsize` items (Dask's `Queue(maxsize=)`; 0 names no bound):
    /// the first put naming a bound sets it for as long as the queue exists, a put naming
    /// another is refused, and every put, through any handle, waits while the queue is
    /// full or earlier puts wait.
    pub fn with_maxsize(mut self, maxsize: u64) -> Queue {
        self.maxsize = maxsize;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Append an item, waiting for room in a bounded queue.
    pub fn put(&self, value: &Dataset) -> Result<()> {
        self.put_or_interrupt(value, None, &never).map(drop)
    }

    /// [`Queue::put`] waiting at most `timeout` for room: `false` (nothing put, the
    /// item's data let go) if it passed first.
    pub fn put_timeout(&self, value: &Dataset, timeout: Option<Duration>) -> Result<bool> {
        self.put_or_interrupt(value, timeout, &never)
    }

    /// [`Queue::put_timeout`] stopping with [`Error::Cancelled`] once `interrupted()` says
    /// so (an item that got in meanwhile stays in).
    pub fn put_or_interrupt(
        &self,
        value: &Dataset,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<bool> {
        let item = item_of(&self.client, &format!("queue {:?}", self.name), value)?;
        let op = Coordinate::QueuePut {
            name: self.name.clone(),
            item,
            maxsize: self.maxsize,
            back: false,
        };
        match self.client.coordinate(op, timeout, interrupted)? {
            Answer::Reply(CoordReply::Done) => Ok(true),
            Answer::Stopped(Stopped::TimedOut, Some(CoordReply::Done)) => Ok(true),
            Answer::Stopped(Stopped::TimedOut, None) => Ok(false),
            Answer::Stopped(Stopped::Interrupted, _) => Err(interrupted_error()),
            Answer::Reply(other) | Answer::Stopped(_, Some(other)) => Err(refused(other)),
        }
    }

    /// Take the oldest item, waiting for one (`None` if `timeout` passes first).
    pub fn get(&self, timeout: Option<Duration>) -> Result<Option<Dataset>> {
        self.get_or_interrupt(timeout, &never)
    }

    /// [`Queue::get`] stopping with [`Error::Cancelled`] once `interrupted()` says so; an
    /// item taken meanwhile is put back (at the front).
    pub fn get_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<Dataset>> {
        let op = Coordinate::QueueGet {
            name: self.name.clone(),
        };
        let what = format!("queue {:?}", self.name);
        let undo = |item: Item| {
            // Back in the queue, held by it before this client lets go.
            let futures = self.client.item_futures(item.keys.clone())?;
            let name = self.name.clone();
            // Back at the front, whatever the bound: it was first in the queue.
            let op = Coordinate::QueuePut {
                name,
                item,
                maxsize: 0,
                back: true,
            };
            done(&self.client, op)?;
            drop(futures);
            Ok(())
        };
        take_item(&self.client, &what, op, timeout, None, interrupted, undo)
    }

    /// Items in it now.
    pub fn len(&self) -> Result<u64> {
        match now(
            &self.client,
            Coordinate::QueueSize {
                name: self.name.clone(),
            },
        )? {
            CoordReply::Count(n) => Ok(n),
            other => Err(refused(other)),
        }
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Publishes to a named topic (Dask's `distributed.Pub`): every subscription of the topic
/// at that moment ([`Sub`], in any process of the cluster) gets each message; with none,
/// it is dropped. Messages are plain values ([`Dataset`] bytes without futures): a queue
/// or a variable carries data on the cluster.
#[derive(Clone, Debug)]
pub struct Pub {
    client: Client,
    name: String,
}

impl Pub {
    pub fn new(client: &Client, name: impl Into<String>) -> Pub {
        Pub {
            client: client.clone(),
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send a message; returns how many subscriptions it reached.
    pub fn put(&self, value: &Dataset) -> Result<u64> {
        let item = item_of(&self.client, &format!("topic {:?}", self.name), value)?;
        let op = Coordinate::Publish {
            name: self.name.clone(),
            item,
        };
        match now(&self.client, op)? {
            CoordReply::Count(n) => Ok(n),
            other => Err(refused(other)),
        }
    }
}

/// A subscription to a named topic (Dask's `distributed.Sub`): the messages published
/// from its start on, in order, each taken once ([`Sub::get`]). It ends when closed or
/// dropped (or with its client's connection); the end is sent without waiting, so it
/// reaches the scheduler before this client's later requests, not necessarily before
/// other clients'.
#[derive(Debug)]
pub struct Sub {
    client: Client,
    name: String,
    id: u64,
    /// The client's connection it was made on (see `Client::coordinate_on`): the scheduler
    /// numbers subscriptions, and a later one's would not know this one.
    generation: u64,
    /// A message that arrived as a wait was interrupted: the next `get` returns it.
    kept: Mutex<Option<Dataset>>,
    /// Unsubscribed ([`Sub::close`]).
    closed: std::sync::atomic::AtomicBool,
}

impl Sub {
    /// Subscribe to `name` now.
    pub fn new(client: &Client, name: impl Into<String>) -> Result<Sub> {
        let name = name.into();
        let op = Coordinate::Subscribe { name: name.clone() };
        let (reply, generation) = now_on(client, op)?;
        match reply {
            CoordReply::Subscribed { id } => Ok(Sub {
                client: client.clone(),
                name,
                id,
                generation,
                kept: Mutex::new(None),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
            other => Err(refused(other)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next message, waiting for one (`None` if `timeout` passes first).
    pub fn get(&self, timeout: Option<Duration>) -> Result<Option<Dataset>> {
        self.get_or_interrupt(timeout, &never)
    }

    /// [`Sub::get`] stopping with [`Error::Cancelled`] once `interrupted()` says so; a
    /// message that arrived meanwhile is kept for the next `get`.
    pub fn get_or_interrupt(
        &self,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<Dataset>> {
        // The lock is not held while waiting: a `get` of another thread keeps its own
        // timeout, and `close` ends this wait.
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(value) = kept {
            return Ok(Some(value));
        }
        let what = format!("topic {:?}", self.name);
        let op = Coordinate::Next {
            name: self.name.clone(),
            id: self.id,
        };
        let mut crossed = None;
        let on = Some(self.generation);
        let got = take_item(&self.client, &what, op, timeout, on, interrupted, |item| {
            crossed = Some(item);
            Ok(())
        });
        if let Some(item) = crossed {
            // Interrupted as it came (or unreadable here): not lost for this subscriber.
            let value = value_of(&self.client, &what, item).ok();
            *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = value;
        }
        got
    }

    /// End the subscription now, without waiting for the scheduler: its messages not
    /// taken go, and a `get` waiting on it (in another thread) ends with an error.
    pub fn close(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let op = Coordinate::Unsubscribe {
            name: self.name.clone(),
            id: self.id,
        };
        // Best effort: a closed connection ended it already.
        let _ = self.client.coordinate_nowait(op, self.generation);
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.close();
    }
}

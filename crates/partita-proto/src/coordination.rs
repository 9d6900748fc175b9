//! Dask's coordination primitives, kept by the scheduler: named events, semaphores (a
//! lock is a semaphore of one lease), variables, queues and pub/sub topics, shared by
//! every client of the cluster and so by tasks through their workers' clients.
//!
//! Key decisions:
//! - **The scheduler holds the state, clients wait on answers.** An operation that must
//!   wait (an event not yet set, no free lease, a variable without a value, an empty queue)
//!   is answered later; a client that stops waiting (its timeout) withdraws it with
//!   `Abandon`, answered only if the operation still waited. Both answers travel on the
//!   client's one ordered stream, so a client always gets exactly one answer per request
//!   and a lease or an item is never granted to nobody.
//! - **Leases belong to connections.** A client that disconnects (or the worker process
//!   whose client it was dies) gives back its leases and withdraws its waits: a lock is
//!   never held by the dead. Events, variables and queue items stay.
//! - **Items hold data like datasets do.** A variable's value or a queue item is keys of
//!   values on the cluster plus bytes the scheduler does not read; the scheduler counts the
//!   keys as needed while the item exists ([`crate::scheduler`]), and hands them to the
//!   client that gets the item as wanted by it before any are let go.
//! - **Nothing is kept for nothing**: an event cleared with no waiter, a semaphore with no
//!   lease held or asked for, an empty queue nobody waits on, a topic without subscribers
//!   are forgotten.
//! - **Topics fan out bytes** (Dask's `Pub` and `Sub`): each subscription keeps the
//!   messages published since it began until its client takes them, and ends with its
//!   client. A message holding keys is refused: copies of one item for every subscriber
//!   would each hold its data, for as long as a slow subscriber leaves them.
//!
//! Pure state: [`Coordination::apply`] returns what to answer and which items' keys are
//! no longer held; the scheduler does the rest.

use std::collections::{BTreeMap, VecDeque};

use partita_core::Key;

use crate::messages::{ClientId, CoordReply, Coordinate, Item};

/// A client's operation waiting for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    client: ClientId,
    request: u64,
}

/// Where a waiter waits (the index that makes withdrawing one a lookup).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    Event(String),
    Semaphore(String),
    Variable(String),
    Queue(String),
    /// A put waiting for room in a bounded queue.
    QueuePut(String),
    /// A `Next` waiting for a message of a subscription.
    Subscription(String, u64),
}

#[derive(Debug, Default)]
struct Event {
    set: bool,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Semaphore {
    max_leases: u32,
    /// Leases held, by number, and their holders.
    held: BTreeMap<u64, ClientId>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Default)]
struct Variable {
    item: Option<Item>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Getters waiting for an item.
    waiters: VecDeque<Waiter>,
    /// Puts waiting for room, with their items (keys held).
    putters: VecDeque<(Waiter, Item)>,
    /// Most items it holds (0: unbounded); set by the first put naming one, kept while
    /// the queue exists.
    bound: u64,
}

impl Queue {
    /// Nothing in it and nobody waiting: forgotten.
    fn is_idle(&self) -> bool {
        self.items.is_empty() && self.waiters.is_empty() && self.putters.is_empty()
    }
}

/// Messages a subscription keeps untaken; beyond, the oldest go (a subscription its
/// process forgot to close must not grow the scheduler without end).
pub const MAX_KEPT_MESSAGES: usize = 100_000;

/// One subscriber of a topic: its messages not taken yet and its waiting `Next`s.
#[derive(Debug)]
struct Subscription {
    client: ClientId,
    messages: VecDeque<Item>,
    waiters: VecDeque<Waiter>,
}

/// What an operation leads to, for the scheduler to carry out.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Answers, in order. An `Item` answer's keys are to be wanted by its client.
    pub replies: Vec<(ClientId, u64, CoordReply)>,
    /// Keys of items gone (replaced, deleted, taken from a queue): held once less each.
    pub released: Vec<Key>,
}

/// Every named event, semaphore, variable and queue of a cluster.
#[derive(Debug, Default)]
pub struct Coordination {
    events: BTreeMap<String, Event>,
    semaphores: BTreeMap<String, Semaphore>,
    variables: BTreeMap<String, Variable>,
    queues: BTreeMap<String, Queue>,
    /// Pub/sub topics: subscriptions by number (a topic without any is forgotten).
    topics: BTreeMap<String, BTreeMap<u64, Subscription>>,
    /// The number of the next subscription.
    next_subscription: u64,
    /// Every waiting operation and where it waits.
    waiting: BTreeMap<(ClientId, u64), Place>,
    /// The number of the next lease granted.
    next_lease: u64,
}

impl Coordination {
    /// Carry out `client`'s operation `request`. Items given to `VariableSet` and
    /// `QueuePut` must hold known keys, already counted as held by the caller.
    pub fn apply(&mut self, client: ClientId, request: u64, op: Coordinate) -> Effects {
        let me = Waiter { client, request };
        let mut fx = Effects::default();
        let reply = |fx: &mut Effects, reply| fx.replies.push((client, request, reply));
        match op {
            Coordinate::EventSet { name } => {
                let event = self.events.entry(name).or_default();
                event.set = true;
                let waiters = std::mem::take(&mut event.waiters);
                for w in waiters {
                    self.answered(w, &mut fx, CoordReply::Flag(true));
                }
                reply(&mut fx, CoordReply::Done);
            }
            Coordinate::EventClear { name } => {
                if let Some(event) = self.events.get_mut(&name) {
                    event.set = false;
                    if event.waiters.is_empty() {
                        self.events.remove(&name);
                    }
                }
                reply(&mut fx, CoordReply::Done);
            }
            Coordinate::EventWait { name } => {
                let event = self.events.entry(name.clone()).or_default();
                match event.set {
                    true => reply(&mut fx, CoordReply::Flag(true)),
                    false => {
                        event.waiters.push_back(me);
                        self.waiting.insert((client, request), Place::Event(name));
                    }
                }
            }
            Coordinate::EventIsSet { name } => {
                let set = self.events.get(&name).is_some_and(|e| e.set);
                reply(&mut fx, CoordReply::Flag(set));
            }
            Coordinate::Acquire { name, max_leases } => {
                if max_leases == 0 {
                    let error = format!("semaphore {name:?}: max_leases must be at least 1");
                    reply(&mut fx, CoordReply::Refused { error });
                    return fx;
                }
                let sem = self.semaphores.entry(name.clone()).or_insert(Semaphore {
                    max_leases,
                    held: BTreeMap::new(),
                    waiters: VecDeque::new(),
                });
                if sem.max_leases != max_leases {
                    let error = format!(
                        "semaphore {name:?} has {} leases, not {max_leases} (the first to \
                         acquire it set the number)",
                        sem.max_leases
                    );
                    reply(&mut fx, CoordReply::Refused { error });
                    if sem.held.is_empty() && sem.waiters.is_empty() {
                        self.semaphores.remove(&name);
                    }
                } else {
                    sem.waiters.push_back(me);
                    self.waiting
                        .insert((client, request), Place::Semaphore(name.clone()));
                    self.grant(&name, &mut fx);
                }
            }
            Coordinate::Release { name, lease } => {
                let sem = self.semaphores.get_mut(&name);
                match sem.filter(|s| s.held.get(&lease) == Some(&client)) {
                    Some(sem) => {
                        sem.held.remove(&lease);
                        reply(&mut fx, CoordReply::Done);
                        self.grant(&name, &mut fx);
                    }
                    None => {
                        let error = format!(
                            "released semaphore {name:?} more often than it was acquired \
                             (lease {lease} is not held by this client)"
                        );
                        reply(&mut fx, CoordReply::Refused { error });
                    }
                }
            }
            Coordinate::Leases { name } => {
                let taken = self.semaphores.get(&name).map_or(0, |s| s.held.len());
                reply(&mut fx, CoordReply::Count(taken as u64));
            }
            Coordinate::VariableSet { name, item } => {
                let var = self.variables.entry(name).or_default();
                let waiters = std::mem::take(&mut var.waiters);
                if let Some(old) = var.item.replace(item.clone()) {
                    fx.released.extend(old.keys);
                }
                for w in waiters {
                    self.answered(w, &mut fx, CoordReply::Item(item.clone()));
                }
                reply(&mut fx, CoordReply::Done);
            }
            Coordinate::VariableGet { name } => {
                let var = self.variables.entry(name.clone()).or_default();
                match &var.item {
                    Some(item) => {
                        let item = item.clone();
                        reply(&mut fx, CoordReply::Item(item));
                    }
                    None => {
                        var.waiters.push_back(me);
                        self.waiting
                            .insert((client, request), Place::Variable(name));
                    }
                }
            }
            Coordinate::VariableDelete { name } => {
                if let Some(var) = self.variables.get_mut(&name) {
                    if let Some(old) = var.item.take() {
                        fx.released.extend(old.keys);
                    }
                    if var.waiters.is_empty() {
                        self.variables.remove(&name);
                    }
                }
                reply(&mut fx, CoordReply::Done);
            }
            Coordinate::QueuePut {
                name,
                item,
                maxsize,
                back,
            } => {
                let queue = self.queues.entry(name.clone()).or_default();
                if maxsize > 0 && queue.bound == 0 {
                    queue.bound = maxsize;
                } else if maxsize > 0 && queue.bound != maxsize {
                    let error = format!(
                        "queue {name:?} holds at most {} items, not {maxsize} (the first \
                         bounded put set it)",
                        queue.bound
                    );
                    if queue.is_idle() {
                        self.queues.remove(&name);
                    }
                    fx.released.extend(item.keys);
                    reply(&mut fx, CoordReply::Refused { error });
                    return fx;
                }
                let full = !back
                    && queue.bound > 0
                    && (queue.items.len() as u64 >= queue.bound || !queue.putters.is_empty());
                match queue.waiters.pop_front() {
                    // Handed over at once: its keys go to the getter, then are let go.
                    Some(w) => {
                        if queue.is_idle() {
                            self.queues.remove(&name);
                        }
                        fx.released.extend(item.keys.iter().cloned());
                        self.answered(w, &mut fx, CoordReply::Item(item));
                        reply(&mut fx, CoordReply::Done);
                    }
                    None if full => {
                        queue.putters.push_back((me, item));
                        self.waiting
                            .insert((client, request), Place::QueuePut(name));
                    }
                    None if back => {
                        queue.items.push_front(item);
                        reply(&mut fx, CoordReply::Done);
                    }
                    None => {
                        queue.items.push_back(item);
                        reply(&mut fx, CoordReply::Done);
                    }
                }
            }
            Coordinate::QueueGet { name } => {
                let queue = self.queues.entry(name.clone()).or_default();
                match queue.items.pop_front() {
                    Some(item) => {
                        fx.released.extend(item.keys.iter().cloned());
                        reply(&mut fx, CoordReply::Item(item));
                        self.admit(&name, &mut fx);
                    }
                    None => {
                        queue.waiters.push_back(me);
                        self.waiting.insert((client, request), Place::Queue(name));
                    }
                }
            }
            Coordinate::QueueSize { name } => {
                let n = self.queues.get(&name).map_or(0, |q| q.items.len());
                reply(&mut fx, CoordReply::Count(n as u64));
            }
            Coordinate::Subscribe { name } => {
                let id = self.next_subscription;
                self.next_subscription += 1;
                let sub = Subscription {
                    client,
                    messages: VecDeque::new(),
                    waiters: VecDeque::new(),
                };
                self.topics.entry(name).or_default().insert(id, sub);
                reply(&mut fx, CoordReply::Subscribed { id });
            }
            Coordinate::Unsubscribe { name, id } => {
                let mine = (self.topics.get(&name).and_then(|t| t.get(&id)))
                    .is_some_and(|s| s.client == client);
                if mine {
                    self.unsubscribe(&name, id, &mut fx);
                    reply(&mut fx, CoordReply::Done);
                } else {
                    let error = format!("no subscription {id} of this client to topic {name:?}");
                    reply(&mut fx, CoordReply::Refused { error });
                }
            }
            Coordinate::Publish { name, item } => {
                if let Some(k) = item.keys.first() {
                    let error = format!(
                        "a message published to topic {name:?} holds {k} (data on the \
                         cluster): publish plain values; a Queue or Variable carries futures"
                    );
                    reply(&mut fx, CoordReply::Refused { error });
                    return fx;
                }
                let mut handed = Vec::new();
                let subs = self.topics.get_mut(&name);
                let count = subs.as_ref().map_or(0, |s| s.len());
                for sub in subs.into_iter().flat_map(|s| s.values_mut()) {
                    match sub.waiters.pop_front() {
                        Some(w) => handed.push(w),
                        None => {
                            if sub.messages.len() >= MAX_KEPT_MESSAGES {
                                sub.messages.pop_front();
                            }
                            sub.messages.push_back(item.clone());
                        }
                    }
                }
                for w in handed {
                    self.answered(w, &mut fx, CoordReply::Item(item.clone()));
                }
                reply(&mut fx, CoordReply::Count(count as u64));
            }
            Coordinate::Next { name, id } => {
                let sub = (self.topics.get_mut(&name).and_then(|t| t.get_mut(&id)))
                    .filter(|s| s.client == client);
                match sub {
                    None => {
                        let error =
                            format!("no subscription {id} of this client to topic {name:?}");
                        reply(&mut fx, CoordReply::Refused { error });
                    }
                    Some(sub) => match sub.messages.pop_front() {
                        Some(item) => reply(&mut fx, CoordReply::Item(item)),
                        None => {
                            sub.waiters.push_back(me);
                            let place = Place::Subscription(name, id);
                            self.waiting.insert((client, request), place);
                        }
                    },
                }
            }
            Coordinate::Abandon => {
                if self.withdraw(me, &mut fx) {
                    reply(&mut fx, CoordReply::Abandoned);
                }
            }
        }
        fx
    }

    /// End subscription `id` to `name`: its messages go, its waiting `Next`s are refused.
    fn unsubscribe(&mut self, name: &str, id: u64, fx: &mut Effects) {
        let Some(topic) = self.topics.get_mut(name) else {
            return;
        };
        let Some(sub) = topic.remove(&id) else {
            return;
        };
        if topic.is_empty() {
            self.topics.remove(name);
        }
        for w in sub.waiters {
            let error = format!("subscription {id} to topic {name:?} ended");
            self.answered(w, fx, CoordReply::Refused { error });
        }
    }

    /// `client` is gone: its waits are withdrawn (nobody to answer), its subscriptions
    /// end, and its leases go back to the next waiters.
    pub fn client_gone(&mut self, client: ClientId) -> Effects {
        let mut fx = Effects::default();
        let mine: Vec<(ClientId, u64)> = (self.waiting.range((client, 0)..=(client, u64::MAX)))
            .map(|(k, _)| *k)
            .collect();
        for (client, request) in mine {
            self.withdraw(Waiter { client, request }, &mut fx);
        }
        let subscriptions: Vec<(String, u64)> = (self.topics.iter())
            .flat_map(|(name, subs)| {
                (subs.iter())
                    .filter(|(_, s)| s.client == client)
                    .map(|(id, _)| (name.clone(), *id))
            })
            .collect();
        for (name, id) in subscriptions {
            self.unsubscribe(&name, id, &mut fx);
        }
        let names: Vec<String> = (self.semaphores.iter())
            .filter(|(_, s)| s.held.values().any(|c| *c == client))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Some(sem) = self.semaphores.get_mut(&name) {
                sem.held.retain(|_, c| *c != client);
            }
            self.grant(&name, &mut fx);
        }
        fx
    }

    /// Drop every variable and queue item (their data is gone: a restart), and refuse
    /// the puts waiting for room (their items' data is gone too); releases nothing (the
    /// tasks are forgotten anyway). Events, semaphores and other waiters stay. Returns
    /// the names emptied and the refusals to send.
    pub fn drop_items(&mut self) -> (Vec<String>, Effects) {
        let mut fx = Effects::default();
        let mut refused = Vec::new();
        for (name, q) in &mut self.queues {
            for (w, ..) in std::mem::take(&mut q.putters) {
                let error = format!(
                    "queue {name:?}: the cluster restarted before there was room for the item; \
                     it was dropped"
                );
                refused.push((w, error));
            }
        }
        for (w, error) in refused {
            self.answered(w, &mut fx, CoordReply::Refused { error });
        }
        let mut names = Vec::new();
        for (name, var) in &mut self.variables {
            if var.item.take().is_some() {
                names.push(format!("variable {name:?}"));
            }
        }
        for (name, q) in &mut self.queues {
            if !q.items.is_empty() {
                q.items.clear();
                names.push(format!("queue {name:?}"));
            }
        }
        self.variables.retain(|_, v| !v.waiters.is_empty());
        self.queues.retain(|_, q| !q.waiters.is_empty());
        (names, fx)
    }

    /// Every key the items hold, once per item holding it.
    pub fn held_keys(&self) -> impl Iterator<Item = &Key> {
        let vars = (self.variables.values()).filter_map(|v| v.item.as_ref());
        let queued = self.queues.values().flat_map(|q| q.items.iter());
        let waiting = (self.queues.values()).flat_map(|q| q.putters.iter().map(|(_, i)| i));
        vars.chain(queued)
            .chain(waiting)
            .flat_map(|item| item.keys.iter())
    }

    /// Answer a waiter taken off its object's list.
    fn answered(&mut self, w: Waiter, fx: &mut Effects, reply: CoordReply) {
        self.waiting.remove(&(w.client, w.request));
        fx.replies.push((w.client, w.request, reply));
    }

    /// Withdraw one waiting operation (found through the index); was it waiting?
    fn withdraw(&mut self, w: Waiter, fx: &mut Effects) -> bool {
        let Some(place) = self.waiting.remove(&(w.client, w.request)) else {
            return false;
        };
        let drop_from = |waiters: &mut VecDeque<Waiter>| waiters.retain(|x| *x != w);
        match place {
            Place::Event(name) => {
                if let Some(e) = self.events.get_mut(&name) {
                    drop_from(&mut e.waiters);
                    if !e.set && e.waiters.is_empty() {
                        self.events.remove(&name);
                    }
                }
            }
            Place::Semaphore(name) => {
                if let Some(s) = self.semaphores.get_mut(&name) {
                    drop_from(&mut s.waiters);
                }
                // A withdrawn head of the line may have held back the next.
                self.grant(&name, fx);
            }
            Place::Variable(name) => {
                if let Some(v) = self.variables.get_mut(&name) {
                    drop_from(&mut v.waiters);
                    if v.item.is_none() && v.waiters.is_empty() {
                        self.variables.remove(&name);
                    }
                }
            }
            Place::Queue(name) => {
                if let Some(q) = self.queues.get_mut(&name) {
                    drop_from(&mut q.waiters);
                    if q.is_idle() {
                        self.queues.remove(&name);
                    }
                }
            }
            Place::QueuePut(name) => {
                if let Some(q) = self.queues.get_mut(&name)
                    && let Some(at) = q.putters.iter().position(|(x, ..)| *x == w)
                    && let Some((_, item)) = q.putters.remove(at)
                {
                    // Never put: its keys are let go.
                    fx.released.extend(item.keys);
                }
                // A withdrawn head of the line may have held back the next.
                self.admit(&name, fx);
            }
            Place::Subscription(name, id) => {
                if let Some(sub) = self.topics.get_mut(&name).and_then(|t| t.get_mut(&id)) {
                    drop_from(&mut sub.waiters);
                }
            }
        }
        true
    }

    /// Move waiting puts of queue `name` in, in order, while each finds room; forget the
    /// queue when nothing is left in or waiting on it.
    fn admit(&mut self, name: &str, fx: &mut Effects) {
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        let mut done = Vec::new();
        while !q.putters.is_empty() && (q.items.len() as u64) < q.bound {
            let (w, item) = q.putters.pop_front().expect("not empty");
            q.items.push_back(item);
            done.push(w);
        }
        if q.is_idle() {
            self.queues.remove(name);
        }
        for w in done {
            self.answered(w, fx, CoordReply::Done);
        }
    }

    /// Give free leases of semaphore `name` to its waiters, in order, each a new number;
    /// forget it if no lease is held or asked for.
    fn grant(&mut self, name: &str, fx: &mut Effects) {
        let Some(sem) = self.semaphores.get_mut(name) else {
            return;
        };
        let mut granted = Vec::new();
        while sem.held.len() < sem.max_leases as usize {
            let Some(w) = sem.waiters.pop_front() else {
                break;
            };
            let lease = self.next_lease;
            self.next_lease += 1;
            sem.held.insert(lease, w.client);
            granted.push((w, lease));
        }
        if sem.held.is_empty() && sem.waiters.is_empty() {
            self.semaphores.remove(name);
        }
        for (w, lease) in granted {
            self.answered(w, fx, CoordReply::Leased { lease });
        }
    }

    /// Waiting operations, for consistency checks: every one indexed, and only those.
    pub fn check(&self) -> Result<(), String> {
        let mut listed = 0;
        let mut check = |waiters: &VecDeque<Waiter>, place: Place| {
            for w in waiters {
                listed += 1;
                if self.waiting.get(&(w.client, w.request)) != Some(&place) {
                    return Err(format!("{w:?} waits at {place:?} but is not indexed there"));
                }
            }
            Ok(())
        };
        for (n, e) in &self.events {
            check(&e.waiters, Place::Event(n.clone()))?;
        }
        for (n, s) in &self.semaphores {
            check(&s.waiters, Place::Semaphore(n.clone()))?;
            if s.held.len() > s.max_leases as usize {
                return Err(format!("semaphore {n:?} has more leases held than it has"));
            }
        }
        for (n, v) in &self.variables {
            check(&v.waiters, Place::Variable(n.clone()))?;
        }
        for (n, subs) in &self.topics {
            for (id, sub) in subs {
                check(&sub.waiters, Place::Subscription(n.clone(), *id))?;
                if !sub.waiters.is_empty() && !sub.messages.is_empty() {
                    return Err(format!(
                        "subscription {id} to {n:?} waits with messages kept"
                    ));
                }
            }
        }
        for (n, q) in &self.queues {
            check(&q.waiters, Place::Queue(n.clone()))?;
            let putters: VecDeque<Waiter> = q.putters.iter().map(|(w, ..)| *w).collect();
            check(&putters, Place::QueuePut(n.clone()))?;
            if !q.putters.is_empty() && (q.items.len() as u64) < q.bound {
                return Err(format!("queue {n:?} has room but a put waits"));
            }
        }
        if listed != self.waiting.len() {
            return Err(format!(
                "{} waiting operations indexed, {listed} waiting",
                self.waiting.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn c(i: u32) -> ClientId {
        ClientId(i)
    }

    fn item(keys: &[&str], payload: &str) -> Item {
        Item {
            keys: keys.iter().map(|k| Key::named(*k)).collect(),
            payload: ByteBuf::from(payload.as_bytes().to_vec()),
        }
    }

    fn replies(fx: &Effects) -> Vec<(u32, u64, CoordReply)> {
        (fx.replies.iter())
            .map(|(c, r, reply)| (c.0, *r, reply.clone()))
            .collect()
    }

    #[test]
    fn events_release_every_waiter_when_set() {
        let mut co = Coordination::default();
        let wait = || Coordinate::EventWait { name: "e".into() };
        assert!(co.apply(c(1), 1, wait()).replies.is_empty());
        assert!(co.apply(c(2), 7, wait()).replies.is_empty());
        let is_set = || Coordinate::EventIsSet { name: "e".into() };
        assert_eq!(
            replies(&co.apply(c(3), 1, is_set())),
            [(3, 1, CoordReply::Flag(false))]
        );
        let fx = co.apply(c(3), 2, Coordinate::EventSet { name: "e".into() });
        assert_eq!(
            replies(&fx),
            [
                (1, 1, CoordReply::Flag(true)),
                (2, 7, CoordReply::Flag(true)),
                (3, 2, CoordReply::Done)
            ]
        );
        // Set: a wait returns at once; cleared (nobody waiting): forgotten.
        assert_eq!(
            replies(&co.apply(c(1), 2, wait())),
            [(1, 2, CoordReply::Flag(true))]
        );
        co.apply(c(1), 3, Coordinate::EventClear { name: "e".into() });
        assert!(co.events.is_empty());
        assert_eq!(
            replies(&co.apply(c(3), 3, is_set())),
            [(3, 3, CoordReply::Flag(false))]
        );
    }

    fn leased(reply: &CoordReply) -> u64 {
        match reply {
            CoordReply::Leased { lease } => *lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    #[test]
    fn semaphores_grant_leases_in_order_and_free_those_of_the_gone() {
        let mut co = Coordination::default();
        let acquire = |n| Coordinate::Acquire {
            name: "s".into(),
            max_leases: n,
        };
        let release = |lease| Coordinate::Release {
            name: "s".into(),
            lease,
        };
        let one = |fx: Effects| -> (u32, u64, u64) {
            let r = replies(&fx);
            assert_eq!(r.len(), 1, "{r:?}");
            (r[0].0, r[0].1, leased(&r[0].2))
        };
        let (_, _, l1) = one(co.apply(c(1), 1, acquire(2)));
        let (_, _, l2) = one(co.apply(c(2), 1, acquire(2)));
        assert_ne!(l1, l2);
        // Full: c3 then c1 wait, in that order.
        assert!(co.apply(c(3), 1, acquire(2)).replies.is_empty());
        assert!(co.apply(c(1), 2, acquire(2)).replies.is_empty());
        co.check().unwrap();
        // Zero leases, or another number of them, is refused, naming the semaphore.
        let r = replies(&co.apply(c(4), 9, acquire(0)));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("at least 1")));
        let r = replies(&co.apply(c(4), 1, acquire(3)));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("\"s\"")));
        let leases = Coordinate::Leases { name: "s".into() };
        assert_eq!(
            replies(&co.apply(c(4), 2, leases)),
            [(4, 2, CoordReply::Count(2))]
        );
        // Nobody releases a lease another client holds.
        let r = replies(&co.apply(c(1), 3, release(l2)));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("more often")));
        // c2 releases: c3 gets a fresh lease. c2 releasing it again is refused.
        let fx = co.apply(c(2), 2, release(l2));
        let r = replies(&fx);
        assert_eq!(r[0], (2, 2, CoordReply::Done));
        assert_eq!((r[1].0, r[1].1), (3, 1));
        let l3 = leased(&r[1].2);
        let r = replies(&co.apply(c(2), 3, release(l2)));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("more often")));
        // c3 disconnects: its lease goes to c1's waiting acquire.
        let (who, request, l4) = one(co.client_gone(c(3)));
        assert_eq!((who, request), (1, 2));
        assert!(![l1, l2, l3].contains(&l4));
        co.check().unwrap();
        // Everything released: forgotten.
        co.apply(c(1), 4, release(l1));
        co.apply(c(1), 5, release(l4));
        assert!(co.semaphores.is_empty());
        co.check().unwrap();
    }

    #[test]
    fn an_abandoned_wait_is_answered_once_and_holds_nothing_back() {
        let mut co = Coordination::default();
        let lock = || Coordinate::Acquire {
            name: "l".into(),
            max_leases: 1,
        };
        let lease = leased(&co.apply(c(1), 1, lock()).replies[0].2);
        assert!(co.apply(c(2), 5, lock()).replies.is_empty());
        assert!(co.apply(c(3), 9, lock()).replies.is_empty());
        // c2 gives up waiting: told so; then c1 releases and c3 (not c2) gets the lock.
        assert_eq!(
            replies(&co.apply(c(2), 5, Coordinate::Abandon)),
            [(2, 5, CoordReply::Abandoned)]
        );
        co.check().unwrap();
        let release = Coordinate::Release {
            name: "l".into(),
            lease,
        };
        let r = replies(&co.apply(c(1), 2, release));
        assert_eq!(r[0], (1, 2, CoordReply::Done));
        assert_eq!((r[1].0, r[1].1), (3, 9));
        // Abandoning what was answered already (or never asked) says nothing.
        assert!(co.apply(c(3), 9, Coordinate::Abandon).replies.is_empty());
        assert!(co.apply(c(7), 1, Coordinate::Abandon).replies.is_empty());
        // Withdrawn waits leave nothing behind.
        assert!(
            co.apply(c(4), 1, Coordinate::EventWait { name: "e".into() })
                .replies
                .is_empty()
        );
        co.apply(c(4), 1, Coordinate::Abandon);
        assert!(co.events.is_empty() && co.waiting.is_empty());
        co.check().unwrap();
    }

    #[test]
    fn variables_and_queues_hand_items_over_and_let_their_keys_go() {
        let mut co = Coordination::default();
        let get = || Coordinate::VariableGet { name: "v".into() };
        assert!(co.apply(c(1), 1, get()).replies.is_empty());
        let set = |i| Coordinate::VariableSet {
            name: "v".into(),
            item: i,
        };
        let fx = co.apply(c(2), 1, set(item(&["a"], "1")));
        assert_eq!(
            replies(&fx),
            [
                (1, 1, CoordReply::Item(item(&["a"], "1"))),
                (2, 1, CoordReply::Done)
            ]
        );
        assert!(fx.released.is_empty());
        assert_eq!(co.held_keys().count(), 1);
        // Replaced: the old keys go; deleted: the new ones go.
        let fx = co.apply(c(2), 2, set(item(&["b"], "2")));
        assert_eq!(fx.released, [Key::named("a")]);
        let r = replies(&co.apply(c(1), 2, get()));
        assert_eq!(r, [(1, 2, CoordReply::Item(item(&["b"], "2")))]);
        let fx = co.apply(c(1), 3, Coordinate::VariableDelete { name: "v".into() });
        assert_eq!(fx.released, [Key::named("b")]);
        assert!(co.variables.is_empty());

        // A queue: first in, first out; a waiting getter takes a put at once.
        let put = |i| Coordinate::QueuePut {
            name: "q".into(),
            item: i,
            maxsize: 0,
            back: false,
        };
        let get = || Coordinate::QueueGet { name: "q".into() };
        co.apply(c(1), 4, put(item(&["x"], "x")));
        co.apply(c(1), 5, put(item(&[], "y")));
        let size = || Coordinate::QueueSize { name: "q".into() };
        assert_eq!(
            replies(&co.apply(c(1), 6, size())),
            [(1, 6, CoordReply::Count(2))]
        );
        let fx = co.apply(c(2), 3, get());
        assert_eq!(replies(&fx), [(2, 3, CoordReply::Item(item(&["x"], "x")))]);
        assert_eq!(fx.released, [Key::named("x")]);
        co.apply(c(2), 4, get());
        assert!(co.queues.is_empty());
        assert!(co.apply(c(2), 5, get()).replies.is_empty());
        let fx = co.apply(c(1), 7, put(item(&["z"], "z")));
        assert_eq!(
            replies(&fx),
            [
                (2, 5, CoordReply::Item(item(&["z"], "z"))),
                (1, 7, CoordReply::Done)
            ]
        );
        assert_eq!(fx.released, [Key::named("z")]);
        assert_eq!(co.held_keys().count(), 0);
        // A restart drops items, keeping waiters.
        co.apply(c(1), 8, put(item(&["w"], "w")));
        co.apply(c(1), 9, set(item(&["v"], "v")));
        assert_eq!(co.drop_items().0.len(), 2);
        assert_eq!(co.held_keys().count(), 0);
    }

    /// Dask's `Queue(maxsize=)`: the first bounded put sets the queue's bound; every put
    /// then waits while it is full or earlier puts wait (its keys held), in order; a get
    /// lets the first waiting put in; another bound is refused; a put withdrawn (timeout)
    /// or of a client gone lets its keys go; a put-back goes first without waiting; a
    /// restart refuses waiting puts.
    #[test]
    fn bounded_queue_puts_wait_for_room_in_order() {
        let mut co = Coordination::default();
        let put = |i, maxsize| Coordinate::QueuePut {
            name: "q".into(),
            item: i,
            maxsize,
            back: false,
        };
        let get = || Coordinate::QueueGet { name: "q".into() };
        let done =
            |fx: Effects, c: u32, r: u64| assert_eq!(replies(&fx), [(c, r, CoordReply::Done)]);
        done(co.apply(c(1), 1, put(item(&["a"], "a"), 2)), 1, 1);
        // A handle naming no bound is bounded all the same.
        done(co.apply(c(2), 1, put(item(&["b"], "b"), 0)), 2, 1);
        assert!(
            co.apply(c(1), 2, put(item(&["c"], "c"), 2))
                .replies
                .is_empty()
        );
        assert!(
            co.apply(c(2), 2, put(item(&["d"], "d"), 0))
                .replies
                .is_empty()
        );
        assert_eq!(co.held_keys().count(), 4);
        co.check().unwrap();
        let fx = co.apply(c(3), 1, put(item(&["x"], "x"), 3));
        assert!(
            matches!(&replies(&fx)[..], [(3, 1, CoordReply::Refused { error })] if error.contains("at most 2"))
        );
        assert_eq!(fx.released, [Key::named("x")]);
        // Each get lets the next waiting put in, in order.
        let fx = co.apply(c(3), 2, get());
        let want = [
            (3, 2, CoordReply::Item(item(&["a"], "a"))),
            (1, 2, CoordReply::Done),
        ];
        assert_eq!(replies(&fx), want);
        let fx = co.apply(c(3), 3, get());
        let want = [
            (3, 3, CoordReply::Item(item(&["b"], "b"))),
            (2, 2, CoordReply::Done),
        ];
        assert_eq!(replies(&fx), want);
        co.check().unwrap();
        // A put that times out: withdrawn, answered once, its key let go.
        assert!(
            co.apply(c(2), 3, put(item(&["e"], "e"), 0))
                .replies
                .is_empty()
        );
        let fx = co.apply(c(2), 3, Coordinate::Abandon);
        assert_eq!(replies(&fx), [(2, 3, CoordReply::Abandoned)]);
        assert_eq!(fx.released, [Key::named("e")]);
        // A put-back goes first, full or not.
        let back = Coordinate::QueuePut {
            name: "q".into(),
            item: item(&["z"], "z"),
            maxsize: 0,
            back: true,
        };
        done(co.apply(c(3), 4, back), 3, 4);
        let fx = co.apply(c(3), 5, get());
        assert_eq!(replies(&fx), [(3, 5, CoordReply::Item(item(&["z"], "z")))]);
        // Full (c, d): a put of a client that goes lets its key go.
        assert!(
            co.apply(c(4), 1, put(item(&["f"], "f"), 2))
                .replies
                .is_empty()
        );
        let fx = co.client_gone(c(4));
        assert_eq!(fx.released, [Key::named("f")]);
        assert!(fx.replies.is_empty());
        // A restart refuses a waiting put and forgets the queue, bound and all.
        assert!(
            co.apply(c(5), 1, put(item(&["g"], "g"), 0))
                .replies
                .is_empty()
        );
        let (_, fx) = co.drop_items();
        let refused = replies(&fx);
        assert!(
            matches!(&refused[..], [(5, 1, CoordReply::Refused { error })] if error.contains("restarted"))
        );
        assert!(co.queues.is_empty());
        assert_eq!(co.held_keys().count(), 0);
        co.check().unwrap();
    }

    /// Dask's `Pub` and `Sub`: every subscription gets each message published after it
    /// began, in order, kept until taken; a `Next` waits for one; nobody takes another
    /// client's messages; an ended subscription refuses its waiting `Next`.
    #[test]
    fn topics_fan_messages_out_to_each_subscription() {
        let mut co = Coordination::default();
        let subscribe = |name: &str| Coordinate::Subscribe { name: name.into() };
        let publish = |i| Coordinate::Publish {
            name: "t".into(),
            item: i,
        };
        let next = |id| Coordinate::Next {
            name: "t".into(),
            id,
        };
        let id = |fx: &Effects| match &fx.replies[..] {
            [(_, _, CoordReply::Subscribed { id })] => *id,
            other => panic!("{other:?}"),
        };
        // Published before anyone subscribed: dropped.
        let r = replies(&co.apply(c(3), 1, publish(item(&[], "early"))));
        assert_eq!(r, [(3, 1, CoordReply::Count(0))]);
        let a = id(&co.apply(c(1), 1, subscribe("t")));
        let b = id(&co.apply(c(2), 1, subscribe("t")));
        assert_ne!(a, b);
        let r = replies(&co.apply(c(3), 2, publish(item(&[], "m1"))));
        assert_eq!(r, [(3, 2, CoordReply::Count(2))]);
        let r = replies(&co.apply(c(1), 2, next(a)));
        assert_eq!(r, [(1, 2, CoordReply::Item(item(&[], "m1")))]);
        // c1 waits; the next message goes straight to it, and is kept for c2.
        assert!(co.apply(c(1), 3, next(a)).replies.is_empty());
        co.check().unwrap();
        let r = replies(&co.apply(c(3), 3, publish(item(&[], "m2"))));
        assert_eq!(
            r,
            [
                (1, 3, CoordReply::Item(item(&[], "m2"))),
                (3, 3, CoordReply::Count(2))
            ]
        );
        for (request, want) in [(2, "m1"), (3, "m2")] {
            let r = replies(&co.apply(c(2), request, next(b)));
            assert_eq!(r, [(2, request, CoordReply::Item(item(&[], want)))]);
        }
        // Not c2's subscription; a message holding data; both refused.
        let r = replies(&co.apply(c(2), 4, next(a)));
        assert!(
            matches!(&r[0].2, CoordReply::Refused { error } if error.contains("no subscription"))
        );
        let r = replies(&co.apply(c(3), 4, publish(item(&["x"], "data"))));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("plain values")));
        // A wait withdrawn, then one ended by its unsubscribe.
        assert!(co.apply(c(1), 5, next(a)).replies.is_empty());
        assert_eq!(
            replies(&co.apply(c(1), 5, Coordinate::Abandon)),
            [(1, 5, CoordReply::Abandoned)]
        );
        assert!(co.apply(c(1), 6, next(a)).replies.is_empty());
        let unsubscribe = Coordinate::Unsubscribe {
            name: "t".into(),
            id: a,
        };
        let r = replies(&co.apply(c(1), 7, unsubscribe));
        assert!(matches!(&r[0], (1, 6, CoordReply::Refused { error }) if error.contains("ended")));
        assert_eq!(r[1], (1, 7, CoordReply::Done));
        co.check().unwrap();
        // c2 goes: the topic is forgotten.
        co.apply(c(3), 5, publish(item(&[], "m3")));
        co.client_gone(c(2));
        assert!(co.topics.is_empty());
        co.check().unwrap();
    }
}

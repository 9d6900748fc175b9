//! Dask's coordination primitives, kept by the scheduler: named events, semaphores (a
//! lock is a semaphore of one lease), variables and queues, shared by every client of the
//! cluster and so by tasks through their workers' clients.
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
//!   lease held or asked for, an empty queue nobody waits on are forgotten.
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

#[derive(Debug, Default)]
struct Event {
    set: bool,
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct Semaphore {
    max_leases: u32,
    /// Leases held per client.
    held: BTreeMap<ClientId, u32>,
    waiters: VecDeque<Waiter>,
}

impl Semaphore {
    fn taken(&self) -> u32 {
        self.held.values().sum()
    }
}

#[derive(Debug, Default)]
struct Variable {
    item: Option<Item>,
    waiters: Vec<Waiter>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
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
}

impl Coordination {
    /// Carry out `client`'s operation `request`. Items given to `VariableSet` and
    /// `QueuePut` must hold known keys, already counted as held by the caller.
    pub fn apply(&mut self, client: ClientId, request: u64, op: Coordinate) -> Effects {
        let me = Waiter { client, request };
        let mut fx = Effects::default();
        let mut answer = |reply| fx.replies.push((client, request, reply));
        match op {
            Coordinate::EventSet { name } => {
                let event = self.events.entry(name).or_default();
                event.set = true;
                for w in std::mem::take(&mut event.waiters) {
                    fx.replies
                        .push((w.client, w.request, CoordReply::Flag(true)));
                }
                fx.replies.push((client, request, CoordReply::Done));
            }
            Coordinate::EventClear { name } => {
                if let Some(event) = self.events.get_mut(&name) {
                    event.set = false;
                    if event.waiters.is_empty() {
                        self.events.remove(&name);
                    }
                }
                answer(CoordReply::Done);
            }
            Coordinate::EventWait { name } => {
                let event = self.events.entry(name).or_default();
                match event.set {
                    true => answer(CoordReply::Flag(true)),
                    false => event.waiters.push(me),
                }
            }
            Coordinate::EventIsSet { name } => {
                let set = self.events.get(&name).is_some_and(|e| e.set);
                answer(CoordReply::Flag(set));
            }
            Coordinate::Acquire { name, max_leases } => {
                if max_leases == 0 {
                    answer(CoordReply::Refused {
                        error: format!("semaphore {name:?}: max_leases must be at least 1"),
                    });
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
                    answer(CoordReply::Refused { error });
                } else if sem.waiters.is_empty() && sem.taken() < sem.max_leases {
                    *sem.held.entry(client).or_default() += 1;
                    answer(CoordReply::Done);
                } else {
                    sem.waiters.push_back(me);
                }
            }
            Coordinate::Release { name } => {
                let held = (self.semaphores.get_mut(&name))
                    .and_then(|s| s.held.get_mut(&client))
                    .filter(|n| **n > 0);
                match held {
                    Some(n) => {
                        *n -= 1;
                        answer(CoordReply::Done);
                        self.grant(&name, &mut fx);
                    }
                    None => answer(CoordReply::Refused {
                        error: format!(
                            "released semaphore {name:?} more often than it was acquired \
                             (this client holds none of its leases)"
                        ),
                    }),
                }
            }
            Coordinate::Leases { name } => {
                let taken = self.semaphores.get(&name).map_or(0, Semaphore::taken);
                answer(CoordReply::Count(u64::from(taken)));
            }
            Coordinate::VariableSet { name, item } => {
                let var = self.variables.entry(name).or_default();
                for w in std::mem::take(&mut var.waiters) {
                    fx.replies
                        .push((w.client, w.request, CoordReply::Item(item.clone())));
                }
                if let Some(old) = var.item.replace(item) {
                    fx.released.extend(old.keys);
                }
                fx.replies.push((client, request, CoordReply::Done));
            }
            Coordinate::VariableGet { name } => {
                let var = self.variables.entry(name).or_default();
                match &var.item {
                    Some(item) => answer(CoordReply::Item(item.clone())),
                    None => var.waiters.push(me),
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
                fx.replies.push((client, request, CoordReply::Done));
            }
            Coordinate::QueuePut { name, item } => {
                let queue = self.queues.entry(name).or_default();
                match queue.waiters.pop_front() {
                    // Handed over at once: its keys go to the getter, then are let go.
                    Some(w) => {
                        fx.released.extend(item.keys.iter().cloned());
                        fx.replies
                            .push((w.client, w.request, CoordReply::Item(item)));
                    }
                    None => queue.items.push_back(item),
                }
                fx.replies.push((client, request, CoordReply::Done));
            }
            Coordinate::QueueGet { name } => {
                let queue = self.queues.entry(name.clone()).or_default();
                match queue.items.pop_front() {
                    Some(item) => {
                        fx.released.extend(item.keys.iter().cloned());
                        answer(CoordReply::Item(item));
                    }
                    None => queue.waiters.push_back(me),
                }
                if queue.items.is_empty() && queue.waiters.is_empty() {
                    self.queues.remove(&name);
                }
            }
            Coordinate::QueueSize { name } => {
                let n = self.queues.get(&name).map_or(0, |q| q.items.len());
                answer(CoordReply::Count(n as u64));
            }
            Coordinate::Abandon => {
                if self.withdraw(|w| w == me) > 0 {
                    answer(CoordReply::Abandoned);
                }
            }
        }
        fx
    }

    /// `client` is gone: its waits are withdrawn (nobody to answer) and its leases given
    /// back to the next waiters.
    pub fn client_gone(&mut self, client: ClientId) -> Effects {
        self.withdraw(|w| w.client == client);
        let mut fx = Effects::default();
        let names: Vec<String> = (self.semaphores.iter())
            .filter(|(_, s)| s.held.contains_key(&client))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Some(sem) = self.semaphores.get_mut(&name) {
                sem.held.remove(&client);
            }
            self.grant(&name, &mut fx);
        }
        fx
    }

    /// Drop every variable and queue item (their data is gone: a restart); answers
    /// nothing, releases nothing (the tasks are forgotten anyway). Events, semaphores and
    /// waiters stay.
    pub fn drop_items(&mut self) -> Vec<String> {
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
        names
    }

    /// Every key the items hold, once per item holding it.
    pub fn held_keys(&self) -> impl Iterator<Item = &Key> {
        let vars = (self.variables.values()).filter_map(|v| v.item.as_ref());
        let queued = self.queues.values().flat_map(|q| q.items.iter());
        vars.chain(queued).flat_map(|item| item.keys.iter())
    }

    /// Remove the waiters `which` picks; how many there were.
    fn withdraw(&mut self, which: impl Fn(Waiter) -> bool) -> usize {
        let mut n = 0;
        let mut count = |before: usize, after: usize| n += before - after;
        for e in self.events.values_mut() {
            let before = e.waiters.len();
            e.waiters.retain(|w| !which(*w));
            count(before, e.waiters.len());
        }
        for s in self.semaphores.values_mut() {
            let before = s.waiters.len();
            s.waiters.retain(|w| !which(*w));
            count(before, s.waiters.len());
        }
        for v in self.variables.values_mut() {
            let before = v.waiters.len();
            v.waiters.retain(|w| !which(*w));
            count(before, v.waiters.len());
        }
        for q in self.queues.values_mut() {
            let before = q.waiters.len();
            q.waiters.retain(|w| !which(*w));
            count(before, q.waiters.len());
        }
        self.events.retain(|_, e| e.set || !e.waiters.is_empty());
        self.variables
            .retain(|_, v| v.item.is_some() || !v.waiters.is_empty());
        self.queues
            .retain(|_, q| !q.items.is_empty() || !q.waiters.is_empty());
        // A withdrawn head of a semaphore's queue may have held back the next.
        let names: Vec<String> = self.semaphores.keys().cloned().collect();
        for name in names {
            let mut fx = Effects::default();
            self.grant(&name, &mut fx);
            debug_assert!(
                fx.replies.is_empty(),
                "nobody was waiting behind a free lease"
            );
        }
        n
    }

    /// Give free leases of semaphore `name` to its waiters, in order; forget it if no
    /// lease is held or asked for.
    fn grant(&mut self, name: &str, fx: &mut Effects) {
        let Some(sem) = self.semaphores.get_mut(name) else {
            return;
        };
        sem.held.retain(|_, n| *n > 0);
        while sem.taken() < sem.max_leases {
            let Some(w) = sem.waiters.pop_front() else {
                break;
            };
            *sem.held.entry(w.client).or_default() += 1;
            fx.replies.push((w.client, w.request, CoordReply::Done));
        }
        if sem.held.is_empty() && sem.waiters.is_empty() {
            self.semaphores.remove(name);
        }
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

    #[test]
    fn semaphores_grant_leases_in_order_and_free_those_of_the_gone() {
        let mut co = Coordination::default();
        let acquire = |n| Coordinate::Acquire {
            name: "s".into(),
            max_leases: n,
        };
        let release = || Coordinate::Release { name: "s".into() };
        assert_eq!(
            replies(&co.apply(c(1), 1, acquire(2))),
            [(1, 1, CoordReply::Done)]
        );
        assert_eq!(
            replies(&co.apply(c(2), 1, acquire(2))),
            [(2, 1, CoordReply::Done)]
        );
        // Full: c3 then c1 wait, in that order.
        assert!(co.apply(c(3), 1, acquire(2)).replies.is_empty());
        assert!(co.apply(c(1), 2, acquire(2)).replies.is_empty());
        // Another number of leases is refused, naming the semaphore.
        let r = replies(&co.apply(c(4), 1, acquire(3)));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("\"s\"")));
        let leases = Coordinate::Leases { name: "s".into() };
        assert_eq!(
            replies(&co.apply(c(4), 2, leases)),
            [(4, 2, CoordReply::Count(2))]
        );
        // c2 releases: c3 gets it. c2 releasing again is refused.
        let fx = co.apply(c(2), 2, release());
        assert_eq!(
            replies(&fx),
            [(2, 2, CoordReply::Done), (3, 1, CoordReply::Done)]
        );
        let r = replies(&co.apply(c(2), 3, release()));
        assert!(matches!(&r[0].2, CoordReply::Refused { error } if error.contains("more often")));
        // c3 disconnects: its lease goes to c1's waiting acquire.
        let fx = co.client_gone(c(3));
        assert_eq!(replies(&fx), [(1, 2, CoordReply::Done)]);
        // Everything released: forgotten.
        co.apply(c(1), 3, release());
        co.apply(c(1), 4, release());
        assert!(co.semaphores.is_empty());
    }

    #[test]
    fn an_abandoned_wait_is_answered_once_and_holds_nothing_back() {
        let mut co = Coordination::default();
        let lock = || Coordinate::Acquire {
            name: "l".into(),
            max_leases: 1,
        };
        co.apply(c(1), 1, lock());
        assert!(co.apply(c(2), 5, lock()).replies.is_empty());
        assert!(co.apply(c(3), 9, lock()).replies.is_empty());
        // c2 gives up waiting: told so; then c1 releases and c3 (not c2) gets the lock.
        assert_eq!(
            replies(&co.apply(c(2), 5, Coordinate::Abandon)),
            [(2, 5, CoordReply::Abandoned)]
        );
        let fx = co.apply(c(1), 2, Coordinate::Release { name: "l".into() });
        assert_eq!(
            replies(&fx),
            [(1, 2, CoordReply::Done), (3, 9, CoordReply::Done)]
        );
        // Abandoning what was answered already says nothing (the answer went first).
        assert!(co.apply(c(3), 9, Coordinate::Abandon).replies.is_empty());
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
        assert_eq!(co.drop_items().len(), 2);
        assert_eq!(co.held_keys().count(), 0);
    }
}

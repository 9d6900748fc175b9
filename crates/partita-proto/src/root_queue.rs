//! The scheduler's queue of ready root tasks, cut into runs that workers take from.
//!
//! Key decisions:
//! - **Runs.** Each worker takes queued roots from a run of the queue of its own, so
//!   neighbours in priority order, which usually feed the same consumer (a reduction's
//!   group), are made on the same worker. A worker without a run, or whose run is empty,
//!   takes a run nobody has, or else the later half of the longest run (as rayon splits a
//!   range). A run ends where the next begins; the first starts at [`QUEUE_START`], so every
//!   position has a run.
//! - **Counted runs.** Each run knows how many tasks it holds, kept up to date on every
//!   insert and remove (one ordered-map lookup), so choosing the run to take from looks at
//!   the runs only (one per worker at most, plus nobody's) and splitting one walks half of
//!   that run, not the whole queue: with W workers starting on N roots the claims walk
//!   about N positions in all, where counting the queue at each claim walked W x N.
//! - **User priority before runs.** A client's `priority=` moves its tasks a band of 2^32
//!   positions ahead (graph orders are `u32`); a task in a better band than the head of
//!   the asking worker's run is served first, whichever run it lies in, so urgent work
//!   starts on every worker asking rather than only the one whose run it fell into.

use std::collections::BTreeMap;
use std::collections::btree_map::Range;

use partita_core::Key;

use crate::messages::{WorkerId, priority_band};

/// A position in the root queue: (priority, seq).
pub(crate) type QueuePos = (i64, u64);

/// Where the first run of the root queue starts: before every task.
pub(crate) const QUEUE_START: QueuePos = (i64::MIN, 0);

/// One run: who takes from it (`None`: nobody yet) and how many queued tasks it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    owner: Option<WorkerId>,
    len: usize,
}

/// Ready root tasks by (priority, seq), in runs.
#[derive(Debug)]
pub(crate) struct RootQueue {
    tasks: BTreeMap<QueuePos, Key>,
    /// Where each run starts.
    runs: BTreeMap<QueuePos, Run>,
    /// Where each worker's run starts.
    run_of: BTreeMap<WorkerId, QueuePos>,
}

impl Default for RootQueue {
    fn default() -> Self {
        RootQueue {
            tasks: BTreeMap::new(),
            runs: BTreeMap::from([(
                QUEUE_START,
                Run {
                    owner: None,
                    len: 0,
                },
            )]),
            run_of: BTreeMap::new(),
        }
    }
}

impl RootQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The queued tasks in queue order (priority, then arrival).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.tasks.values()
    }

    /// The run holding `pos`.
    fn run_mut(&mut self, pos: QueuePos) -> &mut Run {
        (self.runs.range_mut(..=pos).next_back())
            .expect("the first run starts before every position")
            .1
    }

    pub(crate) fn insert(&mut self, pos: QueuePos, key: Key) {
        if self.tasks.insert(pos, key).is_none() {
            self.run_mut(pos).len += 1;
        }
    }

    pub(crate) fn remove(&mut self, pos: &QueuePos) -> Option<Key> {
        let key = self.tasks.remove(pos)?;
        self.run_mut(*pos).len -= 1;
        Some(key)
    }

    /// The queued tasks of the run starting at `start`, in order.
    fn run_tasks(&self, start: QueuePos) -> Range<'_, QueuePos, Key> {
        match self.runs.range(start..).nth(1) {
            Some((end, _)) => self.tasks.range(start..*end),
            None => self.tasks.range(start..),
        }
    }

    /// The first queued task of `worker`'s run, taking a new run if it has none or its
    /// run is empty, or the queue's first task if that has a better user priority;
    /// `None` when the queue is empty.
    pub(crate) fn next_for(&mut self, worker: WorkerId) -> Option<(QueuePos, Key)> {
        let own = self.next_in_run(worker)?;
        let (first, key) = self.tasks.first_key_value()?;
        Some(match priority_band(first.0) < priority_band(own.0.0) {
            true => (*first, key.clone()),
            false => own,
        })
    }

    fn next_in_run(&mut self, worker: WorkerId) -> Option<(QueuePos, Key)> {
        if let Some(&start) = self.run_of.get(&worker) {
            if let Some((pos, key)) = self.run_tasks(start).next() {
                return Some((*pos, key.clone()));
            }
            self.leave(worker);
        }
        // A run nobody takes from, else the longest; ties go to the earliest.
        let (&start, &run) = (self.runs.iter())
            .filter(|(_, run)| run.len > 0)
            .max_by_key(|(pos, run)| (run.owner.is_none(), run.len, std::cmp::Reverse(**pos)))?;
        let split = match run.owner {
            None => start,
            Some(_) => *self.run_tasks(start).nth(run.len / 2).expect("counted").0,
        };
        if split == start {
            // Nobody's run, or a run of one task: taken whole.
            if let Some(previous) = run.owner {
                self.run_of.remove(&previous);
            }
            self.runs.insert(
                start,
                Run {
                    owner: Some(worker),
                    ..run
                },
            );
        } else {
            let taken = run.len - run.len / 2;
            self.runs.insert(
                start,
                Run {
                    len: run.len / 2,
                    ..run
                },
            );
            self.runs.insert(
                split,
                Run {
                    owner: Some(worker),
                    len: taken,
                },
            );
        }
        self.run_of.insert(worker, split);
        let (pos, key) = self.run_tasks(split).next().expect("counted");
        Some((*pos, key.clone()))
    }

    /// `worker` no longer takes from its run: what is left of it joins the run before (or
    /// becomes nobody's, for the first).
    pub(crate) fn leave(&mut self, worker: WorkerId) {
        let Some(start) = self.run_of.remove(&worker) else {
            return;
        };
        if start == QUEUE_START {
            self.run_mut(start).owner = None;
        } else {
            let run = self.runs.remove(&start).expect("a worker's run");
            self.run_mut(start).len += run.len;
        }
    }

    /// The invariants: the first run exists, owners and their runs agree, every run's
    /// count is what it holds, and only workers that `is_worker` knows have runs.
    pub(crate) fn check(&self, is_worker: impl Fn(&WorkerId) -> bool) -> Result<(), String> {
        if !self.runs.contains_key(&QUEUE_START) {
            return Err("the root queue's first run is missing".into());
        }
        let owners: BTreeMap<WorkerId, QueuePos> = (self.runs.iter())
            .filter_map(|(pos, run)| Some((run.owner?, *pos)))
            .collect();
        if owners != self.run_of {
            return Err(format!(
                "the root queue's runs {:?} disagree with their owners {:?}",
                self.runs, self.run_of
            ));
        }
        for (start, run) in &self.runs {
            let held = self.run_tasks(*start).count();
            if held != run.len {
                return Err(format!(
                    "the root queue's run at {start:?} counts {} tasks but holds {held}",
                    run.len
                ));
            }
        }
        if let Some(w) = self.run_of.keys().find(|w| !is_worker(w)) {
            return Err(format!("{w} left but still has a run of the root queue"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(n: u64) -> RootQueue {
        let mut q = RootQueue::default();
        for i in 0..n {
            q.insert((0, i), Key::new("r", [i as u32]));
        }
        q
    }

    fn take(q: &mut RootQueue, w: u32) -> u64 {
        let (pos, _) = q.next_for(WorkerId(w)).expect("a task");
        q.remove(&pos).expect("queued");
        pos.1
    }

    #[test]
    fn runs_are_split_in_half_and_counted() {
        let mut q = queue(100);
        assert_eq!(take(&mut q, 0), 0); // nobody's run, taken whole
        assert_eq!(take(&mut q, 1), 50); // the later half of 1..=99
        assert_eq!(take(&mut q, 2), 25); // equal runs 1..=49 and 51..=99: the earlier
        assert_eq!(take(&mut q, 0), 1);
        assert_eq!(take(&mut q, 1), 51);
        q.check(|_| true).unwrap();
        let err = q.check(|w| *w != WorkerId(2)).unwrap_err();
        assert!(err.contains("worker-2 left"), "{err}");
        // A task queued again inside a run is counted there and taken in order.
        q.insert((0, 50), Key::new("r", [50]));
        q.check(|_| true).unwrap();
        assert_eq!(take(&mut q, 1), 50);
        // A worker that leaves hands what is left of its run to the run before (worker
        // 2's, 26..=49), which then holds 72 tasks.
        q.leave(WorkerId(1));
        q.check(|_| true).unwrap();
        assert_eq!(take(&mut q, 0), 2);
        // Worker 1 comes back and takes the later half of that longest run: from 64 on.
        assert_eq!(take(&mut q, 1), 64);
        q.check(|_| true).unwrap();
        // Draining the queue keeps every count right; then nothing is left to take.
        while !q.is_empty() {
            for w in 0..3 {
                if let Some((pos, _)) = q.next_for(WorkerId(w)) {
                    q.remove(&pos);
                }
            }
            q.check(|_| true).unwrap();
        }
        assert!(q.next_for(WorkerId(0)).is_none());
    }

    #[test]
    fn a_better_user_priority_is_served_first_whatever_run_it_is_in() {
        let mut q = queue(100);
        assert_eq!(take(&mut q, 0), 0); // worker 0's run: all of it
        assert_eq!(take(&mut q, 1), 50); // worker 1's: 51 on
        // Urgent tasks (priority 1: a band ahead) land before everything, in worker 0's
        // run; worker 1 asking next gets one all the same, then worker 0 the other.
        let urgent = |i: u64| (-(1i64 << 32) + i as i64, 1000 + i);
        q.insert(urgent(0), Key::new("u", [0]));
        q.insert(urgent(1), Key::new("u", [1]));
        assert_eq!(take(&mut q, 1), 1000);
        assert_eq!(take(&mut q, 0), 1001);
        // Then each goes back to its own run.
        assert_eq!(take(&mut q, 1), 51);
        assert_eq!(take(&mut q, 0), 1);
        q.check(|_| true).unwrap();
        // Within one band, positions still follow the runs: an earlier graph order in
        // worker 0's run waits for worker 0.
        q.insert((0, 0), Key::new("early", [0]));
        assert_eq!(take(&mut q, 1), 52);
        assert_eq!(take(&mut q, 0), 0);
    }

    #[test]
    fn a_run_of_one_task_is_taken_whole() {
        let mut q = queue(1);
        let first = q.next_for(WorkerId(0)).unwrap();
        // Worker 1 takes the later half of worker 0's run: all of it.
        assert_eq!(q.next_for(WorkerId(1)).as_ref(), Some(&first));
        // Worker 0's run is empty now; it takes the one task back, whole.
        assert_eq!(q.next_for(WorkerId(0)).as_ref(), Some(&first));
        q.check(|_| true).unwrap();
        assert_eq!(q.run_of.keys().copied().collect::<Vec<_>>(), [WorkerId(0)]);
    }
}

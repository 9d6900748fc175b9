//! The local scheduler: a rayon thread pool running ready tasks by priority.
//!
//! Key decisions:
//! - **At most one lock per task.** Ready tasks sit in a binary heap keyed by the plan's
//!   priority (its depth-first order); tasks without dependencies wait in a list already in
//!   priority order. A worker that finishes a task takes the lock once to push the dependents
//!   it made ready and pop its next task; while tasks are tiny it reserves a few at a time.
//!   Dependency and use counts are atomics.
//! - **No blocking inside the pool.** A worker whose heap runs dry exits instead of waiting;
//!   whoever makes tasks ready later spawns workers again, up to the thread count. Ops may
//!   therefore use rayon themselves without starving the pool, and cancellation needs no
//!   wake-ups.
//! - **Release early.** The last consumer of a result takes it out of its slot, so
//!   intermediates live exactly as long as some dependent still needs them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::{
    Execution, ExecutionContext, LiveBytes, RunStats, Scheduler, guard, missing_input,
    progress_step, run_task,
};
use crate::error::{Error, Result};
use crate::graph::TaskId;
use crate::optimize::ExecutionPlan;
use crate::value::Value;

/// Runs tasks on a rayon thread pool (by default one thread per core).
#[derive(Clone, Debug)]
pub struct LocalScheduler {
    threads: usize,
    pool: Arc<OnceLock<rayon::ThreadPool>>,
}

impl Default for LocalScheduler {
    fn default() -> Self {
        LocalScheduler::new()
    }
}

impl LocalScheduler {
    /// One thread per core.
    pub fn new() -> LocalScheduler {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LocalScheduler::with_threads(cores)
    }

    /// `threads` worker threads (at least one).
    pub fn with_threads(threads: usize) -> LocalScheduler {
        LocalScheduler {
            threads: threads.max(1),
            pool: Arc::new(OnceLock::new()),
        }
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The pool, started on first use. A failure to start is reported and not remembered,
    /// so a later run tries again (the scheduler stays usable).
    fn pool(&self) -> Result<&rayon::ThreadPool> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(|i| format!("partita-local-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the local thread pool: {e}")))?;
        // Another thread may have won the race; either pool is fine.
        let _ = self.pool.set(pool);
        self.pool
            .get()
            .ok_or_else(|| Error::Internal("thread pool vanished".into()))
    }
}

impl Scheduler for LocalScheduler {
    fn name(&self) -> &str {
        "local"
    }

    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        let start = Instant::now();
        let pool = self.pool()?;
        let run = Run::new(plan, ctx, self.threads);
        if let Some(p) = &ctx.progress {
            p.started(run.total);
        }
        if run.total > 0 {
            pool.scope(|scope| {
                let starters = {
                    let mut q = run.queue.lock();
                    let n = run.threads.min(q.len());
                    q.active = n;
                    n
                };
                for _ in 0..starters {
                    scope.spawn(|s| run.worker(s));
                }
            });
        }
        let done = run.done.load(Ordering::Acquire);
        let error = run.queue.lock().error.take();
        let result = match error {
            Some(e) => Err(e),
            None if done != run.total => Err(Error::Internal(format!(
                "local scheduler stopped with {} of {} tasks unfinished",
                run.total - done,
                run.total
            ))),
            None => plan
                .outputs
                .iter()
                .map(|o| {
                    run.slots[o.index()].lock().clone().ok_or_else(|| {
                        Error::Internal(format!("output {} was not computed", plan.graph.key(*o)))
                    })
                })
                .collect::<Result<Vec<_>>>(),
        };
        if let Some(p) = &ctx.progress {
            p.finished(done, run.total, result.is_ok());
        }
        Ok(Execution {
            values: result?,
            stats: RunStats {
                tasks_run: done,
                peak_live_bytes: run.live.peak(),
                final_live_bytes: run.live.live(),
                elapsed: start.elapsed(),
            },
        })
    }
}

/// Tasks shorter than this are "tiny": a worker then takes several per lock acquisition.
const TINY_TASK: Duration = Duration::from_micros(25);
/// How many tasks a worker may hold while tasks are tiny.
const MAX_BATCH: usize = 8;

struct Queue {
    /// Ready tasks that had dependencies, by priority.
    ready: BinaryHeap<Reverse<(u32, u32)>>,
    /// Tasks without dependencies in priority order; `roots[next_root..]` have not started.
    /// Kept out of the heap so a million roots cost a sorted list, not a million-entry heap.
    roots: Vec<u32>,
    next_root: usize,
    /// Workers running or spawned and about to pop.
    active: usize,
    error: Option<Error>,
}

impl Queue {
    /// The ready task with the smallest priority.
    fn pop(&mut self, priority: &[u32]) -> Option<u32> {
        let root = self.roots.get(self.next_root).copied();
        match (self.ready.peek(), root) {
            (Some(&Reverse((p, _))), Some(r)) if p < priority[r as usize] => {
                self.ready.pop().map(|Reverse((_, t))| t)
            }
            (_, Some(r)) => {
                self.next_root += 1;
                Some(r)
            }
            (Some(_), None) => self.ready.pop().map(|Reverse((_, t))| t),
            (None, None) => None,
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.roots.len() - self.next_root
    }
}

/// The shared state of one run.
struct Run<'p> {
    plan: &'p ExecutionPlan,
    ctx: &'p ExecutionContext,
    threads: usize,
    total: usize,
    step: usize,
    is_output: Vec<bool>,
    slots: Vec<Mutex<Option<Value>>>,
    /// Unfinished dependency edges per task.
    waiting_on: Vec<AtomicU32>,
    /// Dependents that have not yet consumed the task's result.
    uses_left: Vec<AtomicU32>,
    queue: Mutex<Queue>,
    live: LiveBytes,
    done: AtomicUsize,
    /// The highest count handed to the progress sink; held while reporting so reports
    /// arrive in order.
    reported: Mutex<usize>,
}

type Ready = SmallVec<[u32; 8]>;

impl<'p> Run<'p> {
    fn new(plan: &'p ExecutionPlan, ctx: &'p ExecutionContext, threads: usize) -> Run<'p> {
        let g = &plan.graph;
        let total = g.len();
        let roots = plan
            .order
            .iter()
            .filter(|t| g.dependencies(**t).is_empty())
            .map(|t| t.0)
            .collect();
        Run {
            plan,
            ctx,
            threads,
            total,
            step: progress_step(total),
            is_output: plan.output_mask(),
            slots: (0..total).map(|_| Mutex::new(None)).collect(),
            waiting_on: g
                .ids()
                .map(|t| AtomicU32::new(g.dependencies(t).len() as u32))
                .collect(),
            uses_left: g
                .ids()
                .map(|t| AtomicU32::new(g.dependents(t).len() as u32))
                .collect(),
            queue: Mutex::new(Queue {
                ready: BinaryHeap::new(),
                roots,
                next_root: 0,
                active: 0,
                error: None,
            }),
            live: LiveBytes::default(),
            done: AtomicUsize::new(0),
            reported: Mutex::new(0),
        }
    }

    /// Pop and run tasks until there are none ready or the run failed.
    ///
    /// `batch` holds the tasks this worker has reserved, best priority last. While tasks are
    /// tiny a worker reserves up to [`MAX_BATCH`], and runs them without touching the lock
    /// unless one makes other tasks ready; byte and progress accounting is kept per worker
    /// and published whenever the lock is taken. As soon as a task takes longer the worker
    /// gives all reserved tasks but one back, so slow tasks are never hoarded.
    fn worker<'s>(&'s self, scope: &rayon::Scope<'s>) {
        let priority = &self.plan.priority;
        let exact = self.ctx.observer.is_some();
        let mut batch: SmallVec<[u32; MAX_BATCH]> = SmallVec::new();
        let mut pending = Tally::default();
        {
            let mut q = self.queue.lock();
            match q.pop(priority) {
                Some(t) if q.error.is_none() => batch.push(t),
                _ => {
                    q.active -= 1;
                    return;
                }
            }
        }
        while let Some(task) = batch.pop() {
            let started = Instant::now();
            let outcome = if self.ctx.cancel.is_cancelled() {
                Err(Error::Cancelled)
            } else {
                guard(&self.plan.graph, TaskId(task), || {
                    self.run_one(TaskId(task), &mut pending)
                })
            };
            let tiny = started.elapsed() < TINY_TASK;
            if let Ok(ready) = &outcome
                && ready.is_empty()
                && tiny
                && !batch.is_empty()
                && !exact
            {
                continue;
            }
            let mut q = self.queue.lock();
            let done = self.publish(&mut pending);
            let ready = match outcome {
                Ok(ready) if q.error.is_none() => ready,
                Ok(_) => {
                    q.active -= 1;
                    return;
                }
                Err(e) => {
                    q.error.get_or_insert(e);
                    q.active -= 1;
                    return;
                }
            };
            if let Some(o) = &self.ctx.observer {
                let (id, graph) = (TaskId(task), &self.plan.graph);
                let observed = guard(graph, id, || {
                    o.task_finished(id, graph.key(id), pending.last_nbytes, self.live.live());
                    Ok(())
                });
                if let Err(e) = observed {
                    q.error.get_or_insert(e);
                    q.active -= 1;
                    return;
                }
            }
            for t in ready {
                q.ready.push(Reverse((priority[t as usize], t)));
            }
            if tiny {
                while batch.len() < MAX_BATCH {
                    let Some(t) = q.pop(priority) else { break };
                    let at =
                        batch.partition_point(|&b| priority[b as usize] > priority[t as usize]);
                    batch.insert(at, t);
                }
            } else {
                // Keep only the best reserved task; give the rest back for idle workers.
                let keep = batch.pop();
                for t in batch.drain(..) {
                    q.ready.push(Reverse((priority[t as usize], t)));
                }
                batch.extend(keep);
                if let Some(t) = q.pop(priority) {
                    let at =
                        batch.partition_point(|&b| priority[b as usize] > priority[t as usize]);
                    batch.insert(at, t);
                    // The heap's best may beat the kept one; run the better, return the other.
                    if batch.len() > 1 {
                        let worse = batch.remove(0);
                        q.ready.push(Reverse((priority[worse as usize], worse)));
                    }
                }
            }
            let exit = batch.is_empty();
            let helpers = if exit {
                q.active -= 1;
                0
            } else {
                let h = (self.threads - q.active).min(q.len());
                q.active += h;
                h
            };
            drop(q);
            if let Err(e) = self.report_progress(done) {
                self.queue.lock().error.get_or_insert(e);
            }
            if exit {
                return;
            }
            for _ in 0..helpers {
                scope.spawn(|s| self.worker(s));
            }
        }
        // Unreachable in practice (the loop exits by returning), but keep the count right.
        self.queue.lock().active -= 1;
    }

    /// Fold a worker's tally into the run's; returns `(done before, done after)`.
    fn publish(&self, t: &mut Tally) -> (usize, usize) {
        if t.added > 0 {
            self.live.add(t.added);
        }
        if t.released > 0 {
            self.live.sub(t.released);
        }
        let before = self.done.fetch_add(t.done, Ordering::AcqRel);
        let after = before + t.done;
        t.added = 0;
        t.released = 0;
        t.done = 0;
        (before, after)
    }

    /// Report progress if `after` crossed a step, never going backwards: workers report
    /// after releasing the lock, so a later count may arrive first.
    fn report_progress(&self, (before, after): (usize, usize)) -> Result<()> {
        if let Some(p) = &self.ctx.progress
            && (before / self.step != after / self.step || (after == self.total && before != after))
        {
            let mut reported = self.reported.lock();
            if *reported >= after {
                return Ok(());
            }
            *reported = after;
            let sink = std::panic::AssertUnwindSafe(|| p.advanced(after, self.total));
            std::panic::catch_unwind(sink).map_err(|payload| {
                Error::Internal(format!(
                    "the progress callback panicked: {}",
                    crate::error::panic_message(&*payload)
                ))
            })?;
        }
        Ok(())
    }

    /// Run one task, store its result, release spent inputs; return newly ready tasks.
    fn run_one(&self, id: TaskId, tally: &mut Tally) -> Result<Ready> {
        let g = &self.plan.graph;
        let deps = g.dependencies(id);
        let inputs: SmallVec<[Value; 8]> = deps
            .iter()
            .map(|d| {
                self.slots[d.index()]
                    .lock()
                    .clone()
                    .ok_or_else(|| missing_input(g, *d, id))
            })
            .collect::<Result<_>>()?;
        let value = run_task(g, id, &inputs)?;
        drop(inputs);
        let nbytes = value.nbytes() as u64;
        tally.added += nbytes;
        tally.last_nbytes = nbytes;
        let dependents = g.dependents(id);
        if dependents.is_empty() && !self.is_output[id.index()] {
            tally.released += nbytes;
            drop(value);
        } else {
            *self.slots[id.index()].lock() = Some(value);
        }
        for d in deps {
            if self.uses_left[d.index()].fetch_sub(1, Ordering::AcqRel) == 1
                && !self.is_output[d.index()]
                && let Some(v) = self.slots[d.index()].lock().take()
            {
                tally.released += v.nbytes() as u64;
            }
        }
        let mut ready = Ready::new();
        for c in dependents {
            if self.waiting_on[c.index()].fetch_sub(1, Ordering::AcqRel) == 1 {
                ready.push(c.0);
            }
        }
        tally.done += 1;
        Ok(ready)
    }
}

/// A worker's accounting not yet folded into the run's.
#[derive(Default)]
struct Tally {
    added: u64,
    released: u64,
    done: usize,
    last_nbytes: u64,
}

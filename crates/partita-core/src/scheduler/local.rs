//! The local scheduler: a rayon thread pool running ready tasks by priority.
//!
//! Key decisions:
//! - **One lock per task.** Ready tasks sit in a binary heap keyed by the plan's priority
//!   (its depth-first order). A worker that finishes a task takes the lock once to push the
//!   dependents it made ready and pop its next task. Dependency and use counts are atomics.
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
use std::time::Instant;

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::{Execution, ExecutionContext, LiveBytes, RunStats, Scheduler, progress_step, run_task};
use crate::error::{Error, Result};
use crate::graph::TaskId;
use crate::optimize::ExecutionPlan;
use crate::value::Value;

/// Runs tasks on a rayon thread pool (by default one thread per core).
#[derive(Clone, Debug)]
pub struct LocalScheduler {
    threads: usize,
    pool: Arc<OnceLock<std::result::Result<rayon::ThreadPool, String>>>,
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

    fn pool(&self) -> Result<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.threads)
                    .thread_name(|i| format!("partita-local-{i}"))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Internal(format!("cannot start the local thread pool: {e}")))
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
                    let n = run.threads.min(q.ready.len());
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

struct Queue {
    ready: BinaryHeap<Reverse<(u32, u32)>>,
    /// Workers running or spawned and about to pop.
    active: usize,
    error: Option<Error>,
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
}

type Ready = SmallVec<[u32; 8]>;

impl<'p> Run<'p> {
    fn new(plan: &'p ExecutionPlan, ctx: &'p ExecutionContext, threads: usize) -> Run<'p> {
        let g = &plan.graph;
        let total = g.len();
        let mut ready = BinaryHeap::new();
        for id in g.ids() {
            if g.dependencies(id).is_empty() {
                ready.push(Reverse((plan.priority[id.index()], id.0)));
            }
        }
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
                ready,
                active: 0,
                error: None,
            }),
            live: LiveBytes::default(),
            done: AtomicUsize::new(0),
        }
    }

    /// Pop and run tasks until there are none ready or the run failed.
    fn worker<'s>(&'s self, scope: &rayon::Scope<'s>) {
        let mut next = {
            let mut q = self.queue.lock();
            match q.ready.pop() {
                Some(Reverse((_, t))) if q.error.is_none() => t,
                _ => {
                    q.active -= 1;
                    return;
                }
            }
        };
        loop {
            let outcome = if self.ctx.cancel.is_cancelled() {
                Err(Error::Cancelled)
            } else {
                self.run_one(TaskId(next))
            };
            let mut q = self.queue.lock();
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
            for t in ready {
                q.ready.push(Reverse((self.plan.priority[t as usize], t)));
            }
            let Some(Reverse((_, t))) = q.ready.pop() else {
                q.active -= 1;
                return;
            };
            next = t;
            let helpers = (self.threads - q.active).min(q.ready.len());
            q.active += helpers;
            drop(q);
            for _ in 0..helpers {
                scope.spawn(|s| self.worker(s));
            }
        }
    }

    /// Run one task, store its result, release spent inputs; return newly ready tasks.
    fn run_one(&self, id: TaskId) -> Result<Ready> {
        let g = &self.plan.graph;
        let deps = g.dependencies(id);
        let inputs: SmallVec<[Value; 4]> = deps
            .iter()
            .map(|d| {
                self.slots[d.index()].lock().clone().ok_or_else(|| {
                    Error::Internal(format!(
                        "input {} of task {} is not available",
                        g.key(*d),
                        g.key(id)
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let value = run_task(g, id, &inputs)?;
        drop(inputs);
        let nbytes = value.nbytes() as u64;
        self.live.add(nbytes);
        let dependents = g.dependents(id);
        if dependents.is_empty() && !self.is_output[id.index()] {
            self.live.sub(nbytes);
            drop(value);
        } else {
            *self.slots[id.index()].lock() = Some(value);
        }
        for d in deps {
            if self.uses_left[d.index()].fetch_sub(1, Ordering::AcqRel) == 1
                && !self.is_output[d.index()]
                && let Some(v) = self.slots[d.index()].lock().take()
            {
                self.live.sub(v.nbytes() as u64);
            }
        }
        let mut ready = Ready::new();
        for c in dependents {
            if self.waiting_on[c.index()].fetch_sub(1, Ordering::AcqRel) == 1 {
                ready.push(c.0);
            }
        }
        let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(o) = &self.ctx.observer {
            o.task_finished(id, g.key(id), nbytes, self.live.live());
        }
        if let Some(p) = &self.ctx.progress
            && (done.is_multiple_of(self.step) || done == self.total)
        {
            p.advanced(done, self.total);
        }
        Ok(ready)
    }
}

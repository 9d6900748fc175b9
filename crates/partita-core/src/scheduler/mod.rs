//! Schedulers: run an [`ExecutionPlan`] and hand back the outputs.
//!
//! Two live here: [`SyncScheduler`] (one thread, the plan's order exactly, for debugging) and
//! [`LocalScheduler`] (rayon threads, ready tasks by priority). The distributed client
//! implements the same trait, so one graph computes unchanged on each.

mod local;
mod sync;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub use local::LocalScheduler;
pub use sync::SyncScheduler;

use crate::error::{Error, Result, panic_message};
use crate::graph::{Graph, TaskId};
use crate::key::Key;
use crate::op::{Literal, Op};
use crate::optimize::{ExecutionPlan, OptimizeOptions};
use crate::progress::ProgressSink;
use crate::value::Value;

/// Runs execution plans.
///
/// Contract for implementations:
/// - Returns one value per entry of `plan.outputs`, in that order, equal to what running each
///   task's op on its dependencies' results gives (the same on every scheduler).
/// - Frees every intermediate result once its last dependent has run; only outputs survive.
/// - Catches panics in ops and reports them as [`Error::Panic`] naming the task.
/// - On the first failing task stops starting new tasks and returns that task's error
///   (wrapped so it names the task); on cancellation returns [`Error::Cancelled`].
/// - Reports progress to `ctx.progress` and finished tasks to `ctx.observer`, if set.
/// - Leaves the scheduler usable for the next plan, whatever happened to this one.
pub trait Scheduler: Send + Sync {
    /// A short name: "sync", "local", "distributed".
    fn name(&self) -> &str;

    /// Run `plan`.
    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution>;

    /// Run `plan` and keep its outputs where they were made: one op per entry of
    /// `plan.outputs` that gives that value to later graphs (`persist`). Here, in this
    /// process, that is the value itself ([`Literal`]); a cluster keeps values on its
    /// workers and hands back handles ([`Op::remote_handle`]) that its later graphs read
    /// in place, and that any other scheduler runs by fetching the value.
    fn persist(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Vec<Arc<dyn Op>>> {
        let execution = self.execute(plan, ctx)?;
        Ok((execution.values.into_iter())
            .map(|v| Arc::new(Literal(v)) as Arc<dyn Op>)
            .collect())
    }
}

/// A shared scheduler (a cluster client kept by several owners) is a scheduler.
impl<S: Scheduler + ?Sized> Scheduler for std::sync::Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        (**self).execute(plan, ctx)
    }
    fn persist(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Vec<Arc<dyn Op>>> {
        (**self).persist(plan, ctx)
    }
}

/// A borrowed scheduler is a scheduler, so `Box<dyn Scheduler + 'a>` can hold a reference.
impl<S: Scheduler + ?Sized> Scheduler for &S {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        (**self).execute(plan, ctx)
    }
    fn persist(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Vec<Arc<dyn Op>>> {
        (**self).persist(plan, ctx)
    }
}

/// The outputs of a run and what it cost.
#[derive(Debug)]
pub struct Execution {
    /// One value per `plan.outputs` entry.
    pub values: Vec<Value>,
    /// Accounting.
    pub stats: RunStats,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Tasks executed.
    pub tasks_run: usize,
    /// The largest total of results alive at once, by [`Value::nbytes`].
    pub peak_live_bytes: u64,
    /// Results alive when the run ended (the outputs, on success).
    pub final_live_bytes: u64,
    /// Wall time of the run (not of optimization).
    pub elapsed: Duration,
}

/// Called as tasks finish; for tests and diagnostics.
pub trait TaskObserver: Send + Sync {
    /// `task` finished with a result of `nbytes`; its spent inputs have been released and
    /// `live_bytes` results are alive now.
    fn task_finished(&self, task: TaskId, key: &Key, nbytes: u64, live_bytes: u64);
}

/// Everything a run needs besides the plan.
#[derive(Clone, Default)]
pub struct ExecutionContext {
    /// Where progress goes.
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// Cancels the run from another thread.
    pub cancel: CancelToken,
    /// Sees every finished task.
    pub observer: Option<Arc<dyn TaskObserver>>,
}

impl std::fmt::Debug for ExecutionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionContext")
            .field("progress", &self.progress.is_some())
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

/// A flag shared between a run and whoever may want to stop it.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Ask the run to stop; it returns [`Error::Cancelled`] after the tasks already running.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Options for [`compute_with`].
#[derive(Clone, Debug, Default)]
pub struct ComputeOptions {
    /// Optimizer passes.
    pub optimize: OptimizeOptions,
    /// Progress, cancellation, observation.
    pub context: ExecutionContext,
}

/// Optimize `graph` for `outputs` and run it on `scheduler`, returning the output values.
pub fn compute(graph: Graph, outputs: &[Key], scheduler: &dyn Scheduler) -> Result<Vec<Value>> {
    compute_with(graph, outputs, scheduler, &ComputeOptions::default()).map(|e| e.values)
}

/// [`compute`] with options, returning the run's statistics too.
pub fn compute_with(
    graph: Graph,
    outputs: &[Key],
    scheduler: &dyn Scheduler,
    options: &ComputeOptions,
) -> Result<Execution> {
    let plan = ExecutionPlan::new(graph, outputs, options.optimize)?;
    scheduler.execute(&plan, &options.context)
}

/// Run one task's op, turning errors and panics into errors that name the task.
pub(crate) fn run_task(graph: &Graph, id: TaskId, inputs: &[Value]) -> Result<Value> {
    crate::op::execute_guarded(graph.key(id), graph.op(id).as_ref(), inputs)
}

/// Run `f` (scheduler bookkeeping that calls user code: `nbytes`, drops, observers), turning
/// a panic into an error naming the task it was about.
pub(crate) fn guard<T>(graph: &Graph, id: TaskId, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        Err(Error::Panic {
            key: graph.key(id).clone(),
            message: panic_message(&*payload),
        })
    })
}

/// The error for a task input that should have been computed but is not there (a bug).
pub(crate) fn missing_input(graph: &Graph, input: TaskId, task: TaskId) -> Error {
    Error::Internal(format!(
        "input {} of task {} is not available",
        graph.key(input),
        graph.key(task)
    ))
}

/// Live-result accounting shared by the schedulers.
///
/// Signed because the local scheduler publishes each worker's tally in batches: a release
/// by one worker can be published before the matching addition by another.
#[derive(Debug, Default)]
pub(crate) struct LiveBytes {
    live: AtomicI64,
    peak: AtomicU64,
}

impl LiveBytes {
    pub(crate) fn add(&self, n: u64) {
        let now = self.live.fetch_add(n as i64, Ordering::Relaxed) + n as i64;
        self.peak.fetch_max(now.max(0) as u64, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, n: u64) {
        self.live.fetch_sub(n as i64, Ordering::Relaxed);
    }

    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(0) as u64
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// How often to report progress: at most a thousand updates per run (plus the last),
/// whatever its size.
pub(crate) fn progress_step(total: usize) -> usize {
    total.div_ceil(1000).max(1)
}

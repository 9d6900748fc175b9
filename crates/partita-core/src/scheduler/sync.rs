//! The single-threaded scheduler: runs the plan's order exactly. Deterministic; the one to
//! use under a debugger.

use std::time::Instant;

use smallvec::SmallVec;

use super::{
    Execution, ExecutionContext, LiveBytes, RunStats, Scheduler, guard, missing_input,
    progress_step, run_task,
};
use crate::error::{Error, Result};
use crate::optimize::ExecutionPlan;
use crate::value::Value;

/// Runs every task on the calling thread, in [`ExecutionPlan::order`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncScheduler;

impl Scheduler for SyncScheduler {
    fn name(&self) -> &str {
        "sync"
    }

    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        let start = Instant::now();
        let graph = &plan.graph;
        let n = graph.len();
        let is_output = plan.output_mask();
        let mut uses_left: Vec<u32> = graph
            .ids()
            .map(|t| graph.dependents(t).len() as u32)
            .collect();
        let mut slots: Vec<Option<Value>> = vec![None; n];
        let live = LiveBytes::default();
        let step = progress_step(n);
        if let Some(p) = &ctx.progress {
            p.started(n);
        }
        let mut done = 0;
        let result = (|| {
            for &id in &plan.order {
                if ctx.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let nbytes = guard(graph, id, || {
                    let deps = graph.dependencies(id);
                    let inputs: SmallVec<[Value; 4]> = deps
                        .iter()
                        .map(|d| {
                            slots[d.index()]
                                .clone()
                                .ok_or_else(|| missing_input(graph, *d, id))
                        })
                        .collect::<Result<_>>()?;
                    let value = run_task(graph, id, &inputs)?;
                    drop(inputs);
                    let nbytes = value.nbytes() as u64;
                    live.add(nbytes);
                    slots[id.index()] = Some(value);
                    for d in deps {
                        let left = &mut uses_left[d.index()];
                        *left -= 1;
                        if *left == 0
                            && !is_output[d.index()]
                            && let Some(v) = slots[d.index()].take()
                        {
                            live.sub(v.nbytes() as u64);
                        }
                    }
                    if uses_left[id.index()] == 0 && !is_output[id.index()] {
                        slots[id.index()] = None;
                        live.sub(nbytes);
                    }
                    Ok(nbytes)
                })?;
                done += 1;
                if let Some(o) = &ctx.observer {
                    guard(graph, id, || {
                        o.task_finished(id, graph.key(id), nbytes, live.live());
                        Ok(())
                    })?;
                }
                if let Some(p) = &ctx.progress
                    && (done % step == 0 || done == n)
                {
                    guard(graph, id, || {
                        p.advanced(done, n);
                        Ok(())
                    })?;
                }
            }
            plan.outputs
                .iter()
                .map(|o| {
                    slots[o.index()].clone().ok_or_else(|| {
                        Error::Internal(format!("output {} was not computed", graph.key(*o)))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })();
        if let Some(p) = &ctx.progress {
            p.finished(done, n, result.is_ok());
        }
        let values = result?;
        Ok(Execution {
            values,
            stats: RunStats {
                tasks_run: done,
                peak_live_bytes: live.peak(),
                final_live_bytes: live.live(),
                elapsed: start.elapsed(),
            },
        })
    }
}

//! Graph optimization: cull, fuse, order.
//!
//! - **cull** keeps only the tasks the requested outputs need.
//! - **fuse** merges linear chains (a task whose only dependent has no other input) into one
//!   [`FusedChain`] task: one scheduling decision and no stored intermediate per chain. Output
//!   tasks are never fused into a successor, so output keys survive, nor are handles to
//!   values held elsewhere ([`Op::remote_handle`]).
//! - **order** gives every task a priority: a depth-first post-order from the outputs, so a
//!   branch is finished (and its inputs released) before new roots are started. Schedulers
//!   run the ready task with the smallest priority first.
//!
//! Every pass relies on, and keeps, the invariant that a task's dependencies have smaller ids.

use std::sync::Arc;

use crate::error::Result;
use crate::graph::{Graph, TaskId};
use crate::key::Key;
use crate::op::{FusedChain, Op};

/// Which passes to run.
#[derive(Clone, Copy, Debug)]
pub struct OptimizeOptions {
    /// Drop tasks the outputs do not need.
    pub cull: bool,
    /// Fuse linear chains.
    pub fuse: bool,
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        OptimizeOptions {
            cull: true,
            fuse: true,
        }
    }
}

/// A graph ready to run: optimized, with its outputs and a memory-friendly order.
#[derive(Clone, Debug)]
pub struct ExecutionPlan {
    /// The (optimized) graph.
    pub graph: Graph,
    /// The requested results, in request order (repeats allowed).
    pub outputs: Vec<TaskId>,
    /// Every task once, dependencies first, in the order a single thread should run them.
    pub order: Vec<TaskId>,
    /// `priority[task] = position of task in order`; lower runs first.
    pub priority: Vec<u32>,
}

impl ExecutionPlan {
    /// Optimize `graph` for computing `outputs`. Errors if an output key is not in the graph.
    pub fn new(graph: Graph, outputs: &[Key], options: OptimizeOptions) -> Result<ExecutionPlan> {
        let mut ids = graph.resolve(outputs)?;
        let mut graph = graph;
        if options.cull {
            graph = cull(graph, &mut ids);
        }
        if options.fuse {
            graph = fuse(graph, &mut ids);
        }
        let order = order(&graph, &ids);
        let mut priority = vec![0u32; graph.len()];
        for (pos, id) in order.iter().enumerate() {
            priority[id.index()] = pos as u32;
        }
        Ok(ExecutionPlan {
            graph,
            outputs: ids,
            order,
            priority,
        })
    }

    /// Keys of the outputs.
    pub fn output_keys(&self) -> Vec<Key> {
        self.outputs
            .iter()
            .map(|&id| self.graph.key(id).clone())
            .collect()
    }

    /// `is_output[task]` for every task.
    pub fn output_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.graph.len()];
        for id in &self.outputs {
            mask[id.index()] = true;
        }
        mask
    }
}

/// Keep only the tasks `outputs` need; `outputs` is rewritten to the new ids.
pub fn cull(graph: Graph, outputs: &mut [TaskId]) -> Graph {
    let n = graph.len();
    let mut needed = vec![false; n];
    for o in outputs.iter() {
        needed[o.index()] = true;
    }
    // Ids are topological, so one backwards sweep marks every ancestor.
    for id in graph.ids().rev() {
        if needed[id.index()] {
            for d in graph.dependencies(id) {
                needed[d.index()] = true;
            }
        }
    }
    let kept = needed.iter().filter(|&&b| b).count();
    if kept == n {
        return graph;
    }
    let mut new_id = vec![u32::MAX; n];
    let mut keys = Vec::with_capacity(kept);
    let mut ops = Vec::with_capacity(kept);
    let mut dep_start = Vec::with_capacity(kept + 1);
    let mut deps = Vec::new();
    dep_start.push(0);
    for id in graph.ids() {
        if !needed[id.index()] {
            continue;
        }
        new_id[id.index()] = keys.len() as u32;
        keys.push(graph.key(id).clone());
        ops.push(Arc::clone(graph.op(id)));
        deps.extend(graph.dependencies(id).iter().map(|d| new_id[d.index()]));
        dep_start.push(deps.len() as u32);
    }
    for o in outputs.iter_mut() {
        *o = TaskId(new_id[o.index()]);
    }
    Graph::from_topological_parts(keys, ops, dep_start, deps)
}

/// Fuse linear chains; `outputs` is rewritten to the new ids.
pub fn fuse(graph: Graph, outputs: &mut [TaskId]) -> Graph {
    let n = graph.len();
    let mut is_output = vec![false; n];
    for o in outputs.iter() {
        is_output[o.index()] = true;
    }
    // absorbed[t]: t's result goes only to a task whose only input is t, so t runs inside it.
    // A handle to a value held elsewhere stays a task of its own: the scheduler holding
    // the value must see it (`Op::remote_handle`).
    let absorbed: Vec<bool> = graph
        .ids()
        .map(|t| match graph.dependents(t) {
            [next] => {
                !is_output[t.index()]
                    && graph.dependencies(*next).len() == 1
                    && graph.op(t).remote_handle().is_none()
            }
            _ => false,
        })
        .collect();
    if !absorbed.iter().any(|&a| a) {
        return graph;
    }
    let kept = absorbed.iter().filter(|&&a| !a).count();
    let mut new_id = vec![u32::MAX; n];
    let mut keys = Vec::with_capacity(kept);
    let mut ops: Vec<Arc<dyn Op>> = Vec::with_capacity(kept);
    let mut dep_start = Vec::with_capacity(kept + 1);
    let mut deps = Vec::new();
    dep_start.push(0);
    let mut chain = Vec::new();
    for tail in graph.ids() {
        if absorbed[tail.index()] {
            continue;
        }
        // Walk back from the tail through absorbed single inputs to the chain's head.
        chain.clear();
        chain.push(tail);
        let mut head = tail;
        while let [prev] = graph.dependencies(head) {
            if !absorbed[prev.index()] {
                break;
            }
            head = *prev;
            chain.push(head);
        }
        new_id[tail.index()] = keys.len() as u32;
        keys.push(graph.key(tail).clone());
        if chain.len() == 1 {
            ops.push(Arc::clone(graph.op(tail)));
        } else {
            let steps = chain
                .iter()
                .rev()
                .map(|&t| (graph.key(t).clone(), Arc::clone(graph.op(t))))
                .collect();
            ops.push(Arc::new(FusedChain { steps }));
        }
        deps.extend(graph.dependencies(head).iter().map(|d| new_id[d.index()]));
        dep_start.push(deps.len() as u32);
    }
    for o in outputs.iter_mut() {
        *o = TaskId(new_id[o.index()]);
    }
    Graph::from_topological_parts(keys, ops, dep_start, deps)
}

/// Inputs read by more tasks than this are not scanned for ready siblings (keeps `order`
/// linear on graphs with wide fan-out).
const SIBLING_SCAN_LIMIT: usize = 64;

/// A memory-friendly execution order: depth-first post-order from the outputs (in request
/// order), dependencies in declaration order; and, each time a task is placed, any task
/// that reads its result or one of its inputs and now has every input available is placed
/// right away. So a value read by two tasks (block `(i, j)` of `x` in `x + x.T`) is used by
/// both and freed, instead of waiting for a far-away second reader. Tasks no output needs
/// come last, in id order.
pub fn order(graph: &Graph, outputs: &[TaskId]) -> Vec<TaskId> {
    let n = graph.len();
    let mut placed = vec![false; n];
    let mut unplaced_deps: Vec<u32> = graph
        .ids()
        .map(|t| graph.dependencies(t).len() as u32)
        .collect();
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<(TaskId, u32)> = Vec::new();
    let mut ready_siblings: Vec<TaskId> = Vec::new();

    let mut place =
        |t: TaskId, placed: &mut Vec<bool>, unplaced: &mut Vec<u32>, order: &mut Vec<TaskId>| {
            ready_siblings.push(t);
            while let Some(t) = ready_siblings.pop() {
                if placed[t.index()] || unplaced[t.index()] != 0 {
                    continue;
                }
                placed[t.index()] = true;
                order.push(t);
                let readers = graph.dependents(t);
                for c in readers {
                    unplaced[c.index()] -= 1;
                }
                // Readers of this result that can run now: running them next consumes it.
                if readers.len() <= SIBLING_SCAN_LIMIT {
                    for &c in readers.iter().rev() {
                        if !placed[c.index()] && unplaced[c.index()] == 0 {
                            ready_siblings.push(c);
                        }
                    }
                }
                for d in graph.dependencies(t) {
                    let readers = graph.dependents(*d);
                    if readers.len() <= SIBLING_SCAN_LIMIT {
                        for &c in readers.iter().rev() {
                            if !placed[c.index()] && unplaced[c.index()] == 0 {
                                ready_siblings.push(c);
                            }
                        }
                    }
                }
            }
        };

    let mut visit =
        |root: TaskId, placed: &mut Vec<bool>, unplaced: &mut Vec<u32>, order: &mut Vec<TaskId>| {
            if placed[root.index()] {
                return;
            }
            stack.push((root, 0));
            while let Some((task, next)) = stack.pop() {
                if placed[task.index()] {
                    continue;
                }
                let deps = graph.dependencies(task);
                if let Some(&dep) = deps.get(next as usize) {
                    stack.push((task, next + 1));
                    if !placed[dep.index()] {
                        stack.push((dep, 0));
                    }
                } else {
                    place(task, placed, unplaced, order);
                }
            }
        };
    for &o in outputs {
        visit(o, &mut placed, &mut unplaced_deps, &mut order);
    }
    for id in graph.ids() {
        visit(id, &mut placed, &mut unplaced_deps, &mut order);
    }
    order
}

//! Layers: the lazy, shareable graphs that collections and `delayed` build.
//!
//! Key decision: a collection does not own a flat graph. It owns an `Arc<Layer>`: the tasks
//! its last operation added plus `Arc`s to the layers those tasks read from (like Dask's
//! `HighLevelGraph`). Building `x + y` therefore costs one new layer, never a copy of `x`'s
//! and `y`'s tasks, and sub-graphs that several collections share stay shared. Only at
//! compute time is the layer DAG flattened, once, into a [`Graph`].

use std::sync::Arc;

use rustc_hash::FxHashSet;

use crate::error::{Error, Result};
use crate::graph::{Graph, GraphBuilder, Task};
use crate::key::Key;
use crate::op::Op;
use crate::optimize::ExecutionPlan;
use crate::scheduler::{ComputeOptions, RunStats, Scheduler, compute_with};
use crate::value::Value;

/// A named group of tasks plus the layers they depend on. Immutable once made.
#[derive(Debug)]
pub struct Layer {
    name: Arc<str>,
    tasks: Vec<Task>,
    dependencies: Vec<Arc<Layer>>,
}

impl Layer {
    /// A layer of `tasks` reading from `dependencies`.
    pub fn new(
        name: impl Into<Arc<str>>,
        tasks: Vec<Task>,
        dependencies: Vec<Arc<Layer>>,
    ) -> Arc<Layer> {
        Arc::new(Layer {
            name: name.into(),
            tasks,
            dependencies,
        })
    }

    /// The layer's name (diagnostics only).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tasks this layer adds.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// The layers this one reads from.
    pub fn dependencies(&self) -> &[Arc<Layer>] {
        &self.dependencies
    }

    /// Flatten the layers reachable from `roots` into one validated [`Graph`].
    ///
    /// Layers reached along several paths are added once; a key defined by two different
    /// layers is taken to be the same computation and kept once. A key defined twice within
    /// one layer is an error.
    pub fn materialize(roots: &[Arc<Layer>]) -> Result<Graph> {
        let order = layers_in_dependency_order(roots);
        let total: usize = order.iter().map(|l| l.tasks.len()).sum();
        let mut builder = GraphBuilder::with_capacity(total);
        for layer in order {
            let before = builder.len();
            for task in &layer.tasks {
                if builder.contains(&task.key) {
                    if builder
                        .id_of(&task.key)
                        .is_some_and(|id| id.index() >= before)
                    {
                        return Err(Error::DuplicateKey {
                            key: task.key.clone(),
                        });
                    }
                    continue;
                }
                builder.add_task(task.key.clone(), Arc::clone(&task.op), &task.deps);
            }
        }
        builder.build()
    }
}

impl Drop for Layer {
    /// Long chains of layers (a delayed value mapped 100,000 times) would overflow the stack
    /// if dropped recursively; unlink them iteratively instead.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.dependencies);
        while let Some(dep) = stack.pop() {
            if let Some(mut layer) = Arc::into_inner(dep) {
                stack.append(&mut layer.dependencies);
            }
        }
    }
}

/// Post-order over the layer DAG (dependencies first), each layer once, without recursion.
fn layers_in_dependency_order(roots: &[Arc<Layer>]) -> Vec<&Layer> {
    let mut seen: FxHashSet<*const Layer> = FxHashSet::default();
    let mut out = Vec::new();
    let mut stack: Vec<(&Layer, usize)> = Vec::new();
    for root in roots {
        if !seen.insert(Arc::as_ptr(root)) {
            continue;
        }
        stack.push((root, 0));
        while let Some((layer, next)) = stack.pop() {
            if let Some(dep) = layer.dependencies.get(next) {
                stack.push((layer, next + 1));
                if seen.insert(Arc::as_ptr(dep)) {
                    stack.push((dep, 0));
                }
            } else {
                out.push(layer);
            }
        }
    }
    out
}

/// A lazy result: anything backed by layers with known output keys (delayed values, arrays,
/// dataframes). Several collections computed together share their common sub-graphs.
pub trait Collection {
    /// The layer holding this collection's final tasks.
    fn layer(&self) -> &Arc<Layer>;
    /// The keys whose values make up the result (one per chunk or partition).
    fn output_keys(&self) -> Vec<Key>;
}

/// The graph of several collections and their output keys, all in order, with how many
/// each collection has.
fn collections_graph(collections: &[&dyn Collection]) -> Result<(Graph, Vec<Key>, Vec<usize>)> {
    let roots: Vec<Arc<Layer>> = collections.iter().map(|c| Arc::clone(c.layer())).collect();
    let graph = Layer::materialize(&roots)?;
    let mut all = Vec::new();
    let mut counts = Vec::with_capacity(collections.len());
    for c in collections {
        let keys = c.output_keys();
        counts.push(keys.len());
        all.extend(keys);
    }
    Ok((graph, all, counts))
}

/// `items`, one per output key of all the collections in order, cut back into one vector
/// per collection.
fn per_collection<T>(items: Vec<T>, counts: &[usize]) -> Vec<Vec<T>> {
    let mut items = items.into_iter();
    (counts.iter())
        .map(|n| items.by_ref().take(*n).collect())
        .collect()
}

/// Persist several collections in one run: per collection, one op per output key that
/// gives its value to later graphs ([`Scheduler::persist`]: the value itself on a local
/// scheduler, a handle to where it stays on a cluster).
pub fn persist_collections(
    collections: &[&dyn Collection],
    scheduler: &dyn Scheduler,
    options: &ComputeOptions,
) -> Result<Vec<Vec<Arc<dyn Op>>>> {
    let (graph, all, counts) = collections_graph(collections)?;
    let plan = ExecutionPlan::new(graph, &all, options.optimize)?;
    let ops = scheduler.persist(&plan, &options.context)?;
    if ops.len() != all.len() {
        return Err(Error::Internal(format!(
            "the {} scheduler persisted {} of {} outputs",
            scheduler.name(),
            ops.len(),
            all.len()
        )));
    }
    Ok(per_collection(ops, &counts))
}

/// Compute several collections in one run; returns each one's output values.
pub fn compute_collections(
    collections: &[&dyn Collection],
    scheduler: &dyn Scheduler,
    options: &ComputeOptions,
) -> Result<(Vec<Vec<Value>>, RunStats)> {
    let (graph, all, counts) = collections_graph(collections)?;
    let execution = compute_with(graph, &all, scheduler, options)?;
    Ok((per_collection(execution.values, &counts), execution.stats))
}

//! The flat task graph: dense integer ids and CSR adjacency.
//!
//! Key decisions:
//! - Tasks are `u32` ids and adjacency is two flat arrays per direction (offsets + targets),
//!   so a million-task graph is a handful of allocations and walking it is cache-friendly.
//!   Keys are kept beside for people and for naming results across processes.
//! - [`GraphBuilder::build`] validates (every dependency exists, no duplicate keys, no cycles)
//!   and renumbers tasks in a topological order: **in a built graph every task's dependencies
//!   have smaller ids.** Passes and schedulers rely on that.
//! - A dependency listed twice is two edges; inputs arrive in declaration order.

mod key_index;

use std::sync::{Arc, OnceLock};

use key_index::KeyIndex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::op::Op;

/// A task's dense id inside one [`Graph`] (or one [`GraphBuilder`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct TaskId(pub u32);

impl TaskId {
    /// The id as an index into per-task arrays.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A task described by keys: the unit of the lazy, layered graphs collections build.
#[derive(Clone, Debug)]
pub struct Task {
    /// The task's key.
    pub key: Key,
    /// What it runs.
    pub op: Arc<dyn Op>,
    /// Keys of its inputs, in the order `op` receives them.
    pub deps: Vec<Key>,
}

impl Task {
    /// A task from its parts.
    pub fn new(key: Key, op: Arc<dyn Op>, deps: Vec<Key>) -> Task {
        Task { key, op, deps }
    }
}

/// A validated, immutable task graph. See the module docs for its invariants.
#[derive(Clone)]
pub struct Graph {
    keys: Vec<Key>,
    ops: Vec<Arc<dyn Op>>,
    dep_start: Vec<u32>,
    deps: Vec<TaskId>,
    dependent_start: Vec<u32>,
    dependents: Vec<TaskId>,
    /// Key -> id. Built graphs inherit the builder's; graphs made by optimizer passes build
    /// it on first use, since schedulers never look keys up.
    index: OnceLock<KeyIndex>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("tasks", &self.len())
            .field("edges", &self.deps.len())
            .finish()
    }
}

impl Graph {
    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the graph has no tasks.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of dependency edges.
    pub fn edge_count(&self) -> usize {
        self.deps.len()
    }

    /// All task ids, dependencies before dependents.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = TaskId> + ExactSizeIterator + use<> {
        (0..self.keys.len() as u32).map(TaskId)
    }

    /// The key of a task.
    pub fn key(&self, id: TaskId) -> &Key {
        &self.keys[id.index()]
    }

    /// All keys, indexed by task id.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The op of a task.
    pub fn op(&self, id: TaskId) -> &Arc<dyn Op> {
        &self.ops[id.index()]
    }

    /// The tasks whose results `id` takes as inputs, in input order.
    pub fn dependencies(&self, id: TaskId) -> &[TaskId] {
        let i = id.index();
        &self.deps[self.dep_start[i] as usize..self.dep_start[i + 1] as usize]
    }

    /// The tasks that take `id`'s result as an input (one entry per edge).
    pub fn dependents(&self, id: TaskId) -> &[TaskId] {
        let i = id.index();
        &self.dependents[self.dependent_start[i] as usize..self.dependent_start[i + 1] as usize]
    }

    /// The id of a key, if it is in the graph.
    pub fn id_of(&self, key: &Key) -> Option<TaskId> {
        self.index
            .get_or_init(|| KeyIndex::build(&self.keys))
            .get(&self.keys, key)
            .map(TaskId)
    }

    /// Ids of keys, or an error naming the first key that is not in the graph.
    pub fn resolve(&self, keys: &[Key]) -> Result<Vec<TaskId>> {
        keys.iter()
            .map(|k| {
                self.id_of(k)
                    .ok_or_else(|| Error::KeyNotFound { key: k.clone() })
            })
            .collect()
    }

    /// Approximate heap bytes held by the graph's own structures (not by ops' data).
    pub fn structure_bytes(&self) -> usize {
        use std::mem::size_of;
        self.keys.capacity() * size_of::<Key>()
            + self.ops.capacity() * size_of::<Arc<dyn Op>>()
            + (self.dep_start.capacity() + self.dependent_start.capacity()) * 4
            + (self.deps.capacity() + self.dependents.capacity()) * 4
            + self
                .index
                .get()
                .map_or(0, |i| i.capacity() * (size_of::<u32>() + 1))
    }

    /// Encode the graph as MessagePack, ops as their `typetag` form.
    ///
    /// A task whose op cannot be serialized (a closure, say) gives an error naming that task.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() * 32);
        let header = WireHeader {
            version: WIRE_VERSION,
            tasks: self.len() as u64,
        };
        rmp_serde::encode::write(&mut out, &header)
            .map_err(|e| Error::Codec(format!("cannot encode graph header: {e}")))?;
        for id in self.ids() {
            let deps: Vec<u32> = self.dependencies(id).iter().map(|d| d.0).collect();
            let task = WireTaskRef {
                key: self.key(id),
                op: self.op(id),
                deps,
            };
            rmp_serde::encode::write(&mut out, &task)
                .map_err(|e| Error::Codec(format!("cannot encode task {}: {e}", self.key(id))))?;
        }
        Ok(out)
    }

    /// Decode what [`Graph::encode`] wrote, validating it like a freshly built graph.
    pub fn decode(bytes: &[u8]) -> Result<Graph> {
        let mut de = rmp_serde::Deserializer::new(bytes);
        let header = WireHeader::deserialize(&mut de)
            .map_err(|e| Error::Codec(format!("cannot decode graph header: {e}")))?;
        if header.version != WIRE_VERSION {
            return Err(Error::Codec(format!(
                "unsupported graph encoding version {} (this build reads {WIRE_VERSION})",
                header.version
            )));
        }
        let mut builder = GraphBuilder::with_capacity(header.tasks.min(1 << 16) as usize);
        let mut dep_ids = Vec::new();
        for i in 0..header.tasks {
            let task = WireTask::deserialize(&mut de)
                .map_err(|e| Error::Codec(format!("cannot decode task #{i} of graph: {e}")))?;
            dep_ids.clear();
            for d in task.deps {
                if u64::from(d) >= i {
                    return Err(Error::Codec(format!(
                        "task {} refers to task #{d}, which is not before it",
                        task.key
                    )));
                }
                dep_ids.push(TaskId(d));
            }
            builder.add_task_by_id(task.key, task.op, &dep_ids)?;
        }
        if !de.get_ref().is_empty() {
            return Err(Error::Codec(format!(
                "{} trailing bytes after the last task of the graph",
                de.get_ref().len()
            )));
        }
        builder.build()
    }
}

const WIRE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct WireHeader {
    version: u32,
    tasks: u64,
}

#[derive(Serialize)]
struct WireTaskRef<'a> {
    key: &'a Key,
    op: &'a Arc<dyn Op>,
    deps: Vec<u32>,
}

#[derive(Deserialize)]
struct WireTask {
    key: Key,
    op: Arc<dyn Op>,
    deps: Vec<u32>,
}

const UNRESOLVED: u32 = u32::MAX;

/// Builds a [`Graph`]; dependencies may be named before the task that produces them.
#[derive(Default)]
pub struct GraphBuilder {
    keys: Vec<Key>,
    ops: Vec<Arc<dyn Op>>,
    dep_start: Vec<u32>,
    deps: Vec<u32>,
    /// Positions in `deps` naming keys not yet added when their dependent was.
    pending: Vec<(u32, Key)>,
    index: KeyIndex,
    duplicate: Option<Key>,
    error: Option<Error>,
}

impl std::fmt::Debug for GraphBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphBuilder")
            .field("tasks", &self.keys.len())
            .finish()
    }
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> GraphBuilder {
        GraphBuilder::with_capacity(0)
    }

    /// An empty builder with room for `tasks` tasks.
    pub fn with_capacity(tasks: usize) -> GraphBuilder {
        let mut dep_start = Vec::with_capacity(tasks + 1);
        dep_start.push(0);
        GraphBuilder {
            keys: Vec::with_capacity(tasks),
            ops: Vec::with_capacity(tasks),
            dep_start,
            deps: Vec::with_capacity(tasks),
            index: KeyIndex::with_capacity(tasks),
            ..Default::default()
        }
    }

    /// Number of tasks added.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no task has been added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a task with this key has been added.
    pub fn contains(&self, key: &Key) -> bool {
        self.index.get(&self.keys, key).is_some()
    }

    /// The builder id of a key added earlier.
    pub fn id_of(&self, key: &Key) -> Option<TaskId> {
        self.index.get(&self.keys, key).map(TaskId)
    }

    fn push(&mut self, key: Key) -> Option<u32> {
        let id = self.keys.len() as u32;
        if id == UNRESOLVED {
            self.error
                .get_or_insert(Error::Graph("graph exceeds 2^32 - 1 tasks".into()));
            return None;
        }
        self.keys.push(key);
        if !self.index.insert(&self.keys, id) {
            let key = self.keys.pop().expect("just pushed");
            self.duplicate.get_or_insert(key);
            return None;
        }
        Some(id)
    }

    /// Add a task whose inputs are the results of `deps`, named by key.
    ///
    /// A duplicate key or a dependency nobody produces is reported by [`GraphBuilder::build`].
    pub fn add_task(&mut self, key: Key, op: Arc<dyn Op>, deps: &[Key]) -> TaskId {
        if !self.room_for_edges(deps.len()) {
            return TaskId(UNRESOLVED);
        }
        let Some(id) = self.push(key) else {
            return TaskId(UNRESOLVED);
        };
        self.ops.push(op);
        for dep in deps {
            match self.index.get(&self.keys, dep) {
                Some(d) => self.deps.push(d),
                None => {
                    self.pending.push((self.deps.len() as u32, dep.clone()));
                    self.deps.push(UNRESOLVED);
                }
            }
        }
        self.dep_start.push(self.deps.len() as u32);
        TaskId(id)
    }

    /// Add a task whose inputs are tasks already added, by their builder ids (the fast path).
    pub fn add_task_by_id(&mut self, key: Key, op: Arc<dyn Op>, deps: &[TaskId]) -> Result<TaskId> {
        if let Some(bad) = deps.iter().find(|d| d.index() >= self.keys.len()) {
            return Err(Error::Graph(format!(
                "task {key} depends on task id {} which has not been added",
                bad.0
            )));
        }
        if self.contains(&key) {
            // Reported here, and not again by `build`: the caller knows.
            return Err(Error::DuplicateKey { key });
        }
        if !self.room_for_edges(deps.len()) {
            return Err(self
                .error
                .take()
                .unwrap_or_else(|| Error::Graph("too many edges".into())));
        }
        let Some(id) = self.push(key) else {
            return Err(self
                .error
                .take()
                .unwrap_or_else(|| Error::Graph("too many tasks".into())));
        };
        self.ops.push(op);
        self.deps.extend(deps.iter().map(|d| d.0));
        self.dep_start.push(self.deps.len() as u32);
        Ok(TaskId(id))
    }

    /// Add a [`Task`] unless its key is already present (same key, same computation, as in
    /// Dask: merging graphs that share a sub-graph keeps one copy).
    pub fn add_task_if_absent(&mut self, task: &Task) {
        if !self.contains(&task.key) {
            self.add_task(task.key.clone(), Arc::clone(&task.op), &task.deps);
        }
    }

    /// Edge offsets are `u32`; refuse (recording an error for `build`) past that.
    fn room_for_edges(&mut self, more: usize) -> bool {
        if self.deps.len() + more >= u32::MAX as usize {
            self.error.get_or_insert(Error::Graph(
                "graph exceeds 2^32 - 1 dependency edges".into(),
            ));
            return false;
        }
        true
    }

    fn owner_of_edge(&self, edge: u32) -> usize {
        // dep_start is sorted; the owner is the last task whose range starts at or before edge.
        self.dep_start.partition_point(|&s| s <= edge) - 1
    }

    /// Validate and freeze. Errors name the offending key: a duplicate, a missing dependency
    /// (with the task that needs it), or a task on a cycle (with the whole cycle).
    pub fn build(mut self) -> Result<Graph> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(key) = self.duplicate.take() {
            return Err(Error::DuplicateKey { key });
        }
        for (pos, key) in std::mem::take(&mut self.pending) {
            match self.index.get(&self.keys, &key) {
                Some(d) => self.deps[pos as usize] = d,
                None => {
                    let owner = self.owner_of_edge(pos);
                    return Err(Error::MissingDependency {
                        key: self.keys[owner].clone(),
                        missing: key,
                    });
                }
            }
        }
        let n = self.keys.len();
        let (dependent_start, dependents) = invert(n, &self.dep_start, &self.deps);
        let order = self.topological_order(&dependent_start, &dependents)?;
        Ok(self.renumber(&order))
    }

    /// Kahn's algorithm over the builder's ids; on a cycle, find and report one.
    fn topological_order(&self, dependent_start: &[u32], dependents: &[u32]) -> Result<Vec<u32>> {
        let n = self.keys.len();
        let mut missing: Vec<u32> = (0..n)
            .map(|i| self.dep_start[i + 1] - self.dep_start[i])
            .collect();
        let mut order: Vec<u32> = (0..n as u32)
            .filter(|&i| missing[i as usize] == 0)
            .collect();
        order.reserve(n - order.len());
        let mut head = 0;
        while head < order.len() {
            let t = order[head] as usize;
            head += 1;
            for &d in &dependents[dependent_start[t] as usize..dependent_start[t + 1] as usize] {
                let m = &mut missing[d as usize];
                *m -= 1;
                if *m == 0 {
                    order.push(d);
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Every unfinished task has an unfinished dependency: follow those until one repeats.
        let mut seen_at = vec![u32::MAX; n];
        let mut path = Vec::new();
        let mut t = (0..n)
            .find(|&i| missing[i] > 0)
            .expect("some task is unfinished");
        while seen_at[t] == u32::MAX {
            seen_at[t] = path.len() as u32;
            path.push(t);
            t = self.deps[self.dep_start[t] as usize..self.dep_start[t + 1] as usize]
                .iter()
                .map(|&d| d as usize)
                .find(|&d| missing[d] > 0)
                .expect("an unfinished task has an unfinished dependency");
        }
        let mut cycle: Vec<Key> = path[seen_at[t] as usize..]
            .iter()
            .map(|&i| self.keys[i].clone())
            .collect();
        cycle.push(self.keys[t].clone());
        Err(Error::Cycle {
            key: self.keys[t].clone(),
            cycle,
        })
    }

    fn renumber(self, order: &[u32]) -> Graph {
        let n = order.len();
        let mut new_id = vec![0u32; n];
        for (new, &old) in order.iter().enumerate() {
            new_id[old as usize] = new as u32;
        }
        let mut keys_old: Vec<Option<Key>> = self.keys.into_iter().map(Some).collect();
        let mut ops_old: Vec<Option<Arc<dyn Op>>> = self.ops.into_iter().map(Some).collect();
        let mut keys = Vec::with_capacity(n);
        let mut ops = Vec::with_capacity(n);
        let mut dep_start = Vec::with_capacity(n + 1);
        let mut deps = Vec::with_capacity(self.deps.len());
        dep_start.push(0u32);
        for &old in order {
            let old = old as usize;
            keys.push(keys_old[old].take().expect("each task once"));
            ops.push(ops_old[old].take().expect("each task once"));
            let range = self.dep_start[old] as usize..self.dep_start[old + 1] as usize;
            deps.extend(self.deps[range].iter().map(|&d| new_id[d as usize]));
            dep_start.push(deps.len() as u32);
        }
        let mut index = self.index;
        index.remap(&new_id);
        let graph = Graph::from_topological_parts(keys, ops, dep_start, deps);
        // The builder's index is already here; reuse it rather than rehash every key.
        let _ = graph.index.set(index);
        graph
    }
}

/// Reverse a CSR adjacency (counting sort), keeping edges ordered by source id.
fn invert(n: usize, start: &[u32], targets: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut counts = vec![0u32; n + 1];
    for &t in targets {
        counts[t as usize + 1] += 1;
    }
    for i in 0..n {
        counts[i + 1] += counts[i];
    }
    let rev_start = counts.clone();
    let mut fill = counts;
    let mut rev = vec![0u32; targets.len()];
    for src in 0..n {
        for &t in &targets[start[src] as usize..start[src + 1] as usize] {
            let slot = &mut fill[t as usize];
            rev[*slot as usize] = src as u32;
            *slot += 1;
        }
    }
    (rev_start, rev)
}

impl Graph {
    /// A graph from parts already in topological order (every dependency id smaller than its
    /// dependent's); the optimizer's passes keep that order, so they skip re-validation.
    pub(crate) fn from_topological_parts(
        keys: Vec<Key>,
        ops: Vec<Arc<dyn Op>>,
        dep_start: Vec<u32>,
        deps: Vec<u32>,
    ) -> Graph {
        debug_assert!((0..keys.len()).all(|i| {
            deps[dep_start[i] as usize..dep_start[i + 1] as usize]
                .iter()
                .all(|&d| (d as usize) < i)
        }));
        let n = keys.len();
        let (dependent_start, dependents) = invert(n, &dep_start, &deps);
        Graph {
            keys,
            ops,
            dep_start,
            deps: deps.into_iter().map(TaskId).collect(),
            dependent_start,
            dependents: dependents.into_iter().map(TaskId).collect(),
            index: OnceLock::new(),
        }
    }
}

//! The partitioned, lazy [`DataFrame`].

use std::fmt;
use std::sync::{Arc, OnceLock};

use partita_core::op::{Identity, expect_inputs};
use partita_core::{
    Collection, ComputeOptions, Delayed, Error, FnOp, Key, Layer, Literal, Op, Result, Scheduler,
    Task, Value, compute_collections, persist_collections,
};
use polars::prelude::{
    DataFrame as PlFrame, DataType, Expr, PolarsResult, Schema, SchemaRef, col, len,
};
use serde::{Deserialize, Serialize};

use crate::io::Scan;
use crate::partition::Partition;
use crate::partitioning::Partitioning;
use crate::plan::{PartitionPlan, Step, output_schema};
use crate::polars_error::from_polars;

/// The most partitions a frame, a shuffle or a group-by's `split_out` may ask for: more is
/// certainly a mistake, and would exhaust memory on bookkeeping before any data moved.
pub const MAX_PARTITIONS: usize = 1 << 20;

/// Error unless `1 <= n <= MAX_PARTITIONS`.
pub(crate) fn check_partitions(n: usize, what: &str) -> Result<()> {
    if n == 0 || n > MAX_PARTITIONS {
        return Err(Error::Shape(format!(
            "{what} must be between 1 and {MAX_PARTITIONS} partitions, got {n}"
        )));
    }
    Ok(())
}

/// A lazy dataframe split into partitions, each a polars `DataFrame` when computed.
///
/// The schema of the result is known without computing (like Dask's `meta`), so a missing
/// column or a type error shows when an operation is written. Per-partition operations
/// (`select`, `filter`, `with_columns`, ...) fuse into one polars plan per partition; see
/// [`crate::plan`].
#[derive(Clone)]
pub struct DataFrame(Arc<Inner>);

struct Inner {
    /// Key name of this frame's partitions when it adds tasks of its own.
    name: Arc<str>,
    input: Input,
    /// Pending per-partition steps, applied to the input.
    steps: Arc<[Step]>,
    schema: SchemaRef,
    /// Which rows share a partition, when known (see [`crate::partitioning`]).
    partitioning: Partitioning,
    layer: OnceLock<Arc<Layer>>,
}

#[derive(Clone)]
enum Input {
    /// Partition `i` is read by `scans[i]`.
    Scans(Arc<[Scan]>),
    /// Partition `i` is the value of `(name, i)` in `layer`.
    Tasks {
        name: Arc<str>,
        layer: Arc<Layer>,
        npartitions: usize,
    },
}

impl fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DataFrame({} partitions, {} pending steps, schema {:?})",
            self.npartitions(),
            self.0.steps.len(),
            self.0.schema
        )
    }
}

impl DataFrame {
    fn new(name: Arc<str>, input: Input, steps: Arc<[Step]>, schema: SchemaRef) -> DataFrame {
        DataFrame(Arc::new(Inner {
            name,
            input,
            steps,
            schema,
            partitioning: Partitioning::Unknown,
            layer: OnceLock::new(),
        }))
    }

    /// How rows are distributed over partitions, when known: after a shuffle or a sort, and
    /// kept by per-partition steps that leave the key columns alone.
    pub fn partitioning(&self) -> &Partitioning {
        &self.0.partitioning
    }

    /// This frame, declared partitioned as `partitioning`: the caller guarantees it (a
    /// frame rebuilt from the partitions of one that was so partitioned). A wrong claim
    /// makes later group-bys and joins skip a shuffle they need.
    pub fn with_partitioning(&self, partitioning: Partitioning) -> DataFrame {
        DataFrame(Arc::new(Inner {
            name: Arc::clone(&self.0.name),
            input: self.0.input.clone(),
            steps: Arc::clone(&self.0.steps),
            schema: Arc::clone(&self.0.schema),
            partitioning,
            layer: OnceLock::new(),
        }))
    }

    /// A frame whose partition `i` is the value of `(name, i)` in `layer`, with the given
    /// schema (which the tasks must produce).
    pub fn from_layer(
        name: Arc<str>,
        layer: Arc<Layer>,
        npartitions: usize,
        schema: SchemaRef,
    ) -> Result<DataFrame> {
        if npartitions == 0 {
            return Err(Error::Shape(
                "a dataframe needs at least one partition".into(),
            ));
        }
        Ok(DataFrame::new(
            Arc::clone(&name),
            Input::Tasks {
                name,
                layer,
                npartitions,
            },
            Arc::from([]),
            schema,
        ))
    }

    pub(crate) fn from_scans(scans: Vec<Scan>, schema: SchemaRef) -> Result<DataFrame> {
        if scans.is_empty() {
            return Err(Error::Shape(
                "a dataframe needs at least one partition".into(),
            ));
        }
        Ok(DataFrame::new(
            Key::unique_name("read"),
            Input::Scans(scans.into()),
            Arc::from([]),
            schema,
        ))
    }

    /// Split an in-memory polars frame into `npartitions` partitions of consecutive rows
    /// (as equal as possible; some are empty when there are more partitions than rows).
    pub fn from_polars(frame: PlFrame, npartitions: usize) -> Result<DataFrame> {
        check_partitions(npartitions, "from_polars npartitions")?;
        let rows = frame.height();
        let parts = (0..npartitions)
            .map(|i| {
                let start = rows * i / npartitions;
                let end = rows * (i + 1) / npartitions;
                frame.slice(start as i64, end - start)
            })
            .collect();
        DataFrame::from_partitions(parts)
    }

    /// A frame of the given partitions, in order. They must have the same schema.
    pub fn from_partitions(parts: Vec<PlFrame>) -> Result<DataFrame> {
        let first = parts
            .first()
            .ok_or_else(|| Error::Shape("a dataframe needs at least one partition".into()))?;
        let schema = Arc::clone(first.schema());
        for (i, p) in parts.iter().enumerate() {
            if p.schema() != &schema {
                return Err(Error::Schema(format!(
                    "partition {i} does not have the schema of partition 0: {}",
                    crate::io::describe_difference(&schema, p.schema())
                )));
            }
        }
        let ops = (parts.into_iter())
            .map(|p| Arc::new(Literal(Partition::value(p))) as Arc<dyn Op>)
            .collect();
        DataFrame::from_ops("from-polars", ops, schema)
    }

    /// A frame whose partitions are `ops` without inputs, in order: values at hand, or
    /// handles to them where a cluster keeps them (`persist`, a published dataset). Each
    /// op must produce a partition with `schema`.
    pub fn from_ops(name: &str, ops: Vec<Arc<dyn Op>>, schema: SchemaRef) -> Result<DataFrame> {
        let name = Key::unique_name(name);
        let n = ops.len();
        let tasks = (ops.into_iter().enumerate())
            .map(|(i, op)| Task::new(partition_key(&name, i), op, vec![]))
            .collect();
        let layer = Layer::new(Arc::clone(&name), tasks, vec![]);
        DataFrame::from_layer(name, layer, n, schema)
    }

    /// The schema of the result.
    pub fn schema(&self) -> &SchemaRef {
        &self.0.schema
    }

    /// The column names of the result.
    pub fn columns(&self) -> Vec<String> {
        self.0.schema.iter_names().map(|n| n.to_string()).collect()
    }

    /// How many partitions the frame has.
    pub fn npartitions(&self) -> usize {
        match &self.0.input {
            Input::Scans(scans) => scans.len(),
            Input::Tasks { npartitions, .. } => *npartitions,
        }
    }

    /// The key of partition `i`.
    pub fn partition_key(&self, i: usize) -> Key {
        match &self.0.input {
            Input::Tasks { name, .. } if self.0.steps.is_empty() => partition_key(name, i),
            _ => partition_key(&self.0.name, i),
        }
    }

    /// Whether reading partition 0 costs no more than reading its own data: a file scan,
    /// or in-memory partitions (a layer with no inputs). Partitions persisted on a cluster
    /// are not: reading one here would fetch all of it from a worker (80 MB for an H2O
    /// file) to look at a sample.
    pub(crate) fn first_partition_is_cheap(&self) -> bool {
        match &self.0.input {
            Input::Scans(_) => true,
            Input::Tasks { name, layer, .. } => {
                let first = partition_key(name, 0);
                layer.dependencies().is_empty()
                    && !(layer.tasks().iter())
                        .any(|t| t.key == first && t.op.remote_handle().is_some())
            }
        }
    }

    /// What a sample of the first partition's `keys` reads, as text, when that partition
    /// is read from a file: the scan, the file's size and modification time, a hash of
    /// the pending steps' encoding (not their `Debug` text, which leaves out literal
    /// series and function arguments) and the keys. `None` for other inputs, a file that
    /// cannot be examined or steps that cannot be encoded.
    pub(crate) fn sample_identity(&self, keys: &[String]) -> Option<String> {
        use std::hash::{Hash, Hasher};
        let Input::Scans(scans) = &self.0.input else {
            return None;
        };
        let first = scans.first()?;
        let meta = std::fs::metadata(first.path()).ok()?;
        let steps = rmp_serde::to_vec(&*self.0.steps).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        steps.hash(&mut hasher);
        Some(format!(
            "{first:?} {} {:?} {}:{:x} {keys:?}",
            meta.len(),
            meta.modified().ok()?,
            steps.len(),
            hasher.finish()
        ))
    }

    /// A frame with one more pending per-partition step.
    pub(crate) fn with_step(&self, step: Step, doing: &str) -> Result<DataFrame> {
        let schema = output_schema(&self.0.schema, std::slice::from_ref(&step), doing)?;
        let partitioning = self.0.partitioning.after_step(&step, &self.0.schema);
        let mut steps = self.0.steps.to_vec();
        steps.push(step);
        Ok(DataFrame::new(
            Key::unique_name("frame"),
            self.0.input.clone(),
            steps.into(),
            schema,
        )
        .with_partitioning(partitioning))
    }

    /// Select (and compute) columns with polars expressions, per partition.
    pub fn select(&self, exprs: impl AsRef<[Expr]>) -> Result<DataFrame> {
        self.with_step(Step::Select(exprs.as_ref().to_vec()), "select")
    }

    /// Only these columns, in this order.
    pub fn select_columns(&self, names: &[impl AsRef<str>]) -> Result<DataFrame> {
        self.select(names.iter().map(|n| col(n.as_ref())).collect::<Vec<_>>())
    }

    /// Add or replace columns, per partition.
    pub fn with_columns(&self, exprs: impl AsRef<[Expr]>) -> Result<DataFrame> {
        self.with_step(Step::WithColumns(exprs.as_ref().to_vec()), "with_columns")
    }

    /// Add or replace one column.
    pub fn with_column(&self, expr: Expr) -> Result<DataFrame> {
        self.with_columns([expr])
    }

    /// Keep the rows where `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<DataFrame> {
        self.with_step(Step::Filter(predicate), "filter")
    }

    /// Drop columns; each must exist.
    pub fn drop(&self, names: &[impl AsRef<str>]) -> Result<DataFrame> {
        self.with_step(Step::Drop(strings(names)), "drop")
    }

    /// Rename `existing[i]` to `new[i]`; each must exist.
    pub fn rename(
        &self,
        existing: &[impl AsRef<str>],
        new: &[impl AsRef<str>],
    ) -> Result<DataFrame> {
        if existing.len() != new.len() {
            return Err(Error::Shape(format!(
                "rename got {} existing names and {} new ones",
                existing.len(),
                new.len()
            )));
        }
        self.with_step(
            Step::Rename {
                existing: strings(existing),
                new: strings(new),
            },
            "rename",
        )
    }

    /// Cast columns to dtypes; a value that does not fit is an error when computed.
    pub fn cast(&self, columns: &[(&str, DataType)]) -> Result<DataFrame> {
        for (name, _) in columns {
            if self.0.schema.get(name).is_none() {
                return Err(Error::Schema(format!(
                    "cast: column {name:?} not found; the columns are {:?}",
                    self.columns()
                )));
            }
        }
        let columns = columns
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        self.with_step(Step::Cast(columns), "cast")
    }

    /// Replace nulls with `value` (an expression, e.g. `lit(0)`).
    pub fn fill_null(&self, value: Expr) -> Result<DataFrame> {
        self.with_step(Step::FillNull(value), "fill_null")
    }

    /// Drop rows holding a null in any of `subset` (any column when `None`).
    pub fn drop_nulls(&self, subset: Option<&[&str]>) -> Result<DataFrame> {
        self.with_step(Step::DropNulls(subset.map(strings)), "drop_nulls")
    }

    /// One row per element of these list columns.
    pub fn explode(&self, names: &[impl AsRef<str>]) -> Result<DataFrame> {
        self.with_step(Step::Explode(strings(names)), "explode")
    }

    /// Apply `f` to every partition. The result's schema is found by calling `f` on an
    /// empty frame with this frame's schema; use [`DataFrame::map_partitions_with_schema`]
    /// when `f` cannot handle an empty frame.
    ///
    /// `f` is a Rust closure, so the result computes only in this process.
    pub fn map_partitions(
        &self,
        name: &str,
        f: impl Fn(PlFrame) -> PolarsResult<PlFrame> + Send + Sync + 'static,
    ) -> Result<DataFrame> {
        let empty = PlFrame::empty_with_arc_schema(Arc::clone(&self.0.schema));
        let schema = f(empty).map_err(|e| {
            from_polars(
                e,
                &format!(
                    "map_partitions {name:?} failed on an empty frame (to find its schema); \
                     pass the schema with map_partitions_with_schema"
                ),
            )
        })?;
        self.map_partitions_with_schema(name, Arc::clone(schema.schema()), f)
    }

    /// [`DataFrame::map_partitions`] with the result's schema given; a partition that comes
    /// out with another schema is an error naming it.
    pub fn map_partitions_with_schema(
        &self,
        name: &str,
        schema: SchemaRef,
        f: impl Fn(PlFrame) -> PolarsResult<PlFrame> + Send + Sync + 'static,
    ) -> Result<DataFrame> {
        let f = Arc::new(f);
        let expected = Arc::clone(&schema);
        let label: Arc<str> = Arc::from(name);
        let op = FnOp::new(name, move |inputs: &[Value]| {
            expect_inputs(&label, inputs, 1)?;
            let frame = Partition::from_value(&inputs[0])?.clone();
            let out = f(frame).map_err(|e| from_polars(e, &format!("map_partitions {label:?}")))?;
            check_schema(&out, &expected, &label)?;
            Ok(Partition::value(out))
        });
        Ok(self.map_tasks(name, Arc::new(op), schema))
    }

    /// A frame of one task per partition running `op` on it: `op` gets the partition and
    /// must return a partition of `schema` (checked: another schema is an error naming the
    /// partition). Unlike [`DataFrame::map_partitions`], a serializable op runs on a
    /// cluster too (the Python bindings' functions do).
    pub fn map_partitions_op(&self, name: &str, op: Arc<dyn Op>, schema: SchemaRef) -> DataFrame {
        let checked = CheckedPartition {
            name: name.to_string(),
            op,
            schema: Arc::clone(&schema),
        };
        self.map_tasks(name, Arc::new(checked), schema)
    }

    /// A frame of one task per partition running `op` on that partition.
    pub(crate) fn map_tasks(&self, name: &str, op: Arc<dyn Op>, schema: SchemaRef) -> DataFrame {
        let key_name = Key::unique_name(name);
        let tasks = (0..self.npartitions())
            .map(|i| {
                Task::new(
                    partition_key(&key_name, i),
                    Arc::clone(&op),
                    vec![self.partition_key(i)],
                )
            })
            .collect();
        let layer = Layer::new(Arc::clone(&key_name), tasks, vec![Arc::clone(self.layer())]);
        DataFrame::new(
            Arc::clone(&key_name),
            Input::Tasks {
                name: key_name,
                layer,
                npartitions: self.npartitions(),
            },
            Arc::from([]),
            schema,
        )
    }

    /// Compute and return the whole frame, partitions concatenated in order.
    pub fn compute(&self, scheduler: &dyn Scheduler) -> Result<PlFrame> {
        self.compute_with(scheduler, &ComputeOptions::default())
    }

    /// [`DataFrame::compute`] with options (progress, cancellation).
    pub fn compute_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<PlFrame> {
        let parts = self.compute_partitions_with(scheduler, options)?;
        concat_frames(parts, &self.0.schema)
    }

    /// Compute and return each partition.
    pub fn compute_partitions(&self, scheduler: &dyn Scheduler) -> Result<Vec<PlFrame>> {
        self.compute_partitions_with(scheduler, &ComputeOptions::default())
    }

    fn compute_partitions_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Vec<PlFrame>> {
        let (mut values, _) = compute_collections(&[self], scheduler, options)?;
        self.partitions_from_values(&values.pop().unwrap_or_default())
    }

    /// This frame's computed partition values (in [`Collection::output_keys`] order, as
    /// [`compute_collections`] returns them) concatenated into one polars frame; used when
    /// several collections are computed in one run.
    pub fn frame_from_values(&self, values: &[Value]) -> Result<PlFrame> {
        concat_frames(self.partitions_from_values(values)?, &self.0.schema)
    }

    fn partitions_from_values(&self, values: &[Value]) -> Result<Vec<PlFrame>> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let frame = Partition::from_value(v)?.clone();
                check_schema(&frame, &self.0.schema, &format!("partition {i}"))?;
                Ok(frame)
            })
            .collect()
    }

    /// Compute the partitions now and return a frame backed by them (Dask's `persist`):
    /// later graphs start from these partitions. On a cluster client they stay on the
    /// workers (while this frame or a graph built from it lives); on a local scheduler
    /// they are held here. Schema and partitioning are kept.
    pub fn persist(&self, scheduler: &dyn Scheduler) -> Result<DataFrame> {
        self.persist_with(scheduler, &ComputeOptions::default())
    }

    /// [`DataFrame::persist`] with progress reporting and cancellation.
    pub fn persist_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<DataFrame> {
        let mut ops = persist_collections(&[self], scheduler, options)?;
        let ops = ops.pop().unwrap_or_default();
        let frame = DataFrame::from_ops("persist", ops, Arc::clone(self.schema()))?;
        Ok(frame.with_partitioning(self.partitioning().clone()))
    }

    /// The number of rows, lazily (per partition a `len()` that parquet answers from
    /// metadata, then one sum).
    pub fn len(&self) -> Result<Delayed<u64>> {
        let counted = self.select([len()])?;
        let key = Key::named(Key::unique_name("len"));
        let keys = counted.output_keys();
        let layer = Layer::new(
            key.name_arc().clone(),
            vec![Task::new(key.clone(), Arc::new(SumLengths), keys)],
            vec![Arc::clone(counted.layer())],
        );
        Ok(Delayed::from_layer(layer, key))
    }

    /// The first `n` rows, computed now: partitions are computed in order, one and then
    /// twice as many at a time, until `n` rows are found (usually just the first).
    pub fn head(&self, n: usize, scheduler: &dyn Scheduler) -> Result<PlFrame> {
        self.ends(n, scheduler, false)
    }

    /// The last `n` rows, computed now, from the last partition backwards.
    pub fn tail(&self, n: usize, scheduler: &dyn Scheduler) -> Result<PlFrame> {
        self.ends(n, scheduler, true)
    }

    fn ends(&self, n: usize, scheduler: &dyn Scheduler, from_end: bool) -> Result<PlFrame> {
        let np = self.npartitions();
        let sliced = self.with_step(
            Step::Slice {
                offset: if from_end { -(n as i64) } else { 0 },
                len: n as u64,
            },
            if from_end { "tail" } else { "head" },
        )?;
        let mut found: Vec<PlFrame> = Vec::new();
        let mut rows = 0;
        let (mut done, mut batch) = (0, 1);
        while rows < n && done < np {
            let take = batch.min(np - done);
            let indices: Vec<usize> = if from_end {
                (np - done - take..np - done).rev().collect()
            } else {
                (done..done + take).collect()
            };
            let keys: Vec<Key> = indices.iter().map(|&i| sliced.partition_key(i)).collect();
            let graph = Layer::materialize(&[Arc::clone(sliced.layer())])?;
            for v in partita_core::compute(graph, &keys, scheduler)? {
                let frame = Partition::from_value(&v)?.clone();
                rows += frame.height();
                found.push(frame);
            }
            done += take;
            batch *= 2;
        }
        if from_end {
            found.reverse();
        }
        let all = concat_frames(found, &self.0.schema)?;
        Ok(if from_end {
            all.tail(Some(n))
        } else {
            all.head(Some(n))
        })
    }

    /// Stack frames with the same schema: the partitions of the first, then the second, ...
    pub fn concat(frames: &[DataFrame]) -> Result<DataFrame> {
        let first = frames
            .first()
            .ok_or_else(|| Error::Shape("concat needs at least one frame".into()))?;
        for (i, f) in frames.iter().enumerate().skip(1) {
            if f.schema() != first.schema() {
                return Err(Error::Schema(format!(
                    "concat: frame {i} does not have the schema of frame 0: {}",
                    crate::io::describe_difference(first.schema(), f.schema())
                )));
            }
        }
        let name = Key::unique_name("concat");
        let mut tasks = Vec::new();
        for f in frames {
            for i in 0..f.npartitions() {
                tasks.push(Task::new(
                    partition_key(&name, tasks.len()),
                    Arc::new(Identity),
                    vec![f.partition_key(i)],
                ));
            }
        }
        let n = tasks.len();
        let deps = frames.iter().map(|f| Arc::clone(f.layer())).collect();
        let layer = Layer::new(Arc::clone(&name), tasks, deps);
        DataFrame::from_layer(name, layer, n, Arc::clone(first.schema()))
    }
}

impl Collection for DataFrame {
    fn layer(&self) -> &Arc<Layer> {
        self.0.layer.get_or_init(|| match &self.0.input {
            Input::Tasks { layer, .. } if self.0.steps.is_empty() => Arc::clone(layer),
            Input::Tasks {
                name,
                layer,
                npartitions,
            } => {
                let tasks = (0..*npartitions)
                    .map(|i| {
                        let plan = PartitionPlan {
                            scan: None,
                            steps: Arc::clone(&self.0.steps),
                        };
                        Task::new(
                            partition_key(&self.0.name, i),
                            Arc::new(plan),
                            vec![partition_key(name, i)],
                        )
                    })
                    .collect();
                Layer::new(Arc::clone(&self.0.name), tasks, vec![Arc::clone(layer)])
            }
            Input::Scans(scans) => {
                let tasks = scans
                    .iter()
                    .enumerate()
                    .map(|(i, scan)| {
                        let plan = PartitionPlan {
                            scan: Some(scan.clone()),
                            steps: Arc::clone(&self.0.steps),
                        };
                        Task::new(partition_key(&self.0.name, i), Arc::new(plan), vec![])
                    })
                    .collect();
                Layer::new(Arc::clone(&self.0.name), tasks, vec![])
            }
        })
    }

    fn output_keys(&self) -> Vec<Key> {
        (0..self.npartitions())
            .map(|i| self.partition_key(i))
            .collect()
    }
}

/// The key of partition `i` of the frame named `name`.
pub(crate) fn partition_key(name: &Arc<str>, i: usize) -> Key {
    Key::new(Arc::clone(name), [i as u32])
}

fn strings(names: &[impl AsRef<str>]) -> Vec<String> {
    names.iter().map(|n| n.as_ref().to_string()).collect()
}

/// Error unless `frame` has exactly `expected`'s columns and dtypes.
pub(crate) fn check_schema(frame: &PlFrame, expected: &Schema, what: &str) -> Result<()> {
    if **frame.schema() != *expected {
        return Err(Error::Schema(format!(
            "{what} does not have the expected schema: {}",
            crate::io::describe_difference(&Arc::new(expected.clone()), frame.schema())
        )));
    }
    Ok(())
}

/// Concatenate partitions vertically; no partitions gives an empty frame of `schema`.
pub(crate) fn concat_frames(parts: Vec<PlFrame>, schema: &SchemaRef) -> Result<PlFrame> {
    if parts.is_empty() {
        return Ok(PlFrame::empty_with_arc_schema(Arc::clone(schema)));
    }
    polars_core::utils::accumulate_dataframes_vertical(parts)
        .map_err(|e| from_polars(e, "concatenating partitions"))
}

/// Sum the one-row `len` frames of every partition.
#[derive(Debug, Serialize, Deserialize)]
struct SumLengths;

#[typetag::serde(name = "frame-sum-lengths")]
impl Op for SumLengths {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut total = 0u64;
        for v in inputs {
            let frame = Partition::from_value(v)?;
            let column = frame
                .columns()
                .first()
                .ok_or_else(|| Error::Internal("len produced no column".into()))?;
            let n = column
                .get(0)
                .map_err(|e| from_polars(e, "reading a partition's length"))?
                .extract::<u64>()
                .ok_or_else(|| Error::Internal("len is not an integer".into()))?;
            total += n;
        }
        Ok(Value::new(total))
    }
    fn name(&self) -> &str {
        "frame-sum-lengths"
    }
}

/// An op whose partition result must have `schema` (see [`DataFrame::map_partitions_op`]).
#[derive(Debug, Serialize, Deserialize)]
struct CheckedPartition {
    name: String,
    op: Arc<dyn Op>,
    schema: SchemaRef,
}

#[typetag::serde(name = "frame-checked-partition")]
impl Op for CheckedPartition {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let out = self.op.execute(inputs)?;
        check_schema(Partition::from_value(&out)?, &self.schema, &self.name)?;
        Ok(out)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

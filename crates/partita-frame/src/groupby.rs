//! `group_by(keys).agg(exprs)`: tree reductions of partials, or a hash shuffle.
//!
//! Key decision: an aggregation that **decomposes** runs in three phases, all polars
//! group-bys: each partition aggregates to a partial (fused into the partition's plan, so it
//! reads only the columns it needs), partials are concatenated `split_every` at a time and
//! aggregated again, and a last step turns the partial columns into the result (a frame of
//! one partition runs partial and last step as one plan, with no combine):
//!
//! | aggregation          | partial columns          | combine               | result                |
//! |----------------------|--------------------------|-----------------------|-----------------------|
//! | sum, count, len      | the same                 | sum                   | as is                 |
//! | min, max, first, last| the same                 | the same              | as is                 |
//! | mean                 | sum, non-null count      | sums                  | sum / count           |
//! | var, std (ddof)      | count, mean, M2          | Chan's parallel merge | M2 / (n - ddof), sqrt |
//!
//! With many groups the partials are hash-shuffled on the keys into `split_out` partitions
//! instead of reduced to one. Unless told, `split_out` comes from an estimate: when the
//! frame's first partition is cheap to read (a file scan or in-memory data), the key
//! columns of its first 65,536 rows are read and their distinct values counted (for a
//! longer partition, the count in all of it is predicted from how the count grows over the
//! sample); keys that are mostly distinct there
//! are taken to grow with the data (about that many groups per partition), others to repeat
//! (about that many in all), and the estimate is split into partitions of about
//! [`GROUPS_PER_PARTITION`] groups. Otherwise the tree reduces to one partition. The same
//! count decides whether partials are worth computing: when the first partition's keys are
//! mostly distinct (H2O q10, six keys), partials would be as long as the partitions, so the
//! rows are shuffled once and aggregated exactly, saving a whole group-by pass.
//!
//! A row-wise expression *of* aggregations (`max(v1) - min(v2)`, Pearson's r written with
//! means and standard deviations, a `when` or a power over aggregates) decomposes too: each
//! aggregation inside it does, and the finishing step evaluates the expression on their
//! results. An aggregation that does not decompose (median, quantile, n_unique, sorts and
//! slices) makes the whole group-by shuffle the rows on the keys and aggregate each output
//! partition exactly; only the keys and the columns the aggregations read are shuffled.
//! Aggregations decompose only when their input is row-wise (columns, literals, arithmetic,
//! casts, `when`, powers, `abs`): an input holding an aggregate of its own would be wrong
//! per partition.

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Collection, Error, Key, Layer, Op, Result, Task, Value};
use polars::prelude::{
    AggExpr, DataFrame as PlFrame, DataType, Expr, IntoLazy, LazyFrame, SchemaRef, col, len, lit,
    when,
};
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, concat_frames, partition_key};
use crate::partition::Partition;
use crate::plan::Step;
use crate::polars_error::from_polars;

/// Partials merged per combine task when not told otherwise.
const DEFAULT_SPLIT_EVERY: usize = 8;

/// Groups per output partition that the automatic `split_out` aims for.
pub const GROUPS_PER_PARTITION: usize = 1_000_000;

/// A pending group-by; see [`DataFrame::group_by`].
#[derive(Clone, Debug)]
pub struct GroupBy {
    frame: DataFrame,
    keys: Vec<String>,
    split_out: Option<usize>,
    split_every: usize,
}

impl DataFrame {
    /// Group rows by the values of `keys` (column names); then [`GroupBy::agg`].
    pub fn group_by(&self, keys: &[impl AsRef<str>]) -> Result<GroupBy> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        if keys.is_empty() {
            return Err(Error::Shape("group_by needs at least one key".into()));
        }
        for key in &keys {
            if self.schema().get(key).is_none() {
                return Err(Error::Schema(format!(
                    "group_by key {key:?} not found; the columns are {:?}",
                    self.columns()
                )));
            }
        }
        Ok(GroupBy {
            frame: self.clone(),
            keys,
            split_out: None,
            split_every: DEFAULT_SPLIT_EVERY,
        })
    }
}

impl GroupBy {
    /// Produce `n` output partitions (a hash shuffle on the keys) instead of one.
    pub fn split_out(mut self, n: usize) -> GroupBy {
        self.split_out = Some(n);
        self
    }

    /// Merge this many partials per task in the tree reduction (at least 2).
    pub fn split_every(mut self, n: usize) -> GroupBy {
        self.split_every = n.max(2);
        self
    }

    /// Aggregate each group with polars aggregation expressions (`col("v").sum()`, ...).
    /// The result has the keys then one column per expression; group order is unspecified
    /// (as in polars without `maintain_order`).
    pub fn agg(&self, aggs: impl AsRef<[Expr]>) -> Result<DataFrame> {
        let aggs = aggs.as_ref().to_vec();
        let frame = &self.frame;
        let schema = group_schema(frame.schema(), &self.keys, &aggs)?;
        if let Some(n) = self.split_out {
            crate::frame::check_partitions(n, "group_by split_out")?;
        }
        if frame.partitioning().groups_stay_together(&self.keys) {
            // Every group already lies in one partition (after a shuffle or sort on the keys).
            return frame.with_step(
                Step::GroupBy {
                    keys: self.keys.clone(),
                    aggs,
                },
                "group_by",
            );
        }
        let plan = decompose_all(&aggs, &schema, frame.schema(), &self.keys)?;
        // Count the keys of the first partition when the count decides something: the
        // number of output partitions, or whether partials are worth a pass.
        let sample = match (self.split_out, &plan) {
            (None, _) | (Some(2..), Some(_)) => frame.sample_groups(&self.keys)?,
            _ => None,
        };
        let split_out = match self.split_out {
            Some(n) => Some(n),
            None => sample.map(|s| {
                s.groups(frame.npartitions())
                    .div_ceil(GROUPS_PER_PARTITION)
                    .clamp(1, frame.npartitions())
            }),
        };
        // Partials that would hardly be smaller than their partitions are not worth a pass.
        let reduces = !sample.is_some_and(|s| s.mostly_distinct() && s.rows >= MIN_SAMPLE_ROWS);
        match plan {
            Some(plan) if reduces => self.tree(plan, schema, split_out.unwrap_or(1)),
            _ => {
                let n = split_out.unwrap_or(frame.npartitions());
                // Only the keys and the columns the aggregations read cross the shuffle.
                let source = match needed_columns(&self.keys, &aggs) {
                    Some(names) if names.len() < frame.schema().len() => {
                        frame.select_columns(&names)?
                    }
                    _ => frame.clone(),
                };
                let shuffled = source.shuffle(&self.keys, None, n)?;
                shuffled.with_step(
                    Step::GroupBy {
                        keys: self.keys.clone(),
                        aggs,
                    },
                    "group_by",
                )
            }
        }
    }

    fn tree(&self, plan: Decomposition, schema: SchemaRef, split_out: usize) -> Result<DataFrame> {
        let frame = &self.frame;
        let partials = frame.with_step(
            Step::GroupBy {
                keys: self.keys.clone(),
                aggs: plan.chunk.clone(),
            },
            "group_by",
        )?;
        let combine = Combine {
            keys: self.keys.clone(),
            aggs: plan.combine.clone(),
            schema: Arc::clone(partials.schema()),
        };
        let finish = vec![
            Step::Select(
                self.keys
                    .iter()
                    .map(|k| col(k.as_str()))
                    .chain(plan.finish.iter().cloned())
                    .collect(),
            ),
            Step::Cast(
                schema
                    .iter()
                    .map(|(n, t)| (n.to_string(), t.clone()))
                    .collect(),
            ),
        ];
        if split_out > 1 {
            // Many groups: shuffle the partials so each output partition holds whole groups.
            let shuffled = partials.shuffle(&self.keys, None, split_out)?;
            let mut steps = vec![Step::GroupBy {
                keys: self.keys.clone(),
                aggs: plan.combine,
            }];
            steps.extend(finish);
            let mut out = shuffled;
            for step in steps {
                out = out.with_step(step, "group_by")?;
            }
            return Ok(out);
        }
        if frame.npartitions() == 1 {
            // One partial holds each group once already: the finishing steps join its
            // plan, and the whole group-by is one task with one polars collect.
            return finish
                .into_iter()
                .try_fold(partials, |out, step| out.with_step(step, "group_by"));
        }
        // A tree of combine tasks down to one partial, then the finishing steps.
        let name = Key::unique_name("group-by-combine");
        let combine: Arc<dyn Op> = Arc::new(combine);
        let mut level: Vec<Key> = partials.output_keys();
        let mut tasks = Vec::new();
        let mut depth = 0u32;
        while level.len() > 1 {
            let next: Vec<Key> = level
                .chunks(self.split_every)
                .enumerate()
                .map(|(i, group)| {
                    let key = Key::new(Arc::clone(&name), [depth, i as u32]);
                    tasks.push(Task::new(key.clone(), Arc::clone(&combine), group.to_vec()));
                    key
                })
                .collect();
            level = next;
            depth += 1;
        }
        let out_name = Key::unique_name("group-by");
        tasks.push(Task::new(
            partition_key(&out_name, 0),
            Arc::new(crate::plan::PartitionPlan {
                scan: None,
                steps: finish.into(),
            }),
            level,
        ));
        let layer = Layer::new(
            Arc::clone(&out_name),
            tasks,
            vec![Arc::clone(partials.layer())],
        );
        DataFrame::from_layer(out_name, layer, 1, schema)
    }
}

/// The distinct keys and the rows of a frame's first partition.
#[derive(Clone, Copy, Debug)]
struct KeySample {
    distinct: usize,
    rows: usize,
}

/// Key samples of first partitions read from files, by [`DataFrame::sample_identity`]:
/// what was read (the scan, the file's size and modification time, the pending steps, the
/// keys). A file written again misses. Only the plan chosen depends on a sample, never a
/// result, so a stale entry (a file rewritten within the clock's resolution at the same
/// size) costs at most speed. At most [`KEPT_SAMPLES`] are kept (all dropped when full).
static SAMPLES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, KeySample>>,
> = std::sync::LazyLock::new(Default::default);

/// The most entries of [`SAMPLES`].
const KEPT_SAMPLES: usize = 256;

/// Below this many rows in the first partition, partials are always computed (their cost
/// does not matter and the sample says little).
const MIN_SAMPLE_ROWS: usize = 10_000;

/// Rows of the first partition read to count distinct keys (reading all of it cost up to a
/// tenth of a whole H2O group-by).
const SAMPLE_ROWS: usize = 1 << 16;

/// Distinct keys among `rows` rows, from `half` distinct among the first `sample / 2` rows
/// and `whole` among the first `sample`. With `g` equally frequent keys, `n` rows hold
/// about `g (1 - exp(-n / g))` of them, so `whole / half = 1 + exp(-sample / (2 g))` gives
/// `g`. Keys that did not repeat at all in the sample are taken to be all distinct; keys
/// that stopped growing, to be all seen. Skewed keys make this a guess: it only steers the
/// plan, never the answer.
fn predict_distinct(half: usize, whole: usize, sample: usize, rows: usize) -> usize {
    if half == 0 || whole >= sample {
        return if whole >= sample { rows } else { whole };
    }
    let growth = whole as f64 / half as f64 - 1.0;
    if growth <= 0.0 {
        return whole;
    }
    if growth >= 1.0 {
        return rows;
    }
    let g = sample as f64 / (2.0 * -growth.ln());
    let predicted = g * (1.0 - (-(rows as f64) / g).exp());
    (predicted.round() as usize).clamp(whole, rows.max(whole))
}

impl KeySample {
    /// Keys mostly distinct within a partition: partials would be nearly as long as it.
    fn mostly_distinct(self) -> bool {
        self.distinct * 2 > self.rows
    }

    /// Estimated groups in a frame of `npartitions` such partitions: keys mostly distinct
    /// are taken to grow with the data, others to repeat.
    fn groups(self, npartitions: usize) -> usize {
        if self.mostly_distinct() {
            self.distinct.saturating_mul(npartitions)
        } else {
            self.distinct
        }
    }
}

impl DataFrame {
    /// Estimated number of distinct `keys` in the whole frame, from its first partition,
    /// or `None` when that partition is not cheap to read (see the module docs).
    pub fn estimate_groups(&self, keys: &[String]) -> Result<Option<usize>> {
        Ok(self
            .sample_groups(keys)?
            .map(|s| s.groups(self.npartitions())))
    }

    /// Distinct `keys` and rows in the first partition, when it is cheap to read. Only its
    /// first [`SAMPLE_ROWS`] rows are read; when the partition is longer, its distinct keys
    /// are predicted from how they grow between the first half of the sample and the whole
    /// (see [`predict_distinct`]), and its length is counted (from metadata for parquet).
    ///
    /// Samples of files are kept (see [`SAMPLES`]): a group-by asked again of the same
    /// files, steps and keys (a notebook, a benchmark) does not read the sample again.
    fn sample_groups(&self, keys: &[String]) -> Result<Option<KeySample>> {
        if !self.first_partition_is_cheap() {
            return Ok(None);
        }
        let samples = || {
            SAMPLES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let identity = self.sample_identity(keys);
        if let Some(sample) = identity.as_ref().and_then(|i| samples().get(i).copied()) {
            return Ok(Some(sample));
        }
        let sample = self.read_sample(keys)?;
        if let Some(identity) = identity {
            let mut kept = samples();
            if kept.len() >= KEPT_SAMPLES {
                kept.clear();
            }
            kept.insert(identity, sample);
        }
        Ok(Some(sample))
    }

    /// Count the keys of the first partition (see [`DataFrame::sample_groups`]).
    fn read_sample(&self, keys: &[String]) -> Result<KeySample> {
        let first = |frame: DataFrame| -> Result<PlFrame> {
            let graph = Layer::materialize(&[Arc::clone(frame.layer())])?;
            let mut values = partita_core::compute(
                graph,
                &[frame.partition_key(0)],
                &partita_core::SyncScheduler,
            )?;
            Partition::from_value(&values.remove(0)).cloned()
        };
        let distinct = |part: &PlFrame| -> Result<usize> {
            Ok(crate::plan::collect(
                part.clone()
                    .lazy()
                    .unique(None, polars::prelude::UniqueKeepStrategy::Any),
            )
            .map_err(|e| from_polars(e, "estimating the number of groups"))?
            .height())
        };
        let sample = first(self.select_columns(keys)?.with_step(
            Step::Slice {
                offset: 0,
                len: SAMPLE_ROWS as u64,
            },
            "group_by",
        )?)?;
        if sample.height() < SAMPLE_ROWS {
            // The whole partition.
            let rows = sample.height();
            return Ok(KeySample {
                distinct: distinct(&sample)?,
                rows,
            });
        }
        let whole = distinct(&sample)?;
        let half = distinct(&sample.slice(0, SAMPLE_ROWS / 2))?;
        let counted = first(self.select(vec![len().alias("rows")])?)?;
        let rows = counted
            .column("rows")
            .and_then(|c| c.cast(&DataType::UInt64))
            .map_err(|e| from_polars(e, "counting the rows of the first partition"))?
            .u64()
            .ok()
            .and_then(|c| c.get(0))
            .unwrap_or(SAMPLE_ROWS as u64) as usize;
        Ok(KeySample {
            distinct: predict_distinct(half, whole, SAMPLE_ROWS, rows),
            rows,
        })
    }

    /// Keep one row per distinct value of `subset` (of whole rows when `None`), which row
    /// is unspecified. Rows are deduplicated per partition, shuffled on `subset`, and
    /// deduplicated again; the result keeps the number of partitions.
    pub fn unique(&self, subset: Option<&[&str]>) -> Result<DataFrame> {
        let subset: Option<Vec<String>> = subset.map(|s| s.iter().map(|c| c.to_string()).collect());
        let keys = subset.clone().unwrap_or_else(|| self.columns());
        let local = self.with_step(Step::Unique(subset.clone()), "unique")?;
        local
            .shuffle(&keys, None, self.npartitions())?
            .with_step(Step::Unique(subset), "unique")
    }

    /// How often each value of `column` occurs: columns `column` and `count`, one row per
    /// distinct value (order unspecified), like polars' `value_counts`.
    pub fn value_counts(&self, column: &str) -> Result<DataFrame> {
        self.group_by(&[column])?.agg([len().alias("count")])
    }
}

/// The schema polars gives `group_by(keys).agg(aggs)` on `input`.
fn group_schema(input: &SchemaRef, keys: &[String], aggs: &[Expr]) -> Result<SchemaRef> {
    group_by_lazy(
        PlFrame::empty_with_arc_schema(Arc::clone(input)).lazy(),
        keys,
        aggs,
    )
    .collect_schema()
    .map_err(|e| from_polars(e, "group_by"))
}

pub(crate) fn group_by_lazy(lf: LazyFrame, keys: &[String], aggs: &[Expr]) -> LazyFrame {
    lf.group_by(keys.iter().map(|k| col(k.as_str())).collect::<Vec<_>>())
        .agg(aggs)
}

/// `group_by(keys).agg(aggs)` on an in-memory frame: the direct path of
/// [`crate::hashagg`] when it computes these aggregations, polars otherwise. Group order is
/// unspecified.
pub fn aggregate(
    frame: &PlFrame,
    keys: &[String],
    aggs: &[Expr],
) -> polars::prelude::PolarsResult<PlFrame> {
    let direct = crate::plan::direct_group_by()
        .then(|| crate::hashagg::group_by(frame, keys, aggs))
        .flatten();
    match direct {
        Some(out) => out,
        None => crate::plan::collect(group_by_lazy(frame.clone().lazy(), keys, aggs)),
    }
}

/// Concatenate partials and aggregate them again.
#[derive(Debug, Serialize, Deserialize)]
struct Combine {
    keys: Vec<String>,
    aggs: Vec<Expr>,
    schema: SchemaRef,
}

#[typetag::serde(name = "frame-group-combine")]
impl Op for Combine {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        if inputs.is_empty() {
            expect_inputs("frame-group-combine", inputs, 1)?;
        }
        let parts = inputs
            .iter()
            .map(|v| Partition::from_value(v).cloned())
            .collect::<Result<Vec<_>>>()?;
        let all = concat_frames(parts, &self.schema)?;
        // Cast back to the partial's dtypes so every level of the tree concatenates cleanly.
        let casts: Vec<Expr> = self
            .schema
            .iter()
            .map(|(n, t)| col(n.as_str()).cast(t.clone()))
            .collect();
        let out = aggregate(&all, &self.keys, &self.aggs)
            .and_then(|out| crate::plan::collect(out.lazy().select(casts)))
            .map_err(|e| from_polars(e, "combining group-by partials"))?;
        Ok(Partition::value(out))
    }
    fn name(&self) -> &str {
        "frame-group-combine"
    }
}

/// The three phases of a decomposable aggregation list.
struct Decomposition {
    chunk: Vec<Expr>,
    combine: Vec<Expr>,
    finish: Vec<Expr>,
}

/// The keys, then every column `aggs` read (in first-use order), or `None` when an
/// expression names columns by a selector (then every column is needed).
fn needed_columns(keys: &[String], aggs: &[Expr]) -> Option<Vec<String>> {
    let mut names: Vec<String> = keys.to_vec();
    for agg in aggs {
        for e in agg {
            match e {
                Expr::Column(name) if !names.iter().any(|n| n == name.as_str()) => {
                    names.push(name.to_string());
                }
                Expr::Selector(_) | Expr::SubPlan(..) | Expr::DataTypeFunction(_) => {
                    return None;
                }
                _ => {}
            }
        }
    }
    Some(names)
}

/// Decompose every aggregation, or `None` if any does not decompose. `schema` is the
/// result's, `input` the grouped frame's.
fn decompose_all(
    aggs: &[Expr],
    schema: &SchemaRef,
    input: &SchemaRef,
    keys: &[String],
) -> Result<Option<Decomposition>> {
    let mut out = Decomposition {
        chunk: Vec::new(),
        combine: Vec::new(),
        finish: Vec::new(),
    };
    // The output columns after the keys, in order.
    let outputs: Vec<(String, DataType)> = schema
        .iter()
        .skip(schema.len() - aggs.len())
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    if outputs.len() != aggs.len() {
        return Ok(None);
    }
    for (i, (agg, (name, dtype))) in aggs.iter().zip(&outputs).enumerate() {
        let mut next = 0usize;
        let mut names = || {
            next += 1;
            format!("__partita_{i}_{}", next - 1)
        };
        let d = match decompose(strip_alias(agg), &mut names, dtype) {
            Some(d) => d,
            None => match decompose_tree(strip_alias(agg), &mut names, input, keys)? {
                Some(d) => One {
                    finish: d.finish.cast(dtype.clone()),
                    ..d
                },
                None => return Ok(None),
            },
        };
        out.chunk.extend(d.chunk);
        out.combine.extend(d.combine);
        out.finish.push(d.finish.alias(name.as_str()));
    }
    Ok(Some(out))
}

/// Decompose a row-wise expression of aggregations (`max(a) - min(b)`, a ratio of means, a
/// `when` over aggregates, a power of one): each aggregation decomposes on its own, and the
/// finishing step applies the expression to their results.
fn decompose_tree(
    e: &Expr,
    names: &mut dyn FnMut() -> String,
    input: &SchemaRef,
    keys: &[String],
) -> Result<Option<One>> {
    // The partial columns of every aggregation below `e`.
    let mut parts: Vec<(Vec<Expr>, Vec<Expr>)> = Vec::new();
    let mut sub = |x: &Expr, parts: &mut Vec<(Vec<Expr>, Vec<Expr>)>| -> Result<Option<Expr>> {
        Ok(decompose_tree(x, names, input, keys)?.map(|d| {
            parts.push((d.chunk, d.combine));
            d.finish
        }))
    };
    let finish = match e {
        Expr::Literal(v) if v.is_scalar() => Some(e.clone()),
        Expr::Alias(x, name) => sub(x, &mut parts)?.map(|f| f.alias(name.clone())),
        Expr::Cast {
            expr,
            dtype,
            options,
        } => sub(expr, &mut parts)?.map(|f| Expr::Cast {
            expr: Arc::new(f),
            dtype: dtype.clone(),
            options: *options,
        }),
        Expr::BinaryExpr { left, op, right } => {
            match (sub(left, &mut parts)?, sub(right, &mut parts)?) {
                (Some(l), Some(r)) => Some(Expr::BinaryExpr {
                    left: Arc::new(l),
                    op: *op,
                    right: Arc::new(r),
                }),
                _ => None,
            }
        }
        Expr::Ternary {
            predicate,
            truthy,
            falsy,
        } => match (
            sub(predicate, &mut parts)?,
            sub(truthy, &mut parts)?,
            sub(falsy, &mut parts)?,
        ) {
            (Some(p), Some(t), Some(f)) => Some(Expr::Ternary {
                predicate: Arc::new(p),
                truthy: Arc::new(t),
                falsy: Arc::new(f),
            }),
            _ => None,
        },
        Expr::Function {
            input: args,
            function,
        } if elementwise(function) => {
            let mut finished = Vec::with_capacity(args.len());
            for a in args {
                match sub(a, &mut parts)? {
                    Some(f) => finished.push(f),
                    None => return Ok(None),
                }
            }
            Some(Expr::Function {
                input: finished,
                function: function.clone(),
            })
        }
        Expr::Len | Expr::Agg(_) => {
            // A leaf: its own dtype, as polars gives it.
            let schema = group_schema(input, keys, std::slice::from_ref(e))?;
            let dtype = schema
                .iter()
                .last()
                .map(|(_, t)| t.clone())
                .unwrap_or(DataType::Null);
            return Ok(decompose(e, names, &dtype));
        }
        _ => None,
    };
    let (chunk, combine): (Vec<Vec<Expr>>, Vec<Vec<Expr>>) = parts.into_iter().unzip();
    Ok(finish.map(|finish| One {
        chunk: chunk.concat(),
        combine: combine.concat(),
        finish,
    }))
}

/// Functions applied value by value, which commute with grouping.
fn elementwise(f: &polars::prelude::FunctionExpr) -> bool {
    use polars::prelude::FunctionExpr;
    matches!(f, FunctionExpr::Pow(_) | FunctionExpr::Abs)
}

struct One {
    chunk: Vec<Expr>,
    combine: Vec<Expr>,
    finish: Expr,
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(inner, _) => strip_alias(inner),
        _ => e,
    }
}

/// Expressions evaluated row by row, with no aggregate, window or list function inside.
fn row_wise(e: &Expr) -> bool {
    match e {
        Expr::Column(_) => true,
        Expr::Literal(v) => v.is_scalar(),
        Expr::Alias(x, _) => row_wise(x),
        Expr::Cast { expr, .. } => row_wise(expr),
        Expr::BinaryExpr { left, right, .. } => row_wise(left) && row_wise(right),
        Expr::Ternary {
            predicate,
            truthy,
            falsy,
        } => row_wise(predicate) && row_wise(truthy) && row_wise(falsy),
        Expr::Function { input, function } => elementwise(function) && input.iter().all(row_wise),
        _ => false,
    }
}

/// Decompose one aggregation whose result has `dtype`; `names` gives fresh column names
/// for its partial columns.
fn decompose(agg: &Expr, names: &mut dyn FnMut() -> String, dtype: &DataType) -> Option<One> {
    let same = |c: String, chunk: Expr, combine: &dyn Fn(Expr) -> Expr| One {
        chunk: vec![chunk.alias(c.as_str())],
        combine: vec![combine(col(c.as_str())).alias(c.as_str())],
        finish: col(c.as_str()),
    };
    let f64 = |x: &Expr| x.clone().cast(DataType::Float64);
    match strip_alias(agg) {
        Expr::Len => Some(same(names(), len(), &|c| c.sum())),
        Expr::Agg(a) => match a {
            AggExpr::Sum(x) if row_wise(x) => {
                Some(same(names(), x.as_ref().clone().sum(), &|c| c.sum()))
            }
            AggExpr::Count { input, .. } if row_wise(input) => {
                Some(same(names(), strip_alias(agg).clone(), &|c| c.sum()))
            }
            // The combine keeps the partial's NaN rule (`nan_min` propagates NaN, `min`
            // skips it).
            AggExpr::Min {
                input,
                propagate_nans: p,
            } if row_wise(input) => Some(same(names(), strip_alias(agg).clone(), &|c| {
                Expr::Agg(AggExpr::Min {
                    input: Arc::new(c),
                    propagate_nans: *p,
                })
            })),
            AggExpr::Max {
                input,
                propagate_nans: p,
            } if row_wise(input) => Some(same(names(), strip_alias(agg).clone(), &|c| {
                Expr::Agg(AggExpr::Max {
                    input: Arc::new(c),
                    propagate_nans: *p,
                })
            })),
            AggExpr::First(x) if row_wise(x) => {
                Some(same(names(), strip_alias(agg).clone(), &|c| c.first()))
            }
            AggExpr::Last(x) if row_wise(x) => {
                Some(same(names(), strip_alias(agg).clone(), &|c| c.last()))
            }
            AggExpr::Mean(x) if row_wise(x) && dtype.is_float() => {
                let (s, n) = (names(), names());
                Some(One {
                    chunk: vec![
                        f64(x).sum().alias(s.as_str()),
                        x.as_ref().clone().count().alias(n.as_str()),
                    ],
                    combine: vec![
                        col(s.as_str()).sum().alias(s.as_str()),
                        col(n.as_str()).sum().alias(n.as_str()),
                    ],
                    finish: when(col(n.as_str()).gt(lit(0)))
                        .then(col(s.as_str()) / col(n.as_str()).cast(DataType::Float64))
                        .otherwise(lit(polars::prelude::Null {}))
                        .cast(dtype.clone()),
                })
            }
            AggExpr::Var(x, ddof) | AggExpr::Std(x, ddof) if row_wise(x) && dtype.is_float() => {
                let std = matches!(a, AggExpr::Std(..));
                let (n, m, m2) = (names(), names(), names());
                let (cn, cm, cm2) = (col(n.as_str()), col(m.as_str()), col(m2.as_str()));
                let nf = cn.clone().cast(DataType::Float64);
                let total = cn.clone().sum().cast(DataType::Float64);
                // Null (not NaN) for a group with no values yet, so it cannot poison the
                // next level's sums.
                let mean = when(total.clone().gt(lit(0.0)))
                    .then((nf.clone() * cm.clone()).sum() / total.clone())
                    .otherwise(lit(polars::prelude::Null {}));
                let var = when(cn.clone().gt(lit(*ddof as u32)))
                    .then(cm2.clone() / (cn.clone().cast(DataType::Float64) - lit(*ddof as f64)))
                    .otherwise(lit(polars::prelude::Null {}));
                Some(One {
                    chunk: vec![
                        x.as_ref().clone().count().alias(n.as_str()),
                        f64(x).mean().alias(m.as_str()),
                        // M2 as polars' own (stable) variance times the count: an
                        // expression like sum((x - mean)^2) runs per group, 2-4x slower.
                        (f64(x).var(0) * x.as_ref().clone().count().cast(DataType::Float64))
                            .alias(m2.as_str()),
                    ],
                    combine: vec![
                        cn.clone().sum().alias(n.as_str()),
                        mean.clone().alias(m.as_str()),
                        (cm2.clone().sum() + (nf * (cm - mean).pow(2)).sum()).alias(m2.as_str()),
                    ],
                    finish: if std { var.sqrt() } else { var }.cast(dtype.clone()),
                })
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct values among the first `n` draws of `g` equally likely keys.
    fn seen(g: u64, n: usize) -> usize {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            keys.insert(state % g);
        }
        keys.len()
    }

    #[test]
    fn distinct_keys_are_predicted_from_how_they_grow() {
        let s = SAMPLE_ROWS;
        for (g, rows) in [
            (100_000u64, 1_000_000usize),
            (20_000, 200_000),
            (1_000_000, 1_000_000),
        ] {
            let predicted = predict_distinct(seen(g, s / 2), seen(g, s), s, rows);
            let actual = seen(g, rows);
            let error = (predicted as f64 - actual as f64).abs() / actual as f64;
            assert!(error < 0.1, "g {g}: predicted {predicted}, actual {actual}");
        }
        // Keys that never repeat, and keys all seen in the first half.
        assert_eq!(predict_distinct(s / 2, s, s, 5_000_000), 5_000_000);
        assert_eq!(predict_distinct(100, 100, s, 5_000_000), 100);
    }

    /// Stands for a partition held elsewhere (as a cluster's persisted ones do); running
    /// it here is an error, so a test sees whether anything did.
    #[derive(Debug)]
    struct HeldElsewhere;

    impl Serialize for HeldElsewhere {
        fn serialize<S: serde::Serializer>(&self, _s: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("held elsewhere"))
        }
    }

    impl<'de> Deserialize<'de> for HeldElsewhere {
        fn deserialize<D: serde::Deserializer<'de>>(_d: D) -> std::result::Result<Self, D::Error> {
            Err(serde::de::Error::custom("held elsewhere"))
        }
    }

    #[typetag::serde(name = "test-frame-held-elsewhere")]
    impl Op for HeldElsewhere {
        fn execute(&self, _inputs: &[Value]) -> Result<Value> {
            Err(Error::Internal(
                "a partition held elsewhere was fetched".into(),
            ))
        }
        fn name(&self) -> &str {
            "held-elsewhere"
        }
        fn remote_handle(&self) -> Option<&dyn std::any::Any> {
            Some(self)
        }
    }

    #[test]
    fn samples_of_files_are_kept_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.parquet");
        let write = |groups: i64| {
            let k: Vec<i64> = (0..3000).map(|i| i % groups).collect();
            let mut frame = polars::prelude::df!("k" => k.clone(), "v" => k).unwrap();
            crate::io::parquet::write(&mut frame, &path).unwrap();
        };
        let read = || crate::read_parquet(&path, &Default::default()).unwrap();
        let keys = ["k".to_string()];
        write(10);
        let first = read();
        assert_eq!(first.estimate_groups(&keys).unwrap(), Some(10));
        // The same file, steps and keys: the same identity, so the kept sample.
        let identity = first.sample_identity(&keys).unwrap();
        assert_eq!(read().sample_identity(&keys), Some(identity.clone()));
        let filtered = |at: f64| read().filter(col("v").gt(lit(at))).unwrap();
        assert_ne!(filtered(3.0).sample_identity(&keys), Some(identity.clone()));
        // Steps that differ only in a literal's later digits (their Debug text may not).
        assert_ne!(
            filtered(3.0).sample_identity(&keys),
            filtered(3.000000001).sample_identity(&keys)
        );
        assert_ne!(
            first.sample_identity(&["v".to_string()]),
            Some(identity.clone())
        );
        // Written again (another size): read again, not the stale count.
        write(700);
        let again = read();
        assert_ne!(again.sample_identity(&keys), Some(identity));
        assert_eq!(again.estimate_groups(&keys).unwrap(), Some(700));
        // In-memory frames are not kept (their sample is cheap).
        let memory = DataFrame::from_polars(polars::prelude::df!("k" => [1i64]).unwrap(), 1);
        assert_eq!(memory.unwrap().sample_identity(&keys), None);
    }

    #[test]
    fn partitions_held_elsewhere_are_not_fetched_to_count_groups() {
        let name = Key::unique_name("held");
        let tasks = (0..3)
            .map(|i| Task::new(partition_key(&name, i), Arc::new(HeldElsewhere), vec![]))
            .collect();
        let layer = Layer::new(Arc::clone(&name), tasks, vec![]);
        let schema = polars::prelude::df!("k" => [1i64], "v" => [1.0])
            .unwrap()
            .schema()
            .clone();
        let frame = DataFrame::from_layer(name, layer, 3, schema).unwrap();
        assert!(!frame.first_partition_is_cheap());
        // Building the group-by samples nothing (the sample would run the op and fail).
        for split_out in [None, Some(2)] {
            let mut g = frame.group_by(&["k"]).unwrap();
            if let Some(n) = split_out {
                g = g.split_out(n);
            }
            g.agg([col("v").sum()]).unwrap();
        }
    }
}

//! Per-partition plans: how consecutive per-partition operations fuse.
//!
//! Key decision: a per-partition operation (`select`, `filter`, `with_columns`, ...) does not
//! add a task. It appends a [`Step`] to the frame's pending list; when the frame is consumed,
//! each partition becomes ONE task running a [`PartitionPlan`]: the partition (or the scan
//! that reads it) as a polars `LazyFrame`, every pending step, and one `collect`. Polars then
//! optimizes the steps together, so a `select` reaches the parquet reader as a projection
//! and a `filter` as a predicate (row groups whose statistics rule them out are skipped).
//!
//! Plans run on polars' streaming engine (`Engine::Streaming`), which the polars Python
//! package also uses by default: on the H2O group-bys it is up to twice as fast per partition
//! as the in-memory engine (its hash tables keep row-encoded keys) and it holds less at once.
//! `PARTITA_POLARS_ENGINE=in-memory` switches back, for comparison.
//!
//! When a plan's last group-by is one partita's own kernel computes (every aggregation a
//! `len`, `count`, `sum` or `sum` of a cast to `Float64`, as partials of sums, counts and
//! means are, or `min`/`max` of an integer column, by 8-64-bit integer or string keys; see
//! `hashagg`), the plan collects the columns that group-by reads and groups them
//! directly (sums and means: 4-5x quicker than polars' group-by on one thread); the steps
//! after it (a combine's finish) run in polars on its result. `PARTITA_GROUP_BY=polars`
//! leaves every group-by to polars, for comparison.
//!
//! The same steps applied to an empty frame with the input's schema give the output schema
//! without reading any data: that is how a missing column or a type error is reported when
//! the operation is written, naming the column.

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Op, Result, Value};
use polars::prelude::{
    DataFrame as PlFrame, DataType, ExplodeOptions, Expr, IntoLazy, LazyFrame, SchemaRef,
    SortMultipleOptions, UniqueKeepStrategy, cols,
};
use serde::{Deserialize, Serialize};

use crate::io::Scan;
use crate::partition::Partition;
use crate::polars_error::from_polars;

/// One per-partition operation, applied to a polars `LazyFrame`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Step {
    /// `select(exprs)`.
    Select(Vec<Expr>),
    /// `with_columns(exprs)`.
    WithColumns(Vec<Expr>),
    /// `filter(predicate)`.
    Filter(Expr),
    /// Drop these columns (each must exist).
    Drop(Vec<String>),
    /// Rename `existing[i]` to `new[i]` (each must exist).
    Rename {
        /// Current names.
        existing: Vec<String>,
        /// New names.
        new: Vec<String>,
    },
    /// Cast columns to dtypes (strict: a value that does not fit is an error).
    Cast(Vec<(String, DataType)>),
    /// Replace nulls with a value.
    FillNull(Expr),
    /// Drop rows with a null in any of these columns (all columns when `None`).
    DropNulls(Option<Vec<String>>),
    /// Explode list columns into rows.
    Explode(Vec<String>),
    /// Rows `offset..offset + len` of the partition (negative offsets count from the end).
    Slice {
        /// First row; negative counts from the end.
        offset: i64,
        /// Number of rows.
        len: u64,
    },
    /// `group_by(keys).agg(aggs)` within the partition.
    GroupBy {
        /// Key columns.
        keys: Vec<String>,
        /// Aggregations.
        aggs: Vec<Expr>,
    },
    /// Keep one row per distinct value of `subset` (of whole rows when `None`).
    Unique(Option<Vec<String>>),
    /// Sort the partition.
    Sort {
        /// Columns to sort by.
        by: Vec<String>,
        /// Descending flag per column.
        descending: Vec<bool>,
        /// Whether nulls go last.
        nulls_last: bool,
    },
}

impl Step {
    /// Append this step to a lazy plan.
    pub fn apply(&self, lf: LazyFrame) -> LazyFrame {
        match self {
            Step::Select(exprs) => lf.select(exprs),
            Step::WithColumns(exprs) => lf.with_columns(exprs),
            Step::Filter(predicate) => lf.filter(predicate.clone()),
            Step::Drop(names) => lf.drop(cols(names.iter().map(String::as_str))),
            Step::Rename { existing, new } => lf.rename(existing, new, true),
            Step::Cast(columns) => lf.with_columns(
                columns
                    .iter()
                    .map(|(name, dtype)| {
                        polars::prelude::col(name.as_str()).strict_cast(dtype.clone())
                    })
                    .collect::<Vec<Expr>>(),
            ),
            Step::FillNull(value) => lf.fill_null(value.clone()),
            Step::DropNulls(subset) => lf.drop_nulls(
                subset
                    .as_ref()
                    .map(|names| cols(names.iter().map(String::as_str))),
            ),
            Step::Explode(names) => lf.explode(
                cols(names.iter().map(String::as_str)),
                // polars' own defaults: an empty list or a null becomes one null row.
                ExplodeOptions {
                    empty_as_null: true,
                    keep_nulls: true,
                },
            ),
            Step::Slice { offset, len } => lf.slice(
                *offset,
                (*len).min(polars::prelude::IdxSize::MAX as u64) as _,
            ),
            Step::GroupBy { keys, aggs } => crate::groupby::group_by_lazy(lf, keys, aggs),
            Step::Unique(subset) => lf.unique(
                subset
                    .as_ref()
                    .map(|names| cols(names.iter().map(String::as_str))),
                UniqueKeepStrategy::Any,
            ),
            Step::Sort {
                by,
                descending,
                nulls_last,
            } => lf.sort(
                by.iter().map(String::as_str).collect::<Vec<_>>(),
                SortMultipleOptions::default()
                    .with_order_descending_multi(descending.clone())
                    .with_nulls_last(*nulls_last)
                    .with_maintain_order(true),
            ),
        }
    }
}

/// The schema `steps` produce from frames with schema `input`, found by planning them on an
/// empty frame: errors (a missing column, a type error) name the column involved.
pub fn output_schema(input: &SchemaRef, steps: &[Step], doing: &str) -> Result<SchemaRef> {
    let mut lf = PlFrame::empty_with_arc_schema(Arc::clone(input)).lazy();
    for step in steps {
        lf = step.apply(lf);
    }
    lf.collect_schema().map_err(|e| from_polars(e, doing))
}

/// The task that produces one partition: its source (a scan, or the task's one input) plus
/// every pending step, collected once.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionPlan {
    /// Where the rows come from when the task has no input.
    pub scan: Option<Scan>,
    /// The fused per-partition steps.
    pub steps: Arc<[Step]>,
}

impl PartitionPlan {
    /// Run the plan on a polars frame (or on the scan when `input` is `None`).
    pub fn run(&self, input: Option<&PlFrame>) -> Result<PlFrame> {
        let mut lf = match (&self.scan, input) {
            (Some(scan), None) => scan.lazy()?,
            (None, Some(frame)) => frame.clone().lazy(),
            (Some(_), Some(_)) | (None, None) => {
                return Err(partita_core::Error::Graph(
                    "a partition plan needs exactly one of a scan and an input partition".into(),
                ));
            }
        };
        // The last group-by, when the direct path computes it (see `hashagg`), runs on the
        // rows it reads, collected; the steps after it run on its result.
        let last = self
            .steps
            .iter()
            .rposition(|s| matches!(s, Step::GroupBy { .. }));
        let before = last.unwrap_or(self.steps.len());
        for step in &self.steps[..before] {
            lf = step.apply(lf);
        }
        let direct = match last.map(|at| (at, &self.steps[at])) {
            Some((at, Step::GroupBy { keys, aggs })) if direct_group_by() => {
                match crate::hashagg::needed_columns(keys, aggs) {
                    Some(needed)
                        if lf
                            .collect_schema()
                            .is_ok_and(|s| crate::hashagg::accepts(&s, keys, aggs)) =>
                    {
                        Some((at, keys, aggs, needed))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let collected = match direct {
            Some((at, keys, aggs, needed)) => collect(
                lf.select(
                    needed
                        .iter()
                        .map(|c| polars::prelude::col(c.as_str()))
                        .collect::<Vec<_>>(),
                ),
            )
            .and_then(|rows| crate::groupby::aggregate(&rows, keys, aggs))
            .and_then(|grouped| {
                let after = &self.steps[at + 1..];
                if after.is_empty() {
                    return Ok(grouped);
                }
                collect(after.iter().fold(grouped.lazy(), |lf, step| step.apply(lf)))
            }),
            None => collect(
                self.steps[before..]
                    .iter()
                    .fold(lf, |lf, step| step.apply(lf)),
            ),
        };
        collected.map_err(|e| match &self.scan {
            Some(scan) => from_polars(e, &format!("reading {scan}")),
            None => from_polars(e, "running a partition's plan"),
        })
    }
}

#[typetag::serde(name = "frame-plan")]
impl Op for PartitionPlan {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let frame = if self.scan.is_some() {
            expect_inputs("frame-plan", inputs, 0)?;
            self.run(None)?
        } else {
            expect_inputs("frame-plan", inputs, 1)?;
            self.run(Some(Partition::from_value(&inputs[0])?))?
        };
        Ok(Partition::value(frame))
    }
    fn name(&self) -> &str {
        "frame-plan"
    }
}

/// Which polars engine runs partition plans: the streaming engine unless
/// `PARTITA_POLARS_ENGINE=in-memory` says otherwise (read once).
fn engine() -> polars::prelude::Engine {
    static ENGINE: std::sync::OnceLock<polars::prelude::Engine> = std::sync::OnceLock::new();
    *ENGINE.get_or_init(|| match std::env::var("PARTITA_POLARS_ENGINE").as_deref() {
        Ok("in-memory") => polars::prelude::Engine::InMemory,
        _ => polars::prelude::Engine::Streaming,
    })
}

/// Whether partita's own group-by (`hashagg`) computes the group-bys it can: unless
/// `PARTITA_GROUP_BY=polars`, or `PARTITA_POLARS_ENGINE=in-memory` (which compares with
/// polars throughout), says otherwise (read once).
pub(crate) fn direct_group_by() -> bool {
    static DIRECT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DIRECT.get_or_init(|| {
        std::env::var("PARTITA_GROUP_BY").as_deref() != Ok("polars")
            && matches!(engine(), polars::prelude::Engine::Streaming)
    })
}

/// Collect a lazy plan on the chosen engine (see [`engine`]).
pub(crate) fn collect(lf: LazyFrame) -> polars::prelude::PolarsResult<PlFrame> {
    match lf.collect_with_engine(engine())? {
        polars_core::query_result::QueryResult::Single(frame) => Ok(frame),
        // Only a plan with several sinks gives several frames; partition plans have one.
        polars_core::query_result::QueryResult::Multiple(frames) => {
            Err(polars::prelude::polars_err!(
                ComputeError: "a partition plan gave {} results instead of one", frames.len()
            ))
        }
    }
}

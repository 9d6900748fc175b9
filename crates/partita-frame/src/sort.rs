//! Global sorts: sampled boundaries, a range shuffle, then a sort within each partition.
//!
//! Key decisions:
//! - **Boundaries from weighted quantile samples.** Each partition's sort keys (only those
//!   columns: a file scan reads nothing else) are sorted and sampled at evenly spaced
//!   positions, each sample weighing `rows / samples`. One task merges the samples and picks
//!   the `n - 1` rows where the cumulative weight crosses `j / n` of the total. These are
//!   exact quantiles of every partition, so skewed or pre-sorted data splits evenly.
//! - **Rows compare as polars' row encoding.** Keys (several columns, descending flags, null
//!   placement) are encoded into byte strings whose byte order is the sort order, and each
//!   row goes to the partition given by a binary search among the encoded boundaries. Equal
//!   keys always land in the same partition.
//! - **Stable, like polars with `maintain_order`.** Pieces are concatenated in input order
//!   and sorted with `maintain_order`, so rows with equal keys keep their original order and
//!   the result equals polars' stable sort of the whole frame.
//! - **The result remembers its boundaries** ([`Partitioning::Range`]), so a later group-by
//!   on the sort keys needs no shuffle and a join on them splits only the other side.
//!
//! The boundaries depend on every partition's sample, so a frame built from tasks (not a
//! file scan) keeps its partitions in memory until they are known, as Dask does when its
//! divisions are computed from persisted data.

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Collection, Error, Key, Layer, Op, Result, Task, Value, ValueList};
use polars::prelude::{
    Column, DataFrame as PlFrame, DataType, IdxCa, IdxSize, SchemaRef, SortMultipleOptions,
};
use polars_core::chunked_array::ops::row_encode::_get_rows_encoded;
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, check_partitions, concat_frames};
use crate::partition::Partition;
use crate::partitioning::{Partitioning, RangeBoundaries};
use crate::plan::Step;
use crate::polars_error::from_polars;
use crate::shuffle::split_by_ids;

/// Options of [`DataFrame::sort`].
#[derive(Clone, Debug, Default)]
pub struct SortOptions {
    /// Descending flag: one for all keys, or one per key (empty means ascending).
    pub descending: Vec<bool>,
    /// Whether nulls come last (polars' default is first).
    pub nulls_last: bool,
    /// Output partitions (default: as many as the input).
    pub npartitions: Option<usize>,
}

impl SortOptions {
    /// Sort all keys in descending order.
    pub fn descending(mut self) -> SortOptions {
        self.descending = vec![true];
        self
    }

    /// One descending flag per key.
    pub fn descending_multi(mut self, flags: impl Into<Vec<bool>>) -> SortOptions {
        self.descending = flags.into();
        self
    }

    /// Put nulls last.
    pub fn nulls_last(mut self, yes: bool) -> SortOptions {
        self.nulls_last = yes;
        self
    }

    /// Produce `n` output partitions.
    pub fn npartitions(mut self, n: usize) -> SortOptions {
        self.npartitions = Some(n);
        self
    }
}

/// The sort order of some key columns.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SortOrder {
    keys: Vec<String>,
    descending: Vec<bool>,
    nulls_last: bool,
}

impl SortOrder {
    fn polars_options(&self) -> SortMultipleOptions {
        SortMultipleOptions::default()
            .with_order_descending_multi(self.descending.clone())
            .with_nulls_last(self.nulls_last)
            .with_maintain_order(true)
    }

    fn sort(&self, frame: &PlFrame) -> Result<PlFrame> {
        frame
            .sort(self.keys.clone(), self.polars_options())
            .map_err(|e| from_polars(e, &format!("sorting by {:?}", self.keys)))
    }

    /// For each row of `columns` (the key columns, in order), the number of `boundaries`
    /// (the same columns) that sort before it. Both are row-encoded: byte order is sort
    /// order.
    fn count_boundaries_before(
        &self,
        columns: &[Column],
        boundaries: &[Column],
    ) -> Result<Vec<u32>> {
        let nulls_last = vec![self.nulls_last; columns.len()];
        let encode = |columns: &[Column]| {
            _get_rows_encoded(columns, &self.descending, &nulls_last)
                .map_err(|e| from_polars(e, &format!("encoding sort keys {:?}", self.keys)))
        };
        let bounds = encode(boundaries)?;
        let bounds: Vec<&[u8]> = bounds.iter().collect();
        Ok(encode(columns)?
            .iter()
            .map(|row| bounds.partition_point(|&b| b < row) as u32)
            .collect())
    }
}

/// The key columns `names` of `frame`, cast to `dtypes`.
fn key_columns(frame: &PlFrame, names: &[String], dtypes: &[DataType]) -> Result<Vec<Column>> {
    names
        .iter()
        .zip(dtypes)
        .map(|(name, dtype)| {
            let column = frame
                .column(name)
                .map_err(|e| from_polars(e, "reading sort keys"))?;
            if column.dtype() == dtype {
                Ok(column.clone())
            } else {
                column
                    .cast(dtype)
                    .map_err(|e| from_polars(e, &format!("casting key {name:?} to {dtype}")))
            }
        })
        .collect()
}

/// Name of the sample weight column: not one of the keys.
fn weight_column(keys: &[String]) -> String {
    let mut name = "__partita_weight".to_string();
    while keys.contains(&name) {
        name.push('_');
    }
    name
}

/// Sample one partition's sort keys: `samples` rows at evenly spaced sorted positions, plus
/// a weight column (rows per sample).
#[derive(Debug, Serialize, Deserialize)]
struct SampleKeys {
    order: SortOrder,
    samples: usize,
}

#[typetag::serde(name = "frame-sort-sample")]
impl Op for SampleKeys {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-sort-sample", inputs, 1)?;
        let frame = Partition::from_value(&inputs[0])?;
        let keys = frame
            .select(self.order.keys.iter().map(String::as_str))
            .map_err(|e| from_polars(e, "sampling sort keys"))?;
        let rows = keys.height();
        let k = self.samples.clamp(1, rows.max(1)).min(rows);
        let sorted = self.order.sort(&keys)?;
        let positions: Vec<IdxSize> = (0..k)
            .map(|i| ((2 * i + 1) * rows / (2 * k)) as IdxSize)
            .collect();
        let mut sample = sorted
            .take(&IdxCa::from_vec("".into(), positions))
            .map_err(|e| from_polars(e, "sampling sort keys"))?;
        let weight = if k == 0 { 0.0 } else { rows as f64 / k as f64 };
        sample
            .with_column(Column::new(
                weight_column(&self.order.keys).into(),
                vec![weight; k],
            ))
            .map_err(|e| from_polars(e, "sampling sort keys"))?;
        Ok(Partition::value(sample))
    }
    fn name(&self) -> &str {
        "frame-sort-sample"
    }
}

/// Merge the samples into the boundaries of `n` partitions of about equal weight.
#[derive(Debug, Serialize, Deserialize)]
struct PickBoundaries {
    order: SortOrder,
    n: usize,
    /// Schema of the samples (keys and weight).
    schema: SchemaRef,
}

#[typetag::serde(name = "frame-sort-boundaries")]
impl Op for PickBoundaries {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let parts = inputs
            .iter()
            .map(|v| Partition::from_value(v).cloned())
            .collect::<Result<Vec<_>>>()?;
        let samples = self.order.sort(&concat_frames(parts, &self.schema)?)?;
        let weight_name = weight_column(&self.order.keys);
        let weights = samples
            .column(&weight_name)
            .and_then(|c| c.f64().cloned())
            .map_err(|e| from_polars(e, "reading sample weights"))?;
        // Each sample stands for the rows around it: its position is the middle of its
        // weight on the cumulative scale.
        let mut centers = Vec::with_capacity(weights.len());
        let mut total = 0.0;
        for w in weights.into_no_null_iter() {
            centers.push(total + w / 2.0);
            total += w;
        }
        let mut picks: Vec<IdxSize> = Vec::with_capacity(self.n.saturating_sub(1));
        if !centers.is_empty() {
            for j in 1..self.n {
                let target = total * j as f64 / self.n as f64;
                let at = centers
                    .partition_point(|&c| c < target)
                    .min(centers.len() - 1);
                picks.push(at as IdxSize);
            }
        }
        let boundaries = samples
            .select(self.order.keys.iter().map(String::as_str))
            .and_then(|keys| keys.take(&IdxCa::from_vec("".into(), picks)))
            .map_err(|e| from_polars(e, "picking sort boundaries"))?;
        Ok(Partition::value(boundaries))
    }
    fn name(&self) -> &str {
        "frame-sort-boundaries"
    }
}

/// Split a partition into `n` pieces by range: inputs are the partition and the boundaries.
#[derive(Debug, Serialize, Deserialize)]
struct RangeSplit {
    /// The order, with `keys` naming this partition's key columns.
    order: SortOrder,
    /// The boundaries' dtypes (keys are cast to them before encoding).
    dtypes: Vec<DataType>,
    n: usize,
}

#[typetag::serde(name = "frame-range-split")]
impl Op for RangeSplit {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-range-split", inputs, 2)?;
        check_partitions(self.n, "a range split")?;
        let frame = Partition::from_value(&inputs[0])?;
        let boundaries = Partition::from_value(&inputs[1])?;
        if boundaries.width() != self.order.keys.len() || boundaries.height() >= self.n {
            return Err(Error::Shape(format!(
                "range split into {} partitions on {:?} got {} boundaries of {} columns",
                self.n,
                self.order.keys,
                boundaries.height(),
                boundaries.width()
            )));
        }
        let ids = self.order.count_boundaries_before(
            &key_columns(frame, &self.order.keys, &self.dtypes)?,
            boundaries.columns(),
        )?;
        let pieces = split_by_ids(frame, &ids, self.n)?;
        Ok(Value::new(ValueList(
            pieces.into_iter().map(Partition::value).collect(),
        )))
    }
    fn name(&self) -> &str {
        "frame-range-split"
    }
}

/// Samples per partition: enough for about 32 per output partition in all, at least 64.
fn samples_per_partition(inputs: usize, outputs: usize) -> usize {
    (32 * outputs).div_ceil(inputs.max(1)).clamp(64, 1 << 16)
}

impl DataFrame {
    /// Sort the whole frame by the columns `by`: partition `j` holds the `j`th range of keys,
    /// sorted, so the partitions in order are the sorted frame. Stable: rows with equal keys
    /// keep their order (polars' `sort` with `maintain_order`).
    pub fn sort(&self, by: &[impl AsRef<str>], options: SortOptions) -> Result<DataFrame> {
        let keys: Vec<String> = by.iter().map(|k| k.as_ref().to_string()).collect();
        if keys.is_empty() {
            return Err(Error::Shape("sort needs at least one column".into()));
        }
        let descending = match options.descending.len() {
            0 => vec![false; keys.len()],
            1 => vec![options.descending[0]; keys.len()],
            n if n == keys.len() => options.descending.clone(),
            n => {
                return Err(Error::Shape(format!(
                    "sort by {} columns got {n} descending flags",
                    keys.len()
                )));
            }
        };
        let mut dtypes = Vec::with_capacity(keys.len());
        for key in &keys {
            let dtype = self.schema().get(key).ok_or_else(|| {
                Error::Schema(format!(
                    "sort column {key:?} not found; the columns are {:?}",
                    self.columns()
                ))
            })?;
            dtypes.push(dtype.clone());
        }
        let n = options.npartitions.unwrap_or(self.npartitions());
        check_partitions(n, "a sort's output")?;
        let order = SortOrder {
            keys: keys.clone(),
            descending: descending.clone(),
            nulls_last: options.nulls_last,
        };
        let sort_step = Step::Sort {
            by: keys.clone(),
            descending: descending.clone(),
            nulls_last: options.nulls_last,
        };

        // Boundaries: samples of the key columns only, merged in one task.
        let key_frame = self.select_columns(&keys)?;
        let mut sample_schema = (**key_frame.schema()).clone();
        sample_schema.insert(weight_column(&keys).into(), DataType::Float64);
        let sample_schema = Arc::new(sample_schema);
        let samples = key_frame.map_tasks(
            "sort-sample",
            Arc::new(SampleKeys {
                order: order.clone(),
                samples: samples_per_partition(self.npartitions(), n),
            }),
            Arc::clone(&sample_schema),
        );
        let boundaries_key = Key::named(Key::unique_name("sort-boundaries"));
        let boundaries_layer = Layer::new(
            boundaries_key.name_arc().clone(),
            vec![Task::new(
                boundaries_key.clone(),
                Arc::new(PickBoundaries {
                    order: order.clone(),
                    n,
                    schema: sample_schema,
                }),
                samples.output_keys(),
            )],
            vec![Arc::clone(samples.layer())],
        );
        let range = Arc::new(RangeBoundaries {
            keys,
            dtypes,
            descending,
            nulls_last: options.nulls_last,
            key: boundaries_key,
            layer: boundaries_layer,
            npartitions: n,
        });
        let split = self.split_by_range(&range, &range.keys)?;
        split.with_step(sort_step, "sort")
    }

    /// Split this frame by the boundaries `range` (its `keys` here named `keys`, of the same
    /// dtypes): partition `j` of the result holds the rows of range `j`.
    pub(crate) fn split_by_range(
        &self,
        range: &Arc<RangeBoundaries>,
        keys: &[String],
    ) -> Result<DataFrame> {
        let n = range.npartitions;
        let split = Arc::new(RangeSplit {
            order: SortOrder {
                keys: keys.to_vec(),
                descending: range.descending.clone(),
                nulls_last: range.nulls_last,
            },
            dtypes: range.dtypes.clone(),
            n,
        });
        let extra = (range.key.clone(), Arc::clone(&range.layer));
        let out = self.exchange("range-split", split, Some(extra), n)?;
        Ok(
            out.with_partitioning(Partitioning::Range(Arc::new(RangeBoundaries {
                keys: keys.to_vec(),
                dtypes: range.dtypes.clone(),
                descending: range.descending.clone(),
                nulls_last: range.nulls_last,
                key: range.key.clone(),
                layer: Arc::clone(&range.layer),
                npartitions: n,
            }))),
        )
    }

    /// The sort boundaries of a range-partitioned frame (one row per boundary between
    /// partitions, key columns only), computed now; `None` if the frame is not range
    /// partitioned. Partition `j` holds keys above boundary `j - 1` up to boundary `j`.
    pub fn divisions(&self, scheduler: &dyn partita_core::Scheduler) -> Result<Option<PlFrame>> {
        let Partitioning::Range(range) = self.partitioning() else {
            return Ok(None);
        };
        let graph = Layer::materialize(&[Arc::clone(&range.layer)])?;
        let values = partita_core::compute(graph, std::slice::from_ref(&range.key), scheduler)?;
        Ok(Some(Partition::from_value(&values[0])?.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn samples_pick_even_quantiles() {
        let order = SortOrder {
            keys: vec!["k".into()],
            descending: vec![false],
            nulls_last: false,
        };
        let frame = df!("k" => (0..1000i64).rev().collect::<Vec<_>>()).unwrap();
        let sample = SampleKeys {
            order: order.clone(),
            samples: 10,
        }
        .execute(&[Partition::value(frame)])
        .unwrap();
        let sample = Partition::from_value(&sample).unwrap().clone();
        let k: Vec<i64> = sample
            .column("k")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(k, vec![50, 150, 250, 350, 450, 550, 650, 750, 850, 950]);
        let picked = PickBoundaries {
            order,
            n: 4,
            schema: Arc::clone(sample.schema()),
        }
        .execute(&[Partition::value(sample)])
        .unwrap();
        let picked = Partition::from_value(&picked).unwrap();
        let b: Vec<i64> = picked
            .column("k")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(b, vec![250, 550, 750]);
    }
}

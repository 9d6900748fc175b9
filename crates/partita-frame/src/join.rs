//! Joins: broadcast the small side, or hash-partition both sides on the keys.
//!
//! Key decision: when the right side has few partitions (one, or at most
//! [`BROADCAST_MAX_PARTITIONS`] and at most a quarter of the left's), each left partition is
//! joined with the whole right side (concatenated once) and nothing moves; this covers
//! inner, left, semi and anti joins. Otherwise both sides are shuffled to the same number of
//! partitions with the same hash of the keys (cast to a common dtype), so matching rows
//! meet in the same partition pair, and each pair is joined by polars.

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Collection, Error, Key, Layer, Op, Result, Task, Value};
use polars::prelude::{
    DataFrame as PlFrame, DataType, IntoLazy, JoinArgs, JoinType, SchemaRef, col,
};
use polars_core::utils::try_get_supertype;
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, concat_frames, partition_key};
use crate::partition::Partition;
use crate::partitioning::Partitioning;
use crate::polars_error::from_polars;

/// The most right-side partitions that are broadcast to every left partition.
pub const BROADCAST_MAX_PARTITIONS: usize = 8;

/// The kinds of join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum How {
    /// Rows with a match on both sides.
    Inner,
    /// Every left row, with matches or nulls.
    Left,
    /// Every right row, with matches or nulls.
    Right,
    /// Every row of both sides (polars' `full`).
    Full,
    /// Left rows that have a match (left columns only).
    Semi,
    /// Left rows that have no match (left columns only).
    Anti,
}

impl How {
    fn polars(self) -> JoinType {
        match self {
            How::Inner => JoinType::Inner,
            How::Left => JoinType::Left,
            How::Right => JoinType::Right,
            How::Full => JoinType::Full,
            How::Semi => JoinType::Semi,
            How::Anti => JoinType::Anti,
        }
    }
}

/// Join one left partition with one right partition (or the concatenation of several).
#[derive(Debug, Serialize, Deserialize)]
struct JoinPartitions {
    left_on: Vec<String>,
    right_on: Vec<String>,
    how: How,
    /// The right side's schema: the task's inputs after the first (the left partition)
    /// are right partitions, concatenated before the join.
    right_schema: SchemaRef,
}

impl JoinPartitions {
    fn join(&self, left: PlFrame, right: PlFrame) -> Result<PlFrame> {
        join_lazy(left, right, &self.left_on, &self.right_on, self.how)
            .map_err(|e| from_polars(e, "joining partitions"))
    }
}

fn join_lazy(
    left: PlFrame,
    right: PlFrame,
    left_on: &[String],
    right_on: &[String],
    how: How,
) -> polars::prelude::PolarsResult<PlFrame> {
    let lo: Vec<_> = left_on.iter().map(|k| col(k.as_str())).collect();
    let ro: Vec<_> = right_on.iter().map(|k| col(k.as_str())).collect();
    crate::plan::collect(
        left.lazy()
            .join(right.lazy(), lo, ro, JoinArgs::new(how.polars())),
    )
}

#[typetag::serde(name = "frame-join")]
impl Op for JoinPartitions {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        if inputs.len() < 2 {
            expect_inputs("frame-join", inputs, 2)?;
        }
        let left = Partition::from_value(&inputs[0])?.clone();
        let rights = inputs[1..]
            .iter()
            .map(|v| Partition::from_value(v).cloned())
            .collect::<Result<Vec<_>>>()?;
        let right = concat_frames(rights, &self.right_schema)?;
        Ok(Partition::value(self.join(left, right)?))
    }
    fn name(&self) -> &str {
        "frame-join"
    }
}

impl DataFrame {
    /// Join with `other` where `left_on` of this frame equals `right_on` of `other` (polars'
    /// semantics: null keys do not match, the right's key columns are dropped for inner,
    /// left and right joins, clashing names get the suffix `_right`).
    pub fn join(
        &self,
        other: &DataFrame,
        left_on: &[impl AsRef<str>],
        right_on: &[impl AsRef<str>],
        how: How,
    ) -> Result<DataFrame> {
        let left_on: Vec<String> = left_on.iter().map(|k| k.as_ref().to_string()).collect();
        let right_on: Vec<String> = right_on.iter().map(|k| k.as_ref().to_string()).collect();
        if left_on.is_empty() || left_on.len() != right_on.len() {
            return Err(Error::Shape(format!(
                "join needs the same number (at least one) of left and right keys, got {} and {}",
                left_on.len(),
                right_on.len()
            )));
        }
        // Common dtypes of each key pair, for hashing both sides alike.
        let mut dtypes = Vec::new();
        for (l, r) in left_on.iter().zip(&right_on) {
            let lt = key_dtype(self, l, "left")?;
            let rt = key_dtype(other, r, "right")?;
            let common = try_get_supertype(&lt, &rt).map_err(|_| {
                Error::Type(format!(
                    "join keys {l:?} ({lt}) and {r:?} ({rt}) have no common type"
                ))
            })?;
            dtypes.push(common);
        }
        let schema = join_lazy(
            PlFrame::empty_with_arc_schema(Arc::clone(self.schema())),
            PlFrame::empty_with_arc_schema(Arc::clone(other.schema())),
            &left_on,
            &right_on,
            how,
        )
        .map(|df| Arc::clone(df.schema()))
        .map_err(|e| from_polars(e, "join"))?;
        let broadcast = matches!(how, How::Inner | How::Left | How::Semi | How::Anti)
            && (other.npartitions() == 1
                || (other.npartitions() <= BROADCAST_MAX_PARTITIONS
                    && other.npartitions() * 4 <= self.npartitions()));
        let op = Arc::new(JoinPartitions {
            left_on: left_on.clone(),
            right_on: right_on.clone(),
            how,
            right_schema: Arc::clone(other.schema()),
        }) as Arc<dyn Op>;
        let name = Key::unique_name("join");
        let (left, right, pairs) = if broadcast {
            let rights = other.output_keys();
            let pairs = (0..self.npartitions())
                .map(|i| {
                    let mut deps = vec![self.partition_key(i)];
                    deps.extend(rights.iter().cloned());
                    deps
                })
                .collect::<Vec<_>>();
            (self.clone(), other.clone(), pairs)
        } else {
            let (left, right) = match self.co_partitioned(other, &left_on, &right_on, &dtypes)? {
                Some(sides) => sides,
                None => {
                    let n = self.npartitions().max(other.npartitions());
                    (
                        self.shuffle(&left_on, Some(dtypes.clone()), n)?,
                        other.shuffle(&right_on, Some(dtypes), n)?,
                    )
                }
            };
            let pairs = (0..left.npartitions())
                .map(|i| vec![left.partition_key(i), right.partition_key(i)])
                .collect();
            (left, right, pairs)
        };
        let n = pairs.len();
        let tasks = pairs
            .into_iter()
            .enumerate()
            .map(|(i, deps)| Task::new(partition_key(&name, i), Arc::clone(&op), deps))
            .collect();
        let layer = Layer::new(
            Arc::clone(&name),
            tasks,
            vec![Arc::clone(left.layer()), Arc::clone(right.layer())],
        );
        let out = DataFrame::from_layer(name, layer, n, schema)?;
        // Left rows stay in their partition with their keys, so the left's partitioning holds.
        Ok(match how {
            How::Inner | How::Left | How::Semi | How::Anti => {
                out.with_partitioning(left.partitioning().clone())
            }
            How::Right | How::Full => out,
        })
    }

    /// Both sides partitioned alike on the join keys with at most one of them moved, when
    /// either side's partitioning allows it: a range-partitioned side lends its boundaries
    /// to the other, a hash-partitioned side its partition count.
    fn co_partitioned(
        &self,
        other: &DataFrame,
        left_on: &[String],
        right_on: &[String],
        dtypes: &[DataType],
    ) -> Result<Option<(DataFrame, DataFrame)>> {
        let key_dtypes = |frame: &DataFrame, keys: &[String]| -> Vec<DataType> {
            keys.iter()
                .filter_map(|k| frame.schema().get(k).cloned())
                .collect()
        };
        let same_range = |a: &Partitioning, b: &Partitioning| match (a, b) {
            (Partitioning::Range(a), Partitioning::Range(b)) => a.key == b.key,
            _ => false,
        };
        if let Partitioning::Range(range) = self.partitioning()
            && range.keys == left_on
        {
            if same_range(self.partitioning(), other.partitioning())
                && other.partitioning().keys() == Some(right_on)
            {
                return Ok(Some((self.clone(), other.clone())));
            }
            if key_dtypes(other, right_on) == range.dtypes {
                return Ok(Some((self.clone(), other.split_by_range(range, right_on)?)));
            }
        }
        if let Partitioning::Range(range) = other.partitioning()
            && range.keys == right_on
            && key_dtypes(self, left_on) == range.dtypes
        {
            return Ok(Some((self.split_by_range(range, left_on)?, other.clone())));
        }
        for (this, that, this_on, that_on, left_first) in [
            (self, other, left_on, right_on, true),
            (other, self, right_on, left_on, false),
        ] {
            if let Partitioning::Hash { keys, dtypes: have } = this.partitioning()
                && keys == this_on
                && have == dtypes
            {
                let moved = that.shuffle(that_on, Some(dtypes.to_vec()), this.npartitions())?;
                return Ok(Some(if left_first {
                    (this.clone(), moved)
                } else {
                    (moved, this.clone())
                }));
            }
        }
        Ok(None)
    }
}

fn key_dtype(frame: &DataFrame, key: &str, side: &str) -> Result<DataType> {
    frame.schema().get(key).cloned().ok_or_else(|| {
        Error::Schema(format!(
            "join: {side} key {key:?} not found; the {side} columns are {:?}",
            frame.columns()
        ))
    })
}

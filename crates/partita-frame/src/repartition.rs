//! `repartition`: change the number of partitions, keeping row order.
//!
//! Key decisions:
//! - **By count, lazily.** Fewer partitions concatenate runs of adjacent partitions; more
//!   partitions split each input into row slices of equal length (known only when it runs,
//!   so a split task produces all its slices at once). Nothing is computed to plan it.
//! - **By size, like Dask: sizes are measured first.** `repartition_by_size` computes each
//!   partition's row count and in-memory size now, then plans slices and merges so outputs
//!   are near the target. The data is computed again by the final graph (persist first to
//!   avoid that). The last slice of each input is open-ended, so no row is lost even if an
//!   input were to come back longer.
//! - Row order is kept, and so is the partitioning of a frame whose partitions are only
//!   merged (never of a split one: a key range would be spread over several partitions).

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Collection, Error, Key, Layer, Op, Result, Scheduler, Task, Value, ValueList};
use polars::prelude::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, check_partitions, concat_frames, partition_key};
use crate::partition::Partition;
use crate::plan::{PartitionPlan, Step};

/// Concatenate the input partitions, in order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConcatPartitions {
    pub(crate) schema: SchemaRef,
}

#[typetag::serde(name = "frame-concat")]
impl Op for ConcatPartitions {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let parts = inputs
            .iter()
            .map(|v| Partition::from_value(v).cloned())
            .collect::<Result<Vec<_>>>()?;
        Ok(Partition::value(concat_frames(parts, &self.schema)?))
    }
    fn name(&self) -> &str {
        "frame-concat"
    }
}

/// Split a partition into `pieces` slices of (almost) equal row counts.
#[derive(Debug, Serialize, Deserialize)]
struct SplitEvenly {
    pieces: usize,
}

#[typetag::serde(name = "frame-split-evenly")]
impl Op for SplitEvenly {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-split-evenly", inputs, 1)?;
        check_partitions(self.pieces, "an even split")?;
        let frame = Partition::from_value(&inputs[0])?;
        let rows = frame.height();
        let pieces = (0..self.pieces)
            .map(|j| {
                let start = rows * j / self.pieces;
                let end = rows * (j + 1) / self.pieces;
                Partition::value(frame.slice(start as i64, end - start))
            })
            .collect();
        Ok(Value::new(ValueList(pieces)))
    }
    fn name(&self) -> &str {
        "frame-split-evenly"
    }
}

/// Piece `index` of a split.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TakePiece {
    pub(crate) index: usize,
}

#[typetag::serde(name = "frame-take-piece")]
impl Op for TakePiece {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-take-piece", inputs, 1)?;
        let pieces = inputs[0].get::<ValueList>()?;
        pieces.0.get(self.index).cloned().ok_or_else(|| {
            Error::Internal(format!(
                "piece {} of a split with {} pieces",
                self.index,
                pieces.0.len()
            ))
        })
    }
    fn name(&self) -> &str {
        "frame-take-piece"
    }
}

/// Rows and in-memory bytes of a partition, as a two-element list.
#[derive(Debug, Serialize, Deserialize)]
struct MeasurePartition;

#[typetag::serde(name = "frame-measure")]
impl Op for MeasurePartition {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-measure", inputs, 1)?;
        let frame = Partition::from_value(&inputs[0])?;
        Ok(Value::new(vec![
            frame.height() as i64,
            frame.estimated_size() as i64,
        ]))
    }
    fn name(&self) -> &str {
        "frame-measure"
    }
}

/// Where an output partition's rows come from: input `partition`, rows `offset..` (`len`
/// rows, or to the end when `None`); the whole input when `offset == 0 && len == None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slice {
    partition: usize,
    offset: u64,
    len: Option<u64>,
}

/// Plan outputs of about `target` bytes from inputs of `(rows, bytes)`: large inputs are
/// cut into equal slices, runs of small ones merged.
fn plan_by_size(sizes: &[(u64, u64)], target: u64) -> Vec<Vec<Slice>> {
    let mut outputs: Vec<Vec<Slice>> = Vec::new();
    let mut current: Vec<Slice> = Vec::new();
    let mut current_bytes = 0u64;
    for (partition, &(rows, bytes)) in sizes.iter().enumerate() {
        let pieces = bytes.div_ceil(target.max(1)).clamp(1, rows.max(1));
        if pieces == 1 {
            if current_bytes > 0 && current_bytes + bytes > target {
                outputs.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current.push(Slice {
                partition,
                offset: 0,
                len: None,
            });
            current_bytes += bytes;
            continue;
        }
        if !current.is_empty() {
            outputs.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        for j in 0..pieces {
            let start = rows * j / pieces;
            let end = rows * (j + 1) / pieces;
            outputs.push(vec![Slice {
                partition,
                offset: start,
                len: (j + 1 < pieces).then_some(end - start),
            }]);
        }
    }
    if !current.is_empty() || outputs.is_empty() {
        outputs.push(current);
    }
    outputs
}

impl DataFrame {
    /// `n` partitions with the same rows in the same order: adjacent partitions are
    /// concatenated (fewer) or each is split into equal row slices (more).
    pub fn repartition(&self, n: usize) -> Result<DataFrame> {
        check_partitions(n, "repartition")?;
        let np = self.npartitions();
        if n == np {
            return Ok(self.clone());
        }
        let name = Key::unique_name("repartition");
        let mut tasks = Vec::new();
        if n < np {
            let op: Arc<dyn Op> = Arc::new(ConcatPartitions {
                schema: Arc::clone(self.schema()),
            });
            for j in 0..n {
                let deps = (np * j / n..np * (j + 1) / n)
                    .map(|i| self.partition_key(i))
                    .collect();
                tasks.push(Task::new(partition_key(&name, j), Arc::clone(&op), deps));
            }
        } else {
            let split_name = Key::unique_name("split-evenly");
            for i in 0..np {
                let pieces = n * (i + 1) / np - n * i / np;
                let split_key = partition_key(&split_name, i);
                tasks.push(Task::new(
                    split_key.clone(),
                    Arc::new(SplitEvenly { pieces }),
                    vec![self.partition_key(i)],
                ));
                for index in 0..pieces {
                    let j = n * i / np + index;
                    tasks.push(Task::new(
                        partition_key(&name, j),
                        Arc::new(TakePiece { index }),
                        vec![split_key.clone()],
                    ));
                }
            }
        }
        let layer = Layer::new(Arc::clone(&name), tasks, vec![Arc::clone(self.layer())]);
        let out = DataFrame::from_layer(name, layer, n, Arc::clone(self.schema()))?;
        Ok(if n < np {
            out.with_partitioning(self.partitioning().clone())
        } else {
            out
        })
    }

    /// Partitions of about `bytes` each (polars' estimate of in-memory size), same rows in
    /// the same order. Measures every partition now, on `scheduler`; see the module docs.
    pub fn repartition_by_size(&self, bytes: u64, scheduler: &dyn Scheduler) -> Result<DataFrame> {
        if bytes == 0 {
            return Err(Error::Shape(
                "repartition_by_size needs a target above 0 bytes".into(),
            ));
        }
        let measured = self.map_tasks(
            "measure",
            Arc::new(MeasurePartition),
            Arc::clone(self.schema()),
        );
        let graph = Layer::materialize(&[Arc::clone(measured.layer())])?;
        let values = partita_core::compute(graph, &measured.output_keys(), scheduler)?;
        let sizes = values
            .iter()
            .map(|v| match v.get::<Vec<i64>>()?.as_slice() {
                &[rows, size] => Ok((rows.max(0) as u64, size.max(0) as u64)),
                other => Err(Error::Internal(format!(
                    "a partition measure gave {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = plan_by_size(&sizes, bytes);
        check_partitions(plan.len(), "repartition_by_size")?;
        let name = Key::unique_name("repartition");
        let slice_name = Key::unique_name("slice");
        let concat: Arc<dyn Op> = Arc::new(ConcatPartitions {
            schema: Arc::clone(self.schema()),
        });
        let mut tasks = Vec::new();
        let mut slices = 0u32;
        for (j, output) in plan.iter().enumerate() {
            let mut deps = Vec::with_capacity(output.len());
            for slice in output {
                if slice.offset == 0 && slice.len.is_none() {
                    deps.push(self.partition_key(slice.partition));
                    continue;
                }
                let key = Key::new(Arc::clone(&slice_name), [slices]);
                slices += 1;
                let step = Step::Slice {
                    offset: slice.offset as i64,
                    len: slice.len.unwrap_or(u64::MAX),
                };
                tasks.push(Task::new(
                    key.clone(),
                    Arc::new(PartitionPlan {
                        scan: None,
                        steps: Arc::from([step]),
                    }),
                    vec![self.partition_key(slice.partition)],
                ));
                deps.push(key);
            }
            tasks.push(Task::new(
                partition_key(&name, j),
                Arc::clone(&concat),
                deps,
            ));
        }
        let layer = Layer::new(Arc::clone(&name), tasks, vec![Arc::clone(self.layer())]);
        DataFrame::from_layer(name, layer, plan.len(), Arc::clone(self.schema()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_plans_cut_big_inputs_and_merge_small_ones() {
        let whole = |partition| Slice {
            partition,
            offset: 0,
            len: None,
        };
        let plan = plan_by_size(&[(10, 10), (10, 10), (100, 100), (10, 10), (0, 0)], 40);
        assert_eq!(plan[0], vec![whole(0), whole(1)]);
        assert_eq!(plan.len(), 1 + 3 + 1);
        assert_eq!(
            plan[1..4].iter().map(|o| o[0].offset).collect::<Vec<_>>(),
            vec![0, 33, 66]
        );
        assert_eq!(plan[3][0].len, None, "the last slice runs to the end");
        assert_eq!(plan[4], vec![whole(3), whole(4)]);
    }
}

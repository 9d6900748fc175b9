//! Hash shuffles: rows with equal keys go to the same output partition.
//!
//! Each input partition is split once into `n` pieces by a hash of its key columns (a
//! `ValueList` of partitions); output partition `j` concatenates piece `j` of every split. The hash
//! uses a fixed seed and key columns are first cast to a common dtype, so the same key value
//! lands in the same output partition from every input, in every process: two frames
//! shuffled to the same `n` on their join keys line up partition by partition.
//!
//! Key decision: **one small task per piece.** Piece `j` of split `i` is its own task (it
//! takes the piece out of the split, sharing its buffers), and output `j` depends on piece
//! `j` of every split, not on whole splits. On one machine that costs `n` tiny tasks per
//! input; on a cluster the take runs where the split is, so an output fetches only its own
//! pieces from other workers (with whole splits as inputs, every worker fetched every
//! remote split whole: twice the bytes at `n = 2`, `n` times at `n` outputs per worker).

use std::sync::Arc;

use partita_core::op::expect_inputs;
use partita_core::{Error, Key, Layer, Op, Result, Task, Value, ValueList};
use polars::prelude::{
    DataFrame as PlFrame, DataType, IdxCa, IdxSize, PlSeedableRandomStateQuality,
    SeedableFromU64SeedExt,
};
use serde::{Deserialize, Serialize};

use crate::frame::{DataFrame, partition_key};
use crate::partition::Partition;
use crate::partitioning::Partitioning;
use crate::polars_error::from_polars;
use crate::repartition::{ConcatPartitions, TakePiece};

/// The fixed seed of shuffle hashes (any constant works; it must never change between the
/// processes of one computation).
const SHUFFLE_SEED: u64 = 0x7061_7274_6974_6121;

/// Output partition of each row: a fixed-seed hash of the key columns (cast to `dtypes`),
/// mapped onto `0..n`.
pub fn partition_ids(
    frame: &PlFrame,
    keys: &[String],
    dtypes: &[DataType],
    n: usize,
) -> Result<Vec<u32>> {
    let seed = PlSeedableRandomStateQuality::seed_from_u64(SHUFFLE_SEED);
    let mut hashes: Vec<u64> = Vec::with_capacity(frame.height());
    for (i, (key, dtype)) in keys.iter().zip(dtypes).enumerate() {
        let column = frame
            .column(key)
            .map_err(|e| from_polars(e, "hashing shuffle keys"))?;
        let column = if column.dtype() == dtype {
            column.clone()
        } else {
            column
                .cast(dtype)
                .map_err(|e| from_polars(e, &format!("casting key {key:?} to {dtype}")))?
        };
        let result = if i == 0 {
            column.vec_hash(seed.clone(), &mut hashes)
        } else {
            column.vec_hash_combine(seed.clone(), &mut hashes)
        };
        result.map_err(|e| from_polars(e, &format!("hashing key {key:?}")))?;
    }
    if keys.is_empty() {
        hashes.resize(frame.height(), 0);
    }
    // The high bits of hash * n: uniform in 0..n without a division.
    Ok(hashes
        .iter()
        .map(|&h| ((h as u128 * n as u128) >> 64) as u32)
        .collect())
}

/// Split `frame` into `n` pieces by `ids` (stable: rows keep their order within a piece).
pub fn split_by_ids(frame: &PlFrame, ids: &[u32], n: usize) -> Result<Vec<PlFrame>> {
    let mut counts = vec![0usize; n + 1];
    for &id in ids {
        counts[id as usize + 1] += 1;
    }
    for j in 1..=n {
        counts[j] += counts[j - 1];
    }
    let starts = counts.clone();
    let mut order = vec![0 as IdxSize; ids.len()];
    for (row, &id) in ids.iter().enumerate() {
        let slot = &mut counts[id as usize];
        order[*slot] = row as IdxSize;
        *slot += 1;
    }
    let gathered = frame
        .take(&IdxCa::from_vec("".into(), order))
        .map_err(|e| from_polars(e, "splitting a partition for a shuffle"))?;
    Ok((0..n)
        .map(|j| gathered.slice(starts[j] as i64, starts[j + 1] - starts[j]))
        .collect())
}

/// Split one partition into `n` pieces by the hash of its keys.
#[derive(Debug, Serialize, Deserialize)]
struct HashSplit {
    keys: Vec<String>,
    dtypes: Vec<DataType>,
    n: usize,
}

#[typetag::serde(name = "frame-hash-split")]
impl Op for HashSplit {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("frame-hash-split", inputs, 1)?;
        if self.n == 0
            || self.n > crate::frame::MAX_PARTITIONS
            || self.keys.len() != self.dtypes.len()
        {
            return Err(Error::Graph(
                "a hash split needs 1 to MAX_PARTITIONS pieces and a dtype per key".into(),
            ));
        }
        let frame = Partition::from_value(&inputs[0])?;
        let ids = partition_ids(frame, &self.keys, &self.dtypes, self.n)?;
        let pieces = split_by_ids(frame, &ids, self.n)?;
        Ok(Value::new(ValueList(
            pieces.into_iter().map(Partition::value).collect(),
        )))
    }
    fn name(&self) -> &str {
        "frame-hash-split"
    }
}

impl DataFrame {
    /// Repartition into `n` partitions so that rows with equal values in `keys` share a
    /// partition. Key columns are hashed after a cast to `dtypes` (one per key; `None` uses
    /// each column's own dtype).
    pub fn shuffle(
        &self,
        keys: &[impl AsRef<str>],
        dtypes: Option<Vec<DataType>>,
        n: usize,
    ) -> Result<DataFrame> {
        crate::frame::check_partitions(n, "a shuffle's output")?;
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        let mut key_dtypes = Vec::with_capacity(keys.len());
        for key in &keys {
            let dtype = self.schema().get(key).ok_or_else(|| {
                Error::Schema(format!(
                    "shuffle key {key:?} not found; the columns are {:?}",
                    self.columns()
                ))
            })?;
            key_dtypes.push(dtype.clone());
        }
        let dtypes = match dtypes {
            Some(d) if d.len() != keys.len() => {
                return Err(Error::Shape(format!(
                    "shuffle got {} keys and {} dtypes",
                    keys.len(),
                    d.len()
                )));
            }
            Some(d) => d,
            None => key_dtypes,
        };
        if let Partitioning::Hash {
            keys: have,
            dtypes: have_dtypes,
        } = self.partitioning()
            && *have == keys
            && *have_dtypes == dtypes
            && self.npartitions() == n
        {
            return Ok(self.clone());
        }
        let split = Arc::new(HashSplit {
            keys: keys.clone(),
            dtypes: dtypes.clone(),
            n,
        });
        let out = self.exchange("hash-split", split, None, n)?;
        Ok(out.with_partitioning(Partitioning::Hash { keys, dtypes }))
    }

    /// Split every partition with `split` (one input partition, plus the value of `extra`
    /// when given, to a `ValueList` of `n` pieces), and make output partition `j` of piece
    /// `j` of every split, in input order.
    pub(crate) fn exchange(
        &self,
        split_name: &str,
        split: Arc<dyn Op>,
        extra: Option<(Key, Arc<Layer>)>,
        n: usize,
    ) -> Result<DataFrame> {
        let piece_name = Key::unique_name(&format!("take-{split_name}"));
        let split_name = Key::unique_name(split_name);
        let name = Key::unique_name("shuffle");
        let mut tasks: Vec<Task> = (0..self.npartitions())
            .map(|i| {
                let mut deps = vec![self.partition_key(i)];
                deps.extend(extra.iter().map(|(key, _)| key.clone()));
                Task::new(partition_key(&split_name, i), Arc::clone(&split), deps)
            })
            .collect();
        let concat: Arc<dyn Op> = Arc::new(ConcatPartitions {
            schema: Arc::clone(self.schema()),
        });
        for j in 0..n {
            let take: Arc<dyn Op> = Arc::new(TakePiece { index: j });
            let pieces: Vec<Key> = (0..self.npartitions())
                .map(|i| {
                    let key = Key::new(Arc::clone(&piece_name), [i as u32, j as u32]);
                    tasks.push(Task::new(
                        key.clone(),
                        Arc::clone(&take),
                        vec![partition_key(&split_name, i)],
                    ));
                    key
                })
                .collect();
            tasks.push(Task::new(
                partition_key(&name, j),
                Arc::clone(&concat),
                pieces,
            ));
        }
        let mut deps = vec![Arc::clone(partita_core::Collection::layer(self))];
        deps.extend(extra.map(|(_, layer)| layer));
        let layer = Layer::new(Arc::clone(&name), tasks, deps);
        DataFrame::from_layer(name, layer, n, Arc::clone(self.schema()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn equal_keys_land_together_whatever_the_partition() {
        let a = df!("k" => [1i64, 2, 3, 1, 2, 3], "v" => [0i64, 1, 2, 3, 4, 5]).unwrap();
        let b = df!("k" => [3i64, 1]).unwrap();
        let keys = vec!["k".to_string()];
        let ids_a = partition_ids(&a, &keys, &[DataType::Int64], 7).unwrap();
        let ids_b = partition_ids(&b, &keys, &[DataType::Int64], 7).unwrap();
        assert_eq!(ids_a[0], ids_a[3]);
        assert_eq!(ids_a[2], ids_b[0]);
        assert_eq!(ids_a[0], ids_b[1]);
        // A narrower column cast to the same dtype hashes the same.
        let c = df!("k" => [3i32, 1]).unwrap();
        assert_eq!(
            partition_ids(&c, &keys, &[DataType::Int64], 7).unwrap(),
            ids_b
        );
    }

    #[test]
    fn each_output_reads_only_its_own_pieces() {
        use partita_core::Collection;
        let data = df!("k" => (0..30i64).collect::<Vec<_>>()).unwrap();
        let frame = crate::DataFrame::from_polars(data, 3).unwrap();
        let shuffled = frame.shuffle(&["k"], None, 2).unwrap();
        let graph = Layer::materialize(&[Arc::clone(shuffled.layer())]).unwrap();
        for (j, out) in shuffled.output_keys().iter().enumerate() {
            let id = graph.resolve(std::slice::from_ref(out)).unwrap()[0];
            let pieces = graph.dependencies(id);
            // One piece per input partition, each taking piece j out of one split.
            assert_eq!(pieces.len(), 3);
            let mut splits: Vec<_> = pieces
                .iter()
                .map(|&p| {
                    assert_eq!(graph.op(p).name(), "frame-take-piece");
                    let op = format!("{:?}", graph.op(p));
                    assert_eq!(op, format!("TakePiece {{ index: {j} }}"));
                    let split = graph.dependencies(p);
                    assert_eq!(split.len(), 1);
                    assert_eq!(graph.op(split[0]).name(), "frame-hash-split");
                    split[0]
                })
                .collect();
            splits.dedup();
            assert_eq!(splits.len(), 3);
        }
        let rows: usize =
            partita_core::compute(graph, &shuffled.output_keys(), &partita_core::SyncScheduler)
                .unwrap()
                .iter()
                .map(|v| Partition::from_value(v).unwrap().height())
                .sum();
        assert_eq!(rows, 30);
    }

    #[test]
    fn splits_keep_every_row_once_in_order() {
        let a = df!("v" => (0..100i64).collect::<Vec<_>>()).unwrap();
        let ids: Vec<u32> = (0..100u32).map(|i| (i * 7) % 5).collect();
        let pieces = split_by_ids(&a, &ids, 5).unwrap();
        assert_eq!(pieces.iter().map(|p| p.height()).sum::<usize>(), 100);
        for (j, p) in pieces.iter().enumerate() {
            let v: Vec<i64> = p
                .column("v")
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect();
            assert!(v.windows(2).all(|w| w[0] < w[1]));
            assert!(v.iter().all(|&x| ids[x as usize] as usize == j));
        }
        let value = Value::new(ValueList(
            pieces.into_iter().map(Partition::value).collect(),
        ));
        let back = Value::decode(value.encode().unwrap()).unwrap();
        assert_eq!(back.get::<ValueList>().unwrap().0.len(), 5);
    }
}

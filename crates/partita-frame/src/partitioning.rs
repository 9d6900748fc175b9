//! What a frame knows about which rows share a partition, so later operations can skip a
//! shuffle (Dask's `divisions`, generalised to hash partitioning).
//!
//! Key decision: the knowledge is a property of the lazy frame, computed when operations are
//! written, never by looking at data. A hash shuffle on `keys` gives [`Partitioning::Hash`];
//! a global sort gives [`Partitioning::Range`], whose boundaries are the value of one task
//! (sampled quantiles of the sort keys), so they stay lazy. Either way every row with a
//! given key value is in one known partition, and:
//! - a group-by whose keys include the partitioning keys aggregates each partition alone;
//! - a shuffle to the same keys, dtypes and partition count is a no-op, so two frames
//!   already hash-partitioned alike join partition by partition;
//! - a join with a range-partitioned side splits only the other side, by the same boundaries
//!   (and nothing when both sides share boundaries).
//!
//! A per-partition step keeps the knowledge only when it cannot change a key column's
//! values or move rows between partitions: filters, slices, sorts, dropping or casting other
//! columns, selecting the keys as they are, renaming (the keys follow). Anything else, and
//! every user function, forgets it.

use std::fmt;
use std::sync::Arc;

use partita_core::{Key, Layer};
use polars::prelude::{DataType, Expr, SchemaRef};

use crate::plan::{Step, output_schema};

/// How a frame's rows are distributed over its partitions.
#[derive(Clone, Debug, Default)]
pub enum Partitioning {
    /// Nothing is known.
    #[default]
    Unknown,
    /// Rows were placed by the shuffle hash of `keys` cast to `dtypes` (see
    /// [`crate::shuffle::partition_ids`]), into as many partitions as the frame has.
    Hash {
        /// Key columns, in order.
        keys: Vec<String>,
        /// The dtype each key was cast to before hashing.
        dtypes: Vec<DataType>,
    },
    /// Partition `j` holds the rows whose sort keys fall in the `j`th range between
    /// boundaries; see [`RangeBoundaries`].
    Range(Arc<RangeBoundaries>),
}

/// The boundaries of a range partitioning: a task whose value is a frame of the key columns
/// with `npartitions - 1` rows or fewer, in sort order. Partition `j` holds the rows greater
/// than boundary `j - 1` and not greater than boundary `j` (in the sort's order, with its
/// descending flags and null placement).
pub struct RangeBoundaries {
    /// Key columns of this frame, in sort order.
    pub keys: Vec<String>,
    /// Their dtypes (a frame split by these boundaries must have the same).
    pub dtypes: Vec<DataType>,
    /// Descending flag per key.
    pub descending: Vec<bool>,
    /// Whether nulls sort last.
    pub nulls_last: bool,
    /// The task computing the boundaries frame.
    pub key: Key,
    /// The layer holding that task.
    pub layer: Arc<Layer>,
    /// The number of partitions the boundaries were picked for.
    pub npartitions: usize,
}

impl fmt::Debug for RangeBoundaries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeBoundaries")
            .field("keys", &self.keys)
            .field("dtypes", &self.dtypes)
            .field("descending", &self.descending)
            .field("nulls_last", &self.nulls_last)
            .field("key", &self.key)
            .field("npartitions", &self.npartitions)
            .finish()
    }
}

impl Partitioning {
    /// The key columns, unless nothing is known.
    pub fn keys(&self) -> Option<&[String]> {
        match self {
            Partitioning::Unknown => None,
            Partitioning::Hash { keys, .. } => Some(keys),
            Partitioning::Range(r) => Some(&r.keys),
        }
    }

    /// Whether every group of rows with equal `group_keys` values lies in one partition.
    pub fn groups_stay_together(&self, group_keys: &[String]) -> bool {
        self.keys()
            .is_some_and(|keys| keys.iter().all(|k| group_keys.contains(k)))
    }

    /// The same knowledge with key columns renamed.
    fn renamed(&self, keys: Vec<String>) -> Partitioning {
        match self {
            Partitioning::Unknown => Partitioning::Unknown,
            Partitioning::Hash { dtypes, .. } => Partitioning::Hash {
                keys,
                dtypes: dtypes.clone(),
            },
            Partitioning::Range(r) => Partitioning::Range(Arc::new(RangeBoundaries {
                keys,
                dtypes: r.dtypes.clone(),
                descending: r.descending.clone(),
                nulls_last: r.nulls_last,
                key: r.key.clone(),
                layer: Arc::clone(&r.layer),
                npartitions: r.npartitions,
            })),
        }
    }

    /// What is still known after `step` runs on every partition (of schema `input`).
    pub(crate) fn after_step(&self, step: &Step, input: &SchemaRef) -> Partitioning {
        let Some(keys) = self.keys() else {
            return Partitioning::Unknown;
        };
        let is_key = |name: &str| keys.iter().any(|k| k == name);
        let keep = match step {
            Step::Filter(_)
            | Step::DropNulls(_)
            | Step::Slice { .. }
            | Step::Sort { .. }
            | Step::Unique(_) => true,
            Step::Drop(names) | Step::Explode(names) => !names.iter().any(|n| is_key(n)),
            Step::Cast(columns) => !columns.iter().any(|(n, _)| is_key(n)),
            Step::GroupBy { keys: group, .. } => keys.iter().all(|k| group.contains(k)),
            Step::Select(exprs) => keys.iter().all(|k| {
                exprs
                    .iter()
                    .any(|e| matches!(e, Expr::Column(name) if name.as_str() == k))
            }),
            Step::WithColumns(exprs) => match output_schema(
                input,
                &[Step::Select(exprs.clone())],
                "checking which columns with_columns replaces",
            ) {
                Ok(written) => !written.iter_names().any(|n| is_key(n)),
                Err(_) => false,
            },
            Step::Rename { existing, new } => {
                // A new name that lands on a key column that is not itself renamed would
                // replace it; polars refuses that, but stay safe.
                if new
                    .iter()
                    .any(|n| is_key(n) && !existing.iter().any(|e| e == n))
                {
                    return Partitioning::Unknown;
                }
                let renamed = keys
                    .iter()
                    .map(|k| match existing.iter().position(|e| e == k) {
                        Some(i) => new[i].clone(),
                        None => k.clone(),
                    })
                    .collect();
                return self.renamed(renamed);
            }
            Step::FillNull(_) => false,
        };
        if keep {
            self.clone()
        } else {
            Partitioning::Unknown
        }
    }
}

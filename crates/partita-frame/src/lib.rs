//! partita-frame: partitioned dataframes with Dask's partitioning and Polars' expressions.
//!
//! A [`DataFrame`] is a list of partitions, each a polars `DataFrame` when computed, plus
//! the schema of the result, known before anything runs (Dask's `meta`). This crate only
//! builds graphs; partita-core's schedulers run them.
//!
//! Key decisions (each explained in its module):
//! - **Per-partition operations fuse into one polars plan** ([`plan`]): `filter`, `select`,
//!   `with_columns`, ... append steps; each partition runs them as ONE polars lazy query
//!   rooted at its data or at its file scan, so polars pushes projections and predicates
//!   into the parquet reader.
//! - **The schema is planned, not guessed** ([`plan::output_schema`]): the steps are
//!   planned on an empty frame of the input schema, so a bad column name is an error when
//!   the operation is written, naming the column.
//! - **Aggregations decompose** ([`groupby`]): sums, counts, means, min/max, first/last and
//!   var/std (Chan's merge of count, mean and M2) run as per-partition partials combined in
//!   a tree; everything else (median, quantile, n_unique, arbitrary expressions) is exact
//!   after a hash shuffle on the keys.
//! - **Shuffles hash rows with a fixed seed** ([`shuffle`]): the same key value lands in the
//!   same output partition from every input, on every machine, so joins and group-bys on
//!   shuffled sides line up.
//! - **Partitions travel as Arrow IPC** ([`partition`]).
//!
//! ```
//! use partita_core::LocalScheduler;
//! use partita_frame::DataFrame;
//! use polars::prelude::*;
//!
//! let df = df!("k" => ["a", "b", "a", "c"], "v" => [1i64, 2, 3, 4]).unwrap();
//! let frame = DataFrame::from_polars(df, 2).unwrap();
//! let big = frame.filter(col("v").gt(lit(1))).unwrap();
//! let out = big.compute(&LocalScheduler::new()).unwrap();
//! assert_eq!(out.height(), 3);
//! ```

pub mod arrow;
mod columns;
pub mod describe;
pub mod frame;
pub mod groupby;
mod hashagg;
pub mod io;
pub mod join;
pub mod partition;
pub mod partitioning;
pub mod plan;
mod polars_error;
pub mod repartition;
pub mod shuffle;
pub mod sort;

pub use frame::DataFrame;
pub use groupby::GroupBy;
pub use io::csv::read_csv;
pub use io::ipc::read_ipc;
pub use io::parquet::{ParquetOptions, read_parquet};
pub use io::{CsvOptions, Scan};
pub use join::How;
pub use partition::Partition;
pub use partitioning::Partitioning;
pub use plan::{PartitionPlan, Step};
/// The polars this crate is built with (use it to write expressions and read results).
pub use polars;
pub use sort::SortOptions;

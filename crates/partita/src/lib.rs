//! partita: Dask-style lazy task graphs over partitioned arrays and dataframes, run on a
//! local rayon scheduler or a cluster.
//!
//! This is the facade: it re-exports the crates users need so one dependency is enough.
//! Arrays (`array` feature), dataframes (`frame`) and the distributed client (`distributed`)
//! join here as their crates land.
//!
//! ```
//! use partita::delayed;
//!
//! let squares: Vec<_> = (0..10i64).map(|i| delayed::value(i).map("square", |x| x * x)).collect();
//! let total = delayed::call("sum", |xs: Vec<i64>| xs.iter().sum::<i64>(), &squares);
//! assert_eq!(total.compute(&partita::LocalScheduler::new()).unwrap(), 285);
//! ```

/// The core crate, for paths like `partita::core::optimize::fuse`.
pub use partita_core as core;
pub use partita_core::*;

/// Chunked n-d arrays (feature `array`, on by default).
#[cfg(feature = "array")]
pub use partita_array as array;

/// Partitioned dataframes over polars (feature `frame`, on by default); `frame::polars` is
/// the polars version it is built with.
#[cfg(feature = "frame")]
pub use partita_frame as frame;

/// The cluster: `Client` (a `Scheduler`), `LocalCluster`, and the scheduler and worker
/// runtimes the `partita` binary runs (feature `distributed`, on by default).
#[cfg(feature = "distributed")]
pub use partita_distributed as distributed;

/// The README's examples, compiled and run as doc tests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

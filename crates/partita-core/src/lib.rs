//! partita-core: task graphs, their optimizer, and the local schedulers.
//!
//! This crate knows nothing of arrays, dataframes, networks or Python: it has keys, values,
//! ops, graphs, optimization passes and schedulers, and every other partita crate builds
//! on them.
//!
//! Key decisions (each explained in its module):
//! - **Keys for people, ids for machines** ([`key`], [`graph`]): tasks carry Dask-style keys
//!   but a built [`Graph`] is dense `u32` ids with flat CSR adjacency, renumbered so every
//!   dependency has a smaller id than its dependent.
//! - **Lazy collections own layers, not graphs** ([`layer`]): `x + y` adds one
//!   `Arc`-shared [`Layer`]; the flat graph is built once, at compute time.
//! - **Ops are serializable trait objects** ([`op`], `typetag`), values are `Arc`-shared and
//!   encode themselves as raw buffers ([`value`]); closures are allowed but stay local.
//! - **Schedulers share one trait** ([`scheduler`]): [`SyncScheduler`] and [`LocalScheduler`]
//!   here, the distributed client elsewhere; all free intermediates as soon as their last
//!   dependent has run.
//!
//! ```
//! use std::sync::Arc;
//! use partita_core::{GraphBuilder, Key, Literal, LocalScheduler, Value, compute};
//! use partita_core::op::Collect;
//!
//! let mut b = GraphBuilder::new();
//! b.add_task(Key::new("x", [0]), Arc::new(Literal(Value::new(1i64))), &[]);
//! b.add_task(Key::new("x", [1]), Arc::new(Literal(Value::new(2i64))), &[]);
//! b.add_task(Key::named("all"), Arc::new(Collect), &[Key::new("x", [0]), Key::new("x", [1])]);
//! let graph = b.build().unwrap();
//! let out = compute(graph, &[Key::named("all")], &LocalScheduler::new()).unwrap();
//! assert_eq!(out[0].nbytes(), 16);
//! ```

pub mod atomic;
pub mod delayed;
pub mod error;
pub mod graph;
pub mod key;
pub mod layer;
pub mod op;
pub mod optimize;
pub mod progress;
pub mod scheduler;
pub mod value;

#[doc(hidden)]
pub use inventory;

pub use delayed::Delayed;
pub use error::{BoxError, Context, Error, Result};
pub use graph::{Graph, GraphBuilder, Task, TaskId};
pub use key::Key;
pub use layer::{Collection, Layer, compute_collections, persist_collections};
pub use op::{FnOp, FusedChain, Literal, Op};
pub use optimize::{ExecutionPlan, OptimizeOptions};
pub use progress::{ProgressBar, ProgressFn, ProgressSink};
pub use scheduler::{
    CancelToken, ComputeOptions, Execution, ExecutionContext, LocalScheduler, RunStats, Scheduler,
    SyncScheduler, TaskObserver, compute, compute_with,
};
pub use value::{BufferList, Codec, Data, FromValue, IntoValue, Local, Value, ValueList, padded8};

//! partita-array: chunked n-d arrays with dask.array semantics over ndarray chunks.
//!
//! An [`Array`] is a chunk grid, a dtype and a lazy graph; operations build graphs and
//! `compute` runs them on any partita scheduler, returning an `ndarray::ArrayD`.
//!
//! Key decisions (see ARCHITECTURE.md for the longer story):
//! - **Elementwise operations fuse while you build.** An elementwise result is an expression
//!   over its inputs ([`kernel::Program`]); another elementwise operation extends it, and it
//!   runs as one pass per chunk in cache-sized tiles when something consumes it.
//! - **Dtypes are resolved at build time** with NumPy's promotion rules; a wrong dtype or a
//!   shape that does not broadcast is an error when the expression is built, naming them.
//! - **Random numbers are counter-based**: the same seed gives the same array whatever the
//!   chunking and scheduler.
//!
//! ```
//! use partita_array::{random, DType};
//! use partita_core::LocalScheduler;
//!
//! let x = random::random(&[1000, 1000], [250, 250], 42).unwrap();
//! let y = ((&x * 2.0).unwrap() + 1.0).unwrap();
//! let values = y.compute::<f64>(&LocalScheduler::new()).unwrap();
//! assert!(values.iter().all(|&v| (1.0..3.0).contains(&v)));
//! ```

// Links OpenBLAS for ndarray's CBLAS calls (nothing is used from it by name).
#[cfg(feature = "blas")]
#[allow(unused_extern_crates)]
extern crate blas_src;

pub mod array;
pub mod chunk;
pub mod creation;
pub mod dtype;
pub mod elementwise;
pub mod filtered;
pub mod grid;
pub mod indexing;
pub mod kernel;
pub mod linalg;
pub mod map_blocks;
pub mod npy;
pub mod rechunk;
pub mod reduction;
pub mod reshape;
pub mod rng;
pub mod zarr;

pub use array::Array;
pub use chunk::{Chunk, Element};
pub use creation::{arange, eye, from_ndarray, full, linspace, ones, random, zeros};
pub use dtype::DType;
pub use elementwise::{Operand, astype, where_};
pub use filtered::{FilteredArray, FilteredOperand, Reduced};
pub use grid::{ChunkGrid, Chunks};
pub use indexing::{Index, concatenate, stack};
pub use kernel::{BinaryOp, Scalar, UnaryOp};
pub use linalg::{matmul, tensordot};
pub use map_blocks::{check_block, map_blocks, map_blocks_with};
pub use npy::read_npy;
pub use reduction::{Axes, ReduceOptions, Reduction};
pub use zarr::read_zarr;

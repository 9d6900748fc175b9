//! Arrays: every operation compared with ndarray computed directly on the same data, on
//! every scheduler.

mod creation;
mod edge_cases;
mod elementwise;
mod indexing;
mod layout;
mod linalg;
mod masking;
mod properties;
mod reduction;
mod storage;
mod zarr;

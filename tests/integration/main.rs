//! partita's integration tests: one binary, one module per area.

mod array;
mod delayed;
mod frame;
mod graph;
mod memory;
mod optimizer;
mod properties;
mod schedulers;
mod wire;

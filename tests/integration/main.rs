//! partita's integration tests: one binary, one module per area.

mod array;
mod datasets;
mod delayed;
mod distributed;
mod frame;
mod futures;
mod graph;
mod memory;
mod optimizer;
mod properties;
mod schedulers;
mod wire;

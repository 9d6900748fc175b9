//! partita-distributed: the scheduler, worker and client processes of a partita cluster,
//! moving partita-proto's decisions over QUIC (quinn + tokio).
//!
//! ```text
//!   client ──control (QUIC stream, MessagePack)──▶ scheduler ◀──control── worker A
//!     │                                                        ◀──control── worker B
//!     └──────── data (one QUIC stream per value) ──────────▶ worker A ◀──data── worker B
//! ```
//!
//! Key decisions:
//! - **The state machines decide, this crate only moves bytes.** The scheduler and each
//!   worker run one task that owns their [`partita_proto`] state and feeds it events; all
//!   placement, stealing, recomputation and spilling logic is tested there on a simulated
//!   cluster. Here: sockets, timers, the blocking pool and files.
//! - **QUIC with TLS 1.3 always on**, one connection per peer pair, multiplexing a
//!   long-lived control stream and a stream per transferred value, so a large transfer
//!   never blocks a control message. Credentials come from the [`ClusterFile`]: a
//!   self-signed certificate the scheduler makes and every peer pins, and a token every
//!   connection presents (compared in constant time).
//! - **Values move peer to peer**, encoded by their own codecs (raw little-endian buffers
//!   for array chunks, Arrow IPC for frame partitions); the scheduler never sees data, and
//!   the client gathers results straight from the workers holding them.
//! - **Ops travel as data** (`typetag` MessagePack): a worker runs any op of the crates it
//!   links (core, arrays, frames). A closure op cannot leave its process; submitting one is
//!   an error naming the task.
//! - **Failure is contained**: a wrong token, another protocol version, a malformed or
//!   oversized frame closes that one connection; a lost worker is the state machine's
//!   business (reschedule, recompute from lineage).
//! - **Monitoring is opt-in and off the task path** ([`metrics`]): `/metrics` and `/info`
//!   over plain HTTP, each answered from a snapshot the scheduler's loop takes on request.
//! - **Spill files hold the wire's split encoding** ([`spill_file`]): spilling never copies
//!   a value into one buffer first, and reading it back keeps the body as it is read.

pub mod client;
pub mod cluster_file;
pub mod dataset;
pub mod local_cluster;
pub mod metrics;
pub mod primitives;
pub mod scheduler;
pub mod spill_file;
pub mod task_context;
pub mod wire;
pub mod worker;

pub use client::{AsCompleted, Client, Future, FutureStatus, Persisted, Rebalanced, SubmitOptions};
pub use cluster_file::ClusterFile;
pub use dataset::Dataset;
pub use local_cluster::{AdaptOptions, LocalCluster, LocalClusterOptions, find_binary};
pub use partita_proto::messages::{
    AdaptiveTarget, ClusterInfo, Peer, Resources, SchedulerStats, TaskCounts, TaskRecord,
    WorkerMetrics, WorkerStatus,
};
pub use primitives::{Event, Lock, Pub, Queue, Semaphore, Sub, Variable};
pub use scheduler::{SchedulerOptions, SchedulerServer};
pub use task_context::{current_task, get_client, rejoin, secede};
pub use worker::{
    WorkerExit, WorkerOptions, local_directory, rss_of, run_worker, run_worker_until,
};

/// Make sure the op and value registrations of the array and frame crates are linked into
/// any binary using this crate (typetag and codec tables are filled by link-time
/// constructors, which a linker may drop from crates nothing else references).
pub fn link_collections() {
    std::hint::black_box(partita_array::DType::F64);
    std::hint::black_box(std::any::type_name::<partita_frame::DataFrame>());
}

//! partita-proto: the distributed scheduler's and workers' decisions as sans-IO state
//! machines, and the wire messages between them.
//!
//! This crate decides; `partita-distributed` (tokio + quinn) only moves bytes and timers.
//! [`scheduler::SchedulerState`] and [`worker::WorkerState`] take one event at a time with
//! the current [`Time`] and return the actions the runtime must perform, in the style of
//! quinn-proto and dask.distributed's `WorkerState.handle_stimulus`. [`sim`] runs them
//! together on a simulated cluster, which is how placement, stealing, worker death,
//! recomputation and spilling are tested: deterministically, in milliseconds.
//!
//! Key decisions:
//! - **Sans-IO.** No sockets, threads, clocks or async here: time comes in as an argument and
//!   timers go out as `poll_timeout()`, so every behaviour is reproducible and a test can
//!   kill a worker at an exact moment.
//! - **Keys are identity** ([`messages::TaskSpec`]): the same key submitted twice, by one
//!   client or two, is one task. Each client has a wanted set; a value lives while a client
//!   wants it or a dependent still to run reads it, and is then freed on every worker.
//! - **Root-task queuing**: tasks without dependencies (file readers, generators) are sent
//!   only when a worker has a free slot (`ceil(nthreads * 1.1)`, Dask's
//!   `worker-saturation`), so readers never run far ahead of the tasks consuming them and
//!   memory stays bounded. Other tasks go where their inputs are (bytes to move) unless the
//!   worker is much busier (queued work per thread); idle workers steal unstarted tasks.
//! - **Death is handled by lineage**: a dead worker's (closed connection or no heartbeat
//!   for `heartbeat_timeout`) running tasks are rescheduled, values only it held that are
//!   still needed are recomputed from their dependencies, and a task that was running on
//!   `allowed_failures` (3) dying workers is erred, naming its key, with its dependents.
//! - **Memory thresholds like Dask's**, as fractions of a worker's limit: spill
//!   least-recently-used values above `target` (0.6) of managed memory or `spill` (0.7) of
//!   process memory, pause new tasks above `pause` (0.8); spilled values come back on demand.
//! - **Untrusted input never panics**: malformed or oversized messages are errors naming
//!   what was wrong, and events about unknown workers, tasks or clients are ignored (logged
//!   through a returned action).
//!
//! ```
//! use partita_core::Key;
//! use partita_proto::Time;
//! use partita_proto::messages::ClientId;
//! use partita_proto::sim::{Outcome, Sim, SimConfig, tree_reduction};
//!
//! let mut sim = Sim::new(SimConfig::default()); // 4 workers, 2 threads each
//! let (tasks, root) = tree_reduction("x", 64, 4);
//! sim.submit_at(Time::ZERO, ClientId(0), tasks, vec![root.clone()]);
//! sim.run().unwrap();
//! assert_eq!(sim.report().outcomes[&(ClientId(0), root)], Outcome::InMemory);
//! ```

pub mod coordination;
pub mod messages;
mod root_queue;
pub mod scheduler;
pub mod sim;
pub mod worker;

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// Dask's moving average of task durations and sizes: half the old value, half the new
/// sample. Not a mean: a first call that imports a module (milliseconds) would weigh on a
/// mean for thousands of calls.
pub fn moving_average(old: u64, sample: u64) -> u64 {
    old / 2 + sample / 2
}

/// A point in time: microseconds since an arbitrary epoch chosen by the runtime (or the
/// simulation). The state machines never read a clock; time always comes in as an argument.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(pub u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// `ms` milliseconds after the epoch.
    pub fn from_millis(ms: u64) -> Time {
        Time(ms.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03} ms", self.0 / 1000, self.0 % 1000)
    }
}

//! Support for partita's integration tests: serializable test ops, random DAGs, a naive
//! reference evaluator, and helpers that run one graph on every scheduler.
//!
//! The reference evaluator is deliberately simple (recursion with a memo, no optimizer, no
//! threads) so that agreeing with it means something.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use partita::distributed::{Client, LocalCluster, LocalClusterOptions};
use partita::{
    ComputeOptions, Error, Graph, GraphBuilder, Key, LocalScheduler, Op, OptimizeOptions, Result,
    Scheduler, SyncScheduler, Value, compute_with,
};
use serde::{Deserialize, Serialize};

/// `salt + sum(inputs) * 31`, wrapping: cheap, deterministic, and sensitive to every input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mix {
    pub salt: i64,
}

#[typetag::serde(name = "test-mix")]
impl Op for Mix {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut acc = self.salt;
        for v in inputs {
            acc = acc.wrapping_add(v.get::<i64>()?.wrapping_mul(31));
        }
        Ok(Value::new(acc))
    }
    fn name(&self) -> &str {
        "mix"
    }
}

/// [`Mix`] after sleeping `ms` milliseconds: work long enough to kill a worker during it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowMix {
    pub salt: i64,
    pub ms: u64,
}

#[typetag::serde(name = "test-slow-mix")]
impl Op for SlowMix {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        std::thread::sleep(std::time::Duration::from_millis(self.ms));
        Mix { salt: self.salt }.execute(inputs)
    }
    fn name(&self) -> &str {
        "slow-mix"
    }
}

/// A vector of `len` f64s filled with `seed`, its index and the sum of its inputs' firsts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub len: usize,
    pub seed: f64,
}

#[typetag::serde(name = "test-blob")]
impl Op for Blob {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut base = self.seed;
        for v in inputs {
            base += v.get::<Vec<f64>>()?.first().copied().unwrap_or(0.0);
        }
        Ok(Value::new(
            (0..self.len).map(|i| base + i as f64).collect::<Vec<f64>>(),
        ))
    }
    fn name(&self) -> &str {
        "blob"
    }
}

/// The id of the process running it (`i64`): which worker ran what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessId;

#[typetag::serde(name = "test-process-id")]
impl Op for ProcessId {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        Ok(Value::new(i64::from(std::process::id())))
    }
    fn name(&self) -> &str {
        "process-id"
    }
}

/// Sleeps `ms` milliseconds and says where and when it ran: `[process id, start, end]`
/// (microseconds since the Unix epoch), so a test can see which tasks overlapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Span {
    pub ms: u64,
}

#[typetag::serde(name = "test-span")]
impl Op for Span {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let micros = || {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_micros() as i64)
        };
        let start = micros();
        std::thread::sleep(std::time::Duration::from_millis(self.ms));
        Ok(Value::new(vec![
            i64::from(std::process::id()),
            start,
            micros(),
        ]))
    }
    fn name(&self) -> &str {
        "span"
    }
}

/// Takes `bytes` of memory (every page written) for `ms` milliseconds, then returns how
/// many bytes it held: a task whose memory blows up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hog {
    pub bytes: usize,
    pub ms: u64,
}

#[typetag::serde(name = "test-hog")]
impl Op for Hog {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let mut held = vec![0u8; self.bytes];
        for page in held.chunks_mut(4096) {
            page[0] = 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(self.ms));
        let touched = held.iter().step_by(4096).filter(|b| **b == 1).count();
        Ok(Value::new((touched * 4096).min(self.bytes) as i64))
    }
    fn name(&self) -> &str {
        "hog"
    }
}

/// Element-wise sum of equally long f64 vectors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddVectors;

#[typetag::serde(name = "test-add-vectors")]
impl Op for AddVectors {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let first = inputs
            .first()
            .ok_or_else(|| Error::Graph("add needs inputs".into()))?;
        let mut out = first.get::<Vec<f64>>()?.clone();
        for v in &inputs[1..] {
            let v = v.get::<Vec<f64>>()?;
            if v.len() != out.len() {
                return Err(Error::Shape(format!(
                    "cannot add lengths {} and {}",
                    out.len(),
                    v.len()
                )));
            }
            out.iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "add-vectors"
    }
}

/// The sum of an f64 vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SumVector;

#[typetag::serde(name = "test-sum-vector")]
impl Op for SumVector {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita::op::expect_inputs("sum-vector", inputs, 1)?;
        Ok(Value::new(inputs[0].get::<Vec<f64>>()?.iter().sum::<f64>()))
    }
    fn name(&self) -> &str {
        "sum-vector"
    }
}

/// Always fails with `message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fail {
    pub message: String,
}

#[typetag::serde(name = "test-fail")]
impl Op for Fail {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        Err(Error::Type(self.message.clone()))
    }
    fn name(&self) -> &str {
        "fail"
    }
}

/// Fails its first `failures` runs (counted with files in `dir`, so runs in any worker
/// process count), then returns the number of the run that succeeded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailTimes {
    pub dir: std::path::PathBuf,
    pub failures: usize,
}

#[typetag::serde(name = "test-fail-times")]
impl Op for FailTimes {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let runs = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Type(format!("cannot list {}: {e}", self.dir.display())))?
            .count();
        let marker = self.dir.join(format!("run-{runs}"));
        std::fs::write(&marker, b"")
            .map_err(|e| Error::Type(format!("cannot write {}: {e}", marker.display())))?;
        if runs < self.failures {
            return Err(Error::Type(format!("run {runs} fails on purpose")));
        }
        Ok(Value::new(runs as i64))
    }
    fn name(&self) -> &str {
        "fail-times"
    }
}

/// Fibonacci number `n` computed by tasks that submit tasks: for `n` of 2 and more it
/// submits `n - 1` and `n - 2` through its worker's client, gives its thread back
/// (`secede`) while it waits for them, rejoins, and adds their results. Keys are
/// `task-fib-<n>`, so the two branches share their subtrees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskFib {
    pub n: u32,
}

impl TaskFib {
    pub fn key(n: u32) -> Key {
        Key::named(format!("task-fib-{n}"))
    }
}

#[typetag::serde(name = "test-task-fib")]
impl Op for TaskFib {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        use partita::distributed::{get_client, rejoin, secede};
        if self.n < 2 {
            return Ok(Value::new(i64::from(self.n)));
        }
        let client = get_client()?;
        let futures = [self.n - 1, self.n - 2]
            .map(|n| client.submit_task(TaskFib::key(n), Arc::new(TaskFib { n }), &[]));
        let [a, b] = futures;
        let (a, b) = (a?, b?);
        secede()?;
        let values = client.gather(&[a, b]);
        rejoin()?;
        let values = values?;
        Ok(Value::new(
            values[0].get::<i64>()? + values[1].get::<i64>()?,
        ))
    }
    fn name(&self) -> &str {
        "task-fib"
    }
}

/// Adds one to the number in `file` under the cluster's lock `lock`: reads it, sleeps
/// `ms`, writes it back plus one. Runs that overlap without the lock lose updates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockedIncrement {
    pub file: PathBuf,
    pub lock: String,
    pub ms: u64,
}

#[typetag::serde(name = "test-locked-increment")]
impl Op for LockedIncrement {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let client = partita::distributed::get_client()?;
        let lock = partita::distributed::Lock::new(&client, &self.lock);
        lock.acquire(None)?;
        let io = |e: std::io::Error| Error::Type(format!("{}: {e}", self.file.display()));
        let result = (|| {
            let text = std::fs::read_to_string(&self.file).map_err(io)?;
            let n: i64 = text
                .trim()
                .parse()
                .map_err(|e| Error::Type(format!("{e}")))?;
            std::thread::sleep(std::time::Duration::from_millis(self.ms));
            std::fs::write(&self.file, format!("{}", n + 1)).map_err(io)?;
            Ok(n + 1)
        })();
        lock.release()?;
        result.map(Value::new)
    }
    fn name(&self) -> &str {
        "locked-increment"
    }
}

/// Puts its input (an i64) into the cluster queue `queue` as the future of its input
/// task, waits for the event `go`, and returns the input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueAndWait {
    pub queue: String,
    pub go: String,
}

#[typetag::serde(name = "test-queue-and-wait")]
impl Op for QueueAndWait {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        use partita::distributed::{Dataset, Event, Queue, current_task};
        let client = partita::distributed::get_client()?;
        let n = *inputs[0].get::<i64>()?;
        let bytes = n.to_le_bytes().to_vec();
        let data = Dataset::Opaque {
            bytes,
            futures: Vec::new(),
        };
        Queue::new(&client, &self.queue).put(&data)?;
        partita::distributed::secede()?;
        let set = Event::new(&client, &self.go).wait(Some(std::time::Duration::from_secs(60)))?;
        partita::distributed::rejoin()?;
        if !set {
            return Err(Error::Type(format!(
                "{:?}: event never set",
                current_task()
            )));
        }
        Ok(Value::new(n))
    }
    fn name(&self) -> &str {
        "queue-and-wait"
    }
}

/// Returns `n` at once, or, with `ask`, the number of workers its worker's client sees:
/// quick runs teach a worker to run the kind on its event loop, where asking for the
/// client must still work (the run moves to a thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaybeAsk {
    pub n: i64,
    pub ask: bool,
}

#[typetag::serde(name = "test-maybe-ask")]
impl Op for MaybeAsk {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        if !self.ask {
            return Ok(Value::new(self.n));
        }
        let client = partita::distributed::get_client()?;
        Ok(Value::new(client.workers()?.len() as i64))
    }
    fn name(&self) -> &str {
        "maybe-ask"
    }
}

/// The key of the task running this op, as the worker says (`current_task`), or "none".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentTask;

#[typetag::serde(name = "test-current-task")]
impl Op for CurrentTask {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        let key = partita::distributed::current_task();
        Ok(Value::new(
            key.map_or("none".to_string(), |k| k.to_string()),
        ))
    }
    fn name(&self) -> &str {
        "current-task"
    }
}

/// Always panics with `message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panic {
    pub message: String,
}

#[typetag::serde(name = "test-panic")]
impl Op for Panic {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        panic!("{}", self.message)
    }
    fn name(&self) -> &str {
        "panic"
    }
}

/// A DAG described by plain data, so proptest can generate and shrink it.
#[derive(Debug, Clone)]
pub struct DagSpec {
    /// `deps[i]` lists earlier task indices (repeats allowed).
    pub deps: Vec<Vec<usize>>,
    /// Indices of requested outputs (repeats allowed).
    pub outputs: Vec<usize>,
}

impl DagSpec {
    /// The key of task `i`.
    pub fn key(i: usize) -> Key {
        Key::new("t", [i as u32])
    }

    /// Build the graph, adding tasks in reverse so dependencies are named before they exist.
    pub fn graph(&self) -> Graph {
        let mut b = GraphBuilder::new();
        for i in (0..self.deps.len()).rev() {
            let deps: Vec<Key> = self.deps[i].iter().map(|&d| DagSpec::key(d)).collect();
            b.add_task(DagSpec::key(i), Arc::new(Mix { salt: i as i64 + 1 }), &deps);
        }
        b.build().expect("generated DAGs are valid")
    }

    /// Output keys.
    pub fn output_keys(&self) -> Vec<Key> {
        self.outputs.iter().map(|&i| DagSpec::key(i)).collect()
    }

    /// The reference: evaluate each output by plain recursion with a memo.
    pub fn reference(&self) -> Vec<i64> {
        fn eval(spec: &DagSpec, i: usize, memo: &mut HashMap<usize, i64>) -> i64 {
            if let Some(&v) = memo.get(&i) {
                return v;
            }
            let mut acc = i as i64 + 1;
            for &d in &spec.deps[i] {
                acc = acc.wrapping_add(eval(spec, d, memo).wrapping_mul(31));
            }
            memo.insert(i, acc);
            acc
        }
        let mut memo = HashMap::new();
        self.outputs
            .iter()
            .map(|&o| eval(self, o, &mut memo))
            .collect()
    }
}

/// Make sure this crate's ops (and the array and frame crates') are linked into a binary
/// (the test worker), whose typetag tables are filled by link-time constructors.
pub fn link() {
    partita::distributed::link_collections();
    std::hint::black_box(Mix { salt: 0 });
}

/// The schedulers every semantic test runs on: sync, local with 1 and 4 threads, and a
/// cluster of two worker processes on this machine (see [`cluster`]).
pub fn schedulers() -> Vec<Box<dyn Scheduler>> {
    let mut list = local_schedulers();
    if let Some(client) = cluster() {
        list.push(Box::new(client));
    }
    list
}

/// The in-process schedulers only, for graphs holding closures (which cannot leave the
/// process).
pub fn local_schedulers() -> Vec<Box<dyn Scheduler>> {
    vec![
        Box::new(SyncScheduler),
        Box::new(LocalScheduler::with_threads(1)),
        Box::new(LocalScheduler::with_threads(4)),
    ]
}

/// The test binary's shared cluster: a scheduler and two workers (two threads each) run by
/// the `partita-test-worker` binary of this crate, started on first use. `None` when
/// `PARTITA_TEST_DISTRIBUTED=0`. The processes exit with the test binary (they watch a
/// pipe from it), however it ends.
pub fn cluster() -> Option<&'static Client> {
    shared_cluster().map(|(_, client)| client)
}

/// Another client of the shared cluster (see [`cluster`]), for tests of what one client
/// leaves to another; it disconnects when dropped.
pub fn another_client() -> Option<Client> {
    shared_cluster().map(|(cluster, _)| {
        (cluster.client()).unwrap_or_else(|e| panic!("cannot connect a second client: {e}"))
    })
}

fn shared_cluster() -> Option<&'static (LocalCluster, Client)> {
    static CLUSTER: OnceLock<Option<(LocalCluster, Client)>> = OnceLock::new();
    let entry = CLUSTER.get_or_init(|| {
        if std::env::var("PARTITA_TEST_DISTRIBUTED").is_ok_and(|v| v == "0") {
            return None;
        }
        let options = LocalClusterOptions {
            n_workers: 2,
            threads_per_worker: 2,
            binary: Some(test_worker_binary()),
            ..LocalClusterOptions::default()
        };
        let cluster = LocalCluster::start(options)
            .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        remove_at_exit(cluster.dir());
        let client = (cluster.client()).unwrap_or_else(|e| panic!("cannot connect: {e}"));
        Some((cluster, client))
    });
    entry.as_ref()
}

/// A static is never dropped, so the shared cluster's folder (cluster file with its token,
/// logs) would outlive the test binary, one per test process under nextest: remove it when
/// the process exits. Its processes exit then too (they watch a pipe from this process);
/// those still writing a log line write to an unlinked file.
fn remove_at_exit(dir: &Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: `remove` is a plain function that cannot unwind (it ignores the one
        // error it can meet) and reads a static that lives until the process ends.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(remove);
        }
    }
}

/// `$PARTITA_TEST_WORKER`, else `partita-test-worker` next to the running test binary (or
/// one folder up, from `target/*/deps`).
pub fn test_worker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PARTITA_TEST_WORKER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    (exe.ancestors().skip(1).take(2))
        .map(|dir| dir.join("partita-test-worker"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "partita-test-worker is not built next to {}; build it with \
                 `cargo build -p partita-tests --bins` or set PARTITA_TEST_WORKER",
                exe.display()
            )
        })
}

/// Compute on every scheduler, with and without optimization; all must agree, and the
/// values of the first run are returned.
pub fn compute_everywhere(graph: &Graph, outputs: &[Key]) -> Result<Vec<Value>> {
    let mut first: Option<Vec<Value>> = None;
    for scheduler in schedulers() {
        for (cull, fuse) in [(true, true), (false, false), (true, false)] {
            let options = ComputeOptions {
                optimize: OptimizeOptions { cull, fuse },
                ..Default::default()
            };
            let values = compute_with(graph.clone(), outputs, scheduler.as_ref(), &options)?.values;
            match &first {
                None => first = Some(values),
                Some(f) => {
                    let a: Vec<String> = f.iter().map(|v| format!("{v:?}")).collect();
                    let b: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
                    assert_eq!(
                        a,
                        b,
                        "scheduler {} (cull={cull}, fuse={fuse}) disagrees",
                        scheduler.name()
                    );
                }
            }
        }
    }
    Ok(first.unwrap_or_default())
}

/// The i64s inside values.
pub fn as_i64s(values: &[Value]) -> Vec<i64> {
    values
        .iter()
        .map(|v| *v.get::<i64>().expect("an i64 value"))
        .collect()
}

/// Compute `array` on every scheduler and compare with `expected` (same shape, dtype and
/// values; floats within `rtol` relative / `rtol` absolute, NaN equal to NaN).
pub fn assert_array_eq<T>(array: &partita::array::Array, expected: &ndarray::ArrayD<T>, rtol: f64)
where
    T: partita::array::Element + ApproxEq,
{
    assert_eq!(array.shape(), expected.shape(), "shape of {array:?}");
    assert_eq!(array.dtype(), T::DTYPE, "dtype of {array:?}");
    for scheduler in schedulers() {
        let got = match array.compute::<T>(scheduler.as_ref()) {
            Err(e) if refused_closure(scheduler.as_ref(), &e) => continue,
            got => {
                got.unwrap_or_else(|e| panic!("computing {array:?} on {}: {e}", scheduler.name()))
            }
        };
        assert_eq!(got.shape(), expected.shape());
        for (i, (g, e)) in got.iter().zip(expected.iter()).enumerate() {
            assert!(
                g.approx_eq(*e, rtol),
                "{array:?} on {}: element {i} is {g:?}, expected {e:?}",
                scheduler.name()
            );
        }
    }
}

/// Graphs holding Rust closures (`map_blocks`, `map_partitions` with a closure) cannot go to
/// a cluster: there the comparison helpers accept only the refusal that says so.
fn refused_closure(scheduler: &dyn Scheduler, error: &Error) -> bool {
    let text = error.to_string();
    scheduler.name() == "distributed"
        && text.contains("cannot run on a cluster")
        && text.contains("is a Rust closure")
}

/// Equality within a tolerance for floats, exact otherwise.
pub trait ApproxEq: Copy + std::fmt::Debug {
    /// Whether `self` is close enough to `other`.
    fn approx_eq(self, other: Self, rtol: f64) -> bool;
}

macro_rules! exact_eq {
    ($($t:ty),*) => {$(
        impl ApproxEq for $t {
            fn approx_eq(self, other: Self, _rtol: f64) -> bool {
                self == other
            }
        }
    )*};
}
exact_eq!(bool, u8, i32, i64);

macro_rules! float_eq {
    ($($t:ty),*) => {$(
        impl ApproxEq for $t {
            fn approx_eq(self, other: Self, rtol: f64) -> bool {
                let (a, b) = (self as f64, other as f64);
                (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= rtol * (1.0 + b.abs())
            }
        }
    )*};
}
float_eq!(f32, f64);

/// Compute `frame` on every scheduler and compare with `expected` (polars run directly on
/// the same data): same schema, same rows. When `sort_by` is not empty both sides are
/// sorted by those columns first (for results whose row order is not defined). Floats are
/// equal within `rtol`, nulls equal nulls, NaN equals NaN.
pub fn assert_frame_eq(
    frame: &partita::frame::DataFrame,
    expected: &partita::frame::polars::prelude::DataFrame,
    sort_by: &[&str],
    rtol: f64,
) {
    assert_eq!(
        frame.schema().as_ref(),
        expected.schema().as_ref(),
        "schema known before computing"
    );
    for scheduler in schedulers() {
        let got = match frame.compute(scheduler.as_ref()) {
            Err(e) if refused_closure(scheduler.as_ref(), &e) => continue,
            got => {
                got.unwrap_or_else(|e| panic!("computing {frame:?} on {}: {e}", scheduler.name()))
            }
        };
        assert_polars_eq(&got, expected, sort_by, rtol, scheduler.name());
    }
}

/// Compare two polars frames as [`assert_frame_eq`] does.
pub fn assert_polars_eq(
    got: &partita::frame::polars::prelude::DataFrame,
    expected: &partita::frame::polars::prelude::DataFrame,
    sort_by: &[&str],
    rtol: f64,
    context: &str,
) {
    use partita::frame::polars::prelude::*;
    let sort = |df: &DataFrame| -> DataFrame {
        if sort_by.is_empty() {
            df.clone()
        } else {
            df.sort(
                sort_by.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .expect("sorting for comparison")
        }
    };
    let (got, expected) = (sort(got), sort(expected));
    assert_eq!(got.schema(), expected.schema(), "{context}: schema");
    assert_eq!(
        got.height(),
        expected.height(),
        "{context}: rows\ngot {got}\nexpected {expected}"
    );
    for (g, e) in got.columns().iter().zip(expected.columns()) {
        let name = e.name();
        if e.dtype().is_float() {
            let g = g.cast(&DataType::Float64).expect("cast");
            let e = e.cast(&DataType::Float64).expect("cast");
            let (g, e) = (g.f64().expect("f64"), e.f64().expect("f64"));
            for (i, (a, b)) in g.iter().zip(e.iter()).enumerate() {
                let ok = match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        (a.is_nan() && b.is_nan())
                            || a == b
                            || (a - b).abs() <= rtol * (1.0 + b.abs())
                    }
                    _ => false,
                };
                assert!(
                    ok,
                    "{context}: column {name:?} row {i}: got {a:?}, expected {b:?}"
                );
            }
        } else {
            assert!(
                g.as_materialized_series()
                    .equals_missing(e.as_materialized_series()),
                "{context}: column {name:?} differs\ngot {got}\nexpected {expected}"
            );
        }
    }
}

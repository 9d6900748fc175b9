//! `partita._partita`: the Rust half of partita's Python package.
//!
//! Key decisions:
//! - **Thin and explicit.** This module exposes partita's Rust API nearly one to one
//!   (`RustArray`, `RustFrame` and creation functions taking plain arguments); the
//!   pure-Python package on top gives it NumPy's and polars' manners (operators, slicing
//!   syntax, reprs, `compute(scheduler=...)`). Everything that decides or computes is Rust.
//! - **Polars objects cross through pyo3-polars**: `polars.Expr` and `polars.DataFrame` in,
//!   `polars.DataFrame` out (a `LazyFrame` does not cross: its plan format differs between
//!   Python polars and Rust polars).
//! - **Compute runs with the GIL released, on another thread**, while the calling thread
//!   wakes every 50 ms to check for Ctrl-C; an interrupt cancels the run through its
//!   `CancelToken` and raises `KeyboardInterrupt` once the workers have stopped.
//! - **Errors keep their kind**: each `partita::Error` kind maps to its own exception class
//!   under `partita.PartitaError` (a task's failure maps by its root cause), message intact.
//! - **Python functions run where Python is**: `map_blocks`/`map_partitions` kernels,
//!   `client.submit` calls and `pt.delayed` tasks are serializable ops (`pycall.rs`) that
//!   take the GIL per call: locally they call the function object, on a cluster it travels
//!   cloudpickled to workers started by `python -m partita worker`.

mod datasets;
mod filtered;
mod futures;
mod pycall;
mod threadstate;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use partita::array::{self as pa, Array, Axes, Chunk, Chunks, DType, Index, Operand, Scalar};
use partita::distributed::{Client, LocalCluster, LocalClusterOptions};
use partita::frame::{self as pf, CsvOptions, DataFrame, How, ParquetOptions, SortOptions};
use partita::{
    CancelToken, ComputeOptions, LocalScheduler, ProgressSink, Scheduler, SyncScheduler,
};
use polars::prelude::{DataFrame as PlFrame, Expr, PolarsError};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyList, PyTuple};
use pyo3_polars::{PyDataFrame, PyExpr};

/// Rust allocations of this extension (chunks, partitions) go through mimalloc; Python's
/// and NumPy's own allocations are unaffected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _partita,
    PartitaError,
    PyException,
    "Base class of partita's errors."
);
create_exception!(
    _partita,
    GraphError,
    PartitaError,
    "A malformed task graph."
);
create_exception!(
    _partita,
    ShapeError,
    PartitaError,
    "Shapes, chunks or partition counts that do not fit."
);
create_exception!(
    _partita,
    SchemaError,
    PartitaError,
    "A missing column or a schema mismatch."
);
create_exception!(
    _partita,
    DTypeError,
    PartitaError,
    "A dtype that an operation cannot take."
);
create_exception!(
    _partita,
    ComputeError,
    PartitaError,
    "A task failed or panicked."
);
create_exception!(
    _partita,
    PartitaIOError,
    PartitaError,
    "Reading or writing a file failed."
);
create_exception!(
    _partita,
    CodecError,
    PartitaError,
    "A value or graph could not be encoded or decoded."
);
create_exception!(
    _partita,
    TransportError,
    PartitaError,
    "The network failed."
);
create_exception!(
    _partita,
    AuthError,
    PartitaError,
    "A cluster refused the credentials."
);
create_exception!(
    _partita,
    CancelledError,
    PartitaError,
    "The computation was cancelled."
);
create_exception!(
    _partita,
    PartitaNotImplementedError,
    PartitaError,
    "Not implemented yet."
);
create_exception!(_partita, InternalError, PartitaError, "A bug in partita.");

/// The Python exception for a partita error, by the kind of its root cause.
pub(crate) fn to_py(e: partita::Error) -> PyErr {
    use partita::Error as E;
    let message = e.to_string();
    let kind = match &e {
        E::Panic { .. } => return ComputeError::new_err(message),
        other => other.root_cause(),
    };
    match kind {
        E::MissingDependency { .. }
        | E::Cycle { .. }
        | E::DuplicateKey { .. }
        | E::KeyNotFound { .. }
        | E::Graph(_) => GraphError::new_err(message),
        E::Shape(_) => ShapeError::new_err(message),
        E::Schema(_) => SchemaError::new_err(message),
        E::Type(_) => DTypeError::new_err(message),
        E::Io { .. } => PartitaIOError::new_err(message),
        E::Codec(_) => CodecError::new_err(message),
        E::Transport(_) => TransportError::new_err(message),
        E::Auth(_) => AuthError::new_err(message),
        E::Cancelled => CancelledError::new_err(message),
        E::NotImplemented(_) => PartitaNotImplementedError::new_err(message),
        E::Internal(_) => InternalError::new_err(message),
        _ => ComputeError::new_err(message),
    }
}

/// `Result` into `PyResult`.
trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for partita::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// What a Python `scheduler=` argument may be: a name or a `Client`.
#[derive(FromPyObject)]
enum SchedulerArg {
    Client(Py<PyClient>),
    Name(String),
}

/// The scheduler a Python `scheduler=` argument names.
fn scheduler(
    arg: Option<SchedulerArg>,
    num_workers: Option<usize>,
) -> PyResult<Box<dyn Scheduler>> {
    let name = match arg {
        // The client is shared: it stays usable while this computation runs.
        Some(SchedulerArg::Client(c)) => return Ok(Box::new(c.get().client()?)),
        Some(SchedulerArg::Name(n)) => Some(n),
        None => None,
    };
    Ok(match name.as_deref().unwrap_or("threads") {
        "sync" | "synchronous" | "single-threaded" => Box::new(SyncScheduler),
        "threads" | "threading" | "local" => match num_workers {
            Some(n) if n > 0 => Box::new(LocalScheduler::with_threads(n)),
            _ => Box::new(LocalScheduler::new()),
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown scheduler {other:?}; use \"sync\", \"threads\" or a Client"
            )));
        }
    })
}

/// Progress reported to a Python callable `callback(done, total)` (taking the GIL per call;
/// schedulers report about a thousand times per run). A failing callback is ignored.
struct PythonProgress(Py<PyAny>);

impl ProgressSink for PythonProgress {
    fn advanced(&self, done: usize, total: usize) {
        Python::attach(|py| {
            let _ = self.0.call1(py, (done, total));
        });
    }
    fn finished(&self, done: usize, total: usize, _ok: bool) {
        self.advanced(done, total);
    }
}

/// Run `work` on another thread with the GIL released, checking for Ctrl-C meanwhile;
/// progress goes to `progress(done, total)` when given.
fn run_interruptible<T: Send>(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&ComputeOptions) -> partita::Result<T> + Send,
) -> PyResult<T> {
    let cancel = CancelToken::new();
    let mut options = ComputeOptions::default();
    options.context.cancel = cancel.clone();
    options.context.progress =
        progress.map(|p| Arc::new(PythonProgress(p)) as Arc<dyn ProgressSink>);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        // The receiver is used with the GIL released, which needs it `Sync`.
        let rx = std::sync::Mutex::new(rx);
        let receive = |timeout: Option<Duration>| {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match timeout {
                Some(t) => rx.recv_timeout(t),
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            }
        };
        let options = &options;
        scope.spawn(move || {
            // Give back the Python thread state its Python tasks kept before the caller,
            // holding the GIL, waits for this thread to end (a panic included: the guard
            // goes before `tx`, whose drop wakes the caller).
            let give_back = threadstate::GiveBack;
            let result = work(options);
            drop(give_back);
            let _ = tx.send(result);
        });
        loop {
            match py.detach(|| receive(Some(Duration::from_millis(50)))) {
                Ok(result) => return result.py_err(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(InternalError::new_err("the compute thread vanished"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(interrupt) = py.check_signals() {
                        cancel.cancel();
                        // Wait for the workers to stop before raising.
                        let _ = py.detach(|| receive(None));
                        return Err(interrupt);
                    }
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Arrays

fn dtype(name: &str) -> PyResult<DType> {
    DType::parse(name).ok_or_else(|| {
        DTypeError::new_err(format!(
            "unsupported dtype {name:?}; partita arrays hold bool, uint8, int32, int64, float32 or float64"
        ))
    })
}

/// `"auto"`, an int, a list of ints (per axis) or a list of lists (explicit sizes).
fn chunks(spec: &Bound<'_, PyAny>) -> PyResult<Chunks> {
    if spec.is_none() {
        return Ok(Chunks::Auto);
    }
    if let Ok(s) = spec.extract::<String>() {
        return match s.as_str() {
            "auto" => Ok(Chunks::Auto),
            other => Err(PyValueError::new_err(format!("unknown chunks {other:?}"))),
        };
    }
    if let Ok(n) = spec.extract::<usize>() {
        return Ok(Chunks::Size(n));
    }
    if let Ok(per_axis) = spec.extract::<Vec<usize>>() {
        return Ok(Chunks::Shape(per_axis));
    }
    if let Ok(explicit) = spec.extract::<Vec<Vec<usize>>>() {
        return Ok(Chunks::Explicit(explicit));
    }
    Err(PyTypeError::new_err(
        "chunks must be \"auto\", an int, a tuple of ints or a tuple of tuples of ints",
    ))
}

fn scalar(value: &Bound<'_, PyAny>) -> Option<Scalar> {
    if value.is_instance_of::<PyBool>() {
        return value.extract::<bool>().ok().map(Scalar::Bool);
    }
    if value.is_instance_of::<PyInt>() {
        return value.extract::<i64>().ok().map(Scalar::Int);
    }
    if value.is_instance_of::<PyFloat>() {
        return value.extract::<f64>().ok().map(Scalar::Float);
    }
    // NumPy scalars and 0-d arrays.
    if let Ok(item) = value.call_method0("item")
        && !item.is(value)
    {
        return scalar(&item);
    }
    None
}

fn operand(value: &Bound<'_, PyAny>) -> PyResult<Operand> {
    if let Ok(a) = value.cast::<RustArray>() {
        return Ok(Operand::Array(a.get().0.clone()));
    }
    if value.cast::<filtered::RustFilteredArray>().is_ok() {
        return Err(to_py(pa::filtered::unknown_chunks(
            "an operation of an array with known chunks and a boolean-mask selection",
        )));
    }
    scalar(value).map(Operand::Scalar).ok_or_else(|| {
        PyTypeError::new_err(format!(
            "cannot combine a partita array with {}",
            value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

fn binary_op(name: &str) -> PyResult<pa::BinaryOp> {
    use pa::BinaryOp as B;
    Ok(match name {
        "add" => B::Add,
        "sub" => B::Sub,
        "mul" => B::Mul,
        "truediv" => B::Div,
        "floordiv" => B::FloorDiv,
        "mod" => B::Rem,
        "pow" => B::Pow,
        "minimum" => B::Minimum,
        "maximum" => B::Maximum,
        "eq" => B::Eq,
        "ne" => B::Ne,
        "lt" => B::Lt,
        "le" => B::Le,
        "gt" => B::Gt,
        "ge" => B::Ge,
        "and" => B::And,
        "or" => B::Or,
        "xor" => B::Xor,
        "arctan2" => B::Atan2,
        "hypot" => B::Hypot,
        other => return Err(PyValueError::new_err(format!("unknown operator {other:?}"))),
    })
}

fn unary_op(name: &str) -> PyResult<pa::UnaryOp> {
    use pa::UnaryOp as U;
    Ok(match name {
        "negative" => U::Neg,
        "abs" | "absolute" => U::Abs,
        "sign" => U::Sign,
        "square" => U::Square,
        "logical_not" | "invert" => U::Not,
        "exp" => U::Exp,
        "expm1" => U::Expm1,
        "log" => U::Log,
        "log1p" => U::Log1p,
        "log2" => U::Log2,
        "log10" => U::Log10,
        "sqrt" => U::Sqrt,
        "sin" => U::Sin,
        "cos" => U::Cos,
        "tan" => U::Tan,
        "arcsin" => U::Arcsin,
        "arccos" => U::Arccos,
        "arctan" => U::Arctan,
        "sinh" => U::Sinh,
        "cosh" => U::Cosh,
        "tanh" => U::Tanh,
        "floor" => U::Floor,
        "ceil" => U::Ceil,
        "round" => U::Round,
        "trunc" => U::Trunc,
        "isnan" => U::IsNan,
        "isinf" => U::IsInf,
        "isfinite" => U::IsFinite,
        other => return Err(PyValueError::new_err(format!("unknown function {other:?}"))),
    })
}

/// A lazy chunked array (wrapped by `partita.Array`).
#[pyclass(module = "partita._partita", frozen)]
struct RustArray(Array);

fn wrap(a: partita::Result<Array>) -> PyResult<RustArray> {
    a.map(RustArray).py_err()
}

/// A computed chunk as a NumPy array (the buffer moves when the chunk is not shared).
fn chunk_to_numpy(py: Python<'_>, chunk: Chunk) -> Py<PyAny> {
    match chunk {
        Chunk::Bool(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
        Chunk::U8(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
        Chunk::I32(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
        Chunk::I64(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
        Chunk::F32(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
        Chunk::F64(a) => a.into_owned().into_pyarray(py).into_any().unbind(),
    }
}

#[pymethods]
impl RustArray {
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.0.shape().to_vec()
    }
    #[getter]
    fn chunks(&self) -> Vec<Vec<usize>> {
        self.0.chunks().to_vec()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.0.dtype().name()
    }
    #[getter]
    fn npartitions(&self) -> usize {
        self.0.npartitions()
    }
    #[getter]
    fn nbytes(&self) -> usize {
        self.0.nbytes()
    }
    #[getter]
    fn name(&self) -> String {
        self.0.name().to_string()
    }

    /// `op(self, other)`, or `op(other, self)` when `reflected`.
    #[pyo3(signature = (op, other, reflected = false))]
    fn binary(&self, op: &str, other: &Bound<'_, PyAny>, reflected: bool) -> PyResult<RustArray> {
        let op = binary_op(op)?;
        let other = operand(other)?;
        let this = Operand::Array(self.0.clone());
        wrap(if reflected {
            pa::elementwise::binary(op, other, this)
        } else {
            pa::elementwise::binary(op, this, other)
        })
    }

    fn unary(&self, op: &str) -> PyResult<RustArray> {
        wrap(pa::elementwise::unary(unary_op(op)?, &self.0))
    }

    fn astype(&self, dtype_name: &str) -> PyResult<RustArray> {
        wrap(self.0.astype(dtype(dtype_name)?))
    }

    fn clip(&self, low: &Bound<'_, PyAny>, high: &Bound<'_, PyAny>) -> PyResult<RustArray> {
        wrap(self.0.clip(operand(low)?, operand(high)?))
    }

    /// A reduction by name over `axis` (None for all).
    #[pyo3(signature = (name, axis = None, keepdims = false, split_every = None, ddof = 0))]
    fn reduce(
        &self,
        name: &str,
        axis: Option<Vec<isize>>,
        keepdims: bool,
        split_every: Option<usize>,
        ddof: u32,
    ) -> PyResult<RustArray> {
        let axes = axis.map_or(Axes::All, Axes::These);
        let options = reduce_options(keepdims, split_every);
        let reduction = reduction_by_name(name, ddof)?;
        wrap(pa::reduction::reduce(&self.0, reduction, axes, options))
    }

    #[pyo3(signature = (name, axis = None, keepdims = false, split_every = None))]
    fn argreduce(
        &self,
        name: &str,
        axis: Option<isize>,
        keepdims: bool,
        split_every: Option<usize>,
    ) -> PyResult<RustArray> {
        let options = reduce_options(keepdims, split_every);
        match name {
            "argmin" => wrap(self.0.argmin_with(axis, options)),
            "argmax" => wrap(self.0.argmax_with(axis, options)),
            other => Err(PyValueError::new_err(format!(
                "unknown reduction {other:?}"
            ))),
        }
    }

    /// Basic indexing: a list of `("at", i)`, `("slice", start, stop, step)`, `("full",)`
    /// and `("newaxis",)` items, one per indexed axis (the Python side parses the syntax).
    fn index(&self, items: &Bound<'_, PyList>) -> PyResult<RustArray> {
        let mut index = Vec::with_capacity(items.len());
        for item in items.iter() {
            let item = item.cast::<PyTuple>()?;
            let kind: String = item.get_item(0)?.extract()?;
            index.push(match kind.as_str() {
                "at" => Index::At(item.get_item(1)?.extract()?),
                "slice" => Index::Slice {
                    start: item.get_item(1)?.extract()?,
                    stop: item.get_item(2)?.extract()?,
                    step: item.get_item(3)?.extract()?,
                },
                "full" => Index::Full,
                "newaxis" => Index::NewAxis,
                other => return Err(PyValueError::new_err(format!("unknown index {other:?}"))),
            });
        }
        wrap(self.0.index(&index))
    }

    fn take(&self, indices: Vec<i64>, axis: usize) -> PyResult<RustArray> {
        wrap(self.0.take(&indices, axis))
    }

    #[pyo3(signature = (axes = None))]
    fn transpose(&self, axes: Option<Vec<usize>>) -> PyResult<RustArray> {
        wrap(self.0.transpose(axes.as_deref()))
    }

    fn swapaxes(&self, a: usize, b: usize) -> PyResult<RustArray> {
        wrap(self.0.swapaxes(a, b))
    }

    fn reshape(&self, shape: Vec<isize>) -> PyResult<RustArray> {
        wrap(self.0.reshape(&shape))
    }

    fn rechunk(&self, spec: &Bound<'_, PyAny>) -> PyResult<RustArray> {
        wrap(self.0.rechunk(chunks(spec)?))
    }

    /// `self[mask]` for a bool array over the leading axes: chunk sizes become unknown.
    fn mask(&self, mask: &RustArray) -> PyResult<filtered::RustFilteredArray> {
        self.0
            .mask(&mask.0)
            .map(filtered::RustFilteredArray)
            .py_err()
    }

    fn matmul(&self, other: &RustArray) -> PyResult<RustArray> {
        wrap(self.0.matmul(&other.0))
    }

    /// Compute into a NumPy array.
    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn compute(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        let chunk = run_interruptible(py, progress, |o| array.compute_chunk_with(s.as_ref(), o))?;
        Ok(chunk_to_numpy(py, chunk))
    }

    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn persist(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<RustArray> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        run_interruptible(py, progress, |o| array.persist_with(s.as_ref(), o)).map(RustArray)
    }

    /// Write to a Zarr v3 array at `path`, block by block, renamed into place at the end.
    #[pyo3(signature = (path, scheduler = None, num_workers = None, progress = None))]
    fn to_zarr(
        &self,
        py: Python<'_>,
        path: &str,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let s = self::scheduler(scheduler, num_workers)?;
        let array = self.0.clone();
        run_interruptible(py, progress, |_| array.to_zarr(path, s.as_ref()))
    }

    /// The task graph as Graphviz DOT text.
    fn dot(&self) -> PyResult<String> {
        use partita::Collection;
        graph_dot(self.0.layer())
    }

    /// The number of tasks in the array's graph.
    fn graph_size(&self) -> PyResult<usize> {
        use partita::Collection;
        partita::Layer::materialize(&[Arc::clone(self.0.layer())])
            .map(|g| g.len())
            .py_err()
    }
}

/// A reduction by its NumPy name.
fn reduction_by_name(name: &str, ddof: u32) -> PyResult<pa::Reduction> {
    Ok(match name {
        "sum" => pa::Reduction::Sum,
        "prod" => pa::Reduction::Prod,
        "mean" => pa::Reduction::Mean,
        "min" => pa::Reduction::Min,
        "max" => pa::Reduction::Max,
        "any" => pa::Reduction::Any,
        "all" => pa::Reduction::All,
        "var" => pa::Reduction::Var { ddof },
        "std" => pa::Reduction::Std { ddof },
        "argmin" => pa::Reduction::ArgMin,
        "argmax" => pa::Reduction::ArgMax,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown reduction {other:?}"
            )));
        }
    })
}

/// Python's `keepdims=` and `split_every=` (None: the default fan-in).
fn reduce_options(keepdims: bool, split_every: Option<usize>) -> pa::ReduceOptions {
    let defaults = pa::ReduceOptions::default();
    pa::ReduceOptions {
        keepdims,
        split_every: split_every.unwrap_or(defaults.split_every),
    }
}

/// A NumPy array as a partita array (its data copied into the graph).
#[pyfunction]
fn from_numpy(array: &Bound<'_, PyUntypedArray>, spec: &Bound<'_, PyAny>) -> PyResult<RustArray> {
    let chunks = chunks(spec)?;
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if let Ok(a) = array.cast::<PyArrayDyn<$t>>() {
                // Blocks are copied straight out of NumPy's buffer (no whole copy first).
                return wrap(pa::from_ndarray(a.readonly().as_array(), chunks));
            }
        )*};
    }
    try_dtype!(f64, f32, i64, i32, u8, bool);
    Err(DTypeError::new_err(format!(
        "unsupported NumPy dtype {}; partita arrays hold bool, uint8, int32, int64, float32 or float64",
        array.dtype()
    )))
}

#[pyfunction]
#[pyo3(signature = (shape, value, dtype_name, spec))]
fn full(
    shape: Vec<usize>,
    value: &Bound<'_, PyAny>,
    dtype_name: &str,
    spec: &Bound<'_, PyAny>,
) -> PyResult<RustArray> {
    let value = scalar(value).ok_or_else(|| PyTypeError::new_err("fill value must be a number"))?;
    wrap(pa::full(&shape, value, dtype(dtype_name)?, chunks(spec)?))
}

#[pyfunction]
fn arange(
    start: f64,
    stop: f64,
    step: f64,
    dtype_name: &str,
    spec: &Bound<'_, PyAny>,
) -> PyResult<RustArray> {
    wrap(pa::arange(
        start,
        stop,
        step,
        dtype(dtype_name)?,
        chunks(spec)?,
    ))
}

#[pyfunction]
fn linspace(
    start: f64,
    stop: f64,
    num: usize,
    endpoint: bool,
    dtype_name: &str,
    spec: &Bound<'_, PyAny>,
) -> PyResult<RustArray> {
    let a = pa::linspace(start, stop, num, endpoint, chunks(spec)?).py_err()?;
    wrap(a.astype(dtype(dtype_name)?))
}

#[pyfunction]
fn eye(
    n: usize,
    m: usize,
    k: i64,
    dtype_name: &str,
    spec: &Bound<'_, PyAny>,
) -> PyResult<RustArray> {
    wrap(pa::eye(n, Some(m), k, dtype(dtype_name)?, chunks(spec)?))
}

/// A Zarr v3 array on disk, read lazily (its own chunks unless `spec` says others).
#[pyfunction]
#[pyo3(signature = (path, spec = None))]
fn read_zarr(path: &str, spec: Option<&Bound<'_, PyAny>>) -> PyResult<RustArray> {
    let chunks = match spec {
        Some(c) if !c.is_none() => Some(chunks(c)?),
        _ => None,
    };
    wrap(pa::read_zarr(path, chunks))
}

#[pyfunction]
fn random_uniform(
    shape: Vec<usize>,
    low: f64,
    high: f64,
    spec: &Bound<'_, PyAny>,
    seed: u64,
) -> PyResult<RustArray> {
    wrap(pa::random::uniform(&shape, low, high, chunks(spec)?, seed))
}

#[pyfunction]
fn random_normal(
    shape: Vec<usize>,
    mean: f64,
    std: f64,
    spec: &Bound<'_, PyAny>,
    seed: u64,
) -> PyResult<RustArray> {
    wrap(pa::random::normal(&shape, mean, std, chunks(spec)?, seed))
}

#[pyfunction]
fn random_integers(
    shape: Vec<usize>,
    low: i64,
    high: i64,
    spec: &Bound<'_, PyAny>,
    seed: u64,
) -> PyResult<RustArray> {
    wrap(pa::random::integers(&shape, low, high, chunks(spec)?, seed))
}

#[pyfunction]
fn where_(
    condition: &RustArray,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<RustArray> {
    wrap(pa::where_(&condition.0, operand(a)?, operand(b)?))
}

fn arrays(list: &Bound<'_, PyList>) -> PyResult<Vec<Array>> {
    list.iter()
        .map(|a| {
            if a.cast::<filtered::RustFilteredArray>().is_ok() {
                return Err(to_py(pa::filtered::unknown_chunks(
                    "joining a boolean-mask selection",
                )));
            }
            Ok(a.cast::<RustArray>()?.get().0.clone())
        })
        .collect()
}

#[pyfunction]
fn concatenate(list: &Bound<'_, PyList>, axis: usize) -> PyResult<RustArray> {
    wrap(pa::concatenate(&arrays(list)?, axis))
}

#[pyfunction]
fn stack(list: &Bound<'_, PyList>, axis: usize) -> PyResult<RustArray> {
    wrap(pa::stack(&arrays(list)?, axis))
}

#[pyfunction]
fn tensordot(
    a: &RustArray,
    b: &RustArray,
    axes_a: Vec<usize>,
    axes_b: Vec<usize>,
) -> PyResult<RustArray> {
    wrap(pa::tensordot(&a.0, &b.0, &axes_a, &axes_b))
}

/// The task graph of `layer` as Graphviz DOT text (keys as labels, edges from inputs).
fn graph_dot(layer: &Arc<partita::Layer>) -> PyResult<String> {
    use std::fmt::Write;
    let graph = partita::Layer::materialize(&[Arc::clone(layer)]).py_err()?;
    let mut dot =
        String::from("digraph partita {\n  rankdir=BT;\n  node [shape=box, fontsize=10];\n");
    for id in graph.ids() {
        let label = graph.key(id).to_string().replace('"', "\\\"");
        let _ = writeln!(dot, "  t{} [label=\"{label}\"];", id.0);
        for dep in graph.dependencies(id) {
            let _ = writeln!(dot, "  t{} -> t{};", dep.0, id.0);
        }
    }
    dot.push_str("}\n");
    Ok(dot)
}

/// A NumPy array as a chunk of a dtype partita holds.
fn numpy_to_chunk(array: &Bound<'_, PyAny>) -> PyResult<Chunk> {
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if let Ok(a) = array.cast::<PyArrayDyn<$t>>() {
                return Ok(Chunk::new(a.readonly().as_array().to_owned()));
            }
        )*};
    }
    try_dtype!(f64, f32, i64, i32, u8, bool);
    Err(DTypeError::new_err(format!(
        "map_blocks: the function returned {}, not a NumPy array of a dtype partita holds",
        array
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

/// `function(*blocks) -> block` on matching blocks of `arrays`, blocks as NumPy arrays.
#[pyfunction]
#[pyo3(signature = (function, arrays, dtype_name, spec = None))]
fn map_blocks(
    function: Py<PyAny>,
    arrays: &Bound<'_, PyList>,
    dtype_name: &str,
    spec: Option<&Bound<'_, PyAny>>,
) -> PyResult<RustArray> {
    let inputs = self::arrays(arrays)?;
    let refs: Vec<&Array> = inputs.iter().collect();
    let out_chunks = spec.map(chunks).transpose()?;
    let dtype = dtype(dtype_name)?;
    wrap(pa::map_blocks_with(
        &refs,
        dtype,
        out_chunks,
        |block, shape| {
            let function = Python::attach(|py| function.clone_ref(py));
            Arc::new(pycall::PyBlocks {
                function: pycall::PyFunction(function),
                dtype,
                shape,
                block: block.to_vec(),
            }) as Arc<dyn partita::Op>
        },
    ))
}

/// One collection passed to [`compute`]: an array or a frame.
enum AnyCollection {
    Array(Array),
    Filtered(pa::FilteredArray),
    Frame(DataFrame),
    /// `pt.delayed`: one task's value.
    Delayed(partita::Delayed<partita::Value>),
}

impl AnyCollection {
    fn as_collection(&self) -> &dyn partita::Collection {
        match self {
            AnyCollection::Array(a) => a,
            AnyCollection::Filtered(a) => a,
            AnyCollection::Frame(f) => f,
            AnyCollection::Delayed(d) => d,
        }
    }
}

/// A `RustArray` or `RustFrame` argument.
fn any_collection(c: &Bound<'_, PyAny>) -> PyResult<AnyCollection> {
    if let Ok(a) = c.cast::<RustArray>() {
        Ok(AnyCollection::Array(a.get().0.clone()))
    } else if let Ok(a) = c.cast::<filtered::RustFilteredArray>() {
        Ok(AnyCollection::Filtered(a.get().0.clone()))
    } else if let Ok(f) = c.cast::<RustFrame>() {
        Ok(AnyCollection::Frame(f.get().0.clone()))
    } else if let Ok(d) = c.cast::<pycall::RustDelayed>() {
        Ok(AnyCollection::Delayed(d.get().0.clone()))
    } else {
        Err(PyTypeError::new_err(format!(
            "expected partita arrays, dataframes and delayed values, got {}",
            c.get_type().name()?
        )))
    }
}

/// What one collection computes to, before it becomes a Python object (with the GIL).
enum Computed {
    Chunk(Chunk),
    Frame(PlFrame),
    Object(partita::Value),
}

/// Compute several arrays and frames in ONE run, so work they share (a common input, a
/// persisted parent) is done once; returns a list of NumPy arrays and polars frames.
#[pyfunction]
#[pyo3(signature = (collections, scheduler = None, num_workers = None, progress = None))]
fn compute(
    py: Python<'_>,
    collections: &Bound<'_, PyList>,
    scheduler: Option<SchedulerArg>,
    num_workers: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<Py<PyAny>>> {
    let items = collections
        .iter()
        .map(|c| any_collection(&c))
        .collect::<PyResult<Vec<_>>>()?;
    let s = self::scheduler(scheduler, num_workers)?;
    let computed = run_interruptible(py, progress, |options| {
        let refs: Vec<&dyn partita::Collection> =
            items.iter().map(AnyCollection::as_collection).collect();
        let (values, _) = partita::compute_collections(&refs, s.as_ref(), options)?;
        items
            .iter()
            .zip(values)
            .map(|(c, v)| match c {
                AnyCollection::Array(a) => a.chunk_from_values(&v).map(Computed::Chunk),
                AnyCollection::Filtered(a) => a.chunk_from_values(&v).map(Computed::Chunk),
                AnyCollection::Frame(f) => f.frame_from_values(&v).map(Computed::Frame),
                AnyCollection::Delayed(_) => {
                    (v.into_iter().next()).map(Computed::Object).ok_or_else(|| {
                        partita::Error::Internal("a delayed value computed to nothing".into())
                    })
                }
            })
            .collect::<partita::Result<Vec<_>>>()
    })?;
    computed
        .into_iter()
        .map(|c| match c {
            Computed::Chunk(chunk) => Ok(chunk_to_numpy(py, chunk)),
            Computed::Frame(frame) => Ok(PyDataFrame(frame).into_pyobject(py)?.unbind()),
            Computed::Object(value) => pycall::value_to_py(py, &value).py_err(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// DataFrames

/// A lazy partitioned dataframe (wrapped by `partita.DataFrame`).
#[pyclass(module = "partita._partita", frozen)]
struct RustFrame(DataFrame);

fn wrap_frame(f: partita::Result<DataFrame>) -> PyResult<RustFrame> {
    f.map(RustFrame).py_err()
}

/// A Python `polars.Expr` as a Rust one.
///
/// Python polars 2.1 and partita's Rust polars 0.55 are different versions: in polars'
/// binary plan format (what pyo3-polars uses) enum tags are numbers, some of which shifted
/// between them, so `std()` decodes as another, list-valued, function without any error and
/// `top_k` panics in the decoder. The JSON form names every variant, so it goes first; the
/// binary form is the fallback. Either way the expression must print the same on both sides
/// (both print with the same rules) or it is refused with an error naming it: it never
/// silently computes something else.
fn expr(obj: &Bound<'_, PyAny>) -> PyResult<Expr> {
    let py = obj.py();
    if !obj.is_instance(&py.import("polars")?.getattr("Expr")?)? {
        return Err(PyTypeError::new_err(format!(
            "expected a polars expression (polars.Expr), got {}",
            obj.get_type().name()?
        )));
    }
    let sent = obj.str()?.to_string();
    let intact = |e: Expr| -> Result<Expr, String> {
        let arrived = e.to_string();
        if arrived == sent {
            Ok(e)
        } else {
            Err(format!("it arrived as {arrived}"))
        }
    };
    let mut why = Vec::new();
    // 1. JSON
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("format", "json")?;
    match (obj
        .getattr("meta")?
        .call_method("serialize", (), Some(&kwargs)))
    .and_then(|j| j.extract::<String>())
    {
        Ok(json) => match catch_panic(|| serde_json::from_str::<Expr>(&json)) {
            Ok(Ok(e)) => match intact(e) {
                Ok(e) => return Ok(e),
                Err(w) => why.push(format!("JSON: {w}")),
            },
            Ok(Err(e)) => why.push(format!("JSON: {e}")),
            Err(panic) => why.push(format!("JSON: {panic}")),
        },
        Err(e) => why.push(format!("JSON: {e}")),
    }
    // 2. the binary plan format
    match catch_panic(|| obj.extract::<PyExpr>()) {
        Ok(Ok(e)) => match intact(e.0) {
            Ok(e) => return Ok(e),
            Err(w) => why.push(format!("binary: {w}")),
        },
        Ok(Err(e)) => why.push(format!("binary: {e}")),
        Err(panic) => why.push(format!("binary: {panic}")),
    }
    Err(PartitaNotImplementedError::new_err(format!(
        "the polars expression {sent} cannot be passed to partita: the Python polars \
         installed encodes it in a form partita's Rust polars cannot read ({}); write it \
         with other expressions, or use map_partitions with a Python function",
        why.join("; ")
    )))
}

/// Run `f`, turning a panic into its message.
fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        (panic.downcast_ref::<String>().cloned())
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the decoder panicked".into())
    })
}

fn exprs(list: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<Expr>> {
    list.iter().map(expr).collect()
}

fn how(name: &str) -> PyResult<How> {
    Ok(match name {
        "inner" => How::Inner,
        "left" => How::Left,
        "right" => How::Right,
        "full" | "outer" => How::Full,
        "semi" => How::Semi,
        "anti" => How::Anti,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown join {other:?}; use inner, left, right, full, semi or anti"
            )));
        }
    })
}

/// A Python function of a polars DataFrame as a Rust one (the GIL is taken per call).
fn python_frame_function(
    function: Py<PyAny>,
) -> impl Fn(PlFrame) -> polars::prelude::PolarsResult<PlFrame> + Send + Sync + 'static {
    move |frame: PlFrame| {
        Python::attach(|py| {
            let out = function
                .call1(py, (PyDataFrame(frame),))
                .and_then(|out| out.extract::<PyDataFrame>(py));
            match out {
                Ok(df) => Ok(df.0),
                Err(e) => Err(PolarsError::ComputeError(
                    format!("the Python function raised {e}").into(),
                )),
            }
        })
    }
}

#[pymethods]
impl RustFrame {
    #[staticmethod]
    fn from_polars(df: PyDataFrame, npartitions: usize) -> PyResult<RustFrame> {
        wrap_frame(DataFrame::from_polars(df.0, npartitions))
    }

    #[staticmethod]
    #[pyo3(signature = (path, columns = None, partition_bytes = None))]
    fn read_parquet(
        path: &str,
        columns: Option<Vec<String>>,
        partition_bytes: Option<u64>,
    ) -> PyResult<RustFrame> {
        let mut options = ParquetOptions {
            columns,
            ..Default::default()
        };
        if partition_bytes.is_some() {
            options.partition_bytes = partition_bytes;
        }
        wrap_frame(pf::read_parquet(path, &options))
    }

    #[staticmethod]
    #[pyo3(signature = (path, separator = ",", has_header = true, blocksize = None))]
    fn read_csv(
        path: &str,
        separator: &str,
        has_header: bool,
        blocksize: Option<u64>,
    ) -> PyResult<RustFrame> {
        let separator = match separator.as_bytes() {
            [b] => *b,
            _ => return Err(PyValueError::new_err("separator must be one byte")),
        };
        let mut options = CsvOptions {
            separator,
            has_header,
            ..Default::default()
        };
        if blocksize.is_some() {
            options.blocksize = blocksize;
        }
        wrap_frame(pf::read_csv(path, &options))
    }

    #[staticmethod]
    fn read_ipc(path: &str) -> PyResult<RustFrame> {
        wrap_frame(pf::read_ipc(path))
    }

    #[staticmethod]
    fn concat(frames: Vec<Bound<'_, RustFrame>>) -> PyResult<RustFrame> {
        let frames: Vec<DataFrame> = frames.iter().map(|f| f.get().0.clone()).collect();
        wrap_frame(DataFrame::concat(&frames))
    }

    /// An empty polars frame with the result's schema.
    fn empty(&self) -> PyDataFrame {
        PyDataFrame(PlFrame::empty_with_arc_schema(Arc::clone(self.0.schema())))
    }

    #[getter]
    fn columns(&self) -> Vec<String> {
        self.0.columns()
    }
    #[getter]
    fn npartitions(&self) -> usize {
        self.0.npartitions()
    }

    fn select(&self, e: Vec<Bound<'_, PyAny>>) -> PyResult<RustFrame> {
        wrap_frame(self.0.select(exprs(e)?))
    }
    fn with_columns(&self, e: Vec<Bound<'_, PyAny>>) -> PyResult<RustFrame> {
        wrap_frame(self.0.with_columns(exprs(e)?))
    }
    fn filter(&self, predicate: Bound<'_, PyAny>) -> PyResult<RustFrame> {
        wrap_frame(self.0.filter(expr(&predicate)?))
    }
    fn drop(&self, names: Vec<String>) -> PyResult<RustFrame> {
        wrap_frame(self.0.drop(&names))
    }
    fn rename(&self, existing: Vec<String>, new: Vec<String>) -> PyResult<RustFrame> {
        wrap_frame(self.0.rename(&existing, &new))
    }
    fn fill_null(&self, value: Bound<'_, PyAny>) -> PyResult<RustFrame> {
        wrap_frame(self.0.fill_null(expr(&value)?))
    }
    #[pyo3(signature = (subset = None))]
    fn drop_nulls(&self, subset: Option<Vec<String>>) -> PyResult<RustFrame> {
        let subset: Option<Vec<&str>> = subset
            .as_ref()
            .map(|s| s.iter().map(String::as_str).collect());
        wrap_frame(self.0.drop_nulls(subset.as_deref()))
    }
    fn explode(&self, names: Vec<String>) -> PyResult<RustFrame> {
        wrap_frame(self.0.explode(&names))
    }

    #[pyo3(signature = (keys, aggs, split_out = None, split_every = None))]
    fn group_by_agg(
        &self,
        keys: Vec<String>,
        aggs: Vec<Bound<'_, PyAny>>,
        split_out: Option<usize>,
        split_every: Option<usize>,
    ) -> PyResult<RustFrame> {
        let mut g = self.0.group_by(&keys).py_err()?;
        if let Some(n) = split_out {
            g = g.split_out(n);
        }
        if let Some(n) = split_every {
            g = g.split_every(n);
        }
        wrap_frame(g.agg(exprs(aggs)?))
    }

    fn join(
        &self,
        other: &RustFrame,
        left_on: Vec<String>,
        right_on: Vec<String>,
        how_name: &str,
    ) -> PyResult<RustFrame> {
        wrap_frame(self.0.join(&other.0, &left_on, &right_on, how(how_name)?))
    }

    #[pyo3(signature = (by, descending, nulls_last = false, npartitions = None))]
    fn sort(
        &self,
        by: Vec<String>,
        descending: Vec<bool>,
        nulls_last: bool,
        npartitions: Option<usize>,
    ) -> PyResult<RustFrame> {
        let options = SortOptions {
            descending,
            nulls_last,
            npartitions,
        };
        wrap_frame(self.0.sort(&by, options))
    }

    #[pyo3(signature = (subset = None))]
    fn unique(&self, subset: Option<Vec<String>>) -> PyResult<RustFrame> {
        let subset: Option<Vec<&str>> = subset
            .as_ref()
            .map(|s| s.iter().map(String::as_str).collect());
        wrap_frame(self.0.unique(subset.as_deref()))
    }
    fn value_counts(&self, column: &str) -> PyResult<RustFrame> {
        wrap_frame(self.0.value_counts(column))
    }
    fn describe(&self) -> PyResult<RustFrame> {
        wrap_frame(self.0.describe())
    }
    fn repartition(&self, n: usize) -> PyResult<RustFrame> {
        wrap_frame(self.0.repartition(n))
    }
    fn shuffle(&self, keys: Vec<String>, n: usize) -> PyResult<RustFrame> {
        wrap_frame(self.0.shuffle(&keys, None, n))
    }

    /// `function(polars.DataFrame) -> polars.DataFrame` on every partition; the output
    /// schema comes from calling it on an empty frame unless `schema_of` (an empty polars
    /// frame) is given.
    #[pyo3(signature = (function, schema_of = None))]
    fn map_partitions(
        &self,
        py: Python<'_>,
        function: Py<PyAny>,
        schema_of: Option<PyDataFrame>,
    ) -> PyResult<RustFrame> {
        let schema = match schema_of {
            Some(empty) => Arc::clone(empty.0.schema()),
            None => {
                // The result's schema: the function applied to an empty frame.
                let empty = PlFrame::empty_with_arc_schema(Arc::clone(self.0.schema()));
                let out = python_frame_function(function.clone_ref(py))(empty).map_err(|e| {
                    SchemaError::new_err(format!(
                        "map_partitions: the function failed on an empty frame (to find its \
                         schema); pass schema= the result's schema: {e}"
                    ))
                })?;
                Arc::clone(out.schema())
            }
        };
        let op = Arc::new(pycall::PyPartitions {
            function: pycall::PyFunction(function),
        });
        Ok(RustFrame(self.0.map_partitions_op(
            "python-map-partitions",
            op,
            schema,
        )))
    }

    #[pyo3(signature = (n, scheduler = None, num_workers = None, progress = None))]
    fn head(
        &self,
        py: Python<'_>,
        n: usize,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |_| frame.head(n, s.as_ref())).map(PyDataFrame)
    }

    #[pyo3(signature = (n, scheduler = None, num_workers = None, progress = None))]
    fn tail(
        &self,
        py: Python<'_>,
        n: usize,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |_| frame.tail(n, s.as_ref())).map(PyDataFrame)
    }

    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn length(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |_| frame.len()?.compute(s.as_ref()))
    }

    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn compute(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |o| frame.compute_with(s.as_ref(), o)).map(PyDataFrame)
    }

    #[pyo3(signature = (scheduler = None, num_workers = None, progress = None))]
    fn persist(
        &self,
        py: Python<'_>,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<RustFrame> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |o| frame.persist_with(s.as_ref(), o)).map(RustFrame)
    }

    #[pyo3(signature = (path, scheduler = None, num_workers = None, progress = None))]
    fn to_parquet(
        &self,
        py: Python<'_>,
        path: &str,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |_| frame.to_parquet(path, s.as_ref()))
    }

    #[pyo3(signature = (path, scheduler = None, num_workers = None, progress = None))]
    fn to_csv(
        &self,
        py: Python<'_>,
        path: &str,
        scheduler: Option<SchedulerArg>,
        num_workers: Option<usize>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<u64> {
        let s = self::scheduler(scheduler, num_workers)?;
        let frame = self.0.clone();
        run_interruptible(py, progress, |_| frame.to_csv(path, s.as_ref()))
    }

    /// The task graph as Graphviz DOT text.
    fn dot(&self) -> PyResult<String> {
        use partita::Collection;
        graph_dot(self.0.layer())
    }

    /// The number of tasks in the frame's graph.
    fn graph_size(&self) -> PyResult<usize> {
        use partita::Collection;
        partita::Layer::materialize(&[Arc::clone(self.0.layer())])
            .map(|g| g.len())
            .py_err()
    }
}

// ---------------------------------------------------------------------------------------
// The cluster

/// A connection to a partita cluster: `pt.Client(cluster_file_or_local_cluster)`; pass it
/// as `scheduler=` to any compute.
#[pyclass(name = "Client", module = "partita._partita", frozen, subclass)]
struct PyClient(std::sync::Mutex<Option<Arc<Client>>>);

impl PyClient {
    fn client(&self) -> PyResult<Arc<Client>> {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .clone()
            .ok_or_else(|| TransportError::new_err("this Client is closed"))
    }
}

#[pymethods]
impl PyClient {
    #[new]
    fn new(py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<PyClient> {
        if let Ok(shared) = address.cast::<WorkerConnection>() {
            let client = shared.get().0.clone();
            return Ok(PyClient(std::sync::Mutex::new(Some(Arc::new(client)))));
        }
        let path: std::path::PathBuf = match address.cast::<PyLocalCluster>() {
            Ok(cluster) => cluster.get().file()?,
            Err(_) => address.extract()?,
        };
        let client = py.detach(|| Client::connect(&path)).py_err()?;
        Ok(PyClient(std::sync::Mutex::new(Some(Arc::new(client)))))
    }

    /// `http://host:port/metrics` when the scheduler serves metrics (`--metrics`,
    /// `LocalCluster(metrics_address=...)`), else `None`: Dask's `client.dashboard_link`.
    #[getter]
    fn metrics_link(&self) -> PyResult<Option<String>> {
        let client = self.client()?;
        Ok(client
            .metrics_address()
            .map(|a| format!("http://{a}/metrics")))
    }

    /// The connected workers: `(address, threads)` each.
    fn workers(&self, py: Python<'_>) -> PyResult<Vec<(String, u32)>> {
        let client = self.client()?;
        let workers = py.detach(|| client.workers()).py_err()?;
        Ok(workers.into_iter().map(|(p, n)| (p.address, n)).collect())
    }

    /// A snapshot of the cluster, shaped like Dask's `client.scheduler_info()`:
    /// `{"type": "Scheduler", "address", "workers": {address: {"id", "nthreads",
    /// "memory_limit", "processing", "held", "retiring", "resources": {name: amount},
    /// "metrics": {"memory", "managed_bytes",
    /// "spilled_bytes", "executing", "ready", "paused"}}}, "tasks": {state: count},
    /// "stats": {counter: value}}`. A worker's metrics are its last report (every 200 ms
    /// or so); `memory` is its resident set, `managed_bytes` the values it holds.
    fn scheduler_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        use pyo3::types::PyDict;
        let client = self.client()?;
        let info = py.detach(|| client.info()).py_err()?;
        let out = PyDict::new(py);
        out.set_item("type", "Scheduler")?;
        out.set_item("address", client.scheduler_address())?;
        let workers = PyDict::new(py);
        for w in &info.workers {
            let m = &w.metrics;
            let metrics = PyDict::new(py);
            metrics.set_item("memory", m.rss)?;
            metrics.set_item("managed_bytes", m.managed_bytes)?;
            metrics.set_item("spilled_bytes", m.spilled_bytes)?;
            metrics.set_item("executing", m.executing)?;
            metrics.set_item("ready", m.pending)?;
            metrics.set_item("paused", m.paused)?;
            let worker = PyDict::new(py);
            worker.set_item("retiring", w.retiring)?;
            worker.set_item("id", w.peer.id.0)?;
            worker.set_item("nthreads", w.nthreads)?;
            worker.set_item("memory_limit", w.memory_limit)?;
            worker.set_item("processing", w.processing)?;
            worker.set_item("held", w.held)?;
            let resources = PyDict::new(py);
            for (name, amount) in w.resources.iter() {
                resources.set_item(name, amount)?;
            }
            worker.set_item("resources", resources)?;
            worker.set_item("metrics", metrics)?;
            workers.set_item(&w.peer.address, worker)?;
        }
        out.set_item("workers", workers)?;
        let counts = |pairs: &[(&str, u64)]| -> PyResult<Bound<'py, PyDict>> {
            let dict = PyDict::new(py);
            for (name, n) in pairs {
                dict.set_item(name, n)?;
            }
            Ok(dict)
        };
        out.set_item("tasks", counts(&info.tasks.by_state())?)?;
        out.set_item("stats", counts(&info.stats.named())?)?;
        Ok(out)
    }

    /// The task runs the scheduler remembers numbered `since` or later, and the next
    /// number: `(next, [(key, worker, start, stop, nbytes, erred)])`, times in Unix seconds.
    fn _task_stream(&self, py: Python<'_>, since: u64) -> PyResult<(u64, Vec<TaskRow>)> {
        let client = self.client()?;
        let (next, records) = py.detach(|| client.task_stream(since)).py_err()?;
        let seconds = |micros: u64| micros as f64 / 1e6;
        let records = (records.into_iter())
            .map(|r| {
                let key = crate::pycall::key_text(&r.key);
                (
                    key,
                    r.worker,
                    seconds(r.start),
                    seconds(r.stop),
                    r.nbytes,
                    r.erred,
                )
            })
            .collect();
        Ok((next, records))
    }

    /// Wait until at least `n` workers are connected.
    #[pyo3(signature = (n, timeout = 30.0))]
    fn wait_for_workers(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<()> {
        let client = self.client()?;
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        py.detach(|| client.wait_for_workers(n, timeout)).py_err()
    }

    /// Connect again if the scheduler went away (one started again where the cluster file
    /// says, or at the same address), trying for up to `timeout` seconds. Computes,
    /// submits and requests do this by themselves for `reconnect_timeout` seconds. Futures
    /// and persisted collections from before the loss stay lost.
    #[pyo3(signature = (timeout = 10.0))]
    fn reconnect(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let client = self.client()?;
        let timeout = seconds(Some(timeout))?.unwrap_or_default();
        py.detach(|| client.reconnect(timeout)).py_err()
    }

    /// Seconds a call on a client whose scheduler went away keeps trying to connect again
    /// (default 10; 0 never connects again).
    #[getter]
    fn get_reconnect_timeout(&self) -> PyResult<f64> {
        Ok(self.client()?.reconnect_timeout().as_secs_f64())
    }

    #[setter]
    fn set_reconnect_timeout(&self, timeout: f64) -> PyResult<()> {
        let timeout = seconds(Some(timeout))?.unwrap_or_default();
        self.client()?.set_reconnect_timeout(timeout);
        Ok(())
    }

    /// Whether the connection to the scheduler is open.
    fn is_connected(&self) -> PyResult<bool> {
        Ok(self.client()?.is_connected())
    }

    /// The scheduler's address.
    #[getter]
    fn scheduler_address(&self) -> PyResult<String> {
        Ok(self.client()?.scheduler_address())
    }

    /// Start computing collections on the cluster and return at once: a `Future` per
    /// collection (the list given) or one (a single collection). Python wrappers (`Array`,
    /// `DataFrame`) are unwrapped by `partita._futures`. `retries` overrides the client's;
    /// `workers` (addresses or hosts) restricts where the tasks run.
    #[pyo3(signature = (collections, retries = None, workers = Vec::new(), allow_other_workers = false, resources = None, priority = 0))]
    #[allow(clippy::too_many_arguments)]
    fn _compute(
        &self,
        py: Python<'_>,
        collections: Vec<Bound<'_, PyAny>>,
        retries: Option<u32>,
        workers: Vec<String>,
        allow_other_workers: bool,
        resources: Option<std::collections::BTreeMap<String, f64>>,
        priority: i32,
    ) -> PyResult<Vec<futures::PyFuture>> {
        let options = partita::distributed::SubmitOptions {
            retries,
            workers,
            allow_other_workers,
            resources: resources_of(resources)?,
            priority,
        };
        self.compute_futures(py, collections, &options)
    }

    /// One Python call prepared by `partita._futures.prepare_call`; `retries` overrides
    /// the client's; `workers` (addresses or hosts) restricts where it runs.
    #[pyo3(signature = (key, name, payload, deps, retries = None, workers = Vec::new(), allow_other_workers = false, resources = None, priority = 0))]
    #[allow(clippy::too_many_arguments)]
    fn _submit_call(
        &self,
        py: Python<'_>,
        key: String,
        name: String,
        payload: Vec<u8>,
        deps: Vec<Py<futures::PyFuture>>,
        retries: Option<u32>,
        workers: Vec<String>,
        allow_other_workers: bool,
        resources: Option<std::collections::BTreeMap<String, f64>>,
        priority: i32,
    ) -> PyResult<futures::PyFuture> {
        let options = partita::distributed::SubmitOptions {
            retries,
            workers,
            allow_other_workers,
            resources: resources_of(resources)?,
            priority,
        };
        self.submit_call(py, key, name, payload, deps, &options)
    }

    /// `{key: [worker address, ...]}` for every key of `futures` (a collection's future
    /// has one per chunk or partition): where each is held now, `[]` while pending.
    fn _who_has(
        &self,
        py: Python<'_>,
        futures: Vec<Py<futures::PyFuture>>,
    ) -> PyResult<Vec<(String, Vec<String>)>> {
        let client = self.client()?;
        let all = futures::every_key(&futures);
        let holders = py.detach(|| client.who_has(&all)).py_err()?;
        Ok(holders
            .into_iter()
            .map(|(k, peers)| {
                let addresses = peers.into_iter().map(|p| p.address).collect();
                (pycall::key_text(&k), addresses)
            })
            .collect())
    }

    /// One Python call prepared by `partita._futures` run on every worker now (Dask's
    /// `client.run`): `[(address, result)]`, or the first worker's error raised.
    fn _run(
        &self,
        py: Python<'_>,
        name: String,
        payload: Vec<u8>,
    ) -> PyResult<Vec<(String, Py<PyAny>)>> {
        let client = self.client()?;
        let op = Arc::new(pycall::PyCall { name, payload });
        let answers = py.detach(|| client.run(op)).py_err()?;
        let mut out = Vec::with_capacity(answers.len());
        for (peer, result) in answers {
            let value = result.py_err()?;
            out.push((peer.address, pycall::value_to_py(py, &value).py_err()?));
        }
        Ok(out)
    }

    /// Copy every key of `futures` to at least `n` workers (every worker if `None`),
    /// worker to worker, waiting for the futures and the copies (`client.replicate` in
    /// `partita._futures` wraps it).
    #[pyo3(signature = (futures, n = None))]
    fn _replicate(
        &self,
        py: Python<'_>,
        futures: Vec<Py<futures::PyFuture>>,
        n: Option<usize>,
    ) -> PyResult<()> {
        let client = self.client()?;
        let all = futures::every_key(&futures);
        py.detach(|| client.replicate(&all, n)).py_err()?;
        Ok(())
    }

    /// How many workers would finish the work in sight in about `target_duration`
    /// (seconds or a string such as "5s"; Dask's `adaptive_target`), and, when that is
    /// fewer than are open, which to retire: `{"workers": n, "to_close": [address, ...]}`.
    /// Nothing changes; a deployer starting its own worker processes acts on it.
    #[pyo3(signature = (target_duration = None))]
    fn adaptive_target<'py>(
        &self,
        py: Python<'py>,
        target_duration: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let client = self.client()?;
        let defaults = partita::distributed::AdaptOptions::default();
        let target = (target_duration).map_or(Ok(defaults.target_duration), |d| {
            duration_of(d, "target_duration")
        })?;
        let answer = py.detach(|| client.adaptive_target(target)).py_err()?;
        let out = pyo3::types::PyDict::new(py);
        out.set_item("workers", answer.workers)?;
        let to_close: Vec<String> = answer.to_close.into_iter().map(|p| p.address).collect();
        out.set_item("to_close", to_close)?;
        Ok(out)
    }

    /// The addresses of `n` open workers to retire for a manual scale-down (Dask's
    /// `workers_to_close`): the least busy, then those holding the fewest bytes (fewer
    /// when fewer are open; never every worker while one holds data).
    fn workers_to_close(&self, py: Python<'_>, n: usize) -> PyResult<Vec<String>> {
        let client = self.client()?;
        let peers = py.detach(|| client.workers_to_close(n)).py_err()?;
        Ok(peers.into_iter().map(|p| p.address).collect())
    }

    /// Even out the bytes the workers hold (Dask's `client.rebalance`; `client.rebalance`
    /// in `partita._futures` wraps it): values of `futures` (all when `None`) move from
    /// workers above the mean to those below, among the workers at `workers` (all when
    /// empty). Returns `{"moved": keys moved, "nbytes": their bytes}`.
    #[pyo3(signature = (futures = None, workers = Vec::new()))]
    fn _rebalance<'py>(
        &self,
        py: Python<'py>,
        futures: Option<Vec<Py<futures::PyFuture>>>,
        workers: Vec<String>,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let client = self.client()?;
        let all = futures.map(|f| futures::every_key(&f));
        let addresses: Vec<&str> = workers.iter().map(String::as_str).collect();
        let moved = py
            .detach(|| client.rebalance(all.as_deref(), &addresses))
            .py_err()?;
        let out = pyo3::types::PyDict::new(py);
        out.set_item("moved", moved.moved.len())?;
        out.set_item("nbytes", moved.nbytes)?;
        Ok(out)
    }

    /// Retire the workers at `addresses` gracefully (Dask's `client.retire_workers`):
    /// their values move to the other workers, then they stop. Returns `{address: {"id":
    /// id}}` for each once gone. All or none: an unknown address, or retiring every
    /// worker, is an error and retires nobody.
    fn retire_workers<'py>(
        &self,
        py: Python<'py>,
        workers: Vec<String>,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let client = self.client()?;
        let addresses: Vec<&str> = workers.iter().map(String::as_str).collect();
        let retired = py.detach(|| client.retire_workers(&addresses)).py_err()?;
        let out = pyo3::types::PyDict::new(py);
        for peer in retired {
            let info = pyo3::types::PyDict::new(py);
            info.set_item("id", peer.id.0)?;
            out.set_item(peer.address, info)?;
        }
        Ok(out)
    }

    /// Publish a pickle and the futures, persisted arrays and frames it refers to under
    /// `name` (`client.publish_dataset` in `partita._futures` wraps it).
    fn _publish_dataset(
        &self,
        py: Python<'_>,
        name: &str,
        pickle: Vec<u8>,
        parts: Vec<Bound<'_, PyAny>>,
        replace: bool,
    ) -> PyResult<()> {
        self.publish_parts(py, name, pickle, parts, replace)
    }

    /// `(pickle or None, parts)` of the dataset `name`, its keys now held by this client
    /// (`client.get_dataset` in `partita._futures` wraps it); `KeyError` if none.
    fn _get_dataset(&self, py: Python<'_>, name: &str) -> PyResult<datasets::Parts> {
        self.get_parts(py, name)
    }

    /// An event operation (`pt.Event` wraps it): "set", "clear", "is_set", or "wait"
    /// (`timeout` seconds, None for ever) answering whether it is set.
    #[pyo3(signature = (name, op, timeout = None))]
    fn _event(&self, py: Python<'_>, name: &str, op: &str, timeout: Option<f64>) -> PyResult<bool> {
        use partita::distributed::Event;
        let event = Event::new(&*self.client()?, name);
        match op {
            "set" => py.detach(|| event.set()).py_err().map(|()| true),
            "clear" => py.detach(|| event.clear()).py_err().map(|()| false),
            "is_set" => py.detach(|| event.is_set()).py_err(),
            "wait" => {
                let timeout = seconds(timeout)?;
                interruptible(py, |stop| event.wait_or_interrupt(timeout, stop))
            }
            other => Err(PyValueError::new_err(format!(
                "unknown event operation {other:?}"
            ))),
        }
    }

    /// Take a lease of the semaphore `name` (`pt.Semaphore`, `pt.Lock`): its number, or
    /// None if `timeout` seconds (None: for ever) passed first.
    #[pyo3(signature = (name, max_leases, timeout = None))]
    fn _acquire(
        &self,
        py: Python<'_>,
        name: &str,
        max_leases: u32,
        timeout: Option<f64>,
    ) -> PyResult<Option<u64>> {
        let sem = partita::distributed::Semaphore::new(&*self.client()?, name, max_leases);
        let timeout = seconds(timeout)?;
        interruptible(py, |stop| sem.acquire_lease(timeout, stop))
    }

    /// Give back lease `lease` of the semaphore `name` (RuntimeError unless held).
    fn _release(&self, py: Python<'_>, name: &str, lease: u64) -> PyResult<()> {
        let sem = partita::distributed::Semaphore::new(&*self.client()?, name, 1);
        py.detach(|| sem.release_lease(lease)).map_err(|e| match e {
            partita::Error::Graph(m) => pyo3::exceptions::PyRuntimeError::new_err(m),
            other => to_py(other),
        })
    }

    /// Leases of the semaphore `name` held now.
    fn _leases(&self, py: Python<'_>, name: &str) -> PyResult<u32> {
        let sem = partita::distributed::Semaphore::new(&*self.client()?, name, 1);
        py.detach(|| sem.leases()).py_err()
    }

    /// Publish a message to topic `name`: how many subscriptions it reached.
    fn _publish(
        &self,
        py: Python<'_>,
        name: &str,
        pickle: Vec<u8>,
        parts: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let client = self.client()?;
        let what = format!("topic {name:?}");
        let value = datasets::parts_dataset(&what, pickle, parts)?;
        py.detach(|| partita::distributed::Pub::new(&client, name).put(&value))
            .py_err()
    }

    /// A subscription to topic `name`, from now on.
    fn _subscribe(&self, py: Python<'_>, name: &str) -> PyResult<Subscription> {
        let client = self.client()?;
        let sub = py
            .detach(|| partita::distributed::Sub::new(&client, name))
            .py_err()?;
        Ok(Subscription {
            sub: std::sync::Mutex::new(Some(std::sync::Arc::new(sub))),
            client,
        })
    }

    /// Put a pickle and its parts in the variable (`queue=False`) or queue `name`; for a
    /// queue with `maxsize`, wait at most `timeout` seconds for room (false if it passed).
    #[pyo3(signature = (name, queue, pickle, parts, maxsize = 0, timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn _put_item(
        &self,
        py: Python<'_>,
        name: &str,
        queue: bool,
        pickle: Vec<u8>,
        parts: Vec<Bound<'_, PyAny>>,
        maxsize: u64,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        use partita::distributed::{Queue, Variable};
        let client = self.client()?;
        let what = item_name(name, queue);
        let value = datasets::parts_dataset(&what, pickle, parts)?;
        let timeout = seconds(timeout)?;
        match queue {
            true => {
                let q = Queue::new(&client, name).with_maxsize(maxsize);
                interruptible(py, |stop| q.put_or_interrupt(&value, timeout, stop))
            }
            false => py
                .detach(|| Variable::new(&client, name).set(&value))
                .py_err()
                .map(|()| true),
        }
    }

    /// The variable's value or the queue's next item as `(pickle, parts)`, waiting at
    /// most `timeout` seconds (None: for ever); None if it passed.
    #[pyo3(signature = (name, queue, timeout = None))]
    fn _get_item(
        &self,
        py: Python<'_>,
        name: &str,
        queue: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<datasets::Parts>> {
        use partita::distributed::{Queue, Variable};
        let client = self.client()?;
        let timeout = seconds(timeout)?;
        let value = match queue {
            true => {
                let q = Queue::new(&client, name);
                interruptible(py, |stop| q.get_or_interrupt(timeout, stop))?
            }
            false => {
                let v = Variable::new(&client, name);
                interruptible(py, |stop| v.get_or_interrupt(timeout, stop))?
            }
        };
        let what = item_name(name, queue);
        value
            .map(|d| datasets::dataset_parts(py, &client, &what, d))
            .transpose()
    }

    /// Forget the variable `name`.
    fn _delete_variable(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let var = partita::distributed::Variable::new(&*self.client()?, name);
        py.detach(|| var.delete()).py_err()
    }

    /// Items in the queue `name`.
    fn _queue_size(&self, py: Python<'_>, name: &str) -> PyResult<u64> {
        let queue = partita::distributed::Queue::new(&*self.client()?, name);
        py.detach(|| queue.len()).py_err()
    }

    /// This client restricted to `workers` (addresses or hosts) for what it computes or
    /// persists as a `scheduler=` (`client.persist(x, workers=...)` in
    /// `partita._futures` uses it): the same connection.
    #[pyo3(signature = (workers, allow_other_workers = false, resources = None, priority = 0))]
    fn _with_options(
        &self,
        workers: Vec<String>,
        allow_other_workers: bool,
        resources: Option<std::collections::BTreeMap<String, f64>>,
        priority: i32,
    ) -> PyResult<PyClient> {
        let client = self.client()?;
        let options = partita::distributed::SubmitOptions {
            retries: None,
            workers,
            allow_other_workers,
            resources: resources_of(resources)?,
            priority,
        };
        let restricted = Arc::new(client.with_options(options));
        Ok(PyClient(std::sync::Mutex::new(Some(restricted))))
    }

    /// Forget all work and data on the cluster and restart every worker process (Dask's
    /// `client.restart`): every client's futures are cancelled, published datasets
    /// dropped; returns once as many workers as before are back (TimeoutError after
    /// `timeout` seconds). Needs workers under a nanny (`pt.LocalCluster(nanny=True)`,
    /// `partita worker` without `--no-nanny`); otherwise TransportError naming one, and
    /// nothing is done.
    #[pyo3(signature = (timeout = 60.0))]
    fn restart(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let client = self.client()?;
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| {
            PyValueError::new_err(format!("timeout must be seconds >= 0, got {timeout}"))
        })?;
        py.detach(|| client.restart(timeout)).py_err()
    }

    /// Forget the dataset `name` (Dask's `client.unpublish_dataset`); its data goes once
    /// no client holds it. Nothing published under that name: nothing to do (as Dask's);
    /// returns whether there was.
    fn unpublish_dataset(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        let client = self.client()?;
        py.detach(|| client.unpublish_dataset(name)).py_err()
    }

    /// The names of the datasets published on the cluster now, sorted, as a tuple (Dask's
    /// `client.list_datasets()`).
    fn list_datasets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let client = self.client()?;
        let names = py.detach(|| client.list_datasets()).py_err()?;
        PyTuple::new(py, names)
    }

    /// Python objects pushed from here straight to workers: one future per object
    /// (`client.scatter` in `partita._futures` wraps it); only onto `workers` (addresses
    /// or hosts) when given.
    #[pyo3(signature = (objects, broadcast = false, workers = Vec::new()))]
    fn _scatter(
        &self,
        py: Python<'_>,
        objects: Vec<Py<PyAny>>,
        broadcast: bool,
        workers: Vec<String>,
    ) -> PyResult<Vec<futures::PyFuture>> {
        self.scatter_objects(py, objects, broadcast, &workers)
    }

    /// How many times a task whose function raises is run again before the error counts
    /// (Dask's `retries=`), for everything submitted or computed from now on. Default 0.
    #[getter]
    fn retries(&self) -> PyResult<u32> {
        Ok(self.client()?.retries())
    }

    #[setter]
    fn set_retries(&self, n: u32) -> PyResult<()> {
        self.client()?.set_retries(n);
        Ok(())
    }

    /// The results of `futures`, in order (gathered concurrently); a failed task raises
    /// its error.
    #[pyo3(signature = (futures, timeout = None))]
    fn _gather(
        &self,
        py: Python<'_>,
        futures: Vec<Py<futures::PyFuture>>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        self.gather_futures(py, futures, timeout)
    }

    /// Cancel every future in `futures`.
    fn _cancel(&self, futures: Vec<Py<futures::PyFuture>>) -> PyResult<()> {
        self.cancel_futures(futures)
    }

    /// Wait until every future in `futures` is done (at most `timeout` seconds).
    #[pyo3(signature = (futures, timeout = None))]
    fn _wait(
        &self,
        py: Python<'_>,
        futures: Vec<Py<futures::PyFuture>>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        self.wait_futures(py, futures, timeout)
    }

    /// Not closed yet.
    fn _is_open(&self) -> bool {
        self.client().is_ok()
    }

    /// Disconnect (also at the end of a `with` block).
    fn close(&self, py: Python<'_>) {
        let taken = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // The last handle waits (briefly) for its close to reach the scheduler.
        py.detach(|| drop(taken));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        match self.client() {
            Ok(c) => format!("<partita.Client scheduler={}>", c.scheduler_address()),
            Err(_) => "<partita.Client closed>".into(),
        }
    }
}

/// A scheduler and worker processes on this machine (`python -m partita ...`), stopped by
/// `close()`, at the end of a `with` block, or when this process exits. Each worker runs
/// under a nanny process by default, as Dask's do: a crashed or killed worker is started
/// again, one past `memory_limit`'s terminate fraction is killed and restarted, and
/// `client.restart()` works; `nanny=False` saves the extra process (about 80 MB and
/// 0.2 s of start-up per worker). `worker_args` adds `partita worker` flags for every
/// worker (`["--liveness-timeout", "10", "--death-timeout", "120"]`).
#[pyclass(name = "LocalCluster", module = "partita._partita", frozen)]
struct PyLocalCluster(std::sync::Mutex<Option<LocalCluster>>);

impl PyLocalCluster {
    fn cluster(&self) -> PyResult<std::sync::MutexGuard<'_, Option<LocalCluster>>> {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            return Err(TransportError::new_err("this LocalCluster is closed"));
        }
        Ok(guard)
    }

    fn file(&self) -> PyResult<std::path::PathBuf> {
        let guard = self.cluster()?;
        Ok(guard
            .as_ref()
            .map(LocalCluster::cluster_file)
            .unwrap_or_default())
    }
}

/// The private folder of the worker running in this process (removed when it stops), or
/// `None` outside a worker.
#[pyfunction]
fn worker_local_directory() -> Option<String> {
    partita::distributed::local_directory().map(|p| p.display().to_string())
}

/// The connection tasks of this worker process share (`pt.get_client()` wraps it in a
/// `Client`).
#[pyclass(frozen, module = "partita._partita")]
struct WorkerConnection(Client);

/// The cluster connection of the worker running in this process, made at the first call
/// (`None` outside a worker process): what `pt.get_client()` returns inside a task.
#[pyfunction]
fn worker_connection(py: Python<'_>) -> PyResult<Option<WorkerConnection>> {
    if partita::distributed::local_directory().is_none() {
        return Ok(None);
    }
    let client = py.detach(partita::distributed::get_client).py_err()?;
    Ok(Some(WorkerConnection(client)))
}

/// Dask's `secede()`: the task running on this thread gives its worker thread back while
/// it waits.
#[pyfunction]
fn secede(py: Python<'_>) -> PyResult<()> {
    py.detach(partita::distributed::secede).py_err()
}

/// Dask's `rejoin()`: wait until the worker has a thread for this seceded task again.
#[pyfunction]
fn rejoin(py: Python<'_>) -> PyResult<()> {
    py.detach(partita::distributed::rejoin).py_err()
}

/// The key of the task running on this thread on a worker, or `None`.
#[pyfunction]
fn current_task() -> Option<String> {
    partita::distributed::current_task().map(|k| pycall::key_text(&k))
}

/// A wait in seconds: None for ever; a negative or NaN one is a ValueError.
fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            Duration::try_from_secs_f64(t).map_err(|_| {
                PyValueError::new_err(format!("timeout must be a number of seconds >= 0, got {t}"))
            })
        })
        .transpose()
}

/// A subscription to a topic (`pt.Sub`'s): ends when closed or collected.
#[pyclass(module = "partita._partita", frozen)]
struct Subscription {
    /// Shared with a `get` waiting, so `close` never waits for it (it ends it).
    sub: std::sync::Mutex<Option<std::sync::Arc<partita::distributed::Sub>>>,
    client: std::sync::Arc<Client>,
}

#[pymethods]
impl Subscription {
    /// The next message as `(pickle, parts)`, waiting at most `timeout` seconds (None:
    /// for ever); None if it passed.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<datasets::Parts>> {
        let timeout = seconds(timeout)?;
        // The lock only to share the subscription, and without the GIL.
        let sub = py.detach(|| self.sub.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let Some(sub) = sub else {
            return Err(PyValueError::new_err("this subscription is closed"));
        };
        let what = format!("topic {:?}", sub.name());
        let value = interruptible(py, |stop| sub.get_or_interrupt(timeout, stop))?;
        value
            .map(|d| datasets::dataset_parts(py, &self.client, &what, d))
            .transpose()
    }

    /// End it (messages not taken go; a `get` waiting in another thread raises).
    fn close(&self, py: Python<'_>) {
        let taken = py.detach(|| self.sub.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(sub) = taken {
            sub.close();
        }
    }
}

/// A duration argument: a number of seconds, or a string of a number and a unit (`"500ms"`,
/// `"5s"`, `"2m"`, `"1h"`; Dask's spelling); ValueError naming `what` otherwise.
fn duration_of(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let bad = |detail: String| {
        PyValueError::new_err(format!(
            "{what} must be seconds (a number >= 0) or a string such as \"500ms\" or \"5s\": {detail}"
        ))
    };
    let secs = if let Ok(text) = value.extract::<String>() {
        let text = text.trim();
        // The unit is the trailing letters ("1e3ms": 1e3 and "ms").
        let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = text[number.len()..].to_ascii_lowercase();
        let number: f64 = (number.trim().parse())
            .map_err(|_| bad(format!("{text:?} does not start with a number")))?;
        let scale = match unit.as_str() {
            "us" | "microseconds" => 1e-6,
            "ms" | "milliseconds" => 1e-3,
            "" | "s" | "seconds" | "second" => 1.0,
            "m" | "min" | "minutes" | "minute" => 60.0,
            "h" | "hours" | "hour" => 3600.0,
            other => return Err(bad(format!("unknown unit {other:?}"))),
        };
        number * scale
    } else {
        value
            .extract::<f64>()
            .map_err(|_| bad(format!("got {value}")))?
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad(format!("got {secs} seconds")))
}

/// How a variable or queue is named in errors.
fn item_name(name: &str, queue: bool) -> String {
    match queue {
        true => format!("queue {name:?}"),
        false => format!("variable {name:?}"),
    }
}

/// Run a coordination wait without the GIL, checking for Ctrl-C every 50 ms: a pending
/// KeyboardInterrupt stops it (whatever was granted meanwhile is undone) and is raised.
fn interruptible<T: Send>(
    py: Python<'_>,
    wait: impl FnOnce(&dyn Fn() -> bool) -> partita::Result<T> + Send,
) -> PyResult<T> {
    let pending: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
    let stop = || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                true
            }
        })
    };
    let result = py.detach(|| wait(&stop));
    let interrupt = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match (result, interrupt) {
        (Err(partita::Error::Cancelled), Some(e)) => Err(e),
        (result, _) => result.py_err(),
    }
}

/// A task run as `Client._task_stream` gives it: key, worker, start, stop, nbytes, erred.
type TaskRow = (String, String, f64, f64, u64, bool);

/// Dask's `resources={"GPU": 1}`: a ValueError naming a bad amount.
fn resources_of(
    resources: Option<std::collections::BTreeMap<String, f64>>,
) -> PyResult<partita::distributed::Resources> {
    partita::distributed::Resources::new(resources.unwrap_or_default())
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymethods]
impl PyLocalCluster {
    #[new]
    #[pyo3(signature = (n_workers = 2, threads_per_worker = 1, memory_limit = 0, metrics_address = None, nanny = true, resources = None, worker_args = None))]
    #[allow(clippy::too_many_arguments)] // Python keywords, as Dask's LocalCluster has them
    fn new(
        py: Python<'_>,
        n_workers: usize,
        threads_per_worker: u32,
        memory_limit: u64,
        metrics_address: Option<String>,
        nanny: bool,
        resources: Option<std::collections::BTreeMap<String, f64>>,
        worker_args: Option<Vec<String>>,
    ) -> PyResult<PyLocalCluster> {
        let python: std::path::PathBuf = py.import("sys")?.getattr("executable")?.extract()?;
        let metrics = match metrics_address {
            Some(a) => Some(a.parse::<std::net::SocketAddr>().map_err(|e| {
                PyValueError::new_err(format!(
                    "metrics_address {a:?} is not an IP address and port (such as \
                     \"127.0.0.1:8787\"): {e}"
                ))
            })?),
            None => None,
        };
        let options = LocalClusterOptions {
            n_workers,
            threads_per_worker: threads_per_worker.max(1),
            memory_limit,
            binary: Some(python),
            prefix_args: vec!["-m".into(), "partita".into()],
            metrics,
            nanny,
            resources: resources_of(resources)?,
            worker_args: worker_args.unwrap_or_default(),
        };
        let cluster = py.detach(|| LocalCluster::start(options)).py_err()?;
        Ok(PyLocalCluster(std::sync::Mutex::new(Some(cluster))))
    }

    /// The cluster file clients join with.
    #[getter]
    fn cluster_file(&self) -> PyResult<String> {
        Ok(self.file()?.display().to_string())
    }

    /// `http://host:port/metrics` when started with `metrics_address`, else `None`
    /// (Dask's `cluster.dashboard_link`).
    #[getter]
    fn metrics_link(&self) -> PyResult<Option<String>> {
        let guard = self.cluster()?;
        let c = guard.as_ref().expect("checked by cluster()");
        Ok(c.metrics_address().map(|a| format!("http://{a}/metrics")))
    }

    /// Kill the scheduler (SIGKILL) and start it again with the same credentials on a new
    /// port, for chaos tests. Workers notice when their connection times out (5 s); those
    /// with a nanny rejoin the new scheduler, the others exit. Clients must connect again:
    /// what the old scheduler knew is lost.
    fn restart_scheduler(&self, py: Python<'_>) -> PyResult<()> {
        let mut guard = self.cluster()?;
        let c = guard.as_mut().expect("checked by cluster()");
        py.detach(|| c.restart_scheduler()).py_err()
    }

    /// Process ids: `(scheduler, [workers])`; the scheduler's is None while it is killed.
    fn pids(&self) -> PyResult<(Option<u32>, Vec<u32>)> {
        let guard = self.cluster()?;
        let c = guard.as_ref().expect("checked by cluster()");
        Ok((c.scheduler_pid(), c.worker_pids()))
    }

    /// A process's log so far: `"scheduler"` or `"worker-0"`, ...
    fn log(&self, name: &str) -> PyResult<String> {
        let guard = self.cluster()?;
        Ok(guard.as_ref().expect("checked by cluster()").log(name))
    }

    /// Have `n` worker processes (Dask's `cluster.scale(n)`): start more, or retire the
    /// least busy and emptiest workers gracefully, their values handed to the workers that
    /// stay. Returns once the cluster has `n` workers (TransportError after `timeout`
    /// seconds, or when values held leave nowhere to go for `n=0`). Stops `adapt`.
    #[pyo3(signature = (n, timeout = 60.0))]
    fn scale(&self, py: Python<'_>, n: usize, timeout: f64) -> PyResult<()> {
        let timeout = seconds(Some(timeout))?.unwrap_or_default();
        let mut guard = self.cluster()?;
        let c = guard.as_mut().expect("checked by cluster()");
        py.detach(|| c.scale(n, timeout)).py_err()
    }

    /// Scale with the load (Dask's `cluster.adapt`): every `interval` ask the scheduler how
    /// many workers would finish the work in sight in `target_duration`, start workers
    /// at once when that (within `minimum`..`maximum`) is more than run, retire the idle
    /// workers it names after `wait_count` answers in a row asked for fewer. `maximum`
    /// defaults to this machine's cores over `threads_per_worker`. Durations are seconds
    /// or strings such as "500ms", "5s", "2 minutes". Replaces an earlier `adapt`;
    /// `scale`, `stop_adapting` or `close` stop it.
    #[pyo3(signature = (minimum = 0, maximum = None, interval = None, target_duration = None, wait_count = 3))]
    fn adapt(
        &self,
        py: Python<'_>,
        minimum: usize,
        maximum: Option<usize>,
        interval: Option<&Bound<'_, PyAny>>,
        target_duration: Option<&Bound<'_, PyAny>>,
        wait_count: u32,
    ) -> PyResult<()> {
        let defaults = partita::distributed::AdaptOptions::default();
        let options = partita::distributed::AdaptOptions {
            minimum,
            maximum,
            interval: interval.map_or(Ok(defaults.interval), |d| duration_of(d, "interval"))?,
            target_duration: (target_duration).map_or(Ok(defaults.target_duration), |d| {
                duration_of(d, "target_duration")
            })?,
            wait_count: wait_count.max(1),
        };
        let mut guard = self.cluster()?;
        let c = guard.as_mut().expect("checked by cluster()");
        py.detach(|| c.adapt(options)).py_err()
    }

    /// Stop scaling with the load; the workers running stay.
    fn stop_adapting(&self, py: Python<'_>) -> PyResult<()> {
        let mut guard = self.cluster()?;
        let c = guard.as_mut().expect("checked by cluster()");
        py.detach(|| c.stop_adapting());
        Ok(())
    }

    /// Whether `adapt` is on.
    #[getter]
    fn adaptive(&self, py: Python<'_>) -> PyResult<bool> {
        // Without the GIL: `scale` may hold the cluster for a while.
        py.detach(|| {
            let guard = self.cluster()?;
            Ok(guard.as_ref().expect("checked by cluster()").is_adaptive())
        })
    }

    /// Worker processes running now (started and not exited).
    #[getter]
    fn n_workers(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| {
            let guard = self.cluster()?;
            Ok(guard
                .as_ref()
                .expect("checked by cluster()")
                .running_workers())
        })
    }

    /// Stop every process of this cluster.
    fn close(&self, py: Python<'_>) {
        let taken = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        py.detach(|| drop(taken));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        match self.cluster() {
            Ok(g) => {
                let c = g.as_ref().expect("checked by cluster()");
                format!(
                    "<partita.LocalCluster workers={} file={}>",
                    c.worker_pids().len(),
                    c.cluster_file().display()
                )
            }
            Err(_) => "<partita.LocalCluster closed>".into(),
        }
    }
}

/// `python -m partita scheduler|worker ...`: the `partita` command inside this interpreter.
#[pyfunction]
fn cli_main(py: Python<'_>, args: Vec<String>) -> i32 {
    // The process serves the cluster with this thread detached until the runtime (and every
    // thread it started) has stopped: any of its threads may keep a Python thread state.
    threadstate::serving();
    py.detach(|| partita_cli::main_from(args))
}

#[pymodule]
fn _partita(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    threadstate::register(m)?;
    m.add_class::<RustArray>()?;
    m.add_class::<filtered::RustFilteredArray>()?;
    m.add_class::<RustFrame>()?;
    m.add_function(wrap_pyfunction!(from_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(worker_local_directory, m)?)?;
    m.add_function(wrap_pyfunction!(worker_connection, m)?)?;
    m.add_function(wrap_pyfunction!(secede, m)?)?;
    m.add_function(wrap_pyfunction!(rejoin, m)?)?;
    m.add_function(wrap_pyfunction!(current_task, m)?)?;
    m.add_class::<WorkerConnection>()?;
    m.add_function(wrap_pyfunction!(full, m)?)?;
    m.add_function(wrap_pyfunction!(arange, m)?)?;
    m.add_function(wrap_pyfunction!(linspace, m)?)?;
    m.add_function(wrap_pyfunction!(eye, m)?)?;
    m.add_function(wrap_pyfunction!(random_uniform, m)?)?;
    m.add_function(wrap_pyfunction!(read_zarr, m)?)?;
    m.add_function(wrap_pyfunction!(random_normal, m)?)?;
    m.add_function(wrap_pyfunction!(random_integers, m)?)?;
    m.add_function(wrap_pyfunction!(where_, m)?)?;
    m.add_function(wrap_pyfunction!(concatenate, m)?)?;
    m.add_function(wrap_pyfunction!(stack, m)?)?;
    m.add_function(wrap_pyfunction!(tensordot, m)?)?;
    m.add_function(wrap_pyfunction!(map_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(compute, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_class::<PyClient>()?;
    m.add_class::<futures::PyFuture>()?;
    m.add_class::<futures::PyAsCompleted>()?;
    m.add_class::<pycall::RustDelayed>()?;
    m.add_function(wrap_pyfunction!(pycall::delayed_call, m)?)?;
    m.add_function(wrap_pyfunction!(pycall::delayed_of_array, m)?)?;
    m.add_function(wrap_pyfunction!(pycall::delayed_of_frame, m)?)?;
    m.add_function(wrap_pyfunction!(pycall::encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(pycall::decode_value, m)?)?;
    m.add_class::<PyLocalCluster>()?;
    m.add_class::<Subscription>()?;
    m.add("PartitaError", py.get_type::<PartitaError>())?;
    m.add("GraphError", py.get_type::<GraphError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("SchemaError", py.get_type::<SchemaError>())?;
    m.add("DTypeError", py.get_type::<DTypeError>())?;
    m.add("ComputeError", py.get_type::<ComputeError>())?;
    m.add("PartitaIOError", py.get_type::<PartitaIOError>())?;
    m.add("CodecError", py.get_type::<CodecError>())?;
    m.add("TransportError", py.get_type::<TransportError>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add(
        "PartitaNotImplementedError",
        py.get_type::<PartitaNotImplementedError>(),
    )?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

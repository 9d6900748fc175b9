//! Python functions as tasks that can travel: `client.submit(f, *args)` and `client.map`.
//!
//! Key decisions:
//! - **The function and its arguments travel pickled** (cloudpickle, so lambdas and closures
//!   defined in a notebook work): [`PyCall`] is an ordinary serializable op whose payload is
//!   `cloudpickle.dumps((f, args, kwargs))`, with each future among the arguments replaced by
//!   a `partita._futures.Dep(i)` placeholder for the task's i-th input.
//! - **Python objects are values** ([`PyObj`], codec `python-pickle`), so a Python result
//!   moves between workers and back to the client like any chunk or partition. Array chunks
//!   and frame partitions reaching a Python function arrive as NumPy arrays and polars frames.
//! - **`map_blocks` and `map_partitions` kernels** are serializable ops too ([`PyBlocks`],
//!   [`PyPartitions`]): the function is held as a Python object ([`PyFunction`]) and pickled
//!   only if the graph goes to a cluster, so local runs never pickle (a kernel that cannot
//!   be pickled still runs locally, and a cluster says which task could not be sent).
//! - **Only a process with Python runs them.** Workers started by `python -m partita worker`
//!   (as `pt.LocalCluster` does) link this module and run Python tasks with the GIL taken per
//!   call; the plain `partita` binary cannot decode a `python-` op and the task fails with an
//!   error saying how to start a worker that can.

use std::sync::Arc;

use partita::{Error, Op, Result, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString};
use serde::{Deserialize, Serialize};

/// A Python object held as a task's value.
#[derive(Debug)]
pub struct PyObj(pub Py<PyAny>);

impl partita::Data for PyObj {
    fn nbytes(&self) -> usize {
        crate::threadstate::attach_value(|py| {
            let obj = self.0.bind(py);
            // NumPy arrays (and anything else with `nbytes`) know their buffer size; the
            // rest, their shallow size. Plain scalars skip the `nbytes` lookup, whose
            // AttributeError costs more than the task that made them.
            let scalar = is_plain_scalar(obj);
            if !scalar
                && let Ok(Some(n)) = obj.getattr_opt("nbytes")
                && let Ok(n) = n.extract::<usize>()
            {
                return n;
            }
            static GETSIZEOF: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            GETSIZEOF
                .import(py, "sys", "getsizeof")
                .and_then(|f| f.call1((obj,)))
                .and_then(|n| n.extract::<usize>())
                .unwrap_or(64)
        })
    }

    fn codec(&self) -> &'static str {
        "python-pickle"
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        crate::threadstate::attach_value(|py| {
            // Plain scalars are the same everywhere and plain pickle writes them ten times
            // faster; anything else may be (or hold) a class only this process defines.
            let obj = self.0.bind(py);
            let dumps = if is_plain_scalar(obj) {
                pickle_dumps(py)
            } else {
                cloudpickle_dumps(py)
            };
            let bytes = dumps
                .and_then(|dumps| dumps.call1((obj,)))
                .map_err(|e| Error::Codec(format!("cannot pickle a Python result: {e}")))?;
            let bytes = bytes
                .cast::<PyBytes>()
                .map_err(|e| Error::Codec(format!("pickling gave no bytes: {e}")))?;
            out.extend_from_slice(bytes.as_bytes());
            Ok(())
        })
    }
}

fn decode_pyobj(payload: bytes::Bytes) -> Result<Value> {
    crate::threadstate::attach_value(|py| {
        let obj = pickle_loads(py)
            .and_then(|loads| loads.call1((PyBytes::new(py, &payload),)))
            .map_err(|e| Error::Codec(format!("cannot unpickle a Python value: {e}")))?;
        Ok(Value::new(PyObj(obj.unbind())))
    })
}

partita::register_codec!("python-pickle", decode_pyobj);

/// `None`, or exactly an int, float, bool, str or bytes.
fn is_plain_scalar(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_none()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBytes>()
}

/// `pickle.dumps`, imported once.
fn pickle_dumps(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    DUMPS.import(py, "pickle", "dumps")
}

/// `cloudpickle.dumps`, imported once.
fn cloudpickle_dumps(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    DUMPS.import(py, "cloudpickle", "dumps")
}

/// `pickle.loads`, imported once.
fn pickle_loads(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOADS.import(py, "pickle", "loads")
}

/// `f(*args, **kwargs)` with futures among the arguments; see the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PyCall {
    /// The function's name, for diagnostics.
    pub name: String,
    /// `cloudpickle.dumps((f, args, kwargs))` with `Dep(i)` placeholders.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[typetag::serde(name = "python-call")]
impl Op for PyCall {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        static RUN_CALL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        crate::threadstate::attach_task(|py| {
            let args = inputs
                .iter()
                .map(|v| value_to_py(py, v))
                .collect::<Result<Vec<_>>>()?;
            let out = RUN_CALL
                .import(py, "partita._futures", "run_call")
                .and_then(|run_call| {
                    let inputs = PyList::new(py, args)?;
                    run_call.call1((PyBytes::new(py, &self.payload), inputs))
                })
                .map_err(|e| {
                    Error::External(format!("the Python function {} raised {e}", self.name).into())
                })?;
            Ok(Value::new(PyObj(out.unbind())))
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A task's value as a Python object: Python values as themselves, chunks as NumPy arrays,
/// partitions as polars frames, Rust scalars as Python numbers.
pub fn value_to_py(py: Python<'_>, value: &Value) -> Result<Py<PyAny>> {
    use pyo3::IntoPyObjectExt;
    let conv = |e: PyErr| Error::Internal(format!("cannot convert a value to Python: {e}"));
    if let Ok(o) = value.get::<PyObj>() {
        return Ok(o.0.clone_ref(py));
    }
    if let Ok(c) = value.get::<partita::array::Chunk>() {
        return Ok(crate::chunk_to_numpy(py, c.clone()));
    }
    if let Ok(part) = value.get::<partita::frame::Partition>() {
        return pyo3_polars::PyDataFrame(part.0.clone())
            .into_py_any(py)
            .map_err(conv);
    }
    macro_rules! scalar {
        ($($t:ty),*) => {$(
            if let Ok(x) = value.get::<$t>() {
                return x.clone().into_py_any(py).map_err(conv);
            }
        )*};
    }
    scalar!(i64, f64, bool, String, i32, u64, f32, Vec<f64>, Vec<i64>);
    Err(Error::NotImplemented(format!(
        "passing a {} value to a Python function",
        value.type_name()
    )))
}

/// `pt.delayed`: a lazy Python call (wrapped by `partita.Delayed`).
#[pyclass(module = "partita._partita", frozen)]
pub(crate) struct RustDelayed(pub(crate) partita::Delayed<Value>);

#[pymethods]
impl RustDelayed {
    /// The task's key.
    #[getter]
    fn key(&self) -> String {
        key_text(self.0.key())
    }
}

/// A delayed call of a Python function prepared by `partita._futures` (its name, the pickled
/// `(f, args, kwargs)` and the delayed values it reads, in `Dep` order).
#[pyfunction]
pub(crate) fn delayed_call(
    name: String,
    payload: Vec<u8>,
    deps: Vec<Py<RustDelayed>>,
) -> RustDelayed {
    let args: Vec<partita::Delayed<Value>> = deps.iter().map(|d| d.get().0.clone()).collect();
    let op = Arc::new(PyCall {
        name: name.clone(),
        payload,
    });
    RustDelayed(partita::delayed::apply_op(&name, op, &args))
}

/// The one task of `c` (a collection made single-block) as a delayed value.
fn whole<C: partita::Collection>(c: &C) -> PyResult<RustDelayed> {
    let key = c.output_keys().into_iter().next().ok_or_else(|| {
        crate::to_py(Error::Internal(
            "a single-block collection without a block".into(),
        ))
    })?;
    Ok(RustDelayed(partita::Delayed::from_layer(
        Arc::clone(c.layer()),
        key,
    )))
}

/// A whole array as a delayed value (a NumPy array once computed): its blocks joined into
/// one by a rechunk, so a delayed function given an array receives all of it, as Dask's does.
#[pyfunction]
pub(crate) fn delayed_of_array(array: &crate::RustArray) -> PyResult<RustDelayed> {
    let a = &array.0;
    let one: Vec<Vec<usize>> = a.shape().iter().map(|&d| vec![d]).collect();
    let joined = a
        .rechunk(partita::array::Chunks::Explicit(one))
        .map_err(crate::to_py)?;
    whole(&joined)
}

/// A whole frame as a delayed value (a polars DataFrame once computed).
#[pyfunction]
pub(crate) fn delayed_of_frame(frame: &crate::RustFrame) -> PyResult<RustDelayed> {
    let joined = frame.0.repartition(1).map_err(crate::to_py)?;
    whole(&joined)
}

/// A key as Python users see it: the bare name for a single task (`inc-3f2a...`), the
/// Dask-style tuple for a chunk or partition (`('x', 0, 1)`).
pub(crate) fn key_text(key: &partita::Key) -> String {
    if key.index().is_empty() {
        key.name().to_string()
    } else {
        key.to_string()
    }
}

/// A Python callable inside an op: called directly in this process, cloudpickled when the
/// op is serialized for a cluster and unpickled on the worker that decodes it.
#[derive(Debug)]
pub struct PyFunction(pub Py<PyAny>);

impl Serialize for PyFunction {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let bytes = Python::attach(|py| {
            let out = cloudpickle_dumps(py)?.call1((self.0.bind(py),))?;
            out.extract::<Vec<u8>>()
        })
        .map_err(|e| {
            serde::ser::Error::custom(format!("cannot pickle the Python function: {e}"))
        })?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for PyFunction {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        crate::threadstate::attach_value(|py| {
            pickle_loads(py)?
                .call1((PyBytes::new(py, &bytes),))
                .map(|f| PyFunction(f.unbind()))
        })
        .map_err(|e| serde::de::Error::custom(format!("cannot unpickle the Python function: {e}")))
    }
}

/// `function(*blocks) -> block` for one block of `map_blocks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PyBlocks {
    pub function: PyFunction,
    pub dtype: partita::array::DType,
    pub shape: Vec<usize>,
    pub block: Vec<usize>,
}

#[typetag::serde(name = "python-blocks")]
impl Op for PyBlocks {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let blocks = partita::array::Chunk::from_values(inputs)?;
        let out = crate::threadstate::attach_task(|py| {
            let args: Vec<Py<PyAny>> = blocks
                .iter()
                .map(|b| crate::chunk_to_numpy(py, (*b).clone()))
                .collect();
            pyo3::types::PyTuple::new(py, args)
                .and_then(|args| self.function.0.call1(py, args))
                .and_then(|out| crate::numpy_to_chunk(out.bind(py)))
                .map_err(|e| Error::External(format!("the Python function raised {e}").into()))
        })?;
        partita::array::check_block(&out, self.dtype, &self.shape, &self.block)?;
        Ok(Value::new(out))
    }

    fn name(&self) -> &str {
        "python-map-blocks"
    }
}

/// `function(frame) -> frame` for one partition of `map_partitions` (the schema is checked
/// by the frame crate's wrapper).
#[derive(Debug, Serialize, Deserialize)]
pub struct PyPartitions {
    pub function: PyFunction,
}

#[typetag::serde(name = "python-partitions")]
impl Op for PyPartitions {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let [input] = inputs else {
            return Err(Error::Graph(format!(
                "map_partitions takes one partition, got {}",
                inputs.len()
            )));
        };
        let frame = partita::frame::Partition::from_value(input)?.clone();
        let out = crate::threadstate::attach_task(|py| {
            self.function
                .0
                .call1(py, (pyo3_polars::PyDataFrame(frame),))
                .and_then(|out| out.extract::<pyo3_polars::PyDataFrame>(py))
                .map_err(|e| Error::External(format!("the Python function raised {e}").into()))
        })?;
        Ok(partita::frame::Partition::value(out.0))
    }

    fn name(&self) -> &str {
        "python-map-partitions"
    }
}

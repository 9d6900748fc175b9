//! Python functions as tasks that can travel: `client.submit(f, *args)` and `client.map`.
//!
//! Key decisions:
//! - **The function and its arguments travel pickled** (cloudpickle, so lambdas and closures
//!   defined in a notebook work): [`PyCall`] is an ordinary serializable op whose payload is
//!   `cloudpickle.dumps((f, args, kwargs))`, with each future among the arguments replaced by
//!   a `partita._futures.Dep(i)` placeholder for the task's i-th input.
//! - **Python objects are values** ([`PyObj`], codec `python-pickle`), so a Python result
//!   moves between workers and back to the client like any chunk or partition; what pickle
//!   protocol 5 offers out of band (a NumPy array's data) travels as the encoding's body,
//!   sent from the memory it lies in and unpickled over the buffer it arrives in. Array chunks
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

use partita::{BufferList, Error, Op, Result, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyMemoryView, PyString};
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
        let (head, body) = self.pickled()?;
        out.reserve(head.len() + body.iter().map(|b| b.len()).sum::<usize>());
        out.extend_from_slice(&head);
        for part in &body {
            out.extend_from_slice(part);
        }
        Ok(())
    }

    fn encode_split(&self) -> Result<Option<(Vec<u8>, Vec<bytes::Bytes>)>> {
        self.pickled().map(Some)
    }
}

/// Payload formats of the `python-pickle` codec (its first byte).
const PICKLE_IN_BAND: u8 = 0;
const PICKLE_OUT_OF_BAND: u8 = 1;

impl PyObj {
    /// The payload as a head and a body. Plain scalars are pickled in band (plain pickle,
    /// ten times faster for them); anything else with cloudpickle, protocol 5, and the
    /// buffers it offers out of band (a NumPy array's data) become the body, each padded
    /// to 8 bytes: the head is the format byte 1 and a [`BufferList`] head whose trailer is
    /// the pickle. The body's parts borrow the buffers' memory ([`BorrowedView`]) and the
    /// receiver keeps the body in one buffer that the unpickled objects then share, so a
    /// large array is not copied outside the transport (it was five times once).
    fn pickled(&self) -> Result<(Vec<u8>, Vec<bytes::Bytes>)> {
        crate::threadstate::attach_value(|py| {
            let obj = self.0.bind(py);
            let failed = |e: PyErr| Error::Codec(format!("cannot pickle a Python result: {e}"));
            if is_plain_scalar(obj) {
                let pickle = pickle_dumps(py)
                    .and_then(|d| d.call1((obj,)))
                    .map_err(failed)?;
                return Ok((in_band(&pickle)?, Vec::new()));
            }
            let buffers = PyList::empty(py);
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item("protocol", 5).map_err(failed)?;
            kwargs
                .set_item(
                    "buffer_callback",
                    buffers.getattr("append").map_err(failed)?,
                )
                .map_err(failed)?;
            let pickle = cloudpickle_dumps(py)
                .and_then(|d| d.call((obj,), Some(&kwargs)))
                .map_err(failed)?;
            if buffers.is_empty() {
                return Ok((in_band(&pickle)?, Vec::new()));
            }
            // Each buffer's memory, borrowed in place (`raw()`: contiguous buffers only; a
            // buffer that is not makes the whole object go in band).
            let mut raw = Vec::with_capacity(buffers.len());
            for b in buffers.iter() {
                match b
                    .call_method0("raw")
                    .and_then(|view| BorrowedView::new(&view))
                {
                    Ok(view) => raw.push(view),
                    Err(_) => {
                        let pickle = cloudpickle_dumps(py)
                            .and_then(|d| d.call1((obj,)))
                            .map_err(failed)?;
                        return Ok((in_band(&pickle)?, Vec::new()));
                    }
                }
            }
            let lengths: Vec<usize> = raw.iter().map(|b| b.as_ref().len()).collect();
            let mut head = vec![PICKLE_OUT_OF_BAND];
            BufferList::write_head(&lengths, pickle_bytes(&pickle)?, &mut head);
            let buffers = raw.into_iter().map(bytes::Bytes::from_owner).collect();
            Ok((head, BufferList::body(buffers)))
        })
    }
}

/// A contiguous Python buffer's memory, borrowed without a copy for as long as a payload
/// being sent needs it.
///
/// Key decision: the memoryview is held, not a `PyBuffer`. The memoryview keeps its own
/// export of the buffer (so the memory stays put: NumPy refuses to resize an exported
/// array) and dropping a `Py` on a thread without the GIL only queues its reference count
/// for later, whereas releasing a `PyBuffer` waits for the GIL, and the sending thread (a
/// runtime thread) must never wait for a thread that may hold the GIL while it waits for
/// the runtime. The bytes are sent as they are when the stream reads them: an array that a
/// task mutates in place while it travels arrives with some of both versions, as it would
/// be seen by another thread of the same process.
struct BorrowedView {
    _view: Py<PyAny>,
    ptr: *const u8,
    len: usize,
}

impl BorrowedView {
    /// `view`: a C-contiguous buffer (`PickleBuffer.raw()`), sent as its bytes.
    fn new(view: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buffer = pyo3::buffer::PyUntypedBuffer::get(view)?;
        if !buffer.is_c_contiguous() {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "buffer is not contiguous",
            ));
        }
        let (ptr, len) = (buffer.buf_ptr() as *const u8, buffer.len_bytes());
        // Our own export ends here (with the GIL held); the memoryview's stays.
        buffer.release(view.py());
        Ok(Self {
            _view: view.clone().unbind(),
            ptr,
            len,
        })
    }
}

// SAFETY: the memory is owned by the Python object behind `_view`, which this value keeps
// alive and exported (so not freed or moved) until it is dropped; reading it needs no GIL.
#[allow(unsafe_code)]
unsafe impl Send for BorrowedView {}
#[allow(unsafe_code)]
unsafe impl Sync for BorrowedView {}

impl AsRef<[u8]> for BorrowedView {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` and `len` describe one contiguous buffer exported by the memoryview
        // this value holds (see `Send`).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

/// What `pickle.dumps` returned, as bytes.
fn pickle_bytes<'a>(pickle: &'a Bound<'_, PyAny>) -> Result<&'a [u8]> {
    (pickle.cast::<PyBytes>())
        .map(|b| b.as_bytes())
        .map_err(|e| Error::Codec(format!("pickling gave no bytes: {e}")))
}

fn in_band(pickle: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
    let bytes = pickle_bytes(pickle)?;
    let mut head = Vec::with_capacity(1 + bytes.len());
    head.push(PICKLE_IN_BAND);
    head.extend_from_slice(bytes);
    Ok(head)
}

/// Unpickle `list`'s pickle with its buffers as slices of `body` (a Python object with the
/// buffer protocol holding at least [`BufferList::body_len`] bytes).
fn load_out_of_band(
    py: Python<'_>,
    list: &BufferList,
    body: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let bytes = body.call_method1("cast", ("B",))?;
    let views = PyList::empty(py);
    for range in list.ranges() {
        let slice = pyo3::types::PySlice::new(py, range.start as isize, range.end as isize, 1);
        views.append(bytes.get_item(slice)?)?;
    }
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("buffers", views)?;
    pickle_loads(py)?
        .call((PyBytes::new(py, &list.trailer),), Some(&kwargs))
        .map(Bound::unbind)
}

fn unpickle_failed(e: PyErr) -> Error {
    Error::Codec(format!("cannot unpickle a Python value: {e}"))
}

fn decode_pyobj(mut payload: bytes::Bytes) -> Result<Value> {
    if payload.is_empty() {
        return Err(Error::Codec("malformed Python value: empty".into()));
    }
    let format = payload.split_to(1)[0];
    crate::threadstate::attach_value(|py| {
        let obj = match format {
            PICKLE_IN_BAND => pickle_loads(py)
                .and_then(|loads| loads.call1((PyBytes::new(py, &payload),)))
                .map(Bound::unbind)
                .map_err(unpickle_failed)?,
            PICKLE_OUT_OF_BAND => {
                let (oob, body) = BufferList::parse(payload, "Python value")?;
                oob.check_body(body.len(), "Python value")?;
                // Writable, as the arrays a task returned were.
                let body = pyo3::types::PyByteArray::new(py, &body);
                let memory = PyMemoryView::from(&body).map_err(unpickle_failed)?;
                load_out_of_band(py, &oob, &memory).map_err(unpickle_failed)?
            }
            other => {
                return Err(Error::Codec(format!(
                    "malformed Python value: unknown format {other}"
                )));
            }
        };
        Ok(Value::new(PyObj(obj)))
    })
}

/// The receiving side of an out-of-band payload: the body stays in the buffer it arrived
/// in, which becomes a NumPy array the unpickled objects share (no copy).
fn decode_pyobj_split(mut head: bytes::Bytes, body: Vec<u64>, body_len: usize) -> Result<Value> {
    if head.first() != Some(&PICKLE_OUT_OF_BAND) {
        return Err(Error::Codec(
            "malformed Python value: a body without out-of-band buffers".into(),
        ));
    }
    let _ = head.split_to(1);
    let (oob, rest) = BufferList::parse(head, "Python value")?;
    if !rest.is_empty() {
        return Err(Error::Codec(format!(
            "malformed Python value: {} bytes after the pickle",
            rest.len()
        )));
    }
    oob.check_body(body_len, "Python value")?;
    crate::threadstate::attach_value(|py| {
        use numpy::IntoPyArray;
        let words = body.into_pyarray(py);
        let memory = PyMemoryView::from(words.as_any()).map_err(unpickle_failed)?;
        let obj = load_out_of_band(py, &oob, &memory).map_err(unpickle_failed)?;
        Ok(Value::new(PyObj(obj)))
    })
}

partita::register_codec!("python-pickle", decode_pyobj, split = decode_pyobj_split);

/// `_partita._encode_value(obj) -> (head, body)`: a Python object's encoding as a worker
/// sends it (`body` joins the body's parts; empty when the codec did not split it). With
/// [`decode_value`], lets the Python tests feed the codec damaged payloads.
#[pyfunction]
#[pyo3(name = "_encode_value")]
pub(crate) fn encode_value<'py>(
    py: Python<'py>,
    obj: Py<PyAny>,
) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    let (head, parts) = Value::new(PyObj(obj))
        .encode_split()
        .map_err(crate::to_py)?;
    let body: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    Ok((PyBytes::new(py, &head), PyBytes::new(py, &body)))
}

/// `_partita._decode_value(head, body=None)`: decode as a receiver does: `head` alone as a
/// whole encoding, or `head` and a body that arrived apart (kept in 8-byte words). A value
/// that is not a Python object comes back as an error naming its type.
#[pyfunction]
#[pyo3(name = "_decode_value", signature = (head, body = None))]
pub(crate) fn decode_value(
    py: Python<'_>,
    head: Vec<u8>,
    body: Option<Vec<u8>>,
) -> PyResult<Py<PyAny>> {
    let value = match body {
        None => Value::decode(head),
        Some(body) => {
            let mut words = vec![0u64; body.len().div_ceil(8)];
            for (word, chunk) in words.iter_mut().zip(body.chunks(8)) {
                let mut bytes = [0u8; 8];
                bytes[..chunk.len()].copy_from_slice(chunk);
                *word = u64::from_le_bytes(bytes);
            }
            Value::decode_split(head.into(), words, body.len())
        }
    }
    .map_err(crate::to_py)?;
    let obj = value.get::<PyObj>().map_err(crate::to_py)?;
    Ok(obj.0.clone_ref(py))
}

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

//! `pt.Future` and `pt.as_completed`: the cluster client's futures in Python.
//!
//! A Python future stands for one collection (`client.compute(x)`: all of its chunks or
//! partitions, assembled into a NumPy array or a polars frame by `result()`) or one Python
//! call (`client.submit(f, *args)`). Waiting happens with the GIL released, in 50 ms steps
//! so Ctrl-C interrupts it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partita::Key;
use partita::distributed::{AsCompleted, Client, Future, FutureStatus, SubmitOptions};
use pyo3::exceptions::{PyTimeoutError, PyTypeError};
use pyo3::prelude::*;

use crate::pycall::key_text;
use crate::{AnyCollection, Computed, IntoPy, PyClient, chunk_to_numpy};

/// What a future's keys make up.
pub(crate) enum What {
    Collection(AnyCollection),
    /// One Python call's result.
    Object,
}

/// A result on the cluster: `client.compute(x)` or `client.submit(f, *args)`.
#[pyclass(name = "Future", module = "partita._partita", frozen)]
pub(crate) struct PyFuture {
    pub(crate) what: What,
    pub(crate) futures: Vec<Future>,
    pub(crate) client: Arc<Client>,
}

fn status_name(futures: &[Future]) -> &'static str {
    let statuses: Vec<FutureStatus> = futures.iter().map(Future::status).collect();
    let any = |s| statuses.contains(&s);
    if any(FutureStatus::Error) {
        "error"
    } else if any(FutureStatus::Cancelled) {
        "cancelled"
    } else if any(FutureStatus::Lost) {
        "lost"
    } else if any(FutureStatus::Pending) {
        "pending"
    } else {
        "finished"
    }
}

/// The Rust futures behind Python ones: one per key (a collection's future has one per
/// chunk or partition).
pub(crate) fn every_key(futures: &[Py<PyFuture>]) -> Vec<Future> {
    (futures.iter())
        .flat_map(|f| f.get().futures.iter().cloned())
        .collect()
}

/// Wait until every future is done, `timeout` seconds pass (`TimeoutError`), or Ctrl-C.
fn wait_all(
    py: Python<'_>,
    client: &Client,
    futures: &[Future],
    timeout: Option<f64>,
) -> PyResult<()> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        if futures.iter().all(Future::done) {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(PyTimeoutError::new_err(format!(
                "{} futures not done within {} s",
                futures.iter().filter(|f| !f.done()).count(),
                timeout.unwrap_or_default()
            )));
        }
        let _ = py.detach(|| client.wait(futures, Some(Duration::from_millis(50))));
        py.check_signals()?;
    }
}

impl PyFuture {
    /// Gathered values of all `items` (in one concurrent gather), turned into Python objects.
    fn results(
        py: Python<'_>,
        items: &[&PyFuture],
        timeout: Option<f64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        let all: Vec<Future> = items
            .iter()
            .flat_map(|f| f.futures.iter().cloned())
            .collect();
        wait_all(py, &first.client, &all, timeout)?;
        let client = Arc::clone(&first.client);
        let values = py.detach(|| client.gather(&all)).py_err()?;
        let mut values = values.into_iter();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mine: Vec<partita::Value> = values.by_ref().take(item.futures.len()).collect();
            let computed = match &item.what {
                What::Collection(AnyCollection::Array(a)) => {
                    let a = a.clone();
                    py.detach(|| a.chunk_from_values(&mine))
                        .map(Computed::Chunk)
                }
                What::Collection(AnyCollection::Filtered(a)) => {
                    let a = a.clone();
                    py.detach(|| a.chunk_from_values(&mine))
                        .map(Computed::Chunk)
                }
                What::Collection(AnyCollection::Frame(f)) => {
                    let f = f.clone();
                    py.detach(|| f.frame_from_values(&mine))
                        .map(Computed::Frame)
                }
                What::Object | What::Collection(AnyCollection::Delayed(_)) => {
                    let v = mine.first().ok_or_else(|| {
                        partita::Error::Internal("a Python future gathered no value".into())
                    });
                    out.push(v.and_then(|v| crate::pycall::value_to_py(py, v)).py_err()?);
                    continue;
                }
            }
            .py_err()?;
            out.push(match computed {
                Computed::Chunk(c) => chunk_to_numpy(py, c),
                Computed::Frame(f) => pyo3_polars::PyDataFrame(f).into_pyobject(py)?.unbind(),
                Computed::Object(v) => crate::pycall::value_to_py(py, &v).py_err()?,
            });
        }
        Ok(out)
    }
}

/// A done-callback waiting for its future ([`PyFuture::add_done_callback`]).
struct PendingCallback {
    futures: Vec<Future>,
    future: Py<PyFuture>,
    callback: Py<PyAny>,
}

/// The callback thread's inbox, the thread started with the first callback.
static CALLBACKS: Mutex<Option<std::sync::mpsc::Sender<PendingCallback>>> = Mutex::new(None);

fn callbacks() -> PyResult<std::sync::mpsc::Sender<PendingCallback>> {
    let mut inbox = CALLBACKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = inbox.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("partita-callbacks".into())
        .spawn(move || run_callbacks(rx))
        .map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!(
                "cannot start the callback thread: {e}"
            ))
        })?;
    *inbox = Some(tx.clone());
    Ok(tx)
}

/// The callback thread: waits for callbacks, looks at their futures every 20 ms while
/// any waits, and calls those whose futures are done, in the order they were added.
fn run_callbacks(rx: std::sync::mpsc::Receiver<PendingCallback>) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut waiting: Vec<PendingCallback> = Vec::new();
    loop {
        let next = match waiting.is_empty() {
            true => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            false => rx.recv_timeout(Duration::from_millis(20)),
        };
        match next {
            Ok(p) => waiting.push(p),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        waiting.extend(rx.try_iter());
        let (done, left): (Vec<_>, Vec<_>) =
            (waiting.into_iter()).partition(|p| p.futures.iter().all(Future::done));
        waiting = left;
        if !done.is_empty() {
            Python::attach(|py| {
                for p in done {
                    if let Err(e) = p.callback.call1(py, (p.future,)) {
                        e.write_unraisable(py, Some(p.callback.bind(py)));
                    }
                }
            });
        }
    }
}

#[pymethods]
impl PyFuture {
    /// The keys this future waits for (one per chunk or partition, or the call's key).
    #[getter]
    fn keys(&self) -> Vec<String> {
        self.futures.iter().map(|f| key_text(f.key())).collect()
    }

    /// The key of a single-key future (a Python call), else the first chunk's key.
    #[getter]
    fn key(&self) -> String {
        self.futures
            .first()
            .map(|f| key_text(f.key()))
            .unwrap_or_default()
    }

    /// `"pending"`, `"finished"`, `"error"`, `"cancelled"` or `"lost"`.
    #[getter]
    fn status(&self) -> &'static str {
        status_name(&self.futures)
    }

    /// Whether it is finished, failed, cancelled or lost.
    fn done(&self) -> bool {
        self.futures.iter().all(Future::done)
    }

    /// Wait (at most `timeout` seconds) and return the value: a NumPy array, a polars
    /// frame or the Python call's result; a failed task raises its error.
    #[pyo3(signature = (timeout = None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let mut out = PyFuture::results(py, &[self], timeout)?;
        Ok(out.remove(0))
    }

    /// Block until it is done (`TimeoutError` after `timeout` seconds).
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        wait_all(py, &self.client, &self.futures, timeout)
    }

    /// Stop computing it and forget it on the cluster.
    fn cancel(&self) -> PyResult<()> {
        self.client.cancel(&self.futures).py_err()
    }

    /// Run it to the end even once dropped (`pt.fire_and_forget`).
    fn _fire_and_forget(&self) -> PyResult<()> {
        (self.futures.iter())
            .try_for_each(Future::fire_and_forget)
            .py_err()
    }

    /// Whether it was cancelled (by `cancel`, or a `client.restart`).
    fn cancelled(&self) -> bool {
        self.status() == "cancelled"
    }

    /// Wait (at most `timeout` seconds) and return the exception `result()` would raise,
    /// without fetching the value: `None` if it finished (Dask's `future.exception()`).
    #[pyo3(signature = (timeout = None))]
    fn exception(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        wait_all(py, &self.client, &self.futures, timeout)?;
        let error = self.futures.iter().find_map(Future::error);
        Ok(error.map(|e| crate::to_py(e).into_value(py).into_any()))
    }

    /// Call `fn(future)` once it is done (finished, failed, cancelled or lost), at once if
    /// it is already: on partita's callback thread (one for all callbacks, as Dask runs
    /// them on its event loop), so a slow callback delays the others. An exception the
    /// callback raises is printed (`sys.unraisablehook`), not raised anywhere.
    fn add_done_callback(slf: Py<Self>, py: Python<'_>, callback: Py<PyAny>) -> PyResult<()> {
        if !callback.bind(py).is_callable() {
            return Err(PyTypeError::new_err(
                "add_done_callback takes a function of the future",
            ));
        }
        let futures = slf.get().futures.clone();
        let pending = PendingCallback {
            futures,
            future: slf,
            callback,
        };
        callbacks()?
            .send(pending)
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("the callback thread is gone"))
    }

    fn __repr__(&self) -> String {
        let what = match &self.what {
            What::Collection(AnyCollection::Array(_) | AnyCollection::Filtered(_)) => "array",
            What::Collection(AnyCollection::Frame(_)) => "dataframe",
            What::Collection(AnyCollection::Delayed(_)) => "delayed",
            What::Object => "object",
        };
        format!(
            "<partita.Future {what} status={} key={}>",
            self.status(),
            self.key()
        )
    }
}

/// `pt.as_completed(futures)`: futures in the order they finish.
#[pyclass(name = "AsCompleted", module = "partita._partita")]
pub(crate) struct PyAsCompleted {
    inner: Option<Mutex<AsCompleted>>,
    /// For each key: the positions of the futures waiting for it.
    by_key: HashMap<Key, Vec<usize>>,
    /// Keys each future still waits for.
    left: Vec<usize>,
    futures: Vec<Py<PyFuture>>,
    ready: VecDeque<usize>,
}

#[pymethods]
impl PyAsCompleted {
    #[new]
    fn new(futures: Vec<Py<PyFuture>>) -> PyResult<PyAsCompleted> {
        let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
        let mut left = Vec::with_capacity(futures.len());
        let mut all = Vec::new();
        let mut client: Option<Arc<Client>> = None;
        for (i, f) in futures.iter().enumerate() {
            let f = f.get();
            if let Some(c) = &client
                && !Arc::ptr_eq(c, &f.client)
            {
                return Err(PyTypeError::new_err(
                    "as_completed takes futures of one Client",
                ));
            }
            client.get_or_insert_with(|| Arc::clone(&f.client));
            left.push(f.futures.len());
            for k in &f.futures {
                by_key.entry(k.key().clone()).or_default().push(i);
                all.push(k.clone());
            }
        }
        let ready = (0..futures.len()).filter(|i| left[*i] == 0).collect();
        let inner = client.map(|c| Mutex::new(c.as_completed(all)));
        Ok(PyAsCompleted {
            inner,
            by_key,
            left,
            futures,
            ready,
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyFuture>>> {
        loop {
            if let Some(i) = self.ready.pop_front() {
                return Ok(Some(self.futures[i].clone_ref(py)));
            }
            let Some(inner) = &self.inner else {
                return Ok(None);
            };
            // Wait in short slices so Ctrl-C (a pending KeyboardInterrupt) stops the loop.
            let next = py.detach(|| {
                inner
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next_timeout(Duration::from_millis(50))
            });
            let Some(done) = (match next {
                std::task::Poll::Ready(next) => next,
                std::task::Poll::Pending => {
                    py.check_signals()?;
                    continue;
                }
            }) else {
                return Ok(None);
            };
            for &i in self.by_key.get(done.key()).into_iter().flatten() {
                self.left[i] -= 1;
                if self.left[i] == 0 {
                    self.ready.push_back(i);
                }
            }
        }
    }
}

/// The `Client` methods behind `client.compute`, `submit`, `map`, `gather`, `cancel` and
/// `wait` (the Python signatures are in lib.rs).
impl PyClient {
    /// Start computing collections (arrays, frames) on the cluster and return at once:
    /// one `Future` per collection, submitted with `options` (retries, restrictions).
    pub(crate) fn compute_futures(
        &self,
        py: Python<'_>,
        collections: Vec<Bound<'_, PyAny>>,
        options: &SubmitOptions,
    ) -> PyResult<Vec<PyFuture>> {
        let client = self.client()?;
        let items = collections
            .iter()
            .map(crate::any_collection)
            .collect::<PyResult<Vec<_>>>()?;
        let per = py
            .detach(|| {
                let refs: Vec<&dyn partita::Collection> =
                    items.iter().map(AnyCollection::as_collection).collect();
                client.submit_collections_with(&refs, options)
            })
            .py_err()?;
        Ok(items
            .into_iter()
            .zip(per)
            .map(|(c, futures)| PyFuture {
                what: What::Collection(c),
                futures,
                client: Arc::clone(&client),
            })
            .collect())
    }

    /// Submit one Python call prepared by `partita._futures` (its key, name, pickled
    /// payload and the futures it reads), submitted with `options`.
    pub(crate) fn submit_call(
        &self,
        py: Python<'_>,
        key: String,
        name: String,
        payload: Vec<u8>,
        deps: Vec<Py<PyFuture>>,
        options: &SubmitOptions,
    ) -> PyResult<PyFuture> {
        let client = self.client()?;
        let mut inputs = Vec::with_capacity(deps.len());
        for d in &deps {
            let d = d.get();
            match (&d.what, d.futures.as_slice()) {
                (What::Object | What::Collection(AnyCollection::Delayed(_)), [f]) => {
                    inputs.push(f.clone())
                }
                _ => {
                    return Err(PyTypeError::new_err(
                        "only futures of client.submit/map can be arguments of a submitted \
                         function; pass the array or frame itself, or its computed result",
                    ));
                }
            }
        }
        let op = Arc::new(crate::pycall::PyCall { name, payload });
        let future = py
            .detach(|| client.submit_task_with(Key::named(key), op, &inputs, options))
            .py_err()?;
        Ok(PyFuture {
            what: What::Object,
            futures: vec![future],
            client,
        })
    }

    /// Scatter Python objects: each becomes a value on one worker (on every worker with
    /// `broadcast`), pickled as any Python result is (a NumPy array's data out of band),
    /// and a future like `submit`'s.
    pub(crate) fn scatter_objects(
        &self,
        py: Python<'_>,
        objects: Vec<Py<PyAny>>,
        broadcast: bool,
        workers: &[String],
    ) -> PyResult<Vec<PyFuture>> {
        let client = self.client()?;
        let values: Vec<partita::Value> = (objects.into_iter())
            .map(|o| partita::Value::new(crate::pycall::PyObj(o)))
            .collect();
        let futures = py
            .detach(|| {
                if broadcast {
                    client.scatter_broadcast_on(values, workers)
                } else {
                    client.scatter_on(values, workers)
                }
            })
            .py_err()?;
        Ok(futures
            .into_iter()
            .map(|f| PyFuture {
                what: What::Object,
                futures: vec![f],
                client: Arc::clone(&client),
            })
            .collect())
    }

    /// The results of `futures` (gathered concurrently), in order.
    pub(crate) fn gather_futures(
        &self,
        py: Python<'_>,
        futures: Vec<Py<PyFuture>>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let items: Vec<&PyFuture> = futures.iter().map(|f| f.get()).collect();
        PyFuture::results(py, &items, timeout)
    }

    /// Cancel every future in `futures`.
    pub(crate) fn cancel_futures(&self, futures: Vec<Py<PyFuture>>) -> PyResult<()> {
        let client = self.client()?;
        let all = every_key(&futures);
        client.cancel(&all).py_err()
    }

    /// Wait until every future is done (at most `timeout` seconds).
    pub(crate) fn wait_futures(
        &self,
        py: Python<'_>,
        futures: Vec<Py<PyFuture>>,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let client = self.client()?;
        let all = every_key(&futures);
        wait_all(py, &client, &all, timeout)
    }
}

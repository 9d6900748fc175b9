//! Published datasets from Python (`client.publish_dataset`, `get_dataset`, ...).
//!
//! `partita._futures` pickles the published object with every `pt.Future`, persisted
//! `pt.Array` and persisted `pt.DataFrame` in it replaced by a reference to a *part*; here
//! each part becomes its futures plus the description partita-distributed gives it
//! ([`Dataset::encode`]), and the pickle with the parts' kinds and descriptions is the
//! dataset's opaque payload. Getting reverses it: the parts come back as Python objects
//! holding this client's futures, and `partita._futures` unpickles around them. A dataset
//! published from Rust (no pickle) comes back as its one part.

use std::sync::Arc;

use partita::Error;
use partita::distributed::{Dataset, Future, Persisted};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::{Deserialize, Serialize};

use crate::futures::{PyFuture, What};
use crate::{AnyCollection, IntoPy, PyClient, RustArray, RustFrame};

/// A dataset as `partita._futures` unpickles it: the pickle (`None` when published from
/// Rust) and its parts.
pub(crate) type Parts = (Option<Py<PyBytes>>, Vec<Py<PyAny>>);

/// The payload of a dataset published from Python.
#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(with = "serde_bytes")]
    pickle: Vec<u8>,
    parts: Vec<Part>,
}

/// One future or collection the pickle refers to, owning the next `futures` of the
/// dataset's futures.
#[derive(Serialize, Deserialize)]
struct Part {
    kind: Kind,
    #[serde(with = "serde_bytes")]
    form: Vec<u8>,
    futures: usize,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
enum Kind {
    /// A `pt.Future`.
    Future,
    /// A persisted `pt.Array`.
    Array,
    /// A persisted `pt.DataFrame`.
    Frame,
}

/// A lazy collection's `Error::Type` is Python's `TypeError`, not a dtype error.
fn encode(dataset: &Dataset) -> PyResult<(Vec<Future>, Vec<u8>)> {
    dataset.encode().map_err(|e| match e {
        Error::Type(m) => PyTypeError::new_err(m),
        other => crate::to_py(other),
    })
}

/// The dataset a Python future stands for: its futures, and what rebuilds its result.
fn future_dataset(f: &PyFuture) -> PyResult<Dataset> {
    let ops = || Persisted::ops(f.futures.iter().cloned());
    Ok(match &f.what {
        What::Object | What::Collection(AnyCollection::Delayed(_)) => {
            Dataset::Futures(f.futures.clone())
        }
        What::Collection(AnyCollection::Array(a)) => Dataset::Array(
            partita::array::Array::from_ops(a.grid().clone(), a.dtype(), ops()).py_err()?,
        ),
        What::Collection(AnyCollection::Frame(df)) => Dataset::Frame(
            partita::frame::DataFrame::from_ops("dataset", ops(), Arc::clone(df.schema()))
                .py_err()?,
        ),
        What::Collection(AnyCollection::Filtered(_)) => {
            return Err(PyTypeError::new_err(
                "a future of a masked array (chunk sizes known only once computed) cannot \
                 be published; persist the array (or its compute_chunk_sizes()) and publish that",
            ));
        }
    })
}

/// A decoded part as the Python object it was published as.
fn part_to_py(
    py: Python<'_>,
    client: &Arc<partita::distributed::Client>,
    kind: Kind,
    dataset: Dataset,
    futures: Vec<Future>,
) -> PyResult<Py<PyAny>> {
    let future = |what| PyFuture {
        what,
        futures: futures.clone(),
        client: Arc::clone(client),
    };
    let mismatch =
        || partita::Error::Codec("a published part does not match its description".into());
    Ok(match (kind, dataset) {
        (Kind::Future, Dataset::Futures(_)) => {
            future(What::Object).into_pyobject(py)?.into_any().unbind()
        }
        (Kind::Future, Dataset::Array(a)) => {
            let what = What::Collection(AnyCollection::Array(a));
            future(what).into_pyobject(py)?.into_any().unbind()
        }
        (Kind::Future, Dataset::Frame(df)) => {
            let what = What::Collection(AnyCollection::Frame(df));
            future(what).into_pyobject(py)?.into_any().unbind()
        }
        (Kind::Array, Dataset::Array(a)) => RustArray(a).into_pyobject(py)?.into_any().unbind(),
        (Kind::Frame, Dataset::Frame(df)) => RustFrame(df).into_pyobject(py)?.into_any().unbind(),
        _ => return Err(mismatch()).py_err(),
    })
}

/// A pickle and the parts it refers to (futures, `RustArray`s and `RustFrame`s, in
/// reference order) as one opaque dataset: what a published dataset, a variable's value or
/// a queue item is on the wire. `what` names it in errors.
pub(crate) fn parts_dataset(
    what: &str,
    pickle: Vec<u8>,
    parts: Vec<Bound<'_, PyAny>>,
) -> PyResult<Dataset> {
    let mut all = Vec::new();
    let mut described = Vec::with_capacity(parts.len());
    for part in &parts {
        let (kind, dataset) = if let Ok(f) = part.cast::<PyFuture>() {
            (Kind::Future, future_dataset(f.get())?)
        } else if let Ok(a) = part.cast::<RustArray>() {
            (Kind::Array, Dataset::Array(a.get().0.clone()))
        } else if let Ok(df) = part.cast::<RustFrame>() {
            (Kind::Frame, Dataset::Frame(df.get().0.clone()))
        } else {
            return Err(PyTypeError::new_err(format!(
                "cannot keep a {} in {what}; futures, persisted arrays and persisted \
                 frames are kept",
                part.get_type().name()?
            )));
        };
        let (futures, form) = encode(&dataset)?;
        described.push(Part {
            kind,
            form,
            futures: futures.len(),
        });
        all.extend(futures);
    }
    let envelope = Envelope {
        pickle,
        parts: described,
    };
    let bytes = rmp_serde::to_vec_named(&envelope)
        .map_err(|e| Error::Codec(format!("encoding {what}: {e}")))
        .py_err()?;
    Ok(Dataset::Opaque {
        bytes,
        futures: all,
    })
}

/// The pickle (`None` if the dataset came from Rust) and parts of a dataset, as Python
/// objects holding `client`'s futures.
pub(crate) fn dataset_parts(
    py: Python<'_>,
    client: &Arc<partita::distributed::Client>,
    what: &str,
    dataset: Dataset,
) -> PyResult<Parts> {
    let (bytes, futures) = match dataset {
        Dataset::Opaque { bytes, futures } => (bytes, futures),
        Dataset::Futures(futures) => {
            let list: Vec<Py<PyAny>> = (futures.into_iter())
                .map(|f| {
                    let future = PyFuture {
                        what: What::Object,
                        futures: vec![f],
                        client: Arc::clone(client),
                    };
                    Ok(future.into_pyobject(py)?.into_any().unbind())
                })
                .collect::<PyResult<_>>()?;
            let list = pyo3::types::PyList::new(py, list)?.into_any().unbind();
            return Ok((None, vec![list]));
        }
        Dataset::Array(a) => {
            return Ok((
                None,
                vec![RustArray(a).into_pyobject(py)?.into_any().unbind()],
            ));
        }
        Dataset::Frame(df) => {
            return Ok((
                None,
                vec![RustFrame(df).into_pyobject(py)?.into_any().unbind()],
            ));
        }
    };
    let envelope: Envelope = rmp_serde::from_slice(&bytes)
        .map_err(|e| {
            Error::Codec(format!(
                "{what} was not made from Python (or by another version): {e}"
            ))
        })
        .py_err()?;
    let mut futures = futures.into_iter();
    let mut parts = Vec::with_capacity(envelope.parts.len());
    for part in envelope.parts {
        let mine: Vec<Future> = futures.by_ref().take(part.futures).collect();
        if mine.len() != part.futures {
            return Err(Error::Codec(format!(
                "{what} lists fewer futures than its parts need"
            )))
            .py_err();
        }
        let dataset = Dataset::decode(what, &part.form, mine.clone()).py_err()?;
        parts.push(part_to_py(py, client, part.kind, dataset, mine)?);
    }
    Ok((Some(PyBytes::new(py, &envelope.pickle).unbind()), parts))
}

impl PyClient {
    /// Publish `pickle` and the `parts` it refers to (futures, `RustArray`s and
    /// `RustFrame`s, in reference order) under `name`.
    pub(crate) fn publish_parts(
        &self,
        py: Python<'_>,
        name: &str,
        pickle: Vec<u8>,
        parts: Vec<Bound<'_, PyAny>>,
        replace: bool,
    ) -> PyResult<()> {
        let client = self.client()?;
        let dataset = parts_dataset(&format!("dataset {name:?}"), pickle, parts)?;
        py.detach(|| client.publish_dataset(name, &dataset, replace))
            .py_err()
    }

    /// The pickle of the dataset `name` (`None` if published from Rust) and its parts as
    /// Python objects; `KeyError` if nothing is published under that name.
    pub(crate) fn get_parts(&self, py: Python<'_>, name: &str) -> PyResult<Parts> {
        let client = self.client()?;
        let dataset = py.detach(|| client.get_dataset(name)).py_err()?;
        let Some(dataset) = dataset else {
            return Err(PyKeyError::new_err(format!(
                "no dataset named {name:?} is published"
            )));
        };
        dataset_parts(py, &client, &format!("dataset {name:?}"), dataset)
    }
}

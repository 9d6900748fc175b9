//! Published datasets (Dask's `publish_dataset`): named data that outlives the client that
//! computed it, for any client of the cluster to pick up.
//!
//! Key decisions:
//! - **The scheduler keeps keys and a payload, never data.** A dataset is the keys of
//!   values on the workers plus bytes saying how to rebuild the object around them (an
//!   array's grid and dtype, a frame's schema and partitioning, or a binding's own
//!   encoding such as a Python pickle). The scheduler counts each key as wanted while a
//!   dataset lists it, so the values stay (and are recomputed from lineage if their
//!   workers die) after the publisher is gone, until the dataset is unpublished.
//! - **Getting is wanting.** A client that gets a dataset submits its keys with no tasks,
//!   as it would a graph's outputs: it holds futures like any other, and the values stay
//!   while it does, even if the dataset is unpublished meanwhile.
//! - **Only what already lives on the cluster is published:** futures and collections
//!   persisted with a client of this cluster. A lazy collection (or one computed on top of
//!   persisted data) is refused with the advice to persist it first; graphs are not stored.

use partita_array::{Array, ChunkGrid, Chunks, DType};
use partita_core::{Collection, Error, Key, Layer, Result};
use partita_frame::polars::prelude::{DataType, SchemaRef};
use partita_frame::{DataFrame, Partitioning};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::client::{Future, Persisted};

/// What a published dataset holds.
#[derive(Debug)]
pub enum Dataset {
    /// Futures, in order.
    Futures(Vec<Future>),
    /// An array persisted on the cluster ([`Array::persist`] with a [`crate::Client`]).
    Array(Array),
    /// A frame persisted on the cluster ([`DataFrame::persist`] with a [`crate::Client`]):
    /// schema, partition count and hash partitioning are kept.
    Frame(DataFrame),
    /// Bytes only the publisher's kind of client reads (a language binding's encoding of
    /// its own objects), referring to `futures` by position.
    Opaque {
        bytes: Vec<u8>,
        futures: Vec<Future>,
    },
}

/// How a dataset's object is rebuilt around its futures (the payload the scheduler keeps).
#[derive(Serialize, Deserialize)]
enum Form {
    Futures,
    Array {
        shape: Vec<usize>,
        chunks: Vec<Vec<usize>>,
        dtype: DType,
    },
    Frame {
        schema: SchemaRef,
        /// Hash partitioning's key columns and the dtypes they were hashed as.
        hash: Option<(Vec<String>, Vec<DataType>)>,
    },
    Opaque {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

impl Dataset {
    /// Its futures (in order) and the payload that rebuilds it around them
    /// ([`Dataset::decode`]); what [`crate::Client::publish_dataset`] sends, public for
    /// bindings that nest datasets in their own encodings.
    pub fn encode(&self) -> Result<(Vec<Future>, Vec<u8>)> {
        let (futures, form) = match self {
            Dataset::Futures(f) => (f.clone(), Form::Futures),
            Dataset::Array(a) => {
                let futures = persisted_futures(a.layer(), &a.output_keys(), "array")?;
                let form = Form::Array {
                    shape: a.grid().shape().to_vec(),
                    chunks: a.grid().chunks().to_vec(),
                    dtype: a.dtype(),
                };
                (futures, form)
            }
            Dataset::Frame(df) => {
                let futures = persisted_futures(df.layer(), &df.output_keys(), "frame")?;
                let hash = match df.partitioning() {
                    Partitioning::Hash { keys, dtypes } => Some((keys.clone(), dtypes.clone())),
                    // Range boundaries are a task of their own, not published with it.
                    Partitioning::Unknown | Partitioning::Range(_) => None,
                };
                let form = Form::Frame {
                    schema: Arc::clone(df.schema()),
                    hash,
                };
                (futures, form)
            }
            Dataset::Opaque { bytes, futures } => (
                futures.clone(),
                Form::Opaque {
                    bytes: bytes.clone(),
                },
            ),
        };
        let payload = rmp_serde::to_vec_named(&form)
            .map_err(|e| Error::Codec(format!("encoding a dataset's description: {e}")))?;
        Ok((futures, payload))
    }

    /// The dataset `payload` describes, around `futures` (its keys, wanted by this client);
    /// `name` is for errors.
    pub fn decode(name: &str, payload: &[u8], futures: Vec<Future>) -> Result<Dataset> {
        let form: Form = rmp_serde::from_slice(payload).map_err(|e| {
            Error::Codec(format!(
                "dataset {name:?} was published in a form this client does not read: {e}"
            ))
        })?;
        let ops = || Persisted::ops(futures.iter().cloned());
        Ok(match form {
            Form::Futures => Dataset::Futures(futures),
            Form::Array {
                shape,
                chunks,
                dtype,
            } => {
                let grid = ChunkGrid::new(&shape, &Chunks::Explicit(chunks), dtype)?;
                if grid.num_blocks() != futures.len() {
                    return Err(Error::Codec(format!(
                        "dataset {name:?}: {} blocks for a grid of {}",
                        futures.len(),
                        grid.num_blocks()
                    )));
                }
                Dataset::Array(Array::from_ops(grid, dtype, ops())?)
            }
            Form::Frame { schema, hash } => {
                let frame = DataFrame::from_ops("dataset", ops(), schema)?;
                Dataset::Frame(match hash {
                    Some((keys, dtypes)) => {
                        frame.with_partitioning(Partitioning::Hash { keys, dtypes })
                    }
                    None => frame,
                })
            }
            Form::Opaque { bytes } => Dataset::Opaque { bytes, futures },
        })
    }
}

/// The futures a persisted collection's outputs stand for, or an error saying it is not
/// persisted on a cluster.
fn persisted_futures(layer: &Arc<Layer>, keys: &[Key], what: &str) -> Result<Vec<Future>> {
    let ops: std::collections::HashMap<&Key, &Arc<dyn partita_core::Op>> =
        (layer.tasks().iter()).map(|t| (&t.key, &t.op)).collect();
    (keys.iter())
        .map(|k| {
            ops.get(k)
                .and_then(|op| Persisted::of(op.as_ref()))
                .map(|p| p.future().clone())
                .ok_or_else(|| {
                    Error::Type(format!(
                        "only data already on a cluster is published: this {what} is not \
                         persisted on one ({k} is not a value held there); persist it with \
                         this cluster's client first"
                    ))
                })
        })
        .collect()
}

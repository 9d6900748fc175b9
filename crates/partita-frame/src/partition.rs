//! The dataframe value type: one polars `DataFrame` per partition.
//!
//! Key decision: partitions travel (to spill files and between processes) as their columns'
//! Arrow buffers, the format polars already holds in memory: the `frame-columns` codec
//! ([`crate::columns`]) shares them with the wire and keeps the received buffers as they
//! arrived; a frame with a column that codec does not carry goes as **Arrow IPC**.

use std::io::Cursor;

use bytes::Bytes;
use partita_core::{Data, Error, Result, Value, register_codec};
use polars::prelude::{DataFrame as PlFrame, IpcReader, IpcWriter, SerReader, SerWriter};

use crate::columns;
use crate::polars_error::from_polars;

/// One partition of a [`DataFrame`](crate::DataFrame): a polars frame behind the task
/// graph's shared [`Value`].
#[derive(Clone, Debug)]
pub struct Partition(pub PlFrame);

impl Partition {
    /// Wrap a polars frame as a graph value.
    pub fn value(frame: PlFrame) -> Value {
        Value::new(Partition(frame))
    }

    /// The polars frame inside a graph value, or an error naming what the value was.
    pub fn from_value(value: &Value) -> Result<&PlFrame> {
        value.get::<Partition>().map(|p| &p.0)
    }
}

impl Data for Partition {
    fn nbytes(&self) -> usize {
        self.0.estimated_size()
    }
    fn codec(&self) -> &'static str {
        if columns::carries(&self.0) {
            "frame-columns"
        } else {
            "frame-ipc"
        }
    }
    fn encode_split(&self) -> Result<Option<(Vec<u8>, Vec<Bytes>)>> {
        columns::encode(&self.0)
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if let Some((head, body)) = columns::encode(&self.0)? {
            out.reserve(head.len() + body.iter().map(Bytes::len).sum::<usize>());
            out.extend_from_slice(&head);
            for part in &body {
                out.extend_from_slice(part);
            }
            return Ok(());
        }
        let mut frame = self.0.clone();
        IpcWriter::new(&mut *out)
            .finish(&mut frame)
            .map_err(|e| from_polars(e, "encoding a partition as Arrow IPC"))
    }
}

/// Bytes from a peer may be corrupt, and polars' readers and constructors unwrap some of what
/// they are given (a sweep of byte flips in tests/integration/wire.rs found the IPC reader's
/// `MissingData` panicking): a panic while decoding is a codec error like any other, not a
/// dead worker.
fn no_panic(
    what: &str,
    decode: impl FnOnce() -> Result<PlFrame> + std::panic::UnwindSafe,
) -> Result<Value> {
    let frame = std::panic::catch_unwind(decode).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Error::Codec(format!(
            "{what} do not decode: the reader failed with {why}"
        ))
    })??;
    Ok(Partition::value(frame))
}

fn decode_ipc(bytes: Bytes) -> Result<Value> {
    let what = format!("a partition's Arrow IPC bytes ({})", bytes.len());
    no_panic(&what, move || {
        IpcReader::new(Cursor::new(bytes))
            .finish()
            .map_err(|e| Error::Codec(format!("a partition's Arrow IPC bytes do not decode: {e}")))
    })
}
register_codec!("frame-ipc", decode_ipc);

fn decode_columns(payload: Bytes) -> Result<Value> {
    let what = format!("a partition's column buffers ({} bytes)", payload.len());
    no_panic(&what, move || columns::decode_joined(payload))
}

fn decode_columns_split(head: Bytes, words: Vec<u64>, len: usize) -> Result<Value> {
    let what = format!("a partition's column buffers ({len} bytes)");
    no_panic(&what, move || columns::decode_split(head, words, len))
}
register_codec!(
    "frame-columns",
    decode_columns,
    split = decode_columns_split
);

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::*;

    #[test]
    fn partitions_round_trip_through_their_codec() {
        let frame = df!("a" => [1i64, 2, 3], "b" => ["x", "y", "z"]).unwrap();
        let bytes = Partition::value(frame.clone()).encode().unwrap();
        let back = Value::decode(bytes).unwrap();
        assert!(Partition::from_value(&back).unwrap().equals_missing(&frame));
    }

    #[test]
    fn corrupt_bytes_are_a_codec_error() {
        let mut bytes = Partition::value(df!("a" => [1i64]).unwrap())
            .encode()
            .unwrap();
        let n = bytes.len();
        bytes.truncate(n / 2);
        assert!(Value::decode(bytes).is_err());
    }
}

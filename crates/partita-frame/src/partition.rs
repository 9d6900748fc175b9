//! The dataframe value type: one polars `DataFrame` per partition.
//!
//! Key decision: partitions travel (to spill files, later to workers) as **Arrow IPC**, the
//! columnar format polars already holds in memory, so encoding is a buffer copy rather than
//! a per-value serialization.

use std::io::Cursor;

use bytes::Bytes;
use partita_core::{Data, Error, Result, Value, register_codec};
use polars::prelude::{DataFrame as PlFrame, IpcReader, IpcWriter, SerReader, SerWriter};

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
        "frame-ipc"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut frame = self.0.clone();
        IpcWriter::new(&mut *out)
            .finish(&mut frame)
            .map_err(|e| from_polars(e, "encoding a partition as Arrow IPC"))
    }
}

/// Bytes from a peer may be corrupt, and polars' IPC reader unwraps some of what it reads
/// (a sweep of byte flips in tests/integration/wire.rs found `MissingData` panicking): a
/// panic while decoding is a codec error like any other, not a dead worker.
fn decode_partition(bytes: Bytes) -> Result<Value> {
    let len = bytes.len();
    let frame = std::panic::catch_unwind(move || IpcReader::new(Cursor::new(bytes)).finish())
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Error::Codec(format!(
                "a partition's Arrow IPC bytes ({len}) do not decode: the reader failed with {why}"
            ))
        })?
        .map_err(|e| Error::Codec(format!("a partition's Arrow IPC bytes do not decode: {e}")))?;
    Ok(Partition::value(frame))
}
register_codec!("frame-ipc", decode_partition);

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

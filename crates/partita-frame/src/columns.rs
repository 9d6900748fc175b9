//! The `frame-columns` codec: a partition on the wire and in spill files as its columns'
//! Arrow buffers, exactly as polars holds them.
//!
//! Arrow IPC (the `frame-ipc` codec, still the fallback) made a gathered frame cross in two
//! full copies into fresh memory: the receiver read the whole message into one buffer, then
//! polars' IPC reader copied every column buffer out of it (and the sender first copied every
//! buffer into the IPC message). Gathering a 9M-row join result ran at ~0.15 GB/s, most of it
//! the kernel zeroing fresh pages. This codec copies once on each side, in quinn:
//!
//! - **Encoding** is a small head (MessagePack: height, and per column its name, kind and, per
//!   chunk, where each buffer sits in the body) and a body of the column buffers themselves,
//!   each a [`Bytes`] that shares polars' memory ([`Data::encode_split`]); every buffer starts
//!   at a multiple of 8 bytes.
//! - **Decoding** keeps the body the wire received into 8-byte words and makes each column
//!   buffer a view of it (`Buffer::from_owner`, safe: the views hold the allocation alive).
//!   Validity and boolean bitmaps (one bit per row) are copied. Strings are validated as
//!   polars validates any foreign array (UTF-8 and view bounds): bytes from a peer may be
//!   corrupt, and a frame that does not check out is a codec error naming the column.
//!
//! Key decisions:
//! - Only the kinds polars stores as flat buffers go this way: booleans, integers, floats,
//!   strings and binary (views), dates, datetimes, durations, times and nulls. A frame with
//!   any other column (lists, structs, categoricals, decimals) is encoded as Arrow IPC.
//! - A string column whose data buffers hold far more than its rows reference (a shuffle
//!   piece taken from a split shares the split's buffers) is compacted first, so a piece
//!   never drags its split's bytes along.
//! - A received frame's columns share one allocation: dropping some columns of it keeps the
//!   whole body alive until the last one goes. Received frames are short-lived inputs, and
//!   the saved copy is worth more than the slack.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use partita_core::{Error, Result};
use polars::prelude::{
    Column, DataFrame as PlFrame, DataType, IntoColumn, PlSmallStr, Series, TimeUnit, TimeZone,
};
use polars_arrow::array::{
    Array, ArrayRef, BinaryViewArray, BooleanArray, NullArray, PrimitiveArray, Utf8ViewArray, View,
};
use polars_arrow::bitmap::Bitmap;
use polars_arrow::datatypes::ArrowDataType;
use polars_arrow::types::NativeType;
use polars_buffer::Buffer;
use serde::{Deserialize, Serialize};

/// The first byte of a payload; a reader of another version refuses it by name.
const FORMAT: u8 = 1;

/// Body buffers start at multiples of this (the widest element polars keeps here is 16-byte
/// views of 4-byte fields; 8 is what the wire's receive buffer guarantees).
const ALIGN: u64 = 8;

/// A string column is compacted before sending when its data buffers are larger than this
/// many times the bytes its rows use (and the waste is at least [`COMPACT_MIN_WASTE`]).
const COMPACT_RATIO: usize = 2;
const COMPACT_MIN_WASTE: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    height: u64,
    columns: Vec<ColumnHead>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ColumnHead {
    name: String,
    kind: Kind,
    chunks: Vec<ChunkHead>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Unit {
    Ns,
    Us,
    Ms,
}

/// A column's polars type, for the kinds this codec carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    String,
    Binary,
    Null,
    Date,
    Datetime(Unit, Option<String>),
    Duration(Unit),
    Time,
}

/// Where a buffer sits in the body, in bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seg {
    at: u64,
    len: u64,
}

/// A bitmap: its bytes, and the bit its first value sits at (below 8).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bits {
    seg: Seg,
    offset: u8,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunkHead {
    len: u64,
    validity: Option<Bits>,
    data: ChunkData,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChunkData {
    /// Fixed-width values.
    Values(Seg),
    /// Booleans, one bit each.
    Bits(Bits),
    /// String or binary views and the data buffers they point into.
    Views { views: Seg, buffers: Vec<Seg> },
    /// All null: nothing but the length.
    Nulls,
}

fn unit_of(tu: TimeUnit) -> Unit {
    match tu {
        TimeUnit::Nanoseconds => Unit::Ns,
        TimeUnit::Microseconds => Unit::Us,
        TimeUnit::Milliseconds => Unit::Ms,
    }
}

fn time_unit(u: Unit) -> TimeUnit {
    match u {
        Unit::Ns => TimeUnit::Nanoseconds,
        Unit::Us => TimeUnit::Microseconds,
        Unit::Ms => TimeUnit::Milliseconds,
    }
}

/// The kind of a polars type, if this codec carries it.
fn kind_of(dtype: &DataType) -> Option<Kind> {
    Some(match dtype {
        DataType::Boolean => Kind::Boolean,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int32,
        DataType::Int64 => Kind::Int64,
        DataType::UInt8 => Kind::UInt8,
        DataType::UInt16 => Kind::UInt16,
        DataType::UInt32 => Kind::UInt32,
        DataType::UInt64 => Kind::UInt64,
        DataType::Float32 => Kind::Float32,
        DataType::Float64 => Kind::Float64,
        DataType::String => Kind::String,
        DataType::Binary => Kind::Binary,
        DataType::Null => Kind::Null,
        DataType::Date => Kind::Date,
        DataType::Datetime(tu, tz) => {
            Kind::Datetime(unit_of(*tu), tz.as_ref().map(|z| z.to_string()))
        }
        DataType::Duration(tu) => Kind::Duration(unit_of(*tu)),
        DataType::Time => Kind::Time,
        _ => return None,
    })
}

impl Kind {
    /// The polars type of a column of this kind.
    fn dtype(&self) -> Result<DataType> {
        Ok(match self {
            Kind::Boolean => DataType::Boolean,
            Kind::Int8 => DataType::Int8,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::UInt8 => DataType::UInt8,
            Kind::UInt16 => DataType::UInt16,
            Kind::UInt32 => DataType::UInt32,
            Kind::UInt64 => DataType::UInt64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::String => DataType::String,
            Kind::Binary => DataType::Binary,
            Kind::Null => DataType::Null,
            Kind::Date => DataType::Date,
            Kind::Datetime(u, tz) => {
                let tz = TimeZone::opt_try_new(tz.as_deref())
                    .map_err(|e| bad(&format!("time zone {tz:?}: {e}")))?;
                DataType::Datetime(time_unit(*u), tz)
            }
            Kind::Duration(u) => DataType::Duration(time_unit(*u)),
            Kind::Time => DataType::Time,
        })
    }

    /// Whether the column's chunks are of another (physical) type than the column.
    fn is_logical(&self) -> bool {
        matches!(
            self,
            Kind::Date | Kind::Datetime(..) | Kind::Duration(_) | Kind::Time
        )
    }
}

fn bad(what: &str) -> Error {
    Error::Codec(format!(
        "a partition's column buffers do not decode: {what}"
    ))
}

/// Whether this codec carries every column of `frame` (otherwise it goes as Arrow IPC).
pub(crate) fn carries(frame: &PlFrame) -> bool {
    frame.columns().iter().all(|c| kind_of(c.dtype()).is_some())
}

/// A polars buffer as bytes for [`Bytes::from_owner`]: the bytes live as long as the buffer.
struct PodBytes<T>(Buffer<T>);

impl<T: bytemuck::Pod> AsRef<[u8]> for PodBytes<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(self.0.as_slice())
    }
}

/// The body being built: shared buffers, each starting at a multiple of [`ALIGN`].
#[derive(Default)]
struct Body {
    parts: Vec<Bytes>,
    len: u64,
}

impl Body {
    fn push(&mut self, bytes: Bytes) -> Seg {
        static ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];
        let pad = (ALIGN - self.len % ALIGN) % ALIGN;
        if pad > 0 {
            self.parts.push(Bytes::from_static(&ZEROS[..pad as usize]));
            self.len += pad;
        }
        let seg = Seg {
            at: self.len,
            len: bytes.len() as u64,
        };
        self.len += seg.len;
        if !bytes.is_empty() {
            self.parts.push(bytes);
        }
        seg
    }

    fn buffer<T: bytemuck::Pod + Send + Sync>(&mut self, b: &Buffer<T>) -> Seg {
        self.push(Bytes::from_owner(PodBytes(b.clone())))
    }

    fn bitmap(&mut self, b: &Bitmap) -> Bits {
        let (bytes, offset, _) = b.as_buffer();
        Bits {
            seg: self.buffer(&bytes),
            offset: offset as u8,
        }
    }
}

/// Encode `frame` as a head and body parts (`head ++ parts` is the joined encoding).
/// `Ok(None)`: a column of a kind this codec does not carry (exactly when [`carries`] is
/// false, so the codec named by the prefix and the payload always agree).
pub(crate) fn encode(frame: &PlFrame) -> Result<Option<(Vec<u8>, Vec<Bytes>)>> {
    let mut body = Body::default();
    let mut columns = Vec::with_capacity(frame.width());
    for column in frame.columns() {
        let Some(kind) = kind_of(column.dtype()) else {
            return Ok(None);
        };
        let series = column.as_materialized_series();
        let mut chunks = Vec::with_capacity(series.chunks().len());
        for array in series.chunks() {
            // `carries` already named this codec in the encoding's prefix, so an array
            // this codec cannot lay out is an error, not a quiet switch to Arrow IPC.
            let chunk = encode_chunk(&**array, &mut body).ok_or_else(|| {
                Error::Codec(format!(
                    "column '{}' of kind {kind:?} holds an array of type {:?}, which the \
                     column codec does not lay out",
                    column.name(),
                    array.dtype()
                ))
            })?;
            chunks.push(chunk);
        }
        columns.push(ColumnHead {
            name: column.name().to_string(),
            kind,
            chunks,
        });
    }
    let head = Head {
        height: frame.height() as u64,
        columns,
    };
    let meta = rmp_serde::to_vec(&head)
        .map_err(|e| Error::Codec(format!("encoding a partition's column head: {e}")))?;
    let mut out = Vec::with_capacity(5 + meta.len());
    out.push(FORMAT);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    Ok(Some((out, body.parts)))
}

fn encode_chunk(array: &dyn Array, body: &mut Body) -> Option<ChunkHead> {
    let any = array.as_any();
    let validity = array.validity().map(|v| body.bitmap(v));
    let len = array.len() as u64;
    macro_rules! primitive {
        ($($t:ty),*) => {
            $(if let Some(a) = any.downcast_ref::<PrimitiveArray<$t>>() {
                let data = ChunkData::Values(body.buffer(a.values()));
                return Some(ChunkHead { len, validity, data });
            })*
        };
    }
    primitive!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);
    let data = if let Some(a) = any.downcast_ref::<BooleanArray>() {
        ChunkData::Bits(body.bitmap(a.values()))
    } else if let Some(a) = any.downcast_ref::<Utf8ViewArray>() {
        let a = a.to_binview();
        views(&compact(a), body)
    } else if let Some(a) = any.downcast_ref::<BinaryViewArray>() {
        views(&compact(a.clone()), body)
    } else if any.downcast_ref::<NullArray>().is_some() {
        ChunkData::Nulls
    } else {
        return None;
    };
    Some(ChunkHead {
        len,
        validity,
        data,
    })
}

/// The array, or a copy holding only the bytes its rows use when its buffers hold much more.
fn compact(a: BinaryViewArray) -> BinaryViewArray {
    let used = a.total_bytes_len();
    let held = a.total_buffer_len();
    if held > used.saturating_mul(COMPACT_RATIO) && held - used >= COMPACT_MIN_WASTE {
        a.gc()
    } else {
        a
    }
}

fn views(a: &BinaryViewArray, body: &mut Body) -> ChunkData {
    let views = body.buffer(a.views());
    let buffers = a.data_buffers().iter().map(|b| body.buffer(b)).collect();
    ChunkData::Views { views, buffers }
}

/// A range of the received body as a `[T]`, for `Buffer::from_owner`: keeps the body alive.
struct Received<T> {
    words: Arc<Vec<u64>>,
    start: usize,
    end: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: bytemuck::Pod> AsRef<[T]> for Received<T> {
    fn as_ref(&self) -> &[T] {
        // Checked when made (`Decoder::buffer`); the fallbacks are never taken.
        let bytes: &[u8] = bytemuck::cast_slice(&self.words);
        bytes
            .get(self.start..self.end)
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[])
    }
}

struct Decoder {
    words: Arc<Vec<u64>>,
    len: usize,
}

impl Decoder {
    fn range(&self, seg: Seg, what: &str) -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(seg.at).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(seg.len).ok()?));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.len => Ok(start..end),
            _ => Err(bad(&format!(
                "{what}: bytes {}..+{} outside a body of {}",
                seg.at, seg.len, self.len
            ))),
        }
    }

    fn bytes(&self, seg: Seg, what: &str) -> Result<&[u8]> {
        let range = self.range(seg, what)?;
        let bytes: &[u8] = bytemuck::cast_slice(&self.words);
        Ok(&bytes[range])
    }

    /// A view of the body as a buffer of `T`, without copying.
    fn buffer<T: bytemuck::Pod + Send + Sync>(&self, seg: Seg, what: &str) -> Result<Buffer<T>> {
        let range = self.range(seg, what)?;
        let bytes: &[u8] = bytemuck::cast_slice(&self.words);
        bytemuck::try_cast_slice::<u8, T>(&bytes[range.clone()]).map_err(|e| {
            bad(&format!(
                "{what}: bytes {}..+{} are not a buffer of {}: {e}",
                seg.at,
                seg.len,
                std::any::type_name::<T>()
            ))
        })?;
        Ok(Buffer::from_owner(Received::<T> {
            words: Arc::clone(&self.words),
            start: range.start,
            end: range.end,
            _t: PhantomData,
        }))
    }

    /// A bitmap of `len` bits (copied: a bit per row).
    fn bitmap(&self, bits: Bits, len: usize, what: &str) -> Result<Bitmap> {
        let offset = usize::from(bits.offset);
        if offset >= 8 {
            return Err(bad(&format!("{what}: bit offset {offset}")));
        }
        let bytes = self.bytes(bits.seg, what)?.to_vec();
        let total = offset
            .checked_add(len)
            .ok_or_else(|| bad(&format!("{what}: {len} bits")))?;
        let bitmap = Bitmap::try_new(bytes, total).map_err(|e| bad(&format!("{what}: {e}")))?;
        Ok(bitmap.sliced(offset, len))
    }

    fn primitive<T: NativeType>(
        &self,
        dtype: ArrowDataType,
        seg: Seg,
        len: usize,
        validity: Option<Bitmap>,
        what: &str,
    ) -> Result<ArrayRef> {
        let values = self.buffer::<T>(seg, what)?;
        if values.len() != len {
            return Err(bad(&format!(
                "{what}: {} values where the chunk has {len} rows",
                values.len()
            )));
        }
        let array = PrimitiveArray::<T>::try_new(dtype, values, validity)
            .map_err(|e| bad(&format!("{what}: {e}")))?;
        Ok(Box::new(array))
    }

    fn chunk(&self, kind: &Kind, chunk: &ChunkHead, what: &str) -> Result<ArrayRef> {
        let len = usize::try_from(chunk.len).map_err(|_| bad(&format!("{what}: length")))?;
        let validity = chunk
            .validity
            .map(|v| self.bitmap(v, len, what))
            .transpose()?;
        let mismatch = || {
            bad(&format!(
                "{what}: a column of kind {kind:?} with {:?} buffers",
                chunk.data
            ))
        };
        let seg = match (&chunk.data, kind) {
            (ChunkData::Values(seg), _) => *seg,
            (ChunkData::Bits(bits), Kind::Boolean) => {
                let values = self.bitmap(*bits, len, what)?;
                let array = BooleanArray::try_new(ArrowDataType::Boolean, values, validity)
                    .map_err(|e| bad(&format!("{what}: {e}")))?;
                return Ok(Box::new(array));
            }
            (ChunkData::Views { views, buffers }, Kind::String | Kind::Binary) => {
                let views = self.buffer::<View>(*views, what)?;
                if views.len() != len {
                    return Err(bad(&format!(
                        "{what}: {} views where the chunk has {len} rows",
                        views.len()
                    )));
                }
                let buffers = buffers
                    .iter()
                    .map(|s| self.buffer::<u8>(*s, what))
                    .collect::<Result<Vec<_>>>()?;
                let buffers = Buffer::from(buffers);
                let invalid = |e| bad(&format!("{what}: {e}"));
                return Ok(if *kind == Kind::String {
                    Box::new(
                        Utf8ViewArray::try_new(ArrowDataType::Utf8View, views, buffers, validity)
                            .map_err(invalid)?,
                    )
                } else {
                    Box::new(
                        BinaryViewArray::try_new(
                            ArrowDataType::BinaryView,
                            views,
                            buffers,
                            validity,
                        )
                        .map_err(invalid)?,
                    )
                });
            }
            (ChunkData::Nulls, Kind::Null) => {
                let array = NullArray::try_new(ArrowDataType::Null, len)
                    .map_err(|e| bad(&format!("{what}: {e}")))?;
                return Ok(Box::new(array));
            }
            _ => return Err(mismatch()),
        };
        use ArrowDataType as A;
        match kind {
            Kind::Int8 => self.primitive::<i8>(A::Int8, seg, len, validity, what),
            Kind::Int16 => self.primitive::<i16>(A::Int16, seg, len, validity, what),
            Kind::Int32 | Kind::Date => self.primitive::<i32>(A::Int32, seg, len, validity, what),
            Kind::Int64 | Kind::Datetime(..) | Kind::Duration(_) | Kind::Time => {
                self.primitive::<i64>(A::Int64, seg, len, validity, what)
            }
            Kind::UInt8 => self.primitive::<u8>(A::UInt8, seg, len, validity, what),
            Kind::UInt16 => self.primitive::<u16>(A::UInt16, seg, len, validity, what),
            Kind::UInt32 => self.primitive::<u32>(A::UInt32, seg, len, validity, what),
            Kind::UInt64 => self.primitive::<u64>(A::UInt64, seg, len, validity, what),
            Kind::Float32 => self.primitive::<f32>(A::Float32, seg, len, validity, what),
            Kind::Float64 => self.primitive::<f64>(A::Float64, seg, len, validity, what),
            Kind::Boolean | Kind::String | Kind::Binary | Kind::Null => Err(mismatch()),
        }
    }

    fn column(&self, head: &ColumnHead) -> Result<Column> {
        let what = format!("column '{}'", head.name);
        let dtype = head.kind.dtype()?;
        let name = PlSmallStr::from(head.name.as_str());
        let chunks = head
            .chunks
            .iter()
            .map(|c| self.chunk(&head.kind, c, &what))
            .collect::<Result<Vec<_>>>()?;
        let series = if chunks.is_empty() {
            Series::new_empty(name, &dtype)
        } else {
            Series::try_from((name, chunks)).map_err(|e| bad(&format!("{what}: {e}")))?
        };
        let series = if head.kind.is_logical() {
            series
                .cast(&dtype)
                .map_err(|e| bad(&format!("{what}: as {dtype}: {e}")))?
        } else {
            series
        };
        Ok(series.into_column())
    }
}

/// Split a head (`[FORMAT][meta length: u32 LE][meta]`) into its parsed meta.
fn read_head(head: &[u8]) -> Result<(Head, usize)> {
    let (&format, rest) = head.split_first().ok_or_else(|| bad("empty payload"))?;
    if format != FORMAT {
        return Err(Error::Codec(format!(
            "a partition in column format {format}; this build reads format {FORMAT}"
        )));
    }
    let len = rest
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("truncated head"))?;
    let meta = rest
        .get(4..4 + len)
        .ok_or_else(|| bad(&format!("a head of {len} bytes in {}", rest.len() - 4)))?;
    let parsed: Head = rmp_serde::from_slice(meta).map_err(|e| bad(&format!("head: {e}")))?;
    Ok((parsed, 5 + len))
}

/// Decode a split payload: the head, and the body's first `len` bytes held in `words`.
pub(crate) fn decode_split(head: Bytes, words: Vec<u64>, len: usize) -> Result<PlFrame> {
    let (parsed, used) = read_head(&head)?;
    if used != head.len() {
        return Err(bad(&format!(
            "a head of {used} bytes followed by {} more",
            head.len() - used
        )));
    }
    if len > words.len() * 8 {
        return Err(bad(&format!(
            "a body of {len} bytes in a buffer of {}",
            words.len() * 8
        )));
    }
    decode_parsed(parsed, words, len)
}

/// Decode a joined payload (a spill file's): the body is copied into aligned words first.
pub(crate) fn decode_joined(payload: Bytes) -> Result<PlFrame> {
    let (parsed, used) = read_head(&payload)?;
    let body = &payload[used..];
    let mut words = vec![0u64; body.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..body.len()].copy_from_slice(body);
    decode_parsed(parsed, words, body.len())
}

fn decode_parsed(head: Head, words: Vec<u64>, len: usize) -> Result<PlFrame> {
    let decoder = Decoder {
        words: Arc::new(words),
        len,
    };
    let height = usize::try_from(head.height).map_err(|_| bad("height"))?;
    let columns = head
        .columns
        .iter()
        .map(|c| decoder.column(c))
        .collect::<Result<Vec<_>>>()?;
    PlFrame::new(height, columns).map_err(|e| bad(&format!("{e}")))
}

#[cfg(test)]
mod tests {
    use partita_core::Value;
    use polars::prelude::*;

    use super::*;
    use crate::Partition;

    /// What the wire does: the parts received back to back into 8-byte words.
    fn receive(parts: &[Bytes]) -> (Vec<u64>, usize) {
        let body = parts.concat();
        let mut words = vec![0u64; body.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..body.len()].copy_from_slice(&body);
        (words, body.len())
    }

    fn split_round_trip(frame: &PlFrame) -> PlFrame {
        let value = Partition::value(frame.clone());
        let (head, parts) = value.encode_split().unwrap();
        let (words, len) = receive(&parts);
        let back = Value::decode_split(head.into(), words, len).unwrap();
        Partition::from_value(&back).unwrap().clone()
    }

    fn joined_round_trip(frame: &PlFrame) -> PlFrame {
        let back = Value::decode(Partition::value(frame.clone()).encode().unwrap()).unwrap();
        Partition::from_value(&back).unwrap().clone()
    }

    fn assert_same(back: &PlFrame, frame: &PlFrame) {
        assert_eq!(back.schema(), frame.schema());
        assert_eq!(back.height(), frame.height());
        assert!(back.equals_missing(frame), "{back}\n!=\n{frame}");
    }

    fn every_kind() -> PlFrame {
        let long = |i: usize| format!("a string long enough not to be inlined, number {i}");
        let n = 1000;
        let mut frame = df!(
            "b" => (0..n).map(|i| (i % 3 != 0).then_some(i % 2 == 0)).collect::<Vec<_>>(),
            "i8" => (0..n).map(|i| (i % 120) as i8).collect::<Vec<_>>(),
            "i16" => (0..n).map(|i| i as i16 - 500).collect::<Vec<_>>(),
            "i32" => (0..n).map(|i| (i % 7 != 0).then_some(i as i32)).collect::<Vec<_>>(),
            "i64" => (0..n).map(|i| i as i64 * -3).collect::<Vec<_>>(),
            "u8" => (0..n).map(|i| (i % 250) as u8).collect::<Vec<_>>(),
            "u16" => (0..n).map(|i| i as u16).collect::<Vec<_>>(),
            "u32" => (0..n).map(|i| i as u32 * 7).collect::<Vec<_>>(),
            "u64" => (0..n).map(|i| (i % 5 != 0).then_some(u64::MAX - i as u64)).collect::<Vec<_>>(),
            "f32" => (0..n).map(|i| i as f32 / 3.0).collect::<Vec<_>>(),
            "f64" => (0..n).map(|i| (i % 11 != 0).then_some(i as f64 * 0.1)).collect::<Vec<_>>(),
            "short" => (0..n).map(|i| (i % 13 != 0).then(|| format!("id{i}"))).collect::<Vec<_>>(),
            "long" => (0..n).map(|i| (i % 17 != 0).then(|| long(i))).collect::<Vec<_>>(),
            "unicode" => (0..n).map(|i| format!("ünï{i}çødé-{}", "∑".repeat(i % 9))).collect::<Vec<_>>(),
        )
        .unwrap();
        let bin = Series::new(
            "bin".into(),
            (0..n)
                .map(|i| (i % 4 != 0).then(|| vec![i as u8; i % 40]))
                .collect::<Vec<_>>(),
        );
        let ints = Series::new("t".into(), (0..n as i64).collect::<Vec<_>>());
        let date = ints
            .cast(&DataType::Int32)
            .unwrap()
            .cast(&DataType::Date)
            .unwrap();
        let ms = DataType::Datetime(TimeUnit::Milliseconds, None);
        let utc = DataType::Datetime(TimeUnit::Nanoseconds, Some(TimeZone::UTC));
        let dur = DataType::Duration(TimeUnit::Microseconds);
        let scaled = &ints * 1_000_000_007i64;
        for (name, s) in [
            ("date", date),
            ("datetime", ints.cast(&ms).unwrap()),
            ("datetime_utc", scaled.cast(&utc).unwrap()),
            ("duration", ints.cast(&dur).unwrap()),
            ("time", scaled.cast(&DataType::Time).unwrap()),
            ("bin", bin),
            ("null", Series::new_null("null".into(), n)),
        ] {
            frame
                .with_column(s.with_name(name.into()).into_column())
                .unwrap();
        }
        frame
    }

    #[test]
    fn every_kind_round_trips_split_and_joined() {
        let frame = every_kind();
        assert!(carries(&frame));
        assert_eq!(
            Partition::value(frame.clone()).as_arc().codec(),
            "frame-columns"
        );
        assert_same(&split_round_trip(&frame), &frame);
        assert_same(&joined_round_trip(&frame), &frame);
    }

    #[test]
    fn chunked_sliced_and_empty_frames_round_trip() {
        let frame = every_kind();
        // Several chunks per column, and slices starting mid-byte of the bitmaps.
        let mut chunked = frame.slice(3, 400);
        chunked.vstack_mut(&frame.slice(501, 333)).unwrap();
        assert!(
            chunked
                .column("b")
                .unwrap()
                .as_materialized_series()
                .n_chunks()
                > 1
        );
        for f in [
            chunked,
            frame.slice(7, 1),
            frame.clear(),
            PlFrame::empty_with_height(5),
            PlFrame::empty(),
        ] {
            assert_same(&split_round_trip(&f), &f);
            assert_same(&joined_round_trip(&f), &f);
        }
    }

    /// Where column `x` (f64, one chunk) keeps its values.
    fn values_at(frame: &PlFrame) -> *const f64 {
        let x = frame.column("x").unwrap().f64().unwrap();
        x.cont_slice().unwrap().as_ptr()
    }

    #[test]
    fn buffers_are_shared_when_sent_and_kept_when_received() {
        let frame = df!("x" => (0..4096).map(|i| i as f64).collect::<Vec<_>>()).unwrap();
        let sent = values_at(&frame);
        let (head, parts) = Partition::value(frame.clone()).encode_split().unwrap();
        assert!(
            parts.iter().any(|p| p.as_ptr() == sent.cast()),
            "the sender copied"
        );
        let (words, len) = receive(&parts);
        let range = words.as_ptr_range();
        let back = Value::decode_split(head.into(), words, len).unwrap();
        let got = Partition::from_value(&back).unwrap();
        assert!(
            range.contains(&values_at(got).cast()),
            "the receiver copied"
        );
        assert_same(got, &frame);
    }

    #[test]
    fn a_piece_of_a_string_column_does_not_carry_the_whole_buffer() {
        let n = 100_000;
        let frame = df!("s" => (0..n).map(|i| format!("{i:0>40}")).collect::<Vec<_>>()).unwrap();
        let idx = IdxCa::new(
            "i".into(),
            (0..n as IdxSize).step_by(100).collect::<Vec<_>>(),
        );
        let piece = frame.take(&idx).unwrap();
        let (_, parts) = Partition::value(piece.clone()).encode_split().unwrap();
        let sent: usize = parts.iter().map(Bytes::len).sum();
        // 1000 rows of 40 bytes plus views: well under the 4 MB the split's buffer holds.
        assert!(sent < 100_000, "{sent} bytes sent for a 1000-row piece");
        assert_same(&split_round_trip(&piece), &piece);
    }

    #[test]
    fn other_kinds_go_as_arrow_ipc() {
        let list = Series::new(
            "l".into(),
            [
                Series::new("".into(), [1i64, 2]),
                Series::new("".into(), [3i64]),
            ],
        );
        let frame = PlFrame::new(
            2,
            vec![list.into_column(), Column::new("v".into(), [1i32, 2])],
        )
        .unwrap();
        assert!(!carries(&frame));
        let value = Partition::value(frame.clone());
        assert_eq!(value.as_arc().codec(), "frame-ipc");
        assert!(value.encode_split().unwrap().1.is_empty());
        assert_same(&split_round_trip(&frame), &frame);
        assert_same(&joined_round_trip(&frame), &frame);
    }

    /// A frame's head and parts, with the head re-written by `edit`.
    fn edited(frame: &PlFrame, edit: impl FnOnce(&mut Head)) -> (Bytes, Vec<u64>, usize) {
        let (head, parts) = encode(frame).unwrap().unwrap();
        let (mut parsed, _) = read_head(&head).unwrap();
        edit(&mut parsed);
        let meta = rmp_serde::to_vec(&parsed).unwrap();
        let mut out = vec![FORMAT];
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        let (words, len) = receive(&parts);
        (out.into(), words, len)
    }

    fn decode_err(frame: &PlFrame, edit: impl FnOnce(&mut Head)) -> String {
        let (head, words, len) = edited(frame, edit);
        decode_split(head, words, len).unwrap_err().to_string()
    }

    #[test]
    fn inconsistent_heads_are_errors_naming_the_column() {
        let frame = df!(
            "v" => [1i64, 2, 3],
            "s" => ["a", "much longer than twelve bytes", "c"],
        )
        .unwrap();
        let err = decode_err(&frame, |h| h.columns[0].kind = Kind::String);
        assert!(err.contains("column 'v'"), "{err}");
        let err = decode_err(&frame, |h| h.columns[0].chunks[0].len = 4);
        assert!(
            err.contains("column 'v'") && err.contains("3 values"),
            "{err}"
        );
        let err = decode_err(&frame, |h| {
            if let ChunkData::Values(seg) = &mut h.columns[0].chunks[0].data {
                seg.at += 1;
            }
        });
        assert!(err.contains("column 'v'"), "{err}");
        let err = decode_err(&frame, |h| {
            if let ChunkData::Values(seg) = &mut h.columns[0].chunks[0].data {
                seg.at = u64::MAX - 4;
            }
        });
        assert!(err.contains("outside a body"), "{err}");
        let err = decode_err(&frame, |h| h.height = 2);
        assert!(err.contains("decode"), "{err}");
        // A string buffer whose bytes are not UTF-8.
        let (head, mut words, len) = edited(&frame, |_| {});
        let (parsed, _) = read_head(&head).unwrap();
        let ChunkData::Views { buffers, .. } = &parsed.columns[1].chunks[0].data else {
            panic!("views expected")
        };
        let at = buffers[0].at as usize;
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[at] = 0xFF;
        let err = decode_split(head, words, len).unwrap_err().to_string();
        assert!(err.contains("column 's'"), "{err}");
        // Another format version is refused by number.
        let (head, parts) = encode(&frame).unwrap().unwrap();
        let mut head = head;
        head[0] = 9;
        let (words, len) = receive(&parts);
        let err = decode_split(head.into(), words, len)
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}

//! Values: what flows between tasks.
//!
//! A [`Value`] is an `Arc<dyn Data>`: cloning one never copies data, and a task's inputs are
//! clones of its dependencies' results. Every value knows its size in bytes (the schedulers'
//! memory accounting, later spilling and locality) and how to encode itself for the wire and
//! for spill files.
//!
//! Key decision: the value type is *open*. partita-core knows scalars, strings, byte buffers,
//! flat numeric vectors and lists; partita-array adds chunk types and partita-frame adds polars
//! partitions by implementing [`Data`] and registering a [`Codec`] with [`register_codec!`].
//! Bulk data is encoded as raw little-endian buffers (or Arrow IPC for frames), never
//! element by element through MessagePack.
//!
//! Encoded layout: `[version: u8 = 1][codec name length: u16 LE][codec name][payload]`.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::error::{Error, Result};

const ENCODING_VERSION: u8 = 1;

/// Data that can be a task's result.
///
/// Contract for implementations:
/// - `nbytes` is the memory the value keeps alive (its buffers), used for accounting; it must
///   be cheap to call.
/// - `codec` names a [`Codec`] registered with [`register_codec!`] whose `decode` inverts
///   `encode`. A value that cannot leave its process returns an error from `encode` saying so.
/// - Values are immutable once made: they are shared between tasks and threads.
pub trait Data: Any + Send + Sync + fmt::Debug {
    /// Bytes held by this value.
    fn nbytes(&self) -> usize;
    /// Name of the codec that decodes what `encode` writes.
    fn codec(&self) -> &'static str;
    /// Append the encoded payload to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<()>;
    /// The payload `encode` writes, as a small head and a body in parts that share this
    /// value's memory, when the codec can do that without copying (an array's buffer, a
    /// frame's column buffers); `None` means use `encode`. `head` followed by the parts
    /// must be exactly what `encode` writes. The wire sends them as they are and receives
    /// the body into one 8-byte aligned buffer, which the codec's `decode_split` can keep
    /// without copying (so a part meant to be kept as `[T]` starts at a multiple of 8).
    fn encode_split(&self) -> Result<Option<(Vec<u8>, Vec<Bytes>)>> {
        Ok(None)
    }
    /// Rust type name, for error messages.
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// Decoder for one kind of [`Data`], registered with [`register_codec!`].
#[derive(Debug)]
pub struct Codec {
    /// Name written in front of the payload.
    pub name: &'static str,
    /// Turns a payload back into a value. `Bytes` lets decoders keep slices without copying.
    pub decode: fn(Bytes) -> Result<Value>,
    /// Turns a split payload back into a value: the head, and the body's first `len` bytes
    /// held in 8-byte words (see [`Data::encode_split`]). `None`: the two are joined and
    /// given to `decode`.
    pub decode_split: Option<DecodeSplit>,
}

/// A codec's decoder for split payloads: the head, the body in 8-byte words, its length.
pub type DecodeSplit = fn(Bytes, Vec<u64>, usize) -> Result<Value>;

inventory::collect!(Codec);

/// Register a codec: `register_codec!("f64", decode_f64);`.
#[macro_export]
macro_rules! register_codec {
    ($name:expr, $decode:expr) => {
        $crate::inventory::submit! {
            $crate::Codec { name: $name, decode: $decode, decode_split: None }
        }
    };
    ($name:expr, $decode:expr, split = $split:expr) => {
        $crate::inventory::submit! {
            $crate::Codec { name: $name, decode: $decode, decode_split: Some($split) }
        }
    };
}

fn codec_table() -> &'static HashMap<&'static str, &'static Codec> {
    static TABLE: OnceLock<HashMap<&'static str, &'static Codec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        inventory::iter::<Codec>
            .into_iter()
            .map(|c| (c.name, c))
            .collect()
    })
}

/// A task's result, shared by reference count.
#[derive(Clone)]
pub struct Value(Arc<dyn Data>);

impl Value {
    /// Wrap data in a value.
    pub fn new<T: Data>(data: T) -> Value {
        Value(Arc::new(data))
    }

    /// Wrap already shared data.
    pub fn from_arc(data: Arc<dyn Data>) -> Value {
        Value(data)
    }

    /// Bytes held by this value.
    pub fn nbytes(&self) -> usize {
        self.0.nbytes()
    }

    /// Rust type name of the data inside.
    pub fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    /// The data, if it is a `T`.
    pub fn downcast_ref<T: Data>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref::<T>()
    }

    /// The data as a `T`, or a type error naming both types.
    pub fn get<T: Data>(&self) -> Result<&T> {
        self.downcast_ref::<T>().ok_or_else(|| {
            Error::Type(format!(
                "expected a value of type {}, got {}",
                std::any::type_name::<T>(),
                self.type_name()
            ))
        })
    }

    /// The shared data as an `Arc<T>`, without copying it.
    pub fn downcast_arc<T: Data>(&self) -> Option<Arc<T>> {
        let any: Arc<dyn Any + Send + Sync> = self.0.clone();
        any.downcast::<T>().ok()
    }

    /// The shared data.
    pub fn as_arc(&self) -> &Arc<dyn Data> {
        &self.0
    }

    /// Whether two values share the same allocation.
    pub fn ptr_eq(&self, other: &Value) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Encode for the wire or disk.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.nbytes() + 32);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Encode, appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        self.write_prefix(out)?;
        self.0.encode(out)
    }

    fn write_prefix(&self, out: &mut Vec<u8>) -> Result<()> {
        let name = self.0.codec();
        let len = u16::try_from(name.len())
            .map_err(|_| Error::Codec(format!("codec name too long: {name}")))?;
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        Ok(())
    }

    /// [`Value::encode`]'s bytes as a head and a body in parts that share the value's
    /// memory (no parts when the codec cannot split): `head ++ parts == encode()`.
    pub fn encode_split(&self) -> Result<(Vec<u8>, Vec<Bytes>)> {
        let mut head = Vec::with_capacity(64);
        self.write_prefix(&mut head)?;
        match self.0.encode_split()? {
            Some((h, body)) => {
                head.extend_from_slice(&h);
                Ok((head, body))
            }
            None => {
                self.0.encode(&mut head)?;
                Ok((head, Vec::new()))
            }
        }
    }

    /// Decode a split encoding: the head, and the body's first `body_len` bytes held in
    /// 8-byte words (which a codec with `decode_split` keeps without copying).
    pub fn decode_split(head: Bytes, body: Vec<u64>, body_len: usize) -> Result<Value> {
        if body_len == 0 {
            return Value::decode(head);
        }
        let words: &[u8] = bytemuck::cast_slice(&body);
        if body_len > words.len() {
            return Err(Error::Codec(format!(
                "split value body of {body_len} bytes in a buffer of {}",
                words.len()
            )));
        }
        let (codec, payload) = Self::codec_of(head)?;
        match codec.decode_split {
            Some(split) => split(payload, body, body_len),
            None => {
                let mut joined = Vec::with_capacity(payload.len() + body_len);
                joined.extend_from_slice(&payload);
                joined.extend_from_slice(&words[..body_len]);
                (codec.decode)(Bytes::from(joined))
            }
        }
    }

    /// Decode what [`Value::encode`] wrote.
    pub fn decode(bytes: impl Into<Bytes>) -> Result<Value> {
        let (codec, payload) = Self::codec_of(bytes.into())?;
        (codec.decode)(payload)
    }

    /// The codec named by an encoding's prefix, and the payload after it.
    fn codec_of(bytes: Bytes) -> Result<(&'static Codec, Bytes)> {
        if bytes.len() < 3 {
            return Err(Error::Codec(format!(
                "encoded value too short: {} bytes",
                bytes.len()
            )));
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(Error::Codec(format!(
                "unsupported value encoding version {} (this build reads version {ENCODING_VERSION})",
                bytes[0]
            )));
        }
        let len = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
        let name = bytes
            .get(3..3 + len)
            .ok_or_else(|| Error::Codec("encoded value truncated inside its codec name".into()))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| Error::Codec("codec name is not utf-8".into()))?;
        let codec = codec_table().get(name).ok_or_else(|| {
            Error::Codec(format!(
                "unknown value codec '{name}' (is the crate that defines it linked in?)"
            ))
        })?;
        Ok((codec, bytes.slice(3 + len..)))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Turn a Rust value into a [`Value`].
pub trait IntoValue {
    /// Wrap `self`.
    fn into_value(self) -> Value;
}

impl<T: Data> IntoValue for T {
    fn into_value(self) -> Value {
        Value::new(self)
    }
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}

/// Get a Rust value out of a [`Value`] (a clone: values are shared).
pub trait FromValue: Sized {
    /// Extract, or a type error naming both types.
    fn from_value(value: &Value) -> Result<Self>;
}

impl<T: Data + Clone> FromValue for T {
    fn from_value(value: &Value) -> Result<T> {
        value.get::<T>().cloned()
    }
}

/// Zero-copy access: a delayed function taking `Arc<Vec<f64>>` shares its input's buffer
/// instead of cloning it.
impl<T: Data> FromValue for Arc<T> {
    fn from_value(value: &Value) -> Result<Arc<T>> {
        value.downcast_arc::<T>().ok_or_else(|| {
            Error::Type(format!(
                "expected a value of type {}, got {}",
                std::any::type_name::<T>(),
                value.type_name()
            ))
        })
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Value> {
        Ok(value.clone())
    }
}

fn take_exact<const N: usize>(payload: &[u8], what: &str) -> Result<[u8; N]> {
    payload.try_into().map_err(|_| {
        Error::Codec(format!(
            "{what} payload must be {N} bytes, got {}",
            payload.len()
        ))
    })
}

macro_rules! scalar_data {
    ($($ty:ty => $name:literal, $decode:ident;)*) => {$(
        impl Data for $ty {
            fn nbytes(&self) -> usize {
                std::mem::size_of::<$ty>()
            }
            fn codec(&self) -> &'static str {
                $name
            }
            fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
                out.extend_from_slice(&self.to_le_bytes());
                Ok(())
            }
        }
        fn $decode(payload: Bytes) -> Result<Value> {
            Ok(Value::new(<$ty>::from_le_bytes(take_exact(&payload, $name)?)))
        }
        register_codec!($name, $decode);
    )*};
}

scalar_data! {
    i64 => "i64", decode_i64;
    u64 => "u64", decode_u64;
    f64 => "f64", decode_f64;
    i32 => "i32", decode_i32;
    f32 => "f32", decode_f32;
}

impl Data for bool {
    fn nbytes(&self) -> usize {
        1
    }
    fn codec(&self) -> &'static str {
        "bool"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(u8::from(*self));
        Ok(())
    }
}

fn decode_bool(payload: Bytes) -> Result<Value> {
    match take_exact::<1>(&payload, "bool")? {
        [0] => Ok(Value::new(false)),
        [1] => Ok(Value::new(true)),
        [b] => Err(Error::Codec(format!(
            "bool payload must be 0 or 1, got {b}"
        ))),
    }
}
register_codec!("bool", decode_bool);

impl Data for () {
    fn nbytes(&self) -> usize {
        0
    }
    fn codec(&self) -> &'static str {
        "unit"
    }
    fn encode(&self, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

fn decode_unit(payload: Bytes) -> Result<Value> {
    take_exact::<0>(&payload, "unit")?;
    Ok(Value::new(()))
}
register_codec!("unit", decode_unit);

impl Data for String {
    fn nbytes(&self) -> usize {
        self.len()
    }
    fn codec(&self) -> &'static str {
        "str"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
}

fn decode_str(payload: Bytes) -> Result<Value> {
    let s = String::from_utf8(payload.to_vec())
        .map_err(|e| Error::Codec(format!("string value is not utf-8: {e}")))?;
    Ok(Value::new(s))
}
register_codec!("str", decode_str);

impl Data for Bytes {
    fn nbytes(&self) -> usize {
        self.len()
    }
    fn codec(&self) -> &'static str {
        "bytes"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(self);
        Ok(())
    }
}

fn decode_bytes(payload: Bytes) -> Result<Value> {
    Ok(Value::new(payload))
}
register_codec!("bytes", decode_bytes);

macro_rules! vec_data {
    ($($ty:ty => $name:literal, $decode:ident;)*) => {$(
        impl Data for Vec<$ty> {
            fn nbytes(&self) -> usize {
                std::mem::size_of_val(self.as_slice())
            }
            fn codec(&self) -> &'static str {
                $name
            }
            fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
                out.reserve(self.nbytes());
                for x in self {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Ok(())
            }
        }
        fn $decode(payload: Bytes) -> Result<Value> {
            const W: usize = std::mem::size_of::<$ty>();
            if payload.len() % W != 0 {
                return Err(Error::Codec(format!(
                    "{} payload of {} bytes is not a whole number of {W}-byte elements",
                    $name,
                    payload.len()
                )));
            }
            let v: Vec<$ty> = payload
                .chunks_exact(W)
                .map(|c| <$ty>::from_le_bytes(c.try_into().expect("chunks_exact gives W bytes")))
                .collect();
            Ok(Value::new(v))
        }
        register_codec!($name, $decode);
    )*};
}

vec_data! {
    f64 => "vec-f64", decode_vec_f64;
    i64 => "vec-i64", decode_vec_i64;
}

/// A list of values, e.g. the partial results handed to a combine task.
#[derive(Clone, Debug, Default)]
pub struct ValueList(pub Vec<Value>);

impl Data for ValueList {
    fn nbytes(&self) -> usize {
        self.0.iter().map(Value::nbytes).sum()
    }
    fn codec(&self) -> &'static str {
        "list"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        for v in &self.0 {
            let start = out.len();
            out.extend_from_slice(&[0; 8]);
            v.encode_into(out)?;
            let len = (out.len() - start - 8) as u64;
            out[start..start + 8].copy_from_slice(&len.to_le_bytes());
        }
        Ok(())
    }
}

/// Lists nest at most this deep; deeper input is refused rather than overflowing the stack.
pub const MAX_LIST_DEPTH: u32 = 64;

thread_local! {
    static LIST_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts one level of list nesting for as long as it lives.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Result<DepthGuard> {
        LIST_DEPTH.with(|d| {
            if d.get() >= MAX_LIST_DEPTH {
                return Err(Error::Codec(format!(
                    "lists nested more than {MAX_LIST_DEPTH} deep"
                )));
            }
            d.set(d.get() + 1);
            Ok(DepthGuard)
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        LIST_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

fn decode_list(payload: Bytes) -> Result<Value> {
    let _depth = DepthGuard::enter()?;
    let read_u64 = |at: usize| -> Result<u64> {
        let b = payload
            .get(at..at + 8)
            .ok_or_else(|| Error::Codec("list payload truncated".into()))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let n = read_u64(0)?;
    let mut at = 8;
    // Each element takes at least 8 bytes, which bounds a hostile count.
    if n > (payload.len() / 8) as u64 {
        return Err(Error::Codec(format!(
            "list claims {n} elements in {} bytes",
            payload.len()
        )));
    }
    // Grow as elements actually decode rather than trusting the count up front.
    let mut items = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        let len = usize::try_from(read_u64(at)?)
            .map_err(|_| Error::Codec("list element length overflows".into()))?;
        at += 8;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= payload.len())
            .ok_or_else(|| Error::Codec("list element runs past the end of the payload".into()))?;
        items.push(Value::decode(payload.slice(at..end))?);
        at = end;
    }
    if at != payload.len() {
        return Err(Error::Codec(format!(
            "list payload has {} trailing bytes",
            payload.len() - at
        )));
    }
    Ok(Value::new(ValueList(items)))
}
register_codec!("list", decode_list);

/// `len` rounded up to a multiple of 8: where the next buffer of a split body starts.
pub fn padded8(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Several buffers carried in a split payload's body (see [`Data::encode_split`]) and
/// described in its head, for codecs whose values hold buffers plus a description of their
/// own (a pickle and the buffers it was given out of band). Head: `[n: u32, n lengths: u64,
/// trailer length: u64, trailer]`, little-endian; body: the buffers in order, each padded
/// to a multiple of 8 bytes, so each starts 8-byte aligned in the received body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferList {
    /// Each buffer's length, without padding.
    pub lengths: Vec<usize>,
    /// The codec's description of the buffers (kept as it arrived, not copied).
    pub trailer: Bytes,
}

impl BufferList {
    /// Append the head describing buffers of `lengths` and `trailer` to `out`.
    pub fn write_head(lengths: &[usize], trailer: &[u8], out: &mut Vec<u8>) {
        out.reserve(12 + 8 * lengths.len() + trailer.len());
        let count = u32::try_from(lengths.len()).expect("fewer than 2^32 buffers");
        out.extend_from_slice(&count.to_le_bytes());
        for &n in lengths {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        out.extend_from_slice(&(trailer.len() as u64).to_le_bytes());
        out.extend_from_slice(trailer);
    }

    /// The body's parts: each buffer, then the zeros that pad it to a multiple of 8.
    pub fn body(buffers: Vec<Bytes>) -> Vec<Bytes> {
        static ZEROS: [u8; 8] = [0; 8];
        let mut parts = Vec::with_capacity(2 * buffers.len());
        for b in buffers {
            let pad = padded8(b.len()) - b.len();
            parts.push(b);
            if pad > 0 {
                parts.push(Bytes::from_static(&ZEROS[..pad]));
            }
        }
        parts
    }

    /// Read a head written by [`BufferList::write_head`] from the front of `head`; also
    /// returns what follows it. A head cut short, or lengths that cannot be, is a codec
    /// error naming `what` the value is.
    pub fn parse(mut head: Bytes, what: &str) -> Result<(BufferList, Bytes)> {
        let bad = |fault: &str| Error::Codec(format!("malformed {what}: {fault}"));
        let mut take = |n: usize, fault: &str| match head.len() >= n {
            true => Ok(head.split_to(n)),
            false => Err(bad(fault)),
        };
        let word = |b: Bytes| u64::from_le_bytes(b[..].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(take(4, "no buffer count")?[..].try_into().expect("4"));
        let mut lengths = Vec::new();
        for _ in 0..count {
            let n = word(take(8, "buffer lengths cut short")?);
            lengths.push(usize::try_from(n).map_err(|_| bad("a buffer longer than memory"))?);
        }
        let n = word(take(8, "no trailer length")?);
        let n = usize::try_from(n).map_err(|_| bad("a trailer longer than memory"))?;
        let trailer = take(n, "trailer cut short")?;
        Ok((BufferList { lengths, trailer }, head))
    }

    /// The body's length, padding included; `None` if it overflows.
    pub fn body_len(&self) -> Option<usize> {
        (self.lengths.iter()).try_fold(0usize, |acc, &n| {
            acc.checked_add(n.checked_next_multiple_of(8)?)
        })
    }

    /// An error naming `what` unless the body holds exactly `len` bytes, as the head says.
    pub fn check_body(&self, len: usize, what: &str) -> Result<()> {
        match self.body_len() {
            Some(n) if n == len => Ok(()),
            n => Err(Error::Codec(format!(
                "malformed {what}: a body of {len} bytes where the head says {n:?}"
            ))),
        }
    }

    /// Where each buffer lies in the body, in order.
    pub fn ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut at = 0usize;
        self.lengths.iter().map(move |&n| {
            let range = at..at + n;
            at += padded8(n);
            range
        })
    }
}

/// Wraps any Rust value for local-only use in a graph (for example in a delayed function).
///
/// It reports `size_of::<T>()` bytes and refuses to be encoded, with an error naming its type.
#[derive(Clone, Debug)]
pub struct Local<T>(pub T);

impl<T: Send + Sync + fmt::Debug + 'static> Data for Local<T> {
    fn nbytes(&self) -> usize {
        std::mem::size_of::<T>()
    }
    fn codec(&self) -> &'static str {
        "local"
    }
    fn encode(&self, _out: &mut Vec<u8>) -> Result<()> {
        Err(Error::Codec(format!(
            "a value of type {} is local-only and cannot be sent or spilled",
            std::any::type_name::<T>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) -> Value {
        Value::decode(v.encode().unwrap()).unwrap()
    }

    #[test]
    fn buffer_lists_round_trip_aligned() {
        let buffers = vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from(vec![7u8; 16]),
            Bytes::from_static(b"0123456789"),
        ];
        let lengths: Vec<usize> = buffers.iter().map(Bytes::len).collect();
        let mut head = Vec::new();
        BufferList::write_head(&lengths, b"pickle", &mut head);
        head.extend_from_slice(b"rest");
        let body: Vec<u8> = BufferList::body(buffers.clone()).concat();
        let (list, rest) = BufferList::parse(Bytes::from(head), "test value").unwrap();
        assert_eq!(list.lengths, lengths);
        assert_eq!(&list.trailer[..], b"pickle");
        assert_eq!(&rest[..], b"rest");
        assert_eq!(list.body_len(), Some(body.len()));
        list.check_body(body.len(), "test value").unwrap();
        let short = list.check_body(body.len() - 1, "test value").unwrap_err();
        assert!(
            short.to_string().contains("malformed test value"),
            "{short}"
        );
        assert_eq!(
            body.len(),
            8 + 16 + 16,
            "abc and 0123456789 padded, 16 as they are"
        );
        for (range, b) in list.ranges().zip(&buffers) {
            assert_eq!(range.start % 8, 0);
            assert_eq!(&body[range], &b[..]);
        }
    }

    #[test]
    fn malformed_buffer_lists_are_errors_naming_the_fault() {
        let mut head = Vec::new();
        BufferList::write_head(&[3, 5], b"pickle", &mut head);
        // Every head cut short is refused, never a panic.
        for cut in 0..head.len() {
            let e = BufferList::parse(Bytes::copy_from_slice(&head[..cut]), "Python value")
                .unwrap_err()
                .to_string();
            assert!(e.contains("malformed Python value"), "{cut}: {e}");
        }
        let fault = |h: Vec<u8>| {
            BufferList::parse(Bytes::from(h), "x")
                .unwrap_err()
                .to_string()
        };
        assert!(fault(vec![1, 0]).contains("no buffer count"));
        // A count of four billion buffers with none there: refused, nothing allocated for them.
        assert!(fault(u32::MAX.to_le_bytes().to_vec()).contains("buffer lengths cut short"));
        let mut h = 0u32.to_le_bytes().to_vec();
        h.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(fault(h).contains("trailer"));
        // Lengths whose padded sum overflows have no body length.
        let list = BufferList {
            lengths: vec![usize::MAX - 3, 16],
            trailer: Bytes::new(),
        };
        assert_eq!(list.body_len(), None);
        assert!(list.check_body(16, "x").is_err());
    }

    #[test]
    fn scalars_round_trip() {
        assert_eq!(*round_trip(Value::new(-5i64)).get::<i64>().unwrap(), -5);
        assert_eq!(*round_trip(Value::new(2.5f64)).get::<f64>().unwrap(), 2.5);
        assert!(*round_trip(Value::new(true)).get::<bool>().unwrap());
        assert_eq!(
            round_trip(Value::new("héllo".to_string()))
                .get::<String>()
                .unwrap(),
            "héllo"
        );
        round_trip(Value::new(())).get::<()>().unwrap();
    }

    #[test]
    fn buffers_are_raw_little_endian() {
        let v = Value::new(vec![1.0f64, -2.0]);
        let enc = v.encode().unwrap();
        let header = 3 + "vec-f64".len();
        assert_eq!(enc.len(), header + 16);
        assert_eq!(&enc[header..header + 8], &1.0f64.to_le_bytes());
        assert_eq!(round_trip(v).get::<Vec<f64>>().unwrap(), &vec![1.0, -2.0]);
        assert_eq!(Value::new(vec![1i64, 2, 3]).nbytes(), 24);
    }

    #[test]
    fn nested_lists_round_trip() {
        let inner = Value::new(ValueList(vec![
            Value::new(1i64),
            Value::new("a".to_string()),
        ]));
        let v = Value::new(ValueList(vec![
            inner,
            Value::new(Bytes::from_static(b"xyz")),
        ]));
        let back = round_trip(v.clone());
        let list = back.get::<ValueList>().unwrap();
        assert_eq!(list.0.len(), 2);
        assert_eq!(list.0[1].get::<Bytes>().unwrap().as_ref(), b"xyz");
        assert_eq!(back.nbytes(), v.nbytes());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Value::decode(Vec::new()).is_err());
        assert!(
            Value::decode(vec![9, 0, 0])
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
        let mut unknown = vec![1, 3, 0];
        unknown.extend_from_slice(b"zzz");
        assert!(
            Value::decode(unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown value codec 'zzz'")
        );
        let mut enc = Value::new(7i64).encode().unwrap();
        enc.pop();
        assert!(Value::decode(enc).is_err());
        let mut list = Value::new(ValueList(vec![Value::new(1i64)]))
            .encode()
            .unwrap();
        list.truncate(list.len() - 3);
        assert!(Value::decode(list).is_err());
        let mut huge = vec![1, 4, 0];
        huge.extend_from_slice(b"list");
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Value::decode(huge).is_err());
    }

    #[test]
    fn deeply_nested_lists_are_refused_not_a_stack_overflow() {
        // Hand-build 100,000 levels of one-element lists: ~2 MB of hostile input. Each level
        // is a 23-byte header (version, codec name, count, inner length) around the next.
        let leaf = Value::new(1i64).encode().unwrap();
        let levels = 100_000usize;
        let mut inner = Vec::with_capacity(levels * 23 + leaf.len());
        for level in 0..levels {
            let below = (levels - level - 1) * 23 + leaf.len();
            inner.extend_from_slice(&[1u8, 4, 0]);
            inner.extend_from_slice(b"list");
            inner.extend_from_slice(&1u64.to_le_bytes());
            inner.extend_from_slice(&(below as u64).to_le_bytes());
        }
        inner.extend_from_slice(&leaf);
        let err = Value::decode(inner).unwrap_err().to_string();
        assert!(err.contains("nested more than 64"), "{err}");
        // The depth count unwinds: a legitimate list still decodes afterwards.
        let ok = Value::new(ValueList(vec![Value::new(ValueList(vec![Value::new(
            2i64,
        )]))]));
        assert!(Value::decode(ok.encode().unwrap()).is_ok());
    }

    #[test]
    fn local_values_refuse_to_encode_by_name() {
        let v = Value::new(Local(std::collections::BTreeMap::<u8, u8>::new()));
        let err = v.encode().unwrap_err().to_string();
        assert!(err.contains("BTreeMap"), "{err}");
    }

    #[test]
    fn type_errors_name_both_types() {
        let err = Value::new(1i64).get::<f64>().unwrap_err().to_string();
        assert!(err.contains("f64") && err.contains("i64"), "{err}");
    }
}

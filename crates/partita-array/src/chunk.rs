//! `Chunk`: one block of an array, the value that flows between array tasks.
//!
//! A chunk is an `ArcArray<T, IxDyn>` for one of the supported dtypes: cloning it shares the
//! buffer. Its wire and spill form is a small header (dtype, ndim, shape) followed by the
//! elements as raw little-endian bytes in C order.

use bytes::Bytes;
use ndarray::{ArcArray, ArrayD, IxDyn};
use partita_core::{Data, Error, Result, Value, register_codec};

use crate::dtype::DType;

/// One block of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// bool elements
    Bool(ArcArray<bool, IxDyn>),
    /// u8 elements
    U8(ArcArray<u8, IxDyn>),
    /// i32 elements
    I32(ArcArray<i32, IxDyn>),
    /// i64 elements
    I64(ArcArray<i64, IxDyn>),
    /// f32 elements
    F32(ArcArray<f32, IxDyn>),
    /// f64 elements
    F64(ArcArray<f64, IxDyn>),
}

/// Run `$body` with `$a` bound to the typed array inside a chunk.
#[macro_export]
#[doc(hidden)]
macro_rules! with_chunk {
    ($chunk:expr, $a:ident => $body:expr) => {
        match $chunk {
            $crate::Chunk::Bool($a) => $body,
            $crate::Chunk::U8($a) => $body,
            $crate::Chunk::I32($a) => $body,
            $crate::Chunk::I64($a) => $body,
            $crate::Chunk::F32($a) => $body,
            $crate::Chunk::F64($a) => $body,
        }
    };
}

/// Run `$body` with `$T` bound to the Rust element type of a [`DType`] value.
#[macro_export]
#[doc(hidden)]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::Bool => {
                type $T = bool;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

/// The largest block an op may allocate from its own description (a shape it was given
/// rather than inputs it received). Dask's chunks are around 128 MiB; this bound turns an
/// absurd request, say from a corrupted or hostile graph, into an error instead of an
/// allocation failure that would abort the process.
pub const MAX_BLOCK_BYTES: usize = 8 << 30;

/// Elements in a block of `shape`, or an error if it exceeds [`MAX_BLOCK_BYTES`].
pub fn checked_block_len(shape: &[usize], dtype: DType) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| n.saturating_mul(dtype.size()) <= MAX_BLOCK_BYTES)
        .ok_or_else(|| {
            Error::Shape(format!(
                "a block of shape {shape:?} and dtype {dtype} is larger than {} GiB",
                MAX_BLOCK_BYTES >> 30
            ))
        })
}

/// Rust types that can be array elements.
pub trait Element: Copy + Send + Sync + std::fmt::Debug + PartialEq + Default + 'static {
    /// The dtype of this type.
    const DTYPE: DType;
    /// Wrap an array of this type.
    fn into_chunk(a: ArcArray<Self, IxDyn>) -> Chunk;
    /// Borrow the array if the chunk holds this type.
    fn chunk_ref(c: &Chunk) -> Option<&ArcArray<Self, IxDyn>>;
    /// Little-endian bytes of one element.
    fn write_le(self, out: &mut Vec<u8>);
    /// Read one element from exactly `DTYPE.size()` little-endian bytes.
    fn read_le(b: &[u8]) -> Result<Self>;
    /// Little-endian bytes of a contiguous run of elements.
    fn write_slice_le(s: &[Self], out: &mut Vec<u8>) {
        for &x in s {
            x.write_le(out);
        }
    }
    /// Elements from little-endian bytes, a whole number of elements long.
    fn read_vec_le(b: &[u8]) -> Result<Vec<Self>> {
        b.chunks_exact(Self::DTYPE.size())
            .map(Self::read_le)
            .collect()
    }
    /// The elements' little-endian bytes sharing the array's buffer (no copy), where that is
    /// its memory form: a C-contiguous array of a plain number type on a little-endian host.
    fn shared_le_bytes(_a: &ArcArray<Self, IxDyn>) -> Option<Bytes> {
        None
    }
    /// Elements from the first `len` bytes of `words` (little-endian): the same buffer
    /// when the element is 8 bytes wide, a copy otherwise.
    fn from_words_le(words: Vec<u64>, len: usize) -> Result<Vec<Self>> {
        Self::read_vec_le(word_bytes(&words, len)?)
    }
}

/// The first `len` bytes of `words`.
fn word_bytes(words: &[u64], len: usize) -> Result<&[u8]> {
    let bytes: &[u8] = bytemuck::cast_slice(words);
    bytes
        .get(..len)
        .ok_or_else(|| Error::Codec(format!("{len} bytes asked of a buffer of {}", bytes.len())))
}

/// An array's buffer as bytes, for [`Bytes::from_owner`]: the bytes live as long as the
/// array's shared buffer does.
struct LeBytes<T>(ArcArray<T, IxDyn>);

impl<T: bytemuck::Pod> AsRef<[u8]> for LeBytes<T> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice().map(bytemuck::cast_slice).unwrap_or(&[])
    }
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn into_chunk(a: ArcArray<Self, IxDyn>) -> Chunk {
                Chunk::$variant(a)
            }
            fn chunk_ref(c: &Chunk) -> Option<&ArcArray<Self, IxDyn>> {
                match c {
                    Chunk::$variant(a) => Some(a),
                    _ => None,
                }
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(b: &[u8]) -> Result<Self> {
                Ok(<$t>::from_le_bytes(b.try_into().map_err(|_| {
                    Error::Codec(format!(
                        "{} element needs {} bytes",
                        DType::$variant,
                        DType::$variant.size()
                    ))
                })?))
            }
            // On a little-endian machine the wire form is the memory form: one copy
            // (a 1 GB chunk encodes at memory speed, not element by element).
            #[cfg(target_endian = "little")]
            fn write_slice_le(s: &[Self], out: &mut Vec<u8>) {
                out.extend_from_slice(bytemuck::cast_slice(s));
            }
            #[cfg(target_endian = "little")]
            fn shared_le_bytes(a: &ArcArray<Self, IxDyn>) -> Option<Bytes> {
                a.as_slice()?;
                Some(Bytes::from_owner(LeBytes(a.clone())))
            }
            #[cfg(target_endian = "little")]
            fn from_words_le(words: Vec<u64>, len: usize) -> Result<Vec<Self>> {
                let size = DType::$variant.size();
                if size == 8 && len % 8 == 0 && len / 8 <= words.len() {
                    let mut words = words;
                    words.truncate(len / 8);
                    // Same size and alignment: the buffer becomes the elements' as it is.
                    return bytemuck::allocation::try_cast_vec::<u64, $t>(words).map_err(
                        |(e, _)| Error::Internal(format!("reinterpreting a received buffer: {e}")),
                    );
                }
                Self::read_vec_le(word_bytes(&words, len)?)
            }
            #[cfg(target_endian = "little")]
            fn read_vec_le(b: &[u8]) -> Result<Vec<Self>> {
                let n = b.len() / DType::$variant.size();
                let mut v = vec![<$t>::default(); n];
                bytemuck::cast_slice_mut::<$t, u8>(&mut v)
                    .copy_from_slice(&b[..n * DType::$variant.size()]);
                Ok(v)
            }
        }
    };
}

element!(u8, U8);
element!(i32, I32);
element!(i64, I64);
element!(f32, F32);
element!(f64, F64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn into_chunk(a: ArcArray<Self, IxDyn>) -> Chunk {
        Chunk::Bool(a)
    }
    fn chunk_ref(c: &Chunk) -> Option<&ArcArray<Self, IxDyn>> {
        match c {
            Chunk::Bool(a) => Some(a),
            _ => None,
        }
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn read_le(b: &[u8]) -> Result<Self> {
        match b {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(Error::Codec(format!(
                "bool element must be one byte 0 or 1, got {b:?}"
            ))),
        }
    }
}

impl Chunk {
    /// A chunk from an owned array.
    pub fn new<T: Element>(a: ArrayD<T>) -> Chunk {
        T::into_chunk(a.into_shared())
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Chunk::Bool(_) => DType::Bool,
            Chunk::U8(_) => DType::U8,
            Chunk::I32(_) => DType::I32,
            Chunk::I64(_) => DType::I64,
            Chunk::F32(_) => DType::F32,
            Chunk::F64(_) => DType::F64,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        with_chunk!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_chunk!(self, a => a.len())
    }

    /// Whether the chunk has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The typed array, or a type error naming both dtypes.
    pub fn typed<T: Element>(&self) -> Result<&ArcArray<T, IxDyn>> {
        T::chunk_ref(self).ok_or_else(|| {
            Error::Type(format!(
                "expected a {} chunk, got {}",
                T::DTYPE,
                self.dtype()
            ))
        })
    }

    /// The elements converted to `T` with `astype` semantics (shared, not copied, when the
    /// chunk already is `T`).
    pub fn to_typed<T: Element + crate::kernel::Prim>(&self) -> ArcArray<T, IxDyn> {
        if let Some(a) = T::chunk_ref(self) {
            return a.clone();
        }
        with_chunk!(self, a => a.mapv(T::from_prim).into_shared())
    }

    /// The chunks inside task inputs, or a type error naming the first that is not one.
    pub fn from_values(values: &[Value]) -> Result<Vec<&Chunk>> {
        values.iter().map(Chunk::from_value).collect()
    }

    /// The chunk inside a task value, or a type error.
    pub fn from_value(v: &Value) -> Result<&Chunk> {
        v.get::<Chunk>()
    }

    /// dtype tag, number of axes, then the shape: what precedes the elements.
    fn encode_header(&self, out: &mut Vec<u8>) {
        out.push(self.dtype() as u8);
        let shape = self.shape();
        out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for &d in shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
    }
}

impl Data for Chunk {
    fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }
    fn codec(&self) -> &'static str {
        "array-chunk"
    }
    fn encode_split(&self) -> Result<Option<(Vec<u8>, Vec<Bytes>)>> {
        let Some(body) = with_chunk!(self, a => Element::shared_le_bytes(a)) else {
            return Ok(None);
        };
        let mut head = Vec::with_capacity(5 + 8 * self.shape().len());
        self.encode_header(&mut head);
        Ok(Some((head, vec![body])))
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.encode_header(out);
        out.reserve(self.nbytes());
        with_chunk!(self, a => {
            match a.as_slice() {
                // C-contiguous: the buffer as it is.
                Some(s) => Element::write_slice_le(s, out),
                // Otherwise in logical (C) order whatever the memory layout.
                None => {
                    for &x in a.iter() {
                        x.write_le(out);
                    }
                }
            }
        });
        Ok(())
    }
}

fn decode_typed<T: Element>(shape: Vec<usize>, data: &[u8]) -> Result<Chunk> {
    let values = T::read_vec_le(data)?;
    let a = ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| Error::Codec(format!("chunk of shape {shape:?}: {e}")))?;
    Ok(Chunk::new(a))
}

/// The header [`Chunk::encode_header`] wrote: dtype, shape, the header's length, and the
/// number of bytes the elements take.
fn decode_header(payload: &[u8]) -> Result<(DType, Vec<usize>, usize, usize)> {
    let bad = |what: &str| Error::Codec(format!("array chunk: {what}"));
    let (&tag, rest) = payload.split_first().ok_or_else(|| bad("empty payload"))?;
    let dtype = *DType::ALL
        .get(tag as usize)
        .ok_or_else(|| bad(&format!("unknown dtype tag {tag}")))?;
    let ndim_bytes = rest.get(..4).ok_or_else(|| bad("truncated header"))?;
    let ndim = u32::from_le_bytes(ndim_bytes.try_into().expect("4 bytes")) as usize;
    if ndim > 64 {
        return Err(bad(&format!("{ndim} dimensions is more than 64")));
    }
    let dims = rest
        .get(4..4 + 8 * ndim)
        .ok_or_else(|| bad("truncated shape"))?;
    let shape: Vec<usize> = dims
        .chunks_exact(8)
        .map(|b| usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes"))))
        .collect::<Result<_, _>>()
        .map_err(|_| bad("dimension does not fit in memory"))?;
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(&format!("shape {shape:?} overflows")))?;
    Ok((dtype, shape, 1 + 4 + 8 * ndim, expected))
}

fn decode_chunk(payload: Bytes) -> Result<Value> {
    let bad = |what: &str| Error::Codec(format!("array chunk: {what}"));
    let (dtype, shape, header, expected) = decode_header(&payload)?;
    let data = &payload[header..];
    if data.len() != expected {
        return Err(bad(&format!(
            "shape {shape:?} of {dtype} needs {expected} bytes, got {}",
            data.len()
        )));
    }
    let chunk = crate::with_dtype!(dtype, T => decode_typed::<T>(shape, data)?);
    Ok(Value::new(chunk))
}
/// A chunk whose elements arrived in their own aligned buffer (see `Data::encode_split`).
fn decode_chunk_split(head: Bytes, words: Vec<u64>, len: usize) -> Result<Value> {
    let bad = |what: &str| Error::Codec(format!("array chunk: {what}"));
    let (dtype, shape, header, expected) = decode_header(&head)?;
    if head.len() != header || len != expected {
        return Err(bad(&format!(
            "shape {shape:?} of {dtype} needs {expected} bytes after a {header}-byte header, got {len} after {}",
            head.len()
        )));
    }
    fn go<T: Element>(shape: Vec<usize>, words: Vec<u64>, len: usize) -> Result<Chunk> {
        let values = T::from_words_le(words, len)?;
        let a = ArrayD::from_shape_vec(IxDyn(&shape), values)
            .map_err(|e| Error::Codec(format!("chunk of shape {shape:?}: {e}")))?;
        Ok(Chunk::new(a))
    }
    let chunk = crate::with_dtype!(dtype, T => go::<T>(shape, words, len)?);
    Ok(Value::new(chunk))
}
register_codec!("array-chunk", decode_chunk, split = decode_chunk_split);

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ShapeBuilder};

    #[test]
    fn every_dtype_round_trips() {
        let chunks = [
            Chunk::new(Array::from_shape_fn(IxDyn(&[2, 3]), |i| {
                (i[0] + i[1]) % 2 == 0
            })),
            Chunk::new(Array::from_shape_fn(IxDyn(&[4]), |i| i[0] as u8 * 60)),
            Chunk::new(Array::from_shape_fn(IxDyn(&[2, 2, 2]), |i| -(i[2] as i32))),
            Chunk::new(Array::from_shape_fn(IxDyn(&[3, 1]), |i| {
                i64::MIN + i[0] as i64
            })),
            Chunk::new(Array::from_shape_fn(IxDyn(&[0, 5]), |_| 1.5f32)),
            Chunk::new(Array::from_shape_fn(IxDyn(&[]), |_| std::f64::consts::PI)),
        ];
        for c in chunks {
            let v = Value::new(c.clone());
            let whole = v.encode().unwrap();
            let back = Value::decode(whole.clone()).unwrap();
            assert_eq!(back.get::<Chunk>().unwrap(), &c);
            assert_eq!(v.nbytes(), c.len() * c.dtype().size());
            // Split: head ++ body is the whole encoding, and the body, received into
            // words, decodes to the same chunk.
            let (head, parts) = v.encode_split().unwrap();
            let body = parts.concat();
            assert_eq!([&head[..], &body[..]].concat(), whole);
            let mut words = vec![0u64; body.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..body.len()].copy_from_slice(&body);
            let back = Value::decode_split(head.into(), words, body.len()).unwrap();
            assert_eq!(back.get::<Chunk>().unwrap(), &c);
        }
    }

    #[test]
    fn fortran_order_chunks_encode_in_c_order() {
        let f = Array::from_shape_vec(IxDyn(&[2, 2]).f(), vec![1.0f64, 3.0, 2.0, 4.0]).unwrap();
        let v = Value::new(Chunk::new(f));
        let back = Value::decode(v.encode().unwrap()).unwrap();
        let a = back.get::<Chunk>().unwrap().typed::<f64>().unwrap().clone();
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn an_f64_body_is_kept_not_copied() {
        let c = Chunk::new(Array::from_shape_fn(IxDyn(&[3, 4]), |i| {
            i[0] as f64 - i[1] as f64
        }));
        let (head, parts) = Value::new(c.clone()).encode_split().unwrap();
        let [body] = &parts[..] else {
            panic!("one part expected, got {}", parts.len())
        };
        // The sender's body is the chunk's own buffer.
        assert_eq!(
            body.as_ptr(),
            c.typed::<f64>().unwrap().as_ptr() as *const u8
        );
        let mut words = vec![0u64; body.len() / 8];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words).copy_from_slice(body);
        let at = words.as_ptr() as *const u8;
        let back = Value::decode_split(head.clone().into(), words, body.len()).unwrap();
        let back = back.get::<Chunk>().unwrap().typed::<f64>().unwrap();
        assert_eq!(
            back.as_ptr() as *const u8,
            at,
            "the receive buffer became the chunk"
        );
        assert_eq!(Chunk::new(back.to_owned()), c);
        // A body of the wrong length, or a head with trailing bytes, is an error.
        let words = vec![0u64; 12];
        assert!(Value::decode_split(head.clone().into(), words.clone(), 88).is_err());
        assert!(Value::decode_split(head.clone().into(), words.clone(), 200).is_err());
        let mut long = head.clone();
        long.push(0);
        assert!(Value::decode_split(long.into(), words, 96).is_err());
    }

    #[test]
    fn hostile_payloads_are_errors() {
        let good = Value::new(Chunk::new(Array::from_elem(IxDyn(&[3]), 7i64)))
            .encode()
            .unwrap();
        for cut in 0..good.len() {
            assert!(Value::decode(good[..cut].to_vec()).is_err());
        }
        let header = 3 + "array-chunk".len();
        let mut huge = good[..header].to_vec();
        huge.push(DType::F64 as u8);
        huge.extend_from_slice(&2u32.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        let err = Value::decode(huge).unwrap_err().to_string();
        assert!(
            err.contains("overflows") || err.contains("does not fit"),
            "{err}"
        );
        let mut bad_bool = good[..header].to_vec();
        bad_bool.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert!(
            Value::decode(bad_bool)
                .unwrap_err()
                .to_string()
                .contains("bool")
        );
    }
}

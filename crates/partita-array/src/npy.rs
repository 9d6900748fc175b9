//! NumPy `.npy` files for small arrays: read into a chunked array, write a computed one.
//!
//! The format is a magic string, a version, a header (a Python dict literal with `descr`,
//! `fortran_order` and `shape`) and the raw elements. Reading accepts versions 1-3, either
//! byte order and Fortran order; writing produces version 1.0, little-endian, C order, to a
//! temporary file renamed into place so a failed write never leaves a partial file.

use std::path::Path;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use partita_core::{Error, Result, Scheduler};

use crate::array::Array;
use crate::chunk::{Chunk, Element};
use crate::creation::from_ndarray;
use crate::dtype::DType;
use crate::grid::Chunks;

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Codec(format!(
        "{}: not a readable .npy file: {what}",
        path.display()
    ))
}

fn descr(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "|b1",
        DType::U8 => "|u1",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
    }
}

/// The value of `'key':` in a header dict, as raw text up to the next top-level comma.
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

struct Header {
    dtype: DType,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
}

fn parse_header(path: &Path, text: &str) -> Result<Header> {
    let d = field(text, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let d = d.trim_matches(|c| c == '\'' || c == '"');
    let (order, code) = d.split_at_checked(1).unwrap_or(("", d));
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(bad(path, format!("unknown byte order in descr {d:?}"))),
    };
    let dtype = match code {
        "b1" => DType::Bool,
        "u1" => DType::U8,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "f4" => DType::F32,
        "f8" => DType::F64,
        _ => {
            return Err(Error::NotImplemented(format!(
                "{}: .npy dtype {d:?} (supported: bool, uint8, int32, int64, float32, float64)",
                path.display()
            )));
        }
    };
    let fortran = match field(text, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        other => return Err(bad(path, format!("fortran_order is {other:?}"))),
    };
    let s = field(text, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(path, format!("shape {s:?}")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| bad(path, format!("shape entry {p:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Header {
        dtype,
        big_endian,
        fortran,
        shape,
    })
}

fn read_typed<T: Element>(path: &Path, h: &Header, data: &[u8]) -> Result<Chunk> {
    let size = T::DTYPE.size();
    let mut swapped = Vec::new();
    let values = data
        .chunks_exact(size)
        .map(|b| {
            if h.big_endian {
                swapped.clear();
                swapped.extend(b.iter().rev());
                T::read_le(&swapped)
            } else {
                T::read_le(b)
            }
        })
        .collect::<Result<Vec<T>>>()
        .map_err(|e| bad(path, e))?;
    let a = if h.fortran {
        ArrayD::from_shape_vec(IxDyn(&h.shape).f(), values)
            .map(|a| a.as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(IxDyn(&h.shape), values)
    }
    .map_err(|e| bad(path, e))?;
    Ok(Chunk::new(a))
}

/// Read a `.npy` file into memory and cut it into `chunks`.
pub fn read_npy(path: impl AsRef<Path>, chunks: impl Into<Chunks>) -> Result<Array> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "missing the \\x93NUMPY magic"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| bad(path, "truncated header length"))?;
            (
                u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize,
                12,
            )
        }
        v => return Err(bad(path, format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| bad(path, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad(path, "header is not text"))?;
    let h = parse_header(path, header)?;
    let data = &bytes[start + header_len..];
    let count = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, "shape overflows"))?;
    let want = count
        .checked_mul(h.dtype.size())
        .ok_or_else(|| bad(path, "shape overflows"))?;
    if data.len() != want {
        return Err(bad(
            path,
            format!(
                "shape {:?} of {} needs {want} data bytes, found {}",
                h.shape,
                h.dtype,
                data.len()
            ),
        ));
    }
    let chunk = crate::with_dtype!(h.dtype, T => read_typed::<T>(path, &h, data)?);
    let chunks = chunks.into();
    crate::with_chunk!(chunk, a => from_ndarray(&a.into_owned(), chunks))
}

impl Array {
    /// Compute and write as a `.npy` file (version 1.0, C order, little-endian); the file
    /// appears whole or not at all.
    pub fn to_npy(&self, path: impl AsRef<Path>, scheduler: &dyn Scheduler) -> Result<()> {
        let chunk = self.compute_chunk(scheduler)?;
        let shape = self.shape();
        let shape_text = match shape {
            [one] => format!("({one},)"),
            s => format!(
                "({})",
                s.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
            descr(self.dtype())
        );
        // Pad so the data starts on a 64-byte boundary; the header ends with a newline.
        let total = MAGIC.len() + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + self.nbytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        crate::with_chunk!(&chunk, a => {
            for &x in a.iter() {
                x.write_le(&mut out);
            }
        });
        partita_core::atomic::write_atomically(path.as_ref(), &out)
    }
}

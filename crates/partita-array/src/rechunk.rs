//! Rechunking and axis permutations.
//!
//! Rechunk: every output block is assembled from the input blocks it overlaps, copying only
//! the overlapping pieces, so no task ever holds more than one output block plus its
//! inputs; the whole array is never materialized. Transpose: each output block is the
//! matching input block with permuted strides (no copy).

use std::ops::Range;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn, Slice};
use partita_core::{Collection, Error, Key, Op, Result, Value};
use serde::{Deserialize, Serialize};

use crate::array::{Array, Source};
use crate::chunk::{Chunk, Element};
use crate::grid::{ChunkGrid, Chunks, for_each_index};

/// A piece of one input block copied into the output block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Piece {
    /// Range within the input block, per axis.
    pub src: Vec<Range<usize>>,
    /// Range within the output block, per axis.
    pub dst: Vec<Range<usize>>,
}

/// Assemble one output block from pieces of its inputs (one piece per input, in order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RechunkBlock {
    /// The output block's shape.
    pub shape: Vec<usize>,
    /// Where each input's piece goes.
    pub pieces: Vec<Piece>,
}

fn assemble_typed<T: Element>(
    shape: &[usize],
    pieces: &[Piece],
    inputs: &[&Chunk],
) -> Result<Chunk> {
    let mut out = ArrayD::<T>::default(IxDyn(shape));
    for (piece, input) in pieces.iter().zip(inputs) {
        let src = input.typed::<T>()?;
        let view = src.slice_each_axis(|ax| Slice::from(piece.src[ax.axis.index()].clone()));
        out.slice_each_axis_mut(|ax| Slice::from(piece.dst[ax.axis.index()].clone()))
            .assign(&view);
    }
    Ok(Chunk::new(out))
}

#[typetag::serde(name = "array-rechunk")]
impl Op for RechunkBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("rechunk", inputs, self.pieces.len())?;
        let nd = self.shape.len();
        let fits = |r: &[Range<usize>], bounds: &[usize]| {
            r.len() == nd
                && bounds.len() == nd
                && r.iter()
                    .zip(bounds)
                    .all(|(r, &b)| r.start <= r.end && r.end <= b)
        };
        for (piece, input) in self.pieces.iter().zip(inputs) {
            let src = Chunk::from_value(input)?.shape();
            let same_extent = piece
                .src
                .iter()
                .zip(&piece.dst)
                .all(|(s, d)| s.len() == d.len());
            if !fits(&piece.src, src) || !fits(&piece.dst, &self.shape) || !same_extent {
                return Err(Error::Shape(format!(
                    "rechunk piece {piece:?} does not fit its input {src:?} and output {:?}",
                    self.shape
                )));
            }
        }
        let chunks = Chunk::from_values(inputs)?;
        let first = chunks
            .first()
            .ok_or_else(|| Error::Graph("rechunk block without inputs".into()))?;
        crate::chunk::checked_block_len(&self.shape, first.dtype())?;
        let (shape, pieces) = (&self.shape, &self.pieces);
        let out =
            crate::with_dtype!(first.dtype(), T => assemble_typed::<T>(shape, pieces, &chunks)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "rechunk"
    }
}

/// Per axis: for an output chunk `[lo, hi)`, the input chunks it overlaps and the ranges.
fn overlaps(in_starts: &[usize], lo: usize, hi: usize) -> Vec<(usize, Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    if lo == hi {
        // A zero-length axis: its single empty chunk.
        out.push((0, 0..0, 0..0));
        return out;
    }
    let first = in_starts.partition_point(|&s| s <= lo) - 1;
    let mut i = first;
    while i + 1 < in_starts.len() && in_starts[i] < hi {
        let (a, b) = (in_starts[i].max(lo), in_starts[i + 1].min(hi));
        if a < b {
            out.push((i, a - in_starts[i]..b - in_starts[i], a - lo..b - lo));
        }
        i += 1;
    }
    out
}

impl Array {
    /// The same array cut into other chunks. The whole array is never materialized: each
    /// new block copies only the pieces of the old blocks it overlaps.
    pub fn rechunk(&self, chunks: impl Into<Chunks>) -> Result<Array> {
        let grid = ChunkGrid::new(self.shape(), &chunks.into(), self.dtype())?;
        if grid.same_as(self.grid()) {
            return Ok(self.clone());
        }
        let old = self.grid();
        let ndim = self.ndim();
        let layer = Arc::clone(self.layer());
        Ok(Array::from_blocks(
            "rechunk",
            grid.clone(),
            self.dtype(),
            vec![layer],
            |idx| {
                let (offset, shape) = (grid.block_offset(idx), grid.block_shape(idx));
                let per_axis: Vec<_> = (0..ndim)
                    .map(|a| overlaps(old.starts(a), offset[a], offset[a] + shape[a]))
                    .collect();
                let mut pieces = Vec::new();
                let mut deps: Vec<Key> = Vec::new();
                let choices: Vec<Range<usize>> = per_axis.iter().map(|p| 0..p.len()).collect();
                for_each_index(&choices, |choice| {
                    let src_idx: Vec<usize> = (0..ndim).map(|a| per_axis[a][choice[a]].0).collect();
                    deps.push(self.block_key(&src_idx));
                    pieces.push(Piece {
                        src: (0..ndim)
                            .map(|a| per_axis[a][choice[a]].1.clone())
                            .collect(),
                        dst: (0..ndim)
                            .map(|a| per_axis[a][choice[a]].2.clone())
                            .collect(),
                    });
                });
                (
                    Arc::new(RechunkBlock { shape, pieces }) as Arc<dyn Op>,
                    deps,
                )
            },
        ))
    }

    /// Permute the axes (`None` reverses them, like NumPy's `transpose()`).
    pub fn transpose(&self, axes: Option<&[usize]>) -> Result<Array> {
        let ndim = self.ndim();
        let perm: Vec<usize> = match axes {
            None => (0..ndim).rev().collect(),
            Some(p) => p.to_vec(),
        };
        let mut seen = vec![false; ndim];
        if perm.len() != ndim
            || perm
                .iter()
                .any(|&a| a >= ndim || std::mem::replace(&mut seen[a], true))
        {
            return Err(Error::Shape(format!(
                "transpose: axes {perm:?} are not a permutation of the {ndim} axes of an array of shape {:?}",
                self.shape()
            )));
        }
        let shape: Vec<usize> = perm.iter().map(|&a| self.shape()[a]).collect();
        let chunks: Vec<Vec<usize>> = perm.iter().map(|&a| self.chunks()[a].clone()).collect();
        let grid = ChunkGrid::from_explicit(&shape, chunks)?;
        // Random numbers (and expressions of them) transpose by permuting the axes they are
        // generated along: no task, no strided copy.
        if let Source::Elementwise(e) = self.source()
            && let Some(t) = e.transposed(&perm)
        {
            return Ok(Array::from_elementwise(
                Key::unique_name("transpose"),
                grid,
                self.dtype(),
                t,
            ));
        }
        let layer = Arc::clone(self.layer());
        let op: Arc<dyn Op> = Arc::new(TransposeBlock { perm: perm.clone() });
        Ok(Array::from_blocks(
            "transpose",
            grid,
            self.dtype(),
            vec![layer],
            |idx| {
                let mut src = vec![0usize; ndim];
                for (out_axis, &in_axis) in perm.iter().enumerate() {
                    src[in_axis] = idx[out_axis];
                }
                (Arc::clone(&op), vec![self.block_key(&src)])
            },
        ))
    }

    /// Reverse the axes (NumPy's `.T`).
    pub fn t(&self) -> Result<Array> {
        self.transpose(None)
    }

    /// Swap two axes.
    pub fn swapaxes(&self, a: usize, b: usize) -> Result<Array> {
        let ndim = self.ndim();
        if a >= ndim || b >= ndim {
            return Err(Error::Shape(format!(
                "swapaxes({a}, {b}) on an array of dimension {ndim}"
            )));
        }
        let mut perm: Vec<usize> = (0..ndim).collect();
        perm.swap(a, b);
        self.transpose(Some(&perm))
    }
}

/// Permute a block's axes (a strided view of the same buffer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransposeBlock {
    /// Output axis `i` is input axis `perm[i]`.
    pub perm: Vec<usize>,
}

#[typetag::serde(name = "array-transpose")]
impl Op for TransposeBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("transpose", inputs, 1)?;
        let chunk = Chunk::from_value(&inputs[0])?;
        if chunk.shape().len() != self.perm.len() {
            return Err(Error::Shape(format!(
                "transpose {:?} of a block of shape {:?}",
                self.perm,
                chunk.shape()
            )));
        }
        let perm = IxDyn(&self.perm);
        let out = match chunk.clone() {
            Chunk::Bool(a) => Chunk::Bool(a.permuted_axes(perm)),
            Chunk::U8(a) => Chunk::U8(a.permuted_axes(perm)),
            Chunk::I32(a) => Chunk::I32(a.permuted_axes(perm)),
            Chunk::I64(a) => Chunk::I64(a.permuted_axes(perm)),
            Chunk::F32(a) => Chunk::F32(a.permuted_axes(perm)),
            Chunk::F64(a) => Chunk::F64(a.permuted_axes(perm)),
        };
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "transpose"
    }
}

/// Chunks that several arrays (broadcast against `shape`) can all be cut into: along every
/// axis, the union of their chunk boundaries (Dask's `unify_chunks`).
pub(crate) fn common_chunks(shape: &[usize], arrays: &[&Array]) -> Vec<Vec<usize>> {
    let ndim = shape.len();
    (0..ndim)
        .map(|out_axis| {
            let mut bounds: Vec<usize> = vec![0, shape[out_axis]];
            for a in arrays {
                let offset = ndim - a.ndim();
                if out_axis < offset {
                    continue;
                }
                let axis = out_axis - offset;
                if a.shape()[axis] == shape[out_axis] {
                    bounds.extend_from_slice(a.grid().starts(axis));
                }
            }
            bounds.sort_unstable();
            bounds.dedup();
            let sizes: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
            if sizes.is_empty() {
                vec![shape[out_axis]]
            } else {
                sizes
            }
        })
        .collect()
}

/// `a` rechunked to `chunks` along the axes it shares with the broadcast result.
pub(crate) fn align_to(a: &Array, shape: &[usize], chunks: &[Vec<usize>]) -> Result<Array> {
    let offset = shape.len() - a.ndim();
    let target: Vec<Vec<usize>> = (0..a.ndim())
        .map(|axis| {
            if a.shape()[axis] == shape[axis + offset] {
                chunks[axis + offset].clone()
            } else {
                a.chunks()[axis].clone()
            }
        })
        .collect();
    if target.as_slice() == a.chunks() {
        Ok(a.clone())
    } else {
        a.rechunk(Chunks::Explicit(target))
    }
}

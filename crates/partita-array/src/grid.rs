//! `ChunkGrid`: how an array's shape is cut into blocks.
//!
//! Dask's form: for every axis, the list of chunk sizes along it, e.g. shape `(5, 3)` in
//! chunks `((2, 2, 1), (3,))`. Chunks along an axis may be ragged; the last one usually is.

use partita_core::{Error, Result};
use smallvec::SmallVec;

use crate::dtype::DType;

/// A block index: one entry per axis.
pub type BlockIndex = SmallVec<[usize; 4]>;

/// How to chunk an array, as a user says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunks {
    /// About 128 MiB per chunk, roughly equal extents along every axis.
    Auto,
    /// At most this many elements along every axis.
    Size(usize),
    /// At most this many along each axis (a size at or above the axis length means one chunk
    /// for the whole axis, like Dask's `-1`).
    Shape(Vec<usize>),
    /// Exact chunk sizes per axis (Dask's `((2, 2, 1), (3,))`).
    Explicit(Vec<Vec<usize>>),
}

impl From<usize> for Chunks {
    fn from(n: usize) -> Chunks {
        Chunks::Size(n)
    }
}

impl From<&[usize]> for Chunks {
    fn from(s: &[usize]) -> Chunks {
        Chunks::Shape(s.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Chunks {
    fn from(s: [usize; N]) -> Chunks {
        Chunks::Shape(s.to_vec())
    }
}

impl From<Vec<usize>> for Chunks {
    fn from(s: Vec<usize>) -> Chunks {
        Chunks::Shape(s)
    }
}

impl From<Vec<Vec<usize>>> for Chunks {
    fn from(c: Vec<Vec<usize>>) -> Chunks {
        Chunks::Explicit(c)
    }
}

/// The bytes `Chunks::Auto` aims for per chunk.
pub const AUTO_CHUNK_BYTES: usize = 128 << 20;

/// An array's shape and its chunk sizes along every axis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkGrid {
    shape: Vec<usize>,
    chunks: Vec<Vec<usize>>,
    /// `starts[axis][i]` = offset of chunk `i` along `axis`; one extra entry = the length.
    starts: Vec<Vec<usize>>,
}

/// More blocks than this along one axis is refused rather than attempted.
pub const MAX_BLOCKS_PER_AXIS: usize = 1 << 24;

fn regular(dim: usize, size: usize) -> Result<Vec<usize>> {
    if dim == 0 {
        return Ok(vec![0]);
    }
    let size = size.clamp(1, dim);
    if dim / size >= MAX_BLOCKS_PER_AXIS {
        return Err(Error::Shape(format!(
            "chunks of {size} along an axis of length {dim} make {} blocks, more than \
             {MAX_BLOCKS_PER_AXIS}; use larger chunks",
            dim.div_ceil(size)
        )));
    }
    let mut out = vec![size; dim / size];
    if !dim.is_multiple_of(size) {
        out.push(dim % size);
    }
    Ok(out)
}

/// Dask-like "auto": spend the element budget on the smallest axes whole, then split the
/// rest evenly among the remaining axes.
fn auto_sizes(shape: &[usize], dtype: DType, limit_bytes: usize) -> Vec<usize> {
    let mut budget = (limit_bytes / dtype.size()).max(1) as f64;
    let mut sizes = vec![0; shape.len()];
    let mut axes: Vec<usize> = (0..shape.len()).collect();
    axes.sort_by_key(|&a| shape[a]);
    for (k, &axis) in axes.iter().enumerate() {
        let remaining = (shape.len() - k) as f64;
        let target = budget.powf(1.0 / remaining).floor().max(1.0);
        let dim = shape[axis].max(1);
        let size = if (dim as f64) <= target {
            dim
        } else {
            target as usize
        };
        sizes[axis] = size;
        budget = (budget / size as f64).max(1.0);
    }
    sizes
}

impl ChunkGrid {
    /// Cut `shape` as `chunks` says; errors name the shape and the offending axis.
    pub fn new(shape: &[usize], chunks: &Chunks, dtype: DType) -> Result<ChunkGrid> {
        let explicit = match chunks {
            Chunks::Auto => auto_sizes(shape, dtype, AUTO_CHUNK_BYTES)
                .iter()
                .zip(shape)
                .map(|(&s, &d)| regular(d, s))
                .collect::<Result<_>>()?,
            Chunks::Size(n) => {
                if *n == 0 {
                    return Err(Error::Shape("chunk size must be positive, got 0".into()));
                }
                shape
                    .iter()
                    .map(|&d| regular(d, *n))
                    .collect::<Result<_>>()?
            }
            Chunks::Shape(sizes) => {
                if sizes.len() != shape.len() {
                    return Err(Error::Shape(format!(
                        "chunks {sizes:?} have {} entries but shape {shape:?} has {} axes",
                        sizes.len(),
                        shape.len()
                    )));
                }
                if let Some(axis) = sizes.iter().position(|&s| s == 0) {
                    return Err(Error::Shape(format!(
                        "chunk size along axis {axis} must be positive, got 0"
                    )));
                }
                shape
                    .iter()
                    .zip(sizes)
                    .map(|(&d, &s)| regular(d, s))
                    .collect::<Result<_>>()?
            }
            Chunks::Explicit(c) => c.clone(),
        };
        ChunkGrid::from_explicit(shape, explicit)
    }

    /// A grid from exact chunk sizes, checked against the shape.
    pub fn from_explicit(shape: &[usize], chunks: Vec<Vec<usize>>) -> Result<ChunkGrid> {
        if chunks.len() != shape.len() {
            return Err(Error::Shape(format!(
                "chunks {chunks:?} describe {} axes but shape {shape:?} has {}",
                chunks.len(),
                shape.len()
            )));
        }
        // Every element must be addressable: the count (and its bytes at 8 per element)
        // must fit in memory's address space, whatever the chunking.
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements.is_none_or(|n| n > isize::MAX as usize / 8) {
            return Err(Error::Shape(format!(
                "shape {shape:?} has more elements than can exist"
            )));
        }
        for (axis, (c, &d)) in chunks.iter().zip(shape).enumerate() {
            if c.len() > MAX_BLOCKS_PER_AXIS {
                return Err(Error::Shape(format!(
                    "{} chunks along axis {axis} is more than {MAX_BLOCKS_PER_AXIS}",
                    c.len()
                )));
            }
            let total = c
                .iter()
                .try_fold(0usize, |acc, &x| acc.checked_add(x))
                .unwrap_or(usize::MAX);
            if total != d {
                return Err(Error::Shape(format!(
                    "chunks {c:?} along axis {axis} add up to {total}, not the axis length {d}"
                )));
            }
            if c.is_empty() || (d > 0 && c.contains(&0)) || (d == 0 && c.len() != 1) {
                return Err(Error::Shape(format!(
                    "chunks {c:?} along axis {axis} of length {d}: sizes must be positive \
                     (a zero-length axis has the single chunk (0,))"
                )));
            }
        }
        let starts = chunks
            .iter()
            .map(|c| {
                let mut s = Vec::with_capacity(c.len() + 1);
                s.push(0);
                for &x in c {
                    s.push(s.last().copied().unwrap_or(0) + x);
                }
                s
            })
            .collect();
        Ok(ChunkGrid {
            shape: shape.to_vec(),
            chunks,
            starts,
        })
    }

    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Chunk sizes per axis.
    pub fn chunks(&self) -> &[Vec<usize>] {
        &self.chunks
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of blocks along each axis.
    pub fn blocks_shape(&self) -> Vec<usize> {
        self.chunks.iter().map(Vec::len).collect()
    }

    /// Number of blocks in all.
    pub fn num_blocks(&self) -> usize {
        self.chunks.iter().map(Vec::len).product()
    }

    /// Every block index in C order (last axis fastest).
    pub fn blocks(&self) -> impl Iterator<Item = BlockIndex> + '_ {
        let counts = self.blocks_shape();
        let total: usize = counts.iter().product();
        (0..total).map(move |mut flat| {
            let mut idx: BlockIndex = smallvec::smallvec![0; counts.len()];
            for axis in (0..counts.len()).rev() {
                idx[axis] = flat % counts[axis];
                flat /= counts[axis];
            }
            idx
        })
    }

    /// Shape of one block.
    pub fn block_shape(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().zip(&self.chunks).map(|(&i, c)| c[i]).collect()
    }

    /// Offset of one block's first element along every axis.
    pub fn block_offset(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().zip(&self.starts).map(|(&i, s)| s[i]).collect()
    }

    /// Chunk start offsets along `axis`, plus the axis length at the end.
    pub fn starts(&self, axis: usize) -> &[usize] {
        &self.starts[axis]
    }

    /// Whether two grids cut the same shape the same way.
    pub fn same_as(&self, other: &ChunkGrid) -> bool {
        self.shape == other.shape && self.chunks == other.chunks
    }

    /// The largest block's size in elements.
    pub fn max_block_len(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .product()
    }
}

/// Call `f` with every index in the box `ranges` (C order).
pub(crate) fn for_each_index(ranges: &[std::ops::Range<usize>], mut f: impl FnMut(&[usize])) {
    if ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let mut idx: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    loop {
        f(&idx);
        let mut a = ranges.len();
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < ranges[a].end {
                break;
            }
            idx[a] = ranges[a].start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_chunks_have_a_ragged_tail() {
        let g = ChunkGrid::new(&[5, 3], &Chunks::Size(2), DType::F64).unwrap();
        assert_eq!(g.chunks(), &[vec![2, 2, 1], vec![2, 1]]);
        assert_eq!(g.num_blocks(), 6);
        assert_eq!(g.block_shape(&[2, 1]), vec![1, 1]);
        assert_eq!(g.block_offset(&[2, 1]), vec![4, 2]);
        let order: Vec<Vec<usize>> = g.blocks().map(|b| b.to_vec()).collect();
        assert_eq!(order[..3], [vec![0, 0], vec![0, 1], vec![1, 0]]);
    }

    #[test]
    fn shape_chunks_above_the_length_mean_whole_axis() {
        let g = ChunkGrid::new(&[4, 10], &Chunks::Shape(vec![100, 4]), DType::F64).unwrap();
        assert_eq!(g.chunks(), &[vec![4], vec![4, 4, 2]]);
    }

    #[test]
    fn auto_chunks_stay_near_128_mib() {
        let g = ChunkGrid::new(&[20000, 20000], &Chunks::Auto, DType::F64).unwrap();
        let bytes = g.max_block_len() * 8;
        assert!(
            bytes <= AUTO_CHUNK_BYTES && bytes > AUTO_CHUNK_BYTES / 2,
            "{bytes}"
        );
        let small = ChunkGrid::new(&[10, 3], &Chunks::Auto, DType::F64).unwrap();
        assert_eq!(small.num_blocks(), 1);
        let thin = ChunkGrid::new(&[3, 100_000_000], &Chunks::Auto, DType::F64).unwrap();
        assert_eq!(thin.chunks()[0], vec![3]);
    }

    #[test]
    fn zero_length_axes_have_one_empty_chunk() {
        let g = ChunkGrid::new(&[0, 4], &Chunks::Size(2), DType::F64).unwrap();
        assert_eq!(g.chunks(), &[vec![0], vec![2, 2]]);
        assert_eq!(g.num_blocks(), 2);
    }

    #[test]
    fn bad_chunks_name_the_axis_and_shape() {
        let err = ChunkGrid::from_explicit(&[5, 3], vec![vec![2, 2], vec![3]]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape error: chunks [2, 2] along axis 0 add up to 4, not the axis length 5"
        );
        let err = ChunkGrid::new(&[5, 3], &Chunks::Shape(vec![2]), DType::F64).unwrap_err();
        assert!(err.to_string().contains("shape [5, 3] has 2 axes"), "{err}");
        assert!(ChunkGrid::new(&[5], &Chunks::Size(0), DType::F64).is_err());
        assert!(ChunkGrid::from_explicit(&[5], vec![vec![5, 0]]).is_err());
    }
}

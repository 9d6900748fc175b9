//! Boolean-mask selection: NumPy's `x[mask]`, whose result has chunk sizes nobody knows
//! until the mask is computed.
//!
//! Dask marks such chunks `nan` in an ordinary array and every operation must look out for
//! them. Here the unknown lengths get their own type, [`FilteredArray`]: it offers what
//! works without the lengths (computing, persisting, reductions, elementwise operations with
//! scalars, with arrays over the known trailing axes, and with arrays filtered by the same
//! mask, masking again) and [`FilteredArray::compute_chunk_sizes`] turns it into an
//! [`Array`] for everything else. An operation that needs the lengths cannot be called by
//! mistake on it; the Python binding names the missing lengths in its error.
//!
//! Key decisions:
//! - **Leading axis only.** A mask over the first `k` axes selects along them: the result's
//!   first axis (length unknown) replaces them, the other axes keep their chunks. Blocks of
//!   the result follow blocks of the data along axis 0. To keep NumPy's C order when `k > 1`
//!   and axes `1..k` are cut into blocks, one task per row of blocks gathers the selected
//!   elements from all of them in C order ([`MaskGather`]); Dask ravels (rechunks) the data
//!   and the mask first, which copies both once more.
//! - **Upper bounds inside.** The wrapped [`Array`] has a grid whose axis-0 chunks are the
//!   most each block can hold (every element selected), used only for block counts and
//!   memory estimates; kernels take the real lengths from their input chunks. Nothing that
//!   would use the bounds as lengths (slicing, rechunking, offsets of argmin along axis 0) is
//!   reachable through this type.
//! - **The lengths come from the mask alone.** `compute_chunk_sizes` counts the `true`s in
//!   each mask block without computing the selected data (Dask computes all of it).

use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn};
use partita_core::op::Identity;
use partita_core::{
    Collection, ComputeOptions, Error, Op, Result, Scheduler, Value, compute_collections,
};
use serde::{Deserialize, Serialize};

use crate::array::{Array, assemble, check_compute_dtype};
use crate::chunk::{Chunk, Element};
use crate::dtype::DType;
use crate::elementwise::{self, Operand};
use crate::grid::{ChunkGrid, Chunks};
use crate::kernel::{BinaryOp, UnaryOp};
use crate::reduction::{Axes, ReduceOptions, Reduction, normalize_axes, reduce_impl};

/// The mask behind a filtered array's leading axis: which blocks of it decide how many rows
/// each block of the result has.
#[derive(Clone)]
struct Rows {
    /// The mask as used (rechunked so that its block `(i, 0, ..)` covers result blocks `i`).
    mask: Array,
    /// How many leading axes of the data the mask covers.
    k: usize,
}

impl Rows {
    fn same(&self, other: &Rows) -> bool {
        self.mask.name() == other.mask.name() && self.k == other.k
    }

    fn nblocks(&self) -> usize {
        self.mask.chunks()[0].len()
    }
}

/// An array selected by a boolean mask: the length of its first axis, and of every chunk
/// along it, is unknown until computed. See the module documentation.
#[derive(Clone)]
pub struct FilteredArray {
    /// The data; its axis-0 chunk sizes are upper bounds, not lengths.
    inner: Array,
    rows: Rows,
}

impl std::fmt::Debug for FilteredArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FilteredArray<{}, shape={}, dtype={}, {} blocks along axis 0 of unknown length>",
            self.inner.name(),
            self.shape_text(),
            self.dtype(),
            self.rows.nblocks()
        )
    }
}

/// The error for an operation that needs the lengths a mask has hidden.
pub fn unknown_chunks(what: &str) -> Error {
    Error::Shape(format!(
        "{what} needs the chunk sizes along axis 0, which are unknown after selecting with a \
         boolean mask; call compute_chunk_sizes() (or persist()) first"
    ))
}

/// Per-block task: the rows of a data block where its mask block is true.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaskBlock {
    /// How many leading axes of the data the mask covers.
    pub k: usize,
}

fn mask_typed<T: Element>(
    x: &Chunk,
    mask: &ndarray::ArcArray<bool, IxDyn>,
    k: usize,
) -> Result<Chunk> {
    let x = x.typed::<T>()?;
    let rows: usize = x.shape()[..k].iter().product();
    let mut flat_shape = vec![rows];
    flat_shape.extend_from_slice(&x.shape()[k..]);
    let flat = x
        .to_shape(IxDyn(&flat_shape))
        .map_err(|e| Error::Internal(format!("mask: flattening a block: {e}")))?;
    let picked: Vec<usize> = mask
        .iter()
        .enumerate()
        .filter_map(|(i, &m)| m.then_some(i))
        .collect();
    Ok(Chunk::new(flat.select(Axis(0), &picked)))
}

#[typetag::serde(name = "array-mask")]
impl Op for MaskBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("mask", inputs, 2)?;
        let x = Chunk::from_value(&inputs[0])?;
        let mask = Chunk::from_value(&inputs[1])?.typed::<bool>()?;
        if x.shape().len() < self.k || mask.shape() != &x.shape()[..self.k.min(x.shape().len())] {
            return Err(Error::Shape(format!(
                "a mask block of shape {:?} does not cover the first {} axes of a data block \
                 of shape {:?}",
                mask.shape(),
                self.k,
                x.shape()
            )));
        }
        let k = self.k;
        let out = crate::with_dtype!(x.dtype(), T => mask_typed::<T>(x, mask, k)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "mask"
    }
}

/// Per-row-of-blocks task: how many elements of its bool blocks are true (an int64 scalar
/// chunk).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountTrue;

#[typetag::serde(name = "array-count-true")]
impl Op for CountTrue {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut n = 0i64;
        for v in inputs {
            let mask = Chunk::from_value(v)?.typed::<bool>()?;
            n += mask.iter().filter(|&&m| m).count() as i64;
        }
        Ok(Value::new(Chunk::new(ArrayD::from_elem(IxDyn(&[]), n))))
    }
    fn name(&self) -> &str {
        "count-true"
    }
}

/// Per-block task for a mask over `k > 1` axes whose axes `1..k` are cut into blocks: the
/// inputs are the data blocks of one row of blocks along those axes (C order), then the
/// mask's; the selected elements are gathered in NumPy's C order straight from them, with no
/// rechunked copy of either first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaskGather {
    /// How many blocks the data has along each of the axes `1..k`.
    pub blocks: Vec<usize>,
}

/// Walk mask axes in C order across blocks: `xs`/`ms` are the views of the blocks still in
/// play (C order over the remaining mask axes' blocks), each with the current axis first.
fn gather_rec<T: Copy>(
    xs: &[ndarray::ArrayViewD<'_, T>],
    ms: &[ndarray::ArrayViewD<'_, bool>],
    blocks: &[usize],
    out: &mut Vec<T>,
) {
    let n = blocks[0];
    let stride = xs.len() / n.max(1);
    for j in 0..n {
        let (xj, mj) = (
            &xs[j * stride..(j + 1) * stride],
            &ms[j * stride..(j + 1) * stride],
        );
        if blocks.len() == 1 {
            let (x, m) = (&xj[0], &mj[0]);
            if x.ndim() == 1 {
                out.extend(x.iter().zip(m.iter()).filter(|(_, m)| **m).map(|(v, _)| *v));
            } else {
                for (l, _) in m.iter().enumerate().filter(|(_, m)| **m) {
                    out.extend(x.index_axis(Axis(0), l).iter().copied());
                }
            }
            continue;
        }
        for l in 0..mj[0].shape()[0] {
            let xv: Vec<_> = xj.iter().map(|v| v.index_axis(Axis(0), l)).collect();
            let mv: Vec<_> = mj.iter().map(|v| v.index_axis(Axis(0), l)).collect();
            gather_rec(&xv, &mv, &blocks[1..], out);
        }
    }
}

fn gather_typed<T: Element + Copy>(
    xs: &[&Chunk],
    ms: &[&Chunk],
    blocks: &[usize],
) -> Result<Chunk> {
    let k = blocks.len() + 1;
    let xs = xs
        .iter()
        .map(|c| c.typed::<T>().map(|a| a.view()))
        .collect::<Result<Vec<_>>>()?;
    let ms = ms
        .iter()
        .map(|c| c.typed::<bool>().map(|a| a.view()))
        .collect::<Result<Vec<_>>>()?;
    let first = xs
        .first()
        .ok_or_else(|| Error::Graph("mask gather without inputs".into()))?;
    if first.ndim() < k {
        return Err(Error::Shape(format!(
            "a data block of shape {:?} has fewer than the {k} axes its mask covers",
            first.shape()
        )));
    }
    let rows = first.shape()[0];
    let trailing = first.shape()[k..].to_vec();
    // Blocks in the same block-column along an axis must agree on its length there (the
    // walk indexes them all with one position).
    let mut lengths: Vec<Vec<Option<usize>>> = blocks.iter().map(|&n| vec![None; n]).collect();
    for (b, (x, m)) in xs.iter().zip(&ms).enumerate() {
        let mut rest = b;
        let mut column_ok = true;
        for a in (0..blocks.len()).rev() {
            let j = rest % blocks[a];
            rest /= blocks[a];
            let len = x.shape().get(a + 1).copied();
            column_ok &= *lengths[a][j].get_or_insert(len.unwrap_or(0)) == len.unwrap_or(0);
        }
        if !column_ok
            || x.ndim() < k
            || m.shape() != &x.shape()[..k]
            || x.shape()[0] != rows
            || x.shape()[k..] != trailing[..]
        {
            return Err(Error::Shape(format!(
                "a mask block of shape {:?} does not cover the first {k} axes of a data block \
                 of shape {:?} (rows of blocks must agree)",
                m.shape(),
                x.shape()
            )));
        }
    }
    let count: usize = ms.iter().map(|m| m.iter().filter(|&&b| b).count()).sum();
    let per: usize = trailing.iter().product();
    let mut out = Vec::with_capacity(count * per);
    for r in 0..rows {
        let xv: Vec<_> = xs.iter().map(|v| v.index_axis(Axis(0), r)).collect();
        let mv: Vec<_> = ms.iter().map(|v| v.index_axis(Axis(0), r)).collect();
        gather_rec(&xv, &mv, blocks, &mut out);
    }
    let mut shape = vec![count];
    shape.extend(trailing);
    ArrayD::from_shape_vec(IxDyn(&shape), out)
        .map(Chunk::new)
        .map_err(|e| Error::Internal(format!("mask gather: {e}")))
}

#[typetag::serde(name = "array-mask-gather")]
impl Op for MaskGather {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let nb: usize = self.blocks.iter().product();
        partita_core::op::expect_inputs("mask-gather", inputs, 2 * nb)?;
        if self.blocks.is_empty() || self.blocks.contains(&0) {
            return Err(Error::Graph(format!(
                "mask gather over blocks {:?}",
                self.blocks
            )));
        }
        let chunks = Chunk::from_values(inputs)?;
        let (xs, ms) = chunks.split_at(nb);
        let dtype = xs[0].dtype();
        let b = &self.blocks;
        let out = crate::with_dtype!(dtype, T => gather_typed::<T>(xs, ms, b)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "mask"
    }
}

/// Gather tasks: result block `(i, j..)` reads data blocks `(i, J, j..)` and mask blocks
/// `(i, J)` for every `J` over axes `1..k`.
fn gather(x: &Array, mask: &Array, k: usize) -> Result<Array> {
    let blocks: Vec<usize> = x.chunks()[1..k].iter().map(Vec::len).collect();
    let grid = bound_grid(mask, &x.chunks()[k..])?;
    let op: Arc<dyn Op> = Arc::new(MaskGather {
        blocks: blocks.clone(),
    });
    let ranges: Vec<std::ops::Range<usize>> = blocks.iter().map(|&n| 0..n).collect();
    Ok(Array::from_blocks(
        "getitem-mask",
        grid,
        x.dtype(),
        vec![Arc::clone(x.layer()), Arc::clone(mask.layer())],
        |idx| {
            let (mut data, mut masks) = (Vec::new(), Vec::new());
            crate::grid::for_each_index(&ranges, |j| {
                let mut d = vec![idx[0]];
                d.extend_from_slice(j);
                let m = d.clone();
                d.extend_from_slice(&idx[1..]);
                data.push(x.block_key(&d));
                masks.push(mask.block_key(&m));
            });
            data.extend(masks);
            (Arc::clone(&op), data)
        },
    ))
}

/// The grid of a selection's upper bounds: block `i` along axis 0 holds at most every element
/// of mask block `i` (at least one, so the grid stays valid); trailing axes as `trailing`.
fn bound_grid(mask: &Array, trailing: &[Vec<usize>]) -> Result<ChunkGrid> {
    let per_row: usize = mask.shape()[1..].iter().product();
    let lead: Vec<usize> = mask.chunks()[0]
        .iter()
        .map(|&c| (c * per_row).max(1))
        .collect();
    let mut shape = vec![lead.iter().sum()];
    shape.extend(trailing.iter().map(|c| c.iter().sum::<usize>()));
    let mut chunks = vec![lead];
    chunks.extend(trailing.iter().cloned());
    ChunkGrid::from_explicit(&shape, chunks)
}

/// Build the selection tasks: result block `(i, j..)` reads data block `(i, 0.., j..)` and
/// mask block `(i, 0..)`.
fn select(x: &Array, mask: &Array, k: usize) -> Result<Array> {
    let grid = bound_grid(mask, &x.chunks()[k..])?;
    let op: Arc<dyn Op> = Arc::new(MaskBlock { k });
    Ok(Array::from_blocks(
        "getitem-mask",
        grid,
        x.dtype(),
        vec![Arc::clone(x.layer()), Arc::clone(mask.layer())],
        |idx| {
            let mut data_idx = vec![idx[0]];
            data_idx.extend(std::iter::repeat_n(0, k - 1));
            data_idx.extend_from_slice(&idx[1..]);
            let mut mask_idx = vec![idx[0]];
            mask_idx.extend(std::iter::repeat_n(0, k - 1));
            (
                Arc::clone(&op),
                vec![x.block_key(&data_idx), mask.block_key(&mask_idx)],
            )
        },
    ))
}

impl Array {
    /// NumPy's `x[mask]` for a boolean array `mask` covering the first `k` axes of `x`
    /// (`mask.shape == x.shape[..k]`): the selected elements, in C order, along one new first
    /// axis whose length is unknown until computed, followed by `x`'s other axes.
    pub fn mask(&self, mask: &Array) -> Result<FilteredArray> {
        let k = mask.ndim();
        if mask.dtype() != DType::Bool {
            return Err(Error::Type(format!(
                "a boolean mask must be bool, got a {} array; compare it to something first",
                mask.dtype()
            )));
        }
        if k == 0 || k > self.ndim() || mask.shape() != &self.shape()[..k] {
            return Err(Error::Shape(format!(
                "a boolean mask of shape {:?} does not match the leading axes of an array of \
                 shape {:?}",
                mask.shape(),
                self.shape()
            )));
        }
        // The mask takes the data's chunks along the axes it covers. When axes 1..k are
        // split into blocks, a task gathers a whole row of blocks in C order; otherwise each
        // data block is masked by its own.
        let mask = mask.rechunk(Chunks::Explicit(self.chunks()[..k].to_vec()))?;
        let inner = if k > 1 && self.chunks()[1..k].iter().any(|c| c.len() > 1) {
            gather(self, &mask, k)?
        } else {
            select(self, &mask, k)?
        };
        Ok(FilteredArray {
            inner,
            rows: Rows { mask, k },
        })
    }
}

/// A reduction's result: an ordinary array when the unknown axis was reduced away, still
/// filtered when it was kept.
#[derive(Clone, Debug)]
pub enum Reduced {
    /// Axis 0 was reduced: every length is known.
    Array(Array),
    /// Axis 0 was kept: its lengths are still unknown.
    Filtered(FilteredArray),
}

impl Reduced {
    /// The array, or the unknown-chunks error when axis 0 was kept.
    pub fn into_array(self) -> Result<Array> {
        match self {
            Reduced::Array(a) => Ok(a),
            Reduced::Filtered(_) => Err(unknown_chunks("an array result")),
        }
    }
}

impl FilteredArray {
    fn wrap(&self, inner: Array) -> FilteredArray {
        FilteredArray {
            inner,
            rows: self.rows.clone(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.inner.dtype()
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.inner.ndim()
    }

    /// The shape, `None` for the unknown first axis (Dask shows `nan`).
    pub fn shape(&self) -> Vec<Option<usize>> {
        let mut s = vec![None];
        s.extend(self.inner.shape()[1..].iter().map(|&d| Some(d)));
        s
    }

    /// Chunk sizes per axis, `None` for each unknown one along axis 0.
    pub fn chunks(&self) -> Vec<Vec<Option<usize>>> {
        let mut c = vec![vec![None; self.rows.nblocks()]];
        c.extend(
            self.inner.chunks()[1..]
                .iter()
                .map(|c| c.iter().map(|&x| Some(x)).collect()),
        );
        c
    }

    /// The shape as Dask prints it, `nan` for the unknown axis: `(nan, 5)`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape()
            .iter()
            .map(|d| d.map_or_else(|| "nan".to_string(), |d| d.to_string()))
            .collect();
        if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        }
    }

    /// Number of blocks.
    pub fn npartitions(&self) -> usize {
        self.inner.npartitions()
    }

    /// The most bytes the array can take (every element selected).
    pub fn max_nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// The name shared by this array's block keys.
    pub fn name(&self) -> &Arc<str> {
        self.inner.name()
    }

    /// The real grid, given each block's length along axis 0, and the rows of blocks it
    /// keeps: a grid has no empty chunks, so rows where nothing was selected are left out
    /// (all but the first when nothing at all was).
    fn known_grid(&self, lengths: &[usize]) -> Result<(ChunkGrid, Vec<usize>)> {
        let mut kept: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
        if kept.is_empty() {
            kept.push(0);
        }
        let lead: Vec<usize> = kept.iter().map(|&i| lengths[i]).collect();
        let mut shape = vec![lead.iter().sum()];
        shape.extend_from_slice(&self.inner.shape()[1..]);
        let mut chunks = vec![lead];
        chunks.extend(self.inner.chunks()[1..].iter().cloned());
        Ok((ChunkGrid::from_explicit(&shape, chunks)?, kept))
    }

    /// Blocks per row of blocks (the trailing axes' blocks).
    fn per_row(&self) -> usize {
        self.inner.npartitions() / self.rows.nblocks().max(1)
    }

    /// The values of the kept rows of blocks, in C order.
    fn kept_values<T: Clone>(&self, values: &[T], kept: &[usize]) -> Vec<T> {
        let per_row = self.per_row();
        kept.iter()
            .flat_map(|&r| values[r * per_row..(r + 1) * per_row].iter().cloned())
            .collect()
    }

    /// Lengths along axis 0 of computed blocks (C order), checked to agree along each row.
    fn lengths_of(&self, values: &[Value]) -> Result<Vec<usize>> {
        if values.len() != self.inner.npartitions() {
            return Err(Error::Internal(format!(
                "{} blocks for a filtered array of {}",
                values.len(),
                self.inner.npartitions()
            )));
        }
        let mut lengths = Vec::with_capacity(self.rows.nblocks());
        for (i, row) in values.chunks(self.per_row().max(1)).enumerate() {
            let first = |v: &Value| -> Result<Option<usize>> {
                Ok(Chunk::from_value(v)?.shape().first().copied())
            };
            let n = first(&row[0])?;
            for v in row {
                let m = first(v)?;
                if m != n {
                    return Err(Error::Shape(format!(
                        "blocks of row {i} of a filtered array have {m:?} and {n:?} rows"
                    )));
                }
            }
            lengths.push(n.ok_or_else(|| Error::Internal("a 0-d filtered block".into()))?);
        }
        Ok(lengths)
    }

    /// Put computed blocks (in [`Collection::output_keys`] order) together.
    fn assemble<T: Element>(&self, values: &[Value]) -> Result<ArrayD<T>> {
        let (grid, kept) = self.known_grid(&self.lengths_of(values)?)?;
        assemble::<T>(&grid, &self.kept_values(values, &kept))
    }

    /// Put computed blocks together into one dtype-erased [`Chunk`].
    pub fn chunk_from_values(&self, values: &[Value]) -> Result<Chunk> {
        crate::with_dtype!(self.dtype(), T => self.assemble::<T>(values).map(Chunk::new))
    }

    /// Compute into an `ndarray::ArrayD<T>`; `T` must match the dtype.
    pub fn compute<T: Element>(&self, scheduler: &dyn Scheduler) -> Result<ArrayD<T>> {
        check_compute_dtype::<T>(self.dtype())?;
        let options = ComputeOptions::default();
        let (mut values, _) = compute_collections(&[&self.inner], scheduler, &options)?;
        self.assemble::<T>(&values.pop().unwrap_or_default())
    }

    /// Compute into a dtype-erased [`Chunk`].
    pub fn compute_chunk(&self, scheduler: &dyn Scheduler) -> Result<Chunk> {
        self.compute_chunk_with(scheduler, &ComputeOptions::default())
    }

    /// [`FilteredArray::compute_chunk`] with options (progress, cancellation).
    pub fn compute_chunk_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Chunk> {
        let (mut values, _) = compute_collections(&[&self.inner], scheduler, options)?;
        self.chunk_from_values(&values.pop().unwrap_or_default())
    }

    /// The length of each block along axis 0, counted from the mask alone.
    pub fn chunk_sizes(&self, scheduler: &dyn Scheduler) -> Result<Vec<usize>> {
        self.chunk_sizes_with(scheduler, &ComputeOptions::default())
    }

    /// [`FilteredArray::chunk_sizes`] with options.
    pub fn chunk_sizes_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Vec<usize>> {
        let mask = &self.rows.mask;
        let k = self.rows.k;
        let counts = Array::from_blocks(
            "count-true",
            ChunkGrid::from_explicit(&[self.rows.nblocks()], vec![vec![1; self.rows.nblocks()]])?,
            DType::I64,
            vec![Arc::clone(mask.layer())],
            |idx| {
                // Every mask block of this row of blocks.
                let ranges: Vec<std::ops::Range<usize>> = std::iter::once(idx[0]..idx[0] + 1)
                    .chain(mask.chunks()[1..k].iter().map(|c| 0..c.len()))
                    .collect();
                let mut deps = Vec::new();
                crate::grid::for_each_index(&ranges, |m| deps.push(mask.block_key(m)));
                (Arc::new(CountTrue) as Arc<dyn Op>, deps)
            },
        );
        let (mut values, _) = compute_collections(&[&counts], scheduler, options)?;
        let values = values.pop().unwrap_or_default();
        values
            .iter()
            .map(|v| {
                let c = Chunk::from_value(v)?.typed::<i64>()?;
                let n = c.iter().next().copied().unwrap_or(0);
                usize::try_from(n).map_err(|_| Error::Internal(format!("count {n}")))
            })
            .collect()
    }

    /// Count the selected rows of every block (reading only the mask) and return the same
    /// data as an [`Array`] with known chunks (Dask's `compute_chunk_sizes`). The data itself
    /// is computed when the array is.
    pub fn compute_chunk_sizes(&self, scheduler: &dyn Scheduler) -> Result<Array> {
        self.compute_chunk_sizes_with(scheduler, &ComputeOptions::default())
    }

    /// [`FilteredArray::compute_chunk_sizes`] with options.
    pub fn compute_chunk_sizes_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Array> {
        let lengths = self.chunk_sizes_with(scheduler, options)?;
        let (grid, kept) = self.known_grid(&lengths)?;
        if kept.len() == lengths.len() {
            return Ok(self.inner.retiled(grid));
        }
        // Rows of blocks where nothing was selected are left out: the others are renamed.
        Ok(Array::from_blocks(
            "filtered",
            grid,
            self.dtype(),
            vec![Arc::clone(self.inner.layer())],
            |idx| {
                let mut src = idx.to_vec();
                src[0] = kept[idx[0]];
                (
                    Arc::new(Identity) as Arc<dyn Op>,
                    vec![self.inner.block_key(&src)],
                )
            },
        ))
    }

    /// Compute every block now and return an [`Array`] backed by the results, whose chunk
    /// sizes are known from them. The blocks come to this process, also from a cluster
    /// (their sizes are read off them), unlike [`Array::persist`]'s.
    pub fn persist(&self, scheduler: &dyn Scheduler) -> Result<Array> {
        let (mut values, _) =
            compute_collections(&[&self.inner], scheduler, &ComputeOptions::default())?;
        let values = values.pop().unwrap_or_default();
        let (grid, kept) = self.known_grid(&self.lengths_of(&values)?)?;
        Array::from_values(grid, self.dtype(), self.kept_values(&values, &kept))
    }

    /// Select again with a mask filtered by the same mask as this array (`y[y > 0]`).
    pub fn mask(&self, mask: &FilteredArray) -> Result<FilteredArray> {
        if mask.dtype() != DType::Bool {
            return Err(Error::Type(format!(
                "a boolean mask must be bool, got a {} array",
                mask.dtype()
            )));
        }
        let k = mask.ndim();
        let shapes_match = mask.inner.shape()[1..] == self.inner.shape()[1..k.min(self.ndim())];
        if !self.rows.same(&mask.rows) || k > self.ndim() || !shapes_match {
            return Err(Error::Shape(format!(
                "a selected mask of shape {} selects from a selection of shape {} only when both \
                 were selected by the same mask and the mask covers leading axes",
                mask.shape_text(),
                self.shape_text()
            )));
        }
        // C order across blocks needs axes 1..k whole in one block.
        let split = |a: &Array| a.chunks()[1..k].iter().any(|c| c.len() > 1);
        if split(&self.inner) || split(&mask.inner) {
            return Err(unknown_chunks(
                "masking over several axes split into several chunks",
            ));
        }
        let inner = select(&self.inner, &mask.inner, k)?;
        Ok(FilteredArray {
            inner,
            rows: Rows {
                mask: mask.inner.clone(),
                k,
            },
        })
    }

    /// An operand made safe to combine with this array: another filtered array must share
    /// the mask (then it is given this array's bounds grid); an array must not span axis 0
    /// (it broadcasts along it) and is rechunked to this array's trailing chunks.
    fn operand(&self, other: FilteredOperand, what: &str) -> Result<Operand> {
        match other {
            FilteredOperand::Scalar(o) => Ok(o),
            FilteredOperand::Filtered(f) => {
                let (me, other) = (&self.inner, &f.inner);
                let trailing_ok = me.ndim() == other.ndim()
                    && (1..me.ndim()).all(|a| {
                        me.chunks()[a] == other.chunks()[a]
                            || me.shape()[a] == 1
                            || other.shape()[a] == 1
                    });
                if !self.rows.same(&f.rows) || !trailing_ok {
                    return Err(Error::Shape(format!(
                        "{what}: selections of shapes {} and {} combine only when selected by \
                         the same mask, with the same chunks along the other axes",
                        self.shape_text(),
                        f.shape_text()
                    )));
                }
                // Both read their blocks along axis 0 alike; give the other this array's
                // bounds there so the blocks line up without a rechunk.
                let mut chunks = vec![me.chunks()[0].clone()];
                chunks.extend(other.chunks()[1..].iter().cloned());
                let mut shape = vec![me.shape()[0]];
                shape.extend_from_slice(&other.shape()[1..]);
                Ok(Operand::Array(
                    other.retiled(ChunkGrid::from_explicit(&shape, chunks)?),
                ))
            }
            FilteredOperand::Array(a) => {
                let n = self.ndim();
                let m = a.ndim();
                if m > n || (m == n && a.shape()[0] != 1) {
                    return Err(unknown_chunks(&format!(
                        "{what} with an array of shape {:?} along the filtered axis",
                        a.shape()
                    )));
                }
                let chunks: Vec<Vec<usize>> = (0..m)
                    .map(|j| {
                        let axis = j + n - m;
                        if a.shape()[j] == self.inner.shape()[axis] && axis > 0 {
                            self.inner.chunks()[axis].clone()
                        } else {
                            vec![a.shape()[j]]
                        }
                    })
                    .collect();
                let a = a.rechunk(Chunks::Explicit(chunks))?;
                // Read as stored chunks: a generated (random) operand would otherwise be
                // generated at the bounds grid's positions.
                Ok(Operand::Array(a.retiled(a.grid().clone())))
            }
        }
    }

    /// `self op other` elementwise (`other op self` when `reflected`).
    pub fn binary(
        &self,
        op: BinaryOp,
        other: impl Into<FilteredOperand>,
        reflected: bool,
    ) -> Result<FilteredArray> {
        let name = format!("{op:?}").to_lowercase();
        let other = self.operand(other.into(), &name)?;
        let me = Operand::Array(self.inner.clone());
        let inner = if reflected {
            elementwise::binary(op, other, me)?
        } else {
            elementwise::binary(op, me, other)?
        };
        Ok(self.wrap(inner))
    }

    /// `op(self)` elementwise.
    pub fn unary(&self, op: UnaryOp) -> Result<FilteredArray> {
        Ok(self.wrap(elementwise::unary(op, &self.inner)?))
    }

    /// Convert to another dtype.
    pub fn astype(&self, dtype: DType) -> Result<FilteredArray> {
        Ok(self.wrap(elementwise::astype(&self.inner, dtype)?))
    }

    /// `where(self, a, b)` with this array as the condition.
    pub fn where_(
        &self,
        a: impl Into<FilteredOperand>,
        b: impl Into<FilteredOperand>,
    ) -> Result<FilteredArray> {
        let a = self.operand(a.into(), "where")?;
        let b = self.operand(b.into(), "where")?;
        Ok(self.wrap(elementwise::where_(&self.inner, a, b)?))
    }

    /// Reduce over `axes`: an [`Array`] when axis 0 is among them, else still filtered.
    /// argmin/argmax along axis 0 (or over all axes) need the lengths and say so.
    pub fn reduce(
        &self,
        reduction: Reduction,
        axes: impl Into<Axes>,
        options: ReduceOptions,
    ) -> Result<Reduced> {
        let axes = normalize_axes(&axes.into(), self.ndim())?;
        let over_unknown = axes.contains(&0);
        if matches!(reduction, Reduction::ArgMin | Reduction::ArgMax) && over_unknown {
            return Err(unknown_chunks(&format!(
                "{} along axis 0",
                reduction.name()
            )));
        }
        let axes: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        let out = reduce_impl(&self.inner, reduction, axes, options, !over_unknown)?;
        Ok(if over_unknown {
            Reduced::Array(out)
        } else {
            Reduced::Filtered(self.wrap(out))
        })
    }
}

/// An operand of an elementwise operation on a [`FilteredArray`].
#[derive(Clone, Debug)]
pub enum FilteredOperand {
    /// Another filtered array (selected by the same mask).
    Filtered(FilteredArray),
    /// An array over the trailing axes (broadcast along the filtered one).
    Array(Array),
    /// A scalar.
    Scalar(Operand),
}

impl From<&FilteredArray> for FilteredOperand {
    fn from(f: &FilteredArray) -> Self {
        FilteredOperand::Filtered(f.clone())
    }
}
impl From<&Array> for FilteredOperand {
    fn from(a: &Array) -> Self {
        FilteredOperand::Array(a.clone())
    }
}
macro_rules! scalar_filtered_operand {
    ($($t:ty),*) => {$(
        impl From<$t> for FilteredOperand {
            fn from(x: $t) -> Self {
                FilteredOperand::Scalar(Operand::from(x))
            }
        }
    )*};
}
scalar_filtered_operand!(f64, f32, i64, i32, u8, bool);

impl Collection for FilteredArray {
    fn layer(&self) -> &Arc<partita_core::Layer> {
        self.inner.layer()
    }
    fn output_keys(&self) -> Vec<partita_core::Key> {
        self.inner.output_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64_block(shape: &[usize]) -> Value {
        let n = shape.iter().product::<usize>();
        Value::new(Chunk::new(
            ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f64).collect()).unwrap(),
        ))
    }

    fn bool_block(shape: &[usize]) -> Value {
        Value::new(Chunk::new(ArrayD::from_elem(IxDyn(shape), true)))
    }

    /// Blocks from the wire may be anything: each mismatch is an error naming shapes, never
    /// a panic.
    #[test]
    fn malformed_blocks_are_errors() {
        let gather = MaskGather { blocks: vec![2] };
        let ok = gather.execute(&[
            f64_block(&[2, 3]),
            f64_block(&[2, 1]),
            bool_block(&[2, 3]),
            bool_block(&[2, 1]),
        ]);
        assert_eq!(Chunk::from_value(&ok.unwrap()).unwrap().shape(), &[8]);
        let bad: Vec<Vec<Value>> = vec![
            // 0-d data blocks.
            vec![
                f64_block(&[]),
                f64_block(&[]),
                bool_block(&[]),
                bool_block(&[]),
            ],
            // Rows of blocks that disagree.
            vec![
                f64_block(&[2, 3]),
                f64_block(&[3, 1]),
                bool_block(&[2, 3]),
                bool_block(&[3, 1]),
            ],
            // A mask block of another shape.
            vec![
                f64_block(&[2, 3]),
                f64_block(&[2, 1]),
                bool_block(&[2, 2]),
                bool_block(&[2, 1]),
            ],
            // Too few inputs; a data block where a mask should be.
            vec![f64_block(&[2, 3])],
            vec![
                f64_block(&[2, 3]),
                f64_block(&[2, 1]),
                f64_block(&[2, 3]),
                bool_block(&[2, 1]),
            ],
        ];
        for inputs in bad {
            assert!(gather.execute(&inputs).is_err());
        }
        // Two block-columns along axis 2 of different lengths in the two rows of axis 1.
        let gather3 = MaskGather { blocks: vec![2, 2] };
        let shapes = [[1, 2, 2], [1, 2, 1], [1, 1, 3], [1, 1, 1]];
        let mut inputs: Vec<Value> = shapes.iter().map(|s| f64_block(s)).collect();
        inputs.extend(shapes.iter().map(|s| bool_block(s)));
        let e = gather3.execute(&inputs).unwrap_err().to_string();
        assert!(e.contains("does not cover"), "{e}");
        // Blocks of one row along axis 1 that disagree on its length (the walk would index
        // past the shorter one).
        let shapes = [[1, 2, 2], [1, 1, 1], [1, 1, 2], [1, 1, 1]];
        let mut inputs: Vec<Value> = shapes.iter().map(|s| f64_block(s)).collect();
        inputs.extend(shapes.iter().map(|s| bool_block(s)));
        assert!(gather3.execute(&inputs).is_err());
        let mask = MaskBlock { k: 2 };
        assert!(
            mask.execute(&[f64_block(&[2]), bool_block(&[2, 2])])
                .is_err()
        );
        assert!(
            mask.execute(&[f64_block(&[2, 2]), bool_block(&[2, 3])])
                .is_err()
        );
        assert!(CountTrue.execute(&[f64_block(&[2])]).is_err());
    }
}

//! `Array`: a lazy, chunked n-d array.

use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, IxDyn, Slice};
use partita_core::{
    Collection, ComputeOptions, Error, Key, Layer, Literal, Op, Result, Scheduler, Task, Value,
    compute_collections, persist_collections,
};

use crate::chunk::{Chunk, Element};
use crate::dtype::DType;
use crate::elementwise::Elementwise;
use crate::grid::ChunkGrid;

/// A lazy n-d array cut into chunks; every operation adds tasks, `compute` runs them.
///
/// Cloning is cheap (a reference count).
#[derive(Clone)]
pub struct Array(Arc<Inner>);

struct Inner {
    name: Arc<str>,
    grid: ChunkGrid,
    dtype: DType,
    source: Source,
    layer: OnceLock<Arc<Layer>>,
}

pub(crate) enum Source {
    /// A layer holding a task `(name, i, j, ...)` for every block.
    Tasks(Arc<Layer>),
    /// An elementwise expression over other arrays, turned into tasks only when consumed.
    Elementwise(Elementwise),
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Array<{}, shape={:?}, chunks={:?}, dtype={}>",
            self.0.name,
            self.shape(),
            self.chunks(),
            self.dtype()
        )
    }
}

impl Array {
    /// An array whose blocks are the tasks `(name, i, j, ...)` of `layer` (one per block of
    /// `grid`, each producing a [`Chunk`] of `dtype` and the block's shape).
    ///
    /// This is how other crates add operations; the layer's tasks are trusted to match.
    pub fn from_layer(name: Arc<str>, grid: ChunkGrid, dtype: DType, layer: Arc<Layer>) -> Array {
        Array(Arc::new(Inner {
            name,
            grid,
            dtype,
            source: Source::Tasks(layer),
            layer: OnceLock::new(),
        }))
    }

    pub(crate) fn from_elementwise(
        name: Arc<str>,
        grid: ChunkGrid,
        dtype: DType,
        e: Elementwise,
    ) -> Array {
        Array(Arc::new(Inner {
            name,
            grid,
            dtype,
            source: Source::Elementwise(e),
            layer: OnceLock::new(),
        }))
    }

    /// Build an array from one task per block: `make(block index) -> (op, dependency keys)`.
    pub fn from_blocks(
        prefix: &str,
        grid: ChunkGrid,
        dtype: DType,
        dependencies: Vec<Arc<Layer>>,
        mut make: impl FnMut(&[usize]) -> (Arc<dyn partita_core::Op>, Vec<Key>),
    ) -> Array {
        let name = Key::unique_name(prefix);
        let tasks = grid
            .blocks()
            .map(|idx| {
                let (op, deps) = make(&idx);
                Task::new(block_key(&name, &idx), op, deps)
            })
            .collect();
        let layer = Layer::new(Arc::clone(&name), tasks, dependencies);
        Array::from_layer(name, grid, dtype, layer)
    }

    /// The same tasks under another grid (same number of blocks): what a filtered array's
    /// operands are read as, their blocks' real shapes coming from the data.
    pub(crate) fn retiled(&self, grid: ChunkGrid) -> Array {
        Array::from_layer(
            Arc::clone(self.name()),
            grid,
            self.dtype(),
            Arc::clone(self.layer()),
        )
    }

    /// An array whose blocks are already computed `values` (C order over `grid`).
    pub(crate) fn from_values(grid: ChunkGrid, dtype: DType, values: Vec<Value>) -> Result<Array> {
        let ops = values
            .into_iter()
            .map(|v| Arc::new(Literal(v)) as Arc<dyn Op>);
        Array::from_ops(grid, dtype, ops.collect())
    }

    /// An array whose blocks are `ops` without inputs, in block order: values computed
    /// already, or handles to them where a cluster keeps them (`persist`, a published
    /// dataset). Each op must produce its block of `grid` with `dtype`.
    pub fn from_ops(grid: ChunkGrid, dtype: DType, ops: Vec<Arc<dyn Op>>) -> Result<Array> {
        if ops.len() != grid.num_blocks() {
            return Err(Error::Internal(format!(
                "{} computed blocks for a grid of {}",
                ops.len(),
                grid.num_blocks()
            )));
        }
        let mut ops = ops.into_iter();
        Ok(Array::from_blocks(
            "persist",
            grid,
            dtype,
            Vec::new(),
            |_| {
                let op = ops
                    .next()
                    .unwrap_or_else(|| Arc::new(Literal(Value::new(()))));
                (op, Vec::new())
            },
        ))
    }

    pub(crate) fn source(&self) -> &Source {
        &self.0.source
    }

    pub(crate) fn ptr_eq(&self, other: &Array) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The name shared by this array's block keys.
    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    /// The chunk grid.
    pub fn grid(&self) -> &ChunkGrid {
        &self.0.grid
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.0.grid.shape()
    }

    /// Chunk sizes per axis (Dask's `.chunks`).
    pub fn chunks(&self) -> &[Vec<usize>] {
        self.0.grid.chunks()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.0.grid.ndim()
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        self.0.grid.len()
    }

    /// Bytes the whole array would take in memory.
    pub fn nbytes(&self) -> usize {
        self.size() * self.dtype().size()
    }

    /// Number of blocks (Dask's `npartitions`).
    pub fn npartitions(&self) -> usize {
        self.0.grid.num_blocks()
    }

    /// The key of one block.
    pub fn block_key(&self, idx: &[usize]) -> Key {
        block_key(&self.0.name, idx)
    }

    /// Compute into an `ndarray::ArrayD<T>`; `T` must match the dtype.
    pub fn compute<T: Element>(&self, scheduler: &dyn Scheduler) -> Result<ArrayD<T>> {
        self.compute_with::<T>(scheduler, &ComputeOptions::default())
    }

    /// [`Array::compute`] with options (progress, cancellation).
    pub fn compute_with<T: Element>(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<ArrayD<T>> {
        check_compute_dtype::<T>(self.dtype())?;
        let (mut values, _) = compute_collections(&[self], scheduler, options)?;
        assemble::<T>(self.grid(), &values.pop().unwrap_or_default())
    }

    /// Compute into a dtype-erased [`Chunk`] holding the whole array.
    pub fn compute_chunk(&self, scheduler: &dyn Scheduler) -> Result<Chunk> {
        self.compute_chunk_with(scheduler, &ComputeOptions::default())
    }

    /// [`Array::compute_chunk`] with options (progress, cancellation).
    pub fn compute_chunk_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Chunk> {
        let (mut values, _) = compute_collections(&[self], scheduler, options)?;
        self.chunk_from_values(&values.pop().unwrap_or_default())
    }

    /// Assemble this array's computed block values (in [`Collection::output_keys`] order,
    /// as [`compute_collections`] returns them) into one [`Chunk`]; used when several
    /// collections are computed in one run.
    pub fn chunk_from_values(&self, values: &[Value]) -> Result<Chunk> {
        fn go<T: Element>(a: &Array, values: &[Value]) -> Result<Chunk> {
            assemble::<T>(a.grid(), values).map(Chunk::new)
        }
        crate::with_dtype!(self.dtype(), T => go::<T>(self, values))
    }

    /// Compute every block now and return an array backed by the results (Dask's
    /// `persist`): later graphs start from these values instead of recomputing. On a
    /// cluster client the blocks stay on the workers (while this array or a graph built
    /// from it lives); on a local scheduler they are held here.
    pub fn persist(&self, scheduler: &dyn Scheduler) -> Result<Array> {
        self.persist_with(scheduler, &ComputeOptions::default())
    }

    /// [`Array::persist`] with progress reporting and cancellation.
    pub fn persist_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<Array> {
        let mut ops = persist_collections(&[self], scheduler, options)?;
        Array::from_ops(
            self.grid().clone(),
            self.dtype(),
            ops.pop().unwrap_or_default(),
        )
    }
}

impl Collection for Array {
    fn layer(&self) -> &Arc<Layer> {
        self.0.layer.get_or_init(|| match &self.0.source {
            Source::Tasks(layer) => Arc::clone(layer),
            Source::Elementwise(e) => e.materialize(&self.0.name, &self.0.grid),
        })
    }

    fn output_keys(&self) -> Vec<Key> {
        self.grid()
            .blocks()
            .map(|idx| self.block_key(&idx))
            .collect()
    }
}

/// A type error unless `T` is the element type of `dtype` (computing into the wrong type).
pub(crate) fn check_compute_dtype<T: Element>(dtype: DType) -> Result<()> {
    if T::DTYPE != dtype {
        return Err(Error::Type(format!(
            "cannot compute a {dtype} array as {}; cast it with astype first",
            T::DTYPE
        )));
    }
    Ok(())
}

/// The key of block `idx` of the array called `name`.
pub fn block_key(name: &Arc<str>, idx: &[usize]) -> Key {
    let idx: smallvec::SmallVec<[u32; 4]> = idx.iter().map(|&i| i as u32).collect();
    Key::indexed(name, &idx)
}

/// Put computed blocks (C order) together into one array.
pub(crate) fn assemble<T: Element>(grid: &ChunkGrid, blocks: &[Value]) -> Result<ArrayD<T>> {
    let mut out = ArrayD::<T>::default(IxDyn(grid.shape()));
    if blocks.len() != grid.num_blocks() {
        return Err(Error::Internal(format!(
            "{} blocks for a grid of {}",
            blocks.len(),
            grid.num_blocks()
        )));
    }
    for (idx, value) in grid.blocks().zip(blocks) {
        let chunk = Chunk::from_value(value)?.typed::<T>()?;
        let offset = grid.block_offset(&idx);
        let shape = grid.block_shape(&idx);
        if chunk.shape() != shape.as_slice() {
            return Err(Error::Shape(format!(
                "block {:?} has shape {:?} but the grid says {shape:?}",
                idx.as_slice(),
                chunk.shape()
            )));
        }
        out.slice_each_axis_mut(|ax| {
            let a = ax.axis.index();
            Slice::from(offset[a]..offset[a] + shape[a])
        })
        .assign(chunk);
    }
    Ok(out)
}

//! `map_blocks`: run a user kernel on every block.

use std::sync::Arc;

use partita_core::{Collection, Error, FnOp, Op, Result, Value};

use crate::array::Array;
use crate::chunk::Chunk;
use crate::dtype::DType;
use crate::grid::{ChunkGrid, Chunks};
use crate::rechunk::{align_to, common_chunks};

/// Apply `f` to matching blocks of `arrays` (same shape; chunks are aligned first).
///
/// `f` gets the blocks and must return a block of `dtype` and of the block's shape, or of
/// the shape `chunks` gives when it is set (the same number of blocks per axis). A wrong
/// result is an error naming the block, not a silently wrong array. Kernels are Rust
/// closures, so the graph runs locally; [`map_blocks_with`] takes serializable ops.
pub fn map_blocks(
    arrays: &[&Array],
    dtype: DType,
    chunks: Option<Chunks>,
    f: impl Fn(&[&Chunk]) -> Result<Chunk> + Send + Sync + 'static,
) -> Result<Array> {
    let f = Arc::new(f);
    map_blocks_with(arrays, dtype, chunks, move |block, expected| {
        let f = Arc::clone(&f);
        let block = block.to_vec();
        let op = FnOp::new("map_blocks", move |values: &[Value]| {
            let chunks = Chunk::from_values(values)?;
            let out = f(&chunks)?;
            check_block(&out, dtype, &expected, &block)?;
            Ok(Value::new(out))
        });
        Arc::new(op) as Arc<dyn Op>
    })
}

/// A kernel's result must be a block of `dtype` and shape `expected`; otherwise an error
/// naming the block (for ops made by [`map_blocks_with`]).
pub fn check_block(out: &Chunk, dtype: DType, expected: &[usize], block: &[usize]) -> Result<()> {
    if out.dtype() != dtype || out.shape() != expected {
        return Err(Error::Shape(format!(
            "map_blocks: block {block:?} returned a {} block of shape {:?}, expected {dtype} of shape {expected:?}",
            out.dtype(),
            out.shape()
        )));
    }
    Ok(())
}

/// [`map_blocks`] with one op per block, made by `op_for(block index, expected block
/// shape)`: the op gets the blocks of `arrays` at that index and must return a [`Chunk`]
/// of `dtype` and that shape (check it with [`check_block`]). Serializable ops run on a
/// cluster too (the Python bindings' kernels do).
pub fn map_blocks_with(
    arrays: &[&Array],
    dtype: DType,
    chunks: Option<Chunks>,
    op_for: impl Fn(&[usize], Vec<usize>) -> Arc<dyn Op>,
) -> Result<Array> {
    let first = arrays
        .first()
        .ok_or_else(|| Error::Shape("map_blocks needs at least one array".into()))?;
    if let Some(other) = arrays.iter().find(|a| a.shape() != first.shape()) {
        return Err(Error::Shape(format!(
            "map_blocks: arrays of shapes {:?} and {:?} do not match",
            first.shape(),
            other.shape()
        )));
    }
    let aligned_chunks = common_chunks(first.shape(), arrays);
    let inputs = arrays
        .iter()
        .map(|a| align_to(a, first.shape(), &aligned_chunks))
        .collect::<Result<Vec<Array>>>()?;
    let in_grid = inputs[0].grid().clone();
    let grid = match chunks {
        None => in_grid.clone(),
        Some(c) => {
            let explicit = match c {
                Chunks::Explicit(e) => e,
                other => {
                    return Err(Error::Shape(format!(
                        "map_blocks: give output chunks explicitly (one size per block), got {other:?}"
                    )));
                }
            };
            let counts: Vec<usize> = explicit.iter().map(Vec::len).collect();
            if counts != in_grid.blocks_shape() {
                return Err(Error::Shape(format!(
                    "map_blocks: output chunks {explicit:?} have {counts:?} blocks, inputs have {:?}",
                    in_grid.blocks_shape()
                )));
            }
            let shape: Vec<usize> = explicit.iter().map(|c| c.iter().sum()).collect();
            ChunkGrid::from_explicit(&shape, explicit)?
        }
    };
    let layers = inputs.iter().map(|a| Arc::clone(a.layer())).collect();
    Ok(Array::from_blocks(
        "map_blocks",
        grid.clone(),
        dtype,
        layers,
        |idx| {
            let op = op_for(idx, grid.block_shape(idx));
            let deps = inputs.iter().map(|a| a.block_key(idx)).collect();
            (op, deps)
        },
    ))
}

impl Array {
    /// Apply `f` to every block, keeping the chunks; see [`map_blocks`].
    pub fn map_blocks(
        &self,
        dtype: DType,
        f: impl Fn(&Chunk) -> Result<Chunk> + Send + Sync + 'static,
    ) -> Result<Array> {
        map_blocks(&[self], dtype, None, move |blocks| f(blocks[0]))
    }
}

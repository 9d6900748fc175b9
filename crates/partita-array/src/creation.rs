//! Creating arrays: constants, ranges, identity, from ndarray, seeded random.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, Slice};
use partita_core::{Error, Literal, Op, Result, Value};
use serde::{Deserialize, Serialize};

use crate::array::Array;
use crate::chunk::{Chunk, Element, checked_block_len};
use crate::dtype::DType;
use crate::grid::{ChunkGrid, Chunks};
use crate::kernel::{Prim, Scalar};

fn filled<T: Element + Prim>(shape: &[usize], value: Scalar) -> Chunk {
    let x = match value {
        Scalar::Bool(b) => T::from_prim(b),
        Scalar::Int(i) => T::from_prim(i),
        Scalar::Float(f) => T::from_prim(f),
    };
    Chunk::new(ArrayD::from_elem(IxDyn(shape), x))
}

/// An op that makes its block from its own description, without inputs.
trait Generator {
    fn dtype(&self) -> DType;
    fn block_shape(&self) -> Vec<usize>;
    fn block<T: Element + Prim>(&self) -> Chunk;
}

/// The `execute` of every generator: no inputs, a bounded size, then the block.
fn generate(g: &impl Generator, name: &str, inputs: &[Value]) -> Result<Value> {
    partita_core::op::expect_inputs(name, inputs, 0)?;
    checked_block_len(&g.block_shape(), g.dtype())?;
    Ok(Value::new(
        crate::with_dtype!(g.dtype(), T => g.block::<T>()),
    ))
}

/// A block of one value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullBlock {
    /// Block shape.
    pub shape: Vec<usize>,
    /// The value.
    pub value: Scalar,
    /// Its dtype.
    pub dtype: DType,
}

#[typetag::serde(name = "array-full")]
impl Op for FullBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        generate(self, "full", inputs)
    }
    fn name(&self) -> &str {
        "full"
    }
}

impl Generator for FullBlock {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn block_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn block<T: Element + Prim>(&self) -> Chunk {
        filled::<T>(&self.shape, self.value)
    }
}

/// An array of `shape` filled with `value`.
pub fn full(
    shape: &[usize],
    value: impl Into<Scalar>,
    dtype: DType,
    chunks: impl Into<Chunks>,
) -> Result<Array> {
    let grid = ChunkGrid::new(shape, &chunks.into(), dtype)?;
    let value = value.into();
    Ok(Array::from_blocks(
        "full",
        grid.clone(),
        dtype,
        Vec::new(),
        |idx| {
            (
                Arc::new(FullBlock {
                    shape: grid.block_shape(idx),
                    value,
                    dtype,
                }) as Arc<dyn Op>,
                Vec::new(),
            )
        },
    ))
}

/// Zeros.
pub fn zeros(shape: &[usize], dtype: DType, chunks: impl Into<Chunks>) -> Result<Array> {
    full(shape, Scalar::Int(0), dtype, chunks)
}

/// Ones.
pub fn ones(shape: &[usize], dtype: DType, chunks: impl Into<Chunks>) -> Result<Array> {
    full(shape, Scalar::Int(1), dtype, chunks)
}

/// A block of `start + (offset + i) * step`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeBlock {
    /// First value of the whole range.
    pub start: f64,
    /// Step between values.
    pub step: f64,
    /// Index of this block's first element in the whole range.
    pub offset: usize,
    /// Elements in this block.
    pub len: usize,
    /// Set the last element of the whole range to exactly this (linspace's endpoint).
    pub exact_last: Option<(usize, f64)>,
    /// Result dtype.
    pub dtype: DType,
}

#[typetag::serde(name = "array-range")]
impl Op for RangeBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        generate(self, "range", inputs)
    }
    fn name(&self) -> &str {
        "range"
    }
}

impl Generator for RangeBlock {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn block_shape(&self) -> Vec<usize> {
        vec![self.len]
    }

    fn block<T: Element + Prim>(&self) -> Chunk {
        let r = self;
        let v: Vec<T> = (0..r.len)
            .map(|i| {
                let g = r.offset + i;
                match r.exact_last {
                    Some((last, x)) if g == last => T::from_prim(x),
                    _ if !T::FLOAT && r.start.fract() == 0.0 && r.step.fract() == 0.0 => {
                        T::from_prim(r.start as i64 + g as i64 * r.step as i64)
                    }
                    _ => T::from_prim(r.start + g as f64 * r.step),
                }
            })
            .collect();
        Chunk::new(ArrayD::from_shape_vec(IxDyn(&[r.len]), v).expect("len elements"))
    }
}

fn range_array(
    start: f64,
    step: f64,
    n: usize,
    exact_last: Option<(usize, f64)>,
    dtype: DType,
    chunks: Chunks,
    prefix: &str,
) -> Result<Array> {
    let grid = ChunkGrid::new(&[n], &chunks, dtype)?;
    Ok(Array::from_blocks(
        prefix,
        grid.clone(),
        dtype,
        Vec::new(),
        |idx| {
            let op = RangeBlock {
                start,
                step,
                offset: grid.block_offset(idx)[0],
                len: grid.block_shape(idx)[0],
                exact_last,
                dtype,
            };
            (Arc::new(op) as Arc<dyn Op>, Vec::new())
        },
    ))
}

/// `start, start + step, ...` below `stop` (NumPy's `arange`).
pub fn arange(
    start: f64,
    stop: f64,
    step: f64,
    dtype: DType,
    chunks: impl Into<Chunks>,
) -> Result<Array> {
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !stop.is_finite() {
        return Err(Error::Shape(format!(
            "arange({start}, {stop}, {step}): step must be finite and nonzero"
        )));
    }
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    range_array(start, step, n, None, dtype, chunks.into(), "arange")
}

/// `num` evenly spaced values from `start` to `stop` (NumPy's `linspace`).
pub fn linspace(
    start: f64,
    stop: f64,
    num: usize,
    endpoint: bool,
    chunks: impl Into<Chunks>,
) -> Result<Array> {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    let step = if div > 0 {
        (stop - start) / div as f64
    } else {
        0.0
    };
    let exact = (endpoint && num > 1).then(|| (num - 1, stop));
    range_array(
        start,
        step,
        num,
        exact,
        DType::F64,
        chunks.into(),
        "linspace",
    )
}

/// A block of an identity-like matrix: ones where `col - row == k`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EyeBlock {
    /// Block shape (rows, cols).
    pub shape: [usize; 2],
    /// Global offset of the block.
    pub offset: [usize; 2],
    /// Diagonal index.
    pub k: i64,
    /// Result dtype.
    pub dtype: DType,
}

#[typetag::serde(name = "array-eye")]
impl Op for EyeBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        generate(self, "eye", inputs)
    }
    fn name(&self) -> &str {
        "eye"
    }
}

impl Generator for EyeBlock {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn block_shape(&self) -> Vec<usize> {
        self.shape.to_vec()
    }

    fn block<T: Element + Prim>(&self) -> Chunk {
        let e = self;
        Chunk::new(ArrayD::from_shape_fn(IxDyn(&e.shape), |ix| {
            let row = (e.offset[0] + ix[0]) as i64;
            let col = (e.offset[1] + ix[1]) as i64;
            T::from_prim(col - row == e.k)
        }))
    }
}

/// An `n x m` matrix with ones on diagonal `k` (NumPy's `eye`).
pub fn eye(
    n: usize,
    m: Option<usize>,
    k: i64,
    dtype: DType,
    chunks: impl Into<Chunks>,
) -> Result<Array> {
    let grid = ChunkGrid::new(&[n, m.unwrap_or(n)], &chunks.into(), dtype)?;
    Ok(Array::from_blocks(
        "eye",
        grid.clone(),
        dtype,
        Vec::new(),
        |idx| {
            let (s, o) = (grid.block_shape(idx), grid.block_offset(idx));
            (
                Arc::new(EyeBlock {
                    shape: [s[0], s[1]],
                    offset: [o[0], o[1]],
                    k,
                    dtype,
                }) as Arc<dyn Op>,
                Vec::new(),
            )
        },
    ))
}

/// A chunked array holding a copy of `a` (an array or a view of one), each block a literal
/// in the graph. The blocks are copied straight from `a`: one copy of the data in all.
pub fn from_ndarray<'a, T: Element>(
    a: impl Into<ArrayViewD<'a, T>>,
    chunks: impl Into<Chunks>,
) -> Result<Array> {
    let a = a.into();
    let grid = ChunkGrid::new(a.shape(), &chunks.into(), T::DTYPE)?;
    Ok(Array::from_blocks(
        "array",
        grid.clone(),
        T::DTYPE,
        Vec::new(),
        |idx| {
            let (o, s) = (grid.block_offset(idx), grid.block_shape(idx));
            let block = a.slice_each_axis(|ax| {
                let i = ax.axis.index();
                Slice::from(o[i]..o[i] + s[i])
            });
            (
                Arc::new(Literal(Value::new(Chunk::new(block.to_owned())))) as Arc<dyn Op>,
                Vec::new(),
            )
        },
    ))
}

pub mod random {
    //! Seeded random arrays. The same seed gives the same numbers whatever the chunking and
    //! the scheduler: element `g` (its flat C-order index in the whole array) is SplitMix64's
    //! output for counter `g` in a stream keyed by the seed. A random array is an
    //! elementwise expression with a random leaf ([`crate::rng`]): its numbers are generated
    //! by whatever task reads them, never stored on their own unless something needs blocks.

    use super::*;
    use crate::elementwise::Elementwise;
    use crate::kernel::{NodeKind, Program};
    pub use crate::rng::Distribution;
    use crate::rng::{RandomLeaf, mix};

    fn make(shape: &[usize], chunks: Chunks, seed: u64, dist: Distribution) -> Result<Array> {
        let dtype = dist.dtype();
        let grid = ChunkGrid::new(shape, &chunks, dtype)?;
        let mut program = Program::default();
        program.randoms.push(RandomLeaf {
            key: mix(seed ^ 0x5EED_5EED_5EED_5EED),
            dist,
            shape: shape.to_vec(),
            perm: (0..shape.len()).collect(),
        });
        program.push(NodeKind::Random(0), dtype);
        Ok(Array::from_elementwise(
            partita_core::Key::unique_name("random"),
            grid,
            dtype,
            Elementwise {
                program,
                inputs: Vec::new(),
            },
        ))
    }

    /// Uniform on `[0, 1)`.
    pub fn random(shape: &[usize], chunks: impl Into<Chunks>, seed: u64) -> Result<Array> {
        uniform(shape, 0.0, 1.0, chunks, seed)
    }

    /// Uniform on `[low, high)`.
    pub fn uniform(
        shape: &[usize],
        low: f64,
        high: f64,
        chunks: impl Into<Chunks>,
        seed: u64,
    ) -> Result<Array> {
        if !(low.is_finite() && high.is_finite() && low <= high) {
            return Err(Error::Shape(format!(
                "uniform: need finite low <= high, got [{low}, {high})"
            )));
        }
        make(
            shape,
            chunks.into(),
            seed,
            Distribution::Uniform { low, high },
        )
    }

    /// Normal with mean `mean` and standard deviation `std`.
    pub fn normal(
        shape: &[usize],
        mean: f64,
        std: f64,
        chunks: impl Into<Chunks>,
        seed: u64,
    ) -> Result<Array> {
        if !(std >= 0.0 && std.is_finite() && mean.is_finite()) {
            return Err(Error::Shape(format!(
                "normal: need finite mean and std >= 0, got {mean}, {std}"
            )));
        }
        make(
            shape,
            chunks.into(),
            seed,
            Distribution::Normal { mean, std },
        )
    }

    /// Integers uniform on `[low, high)`, as int64.
    pub fn integers(
        shape: &[usize],
        low: i64,
        high: i64,
        chunks: impl Into<Chunks>,
        seed: u64,
    ) -> Result<Array> {
        if high <= low {
            return Err(Error::Shape(format!(
                "integers: need low < high, got [{low}, {high})"
            )));
        }
        make(
            shape,
            chunks.into(),
            seed,
            Distribution::Integers { low, high },
        )
    }
}

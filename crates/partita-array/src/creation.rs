//! Creating arrays: constants, ranges, identity, from ndarray, seeded random.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn, Slice};
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

/// A chunked array holding a copy of `a`, each block a literal in the graph.
pub fn from_ndarray<T: Element>(a: &ArrayD<T>, chunks: impl Into<Chunks>) -> Result<Array> {
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
    //! output for counter `g` in a stream keyed by the seed.

    use super::*;

    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The `g`th 64-bit number of the stream for `key`.
    #[inline]
    fn draw(key: u64, g: u64) -> u64 {
        mix(key.wrapping_add(g.wrapping_mul(GAMMA)))
    }

    /// Uniform on `[0, 1)` with 52 random bits: the top bits become the mantissa of a
    /// number in `[1, 2)`. Unlike an integer-to-float conversion this vectorizes on every
    /// x86-64, which makes generation about twice as fast.
    #[inline]
    fn unit(x: u64) -> f64 {
        f64::from_bits(0x3FF0_0000_0000_0000 | (x >> 12)) - 1.0
    }

    /// Which distribution a block draws from.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub enum Distribution {
        /// Uniform on `[low, high)`.
        Uniform { low: f64, high: f64 },
        /// Normal with this mean and standard deviation (Box-Muller).
        Normal { mean: f64, std: f64 },
        /// Integers uniform on `[low, high)`.
        Integers { low: i64, high: i64 },
    }

    /// One block of a random array.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct RandomBlock {
        /// Stream key derived from the seed.
        pub key: u64,
        /// What to draw.
        pub dist: Distribution,
        /// The whole array's shape.
        pub array_shape: Vec<usize>,
        /// This block's offset.
        pub offset: Vec<usize>,
        /// This block's shape.
        pub shape: Vec<usize>,
    }

    impl RandomBlock {
        /// Global flat indices of the block's elements, row by row along the last axis.
        fn for_each_row(&self, mut f: impl FnMut(u64, usize)) {
            let nd = self.shape.len();
            if nd == 0 {
                f(0, 1);
                return;
            }
            if self.shape.contains(&0) {
                return;
            }
            let mut strides = vec![1u64; nd];
            for a in (0..nd - 1).rev() {
                strides[a] = strides[a + 1] * self.array_shape[a + 1] as u64;
            }
            let row_len = self.shape[nd - 1];
            let mut idx = vec![0usize; nd - 1];
            loop {
                let base: u64 = (0..nd)
                    .map(|a| {
                        (self.offset[a] + if a < nd - 1 { idx[a] } else { 0 }) as u64 * strides[a]
                    })
                    .sum();
                f(base, row_len);
                // Odometer over the leading axes.
                let mut a = nd - 1;
                loop {
                    if a == 0 {
                        return;
                    }
                    a -= 1;
                    idx[a] += 1;
                    if idx[a] < self.shape[a] {
                        break;
                    }
                    idx[a] = 0;
                }
            }
        }
    }

    /// Append to `out` elements `base..base + len` of the stream, mapped by the
    /// distribution (appended, not overwritten: zero-filling a chunk first cost a pass over
    /// its memory). Compiled for AVX-512 and AVX2 too and picked at run time: the 64-bit
    /// multiplies of SplitMix64 are emulated with three 32-bit ones on baseline x86-64.
    #[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2+fma"))]
    fn fill_f64(key: u64, base: u64, dist: Distribution, len: usize, out: &mut Vec<f64>) {
        let ids = base..base + len as u64;
        match dist {
            Distribution::Uniform { low, high } => {
                let scale = high - low;
                out.extend(ids.map(|g| low + scale * unit(draw(key, g))));
            }
            Distribution::Normal { mean, std } => {
                out.extend(ids.map(|g| {
                    let u1 = unit(draw(key, 2 * g));
                    let u2 = unit(draw(key, 2 * g + 1));
                    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
                    mean + std * r * (std::f64::consts::TAU * u2).cos()
                }));
            }
            Distribution::Integers { .. } => {}
        }
    }

    #[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2+fma"))]
    fn fill_i64(key: u64, base: u64, low: i64, range: u64, out: &mut [i64]) {
        for (j, o) in out.iter_mut().enumerate() {
            let x = draw(key, base + j as u64);
            *o = low.wrapping_add(((u128::from(x) * u128::from(range)) >> 64) as i64);
        }
    }

    #[typetag::serde(name = "array-random")]
    impl Op for RandomBlock {
        fn execute(&self, _inputs: &[Value]) -> Result<Value> {
            let n = checked_block_len(&self.shape, DType::F64)?;
            let nd = self.shape.len();
            if self.array_shape.len() != nd
                || self.offset.len() != nd
                || (0..nd).any(|a| {
                    self.offset[a]
                        .checked_add(self.shape[a])
                        .is_none_or(|end| end > self.array_shape[a])
                })
            {
                return Err(Error::Shape(format!(
                    "random block of shape {:?} at {:?} does not fit an array of shape {:?}",
                    self.shape, self.offset, self.array_shape
                )));
            }
            let key = self.key;
            let shape_err = |e: ndarray::ShapeError| Error::Internal(e.to_string());
            let chunk = match self.dist {
                Distribution::Integers { low, high } => {
                    let range = high.wrapping_sub(low) as u64;
                    let mut v = vec![0i64; n];
                    let mut at = 0;
                    self.for_each_row(|base, len| {
                        fill_i64(key, base, low, range, &mut v[at..at + len]);
                        at += len;
                    });
                    Chunk::new(ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(shape_err)?)
                }
                dist => {
                    let mut v = Vec::with_capacity(n);
                    self.for_each_row(|base, len| fill_f64(key, base, dist, len, &mut v));
                    Chunk::new(ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(shape_err)?)
                }
            };
            Ok(Value::new(chunk))
        }
        fn name(&self) -> &str {
            "random"
        }
    }

    fn make(
        shape: &[usize],
        chunks: Chunks,
        seed: u64,
        dist: Distribution,
        dtype: DType,
    ) -> Result<Array> {
        let grid = ChunkGrid::new(shape, &chunks, dtype)?;
        let key = mix(seed ^ 0x5EED_5EED_5EED_5EED);
        Ok(Array::from_blocks(
            "random",
            grid.clone(),
            dtype,
            Vec::new(),
            |idx| {
                let op = RandomBlock {
                    key,
                    dist,
                    array_shape: shape.to_vec(),
                    offset: grid.block_offset(idx),
                    shape: grid.block_shape(idx),
                };
                (Arc::new(op) as Arc<dyn Op>, Vec::new())
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
            DType::F64,
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
            DType::F64,
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
            DType::I64,
        )
    }
}

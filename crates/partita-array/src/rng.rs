//! Counter-based random numbers, generated where they are consumed.
//!
//! Element `g` of a random array (its flat C-order index in the whole array) is SplitMix64's
//! output for counter `g` in a stream keyed by the seed. Because any element can be
//! computed from its index alone, a random array is not a stored input but a leaf of an
//! elementwise [`Program`](crate::kernel::Program) ([`RandomLeaf`]): the kernel that reads
//! it generates each tile on the spot, in whatever order it walks the block. A transposed
//! random array is the same leaf with its axes permuted, so `x + x.T` never writes `x` to
//! memory, and a reduction over it never allocates a block at all.

use partita_core::{Error, Result};
use serde::{Deserialize, Serialize};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform on `[0, 1)` with 52 random bits: the top bits become the mantissa of a number in
/// `[1, 2)`. Unlike an integer-to-float conversion this vectorizes on every x86-64, which
/// makes generation about twice as fast.
#[inline]
fn unit(x: u64) -> f64 {
    f64::from_bits(0x3FF0_0000_0000_0000 | (x >> 12)) - 1.0
}

/// Which distribution a random array draws from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Distribution {
    /// Uniform on `[low, high)` (float64).
    Uniform {
        /// Lower bound, included.
        low: f64,
        /// Upper bound, excluded.
        high: f64,
    },
    /// Normal with this mean and standard deviation (Box-Muller; float64).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// Integers uniform on `[low, high)` (int64).
    Integers {
        /// Lower bound, included.
        low: i64,
        /// Upper bound, excluded.
        high: i64,
    },
}

impl Distribution {
    /// The dtype it draws: int64 for integers, float64 otherwise.
    pub fn dtype(&self) -> crate::dtype::DType {
        match self {
            Distribution::Integers { .. } => crate::dtype::DType::I64,
            _ => crate::dtype::DType::F64,
        }
    }
}

/// A random array as a leaf of an elementwise program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomLeaf {
    /// Stream key derived from the seed.
    pub key: u64,
    /// What to draw.
    pub dist: Distribution,
    /// Shape of the array as generated (before any transpose).
    pub shape: Vec<usize>,
    /// Axis `i` of the program's result is axis `perm[i]` of the generated array.
    pub perm: Vec<usize>,
}

/// Where a task's block sits in the whole result: programs with random leaves need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockPos {
    /// Global index of the block's first element, per axis.
    pub offset: Vec<usize>,
    /// The block's shape.
    pub shape: Vec<usize>,
}

impl RandomLeaf {
    /// The leaf's shape in the program's (permuted) axes.
    pub fn shape(&self) -> Vec<usize> {
        self.perm.iter().map(|&a| self.shape[a]).collect()
    }

    /// This leaf with its result axes permuted: result axis `i` becomes old axis `axes[i]`.
    pub(crate) fn transposed(&self, axes: &[usize]) -> RandomLeaf {
        RandomLeaf {
            perm: axes.iter().map(|&a| self.perm[a]).collect(),
            ..self.clone()
        }
    }

    /// A generator for the block at `pos`, after checking the leaf and the position (both
    /// may come from the wire).
    pub(crate) fn at(&self, pos: &BlockPos) -> Result<RandomGen> {
        let nd = self.shape.len();
        let mut seen = vec![false; nd];
        if self.perm.len() != nd
            || self
                .perm
                .iter()
                .any(|&a| a >= nd || std::mem::replace(&mut seen[a], true))
        {
            return Err(Error::Graph(format!(
                "random leaf: axes {:?} are not a permutation of {nd} axes",
                self.perm
            )));
        }
        let shape = self.shape();
        if pos.offset.len() != nd
            || pos.shape.len() != nd
            || (0..nd).any(|a| {
                pos.offset[a]
                    .checked_add(pos.shape[a])
                    .is_none_or(|end| end > shape[a])
            })
        {
            return Err(Error::Shape(format!(
                "random block of shape {:?} at {:?} does not fit an array of shape {shape:?}",
                pos.shape, pos.offset
            )));
        }
        if let Distribution::Integers { low, high } = self.dist
            && high <= low
        {
            return Err(Error::Shape(format!(
                "integers: need low < high, got [{low}, {high})"
            )));
        }
        // C-order strides of the generated array, then per result axis.
        let mut src = vec![1u64; nd];
        for a in (0..nd.saturating_sub(1)).rev() {
            src[a] = src[a + 1].wrapping_mul(self.shape[a + 1] as u64);
        }
        Ok(RandomGen {
            key: self.key,
            dist: self.dist,
            strides: self.perm.iter().map(|&a| src[a]).collect(),
            offset: pos.offset.clone(),
            shape: pos.shape.clone(),
        })
    }
}

/// Generates the elements of one block of a random leaf, tile by tile.
pub(crate) struct RandomGen {
    key: u64,
    dist: Distribution,
    /// Counter step per result axis.
    strides: Vec<u64>,
    offset: Vec<usize>,
    shape: Vec<usize>,
}

impl RandomGen {
    /// Visit the block's elements `start..start + len` (C order) as runs along the last
    /// axis: `f(counter of the run's first element, counter step, run length)`.
    fn runs(&self, start: usize, len: usize, mut f: impl FnMut(u64, u64, usize)) {
        let nd = self.shape.len();
        if nd == 0 {
            if len > 0 {
                f(0, 1, len.min(1));
            }
            return;
        }
        let row = self.shape[nd - 1];
        if row == 0 {
            return;
        }
        let step = self.strides[nd - 1];
        let (mut flat, end) = (start, start + len);
        while flat < end {
            let (mut rest, col) = (flat / row, flat % row);
            // Wrapping: counters of arrays beyond 2^64 elements (which cannot be computed
            // anyway) must not overflow on a description that came from the wire.
            let at = |a: usize, i: usize| (self.offset[a] as u64).wrapping_add(i as u64);
            let mut base = at(nd - 1, col).wrapping_mul(step);
            for a in (0..nd - 1).rev() {
                let i = rest % self.shape[a];
                rest /= self.shape[a];
                base = base.wrapping_add(at(a, i).wrapping_mul(self.strides[a]));
            }
            let m = (row - col).min(end - flat);
            f(base, step, m);
            flat += m;
        }
    }

    /// Fill `out` with float elements `start..start + out.len()` of the block.
    pub(crate) fn fill_f64(&self, start: usize, out: &mut [f64]) -> Result<()> {
        let mut at = 0;
        match self.dist {
            Distribution::Integers { .. } => {
                return Err(Error::Internal(
                    "integer random leaf read as float64".into(),
                ));
            }
            dist => self.runs(start, out.len(), |base, step, m| {
                fill_f64(self.key, base, step, dist, &mut out[at..at + m]);
                at += m;
            }),
        }
        Ok(())
    }

    /// Fill `out` with integer elements `start..start + out.len()` of the block.
    pub(crate) fn fill_i64(&self, start: usize, out: &mut [i64]) -> Result<()> {
        let Distribution::Integers { low, high } = self.dist else {
            return Err(Error::Internal("float random leaf read as int64".into()));
        };
        let range = high.wrapping_sub(low) as u64;
        let mut at = 0;
        self.runs(start, out.len(), |base, step, m| {
            fill_i64(self.key, base, step, low, range, &mut out[at..at + m]);
            at += m;
        });
        Ok(())
    }
}

/// Elements `base, base + step, ...` of the stream, mapped by the distribution. Compiled
/// for AVX-512 and AVX2 too and picked at run time: the 64-bit multiplies of SplitMix64 are
/// emulated with three 32-bit ones on baseline x86-64. The counter's product with `GAMMA`
/// advances by an addition (a vector induction), which leaves two multiplies per number
/// instead of three: they are what limits the loop.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn fill_f64(key: u64, base: u64, step: u64, dist: Distribution, out: &mut [f64]) {
    match dist {
        Distribution::Uniform { low, high } => {
            let scale = high - low;
            let inc = step.wrapping_mul(GAMMA);
            let mut z = key.wrapping_add(base.wrapping_mul(GAMMA));
            for o in out.iter_mut() {
                *o = low + scale * unit(mix(z));
                z = z.wrapping_add(inc);
            }
        }
        Distribution::Normal { mean, std } => {
            // Counters 2g and 2g + 1.
            let inc = step.wrapping_mul(2).wrapping_mul(GAMMA);
            let mut z = key.wrapping_add(base.wrapping_mul(2).wrapping_mul(GAMMA));
            for o in out.iter_mut() {
                let u1 = unit(mix(z));
                let u2 = unit(mix(z.wrapping_add(GAMMA)));
                let r = (-2.0 * (1.0 - u1).ln()).sqrt();
                *o = mean + std * r * (std::f64::consts::TAU * u2).cos();
                z = z.wrapping_add(inc);
            }
        }
        Distribution::Integers { .. } => {}
    }
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512dq+avx512vl", "x86_64+avx2+fma"))]
fn fill_i64(key: u64, base: u64, step: u64, low: i64, range: u64, out: &mut [i64]) {
    let inc = step.wrapping_mul(GAMMA);
    let mut z = key.wrapping_add(base.wrapping_mul(GAMMA));
    for o in out.iter_mut() {
        let x = mix(z);
        *o = low.wrapping_add(((u128::from(x) * u128::from(range)) >> 64) as i64);
        z = z.wrapping_add(inc);
    }
}

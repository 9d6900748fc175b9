//! Matrix products.
//!
//! Key decision: one task per output block computes the whole contraction
//! `C[i, j] = sum_k A[i, k] @ B[k, j]`, accumulating into its output with
//! `general_mat_mul(beta = 1)`. There are no per-`k` product blocks to store and add up
//! later, so a product's memory is its inputs plus one output block per running task.
//! The kernel is ndarray's `general_mat_mul`. By default, for f32/f64, that is the
//! `matrixmultiply` crate: blocked, SIMD (AVX2/FMA where available), pure Rust, no system
//! library to install. With the `blas` feature it is OpenBLAS's `dgemm`/`sgemm` through
//! CBLAS (what NumPy, and so Dask, call): it has AVX-512 kernels, which matrixmultiply lacks,
//! and is about 2x faster on the issue's `(m @ m.T).sum()` (22.2 s -> 11.2 s, see
//! ARCHITECTURE.md). Link the single-threaded build (Debian's libopenblas-serial-dev):
//! parallelism comes from running output blocks on all threads, and a threaded BLAS inside
//! each task would oversubscribe the cores.

use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Ix2, IxDyn, linalg::general_mat_mul};
use partita_core::{Collection, Error, Op, Result, Value};
use serde::{Deserialize, Serialize};

use crate::array::Array;
use crate::chunk::{Chunk, Element};
use crate::dtype::DType;
use crate::grid::{ChunkGrid, Chunks};
use crate::indexing::Index;

/// One output block of a matrix product: inputs are `A[i, 0..K]` then `B[0..K, j]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatMulBlock {
    /// Number of contraction blocks `K`.
    pub k_blocks: usize,
}

fn as2<T: Element>(c: &Chunk) -> Result<ArrayView2<'_, T>> {
    c.typed::<T>()?
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|e| Error::Shape(format!("matmul block of shape {:?}: {e}", c.shape())))
}

fn matmul_typed<T>(a: &[&Chunk], b: &[&Chunk]) -> Result<Chunk>
where
    T: Element + ndarray::LinalgScalar,
{
    let (m, n) = (a[0].shape()[0], b[0].shape()[1]);
    let mut out = Array2::<T>::zeros((m, n));
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (as2::<T>(x)?, as2::<T>(y)?);
        if x.ncols() != y.nrows() || x.nrows() != m || y.ncols() != n {
            return Err(Error::Shape(format!(
                "matmul blocks of shapes {:?} and {:?}",
                x.shape(),
                y.shape()
            )));
        }
        general_mat_mul(T::one(), &x, &y, T::one(), &mut out);
    }
    Ok(Chunk::new(
        out.into_dimensionality::<IxDyn>().expect("2-d is n-d"),
    ))
}

#[typetag::serde(name = "array-matmul")]
impl Op for MatMulBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("matmul", inputs, 2 * self.k_blocks)?;
        let chunks = Chunk::from_values(inputs)?;
        if self.k_blocks == 0 {
            return Err(Error::Graph(
                "matmul block without contraction blocks".into(),
            ));
        }
        let (a, b) = chunks.split_at(self.k_blocks);
        let out = match a[0].dtype() {
            DType::F64 => matmul_typed::<f64>(a, b)?,
            DType::F32 => matmul_typed::<f32>(a, b)?,
            DType::I64 => matmul_typed::<i64>(a, b)?,
            DType::I32 => matmul_typed::<i32>(a, b)?,
            d => return Err(Error::Type(format!("matmul is not supported for {d}"))),
        };
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "matmul"
    }
}

/// The OpenBLAS kernel family (`OPENBLAS_CORETYPE`) this CPU's features call for: `SkylakeX`
/// with AVX-512, `Haswell` with AVX2 and FMA, `None` otherwise or off x86-64. OpenBLAS
/// chooses by CPU model and falls back to its slowest kernels on a model newer than its
/// release (Debian 12's 0.3.21 on a 2024 Xeon picks `Prescott`: 5x slower), so the `partita`
/// binary and the Python package name the family when the user has not.
pub fn openblas_core_hint() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") && has!("avx512bw") && has!("avx512vl") {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// Matrix product with NumPy's `matmul` rules for 1-d and 2-d operands (a 1-d left operand
/// is a row, a 1-d right operand a column, and that axis is dropped from the result).
pub fn matmul(a: &Array, b: &Array) -> Result<Array> {
    match (a.ndim(), b.ndim()) {
        (1, _) => {
            let row = a.index(&[Index::NewAxis, Index::Full])?;
            matmul(&row, b)?.index(&[Index::At(0)])
        }
        (_, 1) => {
            let col = b.index(&[Index::Full, Index::NewAxis])?;
            matmul(a, &col)?.index(&[Index::Full, Index::At(0)])
        }
        (2, 2) => matmul2(a, b),
        (x, y) => Err(Error::NotImplemented(format!(
            "matmul of {x}-d and {y}-d arrays (1-d and 2-d operands are supported)"
        ))),
    }
}

fn matmul2(a: &Array, b: &Array) -> Result<Array> {
    let (m, k) = (a.shape()[0], a.shape()[1]);
    let (k2, n) = (b.shape()[0], b.shape()[1]);
    if k != k2 {
        return Err(Error::Shape(format!(
            "matmul: shapes {:?} and {:?} do not line up ({k} != {k2})",
            a.shape(),
            b.shape()
        )));
    }
    let promoted = DType::promote(a.dtype(), b.dtype());
    if promoted == DType::Bool {
        // NumPy: a logical or of ands. Count in integers, then test for nonzero.
        return matmul2(&a.astype(DType::I64)?, &b.astype(DType::I64)?)?.not_equal(0);
    }
    let dtype = match promoted {
        DType::U8 => DType::I64,
        d => d,
    };
    // Cut the contraction axis the same way in both operands.
    let mut bounds: Vec<usize> = a
        .grid()
        .starts(1)
        .iter()
        .chain(b.grid().starts(0))
        .copied()
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let kc: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    let kc = if kc.is_empty() { vec![k] } else { kc };
    let a = a
        .astype(dtype)?
        .rechunk(Chunks::Explicit(vec![a.chunks()[0].clone(), kc.clone()]))?;
    let b = b
        .astype(dtype)?
        .rechunk(Chunks::Explicit(vec![kc.clone(), b.chunks()[1].clone()]))?;
    let grid =
        ChunkGrid::from_explicit(&[m, n], vec![a.chunks()[0].clone(), b.chunks()[1].clone()])?;
    let k_blocks = kc.len();
    let op: Arc<dyn Op> = Arc::new(MatMulBlock { k_blocks });
    let layers = vec![Arc::clone(a.layer()), Arc::clone(b.layer())];
    Ok(Array::from_blocks("matmul", grid, dtype, layers, |idx| {
        let deps = (0..k_blocks)
            .map(|kk| a.block_key(&[idx[0], kk]))
            .chain((0..k_blocks).map(|kk| b.block_key(&[kk, idx[1]])))
            .collect();
        (Arc::clone(&op), deps)
    }))
}

impl Array {
    /// Matrix product (`self @ other`).
    pub fn matmul(&self, other: &Array) -> Result<Array> {
        matmul(self, other)
    }

    /// NumPy's `dot` for 1-d and 2-d operands (the same as `matmul` there).
    pub fn dot(&self, other: &Array) -> Result<Array> {
        matmul(self, other)
    }
}

/// Contract `a`'s axes `axes_a` with `b`'s axes `axes_b` (NumPy's `tensordot`): the result
/// has `a`'s remaining axes followed by `b`'s. Computed as a transpose, a reshape to a
/// matrix product, and a reshape back.
pub fn tensordot(a: &Array, b: &Array, axes_a: &[usize], axes_b: &[usize]) -> Result<Array> {
    if axes_a.len() != axes_b.len() {
        return Err(Error::Shape(format!(
            "tensordot: {axes_a:?} and {axes_b:?} contract different numbers of axes"
        )));
    }
    let check = |x: &Array, axes: &[usize], which: &str| -> Result<Vec<usize>> {
        let mut seen = vec![false; x.ndim()];
        for &ax in axes {
            if ax >= x.ndim() || std::mem::replace(&mut seen[ax], true) {
                return Err(Error::Shape(format!(
                    "tensordot: axes {axes:?} of {which} (shape {:?}) are out of range or repeated",
                    x.shape()
                )));
            }
        }
        Ok((0..x.ndim()).filter(|k| !seen[*k]).collect())
    };
    let free_a = check(a, axes_a, "a")?;
    let free_b = check(b, axes_b, "b")?;
    for (&x, &y) in axes_a.iter().zip(axes_b) {
        if a.shape()[x] != b.shape()[y] {
            return Err(Error::Shape(format!(
                "tensordot: axis {x} of a (length {}) does not match axis {y} of b (length {})",
                a.shape()[x],
                b.shape()[y]
            )));
        }
    }
    let len =
        |x: &Array, axes: &[usize]| axes.iter().map(|&k| x.shape()[k]).product::<usize>() as isize;
    let perm_a: Vec<usize> = free_a.iter().chain(axes_a).copied().collect();
    let perm_b: Vec<usize> = axes_b.iter().chain(&free_b).copied().collect();
    let a2 = a
        .transpose(Some(&perm_a))?
        .reshape(&[len(a, &free_a), len(a, axes_a)])?;
    let b2 = b
        .transpose(Some(&perm_b))?
        .reshape(&[len(b, axes_b), len(b, &free_b)])?;
    let out_shape: Vec<isize> = free_a
        .iter()
        .map(|&k| a.shape()[k] as isize)
        .chain(free_b.iter().map(|&k| b.shape()[k] as isize))
        .collect();
    matmul2(&a2, &b2)?.reshape(&out_shape)
}

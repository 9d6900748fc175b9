//! Reductions: sum, prod, mean, var, std, min, max, argmin, argmax, any, all.
//!
//! Every reduction is a tree: each block reduces to a [`Partial`] (keeping the reduced axes
//! with length one), `split_every` neighbouring partials along the reduced axes are merged
//! per task, level after level, and one last task per output block finalizes. Partials
//! carry what merging needs: sums; counts, means and M2 for var/std (merged with Chan's
//! formula, so no sum-of-squares cancellation); values and global indices for argmin/argmax.

use std::sync::Arc;

use bytes::Bytes;
use ndarray::{ArcArray, ArrayD, ArrayViewD, Axis, IxDyn, Zip};
use partita_core::{Collection, Data, Error, Key, Layer, Op, Result, Task, Value, register_codec};
use serde::{Deserialize, Serialize};

use crate::array::{Array, Source, block_key};
use crate::chunk::{Chunk, Element};
use crate::dtype::DType;
use crate::grid::{ChunkGrid, for_each_index};
use crate::kernel::{Prim, Program};
use crate::rng::BlockPos;

/// What to reduce with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reduction {
    /// Sum (integers and bool sum in int64).
    Sum,
    /// Product (integers and bool in int64).
    Prod,
    /// Arithmetic mean (float64, or float32 for float32 input).
    Mean,
    /// Variance with `ddof` delta degrees of freedom.
    Var { ddof: u32 },
    /// Standard deviation with `ddof` delta degrees of freedom.
    Std { ddof: u32 },
    /// Minimum (NaN propagates, like NumPy).
    Min,
    /// Maximum (NaN propagates).
    Max,
    /// Index of the minimum along one axis, or in the flattened array.
    ArgMin,
    /// Index of the maximum.
    ArgMax,
    /// Whether any element is nonzero.
    Any,
    /// Whether all elements are nonzero.
    All,
}

impl Reduction {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "sum",
            Reduction::Prod => "prod",
            Reduction::Mean => "mean",
            Reduction::Var { .. } => "var",
            Reduction::Std { .. } => "std",
            Reduction::Min => "min",
            Reduction::Max => "max",
            Reduction::ArgMin => "argmin",
            Reduction::ArgMax => "argmax",
            Reduction::Any => "any",
            Reduction::All => "all",
        }
    }

    /// The dtype of the result for input of `dtype` (NumPy's choice).
    pub fn result_dtype(self, dtype: DType) -> DType {
        match self {
            Reduction::Sum | Reduction::Prod => {
                if dtype.is_float() {
                    dtype
                } else {
                    DType::I64
                }
            }
            Reduction::Mean | Reduction::Var { .. } | Reduction::Std { .. } => dtype.float_result(),
            Reduction::Min | Reduction::Max => dtype,
            Reduction::ArgMin | Reduction::ArgMax => DType::I64,
            Reduction::Any | Reduction::All => DType::Bool,
        }
    }

    fn needs_elements(self) -> bool {
        matches!(
            self,
            Reduction::Min | Reduction::Max | Reduction::ArgMin | Reduction::ArgMax
        )
    }

    fn is_arg(self) -> bool {
        matches!(self, Reduction::ArgMin | Reduction::ArgMax)
    }
}

/// Which axes to reduce.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Axes {
    /// Every axis (NumPy's `axis=None`).
    #[default]
    All,
    /// These axes; negative ones count from the end.
    These(Vec<isize>),
}

impl From<isize> for Axes {
    fn from(a: isize) -> Axes {
        Axes::These(vec![a])
    }
}
impl From<i32> for Axes {
    fn from(a: i32) -> Axes {
        Axes::These(vec![a as isize])
    }
}
impl From<usize> for Axes {
    fn from(a: usize) -> Axes {
        Axes::These(vec![a as isize])
    }
}
impl<const N: usize> From<[isize; N]> for Axes {
    fn from(a: [isize; N]) -> Axes {
        Axes::These(a.to_vec())
    }
}
impl From<Vec<isize>> for Axes {
    fn from(a: Vec<isize>) -> Axes {
        Axes::These(a)
    }
}
impl From<Option<isize>> for Axes {
    fn from(a: Option<isize>) -> Axes {
        a.map_or(Axes::All, |a| Axes::These(vec![a]))
    }
}

/// Options beyond the axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceOptions {
    /// Keep reduced axes with length one.
    pub keepdims: bool,
    /// How many partials one task merges (spread over the reduced axes), at least 2.
    pub split_every: usize,
}

impl Default for ReduceOptions {
    fn default() -> Self {
        ReduceOptions {
            keepdims: false,
            split_every: 16,
        }
    }
}

/// Resolve `axes` against `ndim`, checking bounds and repeats; sorted ascending.
pub fn normalize_axes(axes: &Axes, ndim: usize) -> Result<Vec<usize>> {
    let list: Vec<isize> = match axes {
        Axes::All => (0..ndim as isize).collect(),
        Axes::These(a) => a.clone(),
    };
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let n = ndim as isize;
        if a >= n || a < -n {
            return Err(Error::Shape(format!(
                "axis {a} is out of bounds for an array of dimension {ndim}"
            )));
        }
        let a = if a < 0 { (a + n) as usize } else { a as usize };
        if out.contains(&a) {
            return Err(Error::Shape(format!("axis {a} is repeated")));
        }
        out.push(a);
    }
    out.sort_unstable();
    Ok(out)
}

/// What a block or a merge of blocks reduces to.
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// Elements behind each output element (mean, var, std).
    pub count: u64,
    /// Sums, products, extremes, means or flags, with reduced axes of length one.
    pub a: Chunk,
    /// M2 for var/std, indices for argmin/argmax.
    pub b: Option<Chunk>,
}

impl Data for Partial {
    fn nbytes(&self) -> usize {
        self.a.nbytes() + self.b.as_ref().map_or(0, Data::nbytes)
    }
    fn codec(&self) -> &'static str {
        "array-partial"
    }
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(&self.count.to_le_bytes());
        let parts: Vec<Value> = std::iter::once(&self.a)
            .chain(&self.b)
            .map(|c| Value::new(c.clone()))
            .collect();
        partita_core::ValueList(parts).encode(out)
    }
}

fn decode_partial(payload: Bytes) -> Result<Value> {
    let head = payload
        .get(..8)
        .ok_or_else(|| Error::Codec("array partial: truncated".into()))?;
    let count = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    let mut framed = vec![1u8, 4, 0];
    framed.extend_from_slice(b"list");
    framed.extend_from_slice(&payload[8..]);
    let list = Value::decode(framed)?;
    let parts = &list.get::<partita_core::ValueList>()?.0;
    let chunk = |i: usize| -> Result<Option<Chunk>> {
        parts.get(i).map(|v| v.get::<Chunk>().cloned()).transpose()
    };
    let a = chunk(0)?.ok_or_else(|| Error::Codec("array partial without values".into()))?;
    Ok(Value::new(Partial {
        count,
        a,
        b: chunk(1)?,
    }))
}
register_codec!("array-partial", decode_partial);

fn keep_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect()
}

/// Sum over `axes`, keeping them with length one.
fn sum_keep<A>(a: ArrayViewD<'_, A>, axes: &[usize]) -> ArrayD<A>
where
    A: Clone + num_traits::Zero + std::ops::Add<Output = A>,
{
    let shape = keep_shape(a.shape(), axes);
    if axes.len() == a.ndim() {
        return ArrayD::from_elem(IxDyn(&shape), a.sum());
    }
    let Some((&last, rest)) = axes.split_last() else {
        return a
            .to_owned()
            .into_shape_with_order(IxDyn(&shape))
            .expect("same shape");
    };
    let mut cur = a.sum_axis(Axis(last));
    for &ax in rest.iter().rev() {
        cur = cur.sum_axis(Axis(ax));
    }
    cur.into_shape_with_order(IxDyn(&shape))
        .expect("same number of elements")
}

/// Fold over `axes` with `f`, keeping them with length one.
fn fold_keep<T: Clone>(
    a: ArrayViewD<'_, T>,
    axes: &[usize],
    init: T,
    f: impl Fn(&T, &T) -> T + Copy,
) -> ArrayD<T> {
    let shape = keep_shape(a.shape(), axes);
    let Some((&last, rest)) = axes.split_last() else {
        return a
            .to_owned()
            .into_shape_with_order(IxDyn(&shape))
            .expect("same shape");
    };
    let mut cur = a.fold_axis(Axis(last), init.clone(), |acc, x| f(acc, x));
    for &ax in rest.iter().rev() {
        cur = cur.fold_axis(Axis(ax), init.clone(), |acc, x| f(acc, x));
    }
    cur.into_shape_with_order(IxDyn(&shape))
        .expect("same number of elements")
}

/// Reduce over `axes` lane by lane, each lane starting from its own first element (for
/// reductions without an identity: min, max). Axes must be non-empty.
fn reduce_lanes_keep<T: Clone>(
    a: ArrayViewD<'_, T>,
    axes: &[usize],
    f: impl Fn(&T, &T) -> T + Copy,
) -> ArrayD<T> {
    let shape = keep_shape(a.shape(), axes);
    let lane_fold = |lane: ndarray::ArrayViewD<'_, T>| {
        let mut it = lane.iter();
        let first = it.next().expect("reduced axes are not empty").clone();
        it.fold(first, |acc, x| f(&acc, x))
    };
    let Some((&last, rest)) = axes.split_last() else {
        return a
            .to_owned()
            .into_shape_with_order(IxDyn(&shape))
            .expect("same shape");
    };
    let mut cur = a.map_axis(Axis(last), |lane| lane_fold(lane.into_dyn()));
    for &ax in rest.iter().rev() {
        cur = cur.map_axis(Axis(ax), |lane| lane_fold(lane.into_dyn()));
    }
    cur.into_shape_with_order(IxDyn(&shape))
        .expect("same number of elements")
}

fn nan_min<T: PartialOrd + Copy + Prim>(a: &T, b: &T) -> T {
    if is_nan(*a) || is_nan(*b) {
        return if is_nan(*a) { *a } else { *b };
    }
    if b < a { *b } else { *a }
}

fn nan_max<T: PartialOrd + Copy + Prim>(a: &T, b: &T) -> T {
    if is_nan(*a) || is_nan(*b) {
        return if is_nan(*a) { *a } else { *b };
    }
    if b > a { *b } else { *a }
}

#[allow(clippy::eq_op)]
fn is_nan<T: PartialOrd + Copy>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// Sum with eight independent accumulators: a single accumulator makes the loop wait on
/// each add's latency; eight let the adds vectorize and overlap.
pub(crate) fn sum8(xs: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Sum of squared deviations from `mean`, eight accumulators.
fn sq_dev8(xs: &[f64], mean: f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    for c in chunks {
        for k in 0..8 {
            let d = c[k] - mean;
            acc[k] += d * d;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Count, mean and M2 of a run, in one pass over memory: sub-blocks small enough to stay in
/// cache get an exact two-pass treatment and are merged with Chan's formula.
fn moments(xs: &[f64]) -> (u64, f64, f64) {
    const SUB: usize = 4096;
    let mut acc = (0u64, 0.0f64, 0.0f64);
    for s in xs.chunks(SUB) {
        let mean = sum8(s) / s.len() as f64;
        acc = chan(acc, (s.len() as u64, mean, sq_dev8(s, mean)));
    }
    acc
}

/// Chan et al.'s merge of (count, mean, M2) pairs.
fn chan((na, ma, m2a): (u64, f64, f64), (nb, mb, m2b): (u64, f64, f64)) -> (u64, f64, f64) {
    if na == 0 {
        return (nb, mb, m2b);
    }
    if nb == 0 {
        return (na, ma, m2a);
    }
    let n = na + nb;
    let delta = mb - ma;
    let (fa, fb, fnn) = (na as f64, nb as f64, n as f64);
    (
        n,
        ma + delta * fb / fnn,
        m2a + m2b + delta * delta * fa * fb / fnn,
    )
}

/// How argmin/argmax positions become global indices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ArgAxis {
    /// Along `axis`; this block starts at `offset` along it.
    Axis { axis: usize, offset: usize },
    /// In the flattened array of `shape`; this block starts at `offset`.
    Flat {
        shape: Vec<usize>,
        offset: Vec<usize>,
    },
}

fn block_partial(
    red: Reduction,
    chunk: &Chunk,
    axes: &[usize],
    arg: Option<&ArgAxis>,
) -> Result<Partial> {
    let count: u64 = axes.iter().map(|&a| chunk.shape()[a] as u64).product();
    if count == 0 && red.needs_elements() {
        // Stands for no elements: merging skips it, finishing with it alone is an error.
        let shape = keep_shape(chunk.shape(), axes);
        let a =
            crate::with_dtype!(chunk.dtype(), T => Chunk::new(ArrayD::<T>::default(IxDyn(&shape))));
        let b = red
            .is_arg()
            .then(|| Chunk::new(ArrayD::<i64>::zeros(IxDyn(&shape))));
        return Ok(Partial { count, a, b });
    }
    Ok(match red {
        Reduction::Sum | Reduction::Prod => {
            let prod = red == Reduction::Prod;
            macro_rules! acc {
                ($t:ty) => {{
                    let a = chunk.to_typed::<$t>();
                    let r = if prod {
                        fold_keep(a.view(), axes, 1 as $t, |x, y| *x * *y)
                    } else {
                        sum_keep(a.view(), axes)
                    };
                    Chunk::new(r)
                }};
            }
            let a = match chunk.dtype() {
                DType::F32 => acc!(f32),
                DType::F64 => acc!(f64),
                _ => {
                    let a = chunk.to_typed::<i64>();
                    Chunk::new(if prod {
                        fold_keep(a.view(), axes, 1i64, |x, y| x.wrapping_mul(*y))
                    } else {
                        fold_keep(a.view(), axes, 0i64, |x, y| x.wrapping_add(*y))
                    })
                }
            };
            Partial { count, a, b: None }
        }
        Reduction::Mean => {
            let a = chunk.to_typed::<f64>();
            Partial {
                count,
                a: Chunk::new(sum_keep(a.view(), axes)),
                b: None,
            }
        }
        Reduction::Var { .. } | Reduction::Std { .. } => {
            let a = chunk.to_typed::<f64>();
            if axes.len() == a.ndim() {
                let (c, mean, m2) = match a.as_slice_memory_order() {
                    Some(s) => moments(s),
                    None => moments(&a.iter().copied().collect::<Vec<f64>>()),
                };
                let shape = keep_shape(a.shape(), axes);
                Partial {
                    count: c,
                    a: Chunk::new(ArrayD::from_elem(IxDyn(&shape), mean)),
                    b: Some(Chunk::new(ArrayD::from_elem(IxDyn(&shape), m2))),
                }
            } else {
                let mean = sum_keep(a.view(), axes).mapv(|s| s / count.max(1) as f64);
                let centered = &a - &mean;
                let m2 = sum_keep(centered.mapv(|d| d * d).view(), axes);
                Partial {
                    count,
                    a: Chunk::new(mean),
                    b: Some(Chunk::new(m2)),
                }
            }
        }
        Reduction::Any | Reduction::All => {
            let a = chunk.to_typed::<bool>();
            let r = if red == Reduction::Any {
                fold_keep(a.view(), axes, false, |x, y| *x || *y)
            } else {
                fold_keep(a.view(), axes, true, |x, y| *x && *y)
            };
            Partial {
                count,
                a: Chunk::new(r),
                b: None,
            }
        }
        Reduction::Min | Reduction::Max => {
            macro_rules! ext {
                ($a:expr) => {{
                    let a = $a;
                    Chunk::new(if red == Reduction::Min {
                        reduce_lanes_keep(a.view(), axes, nan_min)
                    } else {
                        reduce_lanes_keep(a.view(), axes, nan_max)
                    })
                }};
            }
            let a = crate::with_chunk!(chunk, a => ext!(a));
            Partial { count, a, b: None }
        }
        Reduction::ArgMin | Reduction::ArgMax => {
            let arg =
                arg.ok_or_else(|| Error::Internal("argmin/argmax without an axis plan".into()))?;
            let (a, b) =
                crate::with_chunk!(chunk, a => arg_block(a.view(), red == Reduction::ArgMin, arg)?);
            Partial {
                count,
                a,
                b: Some(b),
            }
        }
    })
}

/// Whether `candidate` beats `best` for argmin (`min`) or argmax; NaN beats everything,
/// ties keep the earlier position.
fn better<T: PartialOrd + Copy>(candidate: T, best: T, min: bool) -> bool {
    if is_nan(best) {
        return false;
    }
    if is_nan(candidate) {
        return true;
    }
    if min {
        candidate < best
    } else {
        candidate > best
    }
}

fn arg_block<T: Element + PartialOrd>(
    a: ArrayViewD<'_, T>,
    min: bool,
    arg: &ArgAxis,
) -> Result<(Chunk, Chunk)> {
    match arg {
        ArgAxis::Axis { axis, offset } => {
            let ax = Axis(*axis);
            let best = a.map_axis(ax, |lane| {
                let mut bi = 0usize;
                let mut bv = lane[0];
                for (i, &v) in lane.iter().enumerate().skip(1) {
                    if better(v, bv, min) {
                        bi = i;
                        bv = v;
                    }
                }
                (bv, (bi + offset) as i64)
            });
            let values = best.mapv(|(v, _)| v).insert_axis(ax);
            let index = best.mapv(|(_, i)| i).insert_axis(ax);
            Ok((Chunk::new(values), Chunk::new(index)))
        }
        ArgAxis::Flat { shape, offset } => {
            let mut best: Option<(T, i64)> = None;
            for (ix, &v) in a.indexed_iter() {
                if best.is_none_or(|(bv, _)| better(v, bv, min)) {
                    let mut flat = 0i64;
                    for k in 0..shape.len() {
                        flat = flat * shape[k] as i64 + (ix[k] + offset[k]) as i64;
                    }
                    best = Some((v, flat));
                }
            }
            let (v, i) =
                best.ok_or_else(|| Error::Internal("empty block in argmin/argmax".into()))?;
            let ones = vec![1usize; a.ndim()];
            Ok((
                Chunk::new(ArrayD::from_elem(IxDyn(&ones), v)),
                Chunk::new(ArrayD::from_elem(IxDyn(&ones), i)),
            ))
        }
    }
}

fn zip_typed<T: Element>(x: &Chunk, y: &Chunk, f: impl Fn(T, T) -> T) -> Result<Chunk> {
    let (x, y) = (x.typed::<T>()?, y.typed::<T>()?);
    if x.shape() != y.shape() {
        return Err(Error::Internal(format!(
            "partials of shapes {:?} and {:?}",
            x.shape(),
            y.shape()
        )));
    }
    Ok(Chunk::new(
        Zip::from(x).and(y).map_collect(|&a, &b| f(a, b)),
    ))
}

fn merge(red: Reduction, x: Partial, y: &Partial) -> Result<Partial> {
    // A partial of no elements (a block a mask emptied) contributes nothing; min and max
    // have no identity to stand for it.
    if y.count == 0 {
        return Ok(x);
    }
    if x.count == 0 {
        return Ok(y.clone());
    }
    let count = x.count + y.count;
    Ok(match red {
        Reduction::Sum | Reduction::Mean => {
            let a = match x.a.dtype() {
                DType::F32 => zip_typed::<f32>(&x.a, &y.a, |a, b| a + b)?,
                DType::F64 => zip_typed::<f64>(&x.a, &y.a, |a, b| a + b)?,
                _ => zip_typed::<i64>(&x.a, &y.a, i64::wrapping_add)?,
            };
            Partial { count, a, b: None }
        }
        Reduction::Prod => {
            let a = match x.a.dtype() {
                DType::F32 => zip_typed::<f32>(&x.a, &y.a, |a, b| a * b)?,
                DType::F64 => zip_typed::<f64>(&x.a, &y.a, |a, b| a * b)?,
                _ => zip_typed::<i64>(&x.a, &y.a, i64::wrapping_mul)?,
            };
            Partial { count, a, b: None }
        }
        Reduction::Any => Partial {
            count,
            a: zip_typed::<bool>(&x.a, &y.a, |a, b| a || b)?,
            b: None,
        },
        Reduction::All => Partial {
            count,
            a: zip_typed::<bool>(&x.a, &y.a, |a, b| a && b)?,
            b: None,
        },
        Reduction::Min | Reduction::Max => {
            let min = red == Reduction::Min;
            macro_rules! ext {
                ($t:ty) => {
                    zip_typed::<$t>(&x.a, &y.a, |a, b| {
                        if min {
                            nan_min(&a, &b)
                        } else {
                            nan_max(&a, &b)
                        }
                    })?
                };
            }
            let a = match x.a.dtype() {
                DType::Bool => {
                    zip_typed::<bool>(&x.a, &y.a, |a, b| if min { a && b } else { a || b })?
                }
                DType::U8 => ext!(u8),
                DType::I32 => ext!(i32),
                DType::I64 => ext!(i64),
                DType::F32 => ext!(f32),
                DType::F64 => ext!(f64),
            };
            Partial { count, a, b: None }
        }
        Reduction::Var { .. } | Reduction::Std { .. } => {
            let (mx, my) = (x.a.typed::<f64>()?, y.a.typed::<f64>()?);
            let missing = || Error::Internal("var partial without M2".into());
            let (m2x, m2y) = (
                x.b.as_ref().ok_or_else(missing)?.typed::<f64>()?,
                y.b.as_ref().ok_or_else(missing)?.typed::<f64>()?,
            );
            let mut mean = mx.to_owned();
            let mut m2 = m2x.to_owned();
            Zip::from(&mut mean)
                .and(&mut m2)
                .and(my)
                .and(m2y)
                .for_each(|m, q, &mb, &qb| {
                    let (_, nm, nq) = chan((x.count, *m, *q), (y.count, mb, qb));
                    *m = nm;
                    *q = nq;
                });
            Partial {
                count,
                a: Chunk::new(mean),
                b: Some(Chunk::new(m2)),
            }
        }
        Reduction::ArgMin | Reduction::ArgMax => {
            let min = red == Reduction::ArgMin;
            let missing = || Error::Internal("arg partial without indices".into());
            let (ix, iy) = (
                x.b.as_ref().ok_or_else(missing)?.typed::<i64>()?,
                y.b.as_ref().ok_or_else(missing)?.typed::<i64>()?,
            );
            macro_rules! pick {
                ($t:ty) => {{
                    let (vx, vy) = (x.a.typed::<$t>()?, y.a.typed::<$t>()?);
                    let mut v = vx.to_owned();
                    let mut i = ix.to_owned();
                    Zip::from(&mut v)
                        .and(&mut i)
                        .and(vy)
                        .and(iy)
                        .for_each(|v, i, &bv, &bi| {
                            let tie = (is_nan(*v) && is_nan(bv)) || (!is_nan(*v) && bv == *v);
                            if better(bv, *v, min) || (tie && bi < *i) {
                                *v = bv;
                                *i = bi;
                            }
                        });
                    (Chunk::new(v), Chunk::new(i))
                }};
            }
            let (a, b) = match x.a.dtype() {
                DType::Bool => pick!(bool),
                DType::U8 => pick!(u8),
                DType::I32 => pick!(i32),
                DType::I64 => pick!(i64),
                DType::F32 => pick!(f32),
                DType::F64 => pick!(f64),
            };
            Partial {
                count,
                a,
                b: Some(b),
            }
        }
    })
}

/// Turn a fully merged partial into the result block.
fn finalize(red: Reduction, p: Partial, out_dtype: DType, out_shape: &[usize]) -> Result<Chunk> {
    if p.count == 0 && red.needs_elements() {
        return Err(Error::Shape(format!(
            "{} of no elements: zero-size reduction has no identity",
            red.name()
        )));
    }
    let chunk = match red {
        Reduction::Mean => {
            let n = p.count as f64;
            Chunk::new(p.a.typed::<f64>()?.mapv(|s| s / n))
        }
        Reduction::Var { ddof } | Reduction::Std { ddof } => {
            let m2 =
                p.b.ok_or_else(|| Error::Internal("var partial without M2".into()))?;
            let denom = (p.count as f64 - f64::from(ddof)).max(0.0);
            let std = matches!(red, Reduction::Std { .. });
            Chunk::new(m2.typed::<f64>()?.mapv(|q| {
                let v = q / denom;
                if std { v.sqrt() } else { v }
            }))
        }
        Reduction::ArgMin | Reduction::ArgMax => {
            p.b.ok_or_else(|| Error::Internal("arg partial without indices".into()))?
        }
        _ => p.a,
    };
    let chunk = cast_chunk(&chunk, out_dtype);
    reshape_chunk(chunk, out_shape)
}

fn cast_chunk(c: &Chunk, dtype: DType) -> Chunk {
    crate::with_dtype!(dtype, T => T::into_chunk(c.to_typed::<T>()))
}

fn reshape_chunk(c: Chunk, shape: &[usize]) -> Result<Chunk> {
    fn go<T: Element>(a: ArcArray<T, IxDyn>, shape: &[usize]) -> Result<Chunk> {
        let a = a
            .to_owned()
            .into_shape_with_order(IxDyn(shape))
            .map_err(|e| Error::Internal(format!("reduction result: {e}")))?;
        Ok(Chunk::new(a))
    }
    crate::with_chunk!(c, a => go(a, shape))
}

/// The per-block task: reduce one chunk to a partial.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReduceBlock {
    /// What to reduce with.
    pub reduction: Reduction,
    /// Axes to reduce (ascending).
    pub axes: Vec<usize>,
    /// For argmin/argmax: how positions become global indices.
    pub arg: Option<ArgAxis>,
    /// An elementwise expression fused into this task: the inputs are its operands' blocks
    /// and the block to reduce is never stored (see [`Program::eval_sum`]).
    #[serde(default)]
    pub program: Option<Program>,
    /// Where the block sits, when the program generates random numbers.
    #[serde(default)]
    pub block: Option<BlockPos>,
}

#[typetag::serde(name = "array-reduce-block")]
impl Op for ReduceBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let Some(program) = &self.program else {
            partita_core::op::expect_inputs("reduce-block", inputs, 1)?;
            let chunk = Chunk::from_value(&inputs[0])?;
            return block_partial(self.reduction, chunk, &self.axes, self.arg.as_ref())
                .map(Value::new);
        };
        let chunks = Chunk::from_values(inputs)?;
        if matches!(self.reduction, Reduction::Sum | Reduction::Mean)
            && let Some((sums, count)) =
                program.eval_sum(&chunks, self.block.as_ref(), &self.axes)?
        {
            return Ok(Value::new(Partial {
                count,
                a: Chunk::new(sums),
                b: None,
            }));
        }
        let chunk = program.eval(&chunks, self.block.as_ref())?;
        block_partial(self.reduction, &chunk, &self.axes, self.arg.as_ref()).map(Value::new)
    }
    fn name(&self) -> &str {
        self.reduction.name()
    }
}

/// Merge partials; with `finish`, also finalize into the result block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergePartials {
    /// What is being reduced.
    pub reduction: Reduction,
    /// Finalize into a block of this dtype and shape.
    pub finish: Option<(DType, Vec<usize>)>,
    /// Axis 0 is kept and its length comes from the partials, not `finish` (a filtered
    /// array's lengths are unknown when the graph is built).
    #[serde(default)]
    pub leading_from_data: bool,
}

#[typetag::serde(name = "array-merge-partials")]
impl Op for MergePartials {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut parts = inputs.iter().map(|v| v.get::<Partial>());
        let first = parts
            .next()
            .ok_or_else(|| Error::Internal("merge without inputs".into()))??
            .clone();
        let merged = parts.try_fold(first, |acc, p| merge(self.reduction, acc, p?))?;
        match &self.finish {
            Some((dtype, shape)) if self.leading_from_data => {
                let mut shape = shape.clone();
                if let (Some(first), Some(&n)) = (shape.first_mut(), merged.a.shape().first()) {
                    *first = n;
                }
                finalize(self.reduction, merged, *dtype, &shape).map(Value::new)
            }
            Some((dtype, shape)) => finalize(self.reduction, merged, *dtype, shape).map(Value::new),
            None => Ok(Value::new(merged)),
        }
    }
    fn name(&self) -> &str {
        self.reduction.name()
    }
}

/// Reduce `array` over `axes` (`Axes::All` for every axis).
pub fn reduce(
    array: &Array,
    reduction: Reduction,
    axes: impl Into<Axes>,
    options: ReduceOptions,
) -> Result<Array> {
    reduce_impl(array, reduction, axes, options, false)
}

/// [`reduce`]; with `leading_from_data`, axis 0 is kept and its length in each result block
/// is taken from the data rather than the grid (a filtered array's grid holds bounds).
pub(crate) fn reduce_impl(
    array: &Array,
    reduction: Reduction,
    axes: impl Into<Axes>,
    options: ReduceOptions,
    leading_from_data: bool,
) -> Result<Array> {
    let name = reduction.name();
    let axes_spec = axes.into();
    let axes = normalize_axes(&axes_spec, array.ndim()).map_err(|e| Error::Context {
        context: name.to_string(),
        source: Box::new(e),
    })?;
    let arg = reduction.is_arg();
    if arg && (axes.is_empty() || (axes.len() > 1 && axes.len() != array.ndim())) {
        return Err(Error::Shape(format!(
            "{name} takes one axis or none, got {axes:?}"
        )));
    }
    if reduction.needs_elements() && axes.iter().any(|&a| array.shape()[a] == 0) {
        return Err(Error::Shape(format!(
            "{name} of an array of shape {:?} over axes {axes:?}: zero-size reduction has no identity",
            array.shape()
        )));
    }
    let grid = array.grid();
    let ndim = array.ndim();
    let out_dtype = reduction.result_dtype(array.dtype());
    let split = options.split_every.max(2);
    let per_axis = ((split as f64).powf(1.0 / axes.len().max(1) as f64).floor() as usize).max(2);

    // Output grid: reduced axes become length one (kept) or vanish.
    let mut out_shape = Vec::new();
    let mut out_chunks = Vec::new();
    for a in 0..ndim {
        if axes.contains(&a) {
            if options.keepdims {
                out_shape.push(1);
                out_chunks.push(vec![1]);
            }
        } else {
            out_shape.push(array.shape()[a]);
            out_chunks.push(array.chunks()[a].clone());
        }
    }
    let out_grid = ChunkGrid::from_explicit(&out_shape, out_chunks)?;
    let out_name = Key::unique_name(name);
    let mut tasks = Vec::new();

    // Level 0: one partial per input block. An elementwise input is fused into these tasks
    // (its blocks are computed and reduced in one pass, never stored), as Dask's blockwise
    // fusion would; a program shared by two reductions is computed by each.
    let fused = match array.source() {
        Source::Elementwise(e) => Some(e),
        Source::Tasks(_) => None,
    };
    let level0: Arc<str> = format!("{out_name}-partial-0").into();
    for idx in grid.blocks() {
        let arg_axis = arg.then(|| {
            if axes.len() == 1 && ndim > 1 {
                ArgAxis::Axis {
                    axis: axes[0],
                    offset: grid.block_offset(&idx)[axes[0]],
                }
            } else {
                ArgAxis::Flat {
                    shape: array.shape().to_vec(),
                    offset: grid.block_offset(&idx),
                }
            }
        });
        let (program, block, deps) = match fused {
            Some(e) => (
                Some(e.program.clone()),
                e.block_pos(grid, &idx),
                e.input_keys(&idx),
            ),
            None => (None, None, vec![array.block_key(&idx)]),
        };
        let op = ReduceBlock {
            reduction,
            axes: axes.clone(),
            arg: arg_axis,
            program,
            block,
        };
        tasks.push(Task::new(block_key(&level0, &idx), Arc::new(op), deps));
    }

    // Merge levels until every reduced axis has one block.
    let mut counts = grid.blocks_shape();
    let mut level = 0;
    let mut level_name = level0;
    let merge_op: Arc<dyn Op> = Arc::new(MergePartials {
        reduction,
        finish: None,
        leading_from_data: false,
    });
    loop {
        let done = axes.iter().all(|&a| counts[a] == 1);
        let next_counts: Vec<usize> = (0..ndim)
            .map(|a| {
                if axes.contains(&a) {
                    counts[a].div_ceil(per_axis)
                } else {
                    counts[a]
                }
            })
            .collect();
        let last = done || axes.iter().all(|&a| next_counts[a] == 1);
        let group = |a: usize| if done { 1 } else { per_axis.min(counts[a]) };
        let next_name: Arc<str> = if last {
            Arc::clone(&out_name)
        } else {
            format!("{out_name}-partial-{}", level + 1).into()
        };
        let next_grid_counts = if done {
            counts.clone()
        } else {
            next_counts.clone()
        };
        let total: usize = next_grid_counts.iter().product();
        for flat in 0..total {
            // The index of this merged block.
            let mut idx = vec![0usize; ndim];
            let mut rest = flat;
            for a in (0..ndim).rev() {
                idx[a] = rest % next_grid_counts[a];
                rest /= next_grid_counts[a];
            }
            // Inputs: the group of partials along reduced axes.
            let mut deps = Vec::new();
            let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(ndim);
            for a in 0..ndim {
                if axes.contains(&a) {
                    let g = group(a);
                    ranges.push(idx[a] * g..((idx[a] + 1) * g).min(counts[a]));
                } else {
                    ranges.push(idx[a]..idx[a] + 1);
                }
            }
            for_each_index(&ranges, |src| deps.push(block_key(&level_name, src)));
            let (key, op) = if last {
                let out_idx: Vec<usize> = (0..ndim)
                    .filter(|a| !axes.contains(a) || options.keepdims)
                    .map(|a| idx[a])
                    .collect();
                let block_shape = out_grid.block_shape(&out_idx);
                let op: Arc<dyn Op> = Arc::new(MergePartials {
                    reduction,
                    finish: Some((out_dtype, block_shape)),
                    leading_from_data,
                });
                (block_key(&out_name, &out_idx), op)
            } else {
                (block_key(&next_name, &idx), Arc::clone(&merge_op))
            };
            tasks.push(Task::new(key, op, deps));
        }
        if last {
            break;
        }
        counts = next_counts;
        level += 1;
        level_name = next_name;
    }
    let layer_deps = match fused {
        Some(e) => e.input_layers(),
        None => vec![Arc::clone(array.layer())],
    };
    let layer = Layer::new(Arc::clone(&out_name), tasks, layer_deps);
    Ok(Array::from_layer(out_name, out_grid, out_dtype, layer))
}

macro_rules! reduction_methods {
    ($($method:ident, $with:ident => $red:expr, $doc:literal;)*) => {
        impl Array {
            $(
                #[doc = $doc]
                pub fn $method(&self, axes: impl Into<Axes>) -> Result<Array> {
                    reduce(self, $red, axes, ReduceOptions::default())
                }
                #[doc = concat!("[`Array::", stringify!($method), "`] with `keepdims` and `split_every`.")]
                pub fn $with(&self, axes: impl Into<Axes>, options: ReduceOptions) -> Result<Array> {
                    reduce(self, $red, axes, options)
                }
            )*
        }
    };
}

reduction_methods! {
    sum, sum_with => Reduction::Sum, "Sum over `axes` (`Axes::All` for all).";
    prod, prod_with => Reduction::Prod, "Product over `axes`.";
    mean, mean_with => Reduction::Mean, "Mean over `axes`.";
    min, min_with => Reduction::Min, "Minimum over `axes`.";
    max, max_with => Reduction::Max, "Maximum over `axes`.";
    any, any_with => Reduction::Any, "Whether any element over `axes` is nonzero.";
    all, all_with => Reduction::All, "Whether every element over `axes` is nonzero.";
}

impl Array {
    /// Variance over `axes` with `ddof` delta degrees of freedom.
    pub fn var(&self, axes: impl Into<Axes>, ddof: u32) -> Result<Array> {
        self.var_with(axes, ddof, ReduceOptions::default())
    }

    /// [`Array::var`] with `keepdims` and `split_every`.
    pub fn var_with(
        &self,
        axes: impl Into<Axes>,
        ddof: u32,
        options: ReduceOptions,
    ) -> Result<Array> {
        reduce(self, Reduction::Var { ddof }, axes, options)
    }

    /// Standard deviation over `axes` with `ddof` delta degrees of freedom.
    pub fn std(&self, axes: impl Into<Axes>, ddof: u32) -> Result<Array> {
        self.std_with(axes, ddof, ReduceOptions::default())
    }

    /// [`Array::std`] with `keepdims` and `split_every`.
    pub fn std_with(
        &self,
        axes: impl Into<Axes>,
        ddof: u32,
        options: ReduceOptions,
    ) -> Result<Array> {
        reduce(self, Reduction::Std { ddof }, axes, options)
    }

    /// Index of the minimum along `axis`, or in the flattened array for `None`.
    pub fn argmin(&self, axis: Option<isize>) -> Result<Array> {
        self.argmin_with(axis, ReduceOptions::default())
    }

    /// [`Array::argmin`] with `keepdims` and `split_every`.
    pub fn argmin_with(&self, axis: Option<isize>, options: ReduceOptions) -> Result<Array> {
        reduce(self, Reduction::ArgMin, axis, options)
    }

    /// Index of the maximum along `axis`, or in the flattened array for `None`.
    pub fn argmax(&self, axis: Option<isize>) -> Result<Array> {
        self.argmax_with(axis, ReduceOptions::default())
    }

    /// [`Array::argmax`] with `keepdims` and `split_every`.
    pub fn argmax_with(&self, axis: Option<isize>, options: ReduceOptions) -> Result<Array> {
        reduce(self, Reduction::ArgMax, axis, options)
    }
}

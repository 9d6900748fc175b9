//! Indexing with NumPy's semantics: integers, slices with any step (negative too),
//! `newaxis`, an ellipsis, and `take` along an axis; plus `concatenate` and `stack`.
//!
//! A slice keeps the input's chunk boundaries: the elements it selects inside one input
//! block form one output block, so every output block reads exactly one input block.

use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn, SliceInfo, SliceInfoElem};
use partita_core::{Collection, Error, Key, Op, Result, Value};
use serde::{Deserialize, Serialize};

use crate::array::Array;
use crate::chunk::{Chunk, Element};
use crate::dtype::DType;
use crate::grid::{ChunkGrid, Chunks};

/// One entry of an index expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// A single position (the axis disappears); negative counts from the end.
    At(isize),
    /// `start:stop:step` like Python (`None` for the defaults).
    Slice {
        /// First position, default depends on the step's sign.
        start: Option<isize>,
        /// End (exclusive), default depends on the step's sign.
        stop: Option<isize>,
        /// Step, nonzero; negative walks backwards.
        step: isize,
    },
    /// The whole axis (`:`).
    Full,
    /// A new axis of length one (`None` / `np.newaxis`).
    NewAxis,
    /// As many `Full`s as needed (`...`).
    Ellipsis,
}

impl Index {
    /// `start..stop` with step 1.
    pub fn range(start: isize, stop: isize) -> Index {
        Index::Slice {
            start: Some(start),
            stop: Some(stop),
            step: 1,
        }
    }

    /// `start:stop:step` with all three given.
    pub fn step(start: Option<isize>, stop: Option<isize>, step: isize) -> Index {
        Index::Slice { start, stop, step }
    }
}

/// Python's `slice.indices(len)`: normalized start, and the number of selected elements.
fn slice_indices(
    start: Option<isize>,
    stop: Option<isize>,
    step: isize,
    len: usize,
) -> Result<(isize, usize)> {
    if step == 0 {
        return Err(Error::Shape("slice step cannot be zero".into()));
    }
    let n = len as isize;
    let norm = |v: isize, lo: isize, hi: isize| {
        let v = if v < 0 { v + n } else { v };
        v.clamp(lo, hi)
    };
    let (start, stop) = if step > 0 {
        (
            start.map_or(0, |s| norm(s, 0, n)),
            stop.map_or(n, |s| norm(s, 0, n)),
        )
    } else {
        (
            start.map_or(n - 1, |s| norm(s, -1, n - 1)),
            stop.map_or(-1, |s| norm(s, -1, n - 1)),
        )
    };
    // (distance - 1) / |step| + 1, in unsigned arithmetic so no step can overflow.
    let count = if step > 0 && stop > start {
        (stop - start - 1) as usize / step.unsigned_abs() + 1
    } else if step < 0 && start > stop {
        (start - stop - 1) as usize / step.unsigned_abs() + 1
    } else {
        0
    };
    Ok((start, count))
}

/// How one output axis reads its input block.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum LocalSel {
    /// `count` elements from `start` by `step` within the block.
    Range {
        start: usize,
        count: usize,
        step: isize,
    },
    /// One element (the axis disappears).
    At(usize),
    /// Insert an axis of length one.
    NewAxis,
}

/// Select within one block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceBlock {
    /// One entry per input axis, plus inserted axes.
    pub sel: Vec<LocalSel>,
}

fn slice_typed<T: Element>(
    a: &ndarray::ArcArray<T, IxDyn>,
    elems: Vec<SliceInfoElem>,
) -> Result<Chunk> {
    let info = SliceInfo::<Vec<SliceInfoElem>, IxDyn, IxDyn>::try_from(elems)
        .map_err(|e| Error::Shape(format!("slicing a block of shape {:?}: {e}", a.shape())))?;
    Ok(Chunk::new(a.slice(info).as_standard_layout().into_owned()))
}

#[typetag::serde(name = "array-slice")]
impl Op for SliceBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("slice", inputs, 1)?;
        let chunk = Chunk::from_value(&inputs[0])?;
        // start + (count - 1) * step, checked: the fields may come from another process.
        let span = |start: usize, count: usize, step: isize| -> Result<isize> {
            (count as isize - 1)
                .checked_mul(step)
                .and_then(|d| d.checked_add(start as isize))
                .ok_or_else(|| {
                    Error::Shape(format!("slice of {count} by {step} from {start} overflows"))
                })
        };
        let elems: Vec<SliceInfoElem> = self
            .sel
            .iter()
            .map(|s| -> Result<SliceInfoElem> {
                Ok(match *s {
                    LocalSel::Range { count: 0, .. } => SliceInfoElem::Slice {
                        start: 0,
                        end: Some(0),
                        step: 1,
                    },
                    LocalSel::Range { start, count, step } if step > 0 => {
                        let end = span(start, count, step)? + 1;
                        SliceInfoElem::Slice {
                            start: start as isize,
                            end: Some(end),
                            step,
                        }
                    }
                    LocalSel::Range { start, count, step } => {
                        // ndarray walks a negative step from the end of [lo, hi).
                        let lo = span(start, count, step)?;
                        SliceInfoElem::Slice {
                            start: lo,
                            end: Some(start as isize + 1),
                            step,
                        }
                    }
                    LocalSel::At(i) => SliceInfoElem::Index(i as isize),
                    LocalSel::NewAxis => SliceInfoElem::NewAxis,
                })
            })
            .collect::<Result<_>>()?;
        let out = crate::with_chunk!(chunk, a => slice_typed(a, elems)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "slice"
    }
}

/// One output axis's plan: per output chunk, the input block and local selection.
enum AxisPlan {
    Sliced {
        chunks: Vec<(usize, LocalSel, usize)>,
    },
    At {
        block: usize,
        local: usize,
    },
    NewAxis,
}

impl Array {
    /// Index like NumPy: `x.index(&[Index::At(0), Index::step(None, None, -2), Index::NewAxis])`.
    /// Missing trailing entries mean whole axes.
    pub fn index(&self, index: &[Index]) -> Result<Array> {
        let ndim = self.ndim();
        let consuming = index
            .iter()
            .filter(|i| !matches!(i, Index::NewAxis | Index::Ellipsis))
            .count();
        let ellipses = index
            .iter()
            .filter(|i| matches!(i, Index::Ellipsis))
            .count();
        if ellipses > 1 {
            return Err(Error::Shape(
                "an index can only have a single ellipsis".into(),
            ));
        }
        if consuming > ndim {
            return Err(Error::Shape(format!(
                "too many indices: {consuming} for an array of shape {:?}",
                self.shape()
            )));
        }
        let mut expanded = Vec::with_capacity(index.len() + ndim);
        for i in index {
            if let Index::Ellipsis = i {
                expanded.extend(std::iter::repeat_n(Index::Full, ndim - consuming));
            } else {
                expanded.push(*i);
            }
        }
        let used = expanded
            .iter()
            .filter(|i| !matches!(i, Index::NewAxis))
            .count();
        expanded.extend(std::iter::repeat_n(Index::Full, ndim - used));

        let mut plans = Vec::with_capacity(expanded.len());
        let mut axis = 0;
        for entry in expanded {
            let plan = match entry {
                Index::NewAxis => AxisPlan::NewAxis,
                Index::At(i) => {
                    let len = self.shape()[axis];
                    let j = if i < 0 { i + len as isize } else { i };
                    if j < 0 || j >= len as isize {
                        return Err(Error::Shape(format!(
                            "index {i} is out of bounds for axis {axis} with size {len}"
                        )));
                    }
                    let starts = self.grid().starts(axis);
                    let block = starts.partition_point(|&s| s <= j as usize) - 1;
                    axis += 1;
                    AxisPlan::At {
                        block,
                        local: j as usize - starts[block],
                    }
                }
                Index::Full | Index::Slice { .. } => {
                    let (start, stop, step) = match entry {
                        Index::Slice { start, stop, step } => (start, stop, step),
                        _ => (None, None, 1),
                    };
                    let (first, count) = slice_indices(start, stop, step, self.shape()[axis])
                        .map_err(|e| Error::Context {
                            context: format!("axis {axis}"),
                            source: Box::new(e),
                        })?;
                    let plan = plan_axis(self.grid().starts(axis), first, count, step);
                    axis += 1;
                    AxisPlan::Sliced { chunks: plan }
                }
                Index::Ellipsis => unreachable!("expanded above"),
            };
            plans.push(plan);
        }

        let mut shape = Vec::new();
        let mut chunks = Vec::new();
        for p in &plans {
            match p {
                AxisPlan::Sliced { chunks: c } => {
                    shape.push(c.iter().map(|(_, _, n)| n).sum());
                    chunks.push(c.iter().map(|(_, _, n)| *n).collect::<Vec<_>>());
                }
                AxisPlan::NewAxis => {
                    shape.push(1);
                    chunks.push(vec![1]);
                }
                AxisPlan::At { .. } => {}
            }
        }
        let grid = ChunkGrid::from_explicit(&shape, chunks)?;
        let layer = Arc::clone(self.layer());
        Ok(Array::from_blocks(
            "getitem",
            grid,
            self.dtype(),
            vec![layer],
            |idx| {
                let mut out_axis = 0;
                let mut src = Vec::with_capacity(ndim);
                let mut sel = Vec::with_capacity(plans.len());
                for p in &plans {
                    match p {
                        AxisPlan::Sliced { chunks: c } => {
                            let (block, local, _) = c[idx[out_axis]];
                            src.push(block);
                            sel.push(local);
                            out_axis += 1;
                        }
                        AxisPlan::NewAxis => {
                            sel.push(LocalSel::NewAxis);
                            out_axis += 1;
                        }
                        AxisPlan::At { block, local } => {
                            src.push(*block);
                            sel.push(LocalSel::At(*local));
                        }
                    }
                }
                (
                    Arc::new(SliceBlock { sel }) as Arc<dyn Op>,
                    vec![self.block_key(&src)],
                )
            },
        ))
    }

    /// Elements at `indices` along `axis` (NumPy's `take`; negative indices count from the
    /// end). The result is cut along `axis` like the input.
    pub fn take(&self, indices: &[i64], axis: usize) -> Result<Array> {
        if axis >= self.ndim() {
            return Err(Error::Shape(format!(
                "take: axis {axis} is out of bounds for dimension {}",
                self.ndim()
            )));
        }
        let len = self.shape()[axis] as i64;
        let picks: Vec<usize> = indices
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + len } else { i };
                if j < 0 || j >= len {
                    Err(Error::Shape(format!(
                        "take: index {i} is out of bounds for axis {axis} with size {len}"
                    )))
                } else {
                    Ok(j as usize)
                }
            })
            .collect::<Result<_>>()?;
        let target = self.chunks()[axis]
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1);
        let mut shape = self.shape().to_vec();
        shape[axis] = picks.len();
        let mut chunks = self.chunks().to_vec();
        chunks[axis] = if picks.is_empty() {
            vec![0]
        } else {
            picks.chunks(target).map(<[usize]>::len).collect()
        };
        let grid = ChunkGrid::from_explicit(&shape, chunks)?;
        let starts = self.grid().starts(axis).to_vec();
        let layer = Arc::clone(self.layer());
        Ok(Array::from_blocks(
            "take",
            grid.clone(),
            self.dtype(),
            vec![layer],
            |idx| {
                let (o, n) = (grid.block_offset(idx)[axis], grid.block_shape(idx)[axis]);
                let mine: &[usize] = if picks.is_empty() {
                    &[]
                } else {
                    &picks[o..o + n]
                };
                // Source blocks in first-use order, and each pick as (input, local position).
                let mut blocks: Vec<usize> = Vec::new();
                let mut sel = Vec::with_capacity(mine.len());
                for &p in mine {
                    let b = starts.partition_point(|&s| s <= p) - 1;
                    let k = blocks.iter().position(|&x| x == b).unwrap_or_else(|| {
                        blocks.push(b);
                        blocks.len() - 1
                    });
                    sel.push((k, p - starts[b]));
                }
                if blocks.is_empty() {
                    blocks.push(0);
                }
                let deps: Vec<Key> = blocks
                    .iter()
                    .map(|&b| {
                        let mut src = idx.to_vec();
                        src[axis] = b;
                        self.block_key(&src)
                    })
                    .collect();
                (
                    Arc::new(TakeBlock { axis, picks: sel }) as Arc<dyn Op>,
                    deps,
                )
            },
        ))
    }
}

/// Plan an axis slice: group the selected positions by input block, in selection order.
fn plan_axis(
    starts: &[usize],
    first: isize,
    count: usize,
    step: isize,
) -> Vec<(usize, LocalSel, usize)> {
    if count == 0 {
        return vec![(
            0,
            LocalSel::Range {
                start: 0,
                count: 0,
                step: 1,
            },
            0,
        )];
    }
    let mut out: Vec<(usize, LocalSel, usize)> = Vec::new();
    let mut i = 0usize;
    while i < count {
        // Only the first position can be reached with a step beyond the axis length.
        let pos = if i == 0 {
            first as usize
        } else {
            (first + i as isize * step) as usize
        };
        let block = starts.partition_point(|&s| s <= pos) - 1;
        let (lo, hi) = (starts[block] as isize, starts[block + 1] as isize);
        // How many more selected positions stay inside this block.
        let p = pos as isize;
        let room = if step > 0 {
            (hi - 1 - p) as usize / step.unsigned_abs() + 1
        } else {
            (p - lo) as usize / step.unsigned_abs() + 1
        };
        let n = room.min(count - i);
        out.push((
            block,
            LocalSel::Range {
                start: (p - lo) as usize,
                count: n,
                step,
            },
            n,
        ));
        i += n;
    }
    out
}

/// Gather picked positions along an axis from several input blocks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TakeBlock {
    /// The axis.
    pub axis: usize,
    /// `(input number, position in that input)` per output position.
    pub picks: Vec<(usize, usize)>,
}

fn take_typed<T: Element>(
    inputs: &[&Chunk],
    axis: usize,
    picks: &[(usize, usize)],
) -> Result<Chunk> {
    let arrays = inputs
        .iter()
        .map(|c| c.typed::<T>())
        .collect::<Result<Vec<_>>>()?;
    let first = arrays
        .first()
        .ok_or_else(|| Error::Graph("take without inputs".into()))?;
    let mut shape = first.shape().to_vec();
    shape[axis] = picks.len();
    let mut out = ArrayD::<T>::default(IxDyn(&shape));
    for (o, &(k, p)) in picks.iter().enumerate() {
        let src = arrays
            .get(k)
            .ok_or_else(|| Error::Graph(format!("take reads input {k} of {}", arrays.len())))?;
        out.index_axis_mut(Axis(axis), o)
            .assign(&src.index_axis(Axis(axis), p));
    }
    Ok(Chunk::new(out))
}

#[typetag::serde(name = "array-take")]
impl Op for TakeBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let chunks = Chunk::from_values(inputs)?;
        let dtype = chunks
            .first()
            .ok_or_else(|| Error::Graph("take without inputs".into()))?
            .dtype();
        let (a, p) = (self.axis, &self.picks);
        let out = crate::with_dtype!(dtype, T => take_typed::<T>(&chunks, a, p)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "take"
    }
}

/// Join arrays along an existing axis. Dtypes promote; chunks along the other axes are
/// aligned (rechunked to the union of boundaries) where they differ.
pub fn concatenate(arrays: &[Array], axis: usize) -> Result<Array> {
    let first = arrays
        .first()
        .ok_or_else(|| Error::Shape("concatenate needs at least one array".into()))?;
    let ndim = first.ndim();
    if axis >= ndim {
        return Err(Error::Shape(format!(
            "concatenate: axis {axis} is out of bounds for dimension {ndim}"
        )));
    }
    for a in arrays {
        let same =
            a.ndim() == ndim && (0..ndim).all(|k| k == axis || a.shape()[k] == first.shape()[k]);
        if !same {
            let shapes: Vec<&[usize]> = arrays.iter().map(|a| a.shape()).collect();
            return Err(Error::Shape(format!(
                "concatenate along axis {axis}: shapes {shapes:?} differ off that axis"
            )));
        }
    }
    let dtype = arrays
        .iter()
        .map(Array::dtype)
        .reduce(DType::promote)
        .unwrap_or(DType::F64);
    // Union of chunk boundaries along every other axis.
    let mut common: Vec<Vec<usize>> = Vec::with_capacity(ndim);
    for k in 0..ndim {
        if k == axis {
            common.push(Vec::new());
            continue;
        }
        let mut bounds: Vec<usize> = arrays
            .iter()
            .flat_map(|a| a.grid().starts(k).to_vec())
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let sizes: Vec<usize> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
        common.push(if sizes.is_empty() {
            vec![first.shape()[k]]
        } else {
            sizes
        });
    }
    let mut parts = Vec::with_capacity(arrays.len());
    for a in arrays {
        let mut target = common.clone();
        target[axis] = a.chunks()[axis].clone();
        let a = a.astype(dtype)?.rechunk(Chunks::Explicit(target))?;
        parts.push(a);
    }
    let mut shape = first.shape().to_vec();
    shape[axis] = parts.iter().map(|a| a.shape()[axis]).sum();
    let mut chunks = common;
    chunks[axis] = parts
        .iter()
        .flat_map(|a| a.chunks()[axis].clone())
        .filter(|&c| c > 0)
        .collect();
    if chunks[axis].is_empty() {
        chunks[axis] = vec![0];
    }
    let grid = ChunkGrid::from_explicit(&shape, chunks)?;
    // Which part and which of its blocks each output block along `axis` is.
    let mut along: Vec<(usize, usize)> = Vec::new();
    for (p, a) in parts.iter().enumerate() {
        for (b, &c) in a.chunks()[axis].iter().enumerate() {
            if c > 0 || (shape[axis] == 0 && along.is_empty()) {
                along.push((p, b));
            }
        }
    }
    let layers = parts.iter().map(|a| Arc::clone(a.layer())).collect();
    let identity: Arc<dyn Op> = Arc::new(partita_core::op::Identity);
    Ok(Array::from_blocks(
        "concatenate",
        grid,
        dtype,
        layers,
        |idx| {
            let (p, b) = along[idx[axis]];
            let mut src = idx.to_vec();
            src[axis] = b;
            (Arc::clone(&identity), vec![parts[p].block_key(&src)])
        },
    ))
}

/// Join arrays of one shape along a new axis.
pub fn stack(arrays: &[Array], axis: usize) -> Result<Array> {
    let first = arrays
        .first()
        .ok_or_else(|| Error::Shape("stack needs at least one array".into()))?;
    if axis > first.ndim() {
        return Err(Error::Shape(format!(
            "stack: axis {axis} is out of bounds for dimension {}",
            first.ndim() + 1
        )));
    }
    if let Some(bad) = arrays.iter().find(|a| a.shape() != first.shape()) {
        return Err(Error::Shape(format!(
            "stack: shapes {:?} and {:?} differ",
            first.shape(),
            bad.shape()
        )));
    }
    let mut index = vec![Index::Full; axis];
    index.push(Index::NewAxis);
    let expanded = arrays
        .iter()
        .map(|a| a.index(&index))
        .collect::<Result<Vec<_>>>()?;
    concatenate(&expanded, axis)
}

//! `reshape`, by groups of axes.
//!
//! Input and output axes are matched into groups whose lengths multiply to the same number
//! (`(6, 4) -> (2, 3, 4)` has groups `[6] -> [2, 3]` and `[4] -> [4]`). Within a group, a
//! block can be reshaped on its own when the group's inner input axes are whole and each
//! leading-axis chunk covers whole rows of the output's inner axes; reshape rechunks the
//! input to that form first (as Dask does), then reshapes block by block in C order.

use std::sync::Arc;

use ndarray::IxDyn;
use partita_core::{Collection, Error, Op, Result, Value};
use serde::{Deserialize, Serialize};

use crate::array::Array;
use crate::chunk::{Chunk, Element};
use crate::creation::full;
use crate::grid::{ChunkGrid, Chunks};

/// Reshape one block (C order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReshapeBlock {
    /// The output block's shape.
    pub shape: Vec<usize>,
}

fn reshape_typed<T: Element>(a: &ndarray::ArcArray<T, IxDyn>, shape: &[usize]) -> Result<Chunk> {
    let owned = a.as_standard_layout().into_owned();
    let out = owned.into_shape_with_order(IxDyn(shape)).map_err(|e| {
        Error::Shape(format!(
            "reshaping a block of shape {:?} to {shape:?}: {e}",
            a.shape()
        ))
    })?;
    Ok(Chunk::new(out))
}

#[typetag::serde(name = "array-reshape")]
impl Op for ReshapeBlock {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita_core::op::expect_inputs("reshape", inputs, 1)?;
        let chunk = Chunk::from_value(&inputs[0])?;
        crate::chunk::checked_block_len(&self.shape, chunk.dtype())?;
        let out = crate::with_chunk!(chunk, a => reshape_typed(a, &self.shape)?);
        Ok(Value::new(out))
    }
    fn name(&self) -> &str {
        "reshape"
    }
}

/// Axes `ins` of the input become axes `outs` of the output.
struct Group {
    ins: std::ops::Range<usize>,
    outs: std::ops::Range<usize>,
}

fn groups(input: &[usize], output: &[usize]) -> Vec<Group> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < input.len() && j < output.len() {
        let (si, sj) = (i, j);
        let (mut pi, mut pj) = (input[i], output[j]);
        i += 1;
        j += 1;
        while pi != pj {
            if pi < pj {
                pi *= input[i];
                i += 1;
            } else {
                pj *= output[j];
                j += 1;
            }
        }
        // Trailing length-one axes on either side join this group.
        while i < input.len() && input[i] == 1 && (j >= output.len() || output[j] != 1) {
            i += 1;
        }
        while j < output.len() && output[j] == 1 && (i >= input.len() || input[i] != 1) {
            j += 1;
        }
        out.push(Group {
            ins: si..i,
            outs: sj..j,
        });
    }
    // Whatever is left is length one.
    if i < input.len() || j < output.len() {
        match out.last_mut() {
            Some(g) => {
                g.ins.end = input.len();
                g.outs.end = output.len();
            }
            None => out.push(Group {
                ins: i..input.len(),
                outs: j..output.len(),
            }),
        }
    }
    out
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Array {
    /// The same elements in another shape (C order); one entry may be `-1` to infer it.
    /// Chunks are adjusted where the new shape needs it.
    pub fn reshape(&self, shape: &[isize]) -> Result<Array> {
        let size = self.size();
        let unknown = shape.iter().filter(|&&d| d == -1).count();
        if unknown > 1 || shape.iter().any(|&d| d < -1) {
            return Err(Error::Shape(format!(
                "reshape: invalid shape {shape:?} (one -1 at most, no other negatives)"
            )));
        }
        let overflow = || {
            Error::Shape(format!(
                "reshape: shape {shape:?} has more elements than can exist"
            ))
        };
        let known = shape
            .iter()
            .filter(|&&d| d >= 0)
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
            .ok_or_else(overflow)?;
        let out_shape: Vec<usize> = shape
            .iter()
            .map(|&d| {
                if d == -1 {
                    size.checked_div(known).unwrap_or(0)
                } else {
                    d as usize
                }
            })
            .collect();
        let out_size = out_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(overflow)?;
        if out_size != size || (unknown == 1 && known > 0 && !size.is_multiple_of(known)) {
            return Err(Error::Shape(format!(
                "reshape: cannot reshape an array of shape {:?} ({size} elements) into {shape:?}",
                self.shape()
            )));
        }
        if out_shape == self.shape() {
            return Ok(self.clone());
        }
        if size == 0 {
            return full(
                &out_shape,
                0,
                self.dtype(),
                out_shape.iter().map(|&d| d.max(1)).collect::<Vec<_>>(),
            );
        }
        let in_shape = self.shape().to_vec();
        let groups = groups(&in_shape, &out_shape);

        // Rechunk the input so every group can be reshaped block by block.
        let mut target: Vec<Vec<usize>> = self.chunks().to_vec();
        for g in &groups {
            let Some(lead) = g.ins.clone().next() else {
                continue;
            };
            let inner_in: usize = in_shape[g.ins.start + 1..g.ins.end].iter().product();
            let inner_out: usize = out_shape
                .get(g.outs.start + 1..g.outs.end)
                .map_or(1, |s| s.iter().product());
            for a in g.ins.start + 1..g.ins.end {
                target[a] = vec![in_shape[a]];
            }
            let step = inner_out / gcd(inner_out, inner_in);
            if target[lead].iter().any(|c| c % step != 0) {
                let biggest = target[lead].iter().copied().max().unwrap_or(step);
                let size = (biggest / step).max(1) * step;
                target[lead] =
                    ChunkGrid::new(&[in_shape[lead]], &Chunks::Size(size), self.dtype())?.chunks()
                        [0]
                    .clone();
            }
        }
        let input = self.rechunk(Chunks::Explicit(target))?;

        // Output chunks and, per output block, the input block it reshapes.
        let mut out_chunks: Vec<Vec<usize>> = out_shape.iter().map(|&d| vec![d]).collect();
        for g in &groups {
            let (Some(lead_in), Some(lead_out)) = (g.ins.clone().next(), g.outs.clone().next())
            else {
                continue;
            };
            let inner_in: usize = in_shape[g.ins.start + 1..g.ins.end].iter().product();
            let inner_out: usize = out_shape[g.outs.start + 1..g.outs.end].iter().product();
            out_chunks[lead_out] = input.chunks()[lead_in]
                .iter()
                .map(|c| c * inner_in / inner_out)
                .collect();
        }
        let grid = ChunkGrid::from_explicit(&out_shape, out_chunks)?;
        let layer = Arc::clone(input.layer());
        Ok(Array::from_blocks(
            "reshape",
            grid.clone(),
            self.dtype(),
            vec![layer],
            |idx| {
                let mut src = vec![0usize; in_shape.len()];
                for g in &groups {
                    if let (Some(lead_in), Some(lead_out)) =
                        (g.ins.clone().next(), g.outs.clone().next())
                    {
                        src[lead_in] = idx[lead_out];
                    }
                }
                let op = ReshapeBlock {
                    shape: grid.block_shape(idx),
                };
                (Arc::new(op) as Arc<dyn Op>, vec![input.block_key(&src)])
            },
        ))
    }
}

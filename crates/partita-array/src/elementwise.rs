//! Elementwise operations: broadcasting, chunk alignment, and fusion while building.
//!
//! An elementwise result is an [`Elementwise`]: a [`Program`] over input arrays plus, for
//! each input, how an output block maps to one of its blocks (broadcast axes always read
//! block 0). Applying another elementwise operation to it inlines its program instead of
//! reading its chunks, so `((x + 1) * y).exp()` is one pass per chunk. It becomes tasks
//! (one [`ElementwiseKernel`] per block) only when something else consumes it.

use std::sync::Arc;

use partita_core::{Collection, Error, Key, Layer, Op, Result, Task, Value};
use serde::{Deserialize, Serialize};

use crate::array::{Array, Source, block_key};
use crate::chunk::Chunk;
use crate::dtype::DType;
use crate::grid::ChunkGrid;
use crate::kernel::{BinaryOp, NodeKind, Program, Scalar, UnaryOp, broadcast_shapes};
use crate::rechunk::{align_to, common_chunks};
use crate::rng::BlockPos;

/// Programs longer than this are not inlined further: the input is read as chunks instead,
/// which keeps building a long chain of operations linear.
const MAX_INLINE_NODES: usize = 256;

/// How an output block index maps to an input's block index, per input axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AxisMap {
    /// Same block index as this output axis.
    Follow(usize),
    /// A broadcast axis of length one: always block 0.
    Zero,
}

pub(crate) struct ElementwiseInput {
    pub array: Array,
    pub map: Vec<AxisMap>,
}

/// A fused elementwise expression over input arrays.
pub(crate) struct Elementwise {
    pub program: Program,
    pub inputs: Vec<ElementwiseInput>,
}

impl Elementwise {
    /// One task per output block running the whole program.
    pub(crate) fn materialize(&self, name: &Arc<str>, grid: &ChunkGrid) -> Arc<Layer> {
        // Without random leaves every block runs the same op; with them each block's op says
        // where the block is, so it can generate its numbers.
        let shared: Arc<dyn Op> = Arc::new(ElementwiseKernel {
            program: self.program.clone(),
            block: None,
        });
        let tasks = grid
            .blocks()
            .map(|idx| {
                let op = match self.block_pos(grid, &idx) {
                    None => Arc::clone(&shared),
                    block => Arc::new(ElementwiseKernel {
                        program: self.program.clone(),
                        block,
                    }),
                };
                Task::new(block_key(name, &idx), op, self.input_keys(&idx))
            })
            .collect();
        Layer::new(Arc::clone(name), tasks, self.input_layers())
    }

    /// Where block `idx` sits, for programs that generate random numbers.
    pub(crate) fn block_pos(&self, grid: &ChunkGrid, idx: &[usize]) -> Option<BlockPos> {
        (!self.program.randoms.is_empty()).then(|| BlockPos {
            offset: grid.block_offset(idx),
            shape: grid.block_shape(idx),
        })
    }

    /// The expression with its result's axes permuted (result axis `i` is old axis
    /// `axes[i]`), when it can be written without reading chunks: a program over random
    /// leaves and scalars only, whose leaves are permuted in turn.
    pub(crate) fn transposed(&self, axes: &[usize]) -> Option<Elementwise> {
        if !self.inputs.is_empty() {
            return None;
        }
        let mut program = self.program.clone();
        for leaf in &mut program.randoms {
            *leaf = leaf.transposed(axes);
        }
        Some(Elementwise {
            program,
            inputs: Vec::new(),
        })
    }

    /// The input blocks output block `idx` reads, in program input order.
    pub(crate) fn input_keys(&self, idx: &[usize]) -> Vec<Key> {
        self.inputs
            .iter()
            .map(|input| {
                let in_idx: Vec<usize> = input
                    .map
                    .iter()
                    .map(|m| match *m {
                        AxisMap::Follow(axis) => idx[axis],
                        AxisMap::Zero => 0,
                    })
                    .collect();
                input.array.block_key(&in_idx)
            })
            .collect()
    }

    /// The layers of the inputs.
    pub(crate) fn input_layers(&self) -> Vec<Arc<Layer>> {
        self.inputs
            .iter()
            .map(|i| Arc::clone(i.array.layer()))
            .collect()
    }
}

/// The task op: evaluate a program over input chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElementwiseKernel {
    /// The fused expression.
    pub program: Program,
    /// Where the block sits, when the program generates random numbers.
    #[serde(default)]
    pub block: Option<BlockPos>,
}

#[typetag::serde(name = "array-elementwise")]
impl Op for ElementwiseKernel {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let chunks = Chunk::from_values(inputs)?;
        self.program
            .eval(&chunks, self.block.as_ref())
            .map(Value::new)
    }
    fn name(&self) -> &str {
        "elementwise"
    }
}

/// An operand of an elementwise operation: an array or a Python-style scalar.
#[derive(Clone, Debug)]
pub enum Operand {
    /// An array.
    Array(Array),
    /// A scalar; it adopts the array operand's dtype where NumPy would (NEP 50).
    Scalar(Scalar),
}

impl From<&Array> for Operand {
    fn from(a: &Array) -> Operand {
        Operand::Array(a.clone())
    }
}
impl From<Array> for Operand {
    fn from(a: Array) -> Operand {
        Operand::Array(a)
    }
}
macro_rules! scalar_operand {
    ($($t:ty),*) => {$(
        impl From<$t> for Operand {
            fn from(x: $t) -> Operand {
                Operand::Scalar(Scalar::from(x))
            }
        }
    )*};
}
scalar_operand!(f64, f32, i64, i32, u8, bool);

/// The dtype a Python scalar takes next to an array of `other` (NumPy 2's weak scalars).
fn weak_scalar_dtype(s: Scalar, other: DType) -> DType {
    match s {
        Scalar::Bool(_) => other,
        Scalar::Int(_) if other == DType::Bool => DType::I64,
        Scalar::Int(_) => other,
        Scalar::Float(_) if other.is_float() => other,
        Scalar::Float(_) => DType::F64,
    }
}

/// Builds one elementwise result from its operands.
struct Builder {
    program: Program,
    inputs: Vec<ElementwiseInput>,
    shape: Vec<usize>,
    chunks: Vec<Vec<usize>>,
}

impl Builder {
    /// Plan the output of an operation over `arrays`: the broadcast shape, and chunks every
    /// operand is rechunked to where they differ (the union of their boundaries).
    fn new(op_name: &str, arrays: &[&Array]) -> Result<Builder> {
        let shape = broadcast_shapes(arrays.iter().map(|a| a.shape())).map_err(|_| {
            let shapes: Vec<&[usize]> = arrays.iter().map(|a| a.shape()).collect();
            Error::Shape(format!(
                "{op_name}: operands of shapes {shapes:?} cannot be broadcast together"
            ))
        })?;
        let chunks = common_chunks(&shape, arrays);
        Ok(Builder {
            program: Program::default(),
            inputs: Vec::new(),
            shape,
            chunks,
        })
    }

    /// A node for an array operand: inline its expression when it is elementwise over the
    /// same shape, else read its chunks.
    fn array(&mut self, a: &Array) -> Result<u32> {
        let a = &align_to(a, &self.shape, &self.chunks)?;
        if let Source::Elementwise(e) = a.source()
            && a.shape() == self.shape.as_slice()
            && a.chunks() == self.chunks.as_slice()
            && e.program.nodes.len() + self.program.nodes.len() <= MAX_INLINE_NODES
        {
            let nodes: Vec<u32> = e
                .inputs
                .iter()
                .map(|i| self.input(&i.array, i.map.clone()))
                .collect();
            return Ok(self.program.inline(&e.program, &nodes));
        }
        let offset = self.shape.len() - a.ndim();
        let map = (0..a.ndim())
            .map(|axis| {
                if a.shape()[axis] == self.shape[axis + offset] {
                    AxisMap::Follow(axis + offset)
                } else {
                    AxisMap::Zero
                }
            })
            .collect();
        Ok(self.input(a, map))
    }

    fn input(&mut self, a: &Array, map: Vec<AxisMap>) -> u32 {
        let position = self
            .inputs
            .iter()
            .position(|i| i.array.ptr_eq(a) && i.map == map);
        let k = position.unwrap_or_else(|| {
            self.inputs.push(ElementwiseInput {
                array: a.clone(),
                map,
            });
            self.inputs.len() - 1
        });
        // Reuse the node if this input was read already.
        if let Some(i) = self
            .program
            .nodes
            .iter()
            .position(|n| n.kind == NodeKind::Input(k as u32))
        {
            return i as u32;
        }
        self.program.push(NodeKind::Input(k as u32), a.dtype())
    }

    fn operand(&mut self, o: &Operand, other: DType) -> Result<u32> {
        Ok(match o {
            Operand::Array(a) => self.array(a)?,
            Operand::Scalar(s) => self
                .program
                .push(NodeKind::Scalar(*s), weak_scalar_dtype(*s, other)),
        })
    }

    fn finish(self, prefix: &str) -> Result<Array> {
        let dtype = self
            .program
            .result_dtype()
            .ok_or_else(|| Error::Internal("empty program".into()))?;
        let grid = ChunkGrid::from_explicit(&self.shape, self.chunks)?;
        let name = Key::unique_name(prefix);
        Ok(Array::from_elementwise(
            name,
            grid,
            dtype,
            Elementwise {
                program: self.program,
                inputs: self.inputs,
            },
        ))
    }
}

/// The dtype a scalar operand adopts next to `partner`; an integer that does not fit
/// `partner` is an error for arithmetic (NumPy 2's OverflowError) and compares as int64.
fn scalar_partner(op: BinaryOp, name: &str, o: &Operand, partner: Option<DType>) -> Result<DType> {
    let partner = partner.unwrap_or(DType::F64);
    if let Operand::Scalar(Scalar::Int(v)) = o {
        let fits = match partner {
            DType::U8 => u8::try_from(*v).is_ok(),
            DType::I32 => i32::try_from(*v).is_ok(),
            _ => true,
        };
        if !fits {
            if op.is_comparison() {
                return Ok(DType::I64);
            }
            return Err(Error::Type(format!(
                "{name}: integer {v} is out of bounds for {partner}"
            )));
        }
    }
    Ok(partner)
}

fn operand_dtype(o: &Operand) -> Option<DType> {
    match o {
        Operand::Array(a) => Some(a.dtype()),
        Operand::Scalar(_) => None,
    }
}

fn arrays_of<'a>(ops: &[&'a Operand]) -> Vec<&'a Array> {
    ops.iter()
        .filter_map(|o| match *o {
            Operand::Array(a) => Some(a),
            Operand::Scalar(_) => None,
        })
        .collect()
}

/// `a op b` with broadcasting; at least one operand must be an array.
pub fn binary(op: BinaryOp, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Array> {
    let (a, b) = (a.into(), b.into());
    let name = format!("{op:?}").to_lowercase();
    let arrays = arrays_of(&[&a, &b]);
    if arrays.is_empty() {
        return Err(Error::Type(format!(
            "{name}: at least one operand must be an array"
        )));
    }
    let mut builder = Builder::new(&name, &arrays)?;
    let (da, db) = (operand_dtype(&a), operand_dtype(&b));
    let x = builder.operand(&a, scalar_partner(op, &name, &a, db.or(da))?)?;
    let y = builder.operand(&b, scalar_partner(op, &name, &b, da.or(db))?)?;
    builder
        .program
        .binary(op, x, y)
        .map_err(|e| Error::Context {
            context: format!("{name} of {} and {}", describe(&a), describe(&b)),
            source: Box::new(e),
        })?;
    builder.finish(&name)
}

fn describe(o: &Operand) -> String {
    match o {
        Operand::Array(a) => format!("{} array of shape {:?}", a.dtype(), a.shape()),
        Operand::Scalar(s) => format!("scalar {s:?}"),
    }
}

/// `op(a)` elementwise.
pub fn unary(op: UnaryOp, a: &Array) -> Result<Array> {
    let name = format!("{op:?}").to_lowercase();
    let mut builder = Builder::new(&name, &[a])?;
    let x = builder.array(a)?;
    builder.program.unary(op, x).map_err(|e| Error::Context {
        context: format!("{name} of a {} array", a.dtype()),
        source: Box::new(e),
    })?;
    builder.finish(&name)
}

/// `where(cond, a, b)`: elements of `a` where `cond` is true, of `b` elsewhere.
pub fn where_(
    cond: impl Into<Operand>,
    a: impl Into<Operand>,
    b: impl Into<Operand>,
) -> Result<Array> {
    let (c, a, b) = (cond.into(), a.into(), b.into());
    let arrays = arrays_of(&[&c, &a, &b]);
    if arrays.is_empty() {
        return Err(Error::Type(
            "where: at least one operand must be an array".into(),
        ));
    }
    let mut builder = Builder::new("where", &arrays)?;
    // Two scalar branches keep their own kinds: where(c, 1, 2) is int64.
    let natural = |o: &Operand| match o {
        Operand::Array(a) => a.dtype(),
        Operand::Scalar(s) => s.natural_dtype(),
    };
    let (da, db) = (operand_dtype(&a), operand_dtype(&b));
    let both = DType::promote(natural(&a), natural(&b));
    let cn = builder.operand(&c, DType::Bool)?;
    let x = builder.operand(&a, db.or(da).unwrap_or(both))?;
    let y = builder.operand(&b, da.or(db).unwrap_or(both))?;
    builder.program.select(cn, x, y);
    builder.finish("where")
}

/// Convert to another dtype (NumPy's `astype`).
pub fn astype(a: &Array, dtype: DType) -> Result<Array> {
    if a.dtype() == dtype {
        return Ok(a.clone());
    }
    let mut builder = Builder::new("astype", &[a])?;
    let x = builder.array(a)?;
    builder.program.push(NodeKind::Cast(x), dtype);
    builder.finish("astype")
}

macro_rules! binary_methods {
    ($($method:ident => $op:ident, $doc:literal;)*) => {
        impl Array {
            $(
                #[doc = $doc]
                pub fn $method(&self, other: impl Into<Operand>) -> Result<Array> {
                    binary(BinaryOp::$op, self, other)
                }
            )*
        }
    };
}

binary_methods! {
    add => Add, "Elementwise `self + other`.";
    sub => Sub, "Elementwise `self - other`.";
    mul => Mul, "Elementwise `self * other`.";
    div => Div, "Elementwise true division (always floating point).";
    floor_div => FloorDiv, "Elementwise floor division (`//`).";
    rem => Rem, "Elementwise remainder with the divisor's sign (`%`).";
    pow => Pow, "Elementwise power.";
    minimum => Minimum, "Elementwise minimum (NaN propagates).";
    maximum => Maximum, "Elementwise maximum (NaN propagates).";
    equal => Eq, "Elementwise `==`.";
    not_equal => Ne, "Elementwise `!=`.";
    less => Lt, "Elementwise `<`.";
    less_equal => Le, "Elementwise `<=`.";
    greater => Gt, "Elementwise `>`.";
    greater_equal => Ge, "Elementwise `>=`.";
    logical_and => And, "Logical and for bool, bitwise and for integers.";
    logical_or => Or, "Logical or for bool, bitwise or for integers.";
    logical_xor => Xor, "Logical xor for bool, bitwise xor for integers.";
    arctan2 => Atan2, "Elementwise `atan2(self, other)`.";
    hypot => Hypot, "Elementwise `sqrt(self² + other²)`.";
}

macro_rules! unary_methods {
    ($($method:ident => $op:ident;)*) => {
        impl Array {
            $(
                #[doc = concat!("Elementwise `", stringify!($method), "`.")]
                pub fn $method(&self) -> Result<Array> {
                    unary(UnaryOp::$op, self)
                }
            )*
        }
    };
}

unary_methods! {
    neg => Neg; abs => Abs; sign => Sign; square => Square; logical_not => Not;
    exp => Exp; expm1 => Expm1; log => Log; log1p => Log1p; log2 => Log2; log10 => Log10;
    sqrt => Sqrt; sin => Sin; cos => Cos; tan => Tan; arcsin => Arcsin; arccos => Arccos;
    arctan => Arctan; sinh => Sinh; cosh => Cosh; tanh => Tanh; floor => Floor; ceil => Ceil;
    round => Round; trunc => Trunc; isnan => IsNan; isinf => IsInf; isfinite => IsFinite;
}

impl Array {
    /// Convert to another dtype.
    pub fn astype(&self, dtype: DType) -> Result<Array> {
        astype(self, dtype)
    }

    /// Limit values to `[min, max]` (NumPy's `clip`).
    pub fn clip(&self, min: impl Into<Operand>, max: impl Into<Operand>) -> Result<Array> {
        self.maximum(min)?.minimum(max)
    }
}

macro_rules! operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl<R: Into<Operand>> std::ops::$trait<R> for &Array {
            type Output = Result<Array>;
            fn $method(self, rhs: R) -> Result<Array> {
                binary(BinaryOp::$op, self, rhs)
            }
        }
        impl<R: Into<Operand>> std::ops::$trait<R> for Array {
            type Output = Result<Array>;
            fn $method(self, rhs: R) -> Result<Array> {
                binary(BinaryOp::$op, &self, rhs)
            }
        }
    };
}

operator!(Add, add, Add);
operator!(Sub, sub, Sub);
operator!(Mul, mul, Mul);
operator!(Div, div, Div);
operator!(Rem, rem, Rem);
operator!(BitAnd, bitand, And);
operator!(BitOr, bitor, Or);
operator!(BitXor, bitxor, Xor);

impl std::ops::Neg for &Array {
    type Output = Result<Array>;
    fn neg(self) -> Result<Array> {
        unary(UnaryOp::Neg, self)
    }
}

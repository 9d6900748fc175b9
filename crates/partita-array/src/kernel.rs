//! Elementwise programs: many elementwise operations run as one pass over a chunk.
//!
//! A [`Program`] is a list of typed nodes (inputs, scalars, unary and binary operations,
//! `where`, casts), each referring only to earlier nodes. [`Program::eval`] broadcasts its
//! input chunks against each other (NumPy rules) and evaluates the nodes over tiles of
//! [`TILE`] elements: every node's tile buffer stays in cache, and the only chunk-sized
//! allocation is the result. The builder resolves dtypes up front, so at run time every
//! binary operation sees two operands of the same dtype.

use ndarray::{ArrayD, IxDyn};
use partita_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::chunk::{Chunk, Element, checked_block_len};
use crate::dtype::DType;
use crate::reduction::sum8;
use crate::rng::{BlockPos, RandomGen, RandomLeaf};

/// Elements per tile.
pub const TILE: usize = 1024;

/// Operations on one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sign,
    Square,
    /// Logical not for bool, bitwise not for integers.
    Not,
    Exp,
    Expm1,
    Log,
    Log1p,
    Log2,
    Log10,
    Sqrt,
    Sin,
    Cos,
    Tan,
    Arcsin,
    Arccos,
    Arctan,
    Sinh,
    Cosh,
    Tanh,
    Floor,
    Ceil,
    /// Round half to even, like NumPy.
    Round,
    Trunc,
    IsNan,
    IsInf,
    IsFinite,
}

/// Operations on two operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// True division (always floating point).
    Div,
    /// Floor division, rounding toward negative infinity like Python.
    FloorDiv,
    /// Remainder with the sign of the divisor, like Python and NumPy.
    Rem,
    Pow,
    /// Elementwise minimum; NaN wins, like `numpy.minimum`.
    Minimum,
    Maximum,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Logical for bool, bitwise for integers.
    And,
    Or,
    Xor,
    Atan2,
    Hypot,
}

impl BinaryOp {
    /// Comparisons produce bool.
    pub fn is_comparison(self) -> bool {
        use BinaryOp::*;
        matches!(self, Eq | Ne | Lt | Le | Gt | Ge)
    }
}

/// A constant in a program.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
}

impl Scalar {
    /// The dtype NumPy gives a Python scalar of this kind on its own.
    pub fn natural_dtype(self) -> DType {
        match self {
            Scalar::Bool(_) => DType::Bool,
            Scalar::Int(_) => DType::I64,
            Scalar::Float(_) => DType::F64,
        }
    }
}

impl From<f64> for Scalar {
    fn from(x: f64) -> Scalar {
        Scalar::Float(x)
    }
}
impl From<f32> for Scalar {
    fn from(x: f32) -> Scalar {
        Scalar::Float(f64::from(x))
    }
}
impl From<i64> for Scalar {
    fn from(x: i64) -> Scalar {
        Scalar::Int(x)
    }
}
impl From<i32> for Scalar {
    fn from(x: i32) -> Scalar {
        Scalar::Int(i64::from(x))
    }
}
impl From<u8> for Scalar {
    fn from(x: u8) -> Scalar {
        Scalar::Int(i64::from(x))
    }
}
impl From<bool> for Scalar {
    fn from(x: bool) -> Scalar {
        Scalar::Bool(x)
    }
}

/// What a node computes; operands are indices of earlier nodes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum NodeKind {
    /// The task's `n`th input chunk.
    Input(u32),
    Scalar(Scalar),
    Unary(UnaryOp, u32),
    Binary(BinaryOp, u32, u32),
    /// `where(cond, a, b)`.
    Where(u32, u32, u32),
    /// Convert to the node's dtype.
    Cast(u32),
    /// Random leaf `n` of the program, generated for the task's block.
    Random(u32),
}

/// One step of a program and the dtype it produces.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// What it computes.
    pub kind: NodeKind,
    /// The dtype of its result.
    pub dtype: DType,
}

/// A typed elementwise expression; the last node is the result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// Nodes in evaluation order.
    pub nodes: Vec<Node>,
    /// Random arrays read by [`NodeKind::Random`] nodes: generated, not read from inputs.
    #[serde(default)]
    pub randoms: Vec<RandomLeaf>,
}

fn unsupported(what: &str, dtype: DType) -> Error {
    Error::Type(format!("{what} is not supported for {dtype}"))
}

impl Program {
    /// Append a node, returning its index.
    pub fn push(&mut self, kind: NodeKind, dtype: DType) -> u32 {
        self.nodes.push(Node { kind, dtype });
        (self.nodes.len() - 1) as u32
    }

    /// The dtype of node `i`.
    pub fn dtype(&self, i: u32) -> DType {
        self.nodes[i as usize].dtype
    }

    /// The result's dtype.
    pub fn result_dtype(&self) -> Option<DType> {
        self.nodes.last().map(|n| n.dtype)
    }

    /// `x` as `dtype` (no node when it already is).
    pub fn cast(&mut self, x: u32, dtype: DType) -> u32 {
        if self.dtype(x) == dtype {
            x
        } else {
            self.push(NodeKind::Cast(x), dtype)
        }
    }

    /// Add a unary operation with NumPy's typing; errors name the operation and dtype.
    pub fn unary(&mut self, op: UnaryOp, x: u32) -> Result<u32> {
        use UnaryOp::*;
        let t = self.dtype(x);
        Ok(match op {
            Neg | Abs | Sign | Square => {
                if t == DType::Bool {
                    return Err(unsupported(&format!("{op:?}"), t));
                }
                self.push(NodeKind::Unary(op, x), t)
            }
            Not => {
                if t.is_float() {
                    return Err(unsupported("logical/bitwise not", t));
                }
                self.push(NodeKind::Unary(op, x), t)
            }
            IsNan | IsInf | IsFinite => self.push(NodeKind::Unary(op, x), DType::Bool),
            Floor | Ceil | Round | Trunc if t.is_int() => x,
            _ => {
                let f = t.float_result();
                let x = self.cast(x, f);
                self.push(NodeKind::Unary(op, x), f)
            }
        })
    }

    /// Add a binary operation with NumPy's typing and promotion.
    pub fn binary(&mut self, op: BinaryOp, a: u32, b: u32) -> Result<u32> {
        use BinaryOp::*;
        let t = DType::promote(self.dtype(a), self.dtype(b));
        let (operand, result) = match op {
            Div | Atan2 | Hypot => (t.float_result(), t.float_result()),
            Eq | Ne | Lt | Le | Gt | Ge => (t, DType::Bool),
            And | Or | Xor => {
                if t.is_float() {
                    return Err(unsupported(&format!("{op:?}"), t));
                }
                (t, t)
            }
            Add | Mul | Minimum | Maximum => (t, t),
            // NumPy has no bool subtraction; bool powers and divisions compute in integers.
            Sub | FloorDiv | Rem | Pow if t == DType::Bool => (DType::I64, DType::I64),
            Sub | FloorDiv | Rem | Pow => (t, t),
        };
        let a = self.cast(a, operand);
        let b = self.cast(b, operand);
        Ok(self.push(NodeKind::Binary(op, a, b), result))
    }

    /// Add `where(cond, a, b)`.
    pub fn select(&mut self, cond: u32, a: u32, b: u32) -> u32 {
        let t = DType::promote(self.dtype(a), self.dtype(b));
        let cond = self.cast(cond, DType::Bool);
        let a = self.cast(a, t);
        let b = self.cast(b, t);
        self.push(NodeKind::Where(cond, a, b), t)
    }

    /// A node reading random leaf `leaf` (one node per distinct leaf).
    pub fn random(&mut self, leaf: RandomLeaf, dtype: DType) -> u32 {
        let r = match self.randoms.iter().position(|l| *l == leaf) {
            Some(r) => r,
            None => {
                self.randoms.push(leaf);
                self.randoms.len() - 1
            }
        } as u32;
        match self
            .nodes
            .iter()
            .position(|n| n.kind == NodeKind::Random(r))
        {
            Some(i) => i as u32,
            None => self.push(NodeKind::Random(r), dtype),
        }
    }

    /// Append `other`'s nodes, mapping its input `i` to `inputs[i]` (a node of `self`).
    /// Returns the index of `other`'s result in `self`.
    pub fn inline(&mut self, other: &Program, inputs: &[u32]) -> u32 {
        let mut map: Vec<u32> = Vec::with_capacity(other.nodes.len());
        for node in &other.nodes {
            let m = |i: u32| map[i as usize];
            let idx = match node.kind {
                NodeKind::Input(i) => inputs[i as usize],
                NodeKind::Scalar(s) => self.push(NodeKind::Scalar(s), node.dtype),
                NodeKind::Unary(op, x) => self.push(NodeKind::Unary(op, m(x)), node.dtype),
                NodeKind::Binary(op, a, b) => {
                    self.push(NodeKind::Binary(op, m(a), m(b)), node.dtype)
                }
                NodeKind::Where(c, a, b) => {
                    self.push(NodeKind::Where(m(c), m(a), m(b)), node.dtype)
                }
                NodeKind::Cast(x) => self.push(NodeKind::Cast(m(x)), node.dtype),
                NodeKind::Random(r) => self.random(other.randoms[r as usize].clone(), node.dtype),
            };
            map.push(idx);
        }
        *map.last().expect("programs are not empty")
    }

    /// Evaluate over `inputs`, broadcast against each other. `block` says where the result
    /// sits in the whole array; programs with random leaves need it (and a program without
    /// inputs takes its shape from it).
    pub fn eval(&self, inputs: &[&Chunk], block: Option<&BlockPos>) -> Result<Chunk> {
        let (shape, readers) = self.prepare(inputs, block)?;
        let n = shape.iter().product();
        // Grown tile by tile rather than zero-filled and overwritten: for a chunk-sized
        // result the fill alone was an eighth of the time.
        let mut out = Buf::with_capacity(self.result()?.dtype, n);
        self.run(n, readers, |tile, _, len| out.append(tile, len))?;
        out.into_chunk(&shape)
    }

    /// The result's shape: the inputs' broadcast shape, or the block's without inputs. A
    /// block from the wire is checked for a size that could be allocated first.
    fn result_shape(&self, inputs: &[&Chunk], block: Option<&BlockPos>) -> Result<Vec<usize>> {
        if let Some(b) = block {
            checked_block_len(&b.shape, self.result()?.dtype)?;
        }
        let shape = broadcast_shapes(inputs.iter().map(|c| c.shape()))?;
        match block {
            Some(b) if inputs.is_empty() => Ok(b.shape.clone()),
            Some(b) if b.shape != shape => Err(Error::Shape(format!(
                "elementwise block of shape {:?} has inputs of shape {shape:?}",
                b.shape
            ))),
            _ => Ok(shape),
        }
    }

    /// Sum of the result over `axes`, keeping them with length one, without materialising
    /// the result: each tile is added into the sums as it is computed, so `(x + x.T).sum(0)`
    /// reads its inputs once and writes only the sums. Streams when the result is `f64` and
    /// the axes are the leading ones, the trailing ones or all of them; `None` otherwise
    /// (evaluate, then reduce). Rows are added in order, as `sum_axis` does.
    pub(crate) fn eval_sum(
        &self,
        inputs: &[&Chunk],
        block: Option<&BlockPos>,
        axes: &[usize],
    ) -> Result<Option<(ArrayD<f64>, u64)>> {
        if self.result()?.dtype != DType::F64 || axes.is_empty() {
            return Ok(None);
        }
        // Decide from the shape alone: preparing readers may copy a strided operand, and a
        // `None` here means the caller evaluates (and prepares) again.
        let shape = self.result_shape(inputs, block)?;
        let ndim = shape.len();
        if let Some(a) = axes.iter().find(|&&a| a >= ndim) {
            return Err(Error::Shape(format!(
                "sum over axis {a} of a block of shape {shape:?}"
            )));
        }
        let k = axes.len();
        let leading = axes.iter().enumerate().all(|(i, &a)| a == i);
        let trailing = axes.iter().enumerate().all(|(i, &a)| a == ndim - k + i);
        if !(leading || trailing) {
            return Ok(None);
        }
        let (_, readers) = self.prepare(inputs, block)?;
        let n: usize = shape.iter().product();
        let count: u64 = axes.iter().map(|&a| shape[a] as u64).product();
        let keep: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect();
        let mut acc = vec![0.0f64; keep.iter().product()];
        if k == ndim {
            self.run(n, readers, |tile, _, len| {
                let Buf::F64(t) = tile else {
                    return Err(Error::Internal("elementwise result dtype mismatch".into()));
                };
                acc[0] += sum8(&t[..len]);
                Ok(())
            })?;
        } else if leading {
            // Element f adds into sums[f % inner].
            let inner: usize = shape[k..].iter().product();
            self.run(n, readers, |tile, start, len| {
                let Buf::F64(t) = tile else {
                    return Err(Error::Internal("elementwise result dtype mismatch".into()));
                };
                let mut pos = start % inner.max(1);
                let mut t = &t[..len];
                while !t.is_empty() {
                    let m = (inner - pos).min(t.len());
                    for (a, x) in acc[pos..pos + m].iter_mut().zip(&t[..m]) {
                        *a += *x;
                    }
                    t = &t[m..];
                    pos = 0;
                }
                Ok(())
            })?;
        } else {
            // Element f adds into sums[f / inner].
            let inner: usize = shape[ndim - k..].iter().product();
            self.run(n, readers, |tile, start, len| {
                let Buf::F64(t) = tile else {
                    return Err(Error::Internal("elementwise result dtype mismatch".into()));
                };
                let mut f = start;
                let mut t = &t[..len];
                while !t.is_empty() {
                    let m = (inner - f % inner).min(t.len());
                    acc[f / inner] += sum8(&t[..m]);
                    t = &t[m..];
                    f += m;
                }
                Ok(())
            })?;
        }
        let sums = ArrayD::from_shape_vec(IxDyn(&keep), acc)
            .map_err(|e| Error::Internal(format!("sums of shape {keep:?}: {e}")))?;
        Ok(Some((sums, count)))
    }

    fn result(&self) -> Result<&Node> {
        self.nodes
            .last()
            .ok_or_else(|| Error::Internal("empty elementwise program".into()))
    }

    /// Check the program against `inputs`; the result's shape and a reader per input.
    fn prepare<'a>(
        &self,
        inputs: &[&'a Chunk],
        block: Option<&BlockPos>,
    ) -> Result<(Vec<usize>, Readers<'a>)> {
        self.result()?;
        // A program from the wire may be malformed: operands must come before their users.
        for (i, node) in self.nodes.iter().enumerate() {
            let operands: &[u32] = match &node.kind {
                NodeKind::Unary(_, x) | NodeKind::Cast(x) => std::slice::from_ref(x),
                NodeKind::Binary(_, a, b) => &[*a, *b],
                NodeKind::Where(c, a, b) => &[*c, *a, *b],
                NodeKind::Input(_) | NodeKind::Scalar(_) | NodeKind::Random(_) => &[],
            };
            if operands.iter().any(|&x| x as usize >= i) {
                return Err(Error::Graph(format!(
                    "elementwise program node {i} reads a later node"
                )));
            }
        }
        let shape = self.result_shape(inputs, block)?;
        let mut readers = Vec::with_capacity(inputs.len());
        for (i, c) in inputs.iter().enumerate() {
            readers.push(Reader::new(c, &shape).ok_or_else(|| {
                Error::Shape(format!(
                    "input {i} of shape {:?} does not broadcast to {shape:?}",
                    c.shape()
                ))
            })?);
        }
        for node in &self.nodes {
            if let NodeKind::Input(i) = node.kind {
                let got = inputs
                    .get(i as usize)
                    .ok_or_else(|| {
                        Error::Graph(format!(
                            "elementwise program reads input {i} of {}",
                            inputs.len()
                        ))
                    })?
                    .dtype();
                if got != node.dtype {
                    return Err(Error::Type(format!(
                        "elementwise input {i} should be {}, got {got}",
                        node.dtype
                    )));
                }
            }
        }
        let mut randoms = Vec::with_capacity(self.randoms.len());
        if !self.randoms.is_empty() {
            let pos = block.ok_or_else(|| {
                Error::Graph("an elementwise program with random leaves needs its block".into())
            })?;
            for leaf in &self.randoms {
                randoms.push(leaf.at(pos)?);
            }
        }
        for node in &self.nodes {
            if let NodeKind::Random(r) = node.kind {
                let leaf = self.randoms.get(r as usize).ok_or_else(|| {
                    Error::Graph(format!(
                        "elementwise program reads random leaf {r} of {}",
                        self.randoms.len()
                    ))
                })?;
                let want = leaf.dist.dtype();
                if node.dtype != want {
                    return Err(Error::Type(format!(
                        "random leaf {r} makes {want}, the program says {}",
                        node.dtype
                    )));
                }
            }
        }
        Ok((
            shape,
            Readers {
                inputs: readers,
                randoms,
            },
        ))
    }

    /// Compute the `n` elements of the result tile by tile, handing each to `sink` with its
    /// offset and length (the tile may be longer than `len`).
    fn run(
        &self,
        n: usize,
        mut readers: Readers<'_>,
        mut sink: impl FnMut(&Buf, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let mut tiles: Vec<Buf> = self
            .nodes
            .iter()
            .map(|nd| Buf::zeros(nd.dtype, TILE.min(n.max(1))))
            .collect();
        for (tile, node) in tiles.iter_mut().zip(&self.nodes) {
            if let NodeKind::Scalar(s) = node.kind {
                tile.fill(s);
            }
        }
        let mut start = 0;
        while start < n {
            let len = TILE.min(n - start);
            for i in 0..self.nodes.len() {
                let (done, rest) = tiles.split_at_mut(i);
                let tile = &mut rest[0];
                match self.nodes[i].kind {
                    NodeKind::Input(k) => readers.inputs[k as usize].fill(start, len, tile)?,
                    NodeKind::Random(r) => {
                        let g = &readers.randoms[r as usize];
                        match tile {
                            Buf::F64(t) => g.fill_f64(start, &mut t[..len])?,
                            Buf::I64(t) => g.fill_i64(start, &mut t[..len])?,
                            _ => {
                                return Err(Error::Internal("random leaf of another dtype".into()));
                            }
                        }
                    }
                    NodeKind::Scalar(_) => {}
                    NodeKind::Unary(op, x) => unary(op, &done[x as usize], tile, len)?,
                    NodeKind::Binary(op, a, b) => {
                        binary(op, &done[a as usize], &done[b as usize], tile, len)?
                    }
                    NodeKind::Where(c, a, b) => select(
                        &done[c as usize],
                        &done[a as usize],
                        &done[b as usize],
                        tile,
                        len,
                    )?,
                    NodeKind::Cast(x) => cast(&done[x as usize], tile, len),
                }
            }
            sink(&tiles[self.nodes.len() - 1], start, len)?;
            start += len;
        }
        Ok(())
    }
}

/// NumPy broadcasting of several shapes; the error names them all.
pub fn broadcast_shapes<'a>(shapes: impl IntoIterator<Item = &'a [usize]>) -> Result<Vec<usize>> {
    let shapes: Vec<&[usize]> = shapes.into_iter().collect();
    let ndim = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; ndim];
    for s in &shapes {
        for (k, &d) in s.iter().rev().enumerate() {
            let o = &mut out[ndim - 1 - k];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::Shape(format!(
                    "shapes {shapes:?} cannot be broadcast together"
                )));
            }
        }
    }
    Ok(out)
}

/// A tile-sized (or result-sized) buffer of one dtype.
pub(crate) enum Buf {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

macro_rules! with_buf {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            Buf::Bool($v) => $body,
            Buf::U8($v) => $body,
            Buf::I32($v) => $body,
            Buf::I64($v) => $body,
            Buf::F32($v) => $body,
            Buf::F64($v) => $body,
        }
    };
}

impl Buf {
    fn zeros(dtype: DType, n: usize) -> Buf {
        match dtype {
            DType::Bool => Buf::Bool(vec![false; n]),
            DType::U8 => Buf::U8(vec![0; n]),
            DType::I32 => Buf::I32(vec![0; n]),
            DType::I64 => Buf::I64(vec![0; n]),
            DType::F32 => Buf::F32(vec![0.0; n]),
            DType::F64 => Buf::F64(vec![0.0; n]),
        }
    }

    fn fill(&mut self, s: Scalar) {
        with_buf!(self, v => {
            let x = match s {
                Scalar::Bool(b) => Prim::from_prim(b),
                Scalar::Int(i) => Prim::from_prim(i),
                Scalar::Float(f) => Prim::from_prim(f),
            };
            v.iter_mut().for_each(|e| *e = x);
        })
    }

    fn with_capacity(dtype: DType, n: usize) -> Buf {
        match dtype {
            DType::Bool => Buf::Bool(Vec::with_capacity(n)),
            DType::U8 => Buf::U8(Vec::with_capacity(n)),
            DType::I32 => Buf::I32(Vec::with_capacity(n)),
            DType::I64 => Buf::I64(Vec::with_capacity(n)),
            DType::F32 => Buf::F32(Vec::with_capacity(n)),
            DType::F64 => Buf::F64(Vec::with_capacity(n)),
        }
    }

    fn append(&mut self, tile: &Buf, len: usize) -> Result<()> {
        macro_rules! arm {
            ($($V:ident),*) => {
                match (self, tile) {
                    $((Buf::$V(o), Buf::$V(t)) => o.extend_from_slice(&t[..len]),)*
                    _ => return Err(Error::Internal("elementwise result dtype mismatch".into())),
                }
            };
        }
        arm!(Bool, U8, I32, I64, F32, F64);
        Ok(())
    }

    fn into_chunk(self, shape: &[usize]) -> Result<Chunk> {
        fn make<T: Element>(v: Vec<T>, shape: &[usize]) -> Result<Chunk> {
            ArrayD::from_shape_vec(IxDyn(shape), v)
                .map(Chunk::new)
                .map_err(|e| Error::Internal(format!("elementwise result of shape {shape:?}: {e}")))
        }
        with_buf!(self, v => make(v, shape))
    }
}

/// What a program's leaves read from: its input chunks and its random leaves' generators.
struct Readers<'a> {
    inputs: Vec<Reader<'a>>,
    randoms: Vec<RandomGen>,
}

/// Reads one input chunk, broadcast to the result shape, in C order.
enum Reader<'a> {
    Bool(TypedReader<'a, bool>),
    U8(TypedReader<'a, u8>),
    I32(TypedReader<'a, i32>),
    I64(TypedReader<'a, i64>),
    F32(TypedReader<'a, f32>),
    F64(TypedReader<'a, f64>),
}

enum TypedReader<'a, T> {
    /// Same shape, standard layout: read straight from the buffer.
    Slice(&'a [T]),
    /// Same shape, another strided layout: copied once into C order in tiles, which beats
    /// walking a strided view element by element.
    Owned(Vec<T>),
    /// The transpose of a C-order matrix (the `x.T` of `x + x.T`), read in place: element
    /// `(r, c)` is `src[c * rows + r]`. Each tile gathers with a stride of one column, but
    /// the lines it touches are reused by the next rows from cache; copying the block first
    /// cost a write and a read of all of it (2.10 s against 1.92 s for the issue's
    /// `(x + x.T).mean(0)`).
    Transposed {
        src: &'a [T],
        rows: usize,
        cols: usize,
    },
    /// A contiguous input broadcast only along leading axes (a row against a matrix):
    /// element `f` of the result is element `f % len` of the input.
    Cyclic(&'a [T]),
    /// Broadcast in any other way: walk a view in logical order.
    Walk(ndarray::iter::Iter<'a, T, IxDyn>),
}

/// C-order copy of a 2-d strided view (a stepped slice, a transposed one) in 16x16 tiles,
/// each row of a tile written contiguously. (The plain transpose of a C-order block is read
/// in place instead: [`TypedReader::Transposed`].)
fn blocked_copy_2d<T: Copy + Default>(v: &ndarray::ArrayView2<'_, T>) -> Vec<T> {
    const B: usize = 16;
    let (rows, cols) = v.dim();
    let mut out = vec![T::default(); rows * cols];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                let row = &mut out[r * cols..(r + 1) * cols];
                for (c, o) in row.iter_mut().enumerate().take((c0 + B).min(cols)).skip(c0) {
                    *o = v[[r, c]];
                }
            }
        }
    }
    out
}

impl<'a, T: Element> TypedReader<'a, T> {
    fn new(a: &'a ndarray::ArcArray<T, IxDyn>, shape: &[usize]) -> Option<TypedReader<'a, T>> {
        if a.shape() == shape {
            if let Some(s) = a.as_slice() {
                return Some(TypedReader::Slice(s));
            }
            if let Ok(v2) = a.view().into_dimensionality::<ndarray::Ix2>() {
                let (rows, cols) = v2.dim();
                if rows > 1
                    && cols > 1
                    && v2.strides() == [1, rows as isize]
                    && let Some(src) = a.as_slice_memory_order()
                {
                    return Some(TypedReader::Transposed { src, rows, cols });
                }
                return Some(TypedReader::Owned(blocked_copy_2d(&v2)));
            }
            return Some(TypedReader::Owned(a.iter().copied().collect()));
        }
        // Broadcast only along leading axes (missing, or of length one before the first
        // real axis) with the rest equal: the input repeats cyclically.
        let lead = shape.len().checked_sub(a.ndim())?;
        let first_real = a.shape().iter().position(|&d| d != 1).unwrap_or(a.ndim());
        if a.shape()[first_real..] == shape[lead + first_real..]
            && let Some(s) = a.as_slice()
            && !s.is_empty()
        {
            return Some(TypedReader::Cyclic(s));
        }
        let view = a.broadcast(IxDyn(shape))?;
        Some(TypedReader::Walk(view.into_iter()))
    }

    fn fill(&mut self, start: usize, out: &mut [T]) {
        match self {
            TypedReader::Slice(s) => out.copy_from_slice(&s[start..start + out.len()]),
            TypedReader::Owned(v) => out.copy_from_slice(&v[start..start + out.len()]),
            TypedReader::Cyclic(s) => {
                let len = s.len();
                let mut pos = start % len;
                let mut done = 0;
                while done < out.len() {
                    let n = (len - pos).min(out.len() - done);
                    out[done..done + n].copy_from_slice(&s[pos..pos + n]);
                    done += n;
                    pos = 0;
                }
            }
            TypedReader::Transposed { src, rows, cols } => {
                let (rows, cols) = (*rows, *cols);
                let mut f = start;
                let mut k = 0;
                while k < out.len() {
                    let (r, c0) = (f / cols, f % cols);
                    let m = (cols - c0).min(out.len() - k);
                    for (j, o) in out[k..k + m].iter_mut().enumerate() {
                        *o = src[(c0 + j) * rows + r];
                    }
                    k += m;
                    f += m;
                }
            }
            TypedReader::Walk(it) => {
                for (o, x) in out.iter_mut().zip(it.by_ref()) {
                    *o = *x;
                }
            }
        }
    }
}

impl<'a> Reader<'a> {
    fn new(c: &'a Chunk, shape: &[usize]) -> Option<Reader<'a>> {
        Some(match c {
            Chunk::Bool(a) => Reader::Bool(TypedReader::new(a, shape)?),
            Chunk::U8(a) => Reader::U8(TypedReader::new(a, shape)?),
            Chunk::I32(a) => Reader::I32(TypedReader::new(a, shape)?),
            Chunk::I64(a) => Reader::I64(TypedReader::new(a, shape)?),
            Chunk::F32(a) => Reader::F32(TypedReader::new(a, shape)?),
            Chunk::F64(a) => Reader::F64(TypedReader::new(a, shape)?),
        })
    }

    fn fill(&mut self, start: usize, len: usize, tile: &mut Buf) -> Result<()> {
        macro_rules! arm {
            ($($V:ident),*) => {
                match (self, tile) {
                    $((Reader::$V(r), Buf::$V(t)) => r.fill(start, &mut t[..len]),)*
                    _ => return Err(Error::Internal("elementwise input dtype mismatch".into())),
                }
            };
        }
        arm!(Bool, U8, I32, I64, F32, F64);
        Ok(())
    }
}

/// Conversions between element types with NumPy's `astype` semantics (wrapping between
/// integers, saturating float to integer, nonzero to `true`).
#[allow(missing_docs)]
pub trait Prim: Copy {
    const FLOAT: bool;
    fn to_f64(self) -> f64;
    fn to_i64(self) -> i64;
    fn from_prim<S: Prim>(x: S) -> Self;
}

macro_rules! prim_int {
    ($($t:ty),*) => {$(
        impl Prim for $t {
            const FLOAT: bool = false;
            fn to_f64(self) -> f64 { self as f64 }
            fn to_i64(self) -> i64 { self as i64 }
            fn from_prim<S: Prim>(x: S) -> Self {
                if S::FLOAT { x.to_f64() as $t } else { x.to_i64() as $t }
            }
        }
    )*};
}
prim_int!(u8, i32, i64);

macro_rules! prim_float {
    ($($t:ty),*) => {$(
        impl Prim for $t {
            const FLOAT: bool = true;
            fn to_f64(self) -> f64 { self as f64 }
            fn to_i64(self) -> i64 { self as i64 }
            fn from_prim<S: Prim>(x: S) -> Self {
                if S::FLOAT { x.to_f64() as $t } else { x.to_i64() as $t }
            }
        }
    )*};
}
prim_float!(f32, f64);

impl Prim for bool {
    const FLOAT: bool = false;
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn from_prim<S: Prim>(x: S) -> Self {
        if S::FLOAT {
            x.to_f64() != 0.0
        } else {
            x.to_i64() != 0
        }
    }
}

fn cast(a: &Buf, out: &mut Buf, len: usize) {
    fn conv<S: Prim, D: Prim>(a: &[S], o: &mut [D]) {
        for (o, &x) in o.iter_mut().zip(a) {
            *o = D::from_prim(x);
        }
    }
    with_buf!(a, a => with_buf!(out, o => conv(&a[..len], &mut o[..len])))
}

/// Arithmetic with NumPy's semantics per type.
trait Num: Prim + PartialOrd {
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn floordiv(a: Self, b: Self) -> Self;
    fn rem(a: Self, b: Self) -> Self;
    /// `None` for a negative integer exponent (an error in NumPy too).
    fn pow(a: Self, b: Self) -> Option<Self>;
    fn minimum(a: Self, b: Self) -> Self;
    fn maximum(a: Self, b: Self) -> Self;
    fn neg(a: Self) -> Self;
    fn abs(a: Self) -> Self;
    fn sign(a: Self) -> Self;
    fn is_nan(a: Self) -> bool;
    fn is_inf(a: Self) -> bool;
}

macro_rules! num_int {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn add(a: Self, b: Self) -> Self { a.wrapping_add(b) }
            fn sub(a: Self, b: Self) -> Self { a.wrapping_sub(b) }
            fn mul(a: Self, b: Self) -> Self { a.wrapping_mul(b) }
            fn floordiv(a: Self, b: Self) -> Self {
                if b == 0 { return 0; }
                let q = a.wrapping_div(b);
                #[allow(unused_comparisons)]
                if (a.wrapping_rem(b) != 0) && ((a < 0) != (b < 0)) { q.wrapping_sub(1) } else { q }
            }
            fn rem(a: Self, b: Self) -> Self {
                if b == 0 { return 0; }
                let r = a.wrapping_rem(b);
                #[allow(unused_comparisons)]
                if r != 0 && ((r < 0) != (b < 0)) { r.wrapping_add(b) } else { r }
            }
            fn pow(a: Self, b: Self) -> Option<Self> {
                #[allow(unused_comparisons)]
                if b < 0 { return None; }
                // Square-and-multiply over the full exponent, wrapping like NumPy.
                let (mut base, mut e, mut acc) = (a, b as u64, 1 as $t);
                while e > 0 {
                    if e & 1 == 1 {
                        acc = acc.wrapping_mul(base);
                    }
                    base = base.wrapping_mul(base);
                    e >>= 1;
                }
                Some(acc)
            }
            fn minimum(a: Self, b: Self) -> Self { if b < a { b } else { a } }
            fn maximum(a: Self, b: Self) -> Self { if b > a { b } else { a } }
            fn neg(a: Self) -> Self { (0 as $t).wrapping_sub(a) }
            #[allow(unused_comparisons)]
            fn abs(a: Self) -> Self { if a < 0 { Self::neg(a) } else { a } }
            #[allow(unused_comparisons)]
            fn sign(a: Self) -> Self { if a > 0 { 1 } else if a < 0 { Self::neg(1) } else { 0 } }
            fn is_nan(_: Self) -> bool { false }
            fn is_inf(_: Self) -> bool { false }
        }
    )*};
}
num_int!(u8, i32, i64);

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn add(a: Self, b: Self) -> Self { a + b }
            fn sub(a: Self, b: Self) -> Self { a - b }
            fn mul(a: Self, b: Self) -> Self { a * b }
            fn floordiv(a: Self, b: Self) -> Self {
                // NumPy's divmod: derive the quotient from fmod so that
                // a == floordiv(a, b) * b + rem(a, b) holds (1.0 // 0.1 is 9, not 10).
                if b == 0.0 {
                    return a / b;
                }
                let m = a % b;
                let mut div = (a - m) / b;
                if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
                    div -= 1.0;
                }
                if div == 0.0 {
                    return (0.0 as $t).copysign(a / b);
                }
                let f = div.floor();
                if div - f > 0.5 { f + 1.0 } else { f }
            }
            fn rem(a: Self, b: Self) -> Self {
                let r = a % b;
                if r != 0.0 && ((r < 0.0) != (b < 0.0)) { r + b } else { r }
            }
            fn pow(a: Self, b: Self) -> Option<Self> { Some(a.powf(b)) }
            fn minimum(a: Self, b: Self) -> Self { if a.is_nan() || b.is_nan() { <$t>::NAN } else { a.min(b) } }
            fn maximum(a: Self, b: Self) -> Self { if a.is_nan() || b.is_nan() { <$t>::NAN } else { a.max(b) } }
            fn neg(a: Self) -> Self { -a }
            fn abs(a: Self) -> Self { a.abs() }
            fn sign(a: Self) -> Self { if a > 0.0 { 1.0 } else if a < 0.0 { -1.0 } else { a } }
            fn is_nan(a: Self) -> bool { a.is_nan() }
            fn is_inf(a: Self) -> bool { a.is_infinite() }
        }
    )*};
}
num_float!(f32, f64);

fn zip2<A: Copy, B: Copy, O>(a: &[A], b: &[B], o: &mut [O], mut f: impl FnMut(A, B) -> O) {
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

fn map1<A: Copy, O>(a: &[A], o: &mut [O], f: impl Fn(A) -> O) {
    for (o, &x) in o.iter_mut().zip(a) {
        *o = f(x);
    }
}

fn arith<T: Num>(op: BinaryOp, a: &[T], b: &[T], o: &mut [T]) -> Result<()> {
    use BinaryOp::*;
    match op {
        Add => zip2(a, b, o, T::add),
        Sub => zip2(a, b, o, T::sub),
        Mul => zip2(a, b, o, T::mul),
        FloorDiv => zip2(a, b, o, T::floordiv),
        Rem => zip2(a, b, o, T::rem),
        Minimum => zip2(a, b, o, T::minimum),
        Maximum => zip2(a, b, o, T::maximum),
        Pow => {
            let mut negative = false;
            zip2(a, b, o, |x, y| {
                T::pow(x, y).unwrap_or_else(|| {
                    negative = true;
                    x
                })
            });
            if negative {
                return Err(Error::Type(
                    "integers to negative integer powers are not allowed".into(),
                ));
            }
        }
        _ => {
            return Err(Error::Internal(format!(
                "{op:?} reached the arithmetic kernel"
            )));
        }
    }
    Ok(())
}

fn compare<T: PartialOrd + Copy>(op: BinaryOp, a: &[T], b: &[T], o: &mut [bool]) -> Result<()> {
    use BinaryOp::*;
    match op {
        Eq => zip2(a, b, o, |x, y| x == y),
        Ne => zip2(a, b, o, |x, y| x != y),
        Lt => zip2(a, b, o, |x, y| x < y),
        Le => zip2(a, b, o, |x, y| x <= y),
        Gt => zip2(a, b, o, |x, y| x > y),
        Ge => zip2(a, b, o, |x, y| x >= y),
        _ => {
            return Err(Error::Internal(format!(
                "{op:?} reached the comparison kernel"
            )));
        }
    }
    Ok(())
}

fn bits<T>(op: BinaryOp, a: &[T], b: &[T], o: &mut [T]) -> Result<()>
where
    T: Copy
        + std::ops::BitAnd<Output = T>
        + std::ops::BitOr<Output = T>
        + std::ops::BitXor<Output = T>,
{
    match op {
        BinaryOp::And => zip2(a, b, o, |x, y| x & y),
        BinaryOp::Or => zip2(a, b, o, |x, y| x | y),
        BinaryOp::Xor => zip2(a, b, o, |x, y| x ^ y),
        _ => {
            return Err(Error::Internal(format!(
                "{op:?} reached the bitwise kernel"
            )));
        }
    }
    Ok(())
}

fn float2<T: num_float_ops::FloatOps>(op: BinaryOp, a: &[T], b: &[T], o: &mut [T]) -> Result<()> {
    match op {
        BinaryOp::Div => zip2(a, b, o, T::div),
        BinaryOp::Atan2 => zip2(a, b, o, T::atan2),
        BinaryOp::Hypot => zip2(a, b, o, T::hypot),
        _ => arith(op, a, b, o)?,
    }
    Ok(())
}

fn binary(op: BinaryOp, a: &Buf, b: &Buf, out: &mut Buf, len: usize) -> Result<()> {
    use BinaryOp::*;
    macro_rules! int_arms {
        ($($V:ident),*) => {
            match (a, b, out) {
                $(
                    (Buf::$V(a), Buf::$V(b), Buf::Bool(o)) if op.is_comparison() => compare(op, &a[..len], &b[..len], &mut o[..len]),
                    (Buf::$V(a), Buf::$V(b), Buf::$V(o)) if matches!(op, And | Or | Xor) => bits(op, &a[..len], &b[..len], &mut o[..len]),
                    (Buf::$V(a), Buf::$V(b), Buf::$V(o)) => arith(op, &a[..len], &b[..len], &mut o[..len]),
                )*
                (Buf::F32(a), Buf::F32(b), Buf::Bool(o)) => compare(op, &a[..len], &b[..len], &mut o[..len]),
                (Buf::F64(a), Buf::F64(b), Buf::Bool(o)) => compare(op, &a[..len], &b[..len], &mut o[..len]),
                (Buf::F32(a), Buf::F32(b), Buf::F32(o)) => float2(op, &a[..len], &b[..len], &mut o[..len]),
                (Buf::F64(a), Buf::F64(b), Buf::F64(o)) => float2(op, &a[..len], &b[..len], &mut o[..len]),
                (Buf::Bool(a), Buf::Bool(b), Buf::Bool(o)) => {
                    let (a, b, o) = (&a[..len], &b[..len], &mut o[..len]);
                    match op {
                        Eq => zip2(a, b, o, |x, y| x == y),
                        Ne | Xor => zip2(a, b, o, |x, y| x != y),
                        Lt => zip2(a, b, o, |x, y| !x & y),
                        Le => zip2(a, b, o, |x, y| !x | y),
                        Gt => zip2(a, b, o, |x, y| x & !y),
                        Ge => zip2(a, b, o, |x, y| x | !y),
                        And | Mul | Minimum => zip2(a, b, o, |x, y| x & y),
                        Or | Add | Maximum => zip2(a, b, o, |x, y| x | y),
                        _ => return Err(unsupported(&format!("{op:?}"), DType::Bool)),
                    }
                    Ok(())
                }
                _ => Err(Error::Internal(format!("{op:?} got operands of mixed dtypes"))),
            }
        };
    }
    int_arms!(U8, I32, I64)
}

mod num_float_ops {
    /// Floating-point functions, over f32 and f64.
    pub(super) trait FloatOps: super::Num {
        fn div(a: Self, b: Self) -> Self;
        fn atan2(a: Self, b: Self) -> Self;
        fn hypot(a: Self, b: Self) -> Self;
        fn apply(op: super::UnaryOp, a: Self) -> Self;
    }

    macro_rules! float_ops {
        ($($t:ty),*) => {$(
            impl FloatOps for $t {
                fn div(a: Self, b: Self) -> Self { a / b }
                fn atan2(a: Self, b: Self) -> Self { a.atan2(b) }
                fn hypot(a: Self, b: Self) -> Self { a.hypot(b) }
                fn apply(op: super::UnaryOp, a: Self) -> Self {
                    use super::UnaryOp::*;
                    match op {
                        Exp => a.exp(),
                        Expm1 => a.exp_m1(),
                        Log => a.ln(),
                        Log1p => a.ln_1p(),
                        Log2 => a.log2(),
                        Log10 => a.log10(),
                        Sqrt => a.sqrt(),
                        Sin => a.sin(),
                        Cos => a.cos(),
                        Tan => a.tan(),
                        Arcsin => a.asin(),
                        Arccos => a.acos(),
                        Arctan => a.atan(),
                        Sinh => a.sinh(),
                        Cosh => a.cosh(),
                        Tanh => a.tanh(),
                        Floor => a.floor(),
                        Ceil => a.ceil(),
                        Round => a.round_ties_even(),
                        Trunc => a.trunc(),
                        _ => a,
                    }
                }
            }
        )*};
    }
    float_ops!(f32, f64);
}

fn num_unary<T: Num>(op: UnaryOp, a: &[T], o: &mut [T]) -> Result<()> {
    match op {
        UnaryOp::Neg => map1(a, o, T::neg),
        UnaryOp::Abs => map1(a, o, T::abs),
        UnaryOp::Sign => map1(a, o, T::sign),
        UnaryOp::Square => map1(a, o, |x| T::mul(x, x)),
        _ => {
            return Err(Error::Internal(format!(
                "{op:?} reached the numeric kernel"
            )));
        }
    }
    Ok(())
}

fn unary(op: UnaryOp, a: &Buf, out: &mut Buf, len: usize) -> Result<()> {
    use UnaryOp::*;
    macro_rules! predicates {
        ($($V:ident),*) => {
            match (a, &mut *out) {
                $((Buf::$V(a), Buf::Bool(o)) => {
                    let (a, o) = (&a[..len], &mut o[..len]);
                    match op {
                        IsNan => map1(a, o, Num::is_nan),
                        IsInf => map1(a, o, Num::is_inf),
                        _ => map1(a, o, |x| !Num::is_nan(x) && !Num::is_inf(x)),
                    }
                    return Ok(());
                })*
                (Buf::Bool(a), Buf::Bool(o)) => {
                    let (a, o) = (&a[..len], &mut o[..len]);
                    match op {
                        IsNan | IsInf => map1(a, o, |_| false),
                        IsFinite => map1(a, o, |_| true),
                        _ => map1(a, o, |x: bool| !x),
                    }
                    return Ok(());
                }
                _ => {}
            }
        };
    }
    predicates!(U8, I32, I64, F32, F64);
    match (a, out) {
        (Buf::U8(a), Buf::U8(o)) if op == Not => map1(&a[..len], &mut o[..len], |x| !x),
        (Buf::I32(a), Buf::I32(o)) if op == Not => map1(&a[..len], &mut o[..len], |x| !x),
        (Buf::I64(a), Buf::I64(o)) if op == Not => map1(&a[..len], &mut o[..len], |x| !x),
        (Buf::U8(a), Buf::U8(o)) => num_unary(op, &a[..len], &mut o[..len])?,
        (Buf::I32(a), Buf::I32(o)) => num_unary(op, &a[..len], &mut o[..len])?,
        (Buf::I64(a), Buf::I64(o)) => num_unary(op, &a[..len], &mut o[..len])?,
        (Buf::F32(a), Buf::F32(o)) => float_unary(op, &a[..len], &mut o[..len])?,
        (Buf::F64(a), Buf::F64(o)) => float_unary(op, &a[..len], &mut o[..len])?,
        _ => {
            return Err(Error::Internal(format!(
                "{op:?} got an operand of the wrong dtype"
            )));
        }
    }
    Ok(())
}

fn float_unary<T: num_float_ops::FloatOps>(op: UnaryOp, a: &[T], o: &mut [T]) -> Result<()> {
    use UnaryOp::*;
    match op {
        Neg | Abs | Sign | Square => num_unary(op, a, o)?,
        _ => map1(a, o, |x| T::apply(op, x)),
    }
    Ok(())
}

fn select(c: &Buf, a: &Buf, b: &Buf, out: &mut Buf, len: usize) -> Result<()> {
    let Buf::Bool(c) = c else {
        return Err(Error::Internal("where condition is not bool".into()));
    };
    macro_rules! arms {
        ($($V:ident),*) => {
            match (a, b, out) {
                $((Buf::$V(a), Buf::$V(b), Buf::$V(o)) => {
                    for (((o, &c), &x), &y) in o[..len].iter_mut().zip(&c[..len]).zip(&a[..len]).zip(&b[..len]) {
                        *o = if c { x } else { y };
                    }
                })*
                _ => return Err(Error::Internal("where operands of mixed dtypes".into())),
            }
        };
    }
    arms!(Bool, U8, I32, I64, F32, F64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, s};

    /// Both copy paths against ndarray's own iteration order, on ragged sizes.
    #[test]
    fn strided_copies_match_logical_order() {
        for (r, c) in [
            (1, 1),
            (1, 9),
            (9, 1),
            (8, 8),
            (13, 70),
            (64, 64),
            (130, 67),
        ] {
            let a = Array2::from_shape_fn((r, c), |(i, j)| (i * 1000 + j) as f64);
            let t = a.t();
            assert_eq!(blocked_copy_2d(&t), t.iter().copied().collect::<Vec<_>>());
            let stepped = a.slice(s![..;2, ..;-3]);
            assert_eq!(
                blocked_copy_2d(&stepped),
                stepped.iter().copied().collect::<Vec<_>>()
            );
            let st = stepped.t();
            assert_eq!(blocked_copy_2d(&st), st.iter().copied().collect::<Vec<_>>());
        }
    }
}

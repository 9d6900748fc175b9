//! Edge cases a review found: each must be an error or NumPy's answer, never a panic or an
//! abort.

use ndarray::{ArrayD, IxDyn};
use partita::array::creation::FullBlock;
use partita::array::creation::random::Distribution;
use partita::array::elementwise::ElementwiseKernel;
use partita::array::kernel::{Node, NodeKind, Program};
use partita::array::rechunk::{Piece, RechunkBlock};
use partita::array::rng::{BlockPos, RandomLeaf};
use partita::array::{Axes, Chunk, Chunks, DType, Index, arange, from_ndarray, where_, zeros};
use partita::{Op, SyncScheduler, Value};
use partita_tests::assert_array_eq;

fn f64s(v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

#[test]
fn impossible_sizes_are_errors_not_aborts() {
    let x = from_ndarray(&f64s(&[1.0; 16]), 4).unwrap();
    assert!(
        x.reshape(&[(1 << 60) + 1, 16])
            .unwrap_err()
            .to_string()
            .contains("more elements than can exist")
    );
    let err = x
        .rechunk(Chunks::Explicit(vec![vec![usize::MAX, 6]]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("add up to"), "{err}");
    assert!(
        zeros(&[0, 1 << 62], DType::F64, 1)
            .unwrap_err()
            .to_string()
            .contains("blocks")
    );
    assert!(arange(0.0, 1e20, 1.0, DType::F64, 1000).is_err());
    assert!(zeros(&[1 << 40, 1 << 40], DType::F64, Chunks::Auto).is_err());
}

#[test]
fn huge_slice_steps_select_one_element() {
    let x = from_ndarray(&f64s(&[0.0, 1.0, 2.0, 3.0, 4.0]), 2).unwrap();
    assert_array_eq(
        &x.index(&[Index::step(None, None, isize::MAX)]).unwrap(),
        &f64s(&[0.0]),
        0.0,
    );
    assert_array_eq(
        &x.index(&[Index::step(None, None, isize::MIN)]).unwrap(),
        &f64s(&[4.0]),
        0.0,
    );
}

#[test]
fn reductions_over_no_axes_and_empty_kept_axes() {
    let d = f64s(&[3.0, -1.0, 2.0]);
    let x = from_ndarray(&d, 2).unwrap();
    assert_array_eq(&x.sum(Axes::These(vec![])).unwrap(), &d, 0.0);
    assert_array_eq(&x.mean(Axes::These(vec![])).unwrap(), &d, 0.0);
    assert!(x.argmin(Some(0)).is_ok());
    assert!(
        partita::array::reduction::reduce(
            &x,
            partita::array::Reduction::ArgMin,
            Axes::These(vec![]),
            Default::default()
        )
        .is_err()
    );
    // numpy.zeros((0, 3)).max(axis=1) is an empty array.
    let e = zeros(&[0, 3], DType::F64, 2).unwrap();
    assert_array_eq(&e.max(1).unwrap(), &ArrayD::<f64>::zeros(IxDyn(&[0])), 0.0);
    // ddof at or above n divides by zero, like numpy: inf.
    let v = x
        .var(Axes::All, 3)
        .unwrap()
        .compute::<f64>(&SyncScheduler)
        .unwrap();
    assert!(v[[]].is_infinite(), "{}", v[[]]);
}

#[test]
fn argmax_returns_the_first_nan_across_blocks() {
    let mut d = ArrayD::<f64>::zeros(IxDyn(&[2, 4]));
    d[[1, 0]] = f64::NAN;
    d[[0, 2]] = f64::NAN;
    let x = from_ndarray(&d, [2, 2]).unwrap();
    for r in [x.argmax(None).unwrap(), x.argmin(None).unwrap()] {
        assert_eq!(
            r.compute::<i64>(&SyncScheduler).unwrap()[[]],
            2,
            "numpy gives the first NaN in flat order"
        );
    }
}

#[test]
fn float_floor_division_matches_numpy_divmod() {
    let a = f64s(&[1.0, -7.5, 7.5, 0.3, -0.0]);
    let b = f64s(&[0.1, 2.0, -2.0, 0.1, 3.0]);
    let (x, y) = (from_ndarray(&a, 2).unwrap(), from_ndarray(&b, 2).unwrap());
    // numpy.floor_divide of the same: [9., -4., -4., 2., -0.]
    let q = x
        .floor_div(&y)
        .unwrap()
        .compute::<f64>(&SyncScheduler)
        .unwrap();
    assert_eq!(q.as_slice().unwrap(), &[9.0, -4.0, -4.0, 2.0, -0.0]);
    let r = (&x % &y).unwrap().compute::<f64>(&SyncScheduler).unwrap();
    for i in 0..5 {
        assert!(
            (q[[i]] * b[[i]] + r[[i]] - a[[i]]).abs() < 1e-12,
            "a == (a // b) * b + a % b at {i}"
        );
    }
}

#[test]
fn scalars_out_of_range_follow_numpy_2() {
    let u = from_ndarray(
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![50u8, 0, 255]).unwrap(),
        2,
    )
    .unwrap();
    assert!(
        (&u + 300)
            .unwrap_err()
            .to_string()
            .contains("integer 300 is out of bounds for uint8")
    );
    let lt = u.less(300).unwrap();
    assert_array_eq(&lt, &ArrayD::from_elem(IxDyn(&[3]), true), 0.0);
    let c = u.greater(10).unwrap();
    assert_eq!(where_(&c, 1, 2).unwrap().dtype(), DType::I64);
    assert_eq!(where_(&c, true, false).unwrap().dtype(), DType::Bool);
    let i = from_ndarray(&ArrayD::from_elem(IxDyn(&[1]), 2i64), 1).unwrap();
    let big = i
        .pow(1i64 << 32)
        .unwrap()
        .compute::<i64>(&SyncScheduler)
        .unwrap();
    assert_eq!(big[[0]], 0, "2 ** 2**32 wraps to 0 in int64, like numpy");
}

fn run(op: &dyn Op, inputs: &[Value]) -> String {
    op.execute(inputs).unwrap_err().to_string()
}

#[test]
fn inconsistent_ops_from_the_wire_are_errors() {
    let huge = FullBlock {
        shape: vec![1 << 40, 1 << 40],
        value: 1.0.into(),
        dtype: DType::F64,
    };
    assert!(run(&huge, &[]).contains("larger than"));
    // A random leaf with a block outside its array, a bad permutation, a missing position,
    // a huge block, and a node that names a leaf that does not exist.
    let leaf = |perm: Vec<usize>| RandomLeaf {
        key: 1,
        dist: Distribution::Uniform {
            low: 0.0,
            high: 1.0,
        },
        shape: vec![4, 5],
        perm,
    };
    let rnd = |perm: Vec<usize>, node: u32, block: Option<BlockPos>| ElementwiseKernel {
        program: Program {
            nodes: vec![Node {
                kind: NodeKind::Random(node),
                dtype: DType::F64,
            }],
            randoms: vec![leaf(perm)],
        },
        block,
    };
    let at = |offset: Vec<usize>, shape: Vec<usize>| Some(BlockPos { offset, shape });
    assert!(run(&rnd(vec![0, 1], 0, at(vec![3, 0], vec![2, 5])), &[]).contains("does not fit"));
    // Transposed, the array is 5 x 4: a 5 x 4 block fits, a 4 x 5 one does not.
    assert!(run(&rnd(vec![1, 0], 0, at(vec![0, 0], vec![4, 5])), &[]).contains("does not fit"));
    assert!(run(&rnd(vec![1, 1], 0, at(vec![0, 0], vec![4, 5])), &[]).contains("permutation"));
    assert!(run(&rnd(vec![0, 1], 0, None), &[]).contains("needs its block"));
    assert!(run(&rnd(vec![0, 1], 3, at(vec![0, 0], vec![4, 5])), &[]).contains("random leaf 3"));
    assert!(
        run(
            &rnd(vec![0, 1], 0, at(vec![0, 0], vec![1 << 40, 1 << 20])),
            &[]
        )
        .contains("larger than")
    );
    let ok = rnd(vec![1, 0], 0, at(vec![1, 1], vec![2, 3]));
    let v = ok.execute(&[]).unwrap();
    assert_eq!(Chunk::from_value(&v).unwrap().shape(), &[2, 3]);
    let block = Value::new(Chunk::new(ArrayD::<f64>::zeros(IxDyn(&[2, 2]))));
    let bad_piece = RechunkBlock {
        shape: vec![2, 2],
        pieces: vec![Piece {
            src: vec![0..3, 0..2],
            dst: vec![0..3, 0..2],
        }],
    };
    assert!(run(&bad_piece, std::slice::from_ref(&block)).contains("does not fit"));
    let program = Program {
        nodes: vec![
            Node {
                kind: NodeKind::Input(0),
                dtype: DType::F64,
            },
            Node {
                kind: NodeKind::Binary(partita::array::BinaryOp::Add, 0, 5),
                dtype: DType::F64,
            },
        ],
        randoms: Vec::new(),
    };
    let kernel = ElementwiseKernel {
        program,
        block: None,
    };
    assert!(run(&kernel, std::slice::from_ref(&block)).contains("reads a later node"));
}

//! Indexing, take, concatenate and stack, against NumPy results written out and against a
//! naive position-list reference.

use ndarray::{ArrayD, Axis, IxDyn};
use partita::array::{DType, Index, concatenate, from_ndarray, stack};
use partita_tests::assert_array_eq;
use proptest::prelude::*;

fn iota(shape: &[usize]) -> ArrayD<i64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n as i64).collect()).unwrap()
}

fn vec1(v: &[i64]) -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

/// Python's slice semantics, written the slow obvious way.
fn py_positions(len: usize, start: Option<isize>, stop: Option<isize>, step: isize) -> Vec<usize> {
    let n = len as isize;
    let mut out = Vec::new();
    if step > 0 {
        let fix = |v: isize| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let (s, e) = (start.map_or(0, fix), stop.map_or(n, fix));
        let mut i = s;
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let fix = |v: isize| if v < 0 { (v + n).max(-1) } else { v.min(n - 1) };
        let (s, e) = (start.map_or(n - 1, fix), stop.map_or(-1, fix));
        let mut i = s;
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    out
}

#[test]
fn slices_match_numpy() {
    let x = from_ndarray(&iota(&[10]), 3).unwrap();
    // numpy.arange(10)[...] for each index, written out.
    let cases: [(Index, &[i64]); 8] = [
        (Index::step(Some(8), Some(2), -3), &[8, 5]),
        (Index::step(None, None, -1), &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),
        (Index::step(Some(-3), None, 1), &[7, 8, 9]),
        (Index::range(5, 100), &[5, 6, 7, 8, 9]),
        (Index::step(None, Some(-12), 1), &[]),
        (Index::step(Some(1), None, 4), &[1, 5, 9]),
        (Index::step(Some(-1), Some(-11), -4), &[9, 5, 1]),
        (Index::step(Some(100), Some(-100), -5), &[9, 4]),
    ];
    for (index, want) in cases {
        let y = x.index(&[index]).unwrap();
        assert_array_eq(&y, &vec1(want), 0.0);
    }
    let at = x.index(&[Index::At(-2)]).unwrap();
    assert_eq!(at.shape(), &[] as &[usize]);
    assert_array_eq(&at, &ArrayD::from_elem(IxDyn(&[]), 8i64), 0.0);
}

#[test]
fn integers_newaxis_and_ellipsis() {
    let d = iota(&[4, 5, 6]);
    let x = from_ndarray(&d, [3, 2, 4]).unwrap();
    let y = x
        .index(&[
            Index::At(1),
            Index::NewAxis,
            Index::Ellipsis,
            Index::range(1, 5),
        ])
        .unwrap();
    let want = d
        .index_axis(Axis(0), 1)
        .insert_axis(Axis(0))
        .slice_axis(Axis(2), (1..5).into())
        .to_owned();
    assert_eq!(y.shape(), &[1, 5, 4]);
    assert_array_eq(&y, &want, 0.0);
    let z = x.index(&[Index::Ellipsis, Index::At(-1)]).unwrap();
    assert_array_eq(&z, &d.index_axis(Axis(2), 5).to_owned(), 0.0);
}

#[test]
fn bad_indices_are_errors_naming_axis_and_size() {
    let x = from_ndarray(&iota(&[4, 5]), 2).unwrap();
    assert_eq!(
        x.index(&[Index::Full, Index::At(5)])
            .unwrap_err()
            .to_string(),
        "shape error: index 5 is out of bounds for axis 1 with size 5"
    );
    assert!(
        x.index(&[Index::At(0), Index::At(0), Index::At(0)])
            .unwrap_err()
            .to_string()
            .contains("too many indices")
    );
    assert!(
        x.index(&[Index::step(None, None, 0)])
            .unwrap_err()
            .to_string()
            .contains("step cannot be zero")
    );
    assert!(x.index(&[Index::Ellipsis, Index::Ellipsis]).is_err());
    assert!(
        x.take(&[0, 9], 1)
            .unwrap_err()
            .to_string()
            .contains("index 9 is out of bounds")
    );
}

#[test]
fn take_gathers_across_blocks() {
    let d = iota(&[6, 7]);
    let x = from_ndarray(&d, [4, 3]).unwrap();
    let picks = [6i64, 0, -1, 3, 3, 1];
    let y = x.take(&picks, 1).unwrap();
    let pos: Vec<usize> = picks
        .iter()
        .map(|&p| if p < 0 { (p + 7) as usize } else { p as usize })
        .collect();
    assert_array_eq(&y, &d.select(Axis(1), &pos), 0.0);
    assert_array_eq(
        &x.take(&[], 0).unwrap(),
        &ArrayD::<i64>::zeros(IxDyn(&[0, 7])),
        0.0,
    );
}

#[test]
fn concatenate_and_stack_match_ndarray() {
    let (a, b) = (iota(&[4, 3]), iota(&[2, 3]).mapv(|v| v + 100));
    let x = from_ndarray(&a, [3, 2]).unwrap();
    let y = from_ndarray(&b, [1, 3]).unwrap();
    let c = concatenate(&[x.clone(), y.clone()], 0).unwrap();
    assert_array_eq(
        &c,
        &ndarray::concatenate(Axis(0), &[a.view(), b.view()]).unwrap(),
        0.0,
    );
    let f = from_ndarray(&a.mapv(|v| v as f64 * 0.5), [2, 3]).unwrap();
    let mixed = concatenate(&[x.clone(), f], 1).unwrap();
    assert_eq!(mixed.dtype(), DType::F64);
    let want = ndarray::concatenate(
        Axis(1),
        &[
            a.mapv(|v| v as f64).view(),
            a.mapv(|v| v as f64 * 0.5).view(),
        ],
    )
    .unwrap();
    assert_array_eq(&mixed, &want, 0.0);
    let s = stack(&[x.clone(), x.clone()], 1).unwrap();
    assert_array_eq(
        &s,
        &ndarray::stack(Axis(1), &[a.view(), a.view()]).unwrap(),
        0.0,
    );
    let err = concatenate(&[x.clone(), y.t().unwrap()], 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("differ off that axis"), "{err}");
    assert!(stack(&[x, y], 0).is_err());
}

fn slice_spec(len: usize) -> impl Strategy<Value = (Option<isize>, Option<isize>, isize)> {
    let l = len as isize + 2;
    (
        prop::option::of(-l..=l),
        prop::option::of(-l..=l),
        prop_oneof![-3isize..=-1, 1isize..=3],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_slice_matches_the_reference(
        (shape, chunk, specs) in prop::collection::vec(1usize..9, 1..4).prop_flat_map(|shape| {
            let specs: Vec<_> = shape.iter().map(|&d| slice_spec(d)).collect();
            (Just(shape), 1usize..4, specs)
        })
    ) {
        let d = iota(&shape);
        let x = from_ndarray(&d, chunk).unwrap();
        let index: Vec<Index> = specs.iter().map(|&(a, b, s)| Index::step(a, b, s)).collect();
        let y = x.index(&index).unwrap();
        let mut want = d.clone();
        for (axis, &(a, b, s)) in specs.iter().enumerate() {
            want = want.select(Axis(axis), &py_positions(shape[axis], a, b, s));
        }
        assert_array_eq(&y, &want, 0.0);
    }
}

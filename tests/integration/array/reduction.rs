//! Reductions against a naive reference: elements grouped by output position and reduced
//! in plain Rust.

use ndarray::{ArrayD, IxDyn};
use partita::array::{Axes, DType, ReduceOptions, from_ndarray, random};
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::assert_array_eq;
use proptest::prelude::*;

/// Group elements by their position with `axes` removed (or kept as length one); `f` gets
/// each group's values and their positions along the one reduced axis (flat positions when
/// several are reduced).
pub(super) fn reference<T: Copy, R: Clone + Default>(
    data: &ArrayD<T>,
    axes: &[usize],
    keepdims: bool,
    f: impl Fn(&[T], &[usize]) -> R,
) -> ArrayD<R> {
    let out_shape: Vec<usize> = (0..data.ndim())
        .filter_map(|a| {
            if axes.contains(&a) {
                keepdims.then_some(1)
            } else {
                Some(data.shape()[a])
            }
        })
        .collect();
    let mut groups: std::collections::BTreeMap<Vec<usize>, (Vec<T>, Vec<usize>)> =
        Default::default();
    for (ix, &v) in data.indexed_iter() {
        let key: Vec<usize> = (0..data.ndim())
            .filter_map(|a| {
                if axes.contains(&a) {
                    keepdims.then_some(0)
                } else {
                    Some(ix[a])
                }
            })
            .collect();
        let flat = (0..data.ndim()).fold(0, |acc, a| acc * data.shape()[a] + ix[a]);
        let along = if axes.len() == 1 { ix[axes[0]] } else { flat };
        let g = groups.entry(key).or_default();
        g.0.push(v);
        g.1.push(along);
    }
    let mut out = ArrayD::from_elem(IxDyn(&out_shape), R::default());
    for (key, (vals, pos)) in groups {
        out[IxDyn(&key)] = f(&vals, &pos);
    }
    out
}

fn data(shape: &[usize], offset: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| ((i * 7919) % 113) as f64 * 0.37 - 20.0 + offset)
            .collect(),
    )
    .unwrap()
}

fn two_pass_var(xs: &[f64], ddof: f64) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - ddof)
}

const AXES: [&[usize]; 7] = [&[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[0, 1, 2]];

#[test]
fn sums_means_and_extremes_over_every_axis_set() {
    let d = data(&[7, 6, 5], 0.0);
    let x = from_ndarray(&d, [3, 4, 2]).unwrap();
    for axes in AXES {
        let spec = Axes::These(axes.iter().map(|&a| a as isize).collect());
        for keepdims in [false, true] {
            for split_every in [2, 16] {
                let o = ReduceOptions {
                    keepdims,
                    split_every,
                };
                let sum = x.sum_with(spec.clone(), o).unwrap();
                assert_array_eq(
                    &sum,
                    &reference(&d, axes, keepdims, |v, _| v.iter().sum::<f64>()),
                    1e-12,
                );
                let mean = x.mean_with(spec.clone(), o).unwrap();
                assert_array_eq(
                    &mean,
                    &reference(&d, axes, keepdims, |v, _| {
                        v.iter().sum::<f64>() / v.len() as f64
                    }),
                    1e-12,
                );
                let min = x.min_with(spec.clone(), o).unwrap();
                assert_array_eq(
                    &min,
                    &reference(&d, axes, keepdims, |v, _| {
                        v.iter().copied().fold(f64::INFINITY, f64::min)
                    }),
                    0.0,
                );
                let max = x.max_with(spec.clone(), o).unwrap();
                assert_array_eq(
                    &max,
                    &reference(&d, axes, keepdims, |v, _| {
                        v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    }),
                    0.0,
                );
                let prod = x.prod_with(spec.clone(), o).unwrap();
                assert_array_eq(
                    &prod,
                    &reference(&d, axes, keepdims, |v, _| v.iter().product::<f64>()),
                    1e-9,
                );
            }
        }
    }
}

#[test]
fn variance_and_std_are_numerically_stable() {
    // A large offset and a small spread: sum of squares minus square of sums would be off by
    // about 100% here. The inputs themselves carry ~1e-7 representation error at 1e9, so two
    // stable algorithms agree to about 1e-8 relative, not to the last bit.
    let d = data(&[9, 8, 3], 1e9);
    let x = from_ndarray(&d, [2, 3, 2]).unwrap();
    for axes in AXES {
        let spec = Axes::These(axes.iter().map(|&a| a as isize).collect());
        for ddof in [0u32, 1] {
            let var = x.var(spec.clone(), ddof).unwrap();
            let want = reference(&d, axes, false, |v, _| two_pass_var(v, f64::from(ddof)));
            assert_array_eq(&var, &want, 1e-7);
            let std = x.std(spec.clone(), ddof).unwrap();
            assert_array_eq(&std, &want.mapv(f64::sqrt), 1e-7);
        }
    }
    // Over one long axis in many small chunks, so the Chan merge does the work.
    let long = data(&[10_000], 1e8);
    let x = from_ndarray(&long, 7).unwrap();
    let want = two_pass_var(long.as_slice().unwrap(), 0.0);
    let got = x
        .var(Axes::All, 0)
        .unwrap()
        .compute::<f64>(&LocalScheduler::new())
        .unwrap();
    assert!(
        (got[[]] - want).abs() / want < 1e-7,
        "{} vs {want}",
        got[[]]
    );
}

#[test]
fn argmin_and_argmax_find_the_first_extreme() {
    let mut d = data(&[6, 7], 0.0);
    d[[4, 2]] = -100.0;
    d[[1, 5]] = -100.0; // an earlier tie in flat order
    d[[3, 3]] = 500.0;
    let x = from_ndarray(&d, [4, 3]).unwrap();
    let first_min = |v: &[f64], p: &[usize]| {
        let mut best = 0;
        for i in 1..v.len() {
            if v[i] < v[best] {
                best = i;
            }
        }
        p[best] as i64
    };
    let first_max = |v: &[f64], p: &[usize]| {
        let mut best = 0;
        for i in 1..v.len() {
            if v[i] > v[best] {
                best = i;
            }
        }
        p[best] as i64
    };
    for axis in [0usize, 1] {
        assert_array_eq(
            &x.argmin(Some(axis as isize)).unwrap(),
            &reference(&d, &[axis], false, first_min),
            0.0,
        );
        assert_array_eq(
            &x.argmax(Some(axis as isize)).unwrap(),
            &reference(&d, &[axis], false, first_max),
            0.0,
        );
    }
    assert_array_eq(
        &x.argmin(None).unwrap(),
        &ArrayD::from_elem(IxDyn(&[]), (7 + 5) as i64),
        0.0,
    );
    assert_array_eq(
        &x.argmax(None).unwrap(),
        &ArrayD::from_elem(IxDyn(&[]), (3 * 7 + 3) as i64),
        0.0,
    );
    assert_array_eq(
        &x.argmin(Some(-1)).unwrap(),
        &reference(&d, &[1], false, first_min),
        0.0,
    );
    // One-element chunks merged two at a time (a deep tree), with keepdims: the first
    // extreme still wins, with its global index.
    let fine = from_ndarray(&d, [1, 1]).unwrap();
    let deep = ReduceOptions {
        keepdims: true,
        split_every: 2,
    };
    for axis in [0usize, 1] {
        assert_array_eq(
            &fine.argmin_with(Some(axis as isize), deep).unwrap(),
            &reference(&d, &[axis], true, first_min),
            0.0,
        );
        assert_array_eq(
            &fine.argmax_with(Some(axis as isize), deep).unwrap(),
            &reference(&d, &[axis], true, first_max),
            0.0,
        );
        assert_array_eq(
            &fine.var_with(axis, 1, deep).unwrap(),
            &reference(&d, &[axis], true, |v, _| two_pass_var(v, 1.0)),
            1e-9,
        );
        assert_array_eq(
            &fine.std_with(axis, 0, deep).unwrap(),
            &reference(&d, &[axis], true, |v, _| two_pass_var(v, 0.0).sqrt()),
            1e-9,
        );
    }
    assert_array_eq(
        &fine.argmax_with(None, deep).unwrap(),
        &ArrayD::from_elem(IxDyn(&[1, 1]), (3 * 7 + 3) as i64),
        0.0,
    );
}

#[test]
fn nan_propagates_like_numpy() {
    let mut d = data(&[5, 4], 0.0);
    d[[2, 1]] = f64::NAN;
    let x = from_ndarray(&d, 2).unwrap();
    let mins = x.min(0).unwrap().compute::<f64>(&SyncScheduler).unwrap();
    assert!(mins[[1]].is_nan() && !mins[[0]].is_nan());
    let arg = x
        .argmax(None)
        .unwrap()
        .compute::<i64>(&SyncScheduler)
        .unwrap();
    assert_eq!(arg[[]], 2 * 4 + 1, "numpy.argmax returns the first NaN");
}

#[test]
fn integer_and_bool_reductions_have_numpy_dtypes() {
    let i = ArrayD::from_shape_fn(IxDyn(&[6, 5]), |ix| (ix[0] * 5 + ix[1]) as i32 - 12);
    let x = from_ndarray(&i, [4, 2]).unwrap();
    let s = x.sum(1).unwrap();
    assert_eq!(s.dtype(), DType::I64);
    assert_array_eq(&s, &i.mapv(i64::from).sum_axis(ndarray::Axis(1)), 0.0);
    let m = x.mean(Axes::All).unwrap();
    assert_eq!(m.dtype(), DType::F64);
    assert_array_eq(
        &m,
        &ArrayD::from_elem(IxDyn(&[]), i.mapv(f64::from).mean().unwrap()),
        1e-15,
    );
    let f = x.astype(DType::F32).unwrap().mean(0).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    let positive = x.greater(0).unwrap();
    assert_array_eq(
        &positive.any(0).unwrap(),
        &reference(&i, &[0], false, |v, _| v.iter().any(|&x| x > 0)),
        0.0,
    );
    assert_array_eq(
        &positive.all(1).unwrap(),
        &reference(&i, &[1], false, |v, _| v.iter().all(|&x| x > 0)),
        0.0,
    );
    assert_array_eq(
        &positive.sum(Axes::All).unwrap(),
        &ArrayD::from_elem(IxDyn(&[]), i.iter().filter(|&&x| x > 0).count() as i64),
        0.0,
    );
    assert_eq!(positive.max(0).unwrap().dtype(), DType::Bool);
}

#[test]
fn bad_axes_and_empty_reductions_are_errors() {
    let x = from_ndarray(&data(&[4, 3], 0.0), 2).unwrap();
    assert_eq!(
        x.sum(2).unwrap_err().to_string(),
        "sum: shape error: axis 2 is out of bounds for an array of dimension 2"
    );
    assert!(
        x.sum([0, -2])
            .unwrap_err()
            .to_string()
            .contains("axis 0 is repeated")
    );
    assert!(x.argmin(Some(5)).is_err());
    let empty = from_ndarray(&ArrayD::<f64>::zeros(IxDyn(&[0, 3])), 2).unwrap();
    let err = empty.min(0).unwrap_err().to_string();
    assert!(err.contains("zero-size reduction has no identity"), "{err}");
    assert_array_eq(
        &empty.sum(0).unwrap(),
        &ArrayD::<f64>::zeros(IxDyn(&[3])),
        0.0,
    );
    let mean = empty
        .mean(Axes::All)
        .unwrap()
        .compute::<f64>(&SyncScheduler)
        .unwrap();
    assert!(mean[[]].is_nan(), "numpy gives nan for the mean of nothing");
}

#[test]
fn a_reduction_of_a_fused_expression_matches() {
    let x = random::random(&[300, 200], [64, 50], 3).unwrap();
    let xd = x.compute::<f64>(&SyncScheduler).unwrap();
    let y = (&(&x * 2.0).unwrap() - 1.0).unwrap().abs().unwrap();
    let want = xd.mapv(|v| (v * 2.0 - 1.0).abs());
    assert_array_eq(&y.sum(0).unwrap(), &want.sum_axis(ndarray::Axis(0)), 1e-12);
    assert_array_eq(
        &y.std(Axes::All, 1).unwrap(),
        &ArrayD::from_elem(IxDyn(&[]), want.std(1.0)),
        1e-12,
    );
}

/// Reductions read an elementwise expression's operands directly (the expression is fused
/// into the per-block task; sums and means stream over leading, trailing or all axes). Every
/// axis set, with a transposed operand and a broadcast one, against the reference.
#[test]
fn reductions_fused_with_their_expression_match_over_every_axis_set() {
    let d = data(&[6, 6, 5], 0.0);
    let row = data(&[5], 3.0);
    let x = from_ndarray(&d, [4, 3, 2]).unwrap();
    let r = from_ndarray(&row, [2]).unwrap();
    let xt = x.transpose(Some(&[1, 0, 2])).unwrap();
    let y = (&(&x + &xt).unwrap() * &r).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[6, 6, 5]), |ix| {
        (d[[ix[0], ix[1], ix[2]]] + d[[ix[1], ix[0], ix[2]]]) * row[[ix[2]]]
    });
    for axes in AXES {
        let spec = Axes::These(axes.iter().map(|&a| a as isize).collect());
        for keepdims in [false, true] {
            let o = ReduceOptions {
                keepdims,
                split_every: 2,
            };
            let sum = y.sum_with(spec.clone(), o).unwrap();
            assert_array_eq(
                &sum,
                &reference(&want, axes, keepdims, |v, _| v.iter().sum::<f64>()),
                1e-9,
            );
            let mean = y.mean_with(spec.clone(), o).unwrap();
            assert_array_eq(
                &mean,
                &reference(&want, axes, keepdims, |v, _| {
                    v.iter().sum::<f64>() / v.len() as f64
                }),
                1e-9,
            );
            let max = y.max_with(spec.clone(), o).unwrap();
            assert_array_eq(
                &max,
                &reference(&want, axes, keepdims, |v, _| {
                    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                }),
                0.0,
            );
        }
    }
    // A 2-d transpose is read in place rather than copied; same answer for a ragged grid.
    let m = data(&[37, 37], 1.0);
    let mx = from_ndarray(&m, [10, 16]).unwrap();
    let s = (&mx + &mx.t().unwrap()).unwrap().mean(0).unwrap();
    let mw = ArrayD::from_shape_fn(IxDyn(&[37, 37]), |ix| m[[ix[0], ix[1]]] + m[[ix[1], ix[0]]]);
    assert_array_eq(&s, &mw.mean_axis(ndarray::Axis(0)).unwrap(), 1e-12);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sums_are_right_for_any_chunking(
        shape in prop::collection::vec(1usize..7, 1..4),
        chunk in 1usize..4,
        split in 2usize..5,
        axis_bits in 1u8..8,
    ) {
        let d = data(&shape, 0.5);
        let x = from_ndarray(&d, chunk).unwrap();
        let axes: Vec<usize> = (0..shape.len()).filter(|a| axis_bits & (1 << a) != 0).collect();
        prop_assume!(!axes.is_empty());
        let spec = Axes::These(axes.iter().map(|&a| a as isize).collect());
        let got = x.sum_with(spec.clone(), ReduceOptions { keepdims: false, split_every: split }).unwrap();
        assert_array_eq(&got, &reference(&d, &axes, false, |v, _| v.iter().sum::<f64>()), 1e-12);
        let var = x.var(spec, 0).unwrap();
        assert_array_eq(&var, &reference(&d, &axes, false, |v, _| two_pass_var(v, 0.0)), 1e-9);
    }
}

//! Boolean masks (`x[mask]`): chunk sizes unknown until computed. Results against the same
//! selection done directly on ndarray data, on every scheduler.

use ndarray::{ArrayD, Axis, IxDyn};
use partita::array::{
    Array, Axes, BinaryOp, DType, FilteredArray, Index, ReduceOptions, Reduced, Reduction, UnaryOp,
    from_ndarray,
};
use partita::{Error, LocalScheduler, SyncScheduler};
use partita_tests::{ApproxEq, assert_array_eq, schedulers};
use proptest::prelude::*;

/// Pseudo-random values in [0, 1) from a seed, the same whatever the shape.
fn data(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// NumPy's `x[mask]` for a mask over the first `mask.ndim()` axes, the slow obvious way.
fn select<T: Clone + Default>(x: &ArrayD<T>, mask: &ArrayD<bool>) -> ArrayD<T> {
    let k = mask.ndim();
    let rows: usize = x.shape()[..k].iter().product();
    let mut flat_shape = vec![rows];
    flat_shape.extend_from_slice(&x.shape()[k..]);
    let flat = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&flat_shape))
        .unwrap();
    let picked: Vec<usize> = mask
        .iter()
        .enumerate()
        .filter_map(|(i, &m)| m.then_some(i))
        .collect();
    flat.select(Axis(0), &picked)
}

/// Compute `f` on every scheduler and compare with `expected`; then the same through
/// `compute_chunk_sizes` and `persist`, whose arrays must know their chunks.
fn assert_filtered_eq<T: partita::array::Element + ApproxEq>(
    f: &FilteredArray,
    expected: &ArrayD<T>,
    rtol: f64,
) {
    assert_eq!(f.dtype(), T::DTYPE);
    assert_eq!(f.shape()[0], None, "{f:?}");
    for scheduler in schedulers() {
        let got = f
            .compute::<T>(scheduler.as_ref())
            .unwrap_or_else(|e| panic!("computing {f:?} on {}: {e}", scheduler.name()));
        assert_eq!(got.shape(), expected.shape(), "on {}", scheduler.name());
        for (g, e) in got.iter().zip(expected) {
            assert!(
                g.approx_eq(*e, rtol),
                "{f:?} on {}: {g:?} vs {e:?}",
                scheduler.name()
            );
        }
    }
    let local = LocalScheduler::with_threads(2);
    let known = f.compute_chunk_sizes(&local).unwrap();
    assert_eq!(known.shape(), expected.shape());
    assert_array_eq(&known, expected, rtol);
    let persisted = f.persist(&local).unwrap();
    assert_eq!(persisted.chunks(), known.chunks());
    assert_array_eq(&persisted, expected, rtol);
}

fn reduced(r: Reduced) -> Array {
    r.into_array().expect("axis 0 was reduced")
}

#[test]
fn a_mask_over_rows_selects_rows() {
    let values = data(&[13, 7], 1);
    let x = from_ndarray(&values, [4, 3]).unwrap();
    let col = x.index(&[Index::Full, Index::At(0)]).unwrap();
    let mask = col.greater(0.5).unwrap();
    let y = x.mask(&mask).unwrap();
    assert_eq!(y.shape(), vec![None, Some(7)]);
    assert_eq!(y.chunks()[0], vec![None; 4]);
    assert_eq!(y.chunks()[1], vec![Some(3), Some(3), Some(1)]);
    let m = values.index_axis(Axis(1), 0).mapv(|v| v > 0.5);
    let want = select(&values, &m);
    assert!(want.shape()[0] > 0 && want.shape()[0] < 13);
    assert_filtered_eq(&y, &want, 0.0);
    let sizes = y.chunk_sizes(&SyncScheduler).unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), want.shape()[0]);
}

#[test]
fn a_full_mask_keeps_numpys_c_order_across_chunked_columns() {
    // Columns are split into chunks: the selection must still be row after row.
    let values = data(&[11, 9], 2);
    let x = from_ndarray(&values, [3, 4]).unwrap();
    let y = x.mask(&x.greater(0.3).unwrap()).unwrap();
    assert_eq!(y.ndim(), 1);
    let want = select(&values, &values.mapv(|v| v > 0.3));
    assert_filtered_eq(&y, &want, 0.0);
}

#[test]
fn a_mask_over_two_of_three_axes() {
    let values = data(&[6, 5, 4], 3);
    let x = from_ndarray(&values, [2, 2, 3]).unwrap();
    let m = data(&[6, 5], 4).mapv(|v| v < 0.6);
    let y = x.mask(&from_ndarray(&m, [4, 3]).unwrap()).unwrap();
    assert_eq!(y.shape(), vec![None, Some(4)]);
    assert_filtered_eq(&y, &select(&values, &m), 0.0);
}

#[test]
fn integer_and_bool_data_are_selected_too() {
    let v: ArrayD<i64> = ArrayD::from_shape_fn(IxDyn(&[10]), |ix| ix[0] as i64 * 3 - 7);
    let x = from_ndarray(&v, 3).unwrap();
    let y = x.mask(&x.rem(2i64).unwrap().equal(0i64).unwrap()).unwrap();
    assert_filtered_eq(&y, &v.mapv(|a| a).select(Axis(0), &[1, 3, 5, 7, 9]), 0.0);
    let b = x.greater(0i64).unwrap();
    let yb = b.mask(&b).unwrap();
    assert_filtered_eq(&yb, &ArrayD::from_elem(IxDyn(&[7]), true), 0.0);
}

#[test]
fn reductions_over_the_unknown_axis_are_arrays() {
    let values = data(&[17, 5], 5);
    let x = from_ndarray(&values, [4, 2]).unwrap();
    let mask_values = values.index_axis(Axis(1), 1).mapv(|v| v > 0.4);
    let mask = from_ndarray(&mask_values, 5).unwrap();
    let y = x.mask(&mask).unwrap();
    let sel = select(&values, &mask_values);
    let opts = ReduceOptions {
        keepdims: false,
        split_every: 2,
    };
    let n = sel.shape()[0] as f64;
    // Over axis 0.
    let sum0 = reduced(y.reduce(Reduction::Sum, 0isize, opts).unwrap());
    assert_array_eq(&sum0, &sel.sum_axis(Axis(0)), 1e-12);
    let mean0 = reduced(y.reduce(Reduction::Mean, 0isize, opts).unwrap());
    assert_array_eq(&mean0, &sel.mean_axis(Axis(0)).unwrap(), 1e-12);
    let var0 = reduced(y.reduce(Reduction::Var { ddof: 1 }, 0isize, opts).unwrap());
    assert_array_eq(&var0, &sel.var_axis(Axis(0), 1.0), 1e-10);
    let min0 = reduced(y.reduce(Reduction::Min, 0isize, opts).unwrap());
    let want_min = sel.fold_axis(Axis(0), f64::INFINITY, |a, &b| a.min(b));
    assert_array_eq(&min0, &want_min, 0.0);
    // Over everything.
    let all_max = reduced(y.reduce(Reduction::Max, Axes::All, opts).unwrap());
    let want_max = sel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_array_eq(&all_max, &ArrayD::from_elem(IxDyn(&[]), want_max), 0.0);
    let all_mean = reduced(y.reduce(Reduction::Mean, Axes::All, opts).unwrap());
    let want_mean = sel.sum() / (n * 5.0);
    assert_array_eq(&all_mean, &ArrayD::from_elem(IxDyn(&[]), want_mean), 1e-12);
    // keepdims keeps a length-one axis 0, which is known.
    let keep = ReduceOptions {
        keepdims: true,
        ..opts
    };
    let s = reduced(y.reduce(Reduction::Sum, 0isize, keep).unwrap());
    assert_eq!(s.shape(), &[1, 5]);
}

#[test]
fn reductions_keeping_the_unknown_axis_stay_filtered() {
    let values = data(&[12, 6], 6);
    let x = from_ndarray(&values, [5, 4]).unwrap();
    let m = values.index_axis(Axis(1), 0).mapv(|v| v > 0.5);
    let y = x.mask(&from_ndarray(&m, 5).unwrap()).unwrap();
    let sel = select(&values, &m);
    let opts = ReduceOptions::default();
    let Reduced::Filtered(s1) = y.reduce(Reduction::Sum, 1isize, opts).unwrap() else {
        panic!("axis 0 was kept")
    };
    assert_filtered_eq(&s1, &sel.sum_axis(Axis(1)), 1e-12);
    let Reduced::Filtered(a1) = y.reduce(Reduction::ArgMax, 1isize, opts).unwrap() else {
        panic!("axis 0 was kept")
    };
    let want: ArrayD<i64> = sel.map_axis(Axis(1), |lane| {
        let mut best = 0;
        for (i, &v) in lane.iter().enumerate() {
            if v > lane[best] {
                best = i;
            }
        }
        best as i64
    });
    assert_filtered_eq(&a1, &want, 0.0);
    let keep = ReduceOptions {
        keepdims: true,
        ..opts
    };
    let Reduced::Filtered(k1) = y.reduce(Reduction::Min, 1isize, keep).unwrap() else {
        panic!("axis 0 was kept")
    };
    let want = sel
        .fold_axis(Axis(1), f64::INFINITY, |a, &b| a.min(b))
        .insert_axis(Axis(1));
    assert_filtered_eq(&k1, &want, 0.0);
}

#[test]
fn empty_blocks_and_empty_selections() {
    // Rows 4..8 are all below the threshold: the middle block selects nothing.
    let mut values = data(&[12, 3], 7);
    for r in 4..8 {
        values.index_axis_mut(Axis(0), r).fill(0.0);
    }
    values[[0, 0]] = 0.9;
    let x = from_ndarray(&values, [4, 3]).unwrap();
    let col = x.index(&[Index::Full, Index::At(0)]).unwrap();
    let y = x.mask(&col.greater(0.5).unwrap()).unwrap();
    let m = values.index_axis(Axis(1), 0).mapv(|v| v > 0.5);
    let want = select(&values, &m);
    assert_filtered_eq(&y, &want, 0.0);
    let sizes = y.chunk_sizes(&SyncScheduler).unwrap();
    assert_eq!(sizes[1], 0);
    let known = y.compute_chunk_sizes(&SyncScheduler).unwrap();
    assert!(known.chunks()[0].iter().all(|&c| c > 0), "{known:?}");
    // Min skips the empty block.
    let min = reduced(
        y.reduce(Reduction::Min, 0isize, ReduceOptions::default())
            .unwrap(),
    );
    assert_array_eq(
        &min,
        &want.fold_axis(Axis(0), f64::INFINITY, |a, &b| a.min(b)),
        0.0,
    );

    // Nothing selected at all.
    let none = x.mask(&col.greater(2.0).unwrap()).unwrap();
    assert_filtered_eq(&none, &ArrayD::<f64>::zeros(IxDyn(&[0, 3])), 0.0);
    let sum = reduced(
        none.reduce(Reduction::Sum, Axes::All, ReduceOptions::default())
            .unwrap(),
    );
    assert_array_eq(&sum, &ArrayD::from_elem(IxDyn(&[]), 0.0), 0.0);
    let min = reduced(
        none.reduce(Reduction::Min, Axes::All, ReduceOptions::default())
            .unwrap(),
    );
    for scheduler in schedulers() {
        let err = min
            .compute::<f64>(scheduler.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains("zero-size reduction"), "{err}");
    }
}

#[test]
fn elementwise_operations_on_a_selection() {
    let values = data(&[14, 6], 8);
    let x = from_ndarray(&values, [4, 4]).unwrap();
    let m = values.index_axis(Axis(1), 2).mapv(|v| v > 0.3);
    let y = x.mask(&from_ndarray(&m, 3).unwrap()).unwrap();
    let sel = select(&values, &m);
    // With scalars, both ways round.
    let z = y.binary(BinaryOp::Mul, 2.0, false).unwrap();
    let z = z.binary(BinaryOp::Sub, 1.0, true).unwrap();
    assert_filtered_eq(&z, &sel.mapv(|v| 1.0 - 2.0 * v), 1e-15);
    // With a row over the known axis, chunked differently from y.
    let row_values = data(&[6], 9);
    let row = from_ndarray(&row_values, 5).unwrap();
    let w = y.binary(BinaryOp::Add, &row, false).unwrap();
    assert_filtered_eq(&w, &(&sel + &row_values), 1e-15);
    // With itself and another selection by the same mask; unary; a cast; where.
    let e = y.unary(UnaryOp::Exp).unwrap();
    let both = e.binary(BinaryOp::Div, &y, false).unwrap();
    assert_filtered_eq(&both, &sel.mapv(|v| v.exp() / v), 1e-14);
    // With a reduction of itself that kept axis 1 with length one.
    let keep = ReduceOptions {
        keepdims: true,
        ..ReduceOptions::default()
    };
    let Reduced::Filtered(row_max) = y.reduce(Reduction::Max, 1isize, keep).unwrap() else {
        panic!("axis 0 was kept")
    };
    let scaled = y.binary(BinaryOp::Div, &row_max, false).unwrap();
    let want_max = sel
        .fold_axis(Axis(1), f64::NEG_INFINITY, |a, &b| a.max(b))
        .insert_axis(Axis(1));
    assert_filtered_eq(&scaled, &(&sel / &want_max), 1e-15);
    let big = y.binary(BinaryOp::Gt, 0.5, false).unwrap();
    assert_eq!(big.dtype(), DType::Bool);
    let wh = big.where_(&y, 0.0).unwrap();
    assert_filtered_eq(&wh, &sel.mapv(|v| if v > 0.5 { v } else { 0.0 }), 0.0);
    let cast = y
        .binary(BinaryOp::Mul, 10.0, false)
        .unwrap()
        .astype(DType::I64)
        .unwrap();
    assert_filtered_eq(&cast, &sel.mapv(|v| (v * 10.0) as i64), 0.0);
    // A reduction over an elementwise selection fuses and still sums right.
    let s = reduced(
        z.reduce(Reduction::Sum, Axes::All, ReduceOptions::default())
            .unwrap(),
    );
    let want = sel.mapv(|v| 1.0 - 2.0 * v).sum();
    assert_array_eq(&s, &ArrayD::from_elem(IxDyn(&[]), want), 1e-12);
}

#[test]
fn masking_a_selection_again() {
    let values = data(&[40], 10);
    let x = from_ndarray(&values, 7).unwrap();
    let m1 = values.mapv(|v| v > 0.2);
    let y = x.mask(&x.greater(0.2).unwrap()).unwrap();
    let again = y
        .mask(&y.binary(BinaryOp::Lt, 0.7, false).unwrap())
        .unwrap();
    let sel = select(&values, &m1);
    let want = select(&sel, &sel.mapv(|v| v < 0.7));
    assert_filtered_eq(&again, &want, 0.0);
}

#[test]
fn mistakes_are_named_errors() {
    let values = data(&[8, 4], 11);
    let x = from_ndarray(&values, [3, 2]).unwrap();
    // Not bool; wrong shape; no axes.
    let e = x.mask(&x).unwrap_err();
    assert!(e.to_string().contains("must be bool"), "{e}");
    let wrong = from_ndarray(&ArrayD::from_elem(IxDyn(&[4]), true), 2).unwrap();
    let e = x.mask(&wrong).unwrap_err().to_string();
    assert!(e.contains("[4]") && e.contains("[8, 4]"), "{e}");
    let y = x.mask(&x.greater(0.5).unwrap()).unwrap();
    // argmin along the unknown axis needs offsets.
    let e = y
        .reduce(Reduction::ArgMin, Axes::All, ReduceOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("compute_chunk_sizes"), "{e}");
    // An array spanning the filtered axis.
    let r = x.mask(
        &x.index(&[Index::Full, Index::At(0)])
            .unwrap()
            .greater(0.5)
            .unwrap(),
    );
    let r = r.unwrap();
    let e = r.binary(BinaryOp::Add, &x, false).unwrap_err();
    assert!(
        matches!(e, Error::Shape(_)) && e.to_string().contains("unknown"),
        "{e}"
    );
    // Two selections by different masks.
    let other = x.mask(
        &x.index(&[Index::Full, Index::At(1)])
            .unwrap()
            .greater(0.5)
            .unwrap(),
    );
    let e = r.binary(BinaryOp::Add, &other.unwrap(), false).unwrap_err();
    assert!(e.to_string().contains("same mask"), "{e}");
    // A 2-d mask on a selection whose columns are split.
    let two_d = r.binary(BinaryOp::Gt, 0.5, false).unwrap();
    let e = r.mask(&two_d).unwrap_err();
    assert!(e.to_string().contains("compute_chunk_sizes"), "{e}");
    assert!(matches!(
        Reduced::Filtered(r).into_array().unwrap_err(),
        Error::Shape(_)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any shape of one to three axes, any chunks, a mask over the first k axes with any
    /// density: the selection and its sum agree with ndarray on every scheduler.
    #[test]
    fn any_mask_on_any_chunking(
        shape in prop::collection::vec(1usize..7, 1..4),
        chunk_seed in any::<u64>(),
        seed in any::<u64>(),
        density in 0.0f64..1.0,
        k_seed in any::<usize>(),
    ) {
        let k = 1 + k_seed % shape.len();
        let values = data(&shape, seed);
        let chunks: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(a, &d)| 1 + ((chunk_seed >> (8 * a)) as usize % d))
            .collect();
        let mask_values = data(&shape[..k], seed ^ 0xABCD).mapv(|v| v < density);
        let mask_chunks: Vec<usize> = chunks[..k].iter().map(|&c| c.max(2)).collect();
        let x = from_ndarray(&values, chunks).unwrap();
        let mask = from_ndarray(&mask_values, mask_chunks).unwrap();
        let y = x.mask(&mask).unwrap();
        let want = select(&values, &mask_values);
        for scheduler in schedulers() {
            let got = y.compute::<f64>(scheduler.as_ref()).unwrap();
            prop_assert_eq!(&got, &want);
        }
        let total = reduced(y.reduce(Reduction::Sum, Axes::All, ReduceOptions::default()).unwrap());
        let got = total.compute::<f64>(&SyncScheduler).unwrap();
        prop_assert!((got[[]] - want.sum()).abs() <= 1e-9 * (1.0 + want.sum().abs()));
        let sizes = y.chunk_sizes(&SyncScheduler).unwrap();
        prop_assert_eq!(sizes.iter().sum::<usize>(), want.shape()[0]);
    }
}

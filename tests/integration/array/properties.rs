//! Property tests over random shapes and chunkings (each axis chunked independently) for the
//! operations the example-based tests cover at fixed shapes: every reduction, transpose,
//! concatenate, stack, take, matmul and tensordot, each against ndarray (or the obvious loop)
//! on the same data, on every scheduler.

use ndarray::{ArrayD, Axis, IxDyn};
use partita::LocalScheduler;
use partita::array::reduction::reduce;
use partita::array::{
    Axes, DType, ReduceOptions, Reduction, arange, concatenate, eye, from_ndarray, linspace,
    matmul, read_npy, read_zarr, stack, tensordot,
};
use partita_tests::{assert_array_eq, schedulers};

use super::reduction::reference;
use proptest::prelude::*;

/// Values with many ties (so argmin/argmax must pick the first of equals, like NumPy).
fn data(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let v = (0..n as u64)
        .map(|i| ((i.wrapping_mul(7919).wrapping_add(seed * 31)) % 23) as f64 * 0.5 - 5.0)
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// A shape of 1..=3 axes and, per axis, a chunk size in 1..=len.
fn shape_and_chunks() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..7, 1..4).prop_flat_map(|shape| {
        let chunks: Vec<_> = shape.iter().map(|&d| 1..=d).collect();
        (Just(shape), chunks)
    })
}

/// Position of the first best value (NumPy's tie rule).
fn first_best(vals: &[f64], pos: &[usize], min: bool) -> i64 {
    let mut best = 0;
    for i in 1..vals.len() {
        if (min && vals[i] < vals[best]) || (!min && vals[i] > vals[best]) {
            best = i;
        }
    }
    pos[best] as i64
}

fn var(xs: &[f64], ddof: f64) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - ddof)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every reduction over a random set of axes, with keepdims and split_every, on any
    /// chunking.
    #[test]
    fn every_reduction_for_any_axes_and_chunking(
        (shape, chunks) in shape_and_chunks(),
        axis_bits in 1u8..8,
        keepdims in any::<bool>(),
        split in 2usize..5,
        seed in 0u64..100,
    ) {
        let axes: Vec<usize> = (0..shape.len()).filter(|a| axis_bits & (1 << a) != 0).collect();
        prop_assume!(!axes.is_empty());
        let d = data(&shape, seed);
        let x = from_ndarray(&d, chunks.clone()).unwrap();
        let spec = Axes::These(axes.iter().map(|&a| a as isize).collect());
        let o = ReduceOptions { keepdims, split_every: split };
        let run = |r: Reduction| reduce(&x, r, spec.clone(), o).unwrap();
        let rf = |f: &dyn Fn(&[f64], &[usize]) -> f64| reference(&d, &axes, keepdims, f);
        assert_array_eq(&run(Reduction::Sum), &rf(&|v, _| v.iter().sum()), 1e-12);
        assert_array_eq(&run(Reduction::Mean), &rf(&|v, _| v.iter().sum::<f64>() / v.len() as f64), 1e-12);
        assert_array_eq(&run(Reduction::Var { ddof: 0 }), &rf(&|v, _| var(v, 0.0)), 1e-9);
        assert_array_eq(&run(Reduction::Std { ddof: 0 }), &rf(&|v, _| var(v, 0.0).sqrt()), 1e-9);
        assert_array_eq(&run(Reduction::Min), &rf(&|v, _| v.iter().copied().fold(f64::INFINITY, f64::min)), 0.0);
        assert_array_eq(&run(Reduction::Max), &rf(&|v, _| v.iter().copied().fold(f64::NEG_INFINITY, f64::max)), 0.0);
        // Products of values near one stay finite.
        let near_one = d.mapv(|v| 1.0 + v / 64.0);
        let p = reduce(&from_ndarray(&near_one, chunks.clone()).unwrap(), Reduction::Prod, spec.clone(), o).unwrap();
        assert_array_eq(&p, &reference(&near_one, &axes, keepdims, |v, _| v.iter().product::<f64>()), 1e-12);
        // any/all of a bool array.
        let b = d.mapv(|v| v > 3.0);
        let xb = from_ndarray(&b, chunks.clone()).unwrap();
        let any = reduce(&xb, Reduction::Any, spec.clone(), o).unwrap();
        let all = reduce(&xb, Reduction::All, spec.clone(), o).unwrap();
        assert_array_eq(&any, &reference(&d, &axes, keepdims, |v, _| v.iter().any(|&x| x > 3.0)), 0.0);
        assert_array_eq(&all, &reference(&d, &axes, keepdims, |v, _| v.iter().all(|&x| x > 3.0)), 0.0);
        // argmin/argmax: one axis, or all of them (flat positions).
        if axes.len() == 1 || axes.len() == shape.len() {
            let axis = (axes.len() == 1 && shape.len() > 1).then_some(axes[0] as isize);
            let axis = if axes.len() == 1 && shape.len() == 1 { Some(0) } else { axis };
            let (am, ax) = (x.argmin_with(axis, o).unwrap(), x.argmax_with(axis, o).unwrap());
            assert_array_eq(&am, &reference(&d, &axes, keepdims, |v, p| first_best(v, p, true)), 0.0);
            assert_array_eq(&ax, &reference(&d, &axes, keepdims, |v, p| first_best(v, p, false)), 0.0);
        }
    }

    /// Any permutation of the axes, any chunking.
    #[test]
    fn transpose_for_any_permutation(
        (shape, chunks) in shape_and_chunks(),
        perm_seed in any::<u64>(),
    ) {
        let d = data(&shape, 1);
        let x = from_ndarray(&d, chunks).unwrap();
        let mut perm: Vec<usize> = (0..shape.len()).collect();
        let mut s = perm_seed;
        for i in (1..perm.len()).rev() {
            perm.swap(i, (s % (i as u64 + 1)) as usize);
            s /= 7;
        }
        let t = x.transpose(Some(&perm)).unwrap();
        assert_array_eq(&t, &d.clone().permuted_axes(IxDyn(&perm)), 0.0);
        // Reversed, the default.
        let r = x.transpose(None).unwrap();
        assert_array_eq(&r, &d.t().to_owned(), 0.0);
    }

    /// Two or three arrays of different chunkings joined along any axis, and stacked along
    /// any new one.
    #[test]
    fn concatenate_and_stack_any_chunkings(
        (shape, chunks) in shape_and_chunks(),
        others in prop::collection::vec((1usize..5, 1usize..6), 1..3),
        axis_seed in any::<usize>(),
    ) {
        let axis = axis_seed % shape.len();
        let d0 = data(&shape, 2);
        let mut parts = vec![d0.clone()];
        let mut arrays = vec![from_ndarray(&d0, chunks.clone()).unwrap()];
        let mut same = vec![from_ndarray(&d0, chunks.clone()).unwrap()];
        for (k, &(len, chunk)) in others.iter().enumerate() {
            let mut s = shape.clone();
            s[axis] = len;
            let d = data(&s, 10 + k as u64);
            arrays.push(from_ndarray(&d, chunk).unwrap());
            parts.push(d);
            let full = data(&shape, 20 + k as u64);
            same.push(from_ndarray(&full, chunk).unwrap());
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let want = ndarray::concatenate(Axis(axis), &views).unwrap();
        assert_array_eq(&concatenate(&arrays, axis).unwrap(), &want, 0.0);
        let full: Vec<ArrayD<f64>> = std::iter::once(d0)
            .chain((0..others.len()).map(|k| data(&shape, 20 + k as u64)))
            .collect();
        let views: Vec<_> = full.iter().map(|p| p.view()).collect();
        let new_axis = axis_seed % (shape.len() + 1);
        let want = ndarray::stack(Axis(new_axis), &views).unwrap();
        assert_array_eq(&stack(&same, new_axis).unwrap(), &want, 0.0);
    }

    /// Any indices (repeats, any order, negative ones) along any axis.
    #[test]
    fn take_any_indices(
        (shape, chunks) in shape_and_chunks(),
        axis_seed in any::<usize>(),
        picks in prop::collection::vec(any::<i64>(), 0..9),
    ) {
        let axis = axis_seed % shape.len();
        let n = shape[axis] as i64;
        let indices: Vec<i64> = picks.iter().map(|p| p.rem_euclid(2 * n) - n).collect();
        let d = data(&shape, 3);
        let x = from_ndarray(&d, chunks).unwrap();
        let positions: Vec<usize> = indices.iter().map(|&i| i.rem_euclid(n) as usize).collect();
        assert_array_eq(&x.take(&indices, axis).unwrap(), &d.select(Axis(axis), &positions), 0.0);
    }

    /// (m, k) @ (k, n) with the two operands chunked independently along k.
    #[test]
    fn matmul_any_chunking(
        m in 1usize..9, k in 1usize..9, n in 1usize..9,
        ca in (1usize..9, 1usize..9), cb in (1usize..9, 1usize..9),
    ) {
        let a = data(&[m, k], 4);
        let b = data(&[k, n], 5);
        let x = from_ndarray(&a, [ca.0, ca.1]).unwrap();
        let y = from_ndarray(&b, [cb.0, cb.1]).unwrap();
        let (a2, b2) = (
            a.clone().into_dimensionality::<ndarray::Ix2>().unwrap(),
            b.clone().into_dimensionality::<ndarray::Ix2>().unwrap(),
        );
        assert_array_eq(&matmul(&x, &y).unwrap(), &a2.dot(&b2).into_dyn(), 1e-12);
    }

    /// tensordot of a 3-d and a 2-d array over one or two matching axes, any chunking.
    #[test]
    fn tensordot_any_chunking(
        dims in (1usize..5, 1usize..5, 1usize..5),
        extra in 1usize..5,
        ca in 1usize..4, cb in 1usize..4,
        two in any::<bool>(),
    ) {
        let (p, q, r) = dims;
        let a = data(&[p, q, r], 6);
        let (b_shape, axes_a, axes_b) = if two {
            (vec![q, r], vec![1, 2], vec![0, 1])
        } else {
            (vec![r, extra], vec![2], vec![0])
        };
        let b = data(&b_shape, 7);
        let x = from_ndarray(&a, ca).unwrap();
        let y = from_ndarray(&b, cb).unwrap();
        let got = tensordot(&x, &y, &axes_a, &axes_b).unwrap();
        let want = if two {
            ArrayD::from_shape_fn(IxDyn(&[p]), |ix| {
                let mut s = 0.0;
                for j in 0..q {
                    for l in 0..r {
                        s += a[[ix[0], j, l]] * b[[j, l]];
                    }
                }
                s
            })
        } else {
            ArrayD::from_shape_fn(IxDyn(&[p, q, extra]), |ix| {
                (0..r).map(|l| a[[ix[0], ix[1], l]] * b[[l, ix[2]]]).sum()
            })
        };
        assert_array_eq(&got, &want, 1e-12);
    }

    /// A Zarr store written by any scheduler from any chunking reads back the same, with
    /// its own chunks or any others; an .npy file too.
    #[test]
    fn storage_round_trips_any_chunking(
        (shape, chunks) in shape_and_chunks(),
        read_chunk in 1usize..5,
    ) {
        let d = data(&shape, 8);
        let x = from_ndarray(&d, chunks.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (i, scheduler) in schedulers().iter().enumerate() {
            let path = dir.path().join(format!("a{i}.zarr"));
            x.to_zarr(&path, scheduler.as_ref()).unwrap();
            let back = read_zarr(&path, None).unwrap();
            prop_assert_eq!(back.chunks(), x.chunks());
            assert_array_eq(&back, &d, 0.0);
            assert_array_eq(&read_zarr(&path, Some(read_chunk.into())).unwrap(), &d, 0.0);
        }
        let npy = dir.path().join("a.npy");
        x.to_npy(&npy, &LocalScheduler::with_threads(2)).unwrap();
        assert_array_eq(&read_npy(&npy, read_chunk).unwrap(), &d, 0.0);
    }

    /// arange, linspace and eye give NumPy's values whatever the chunking.
    #[test]
    fn creation_for_any_chunking(
        n in 0usize..40,
        chunk in 1usize..9,
        start in -5i32..5,
        step in prop::sample::select(vec![-3.0f64, -0.5, 0.25, 1.0, 2.0]),
        endpoint in any::<bool>(),
        m in 1usize..7,
        k in -7i64..7,
    ) {
        let start = f64::from(start);
        let stop = start + step * n as f64;
        let a = arange(start, stop, step, DType::F64, chunk).unwrap();
        let want: Vec<f64> = (0..n).map(|i| start + step * i as f64).collect();
        assert_array_eq(&a, &ArrayD::from_shape_vec(IxDyn(&[n]), want).unwrap(), 1e-12);
        let l = linspace(start, stop, n, endpoint, chunk).unwrap();
        let div = if endpoint { n.saturating_sub(1) } else { n }.max(1) as f64;
        let want: Vec<f64> = (0..n)
            .map(|i| if endpoint && n > 1 && i == n - 1 { stop } else { start + (stop - start) * i as f64 / div })
            .collect();
        assert_array_eq(&l, &ArrayD::from_shape_vec(IxDyn(&[n]), want).unwrap(), 1e-12);
        let rows = n % 9 + 1;
        let e = eye(rows, Some(m), k, DType::F64, chunk).unwrap();
        let want = ArrayD::from_shape_fn(IxDyn(&[rows, m]), |ix| {
            if ix[1] as i64 - ix[0] as i64 == k { 1.0 } else { 0.0 }
        });
        assert_array_eq(&e, &want, 0.0);
    }
}

//! Rechunking and axis permutations.

use ndarray::{ArrayD, IxDyn};
use partita::array::{Axes, Chunks, from_ndarray, random};
use partita::{Collection, SyncScheduler};
use partita_tests::assert_array_eq;
use proptest::prelude::*;

fn iota(shape: &[usize]) -> ArrayD<i64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n as i64).collect()).unwrap()
}

#[test]
fn rechunk_to_any_chunking() {
    let d = iota(&[13, 9, 4]);
    let x = from_ndarray(&d, [5, 2, 4]).unwrap();
    for chunks in [
        Chunks::Size(3),
        Chunks::Shape(vec![13, 9, 1]),
        Chunks::Explicit(vec![vec![1, 12], vec![9], vec![2, 1, 1]]),
    ] {
        let y = x.rechunk(chunks.clone()).unwrap();
        assert_array_eq(&y, &d, 0.0);
    }
    // Rechunking to the same chunks is free.
    assert_eq!(
        x.rechunk(Chunks::Shape(vec![5, 2, 4])).unwrap().name(),
        x.name()
    );
    assert!(x.rechunk(Chunks::Shape(vec![5, 2])).is_err());
}

#[test]
fn rechunk_never_builds_a_task_bigger_than_its_overlap() {
    let x = from_ndarray(&iota(&[100, 100]), [10, 100]).unwrap();
    let y = x.rechunk([100, 10]).unwrap();
    // Each new column block reads the 10 row blocks it overlaps, and nothing else.
    for task in y.layer().tasks() {
        assert_eq!(task.deps.len(), 10);
    }
    assert_array_eq(&y, &iota(&[100, 100]), 0.0);
}

#[test]
fn transpose_and_swapaxes_match_ndarray() {
    let d = iota(&[4, 6, 5]);
    let x = from_ndarray(&d, [3, 4, 2]).unwrap();
    assert_array_eq(&x.t().unwrap(), &d.t().to_owned(), 0.0);
    assert_eq!(
        x.t().unwrap().chunks(),
        &[vec![2, 2, 1], vec![4, 2], vec![3, 1]]
    );
    let p = x.transpose(Some(&[1, 2, 0])).unwrap();
    assert_array_eq(&p, &d.clone().permuted_axes(IxDyn(&[1, 2, 0])), 0.0);
    let s = x.swapaxes(0, 2).unwrap();
    let mut want = d.clone();
    want.swap_axes(0, 2);
    assert_array_eq(&s, &want, 0.0);
    let err = x.transpose(Some(&[0, 0, 1])).unwrap_err().to_string();
    assert!(err.contains("not a permutation"), "{err}");
}

#[test]
fn x_plus_its_transpose() {
    let x = random::random(&[50, 50], [20, 20], 11).unwrap();
    let xd = x.compute::<f64>(&SyncScheduler).unwrap();
    let y = (&x + &x.t().unwrap()).unwrap().mean(0).unwrap();
    let want = (&xd + &xd.t()).mean_axis(ndarray::Axis(0)).unwrap();
    assert_array_eq(&y, &want, 1e-14);
    // Non-square chunks align to the union of boundaries.
    let z = random::random(&[30, 30], [7, 11], 2).unwrap();
    let zd = z.compute::<f64>(&SyncScheduler).unwrap();
    assert_array_eq(
        &(&z - &z.t().unwrap()).unwrap().sum(Axes::All).unwrap(),
        &ArrayD::from_elem(IxDyn(&[]), (&zd - &zd.t()).sum()),
        1e-12,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rechunk_round_trips(
        shape in prop::collection::vec(1usize..9, 1..4),
        a in 1usize..5,
        b in 1usize..5,
    ) {
        let d = iota(&shape);
        let x = from_ndarray(&d, a).unwrap().rechunk(b).unwrap();
        for (axis, c) in x.chunks().iter().enumerate() {
            prop_assert!(c.iter().all(|&s| s <= b));
            prop_assert_eq!(c.iter().sum::<usize>(), shape[axis]);
        }
        assert_array_eq(&x, &d, 0.0);
    }
}

#[test]
fn x_plus_transpose_streams_instead_of_holding_half_the_matrix() {
    // 64 blocks of 80 kB. Block (i, j) of x is read by two tasks far apart in a
    // column-by-column order; the order must run them together so both can free it.
    let x = random::random(&[800, 800], [100, 100], 1).unwrap();
    let y = (&x + &x.t().unwrap()).unwrap().mean(0).unwrap();
    let block = 100 * 100 * 8;
    for s in [
        &SyncScheduler as &dyn partita::Scheduler,
        &partita::LocalScheduler::with_threads(1),
    ] {
        let (_, stats) = partita::compute_collections(&[&y], s, &Default::default()).unwrap();
        assert!(
            stats.peak_live_bytes <= 6 * block,
            "{}: peak {} blocks alive",
            s.name(),
            stats.peak_live_bytes as f64 / block as f64
        );
    }
}

#[test]
fn reshape_matches_ndarray() {
    let d = iota(&[6, 4, 5]);
    let x = from_ndarray(&d, [4, 3, 2]).unwrap();
    let cases: [&[isize]; 6] = [
        &[24, 5],
        &[6, 20],
        &[2, 3, 4, 5],
        &[120],
        &[-1, 10],
        &[6, 1, 4, 5, 1],
    ];
    for shape in cases {
        let y = x.reshape(shape).unwrap();
        let want_shape: Vec<usize> = y.shape().to_vec();
        let want = d.clone().into_shape_with_order(IxDyn(&want_shape)).unwrap();
        assert_array_eq(&y, &want, 0.0);
    }
    let err = x.reshape(&[7, -1]).unwrap_err().to_string();
    assert!(
        err.contains("cannot reshape an array of shape [6, 4, 5] (120 elements) into [7, -1]"),
        "{err}"
    );
    assert!(x.reshape(&[-1, -1]).is_err());
    let empty = from_ndarray(&iota(&[0, 4]), 2)
        .unwrap()
        .reshape(&[2, 0, 2])
        .unwrap();
    assert_eq!(empty.shape(), &[2, 0, 2]);
}

fn factorizations(total: usize) -> impl Strategy<Value = Vec<usize>> {
    // Split `total` into up to four factors, then sprinkle in length-one axes.
    let mut primes = Vec::new();
    let mut n = total;
    let mut p = 2;
    while n > 1 {
        while n.is_multiple_of(p) {
            primes.push(p);
            n /= p;
        }
        p += 1;
    }
    (
        prop::collection::vec(0usize..4, primes.len()),
        prop::collection::vec(0usize..5, 0..2),
    )
        .prop_map(move |(bins, ones)| {
            let mut dims = vec![1usize; 4];
            for (f, b) in primes.iter().zip(bins) {
                dims[b] *= f;
            }
            let mut dims: Vec<usize> = dims.into_iter().filter(|&d| d > 1).collect();
            if dims.is_empty() {
                dims.push(1);
            }
            for o in ones {
                dims.insert(o.min(dims.len()), 1);
            }
            dims
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn reshape_any_refactoring(
        (shape, chunk, target) in prop::collection::vec(1usize..6, 1..4).prop_flat_map(|shape| {
            let total: usize = shape.iter().product();
            (Just(shape), 1usize..4, factorizations(total))
        })
    ) {
        let d = iota(&shape);
        let x = from_ndarray(&d, chunk).unwrap();
        let target_i: Vec<isize> = target.iter().map(|&t| t as isize).collect();
        let y = x.reshape(&target_i).unwrap();
        prop_assert_eq!(y.shape(), target.as_slice());
        assert_array_eq(&y, &d.clone().into_shape_with_order(IxDyn(&target)).unwrap(), 0.0);
    }
}

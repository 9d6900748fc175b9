//! Creating arrays.

use ndarray::{ArrayD, IxDyn};
use partita::array::{
    Chunks, DType, arange, eye, from_ndarray, full, linspace, ones, random, zeros,
};
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::assert_array_eq;
use proptest::prelude::*;

fn iota(shape: &[usize]) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f64 * 0.5 - 3.0).collect()).unwrap()
}

#[test]
fn constants_of_every_dtype() {
    assert_array_eq(
        &zeros(&[5, 3], DType::F64, 2).unwrap(),
        &ArrayD::<f64>::zeros(IxDyn(&[5, 3])),
        0.0,
    );
    assert_array_eq(
        &ones(&[4], DType::I32, 3).unwrap(),
        &ArrayD::from_elem(IxDyn(&[4]), 1i32),
        0.0,
    );
    assert_array_eq(
        &full(&[2, 2, 2], 7, DType::U8, 1).unwrap(),
        &ArrayD::from_elem(IxDyn(&[2, 2, 2]), 7u8),
        0.0,
    );
    assert_array_eq(
        &full(&[3], true, DType::Bool, 2).unwrap(),
        &ArrayD::from_elem(IxDyn(&[3]), true),
        0.0,
    );
    assert_array_eq(
        &full(&[3], 2.5, DType::F32, 2).unwrap(),
        &ArrayD::from_elem(IxDyn(&[3]), 2.5f32),
        0.0,
    );
    assert_array_eq(
        &full(&[0, 3], -1, DType::I64, 2).unwrap(),
        &ArrayD::from_elem(IxDyn(&[0, 3]), -1i64),
        0.0,
    );
}

#[test]
fn ranges_match_numpy() {
    // numpy.arange(-2, 3, 0.5) and numpy.arange(10, 0, -3)
    let a = arange(-2.0, 3.0, 0.5, DType::F64, 3).unwrap();
    let expected: Vec<f64> = (0..10).map(|i| -2.0 + 0.5 * i as f64).collect();
    assert_array_eq(
        &a,
        &ArrayD::from_shape_vec(IxDyn(&[10]), expected).unwrap(),
        0.0,
    );
    let b = arange(10.0, 0.0, -3.0, DType::I64, 2).unwrap();
    assert_array_eq(
        &b,
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![10i64, 7, 4, 1]).unwrap(),
        0.0,
    );
    assert_eq!(arange(0.0, -1.0, 1.0, DType::F64, 4).unwrap().shape(), &[0]);
    assert!(arange(0.0, 1.0, 0.0, DType::F64, 4).is_err());
    // numpy.linspace(0, 1, 7) and numpy.linspace(0, 1, 4, endpoint=False)
    let l = linspace(0.0, 1.0, 7, true, 3).unwrap();
    let want = ndarray::Array1::linspace(0.0, 1.0, 7).into_dyn();
    assert_array_eq(&l, &want, 1e-15);
    let l = linspace(0.0, 1.0, 4, false, 3).unwrap();
    assert_array_eq(
        &l,
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0, 0.25, 0.5, 0.75]).unwrap(),
        1e-15,
    );
}

#[test]
fn eye_matches_ndarray() {
    let e = eye(5, Some(7), 1, DType::F64, [2, 3]).unwrap();
    let want = ArrayD::from_shape_fn(
        IxDyn(&[5, 7]),
        |ix| if ix[1] == ix[0] + 1 { 1.0 } else { 0.0 },
    );
    assert_array_eq(&e, &want, 0.0);
    let e = eye(4, None, 0, DType::I32, 3).unwrap();
    assert_array_eq(&e, &ndarray::Array2::<i32>::eye(4).into_dyn(), 0.0);
}

#[test]
fn bad_creation_arguments_are_errors() {
    let err = zeros(
        &[4, 4],
        DType::F64,
        Chunks::Explicit(vec![vec![2, 2], vec![3]]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("along axis 1 add up to 3, not the axis length 4"),
        "{err}"
    );
    assert!(random::uniform(&[3], 1.0, 0.0, 2, 0).is_err());
    assert!(random::integers(&[3], 5, 5, 2, 0).is_err());
    assert!(random::normal(&[3], 0.0, -1.0, 2, 0).is_err());
}

#[test]
fn random_numbers_do_not_depend_on_chunking_or_scheduler() {
    let shapes: [&[usize]; 2] = [&[37, 23], &[5, 4, 3]];
    for shape in shapes {
        let whole = random::random(shape, Chunks::Size(1000), 7)
            .unwrap()
            .compute::<f64>(&SyncScheduler)
            .unwrap();
        for chunks in [
            Chunks::Size(1),
            Chunks::Size(4),
            Chunks::Shape(shape.iter().map(|d| d / 2 + 1).collect()),
        ] {
            let a = random::random(shape, chunks, 7).unwrap();
            assert_array_eq(&a, &whole, 0.0);
        }
        let other = random::random(shape, 4, 8)
            .unwrap()
            .compute::<f64>(&LocalScheduler::new())
            .unwrap();
        assert_ne!(other, whole, "another seed gives other numbers");
        assert!(whole.iter().all(|&x| (0.0..1.0).contains(&x)));
    }
}

/// SplitMix64 written out again: pins the stream, so a change to the generator (or to how
/// a fused kernel indexes it) cannot pass unnoticed. The `g`th 64-bit number for `seed`.
fn splitmix(seed: u64, g: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let key = mix(seed ^ 0x5EED_5EED_5EED_5EED);
    mix(key.wrapping_add(g.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

fn unit(x: u64) -> f64 {
    f64::from_bits(0x3FF0_0000_0000_0000 | (x >> 12)) - 1.0
}

#[test]
fn random_element_g_is_splitmix64_of_g() {
    let x = random::random(&[7, 9], [3, 4], 11).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[7, 9]), |ix| {
        unit(splitmix(11, (ix[0] * 9 + ix[1]) as u64))
    });
    assert_array_eq(&x, &want, 0.0);
    // Transposed, element (i, j) is the generated array's (j, i): the same numbers.
    let want_t = want.t().to_owned();
    assert_array_eq(&x.t().unwrap(), &want_t, 0.0);
    // Normal: Box-Muller on counters 2g and 2g + 1. Integers: the top bits of g's number
    // scaled to the range.
    let z = random::normal(&[5, 3], 1.0, 2.0, [2, 2], 4).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[5, 3]), |ix| {
        let g = (ix[0] * 3 + ix[1]) as u64;
        let (u1, u2) = (unit(splitmix(4, 2 * g)), unit(splitmix(4, 2 * g + 1)));
        1.0 + 2.0 * (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    });
    assert_array_eq(&z.t().unwrap(), &want.t().to_owned(), 1e-15);
    let k = random::integers(&[4, 6], -5, 8, [3, 4], 2).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[4, 6]), |ix| {
        let x = splitmix(2, (ix[0] * 6 + ix[1]) as u64);
        -5 + ((u128::from(x) * 13) >> 64) as i64
    });
    assert_array_eq(&k, &want, 0.0);
}

#[test]
fn random_expressions_generate_in_place_and_match_the_stored_numbers() {
    // Square chunks: `x + x.T` and its reductions run as one fused task per block, no
    // random or transpose task; ragged and non-square chunks take the rechunking path.
    for (shape, chunks) in [
        ([30usize, 30], [8usize, 8]),
        ([30, 30], [7, 11]),
        ([1, 1], [1, 1]),
    ] {
        let x = random::random(&shape, chunks, 5).unwrap();
        let whole = x.compute::<f64>(&SyncScheduler).unwrap();
        let sum = (&x + &x.t().unwrap()).unwrap();
        let want = &whole + &whole.t();
        assert_array_eq(&sum, &want, 1e-15);
        let mean0 = sum.mean(0).unwrap();
        assert_array_eq(&mean0, &want.mean_axis(ndarray::Axis(0)).unwrap(), 1e-12);
        let std1 = sum.std(1, 1).unwrap();
        assert_array_eq(&std1, &want.std_axis(ndarray::Axis(1), 1.0), 1e-12);
        if chunks[0] == chunks[1] {
            let graph = partita::Layer::materialize(std::slice::from_ref(
                partita::Collection::layer(&mean0),
            ))
            .unwrap();
            let blocks = (shape[0].div_ceil(chunks[0])).pow(2);
            // Fused: a partial per block and a few merges. Not fused: a random task, a
            // transpose task and a partial per block.
            assert!(
                graph.len() < 2 * blocks + 1,
                "{} tasks for {blocks} blocks: the random numbers were not fused",
                graph.len()
            );
        }
    }
    // Three axes, a permutation, and the other distributions.
    let shape = [6usize, 5, 4];
    let n = random::normal(&shape, 1.0, 2.0, [4, 2, 3], 9).unwrap();
    let nw = n.compute::<f64>(&SyncScheduler).unwrap();
    let perm = [2usize, 0, 1];
    let nt = n.transpose(Some(&perm)).unwrap();
    assert_array_eq(&nt, &nw.clone().permuted_axes(IxDyn(&perm)), 0.0);
    assert_array_eq(
        &(&nt * 2.0).unwrap().sum(partita::array::Axes::All).unwrap(),
        &ndarray::arr0(nw.sum() * 2.0).into_dyn(),
        1e-12,
    );
    let k = random::integers(&[5, 8], -4, 9, [2, 3], 3).unwrap();
    let kw = k.compute::<i64>(&SyncScheduler).unwrap();
    assert_array_eq(&k.t().unwrap(), &kw.t().to_owned(), 0.0);
    assert_array_eq(
        &(&k.t().unwrap() * 3).unwrap(),
        &kw.t().mapv(|v| v * 3),
        0.0,
    );
    // An expression of random numbers transposes as a whole, and a transposed random array
    // feeds the ops that need stored blocks (matmul, slicing, rechunk) unchanged.
    let x = random::random(&[12, 10], [5, 4], 2).unwrap();
    let xw = x.compute::<f64>(&SyncScheduler).unwrap();
    let e = (&x * 3.0).unwrap().exp().unwrap().t().unwrap();
    assert_array_eq(&e, &xw.mapv(|v| (v * 3.0).exp()).t().to_owned(), 1e-15);
    let xt = x.t().unwrap();
    let xtw = xw.t().to_owned();
    let m = xt.matmul(&x).unwrap();
    let mw = xtw
        .clone()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .dot(&xw.clone().into_dimensionality::<ndarray::Ix2>().unwrap())
        .into_dyn();
    assert_array_eq(&m, &mw, 1e-12);
    assert_array_eq(&xt.rechunk([3, 7]).unwrap(), &xtw, 0.0);
}

#[test]
fn random_distributions_have_the_right_moments() {
    let n = 200_000usize;
    let u = random::uniform(&[n], -1.0, 3.0, 50_000, 1)
        .unwrap()
        .compute::<f64>(&LocalScheduler::new())
        .unwrap();
    let mean = u.mean().unwrap();
    assert!((mean - 1.0).abs() < 0.02, "uniform mean {mean}");
    assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
    let z = random::normal(&[n], 2.0, 3.0, 50_000, 1)
        .unwrap()
        .compute::<f64>(&LocalScheduler::new())
        .unwrap();
    let (m, s) = (z.mean().unwrap(), z.std(0.0));
    assert!(
        (m - 2.0).abs() < 0.05 && (s - 3.0).abs() < 0.05,
        "normal mean {m}, std {s}"
    );
    let k = random::integers(&[n], -3, 4, 50_000, 1)
        .unwrap()
        .compute::<i64>(&LocalScheduler::new())
        .unwrap();
    for v in -3..4 {
        let count = k.iter().filter(|&&x| x == v).count() as f64 / n as f64;
        assert!(
            (count - 1.0 / 7.0).abs() < 0.01,
            "value {v} has frequency {count}"
        );
    }
    assert!(k.iter().all(|&x| (-3..4).contains(&x)));
}

fn shape_and_chunks() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(0usize..9, 1..4).prop_flat_map(|shape| {
        let chunks = shape.iter().map(|&d| 1..=d.max(1)).collect::<Vec<_>>();
        (Just(shape), chunks)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn from_ndarray_round_trips_for_any_chunking((shape, chunks) in shape_and_chunks()) {
        let data = iota(&shape);
        let a = from_ndarray(&data, chunks.clone()).unwrap();
        prop_assert_eq!(a.shape(), shape.as_slice());
        for (axis, c) in a.chunks().iter().enumerate() {
            prop_assert_eq!(c.iter().sum::<usize>(), shape[axis]);
            prop_assert!(c.iter().all(|&x| x <= chunks[axis].max(1)));
        }
        assert_array_eq(&a, &data, 0.0);
    }
}

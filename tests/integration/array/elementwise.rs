//! Elementwise operations, broadcasting, promotion and fusion.

use ndarray::{ArrayD, IxDyn, Zip};
use partita::array::{Array, DType, from_ndarray, where_};
use partita::distributed::Persisted;
use partita::{
    Collection, ComputeOptions, Graph, Layer, LocalScheduler, SyncScheduler, compute_collections,
};
use partita_tests::assert_array_eq;
use proptest::prelude::*;

fn data(shape: &[usize], scale: f64, shift: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n)
            .map(|i| ((i * 7919) % 101) as f64 * scale + shift)
            .collect(),
    )
    .unwrap()
}

fn ints(shape: &[usize]) -> ArrayD<i64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n).map(|i| (i as i64 * 37) % 23 - 11).collect(),
    )
    .unwrap()
}

#[test]
fn arithmetic_matches_ndarray() {
    let (xd, yd) = (data(&[7, 5], 0.1, -2.0), data(&[7, 5], 0.03, 0.5));
    let x = from_ndarray(&xd, [3, 2]).unwrap();
    let y = from_ndarray(&yd, [3, 2]).unwrap();
    let expr = (&(&(&x + &y).unwrap() * 2.0).unwrap() - &(&x / &y).unwrap()).unwrap();
    let want = (&xd + &yd) * 2.0 - &xd / &yd;
    assert_array_eq(&expr, &want, 1e-14);
    let p = x.abs().unwrap().pow(1.5).unwrap();
    assert_array_eq(&p, &xd.mapv(|v| v.abs().powf(1.5)), 1e-14);
    let m = x.minimum(&y).unwrap().maximum(-1.0).unwrap();
    assert_array_eq(
        &m,
        &Zip::from(&xd)
            .and(&yd)
            .map_collect(|&a, &b| a.min(b).max(-1.0)),
        0.0,
    );
    assert_array_eq(
        &x.clip(-1.0, 1.0).unwrap(),
        &xd.mapv(|v| v.clamp(-1.0, 1.0)),
        0.0,
    );
    assert_array_eq(&(-&x).unwrap(), &xd.mapv(|v| -v), 0.0);
}

#[test]
fn math_functions_match_std() {
    let xd = data(&[11], 0.05, 0.01);
    let x = from_ndarray(&xd, 4).unwrap();
    type Case = (Array, fn(f64) -> f64);
    let cases: Vec<Case> = vec![
        (x.exp().unwrap(), f64::exp),
        (x.log().unwrap(), f64::ln),
        (x.sqrt().unwrap(), f64::sqrt),
        (x.sin().unwrap(), f64::sin),
        (x.cos().unwrap(), f64::cos),
        (x.tanh().unwrap(), f64::tanh),
        (x.log1p().unwrap(), f64::ln_1p),
        (x.arctan().unwrap(), f64::atan),
        (x.floor().unwrap(), f64::floor),
    ];
    for (a, f) in cases {
        assert_array_eq(&a, &xd.mapv(f), 1e-15);
    }
    // Round half to even, like numpy.round.
    let halves = from_ndarray(
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.5, 1.5, 2.5, -0.5]).unwrap(),
        2,
    )
    .unwrap();
    assert_array_eq(
        &halves.round().unwrap(),
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0, 2.0, 2.0, -0.0]).unwrap(),
        0.0,
    );
}

#[test]
fn broadcasting_follows_numpy() {
    let (md, rd, cd) = (
        data(&[6, 4], 0.2, 1.0),
        data(&[4], 1.0, 0.0),
        data(&[6, 1], 0.5, -1.0),
    );
    let m = from_ndarray(&md, [4, 3]).unwrap();
    let row = from_ndarray(&rd, 3).unwrap();
    let col = from_ndarray(&cd, [4, 1]).unwrap();
    let out = (&(&m + &row).unwrap() * &col).unwrap();
    assert_eq!(out.chunks(), &[vec![4, 2], vec![3, 1]]);
    assert_array_eq(&out, &((&md + &rd) * &cd), 1e-14);
    // A size-1 axis against a larger one, in three dimensions.
    let (ad, bd) = (data(&[2, 1, 5], 1.0, 0.0), data(&[3, 1], 1.0, 2.0));
    let a = from_ndarray(&ad, [1, 1, 2]).unwrap();
    let b = from_ndarray(&bd, [2, 1]).unwrap();
    assert_array_eq(&(&a - &b).unwrap(), &(&ad - &bd), 0.0);
}

#[test]
fn shape_and_dtype_mismatches_are_build_time_errors() {
    let a = from_ndarray(&data(&[4, 3], 1.0, 0.0), 2).unwrap();
    let b = from_ndarray(&data(&[4, 2], 1.0, 0.0), 2).unwrap();
    let err = (&a + &b).unwrap_err().to_string();
    assert_eq!(
        err,
        "shape error: add: operands of shapes [[4, 3], [4, 2]] cannot be broadcast together"
    );
    let err = a.logical_and(&a).unwrap_err().to_string();
    assert_eq!(
        err,
        "and of float64 array of shape [4, 3] and float64 array of shape [4, 3]: type error: And is not supported for float64"
    );
    let err = a.compute::<i64>(&SyncScheduler).unwrap_err().to_string();
    assert!(
        err.contains("cannot compute a float64 array as int64"),
        "{err}"
    );
}

#[test]
fn operands_with_different_chunks_are_aligned() {
    let (ad, bd) = (data(&[10, 7], 0.5, 1.0), data(&[10, 7], 0.25, -3.0));
    let a = from_ndarray(&ad, [4, 3]).unwrap();
    let b = from_ndarray(&bd, [3, 5]).unwrap();
    let c = (&a * &b).unwrap();
    // The union of both cuttings.
    assert_eq!(c.chunks(), &[vec![3, 1, 2, 2, 1, 1], vec![3, 2, 1, 1]]);
    assert_array_eq(&c, &(&ad * &bd), 0.0);
    let row = from_ndarray(&data(&[7], 1.0, 0.0), 2).unwrap();
    assert_array_eq(&(&a + &row).unwrap(), &(&ad + &data(&[7], 1.0, 0.0)), 0.0);
}

#[test]
fn dtypes_promote_like_numpy() {
    let i = from_ndarray(&ints(&[5]), 2).unwrap();
    let f32s = i.astype(DType::F32).unwrap();
    let u8s = from_ndarray(
        &ArrayD::from_shape_vec(IxDyn(&[5]), vec![250u8, 3, 0, 7, 128]).unwrap(),
        2,
    )
    .unwrap();
    // (expression, dtype numpy gives it)
    let cases: Vec<(Array, DType)> = vec![
        ((&i + 1).unwrap(), DType::I64),
        ((&i + 1.5).unwrap(), DType::F64),
        ((&i / 2).unwrap(), DType::F64),
        ((&f32s * 2.0).unwrap(), DType::F32),
        ((&f32s + &i).unwrap(), DType::F64),
        ((&u8s + 1).unwrap(), DType::U8),
        ((&u8s + &i).unwrap(), DType::I64),
        ((&u8s * &f32s).unwrap(), DType::F32),
        (i.less(0).unwrap(), DType::Bool),
        (i.sqrt().unwrap(), DType::F64),
        (f32s.sqrt().unwrap(), DType::F32),
        (i.isnan().unwrap(), DType::Bool),
    ];
    for (a, want) in cases {
        assert_eq!(a.dtype(), want, "{a:?}");
    }
    // uint8 arithmetic wraps like numpy: 250 + 10 == 4.
    let wrapped = (&u8s + 10).unwrap();
    assert_array_eq(
        &wrapped,
        &ArrayD::from_shape_vec(IxDyn(&[5]), vec![4u8, 13, 10, 17, 138]).unwrap(),
        0.0,
    );
}

#[test]
fn integer_division_and_remainder_follow_python() {
    let a = ArrayD::from_shape_vec(IxDyn(&[6]), vec![7i64, -7, 7, -7, 5, 3]).unwrap();
    let b = ArrayD::from_shape_vec(IxDyn(&[6]), vec![2i64, 2, -2, -2, 0, 0]).unwrap();
    let (x, y) = (from_ndarray(&a, 4).unwrap(), from_ndarray(&b, 4).unwrap());
    // numpy: [7,-7,7,-7,5,3] // [2,2,-2,-2,0,0] == [3,-4,-4,3,0,0]; % == [1,1,-1,-1,0,0]
    assert_array_eq(
        &x.floor_div(&y).unwrap(),
        &ArrayD::from_shape_vec(IxDyn(&[6]), vec![3i64, -4, -4, 3, 0, 0]).unwrap(),
        0.0,
    );
    assert_array_eq(
        &(&x % &y).unwrap(),
        &ArrayD::from_shape_vec(IxDyn(&[6]), vec![1i64, 1, -1, -1, 0, 0]).unwrap(),
        0.0,
    );
    let f = x.astype(DType::F64).unwrap();
    // numpy: -7.0 % 2.0 == 1.0 and -7.0 // 2.0 == -4.0
    let r = (&f % 2.0).unwrap();
    assert_array_eq(
        &r,
        &ArrayD::from_shape_vec(IxDyn(&[6]), vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).unwrap(),
        0.0,
    );
    let err = x
        .pow(-1)
        .unwrap()
        .compute::<i64>(&SyncScheduler)
        .unwrap_err()
        .to_string();
    assert!(err.contains("negative integer powers"), "{err}");
}

#[test]
fn comparisons_where_and_logic() {
    let xd = data(&[9, 4], 0.1, -5.0);
    let x = from_ndarray(&xd, [4, 4]).unwrap();
    let positive = x.greater(0.0).unwrap();
    let small = x.abs().unwrap().less_equal(2.0).unwrap();
    let both = (&positive & &small).unwrap();
    let picked = where_(&both, &x, (&x * -1.0).unwrap()).unwrap();
    let want = xd.mapv(|v| if v > 0.0 && v.abs() <= 2.0 { v } else { -v });
    assert_array_eq(&picked, &want, 0.0);
    assert_array_eq(
        &both.logical_not().unwrap(),
        &xd.mapv(|v| !(v > 0.0 && v.abs() <= 2.0)),
        0.0,
    );
    let scalar_where = where_(&positive, 1.0, 0.0).unwrap();
    assert_array_eq(
        &scalar_where,
        &xd.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 }),
        0.0,
    );
    let nan = (&x / 0.0).unwrap().mul(0.0).unwrap();
    assert_array_eq(
        &nan.isnan().unwrap(),
        &xd.mapv(|v| (v / 0.0 * 0.0).is_nan()),
        0.0,
    );
}

#[test]
fn casts_follow_astype() {
    let d = ArrayD::from_shape_vec(IxDyn(&[5]), vec![-1.7, 0.0, 2.9, 300.5, f64::NAN]).unwrap();
    let x = from_ndarray(&d, 2).unwrap();
    assert_array_eq(&x.astype(DType::Bool).unwrap(), &d.mapv(|v| v != 0.0), 0.0);
    assert_array_eq(&x.astype(DType::I32).unwrap(), &d.mapv(|v| v as i32), 0.0);
    assert_array_eq(
        &x.astype(DType::I64).unwrap().astype(DType::U8).unwrap(),
        &d.mapv(|v| v as i64 as u8),
        0.0,
    );
}

#[test]
fn chains_of_elementwise_ops_fuse_into_one_task_per_block() {
    let x = from_ndarray(&data(&[8, 8], 0.1, 0.0), 4).unwrap();
    let y = from_ndarray(&data(&[8, 8], 0.2, 1.0), 4).unwrap();
    let mut z = (&x + &y).unwrap();
    for _ in 0..20 {
        z = (&(&z * 0.5).unwrap() + &x).unwrap().sin().unwrap();
    }
    // The layer for z reads x's and y's blocks directly: no intermediate arrays exist.
    let layer = partita::Collection::layer(&z);
    assert_eq!(layer.tasks().len(), 4);
    let graph = Layer::materialize(std::slice::from_ref(layer)).unwrap();
    assert_eq!(graph.len(), 4 + 4 + 4);
    let (_, stats) =
        compute_collections(&[&z], &LocalScheduler::new(), &ComputeOptions::default()).unwrap();
    // x's and y's literal blocks, then one kernel per block of z (which reads two inputs,
    // so nothing is left for the chain fusion to merge).
    assert_eq!(stats.tasks_run, 12);
}

#[test]
fn elementwise_graphs_travel_as_data() {
    let xd = data(&[6, 6], 0.3, 0.0);
    let x = from_ndarray(&xd, 3).unwrap();
    let z = (&x.exp().unwrap() + &x.cos().unwrap()).unwrap();
    let graph = Layer::materialize(&[partita::Collection::layer(&z).clone()]).unwrap();
    let back = Graph::decode(&graph.encode().unwrap()).unwrap();
    let keys = partita::Collection::output_keys(&z);
    let values = partita::compute(back, &keys, &SyncScheduler).unwrap();
    let chunk = values[0]
        .get::<partita::array::Chunk>()
        .unwrap()
        .typed::<f64>()
        .unwrap()
        .clone();
    assert!((chunk[[0, 1]] - (xd[[0, 1]].exp() + xd[[0, 1]].cos())).abs() < 1e-14);
}

/// A shape, a second shape that broadcasts against it (some axes 1, maybe fewer axes), and
/// chunk sizes per axis for each.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec(1usize..6, 1..4).prop_flat_map(|shape| {
        let nd = shape.len();
        let ones = prop::collection::vec(any::<bool>(), nd);
        let drop = 0..nd;
        let ca = shape.iter().map(|&d| 1..=d).collect::<Vec<_>>();
        (Just(shape), ones, drop, ca).prop_flat_map(|(shape, ones, drop, ca)| {
            let other: Vec<usize> = shape
                .iter()
                .zip(&ones)
                .skip(drop)
                .map(|(&d, &one)| if one { 1 } else { d })
                .collect();
            let cb = other.iter().map(|&d| 1..=d).collect::<Vec<_>>();
            (Just(shape), Just(other), Just(ca), cb)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn broadcast_expressions_match_ndarray_for_any_chunking(
        (sa, sb, ca, cb) in broadcast_pair(),
        seed in 0u64..1000,
    ) {
        let (da, db) = (data(&sa, 0.3, -5.0), data(&sb, 0.7, 1.0));
        let (a, b) = (from_ndarray(&da, ca).unwrap(), from_ndarray(&db, cb).unwrap());
        // where(a > b, exp(a * b / 100), (a - 2) / (|b| + 1)), broadcast both ways.
        let e = where_(
            a.greater(&b).unwrap(),
            (&(&a * &b).unwrap() / 100.0).unwrap().exp().unwrap(),
            (&(&a - 2.0).unwrap() / &(&b.abs().unwrap() + 1.0).unwrap()).unwrap(),
        )
        .unwrap();
        let shape: Vec<usize> = e.shape().to_vec();
        let (va, vb) = (da.broadcast(IxDyn(&shape)).unwrap(), db.broadcast(IxDyn(&shape)).unwrap());
        let want = Zip::from(&va).and(&vb).map_collect(|&x, &y| {
            if x > y { (x * y / 100.0).exp() } else { (x - 2.0) / (y.abs() + 1.0) }
        });
        assert_array_eq(&e, &want, 1e-12);
        // The same through a reduction that runs the expression itself.
        let total = e.sum(partita::array::Axes::All).unwrap();
        assert_array_eq(&total, &ndarray::arr0(want.sum()).into_dyn(), 1e-9);
        // Random numbers, transposed and generated in place, against a stored operand
        // chunked otherwise (so one side is rechunked to align).
        let r = partita::array::random::random(&sa, 2, seed).unwrap();
        let rw = r.compute::<f64>(&SyncScheduler).unwrap();
        let rev: Vec<usize> = sa.iter().rev().copied().collect();
        let stored = from_ndarray(&data(&rev, 0.1, 0.0), 3).unwrap();
        let mixed = (&r.t().unwrap() * &stored).unwrap();
        let want = &rw.t() * &data(&rev, 0.1, 0.0);
        assert_array_eq(&mixed, &want, 1e-12);
    }
}

/// `persist` on every scheduler gives an array equal to the original whose later graphs,
/// on every scheduler, start from the persisted blocks (a cluster's stay on its workers and
/// other schedulers fetch them).
#[test]
fn persisted_arrays_compute_alike_on_every_scheduler() {
    let a = data(&[7, 5], 0.5, -3.0);
    let x = from_ndarray(&a, [3, 2]).unwrap();
    let y = (&x * 2.0).unwrap();
    let expected = a.mapv(|v| v * 2.0 + 1.0);
    for scheduler in partita_tests::schedulers() {
        let persisted = y
            .persist(scheduler.as_ref())
            .unwrap_or_else(|e| panic!("persisting on {}: {e}", scheduler.name()));
        assert_eq!(persisted.chunks(), y.chunks());
        assert_array_eq(&(&persisted + 1.0).unwrap(), &expected, 0.0);
        // Held, not recomputed: the persisted graph has one task per block, no inputs.
        let graph = Layer::materialize(&[std::sync::Arc::clone(persisted.layer())]).unwrap();
        assert_eq!(graph.len(), 9, "on {}", scheduler.name());
        assert!(graph.ids().all(|id| graph.dependencies(id).is_empty()));
        // On a cluster, handles to blocks left on the workers; elsewhere the values.
        let remote = (graph.ids())
            .filter(|id| Persisted::of(graph.op(*id).as_ref()).is_some())
            .count();
        let on_cluster = scheduler.name() == "distributed";
        assert_eq!(remote, if on_cluster { 9 } else { 0 });
    }
}

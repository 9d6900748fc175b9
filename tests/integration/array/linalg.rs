//! Matrix products against ndarray's `dot`.

use ndarray::{ArrayD, Ix2, IxDyn};
use partita::SyncScheduler;
use partita::array::{DType, from_ndarray, random};
use partita_tests::assert_array_eq;

fn mat(r: usize, c: usize, seed: f64) -> ndarray::Array2<f64> {
    ndarray::Array2::from_shape_fn((r, c), |(i, j)| {
        ((i * 31 + j * 17) as f64 * 0.01 + seed).sin()
    })
}

#[test]
fn matmul_matches_ndarray_for_any_chunking() {
    let (a, b) = (mat(13, 9, 0.3), mat(9, 11, 1.7));
    let want = a.dot(&b).into_dyn();
    for (ca, cb) in [
        ([5, 4], [4, 3]),
        ([13, 9], [9, 11]),
        ([3, 2], [5, 6]),
        ([1, 9], [9, 1]),
    ] {
        let x = from_ndarray(&a.clone().into_dyn(), ca).unwrap();
        let y = from_ndarray(&b.clone().into_dyn(), cb).unwrap();
        let z = x.matmul(&y).unwrap();
        assert_eq!(z.chunks()[0], x.chunks()[0]);
        assert_array_eq(&z, &want, 1e-12);
    }
}

#[test]
fn vectors_follow_numpy_matmul() {
    let (a, v) = (
        mat(6, 4, 0.1),
        ndarray::Array1::from_shape_fn(4, |i| i as f64 - 1.5),
    );
    let x = from_ndarray(&a.clone().into_dyn(), [4, 3]).unwrap();
    let y = from_ndarray(&v.clone().into_dyn(), 3).unwrap();
    assert_array_eq(&x.matmul(&y).unwrap(), &a.dot(&v).into_dyn(), 1e-12);
    let w = ndarray::Array1::from_shape_fn(6, |i| i as f64 * 0.5);
    let u = from_ndarray(&w.clone().into_dyn(), 4).unwrap();
    assert_array_eq(&u.dot(&x).unwrap(), &w.dot(&a).into_dyn(), 1e-12);
    let inner = u.dot(&u).unwrap();
    assert_eq!(inner.shape(), &[] as &[usize]);
    assert_array_eq(&inner, &ArrayD::from_elem(IxDyn(&[]), w.dot(&w)), 1e-12);
}

#[test]
fn integer_products_and_errors() {
    let a = ndarray::Array2::from_shape_fn((4, 5), |(i, j)| (i * 5 + j) as i32 - 7);
    let x = from_ndarray(&a.clone().into_dyn(), 2).unwrap();
    let p = x.matmul(&x.t().unwrap()).unwrap();
    assert_eq!(p.dtype(), DType::I32);
    assert_array_eq(&p, &a.dot(&a.t()).into_dyn(), 0.0);
    let err = x.matmul(&x).unwrap_err().to_string();
    assert_eq!(
        err,
        "shape error: matmul: shapes [4, 5] and [4, 5] do not line up (5 != 4)"
    );
    let three = from_ndarray(&ArrayD::<f64>::zeros(IxDyn(&[2, 2, 2])), 1).unwrap();
    assert!(
        three
            .matmul(&three)
            .unwrap_err()
            .to_string()
            .contains("not implemented")
    );
}

#[test]
fn m_times_m_transpose_summed() {
    let m = random::random(&[60, 60], [25, 25], 5).unwrap();
    let md = m
        .compute::<f64>(&SyncScheduler)
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap();
    let total = m
        .matmul(&m.t().unwrap())
        .unwrap()
        .sum(partita::array::Axes::All)
        .unwrap();
    assert_array_eq(
        &total,
        &ArrayD::from_elem(IxDyn(&[]), md.dot(&md.t()).sum()),
        1e-12,
    );
}

#[test]
fn tensordot_matches_an_explicit_sum() {
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |ix| {
        (ix[0] * 20 + ix[1] * 5 + ix[2]) as f64 * 0.1
    });
    let b = ArrayD::from_shape_fn(IxDyn(&[5, 4, 2]), |ix| {
        (ix[0] as f64 - ix[1] as f64) * 0.5 + ix[2] as f64
    });
    let x = from_ndarray(&a, [2, 3, 2]).unwrap();
    let y = from_ndarray(&b, [3, 2, 1]).unwrap();
    // Contract a's axes (1, 2) with b's axes (1, 0): out[i, k] = sum_{j, l} a[i, j, l] b[l, j, k].
    let t = partita::array::tensordot(&x, &y, &[1, 2], &[1, 0]).unwrap();
    let want = ArrayD::from_shape_fn(IxDyn(&[3, 2]), |ix| {
        let mut s = 0.0;
        for j in 0..4 {
            for l in 0..5 {
                s += a[[ix[0], j, l]] * b[[l, j, ix[1]]];
            }
        }
        s
    });
    assert_array_eq(&t, &want, 1e-12);
    // No contraction: the outer product.
    let outer = partita::array::tensordot(&x, &y, &[], &[]).unwrap();
    assert_eq!(outer.shape(), &[3, 4, 5, 5, 4, 2]);
    let err = partita::array::tensordot(&x, &y, &[0], &[0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("axis 0 of a (length 3) does not match axis 0 of b (length 5)"),
        "{err}"
    );
    assert!(
        partita::array::tensordot(&x, &y, &[1, 1], &[1, 0])
            .unwrap_err()
            .to_string()
            .contains("repeated")
    );
}

#[test]
fn boolean_products_are_boolean_like_numpy() {
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![true, false, true, false, false, false])
        .unwrap();
    let b = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![false, true, false, false, true, false])
        .unwrap();
    let (x, y) = (from_ndarray(&a, 2).unwrap(), from_ndarray(&b, 2).unwrap());
    let p = x.matmul(&y).unwrap();
    assert_eq!(p.dtype(), DType::Bool);
    // numpy: [[True, True], [False, False]]
    assert_array_eq(
        &p,
        &ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![true, true, false, false]).unwrap(),
        0.0,
    );
}

#[test]
fn f32_and_transposed_operands_match_ndarray() {
    let (a, b) = (mat(17, 12, 0.4), mat(17, 12, 2.2));
    // a @ b.T: the right operand's blocks are transposed views (column-major strides)
    let want = a.dot(&b.t()).into_dyn();
    let x = from_ndarray(&a.clone().into_dyn(), [5, 7]).unwrap();
    let y = from_ndarray(&b.clone().into_dyn(), [6, 7]).unwrap();
    assert_array_eq(&x.matmul(&y.t().unwrap()).unwrap(), &want, 1e-12);
    let (a32, b32) = (a.mapv(|v| v as f32), b.mapv(|v| v as f32));
    let want32 = a32.dot(&b32.t()).into_dyn();
    let (x32, y32) = (x.astype(DType::F32).unwrap(), y.astype(DType::F32).unwrap());
    assert_array_eq(&x32.matmul(&y32.t().unwrap()).unwrap(), &want32, 1e-5);
}

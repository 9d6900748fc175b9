//! `.npy` files (checked against bytes NumPy wrote) and map_blocks.

use ndarray::{ArrayD, IxDyn};
use partita::array::{Chunk, DType, from_ndarray, map_blocks, read_npy};
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::assert_array_eq;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// numpy 2 `np.save` output for small arrays (see the names).
const F8_2X3: &str = "934e554d5059010076007b276465736372273a20273c6638272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a0000000000000000000000000000e03f000000000000f03f000000000000f83f00000000000000400000000000000440";
const I4_FORTRAN: &str = "934e554d5059010076007b276465736372273a20273c6934272c2027666f727472616e5f6f72646572273a20547275652c20277368617065273a2028322c2033292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000300000001000000040000000200000005000000";
const BOOL_4: &str = "934e554d5059010076007b276465736372273a20277c6231272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028342c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a01000101";
const U1_SCALAR: &str = "934e554d5059010076007b276465736372273a20277c7531272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a07";
const F4_BIG_ENDIAN: &str = "934e554d5059010076007b276465736372273a20273e6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028332c292c207d2020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000003f80000040000000";

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn reads_what_numpy_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = read_npy(write(&dir, "a.npy", &hex(F8_2X3)), 1).unwrap();
    let want = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]).unwrap();
    assert_array_eq(&a, &want, 0.0);
    let f = read_npy(write(&dir, "f.npy", &hex(I4_FORTRAN)), 2).unwrap();
    assert_array_eq(
        &f,
        &ArrayD::from_shape_fn(IxDyn(&[2, 3]), |ix| (ix[0] * 3 + ix[1]) as i32),
        0.0,
    );
    let b = read_npy(write(&dir, "b.npy", &hex(BOOL_4)), 3).unwrap();
    assert_array_eq(
        &b,
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![true, false, true, true]).unwrap(),
        0.0,
    );
    let s = read_npy(write(&dir, "s.npy", &hex(U1_SCALAR)), 1).unwrap();
    assert_array_eq(&s, &ArrayD::from_elem(IxDyn(&[]), 7u8), 0.0);
    let be = read_npy(write(&dir, "be.npy", &hex(F4_BIG_ENDIAN)), 2).unwrap();
    assert_array_eq(
        &be,
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0f32, 1.0, 2.0]).unwrap(),
        0.0,
    );
}

#[test]
fn writes_what_numpy_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]).unwrap();
    let path = dir.path().join("out.npy");
    from_ndarray(&data, 1)
        .unwrap()
        .to_npy(&path, &SyncScheduler)
        .unwrap();
    // Byte for byte what numpy.save writes for the same array.
    assert_eq!(std::fs::read(&path).unwrap(), hex(F8_2X3));
    let x = from_ndarray(
        &ArrayD::from_shape_fn(IxDyn(&[5, 4, 3]), |ix| ix[0] as i64 - ix[2] as i64),
        2,
    )
    .unwrap();
    let p2 = dir.path().join("x.npy");
    x.to_npy(&p2, &LocalScheduler::new()).unwrap();
    let back = read_npy(&p2, 3).unwrap();
    assert_array_eq(&back, &x.compute::<i64>(&SyncScheduler).unwrap(), 0.0);
    // Only the file itself is left: no temporary files.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.npy");
    let err = read_npy(&missing, 1).unwrap_err().to_string();
    assert!(err.contains("missing.npy"), "{err}");
    let good = hex(F8_2X3);
    for cut in [0, 5, 9, 20, good.len() - 1] {
        let p = write(&dir, "cut.npy", &good[..cut]);
        let err = read_npy(&p, 1).unwrap_err().to_string();
        assert!(err.contains("cut.npy"), "{err}");
    }
    let complex = String::from_utf8(hex(F8_2X3))
        .unwrap_or_default()
        .replace("<f8", "<c8");
    if !complex.is_empty() {
        let p = write(&dir, "c.npy", complex.as_bytes());
        assert!(
            read_npy(&p, 1)
                .unwrap_err()
                .to_string()
                .contains("not implemented")
        );
    }
}

#[test]
fn a_failed_write_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let x = from_ndarray(&ArrayD::<f64>::zeros(IxDyn(&[3])), 1).unwrap();
    let bad = map_blocks(&[&x], DType::F64, None, |_| {
        Err(partita::Error::Type("kernel failed".into()))
    })
    .unwrap();
    let path = dir.path().join("never.npy");
    assert!(bad.to_npy(&path, &SyncScheduler).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let err = x
        .to_npy(dir.path().join("no/such/dir/x.npy"), &SyncScheduler)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no/such/dir/x.npy"), "{err}");
}

#[test]
fn map_blocks_runs_a_kernel_per_block() {
    let d = ArrayD::from_shape_fn(IxDyn(&[7, 5]), |ix| (ix[0] * 5 + ix[1]) as f64);
    let x = from_ndarray(&d, [3, 2]).unwrap();
    let y = x
        .map_blocks(DType::F64, |c| {
            let a = c.typed::<f64>()?;
            Ok(Chunk::new(a.mapv(|v| v * v - 1.0)))
        })
        .unwrap();
    assert_array_eq(&y, &d.mapv(|v| v * v - 1.0), 0.0);
    // Two inputs with different chunks are aligned first.
    let z = from_ndarray(&d, [2, 5]).unwrap();
    let s = map_blocks(&[&x, &z], DType::F64, None, |b| {
        Ok(Chunk::new(
            (b[0].typed::<f64>()? + b[1].typed::<f64>()?).into_owned(),
        ))
    })
    .unwrap();
    assert_array_eq(&s, &(&d * 2.0), 0.0);
}

#[test]
fn map_blocks_checks_what_the_kernel_returns() {
    let x = from_ndarray(&ArrayD::<f64>::zeros(IxDyn(&[4, 4])), 2).unwrap();
    let wrong = x
        .map_blocks(DType::F64, |_| {
            Ok(Chunk::new(ArrayD::<f64>::zeros(IxDyn(&[3, 3]))))
        })
        .unwrap();
    let err = wrong
        .compute::<f64>(&SyncScheduler)
        .unwrap_err()
        .to_string();
    assert!(err.contains("block [0, 0] returned a float64 block of shape [3, 3], expected float64 of shape [2, 2]"), "{err}");
    let typed = x.map_blocks(DType::I64, |c| Ok(c.clone())).unwrap();
    assert!(
        typed
            .compute::<i64>(&SyncScheduler)
            .unwrap_err()
            .to_string()
            .contains("expected int64")
    );
    let bigger = map_blocks(
        &[&x],
        DType::F64,
        Some(vec![vec![1, 1], vec![3, 3]].into()),
        |_| Ok(Chunk::new(ArrayD::<f64>::ones(IxDyn(&[1, 3])))),
    )
    .unwrap();
    assert_eq!(bigger.shape(), &[2, 6]);
    assert_array_eq(&bigger, &ArrayD::<f64>::ones(IxDyn(&[2, 6])), 0.0);
}

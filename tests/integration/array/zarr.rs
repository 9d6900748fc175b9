//! Zarr v3: a store written by Python's zarr 3.1 reads back; our stores round-trip (and
//! were checked by hand to open in Python's zarr); failed writes leave nothing behind.

use ndarray::{ArrayD, IxDyn};
use partita::array::{Chunks, DType, from_ndarray, map_blocks, random, read_zarr};
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::assert_array_eq;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// zarr.create_array(shape=(4, 3), chunks=(3, 2), dtype='int32') filled with
/// arange(12).reshape(4, 3) * 3 - 5, as zarr 3.1.6 wrote it (zstd-compressed chunks).
fn python_store(dir: &std::path::Path) {
    let meta = r#"{"shape": [4, 3], "data_type": "int32", "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, 2]}}, "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd", "configuration": {"level": 0, "checksum": false}}], "attributes": {}, "zarr_format": 3, "node_type": "array", "storage_transformers": []}"#;
    std::fs::create_dir_all(dir.join("c/0")).unwrap();
    std::fs::create_dir_all(dir.join("c/1")).unwrap();
    std::fs::write(dir.join("zarr.json"), meta).unwrap();
    let chunks = [
        (
            "c/0/0",
            "28b52ffd2018c10000fbfffffffeffffff04000000070000000d00000010000000",
        ),
        (
            "c/0/1",
            "28b52ffd2018a500006001000a001300000000000000020060e0016001",
        ),
        ("c/1/0", "28b52ffd20186500003016000000190001001e2802"),
        ("c/1/1", "28b52ffd2018450000101c0001000ac002"),
    ];
    for (name, bytes) in chunks {
        std::fs::write(dir.join(name), hex(bytes)).unwrap();
    }
}

#[test]
fn reads_a_store_python_zarr_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("py.zarr");
    python_store(&store);
    let a = read_zarr(&store, None).unwrap();
    assert_eq!(a.chunks(), &[vec![3, 1], vec![2, 1]]);
    let want = ArrayD::from_shape_fn(IxDyn(&[4, 3]), |ix| (ix[0] * 3 + ix[1]) as i32 * 3 - 5);
    assert_array_eq(&a, &want, 0.0);
    // Other chunks than the stored ones read the right regions too.
    assert_array_eq(
        &read_zarr(&store, Some(Chunks::Size(3))).unwrap(),
        &want,
        0.0,
    );
}

#[test]
fn every_dtype_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let x = random::random(&[9, 7], [4, 3], 5).unwrap();
    let cases = [
        (x.clone(), DType::F64),
        (x.astype(DType::F32).unwrap(), DType::F32),
        (
            (&x * 1000.0).unwrap().astype(DType::I64).unwrap(),
            DType::I64,
        ),
        (
            (&x * 1000.0).unwrap().astype(DType::I32).unwrap(),
            DType::I32,
        ),
        ((&x * 255.0).unwrap().astype(DType::U8).unwrap(), DType::U8),
        (x.greater(0.5).unwrap(), DType::Bool),
    ];
    // Written by every scheduler (the write ops are serializable, so a cluster's workers
    // write the blocks) and read back by another.
    for (s, scheduler) in partita_tests::schedulers().iter().enumerate() {
        for (i, (a, dtype)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("a{i}-{s}.zarr"));
            a.to_zarr(&path, scheduler.as_ref())
                .unwrap_or_else(|e| panic!("to_zarr on {}: {e}", scheduler.name()));
            let back = read_zarr(&path, None).unwrap();
            assert_eq!(back.dtype(), *dtype);
            assert_eq!(back.chunks(), a.chunks());
            assert_eq!(
                back.compute_chunk(&LocalScheduler::new()).unwrap(),
                a.compute_chunk(&SyncScheduler).unwrap()
            );
        }
    }
}

#[test]
fn chunks_are_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.zarr");
    partita::array::zeros(&[1000, 1000], DType::F64, 250)
        .unwrap()
        .to_zarr(&path, &SyncScheduler)
        .unwrap();
    let mut bytes = 0;
    for entry in walk(&path) {
        bytes += std::fs::metadata(entry).unwrap().len();
    }
    assert!(bytes < 100_000, "8 MB of zeros took {bytes} bytes on disk");
    assert_array_eq(
        &read_zarr(&path, None).unwrap(),
        &ArrayD::<f64>::zeros(IxDyn(&[1000, 1000])),
        0.0,
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn irregular_chunks_are_made_regular_for_zarr() {
    let dir = tempfile::tempdir().unwrap();
    let d = ArrayD::from_shape_fn(IxDyn(&[10]), |ix| ix[0] as f64);
    let x = from_ndarray(&d, Chunks::Explicit(vec![vec![2, 5, 3]])).unwrap();
    let path = dir.path().join("irregular.zarr");
    x.to_zarr(&path, &SyncScheduler).unwrap();
    let back = read_zarr(&path, None).unwrap();
    assert_eq!(back.chunks(), &[vec![5, 5]]);
    assert_array_eq(&back, &d, 0.0);
}

#[test]
fn bad_paths_and_failed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let err = read_zarr(dir.path().join("missing.zarr"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.zarr") && err.contains("not a Zarr v3 array"),
        "{err}"
    );
    let x = from_ndarray(&ArrayD::<f64>::zeros(IxDyn(&[4])), 2).unwrap();
    let path = dir.path().join("x.zarr");
    x.to_zarr(&path, &SyncScheduler).unwrap();
    let err = x.to_zarr(&path, &SyncScheduler).unwrap_err().to_string();
    assert!(
        err.contains("x.zarr") && err.contains("refusing to overwrite"),
        "{err}"
    );
    // A computation that fails leaves neither the target nor a temporary directory.
    let bad = map_blocks(&[&x], DType::F64, None, |_| {
        Err(partita::Error::Type("kernel failed".into()))
    })
    .unwrap();
    let target = dir.path().join("never.zarr");
    assert!(bad.to_zarr(&target, &SyncScheduler).is_err());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["x.zarr".to_string()]);
}

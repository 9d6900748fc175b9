//! Readers and writers: parquet, CSV, IPC; atomic outputs; errors naming the file.

use std::path::Path;

use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita::frame::{CsvOptions, DataFrame, ParquetOptions, read_csv, read_ipc, read_parquet};
use partita::{Error, LocalScheduler, SyncScheduler};
use partita_tests::assert_frame_eq;

use super::sample;

fn write_parquet_file(frame: &mut polars::prelude::DataFrame, path: &Path, row_group: usize) {
    let file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(file)
        .with_row_group_size(Some(row_group))
        .finish(frame)
        .unwrap();
}

#[test]
fn parquet_round_trips_through_files_directories_and_globs() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(100, 31);
    let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
    let out = dir.path().join("table");
    assert_eq!(frame.to_parquet(&out, &LocalScheduler::new()).unwrap(), 100);
    for p in 0..4 {
        assert!(out.join(format!("part.{p}.parquet")).is_file());
    }
    for path in [
        out.clone(),
        out.join("*.parquet"),
        out.join("part.2.parquet"),
    ] {
        let back = read_parquet(&path, &ParquetOptions::default()).unwrap();
        let expected = if path.ends_with("part.2.parquet") {
            data.slice(50, 25)
        } else {
            data.clone()
        };
        assert_frame_eq(&back, &expected, &[], 0.0);
    }
    // Refuses to overwrite.
    let err = frame.to_parquet(&out, &SyncScheduler).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
}

#[test]
fn large_parquet_files_split_by_row_groups_and_push_down_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = sample(1000, 32);
    let path = dir.path().join("big.parquet");
    write_parquet_file(&mut data, &path, 100);
    let options = ParquetOptions {
        partition_bytes: Some(1),
        ..Default::default()
    };
    let frame = read_parquet(&path, &options).unwrap();
    assert_eq!(frame.npartitions(), 10);
    assert_frame_eq(&frame, &data, &[], 0.0);
    // Filters, projections and group-bys over row-group partitions.
    let query = frame
        .filter(col("v").gt(lit(30.0)))
        .unwrap()
        .select([col("k"), col("v")])
        .unwrap();
    let expected = data
        .clone()
        .lazy()
        .filter(col("v").gt(lit(30.0)))
        .select([col("k"), col("v")])
        .collect()
        .unwrap();
    assert_frame_eq(&query, &expected, &[], 0.0);
    let columns = read_parquet(
        &path,
        &ParquetOptions {
            columns: Some(vec!["n".into(), "k".into()]),
            partition_bytes: None,
        },
    )
    .unwrap();
    assert_eq!(columns.npartitions(), 1);
    assert_frame_eq(&columns, &data.select(["n", "k"]).unwrap(), &[], 0.0);
    assert_eq!(
        frame
            .len()
            .unwrap()
            .compute(&LocalScheduler::new())
            .unwrap(),
        1000
    );
}

#[test]
fn parquet_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = sample(10, 1);
    let mut b = sample(10, 2).drop("flag").unwrap();
    write_parquet_file(&mut a, &dir.path().join("a.parquet"), 5);
    write_parquet_file(&mut b, &dir.path().join("b.parquet"), 5);
    let err = read_parquet(dir.path(), &ParquetOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Schema(_)), "{err:?}");
    assert!(
        err.to_string().contains("b.parquet") && err.to_string().contains("flag"),
        "{err}"
    );

    let missing =
        read_parquet(dir.path().join("nope.parquet"), &ParquetOptions::default()).unwrap_err();
    assert!(missing.to_string().contains("nope.parquet"), "{missing}");

    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("x.parquet"), b"this is not parquet").unwrap();
    let err = read_parquet(&garbage, &ParquetOptions::default()).unwrap_err();
    assert!(err.to_string().contains("x.parquet"), "{err}");
}

#[test]
fn a_failing_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let frame = DataFrame::from_polars(sample(40, 33), 4).unwrap();
    let failing = frame
        .with_columns([col("v").strict_cast(DataType::UInt8).alias("u")])
        .unwrap();
    let out = dir.path().join("out");
    assert!(failing.to_parquet(&out, &LocalScheduler::new()).is_err());
    assert!(
        failing
            .to_csv(dir.path().join("csv"), &SyncScheduler)
            .is_err()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn csv_splits_into_line_aligned_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(500, 34).drop("flag").unwrap();
    let frame = DataFrame::from_polars(data.clone(), 2).unwrap();
    let out = dir.path().join("csv");
    frame.to_csv(&out, &SyncScheduler).unwrap();
    for blocksize in [None, Some(1000), Some(37)] {
        let options = CsvOptions {
            blocksize,
            ..Default::default()
        };
        let back = read_csv(&out, &options).unwrap();
        if blocksize == Some(37) {
            assert!(back.npartitions() > 50, "{}", back.npartitions());
        }
        // What polars itself reads from the same files.
        let mut expected = Vec::new();
        for p in 0..2 {
            let path = out.join(format!("part.{p}.csv"));
            expected.push(
                LazyCsvReader::new(PlRefPath::new(path.to_str().unwrap()))
                    .with_infer_schema_length(Some(1000))
                    .finish()
                    .unwrap()
                    .collect()
                    .unwrap(),
            );
        }
        let mut all = expected[0].clone();
        all.vstack_mut(&expected[1]).unwrap();
        let expected = all;
        assert_frame_eq(&back, &expected, &[], 0.0);
    }
}

#[test]
fn malformed_csv_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    let mut text = String::from("a,b\n");
    for i in 0..2000 {
        text.push_str(&format!("{i},{}\n", i * 2));
    }
    text.push_str("oops,notanumber\n");
    std::fs::write(&path, text).unwrap();
    let frame = read_csv(
        &path,
        &CsvOptions {
            blocksize: Some(4096),
            ..Default::default()
        },
    )
    .unwrap();
    let err = frame.compute(&LocalScheduler::new()).unwrap_err();
    assert!(err.to_string().contains("bad.csv"), "{err}");

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.csv"), "x,y\n1,2\n").unwrap();
    std::fs::write(other.join("b.csv"), "x,z\n1,2\n").unwrap();
    let err = read_csv(&other, &CsvOptions::default()).unwrap_err();
    assert!(err.to_string().contains("b.csv"), "{err}");
}

#[test]
fn ipc_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(60, 35);
    let frame = DataFrame::from_polars(data.clone(), 3).unwrap();
    let out = dir.path().join("ipc");
    frame.to_ipc(&out, &LocalScheduler::new()).unwrap();
    let back = read_ipc(&out).unwrap();
    assert_eq!(back.npartitions(), 3);
    assert_frame_eq(&back, &data, &[], 0.0);
}

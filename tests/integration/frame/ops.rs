//! Per-partition operations, fusion, schema errors, and the whole-frame basics.

use partita::frame::DataFrame;
use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita::{Collection, Error, LocalScheduler, SyncScheduler};
use partita_tests::{assert_frame_eq, assert_polars_eq};

use super::{PARTITIONS, partitioned, sample};

#[test]
fn from_polars_round_trips_for_any_partition_count() {
    for (data, frame) in partitioned(20, 1) {
        assert_frame_eq(&frame, &data, &[], 0.0);
    }
    let err = DataFrame::from_polars(sample(3, 1), 0).unwrap_err();
    assert!(
        err.to_string().contains("npartitions must be between 1"),
        "{err}"
    );
    let err = DataFrame::from_polars(sample(3, 1), usize::MAX).unwrap_err();
    assert!(
        err.to_string().contains("got 18446744073709551615"),
        "{err}"
    );
}

#[test]
fn per_partition_operations_match_polars() {
    for (data, frame) in partitioned(50, 2) {
        let lf = || data.clone().lazy();
        let cases: Vec<(DataFrame, polars::prelude::DataFrame)> = vec![
            (
                frame
                    .select([col("k"), (col("v") * lit(2.0)).alias("v2")])
                    .unwrap(),
                lf().select([col("k"), (col("v") * lit(2.0)).alias("v2")])
                    .collect()
                    .unwrap(),
            ),
            (
                frame
                    .with_columns([(col("n") + col("g")).alias("s")])
                    .unwrap(),
                lf().with_columns([(col("n") + col("g")).alias("s")])
                    .collect()
                    .unwrap(),
            ),
            (
                frame
                    .filter(col("v").gt(lit(10.0)).and(col("flag")))
                    .unwrap(),
                lf().filter(col("v").gt(lit(10.0)).and(col("flag")))
                    .collect()
                    .unwrap(),
            ),
            (
                frame.drop(&["v", "flag"]).unwrap(),
                data.drop_many(["v", "flag"]),
            ),
            (
                frame.rename(&["k", "n"], &["key", "num"]).unwrap(),
                lf().rename(["k", "n"], ["key", "num"], true)
                    .collect()
                    .unwrap(),
            ),
            (
                frame
                    .cast(&[("n", DataType::Float64), ("g", DataType::Int32)])
                    .unwrap(),
                lf().with_columns([
                    col("n").cast(DataType::Float64),
                    col("g").cast(DataType::Int32),
                ])
                .collect()
                .unwrap(),
            ),
            (
                frame.fill_null(lit(0)).unwrap(),
                lf().fill_null(lit(0)).collect().unwrap(),
            ),
            (
                frame.drop_nulls(Some(&["k", "v"])).unwrap(),
                lf().drop_nulls(Some(cols(["k", "v"]))).collect().unwrap(),
            ),
            (
                frame.drop_nulls(None).unwrap(),
                lf().drop_nulls(None).collect().unwrap(),
            ),
        ];
        for (got, expected) in cases {
            assert_frame_eq(&got, &expected, &[], 1e-12);
        }
    }
}

#[test]
fn explode_matches_polars() {
    let lists = [
        Series::new("".into(), [0i64]),
        Series::new("".into(), [0i64, 1]),
        Series::new("".into(), Vec::<i64>::new()),
        Series::new("".into(), [5i64, 6, 7]),
    ];
    let data = polars::prelude::DataFrame::new_infer_height(vec![
        Column::new("id".into(), [1i64, 2, 3, 4]),
        Column::new("xs".into(), lists),
    ])
    .unwrap();
    for n in PARTITIONS {
        let frame = DataFrame::from_polars(data.clone(), n).unwrap();
        let expected = data
            .clone()
            .lazy()
            .explode(
                cols(["xs"]),
                ExplodeOptions {
                    empty_as_null: true,
                    keep_nulls: true,
                },
            )
            .collect()
            .unwrap();
        assert_frame_eq(&frame.explode(&["xs"]).unwrap(), &expected, &[], 0.0);
    }
}

#[test]
fn consecutive_operations_fuse_into_one_task_per_partition() {
    let frame = DataFrame::from_polars(sample(30, 3), 3).unwrap();
    let chained = frame
        .filter(col("v").gt(lit(0.0)))
        .unwrap()
        .with_columns([(col("v") + lit(1.0)).alias("w")])
        .unwrap()
        .select([col("k"), col("w")])
        .unwrap();
    let graph = partita::Layer::materialize(&[chained.layer().clone()]).unwrap();
    // Three data literals plus one plan task per partition: no task per operation.
    assert_eq!(graph.len(), 6);
}

#[test]
fn bad_columns_are_errors_when_the_operation_is_written() {
    let frame = DataFrame::from_polars(sample(10, 4), 2).unwrap();
    let cases: Vec<(Result<DataFrame, Error>, &str)> = vec![
        (frame.filter(col("nope").gt(lit(1))), "nope"),
        (frame.select([col("missing")]), "missing"),
        (frame.drop(&["gone"]), "gone"),
        (frame.rename(&["absent"], &["x"]), "absent"),
        (frame.cast(&[("zzz", DataType::Int64)]), "zzz"),
        (frame.group_by(&["nokey"]).map(|_| frame.clone()), "nokey"),
    ];
    for (result, column) in cases {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Schema(_)), "{err:?}");
        assert!(err.to_string().contains(column), "{err}");
    }
    // A type error: arithmetic on a string column.
    let err = frame
        .with_columns([(col("k") - col("n")).alias("x")])
        .unwrap_err();
    assert!(matches!(err, Error::Type(_)), "{err:?}");
    assert!(err.to_string().contains("column 'k'"), "{err}");
}

#[test]
fn a_failing_partition_names_its_task_and_the_frame_stays_usable() {
    let frame = DataFrame::from_polars(sample(20, 5), 4).unwrap();
    let strict = frame
        .with_columns([col("v").strict_cast(DataType::UInt8).alias("u")])
        .unwrap();
    let err = strict.compute(&LocalScheduler::new()).unwrap_err();
    assert!(matches!(err, Error::Compute { .. }), "{err:?}");
    // The same frame, without the failing column, still computes.
    assert_eq!(frame.compute(&SyncScheduler).unwrap().height(), 20);
}

#[test]
fn map_partitions_runs_a_user_function_and_checks_its_schema() {
    for (data, frame) in partitioned(25, 6) {
        let doubled = frame
            .map_partitions("double", |df| {
                df.lazy()
                    .with_column((col("n") * lit(2)).alias("n2"))
                    .collect()
            })
            .unwrap();
        let expected = data
            .clone()
            .lazy()
            .with_column((col("n") * lit(2)).alias("n2"))
            .collect()
            .unwrap();
        assert_frame_eq(&doubled, &expected, &[], 0.0);
    }
    // A function whose output schema changes with the data is caught, naming the function.
    let frame = DataFrame::from_polars(sample(10, 6), 2).unwrap();
    let sneaky = frame
        .map_partitions("sneaky", |df| {
            if df.height() == 0 {
                Ok(df)
            } else {
                df.lazy().with_column(lit(1).alias("extra")).collect()
            }
        })
        .unwrap();
    let err = sneaky.compute(&SyncScheduler).unwrap_err();
    assert!(err.to_string().contains("sneaky"), "{err}");
}

#[test]
fn len_head_tail_concat_and_persist() {
    for (data, frame) in partitioned(20, 7) {
        let s = LocalScheduler::new();
        assert_eq!(frame.len().unwrap().compute(&s).unwrap(), 20);
        let filtered = frame.filter(col("flag")).unwrap();
        let expected = data.clone().lazy().filter(col("flag")).collect().unwrap();
        assert_eq!(
            filtered.len().unwrap().compute(&s).unwrap(),
            expected.height() as u64
        );
        assert_polars_eq(
            &frame.head(5, &s).unwrap(),
            &data.head(Some(5)),
            &[],
            0.0,
            "head",
        );
        assert_polars_eq(
            &frame.tail(6, &s).unwrap(),
            &data.tail(Some(6)),
            &[],
            0.0,
            "tail",
        );
        assert_polars_eq(
            &frame.head(100, &s).unwrap(),
            &data,
            &[],
            0.0,
            "head past the end",
        );
        let both = DataFrame::concat(&[frame.clone(), filtered.clone()]).unwrap();
        assert_eq!(both.npartitions(), 2 * frame.npartitions());
        let mut stacked = data.clone();
        stacked.vstack_mut(&expected).unwrap();
        assert_frame_eq(&both, &stacked, &[], 0.0);
        let persisted = filtered.persist(&s).unwrap();
        assert_eq!(persisted.npartitions(), frame.npartitions());
        assert_frame_eq(&persisted, &expected, &[], 0.0);
    }
    let a = DataFrame::from_polars(sample(5, 1), 1).unwrap();
    let b = a.select([col("k")]).unwrap();
    let err = DataFrame::concat(&[a, b]).unwrap_err();
    assert!(err.to_string().contains("frame 1"), "{err}");
}

#[test]
fn partitions_survive_the_wire_codec() {
    let frame = DataFrame::from_polars(sample(30, 8), 3).unwrap();
    let graph =
        partita::Layer::materialize(&[frame.filter(col("flag")).unwrap().layer().clone()]).unwrap();
    let bytes = graph.encode().unwrap();
    let back = partita::Graph::decode(&bytes).unwrap();
    assert_eq!(back.len(), graph.len());
}

/// `persist` on every scheduler keeps the rows, schema and partition count, and later
/// graphs on every scheduler start from the persisted partitions.
#[test]
fn persisted_frames_compute_alike_on_every_scheduler() {
    let data = sample(40, 7);
    let frame = DataFrame::from_polars(data.clone(), 3)
        .unwrap()
        .filter(col("n").gt(lit(20)))
        .unwrap();
    let expected = data
        .clone()
        .lazy()
        .filter(col("n").gt(lit(20)))
        .with_columns([(col("n") * lit(2)).alias("twice")])
        .collect()
        .unwrap();
    for scheduler in partita_tests::schedulers() {
        let persisted = frame
            .persist(scheduler.as_ref())
            .unwrap_or_else(|e| panic!("persisting on {}: {e}", scheduler.name()));
        assert_eq!(persisted.npartitions(), 3);
        assert_eq!(persisted.schema(), frame.schema());
        let later = persisted
            .with_columns([(col("n") * lit(2)).alias("twice")])
            .unwrap();
        assert_frame_eq(&later, &expected, &["k", "g", "v", "n"], 0.0);
    }
}

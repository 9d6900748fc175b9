//! Arrow (arrow-rs) interop: record batches in and out, checked against polars.

use std::sync::Arc;

use partita::frame::DataFrame;
use partita::frame::arrow::arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use partita::frame::arrow::arrow_schema::{DataType as ArrowType, Field, Schema};
use partita::frame::arrow::{from_record_batch, to_record_batches};
use partita::frame::polars::prelude::*;
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::{assert_frame_eq, assert_polars_eq};

use super::{PARTITIONS, sample};

fn batch(offset: i64, rows: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", ArrowType::Int64, false),
        Field::new("name", ArrowType::Utf8, true),
        Field::new("score", ArrowType::Float64, true),
        Field::new("ok", ArrowType::Boolean, false),
    ]));
    let ids: Vec<i64> = (offset..offset + rows).collect();
    let names: Vec<Option<String>> = ids
        .iter()
        .map(|i| (i % 5 != 0).then(|| format!("n{}", i % 3)))
        .collect();
    let scores: Vec<Option<f64>> = ids
        .iter()
        .map(|i| (i % 7 != 0).then_some(*i as f64 * 0.5))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(names)),
        Arc::new(Float64Array::from(scores)),
        Arc::new(BooleanArray::from(
            ids.iter().map(|i| i % 2 == 0).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

#[test]
fn frames_from_record_batches_compute_like_polars() {
    let batches = vec![batch(0, 40), batch(40, 0), batch(40, 25)];
    let frame = DataFrame::from_record_batches(&batches).unwrap();
    assert_eq!(frame.npartitions(), 3);
    // The same data built directly in polars.
    let ids: Vec<i64> = (0..65).collect();
    let data = df!(
        "id" => ids.clone(),
        "name" => ids.iter().map(|i| (i % 5 != 0).then(|| format!("n{}", i % 3))).collect::<Vec<_>>(),
        "score" => ids.iter().map(|i| (i % 7 != 0).then_some(*i as f64 * 0.5)).collect::<Vec<_>>(),
        "ok" => ids.iter().map(|i| i % 2 == 0).collect::<Vec<_>>(),
    )
    .unwrap();
    assert_frame_eq(&frame, &data, &[], 0.0);
    let aggs = [col("score").sum().alias("s"), len()];
    let grouped = frame
        .group_by(&["name"])
        .unwrap()
        .agg(aggs.clone())
        .unwrap();
    let expected = data
        .clone()
        .lazy()
        .group_by([col("name")])
        .agg(aggs)
        .collect()
        .unwrap();
    assert_frame_eq(&grouped, &expected, &["name"], 1e-12);
}

#[test]
fn results_come_back_as_record_batches() {
    let data = sample(50, 51);
    for parts in PARTITIONS {
        let frame = DataFrame::from_polars(data.clone(), parts)
            .unwrap()
            .filter(col("n").gt(lit(20)))
            .unwrap();
        let expected = data
            .clone()
            .lazy()
            .filter(col("n").gt(lit(20)))
            .collect()
            .unwrap();
        let batches = frame
            .compute_record_batches(&LocalScheduler::new())
            .unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            expected.height()
        );
        let schema = frame.arrow_schema().unwrap();
        assert!(batches.iter().all(|b| b.schema() == schema));
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["k", "g", "v", "n", "flag"]);
        // Back into polars, the rows are polars' own.
        let back: Vec<_> = batches
            .iter()
            .map(|b| from_record_batch(b).unwrap())
            .collect();
        let mut all = expected.clear();
        for b in back {
            all.vstack_mut(&b).unwrap();
        }
        assert_polars_eq(&all, &expected, &[], 0.0, "round trip");
        // And arrow-rs sees the same values.
        let n: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name("n").unwrap();
                let c = c
                    .as_any()
                    .downcast_ref::<partita::frame::arrow::arrow_array::Int32Array>()
                    .unwrap();
                c.values().to_vec()
            })
            .collect();
        let expected_n: Vec<i32> = expected
            .column("n")
            .unwrap()
            .i32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(n, expected_n);
    }
}

#[test]
fn numeric_columns_cross_without_a_copy() {
    let b = batch(0, 1000);
    let arrow_ptr = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .as_ptr();
    let frame = from_record_batch(&b).unwrap();
    let polars_ptr = frame
        .column("id")
        .unwrap()
        .i64()
        .unwrap()
        .cont_slice()
        .unwrap()
        .as_ptr();
    assert_eq!(
        arrow_ptr, polars_ptr,
        "arrow-rs -> polars shares the buffer"
    );
    let out = to_record_batches(&frame).unwrap();
    let back_ptr = out[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .as_ptr();
    assert_eq!(back_ptr, polars_ptr, "polars -> arrow-rs shares the buffer");
    assert_eq!(out[0].column(1).null_count(), 200);
}

#[test]
fn mismatched_batches_are_refused() {
    let other = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", ArrowType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![1i64])) as ArrayRef],
    )
    .unwrap();
    let err = DataFrame::from_record_batches(&[batch(0, 3), other]).unwrap_err();
    assert!(err.to_string().contains("record batch 1"), "{err}");
    assert!(DataFrame::from_record_batches(&[]).is_err());
    let empty = DataFrame::from_polars(sample(0, 1), 2).unwrap();
    assert!(
        empty
            .compute_record_batches(&SyncScheduler)
            .unwrap()
            .is_empty()
    );
}

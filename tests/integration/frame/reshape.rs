//! repartition and describe against polars run directly on the same data.

use partita::frame::DataFrame;
use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita::{LocalScheduler, SyncScheduler};
use partita_tests::{assert_frame_eq, assert_polars_eq};

use super::{partitioned, sample};

#[test]
fn repartition_by_count_keeps_rows_in_order() {
    for (data, frame) in partitioned(45, 41) {
        for n in [1, 2, 3, 7, 40, 90] {
            let out = frame.repartition(n).unwrap();
            assert_eq!(out.npartitions(), n);
            assert_frame_eq(&out, &data, &[], 0.0);
            let parts = out.compute_partitions(&SyncScheduler).unwrap();
            let rows: Vec<usize> = parts.iter().map(|p| p.height()).collect();
            // Merges and splits are as even as the input allows: no output is more than
            // one input partition's worth (plus one row) above the average.
            let per_input = 45usize.div_ceil(frame.npartitions());
            assert!(
                rows.iter()
                    .all(|&r| r <= per_input * frame.npartitions().div_ceil(n) + 1),
                "{n} outputs from {}: {rows:?}",
                frame.npartitions()
            );
        }
    }
    assert!(
        DataFrame::from_polars(sample(5, 1), 2)
            .unwrap()
            .repartition(0)
            .is_err()
    );
}

#[test]
fn repartition_by_size_aims_at_the_target() {
    let data = sample(4000, 42);
    // Uneven inputs: one big partition and many tiny ones.
    let parts: Vec<polars::prelude::DataFrame> = [0usize, 3000, 3010, 3020, 3030, 4000]
        .windows(2)
        .map(|w| data.slice(w[0] as i64, w[1] - w[0]))
        .collect();
    let frame = DataFrame::from_partitions(parts).unwrap();
    let total = data.estimated_size() as u64;
    let target = total / 8;
    let out = frame
        .repartition_by_size(target, &LocalScheduler::new())
        .unwrap();
    assert_frame_eq(&out, &data, &[], 0.0);
    let sizes: Vec<u64> = out
        .compute_partitions(&SyncScheduler)
        .unwrap()
        .iter()
        .map(|p| p.estimated_size() as u64)
        .collect();
    assert!(
        (6..=12).contains(&sizes.len()),
        "{} partitions for 1/8 of the data each: {sizes:?}",
        sizes.len()
    );
    assert!(
        sizes.iter().all(|&s| s <= target * 3 / 2),
        "{sizes:?} vs {target}"
    );
    let err = frame.repartition_by_size(0, &SyncScheduler).unwrap_err();
    assert!(err.to_string().contains("above 0"), "{err}");
}

/// polars' own statistics of the numeric columns, in `describe`'s layout.
fn polars_describe(
    data: &polars::prelude::DataFrame,
    columns: &[&str],
) -> polars::prelude::DataFrame {
    let stats = |c: &str| -> Vec<Expr> {
        let x = col(c).cast(DataType::Float64);
        let mut e = vec![
            x.clone().count().cast(DataType::Float64),
            x.clone().null_count().cast(DataType::Float64),
            x.clone().mean(),
            x.clone().std(1),
            x.clone().min(),
        ];
        for q in [0.25, 0.5, 0.75] {
            e.push(x.clone().quantile(lit(q), QuantileMethod::Nearest));
        }
        e.push(x.max());
        e.into_iter()
            .enumerate()
            .map(|(i, e)| e.alias(format!("s{i}")))
            .collect()
    };
    let mut out = vec![Column::new(
        "statistic".into(),
        [
            "count",
            "null_count",
            "mean",
            "std",
            "min",
            "25%",
            "50%",
            "75%",
            "max",
        ],
    )];
    for c in columns {
        let row = data.clone().lazy().select(stats(c)).collect().unwrap();
        let values: Vec<Option<f64>> = row
            .columns()
            .iter()
            .map(|s| s.f64().unwrap().get(0))
            .collect();
        out.push(Column::new((*c).into(), values));
    }
    polars::prelude::DataFrame::new(9, out).unwrap()
}

#[test]
fn describe_matches_polars_statistics() {
    for (data, frame) in partitioned(70, 43) {
        let described = frame.describe().unwrap();
        let expected = polars_describe(&data, &["g", "v", "n"]);
        assert_frame_eq(&described, &expected, &[], 1e-9);
    }
    let empty = sample(0, 1);
    let described = DataFrame::from_polars(empty.clone(), 3)
        .unwrap()
        .describe()
        .unwrap()
        .compute(&SyncScheduler)
        .unwrap();
    let counts = described.column("v").unwrap().f64().unwrap();
    assert_eq!(counts.get(0), Some(0.0));
    assert_eq!(counts.get(2), None, "no mean of nothing");
    let strings = DataFrame::from_polars(df!("s" => ["a"]).unwrap(), 1).unwrap();
    let err = strings.describe().unwrap_err();
    assert!(err.to_string().contains("numeric"), "{err}");
}

#[test]
fn describe_percentiles_are_close_on_large_partitions() {
    // More values per partition than are kept: percentiles are approximate.
    let n = 200_000i64;
    let x: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64).collect();
    let data = df!("x" => x).unwrap();
    let got = DataFrame::from_polars(data.clone(), 4)
        .unwrap()
        .describe()
        .unwrap()
        .compute(&LocalScheduler::new())
        .unwrap();
    let expected = polars_describe(&data, &["x"]);
    let (g, e) = (
        got.column("x").unwrap().f64().unwrap(),
        expected.column("x").unwrap().f64().unwrap(),
    );
    for i in 0..9 {
        let (a, b) = (g.get(i).unwrap(), e.get(i).unwrap());
        let tolerance = if (5..8).contains(&i) {
            n as f64 / 1000.0
        } else {
            1e-6 * b.abs().max(1.0)
        };
        assert!((a - b).abs() <= tolerance, "statistic {i}: {a} vs {b}");
    }
    assert_polars_eq(
        &got.select(["statistic"]).unwrap(),
        &expected.select(["statistic"]).unwrap(),
        &[],
        0.0,
        "labels",
    );
}

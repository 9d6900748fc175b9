//! group_by + agg against polars: tree reductions, split_out shuffles, exact aggregations.

use partita::frame::DataFrame;
use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita_tests::assert_frame_eq;
use proptest::prelude::*;

use super::{partitioned, sample};

fn decomposable() -> Vec<Expr> {
    vec![
        col("v").sum().alias("sum"),
        col("n").sum().alias("nsum"),
        col("v").mean().alias("mean"),
        col("n").mean().alias("nmean"),
        col("v").min().alias("min"),
        col("n").max().alias("max"),
        col("v").count().alias("count"),
        len(),
        col("v").var(1).alias("var"),
        col("v").std(0).alias("std0"),
        col("n").std(1).alias("nstd"),
        col("n").first().alias("first"),
        col("n").last().alias("last"),
        (col("v") * lit(2.0) + col("n")).sum().alias("expr_sum"),
    ]
}

fn polars_agg(
    data: &polars::prelude::DataFrame,
    keys: &[&str],
    aggs: &[Expr],
) -> polars::prelude::DataFrame {
    data.clone()
        .lazy()
        .group_by(keys.iter().map(|k| col(*k)).collect::<Vec<_>>())
        .agg(aggs)
        .collect()
        .unwrap()
}

#[test]
fn decomposable_aggregations_match_polars_as_trees() {
    for (data, frame) in partitioned(60, 11) {
        for keys in [vec!["k"], vec!["k", "g"]] {
            let expected = polars_agg(&data, &keys, &decomposable());
            for split_every in [2, 8] {
                let got = frame
                    .group_by(&keys)
                    .unwrap()
                    .split_every(split_every)
                    .agg(decomposable())
                    .unwrap();
                assert_eq!(got.npartitions(), 1);
                if frame.npartitions() == 1 {
                    // The data's task, then one plan: no combine task.
                    assert_eq!(op_names(&got), ["literal", "frame-plan"]);
                }
                assert_frame_eq(&got, &expected, &keys, 1e-9);
            }
        }
    }
}

/// What partita's own group-by kernel computes (sums, counts, means, integer extremes and
/// an expression of them): partials, combines and split_out shuffles through it, against
/// polars on every scheduler.
#[test]
fn kernel_aggregations_match_polars_as_trees_and_shuffles() {
    let aggs = || {
        vec![
            col("v").sum().alias("sum"),
            col("n").sum().alias("nsum"),
            col("v").mean().alias("mean"),
            col("n").mean().alias("nmean"),
            col("n").min().alias("min"),
            col("g").max().alias("max"),
            col("v").count().alias("count"),
            len(),
            (col("n").max() - col("n").min()).alias("range"),
        ]
    };
    for (data, frame) in partitioned(60, 13) {
        for keys in [vec!["k"], vec!["g"], vec!["k", "g"]] {
            let expected = polars_agg(&data, &keys, &aggs());
            for (split_every, split_out) in [(2, 1), (8, 1), (2, 3)] {
                let got = frame
                    .group_by(&keys)
                    .unwrap()
                    .split_every(split_every)
                    .split_out(split_out)
                    .agg(aggs())
                    .unwrap();
                assert_frame_eq(&got, &expected, &keys, 1e-9);
            }
        }
    }
}

#[test]
fn first_and_last_follow_row_order() {
    // first/last depend on order, so compare exactly with an order-preserving frame.
    for (data, frame) in partitioned(40, 12) {
        let aggs = [col("n").first().alias("f"), col("n").last().alias("l")];
        let expected = polars_agg(&data, &["k"], &aggs);
        let got = frame
            .group_by(&["k"])
            .unwrap()
            .split_every(2)
            .agg(aggs)
            .unwrap();
        assert_frame_eq(&got, &expected, &["k"], 0.0);
    }
}

#[test]
fn split_out_spreads_groups_over_partitions() {
    for (data, frame) in partitioned(80, 13) {
        let expected = polars_agg(&data, &["g", "k"], &decomposable());
        let got = frame
            .group_by(&["g", "k"])
            .unwrap()
            .split_out(3)
            .agg(decomposable())
            .unwrap();
        assert_eq!(got.npartitions(), 3);
        assert_frame_eq(&got, &expected, &["g", "k"], 1e-9);
    }
}

#[test]
fn exact_aggregations_shuffle_the_rows() {
    let exact = vec![
        col("v").median().alias("median"),
        col("n").n_unique().alias("distinct"),
        col("v")
            .quantile(lit(0.25), QuantileMethod::Linear)
            .alias("q25"),
        (col("v").sum() / col("n").sum().cast(DataType::Float64)).alias("ratio"),
        col("v").sum().alias("sum"),
    ];
    for (data, frame) in partitioned(70, 14) {
        let expected = polars_agg(&data, &["k"], &exact);
        for split_out in [None, Some(1), Some(4)] {
            let mut by = frame.group_by(&["k"]).unwrap();
            if let Some(n) = split_out {
                by = by.split_out(n);
            }
            let got = by.agg(exact.clone()).unwrap();
            assert_frame_eq(&got, &expected, &["k"], 1e-9);
        }
    }
}

/// The names of the ops a frame's own layer runs and its dependencies' (whole graph).
fn op_names(frame: &DataFrame) -> Vec<String> {
    use partita::Collection;
    let graph = partita::Layer::materialize(&[std::sync::Arc::clone(frame.layer())]).unwrap();
    graph
        .ids()
        .map(|id| graph.op(id).name().to_string())
        .collect()
}

#[test]
fn expressions_of_aggregations_decompose_into_trees() {
    // H2O q7 (a range), q9 (Pearson's r squared from means and standard deviations), a
    // `when` over aggregates, casts, powers and literals: each aggregation decomposes and
    // the expression is applied to the combined results.
    let nan = lit(0.0) / lit(0.0);
    let cov = (col("v") * col("n")).mean() - col("v").mean() * col("n").mean();
    let den = col("v").std(0) * col("n").std(0);
    let aggs = vec![
        (col("v").max() - col("n").min()).alias("range"),
        when(den.clone().eq(lit(0.0)))
            .then(nan)
            .otherwise(cov / den)
            .pow(2)
            .alias("r2"),
        (col("v").sum() / len().cast(DataType::Float64)).alias("ratio"),
        (col("n").max().cast(DataType::Float64) * lit(0.5)).alias("half"),
        col("v").sum().sqrt().abs().alias("root"),
        when(len().gt(lit(3)))
            .then(col("n").sum())
            .otherwise(lit(-1))
            .alias("big"),
    ];
    for (data, frame) in partitioned(90, 17) {
        let expected = polars_agg(&data, &["k"], &aggs);
        for split_out in [1, 3] {
            let got = frame
                .group_by(&["k"])
                .unwrap()
                .split_out(split_out)
                .split_every(2)
                .agg(aggs.clone())
                .unwrap();
            assert_eq!(got.schema(), expected.schema(), "split_out {split_out}");
            let ops = op_names(&got);
            assert!(
                ops.iter().all(|o| o != "frame-hash-split") || split_out > 1,
                "a decomposable expression shuffled its rows: {ops:?}"
            );
            assert_frame_eq(&got, &expected, &["k"], 1e-9);
        }
    }
}

#[test]
fn mostly_distinct_keys_skip_the_partial_aggregation() {
    // Keys nearly unique within the first partition: partials would be as long as the
    // partitions, so the rows are shuffled once and aggregated exactly, with the same answer.
    let rows = 40_000i64;
    let data = df!(
        "id" => (0..rows).map(|i| (i * 7919) % 39_000).collect::<Vec<_>>(),
        "v" => (0..rows).map(|i| (i % 97) as f64 / 4.0).collect::<Vec<_>>(),
    )
    .unwrap();
    let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
    let aggs = vec![col("v").sum().alias("s"), col("v").mean().alias("m"), len()];
    let expected = polars_agg(&data, &["id"], &aggs);
    for split_out in [None, Some(3)] {
        let mut by = frame.group_by(&["id"]).unwrap();
        if let Some(n) = split_out {
            by = by.split_out(n);
        }
        let got = by.agg(aggs.clone()).unwrap();
        let ops = op_names(&got);
        assert!(ops.iter().any(|o| o == "frame-hash-split"), "{ops:?}");
        assert!(!ops.iter().any(|o| o == "frame-group-combine"), "{ops:?}");
        assert_frame_eq(&got, &expected, &["id"], 1e-9);
    }
    // Told to make one partition, it reduces in a tree as before.
    let got = frame
        .group_by(&["id"])
        .unwrap()
        .split_out(1)
        .agg(aggs.clone())
        .unwrap();
    assert!(op_names(&got).iter().any(|o| o == "frame-group-combine"));
    assert_frame_eq(&got, &expected, &["id"], 1e-9);
}

#[test]
fn exact_aggregations_shuffle_only_the_columns_they_read() {
    let data = sample(40, 3);
    let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
    let aggs = [col("v").median().alias("median")];
    let got = frame.group_by(&["k"]).unwrap().agg(aggs.clone()).unwrap();
    let out = got.compute(&partita::SyncScheduler).unwrap();
    let expected = polars_agg(&data, &["k"], &aggs);
    partita_tests::assert_polars_eq(&out, &expected, &["k"], 1e-12, "median");
    // The shuffled partitions hold the key and `v`, not the frame's other columns.
    let graph =
        partita::Layer::materialize(&[std::sync::Arc::clone(partita::Collection::layer(&got))])
            .unwrap();
    let split = graph
        .ids()
        .find(|&id| graph.op(id).name() == "frame-hash-split")
        .expect("a median shuffles");
    let input = graph.key(graph.dependencies(split)[0]).clone();
    let value = partita::compute(graph, &[input], &partita::SyncScheduler)
        .unwrap()
        .remove(0);
    let columns: Vec<String> = partita::frame::Partition::from_value(&value)
        .unwrap()
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(columns, ["k", "v"]);
}

#[test]
fn an_aggregate_inside_an_aggregation_input_is_not_split() {
    // (v - mean(v)) per partition would differ from the global mean: must run exactly.
    let aggs = [(col("v") - col("v").mean()).abs().sum().alias("dev")];
    for (data, frame) in partitioned(50, 15) {
        let expected = polars_agg(&data, &["k"], &aggs);
        let got = frame.group_by(&["k"]).unwrap().agg(aggs.clone()).unwrap();
        assert_frame_eq(&got, &expected, &["k"], 1e-9);
    }
}

#[test]
fn group_by_errors_name_the_column() {
    let frame = DataFrame::from_polars(sample(10, 1), 2).unwrap();
    let err = frame
        .group_by(&["k"])
        .unwrap()
        .agg([col("nope").sum()])
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = frame
        .group_by(&["k"])
        .unwrap()
        .split_out(0)
        .agg([len()])
        .unwrap_err();
    assert!(err.to_string().contains("split_out"), "{err}");
    let err = frame.shuffle(&["k"], None, 1 << 40).unwrap_err();
    assert!(err.to_string().contains("between 1 and"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any data, any partitioning (empty partitions, one partition, all rows in one): the
    /// same groups and sums as polars.
    #[test]
    fn group_sums_for_any_partitioning(
        rows in 0usize..60,
        seed in 0u64..1000,
        parts in 1usize..12,
        split_out in 1usize..4,
        skew in any::<bool>(),
    ) {
        let data = sample(rows, seed);
        let frame = if skew {
            // Everything in the last partition, the others empty.
            let mut p: Vec<polars::prelude::DataFrame> =
                (0..parts - 1).map(|_| data.clear()).collect();
            p.push(data.clone());
            DataFrame::from_partitions(p).unwrap()
        } else {
            DataFrame::from_polars(data.clone(), parts).unwrap()
        };
        let aggs = [col("v").sum().alias("s"), col("v").mean().alias("m"), len()];
        let expected = polars_agg(&data, &["k"], &aggs);
        let got = frame.group_by(&["k"]).unwrap().split_out(split_out).agg(aggs).unwrap();
        let out = got.compute(&partita::LocalScheduler::with_threads(2)).unwrap();
        partita_tests::assert_polars_eq(&out, &expected, &["k"], 1e-9, "proptest");
    }
}

#[test]
fn unique_and_value_counts_match_polars() {
    for (data, frame) in partitioned(60, 16) {
        let all = ["k", "g", "v", "n", "flag"];
        let expected = data
            .clone()
            .lazy()
            .unique(None, UniqueKeepStrategy::Any)
            .collect()
            .unwrap();
        assert_frame_eq(&frame.unique(None).unwrap(), &expected, &all, 0.0);
        // On a subset, which row survives is unspecified: compare the subset only.
        let got = frame
            .unique(Some(&["k", "flag"]))
            .unwrap()
            .select_columns(&["k", "flag"])
            .unwrap();
        let expected = data
            .clone()
            .lazy()
            .select([col("k"), col("flag")])
            .unique(None, UniqueKeepStrategy::Any)
            .collect()
            .unwrap();
        assert_frame_eq(&got, &expected, &["k", "flag"], 0.0);
        let counts = frame.value_counts("g").unwrap();
        let expected = data
            .clone()
            .lazy()
            .group_by([col("g")])
            .agg([len().alias("count")])
            .collect()
            .unwrap();
        assert_frame_eq(&counts, &expected, &["g"], 0.0);
    }
}

#[test]
fn the_number_of_groups_is_estimated_from_the_first_partition() {
    let rows = 1000i64;
    let data = df!(
        "id" => (0..rows).collect::<Vec<_>>(),
        "few" => (0..rows).map(|i| i % 10).collect::<Vec<_>>(),
    )
    .unwrap();
    let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
    // Distinct keys grow with the data; repeating keys do not.
    assert_eq!(frame.estimate_groups(&["id".into()]).unwrap(), Some(1000));
    assert_eq!(frame.estimate_groups(&["few".into()]).unwrap(), Some(10));
    // After a shuffle the first partition is not cheap to read: no estimate.
    let shuffled = frame.shuffle(&["id"], None, 3).unwrap();
    assert_eq!(shuffled.estimate_groups(&["id".into()]).unwrap(), None);
}

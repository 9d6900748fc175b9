//! Global sorts against polars' stable sort, and what their range partitioning saves later.

use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita::frame::{DataFrame, How, Partitioning, SortOptions};
use partita::{Collection, Layer, LocalScheduler, SyncScheduler};
use partita_tests::{assert_frame_eq, assert_polars_eq};
use proptest::prelude::*;

use super::{PARTITIONS, partitioned, sample};

fn polars_sort(
    df: &polars::prelude::DataFrame,
    by: &[&str],
    descending: &[bool],
    nulls_last: bool,
) -> polars::prelude::DataFrame {
    df.sort(
        by.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        SortMultipleOptions::default()
            .with_order_descending_multi(descending.to_vec())
            .with_nulls_last(nulls_last)
            .with_maintain_order(true),
    )
    .unwrap()
}

/// How many tasks of `frame`'s graph have a key name starting with `prefix`.
fn tasks_named(frame: &DataFrame, prefix: &str) -> usize {
    let graph = Layer::materialize(&[frame.layer().clone()]).unwrap();
    graph
        .keys()
        .iter()
        .filter(|k| k.name().starts_with(prefix))
        .count()
}

#[test]
fn sorts_match_polars_stable_sort() {
    let cases: [(&[&str], &[bool], bool); 5] = [
        (&["g"], &[false], false),
        (&["g"], &[true], true),
        (&["k", "v"], &[false, true], false),
        (&["flag", "n", "k"], &[true, false, false], true),
        (&["v"], &[false], true),
    ];
    for (data, frame) in partitioned(60, 31) {
        for (by, descending, nulls_last) in cases {
            let expected = polars_sort(&data, by, descending, nulls_last);
            for n in [None, Some(1), Some(5)] {
                let mut options = SortOptions::default()
                    .descending_multi(descending)
                    .nulls_last(nulls_last);
                options.npartitions = n;
                let sorted = frame.sort(by, options).unwrap();
                assert_eq!(sorted.npartitions(), n.unwrap_or(frame.npartitions()));
                // Row order is defined: no sorting before the comparison.
                assert_frame_eq(&sorted, &expected, &[], 0.0);
            }
        }
    }
}

#[test]
fn partitions_are_ordered_and_balanced() {
    let rows = 20_000i64;
    // Keys in a scrambled order with repeats, split over 8 partitions.
    let keys: Vec<i64> = (0..rows).map(|i| (i * 7919) % 5003).collect();
    let data = df!("x" => keys, "i" => (0..rows).collect::<Vec<_>>()).unwrap();
    let frame = DataFrame::from_polars(data.clone(), 8).unwrap();
    let sorted = frame
        .sort(&["x"], SortOptions::default().npartitions(10))
        .unwrap();
    let parts = sorted.compute_partitions(&LocalScheduler::new()).unwrap();
    assert_eq!(parts.len(), 10);
    let mut last_max: Option<i64> = None;
    for p in &parts {
        assert!(
            (1000..=3000).contains(&p.height()),
            "unbalanced partition of {} rows",
            p.height()
        );
        let x = p.column("x").unwrap().i64().unwrap();
        let (lo, hi) = (x.min().unwrap(), x.max().unwrap());
        if let Some(m) = last_max {
            assert!(m < lo, "partitions overlap: {m} then {lo}");
        }
        last_max = Some(hi);
    }
    let divisions = sorted.divisions(&SyncScheduler).unwrap().unwrap();
    assert_eq!(divisions.height(), 9);
    assert_eq!(divisions.get_column_names(), ["x"]);
}

#[test]
fn all_equal_keys_and_empty_frames_sort() {
    let data = df!("x" => [3i64; 50], "i" => (0..50i64).collect::<Vec<_>>()).unwrap();
    let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
    let sorted = frame.sort(&["x"], SortOptions::default()).unwrap();
    assert_frame_eq(&sorted, &data, &[], 0.0);
    let parts = sorted.compute_partitions(&SyncScheduler).unwrap();
    assert_eq!(parts.iter().filter(|p| p.height() > 0).count(), 1);

    let empty = data.clear();
    let frame = DataFrame::from_polars(empty.clone(), 3).unwrap();
    let sorted = frame
        .sort(&["x"], SortOptions::default().descending())
        .unwrap();
    assert_frame_eq(&sorted, &empty, &[], 0.0);
}

#[test]
fn sort_errors_name_the_problem() {
    let frame = DataFrame::from_polars(sample(10, 1), 2).unwrap();
    let err = frame.sort(&["nope"], SortOptions::default()).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let err = frame
        .sort(
            &["k", "g"],
            SortOptions::default().descending_multi([true, false, true]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("3 descending flags"), "{err}");
    let err = frame
        .sort(&["k"], SortOptions::default().npartitions(0))
        .unwrap_err();
    assert!(err.to_string().contains("partitions"), "{err}");
    let none: [&str; 0] = [];
    assert!(frame.sort(&none, SortOptions::default()).is_err());
}

#[test]
fn a_group_by_on_sorted_or_shuffled_keys_does_not_shuffle_again() {
    let data = sample(80, 32);
    let frame = DataFrame::from_polars(data.clone(), 5).unwrap();
    let aggs = [col("v").median().alias("med"), col("n").sum().alias("s")];
    let expected = data
        .clone()
        .lazy()
        .group_by([col("g")])
        .agg(aggs.clone())
        .collect()
        .unwrap();

    let sorted = frame.sort(&["g"], SortOptions::default()).unwrap();
    let filtered = sorted.filter(col("n").gt_eq(lit(0))).unwrap();
    assert!(matches!(filtered.partitioning(), Partitioning::Range(_)));
    let grouped = filtered
        .group_by(&["g"])
        .unwrap()
        .agg(aggs.clone())
        .unwrap();
    assert_eq!(tasks_named(&grouped, "hash-split"), 0);
    assert_frame_eq(&grouped, &expected, &["g"], 1e-9);

    let shuffled = frame.shuffle(&["g"], None, 3).unwrap();
    let grouped = shuffled.group_by(&["g"]).unwrap().agg(aggs).unwrap();
    assert_eq!(
        tasks_named(&grouped, "hash-split"),
        5,
        "only the first shuffle"
    );
    assert_frame_eq(&grouped, &expected, &["g"], 1e-9);

    // A step that may change the key forgets the partitioning.
    let changed = sorted.with_columns([col("g") * lit(2)]).unwrap();
    assert!(matches!(changed.partitioning(), Partitioning::Unknown));
    let renamed = sorted.rename(&["g"], &["group"]).unwrap();
    assert_eq!(
        renamed.partitioning().keys(),
        Some(&["group".to_string()][..])
    );
}

#[test]
fn joins_on_a_sorted_key_split_only_the_other_side() {
    let left_data = sample(70, 33);
    let right_data = sample(40, 34)
        .lazy()
        .select([col("g"), col("n").alias("m"), col("k").alias("k2")])
        .collect()
        .unwrap();
    for lp in PARTITIONS {
        let left = DataFrame::from_polars(left_data.clone(), lp).unwrap();
        let right = DataFrame::from_polars(right_data.clone(), 9).unwrap();
        let sorted = left.sort(&["g"], SortOptions::default()).unwrap();
        for (how, kind) in [
            (How::Inner, JoinType::Inner),
            (How::Left, JoinType::Left),
            (How::Full, JoinType::Full),
            (How::Anti, JoinType::Anti),
        ] {
            let expected = left_data
                .clone()
                .lazy()
                .join(
                    right_data.clone().lazy(),
                    [col("g")],
                    [col("g")],
                    JoinArgs::new(kind),
                )
                .collect()
                .unwrap();
            let by: Vec<&str> = expected
                .get_column_names()
                .into_iter()
                .map(|c| c.as_str())
                .collect();
            for (l, r) in [(&sorted, &right), (&right, &sorted)] {
                if !matches!(how, How::Inner) && std::ptr::eq(l, &right) {
                    continue; // only the inner join is symmetric
                }
                let joined = l.join(r, &["g"], &["g"], how).unwrap();
                assert_eq!(tasks_named(&joined, "hash-split"), 0, "{how:?}");
                // A one-partition right side is broadcast instead: only the sort's splits.
                let splits = if r.npartitions() == 1 { lp } else { lp + 9 };
                assert_eq!(tasks_named(&joined, "range-split"), splits, "{how:?}");
                if std::ptr::eq(l, &sorted) {
                    let got = joined.compute(&LocalScheduler::with_threads(2)).unwrap();
                    assert_polars_eq(&got, &expected, &by, 0.0, &format!("{how:?}"));
                }
            }
        }
        // Both sides sorted by the same boundaries: nothing moves at all.
        let split = sorted.join(&right, &["g"], &["g"], How::Inner).unwrap();
        assert!(matches!(split.partitioning(), Partitioning::Range(_)));
        let again = split.join(&sorted, &["g"], &["g"], How::Semi).unwrap();
        assert_eq!(
            tasks_named(&again, "range-split"),
            tasks_named(&split, "range-split")
        );
    }
}

#[test]
fn frames_shuffled_alike_join_without_moving() {
    let data = sample(50, 35);
    let a = DataFrame::from_polars(data.clone(), 4)
        .unwrap()
        .shuffle(&["n"], None, 6)
        .unwrap();
    let b = DataFrame::from_polars(data.clone(), 3)
        .unwrap()
        .select([col("n"), col("v").alias("w")])
        .unwrap();
    let joined = a.join(&b, &["n"], &["n"], How::Inner).unwrap();
    // a's 4 splits, and b moved once into a's 6 partitions.
    assert_eq!(tasks_named(&joined, "hash-split"), 4 + 3);
    let expected = data
        .clone()
        .lazy()
        .join(
            data.clone().lazy().select([col("n"), col("v").alias("w")]),
            [col("n")],
            [col("n")],
            JoinArgs::new(JoinType::Inner),
        )
        .collect()
        .unwrap();
    assert_frame_eq(&joined, &expected, &["n", "k", "g", "v", "flag", "w"], 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any data and partitioning, empty partitions included: polars' stable sort.
    #[test]
    fn sorted_like_polars_for_any_partitioning(
        rows in 0usize..80,
        seed in 0u64..1000,
        parts in 1usize..10,
        out in 1usize..10,
        descending in any::<bool>(),
        nulls_last in any::<bool>(),
    ) {
        let data = sample(rows, seed);
        let frame = DataFrame::from_polars(data.clone(), parts).unwrap();
        let expected = polars_sort(&data, &["k", "g"], &[descending, false], nulls_last);
        let sorted = frame
            .sort(
                &["k", "g"],
                SortOptions::default()
                    .descending_multi([descending, false])
                    .nulls_last(nulls_last)
                    .npartitions(out),
            )
            .unwrap();
        let got = sorted.compute(&LocalScheduler::with_threads(2)).unwrap();
        assert_polars_eq(&got, &expected, &[], 0.0, "proptest");
    }
}

#[test]
fn sorting_parquet_files_reads_keys_for_the_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample(300, 36);
    let out = dir.path().join("data");
    DataFrame::from_polars(data.clone(), 4)
        .unwrap()
        .to_parquet(&out, &SyncScheduler)
        .unwrap();
    let frame = partita::frame::read_parquet(&out, &Default::default()).unwrap();
    let sorted = frame
        .filter(col("n").gt(lit(10)))
        .unwrap()
        .sort(&["v", "n"], SortOptions::default().nulls_last(true))
        .unwrap();
    let filtered = data
        .clone()
        .lazy()
        .filter(col("n").gt(lit(10)))
        .collect()
        .unwrap();
    let expected = polars_sort(&filtered, &["v", "n"], &[false, false], true);
    assert_frame_eq(&sorted, &expected, &[], 0.0);
}

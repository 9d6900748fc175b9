//! Joins against polars: broadcast and hash-partitioned, every join kind.

use partita::frame::polars;
use partita::frame::polars::prelude::*;
use partita::frame::{DataFrame, How};
use partita_tests::assert_frame_eq;

use super::{PARTITIONS, sample};

fn right_table() -> polars::prelude::DataFrame {
    df!(
        "key" => [Some("a"), Some("b"), Some("b"), Some("e"), None],
        "w" => [1.5f64, 2.5, 3.5, 4.5, 5.5],
        "n" => [10i32, 20, 30, 40, 50],
    )
    .unwrap()
}

fn polars_join(
    l: &polars::prelude::DataFrame,
    r: &polars::prelude::DataFrame,
    left_on: &[&str],
    right_on: &[&str],
    how: JoinType,
) -> polars::prelude::DataFrame {
    l.clone()
        .lazy()
        .join(
            r.clone().lazy(),
            left_on.iter().map(|c| col(*c)).collect::<Vec<_>>(),
            right_on.iter().map(|c| col(*c)).collect::<Vec<_>>(),
            JoinArgs::new(how),
        )
        .collect()
        .unwrap()
}

const KINDS: [(How, JoinType); 6] = [
    (How::Inner, JoinType::Inner),
    (How::Left, JoinType::Left),
    (How::Right, JoinType::Right),
    (How::Full, JoinType::Full),
    (How::Semi, JoinType::Semi),
    (How::Anti, JoinType::Anti),
];

#[test]
fn joins_match_polars_broadcast_and_shuffled() {
    let left = sample(40, 21);
    let right = right_table();
    for lp in PARTITIONS {
        for rp in [1, 2, 5] {
            let l = DataFrame::from_polars(left.clone(), lp).unwrap();
            let r = DataFrame::from_polars(right.clone(), rp).unwrap();
            for (how, kind) in KINDS {
                let expected = polars_join(&left, &right, &["k"], &["key"], kind);
                let got = l.join(&r, &["k"], &["key"], how).unwrap();
                let mut sort: Vec<&str> = vec!["k", "g", "v", "n", "flag"];
                if matches!(how, How::Right) {
                    sort = vec!["key", "w", "g", "v"];
                }
                sort.retain(|c| expected.schema().get(c).is_some());
                let mut by: Vec<&str> = sort;
                for c in expected.get_column_names() {
                    if !by.contains(&c.as_str()) {
                        by.push(c.as_str());
                    }
                }
                assert_frame_eq(&got, &expected, &by, 0.0);
            }
        }
    }
}

#[test]
fn multi_key_joins_match_polars() {
    let left = sample(50, 22);
    let right = sample(30, 23)
        .lazy()
        .select([
            col("k").alias("k2"),
            col("g").alias("g2"),
            col("n").alias("rn"),
        ])
        .unique(None, UniqueKeepStrategy::First)
        .collect()
        .unwrap();
    for (lp, rp) in [(3, 4), (6, 6), (1, 9)] {
        let l = DataFrame::from_polars(left.clone(), lp).unwrap();
        let r = DataFrame::from_polars(right.clone(), rp).unwrap();
        let expected = polars_join(&left, &right, &["k", "g"], &["k2", "g2"], JoinType::Inner);
        let got = l.join(&r, &["k", "g"], &["k2", "g2"], How::Inner).unwrap();
        let by: Vec<&str> = expected
            .get_column_names()
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_frame_eq(&got, &expected, &by, 0.0);
    }
}

#[test]
fn join_errors_name_the_key() {
    let l = DataFrame::from_polars(sample(5, 1), 1).unwrap();
    let r = DataFrame::from_polars(right_table(), 1).unwrap();
    let err = l.join(&r, &["k"], &["nokey"], How::Inner).unwrap_err();
    assert!(err.to_string().contains("nokey"), "{err}");
    let err = l.join(&r, &["k", "g"], &["key"], How::Inner).unwrap_err();
    assert!(err.to_string().contains("same number"), "{err}");
    let err = l.join(&r, &["flag"], &["w"], How::Inner).unwrap_err();
    assert!(err.to_string().contains("flag"), "{err}");
}

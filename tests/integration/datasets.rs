//! Published datasets on the cluster (`Client::publish_dataset` and friends): what one
//! client publishes another gets and computes on, after the publisher is gone, checked
//! against ndarray and polars run directly on the same data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use partita::array::from_ndarray;
use partita::distributed::{Client, Dataset};
use partita::frame::polars::prelude::*;
use partita::frame::{DataFrame, Partitioning};
use partita::{GraphBuilder, Key};
use partita_tests::{Mix, another_client, as_i64s, assert_polars_eq, cluster};

use crate::frame::sample;

/// Wait (at most 30 s) until no worker holds a value.
fn nothing_held(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.info().unwrap().workers.iter().any(|w| w.held > 0) {
        assert!(Instant::now() < deadline, "{:?}", client.info());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_published_array_frame_and_futures_outlive_their_publisher() {
    let Some(getter) = cluster() else { return };
    let a = ArrayD::from_shape_fn(IxDyn(&[9, 6]), |i| (i[0] * 10 + i[1]) as f64 - 20.5);
    let data = sample(60, 3);
    let mut b = GraphBuilder::new();
    let keys: Vec<Key> = (0..4).map(|i| Key::new("dataset-mix", [i])).collect();
    for (i, k) in keys.iter().enumerate() {
        b.add_task(k.clone(), Arc::new(Mix { salt: i as i64 }), &[]);
    }
    let graph = b.build().unwrap();
    let expected_mix =
        as_i64s(&partita::compute(graph.clone(), &keys, &partita::SyncScheduler).unwrap());
    {
        let publisher = another_client().unwrap();
        let x = from_ndarray(&a, [4, 4]).unwrap();
        let y = (&x * 3.0).unwrap().persist(&publisher).unwrap();
        let frame = DataFrame::from_polars(data.clone(), 4).unwrap();
        let frame = frame
            .shuffle(&["k"], None, 3)
            .unwrap()
            .persist(&publisher)
            .unwrap();
        assert!(matches!(frame.partitioning(), Partitioning::Hash { .. }));
        let futures = publisher.submit(graph, &keys).unwrap();
        publisher
            .publish_dataset("y", &Dataset::Array(y), false)
            .unwrap();
        publisher
            .publish_dataset("frame", &Dataset::Frame(frame), false)
            .unwrap();
        publisher
            .publish_dataset("mixes", &Dataset::Futures(futures), false)
            .unwrap();
        // A lazy array is not published: it would have to be computed by someone.
        let err = (publisher.publish_dataset("lazy", &Dataset::Array(x), false)).unwrap_err();
        assert!(err.to_string().contains("persist"), "{err}");
        // Names are not taken twice, unless replacing.
        let again = Dataset::Futures(
            publisher
                .submit(
                    {
                        let mut b = GraphBuilder::new();
                        b.add_task(Key::named("dataset-other"), Arc::new(Mix { salt: 9 }), &[]);
                        b.build().unwrap()
                    },
                    &[Key::named("dataset-other")],
                )
                .unwrap(),
        );
        let err = publisher.publish_dataset("y", &again, false).unwrap_err();
        assert!(err.to_string().contains("\"y\""), "{err}");
        publisher.publish_dataset("other", &again, false).unwrap();
        publisher.publish_dataset("other", &again, true).unwrap();
    }
    // The publisher, its collections and futures are gone; the data stays.
    assert_eq!(
        getter.list_datasets().unwrap(),
        ["frame", "mixes", "other", "y"]
    );
    let Some(Dataset::Array(y)) = getter.get_dataset("y").unwrap() else {
        panic!("y is an array")
    };
    assert_eq!(y.chunks(), vec![vec![4, 4, 1], vec![4, 2]]);
    let got = (&y + 1.0).unwrap().compute::<f64>(getter).unwrap();
    assert_eq!(got, a.mapv(|v| v * 3.0 + 1.0));
    let Some(Dataset::Frame(frame)) = getter.get_dataset("frame").unwrap() else {
        panic!("frame is a frame")
    };
    assert!(matches!(frame.partitioning(), Partitioning::Hash { keys, .. } if keys == &["k"]));
    assert_eq!(frame.npartitions(), 3);
    let sums = frame
        .group_by(&["k"])
        .unwrap()
        .agg([col("v").sum()])
        .unwrap();
    // Hash-partitioned on k: the group-by runs per partition, no shuffle, no tree.
    assert_eq!(sums.npartitions(), 3);
    let expected = (data.clone().lazy())
        .group_by([col("k")])
        .agg([col("v").sum()])
        .collect()
        .unwrap();
    assert_polars_eq(
        &sums.compute(getter).unwrap(),
        &expected,
        &["k"],
        1e-12,
        "frame",
    );
    let Some(Dataset::Futures(mixes)) = getter.get_dataset("mixes").unwrap() else {
        panic!("mixes are futures")
    };
    assert_eq!(as_i64s(&getter.gather(&mixes).unwrap()), expected_mix);
    assert!(getter.get_dataset("nothing").unwrap().is_none());
    // Unpublished while held here: the values stay for these futures, then go.
    for name in ["y", "frame", "mixes", "other"] {
        assert!(getter.unpublish_dataset(name).unwrap(), "{name}");
    }
    assert!(!getter.unpublish_dataset("y").unwrap());
    assert!(getter.list_datasets().unwrap().is_empty());
    assert_eq!(as_i64s(&getter.gather(&mixes).unwrap()), expected_mix);
    drop((y, frame, sums, mixes));
    nothing_held(getter);
}

//! Futures on the cluster (`Client::submit`, `gather`, `cancel`, `as_completed`), checked
//! against the same graphs computed by the local scheduler.

use std::sync::Arc;
use std::time::Duration;

use partita::array::random;
use partita::distributed::FutureStatus;
use partita::{Error, GraphBuilder, Key, LocalScheduler, compute};
use partita_tests::{Fail, Mix, SlowMix, as_i64s, cluster};

#[test]
fn submitted_graphs_give_the_local_schedulers_values() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let roots: Vec<Key> = (0..20).map(|i| Key::new("fut-root", [i])).collect();
    for (i, k) in roots.iter().enumerate() {
        b.add_task(k.clone(), Arc::new(Mix { salt: i as i64 }), &[]);
    }
    let sums: Vec<Key> = (0..10).map(|i| Key::new("fut-sum", [i])).collect();
    for (i, k) in sums.iter().enumerate() {
        let deps = [roots[2 * i].clone(), roots[2 * i + 1].clone()];
        b.add_task(k.clone(), Arc::new(Mix { salt: 100 }), &deps);
    }
    let graph = b.build().unwrap();
    let expected = as_i64s(&compute(graph.clone(), &sums, &LocalScheduler::new()).unwrap());

    let futures = client.submit(graph, &sums).unwrap();
    assert_eq!(futures.len(), sums.len());
    assert_eq!(as_i64s(&client.gather(&futures).unwrap()), expected);
    for (f, k) in futures.iter().zip(&sums) {
        assert_eq!(f.key(), k);
        assert_eq!(f.status(), FutureStatus::Finished);
        assert!(f.done());
    }
    // One by one, and from a clone, too.
    let again: Vec<i64> = (futures.iter())
        .map(|f| *f.clone().result().unwrap().get::<i64>().unwrap())
        .collect();
    assert_eq!(again, expected);
}

#[test]
fn collections_submit_and_gather_like_compute() {
    let client = cluster().expect("the test cluster");
    let x = random::random(&[300, 200], [100, 100], 7).unwrap();
    let y = x.sum(0).unwrap();
    let expected = y.compute::<f64>(&LocalScheduler::new()).unwrap();
    let futures = client.submit_collections(&[&y]).unwrap();
    let values = client.gather(&futures[0]).unwrap();
    let got = y.chunk_from_values(&values).unwrap();
    let got = got.typed::<f64>().unwrap();
    assert_eq!(got.shape(), expected.shape());
    for (a, b) in got.iter().zip(expected.iter()) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn as_completed_yields_the_fast_before_the_slow() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let (slow, fast) = (Key::named("ac-slow"), Key::named("ac-fast"));
    b.add_task(slow.clone(), Arc::new(SlowMix { salt: 1, ms: 1500 }), &[]);
    b.add_task(fast.clone(), Arc::new(Mix { salt: 2 }), &[]);
    let futures = client
        .submit(b.build().unwrap(), &[slow.clone(), fast.clone()])
        .unwrap();
    assert_eq!(futures[0].status(), FutureStatus::Pending);
    let order: Vec<Key> = client
        .as_completed(futures.clone())
        .map(|f| f.key().clone())
        .collect();
    assert_eq!(order, vec![fast, slow]);
    // Finished futures come back at once.
    assert_eq!(client.as_completed(futures).count(), 2);
}

#[test]
fn a_failing_future_names_the_task_and_others_are_unaffected() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let (bad, after, fine) = (
        Key::named("fut-bad"),
        Key::named("fut-after-bad"),
        Key::named("fut-fine"),
    );
    let fail = Fail {
        message: "no such row 12".into(),
    };
    b.add_task(bad.clone(), Arc::new(fail), &[]);
    b.add_task(
        after.clone(),
        Arc::new(Mix { salt: 1 }),
        std::slice::from_ref(&bad),
    );
    b.add_task(fine.clone(), Arc::new(Mix { salt: 5 }), &[]);
    let futures = client.submit(b.build().unwrap(), &[after, fine]).unwrap();
    client
        .wait(&futures, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(futures[0].status(), FutureStatus::Error);
    let err = futures[0].result().unwrap_err().to_string();
    assert!(
        err.contains("fut-bad") && err.contains("no such row 12"),
        "{err}"
    );
    // The same error without fetching anything; none for the finished one.
    assert_eq!(futures[0].error().map(|e| e.to_string()), Some(err));
    assert!(futures[1].error().is_none());
    let err = client.gather(&futures).unwrap_err().to_string();
    assert!(err.contains("fut-bad"), "{err}");
    assert_eq!(*futures[1].result().unwrap().get::<i64>().unwrap(), 5);
}

#[test]
fn cancelled_futures_say_so_and_the_client_goes_on() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let k = Key::named("fut-cancel-me");
    b.add_task(k.clone(), Arc::new(SlowMix { salt: 3, ms: 3000 }), &[]);
    let futures = client.submit(b.build().unwrap(), &[k]).unwrap();
    client.cancel(&futures).unwrap();
    assert_eq!(
        futures[0].wait(Some(Duration::from_secs(10))).unwrap(),
        FutureStatus::Cancelled
    );
    let err = futures[0].result().unwrap_err();
    assert!(
        matches!(&err, Error::Compute { source, .. } if matches!(**source, Error::Cancelled)),
        "{err}"
    );
    // Waiting with a timeout on something slow says so.
    let mut b = GraphBuilder::new();
    let slow = Key::named("fut-slow-wait");
    b.add_task(slow.clone(), Arc::new(SlowMix { salt: 4, ms: 1000 }), &[]);
    let futures = client.submit(b.build().unwrap(), &[slow]).unwrap();
    let err = client
        .wait(&futures, Some(Duration::from_millis(50)))
        .unwrap_err();
    assert!(err.to_string().contains("not done within"), "{err}");
    assert_eq!(as_i64s(&client.gather(&futures).unwrap()), [4]);
}

#[test]
fn closures_are_refused_at_submit_naming_the_task() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let k = Key::named("fut-closure");
    b.add_task(
        k.clone(),
        Arc::new(partita::FnOp::new("closure", |_: &[partita::Value]| {
            Ok(partita::Value::new(1i64))
        })),
        &[],
    );
    let err = client.submit(b.build().unwrap(), &[k]).unwrap_err();
    assert!(err.to_string().contains("fut-closure"), "{err}");
}

/// An op only this test binary knows, named like the Python bindings' ops.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PretendPython;

#[typetag::serde(name = "python-pretend")]
impl partita::Op for PretendPython {
    fn execute(&self, _: &[partita::Value]) -> partita::Result<partita::Value> {
        Ok(partita::Value::new(0i64))
    }
    fn name(&self) -> &str {
        "pretend-python"
    }
}

#[test]
fn a_python_task_on_a_worker_without_python_says_how_to_start_one() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let k = Key::named("fut-python-on-rust");
    b.add_task(k.clone(), Arc::new(PretendPython), &[]);
    let futures = client.submit(b.build().unwrap(), &[k]).unwrap();
    let err = futures[0].result().unwrap_err().to_string();
    assert!(
        err.contains("fut-python-on-rust") && err.contains("python -m partita worker"),
        "{err}"
    );
}

/// Dask's task stream: each run with its worker and times, from a number on.
#[test]
fn the_task_stream_says_where_and_when_each_task_ran() {
    let client = cluster().expect("the test cluster");
    let unix_micros = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_micros() as u64
    };
    let (from, none) = client.task_stream(u64::MAX).unwrap();
    assert!(none.is_empty());
    let before = unix_micros();
    let mut b = GraphBuilder::new();
    let (slow, fine) = (Key::named("stream-slow"), Key::named("stream-after"));
    b.add_task(slow.clone(), Arc::new(SlowMix { salt: 1, ms: 100 }), &[]);
    b.add_task(
        fine.clone(),
        Arc::new(Mix { salt: 2 }),
        std::slice::from_ref(&slow),
    );
    // Both wanted, so the optimizer does not fuse them into one task.
    let wanted = [slow.clone(), fine.clone()];
    let futures = client.submit(b.build().unwrap(), &wanted).unwrap();
    client.gather(&futures).unwrap();
    let after = unix_micros();
    let (next, records) = client.task_stream(from).unwrap();
    let workers: Vec<String> = (client.workers().unwrap().into_iter())
        .map(|(p, _)| p.address)
        .collect();
    // Other tests may run meanwhile: look at this graph's two runs.
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.key == slow || r.key == fine)
        .collect();
    assert_eq!(mine.len(), 2, "{records:?}");
    assert!(next >= from + 2);
    for r in &mine {
        assert!(workers.contains(&r.worker), "{r:?} {workers:?}");
        assert!(!r.erred && r.nbytes > 0);
        // Wall-clock times of this run (the scheduler's clock is this machine's).
        assert!(
            before <= r.start && r.start <= r.stop && r.stop <= after + 1_000,
            "{r:?}"
        );
    }
    assert!(
        mine[0].key == slow && mine[0].stop - mine[0].start >= 100_000,
        "{mine:?}"
    );
    // The second after the first (a worker may start it a little before the scheduler
    // hears the first is done, whose time that stop is).
    assert!(mine[1].start + 50_000 >= mine[0].stop, "{mine:?}");
}

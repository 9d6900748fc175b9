//! The cluster as a whole: real scheduler and worker processes (`partita-test-worker`) on
//! loopback. Semantics on the cluster are covered by every test using `schedulers()`; here
//! are failures, chaos, memory and security.

use std::sync::Arc;
use std::time::{Duration, Instant};

use partita::distributed::{
    AdaptOptions, Client, ClusterFile, ClusterInfo, FutureStatus, LocalCluster,
    LocalClusterOptions, Peer, Persisted, TaskCounts,
};
use partita::{
    ComputeOptions, Error, ExecutionContext, ExecutionPlan, FnOp, Graph, GraphBuilder, Key,
    LocalScheduler, Op, OptimizeOptions, Scheduler, Value, compute_with,
};
use partita_tests::{
    Blob, CurrentTask, Fail, FailTimes, LockedIncrement, MaybeAsk, Mix, Panic, ProcessId,
    QueueAndWait, SlowMix, Span, TaskFib, cluster, test_worker_binary,
};

fn start(n_workers: usize, memory_limit: u64) -> LocalCluster {
    LocalCluster::start(LocalClusterOptions {
        n_workers,
        threads_per_worker: 1,
        memory_limit,
        binary: Some(test_worker_binary()),
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts")
}

fn run(graph: Graph, outputs: &[Key], on: &dyn Scheduler) -> partita::Result<Vec<Value>> {
    compute_with(graph, outputs, on, &ComputeOptions::default()).map(|e| e.values)
}

/// `Mix` semantics, for references.
fn mix(salt: i64, inputs: &[i64]) -> i64 {
    (inputs.iter()).fold(salt, |acc, v| acc.wrapping_add(v.wrapping_mul(31)))
}

/// Wait (at most 30 s) until no worker holds a value.
fn nothing_held(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.info().unwrap().workers.iter().any(|w| w.held > 0) {
        assert!(Instant::now() < deadline, "{:?}", client.info());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Mix { salt: 1 }` of `inputs`, run on the cluster as a task named `name`.
fn mix_on(client: &Client, name: &str, inputs: &[partita::distributed::Future]) -> i64 {
    let op = Arc::new(Mix { salt: 1 });
    let out = client.submit_task(Key::named(name), op, inputs).unwrap();
    *out.result().unwrap().get::<i64>().unwrap()
}

/// The scheduler counts one worker retired, none lost, no value lost or recomputed.
fn retired_one_and_lost_nothing(client: &Client) {
    let s = client.info().unwrap().stats;
    let counts = (
        s.workers_retired,
        s.workers_lost,
        s.lost_values,
        s.recomputed,
    );
    assert_eq!(counts, (1, 0, 0, 0), "{s:?}");
}

fn i64s(values: &[Value]) -> Vec<i64> {
    values.iter().map(|v| *v.get::<i64>().unwrap()).collect()
}

fn small_graph(tag: &str) -> (Graph, Key, i64) {
    let mut b = GraphBuilder::new();
    let (x, y, z) = (
        Key::named(format!("{tag}-x")),
        Key::named(format!("{tag}-y")),
        Key::named(format!("{tag}-z")),
    );
    b.add_task(x.clone(), Arc::new(Mix { salt: 1 }), &[]);
    b.add_task(y.clone(), Arc::new(Mix { salt: 2 }), &[]);
    b.add_task(z.clone(), Arc::new(Mix { salt: 3 }), &[x, y]);
    let expected = mix(3, &[1, 2]);
    (b.build().unwrap(), z, expected)
}

#[test]
fn a_failing_task_names_its_key_and_the_cluster_stays_usable() {
    let client = cluster().expect("the test cluster");
    for (name, op) in [
        (
            "fails",
            Arc::new(Fail {
                message: "bad input 42".into(),
            }) as Arc<dyn Op>,
        ),
        (
            "panics",
            Arc::new(Panic {
                message: "boom 17".into(),
            }),
        ),
    ] {
        let mut b = GraphBuilder::new();
        let (ok, bad, out) = (
            Key::named(format!("{name}-ok")),
            Key::named(format!("{name}-bad")),
            Key::named(format!("{name}-out")),
        );
        b.add_task(ok.clone(), Arc::new(Mix { salt: 1 }), &[]);
        b.add_task(bad.clone(), op, std::slice::from_ref(&ok));
        b.add_task(out.clone(), Arc::new(Mix { salt: 2 }), &[bad, ok]);
        let err = run(b.build().unwrap(), &[out], client).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("{name}-bad")), "{text}");
        let detail = if name == "fails" {
            "bad input 42"
        } else {
            "boom 17"
        };
        assert!(text.contains(detail), "{text}");

        let (graph, key, expected) = small_graph(name);
        assert_eq!(i64s(&run(graph, &[key], client).unwrap()), [expected]);
    }
}

/// Poll `info` until `done` holds (or 10 s pass): workers report on heartbeats and
/// released keys go asynchronously.
fn info_when(client: &Client, done: impl Fn(&ClusterInfo) -> bool) -> ClusterInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = client.info().expect("the scheduler answers");
        if done(&info) || Instant::now() > deadline {
            return info;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cluster_info_shows_workers_tasks_and_memory() {
    let cluster = start(2, 512 << 20);
    let client = Client::connect(cluster.cluster_file()).expect("connects");
    let info = client.info().unwrap();
    assert_eq!(info.workers.len(), 2, "{info:?}");
    for w in &info.workers {
        assert_eq!((w.nthreads, w.memory_limit), (1, 512 << 20), "{w:?}");
        assert!(w.peer.address.contains(':'), "{w:?}");
    }
    assert_ne!(info.workers[0].peer.address, info.workers[1].peer.address);
    assert_eq!(info.tasks, TaskCounts::default());
    assert_eq!(info.stats.tasks_finished, 0);

    // A value held for a future: one task in memory, 1 MB on some worker.
    let blob = client
        .submit_task(
            Key::named("info-blob"),
            Arc::new(Blob {
                len: 1 << 17,
                seed: 1.0,
            }),
            &[],
        )
        .unwrap();
    blob.wait(None).unwrap();
    let info = info_when(&client, |i| {
        i.workers
            .iter()
            .any(|w| w.metrics.managed_bytes >= 1 << 20 && w.metrics.rss > 0)
    });
    assert_eq!(info.tasks.memory, 1, "{info:?}");
    assert_eq!(info.stats.tasks_finished, 1);
    assert_eq!(info.workers.iter().map(|w| w.held).sum::<u64>(), 1);
    assert!(
        (info.workers.iter()).any(|w| w.metrics.managed_bytes >= 1 << 20 && w.metrics.rss > 0),
        "{info:?}"
    );
    // `partita info`, as text and as JSON; a missing cluster file is named.
    let info_command = |args: &[&str]| {
        std::process::Command::new(test_worker_binary())
            .arg("info")
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let file = cluster.cluster_file().display().to_string();
    let text = info_command(&["--cluster-file", &file]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("workers: 2\n"), "{text}");
    assert!(text.contains("tasks: 1 in memory"), "{text}");
    let json = info_command(&["--cluster-file", &file, "--json"]);
    let parsed: ClusterInfo = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!((parsed.workers.len(), parsed.tasks.memory), (2, 1));
    let missing = info_command(&["--cluster-file", "/nonexistent/cluster.json"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/cluster.json"), "{err}");
    // A failed task stays erred while wanted.
    let failed = client
        .submit_task(
            Key::named("info-fails"),
            Arc::new(Fail {
                message: "no".into(),
            }),
            &[],
        )
        .unwrap();
    assert!(failed.result().is_err());
    assert_eq!(client.info().unwrap().tasks.erred, 1);
    // Dropping the futures releases both.
    drop((blob, failed));
    let info = info_when(&client, |i| i.tasks.memory + i.tasks.erred == 0);
    assert_eq!((info.tasks.memory, info.tasks.erred), (0, 0), "{info:?}");
    assert_eq!(info.workers.iter().map(|w| w.held).sum::<u64>(), 0);
}

#[test]
fn failing_tasks_are_retried_when_asked() {
    let cluster = start(2, 0);
    let client = Client::connect(cluster.cluster_file()).expect("connects");
    let dirs = tempfile::tempdir().unwrap();
    let graph = |name: &str, failures: usize| {
        let dir = dirs.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut b = GraphBuilder::new();
        let (flaky, out) = (
            Key::named(format!("{name}-flaky")),
            Key::named(format!("{name}-out")),
        );
        b.add_task(
            flaky.clone(),
            Arc::new(FailTimes {
                dir: dir.clone(),
                failures,
            }),
            &[],
        );
        b.add_task(out.clone(), Arc::new(Mix { salt: 0 }), &[flaky]);
        (b.build().unwrap(), out, dir)
    };
    // Fails on its last run, `runs` in all, naming the task.
    let fails_after = |name: &str, failures: usize, runs: usize| {
        let (g, out, dir) = graph(name, failures);
        let err = run(g, &[out], &client).unwrap_err().to_string();
        let last = format!("run {} fails", runs - 1);
        assert!(
            err.contains(&format!("{name}-flaky")) && err.contains(&last),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), runs);
    };
    // By default a failure is final, after one run.
    fails_after("once", 1, 1);
    // Two retries: the third run succeeds (and its value flows on); one retry is too few.
    client.set_retries(2);
    let (g, out, dir) = graph("thrice", 2);
    assert_eq!(i64s(&run(g, &[out], &client).unwrap()), [mix(0, &[2])]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    client.set_retries(1);
    fails_after("twice", 2, 2);
    // Per submitted task, whatever the client's default.
    let dir = dirs.path().join("task");
    std::fs::create_dir(&dir).unwrap();
    let op = Arc::new(FailTimes {
        dir: dir.clone(),
        failures: 3,
    });
    let future = client
        .submit_task_with_retries(Key::named("task-flaky"), op, &[], 3)
        .unwrap();
    assert_eq!(*future.result().unwrap().get::<i64>().unwrap(), 3);
    // Per submitted graph, likewise (the client still says one).
    let (g, out, dir) = graph("graph", 2);
    let futures = client
        .submit_with_retries(g, std::slice::from_ref(&out), 2)
        .unwrap();
    assert_eq!(i64s(&[futures[0].result().unwrap()]), [mix(0, &[2])]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
}

#[test]
fn closures_cannot_leave_the_process_and_say_so() {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let key = Key::named("closure-task");
    b.add_task(
        key.clone(),
        Arc::new(FnOp::new("add-one", |_: &[Value]| Ok(Value::new(1i64)))),
        &[],
    );
    let err = run(b.build().unwrap(), &[key], client).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("closure-task"), "{text}");
    assert!(text.contains("closure"), "{text}");
    let (graph, key, expected) = small_graph("after-closure");
    assert_eq!(i64s(&run(graph, &[key], client).unwrap()), [expected]);
}

#[test]
fn run_calls_an_op_in_every_worker_process() {
    let client = cluster().expect("the test cluster");
    let workers = client.workers().unwrap();
    let answers = client.run(Arc::new(partita_tests::ProcessId)).unwrap();
    assert_eq!(answers.len(), workers.len());
    let pids: std::collections::HashSet<i64> = (answers.iter())
        .map(|(_, r)| *r.as_ref().unwrap().get::<i64>().unwrap())
        .collect();
    assert_eq!(pids.len(), workers.len(), "one process each: {answers:?}");
    assert!(!pids.contains(&i64::from(std::process::id())));
    // An op failing on the workers: each error names it; the cluster goes on.
    let message = "no such file 42".to_string();
    let failed = client.run(Arc::new(Fail { message })).unwrap();
    for (peer, r) in &failed {
        let text = r.as_ref().unwrap_err().to_string();
        assert!(
            text.contains("run-fail") && text.contains("no such file 42"),
            "{peer:?}: {text}"
        );
    }
    let closure = Arc::new(FnOp::new("local-only", |_: &[Value]| Ok(Value::new(1i64))));
    let err = client.run(closure).unwrap_err().to_string();
    assert!(err.contains("run-local-only"), "{err}");
    let (graph, key, expected) = small_graph("after-run");
    assert_eq!(i64s(&run(graph, &[key], client).unwrap()), [expected]);
}

/// Roots -> middles -> one output, all slow enough to be interrupted.
fn staged_graph(roots: usize, fan: usize, ms: u64) -> (Graph, Key, i64) {
    let mut b = GraphBuilder::new();
    let root_key = |i: usize| Key::new("stage-root", [i as u32]);
    let mid_key = |i: usize| Key::new("stage-mid", [i as u32]);
    let mut root_values = Vec::new();
    for i in 0..roots {
        b.add_task(root_key(i), Arc::new(SlowMix { salt: i as i64, ms }), &[]);
        root_values.push(i as i64);
    }
    let mut mids = Vec::new();
    let mut mid_values = Vec::new();
    for (j, chunk) in (0..roots).collect::<Vec<_>>().chunks(fan).enumerate() {
        let deps: Vec<Key> = chunk.iter().map(|&i| root_key(i)).collect();
        let inputs: Vec<i64> = chunk.iter().map(|&i| root_values[i]).collect();
        let salt = 1000 + j as i64;
        b.add_task(mid_key(j), Arc::new(SlowMix { salt, ms }), &deps);
        mids.push(mid_key(j));
        mid_values.push(mix(salt, &inputs));
    }
    let out = Key::named("stage-out");
    b.add_task(out.clone(), Arc::new(Mix { salt: 7 }), &mids);
    (b.build().unwrap(), out, mix(7, &mid_values))
}

#[test]
fn killing_a_worker_mid_computation_still_gives_the_right_answer() {
    let mut cluster = start(3, 0);
    let client = cluster.client().unwrap();
    let (graph, out, expected) = staged_graph(36, 4, 60);
    let values = std::thread::scope(|s| {
        let job = s.spawn(|| run(graph, std::slice::from_ref(&out), &client));
        std::thread::sleep(Duration::from_millis(400));
        cluster.kill_worker(0).unwrap();
        job.join().unwrap()
    });
    let values = values.unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("scheduler")));
    assert_eq!(i64s(&values), [expected]);
    assert!(cluster.log("scheduler").contains("removed"));
}

#[test]
fn retiring_a_worker_mid_computation_loses_and_recomputes_nothing() {
    let cluster = start(3, 0);
    let client = cluster.client().unwrap();
    let (graph, out, expected) = staged_graph(36, 4, 60);
    let values = std::thread::scope(|s| {
        let job = s.spawn(|| run(graph, std::slice::from_ref(&out), &client));
        std::thread::sleep(Duration::from_millis(400));
        // While its tasks run and its results wait for their readers.
        let other = cluster.client().unwrap();
        let leaving = other.workers().unwrap()[0].0.address.clone();
        let retired = other.retire_workers(&[leaving.as_str()]).unwrap();
        assert_eq!(retired.len(), 1);
        job.join().unwrap()
    });
    let values = values.unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("scheduler")));
    assert_eq!(i64s(&values), [expected]);
    retired_one_and_lost_nothing(&client);
    assert_eq!(client.workers().unwrap().len(), 2);
}

#[test]
fn killing_the_only_holder_of_needed_data_recomputes_it() {
    let mut cluster = start(3, 0);
    let client = cluster.client().unwrap();
    // Quick roots are all done long before the slow gate; the output needs both, so
    // when two of three workers die the roots they held must be recomputed.
    let mut b = GraphBuilder::new();
    let mut deps = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..30 {
        let k = Key::new("holder-root", [i]);
        b.add_task(
            k.clone(),
            Arc::new(SlowMix {
                salt: i64::from(i),
                ms: 10,
            }),
            &[],
        );
        deps.push(k);
        inputs.push(i64::from(i));
    }
    let gate = Key::named("holder-gate");
    b.add_task(gate.clone(), Arc::new(SlowMix { salt: 5, ms: 1500 }), &[]);
    deps.push(gate);
    inputs.push(5);
    let out = Key::named("holder-out");
    b.add_task(out.clone(), Arc::new(Mix { salt: 9 }), &deps);
    let graph = b.build().unwrap();
    let values = std::thread::scope(|s| {
        let job = s.spawn(|| run(graph, std::slice::from_ref(&out), &client));
        std::thread::sleep(Duration::from_millis(800));
        cluster.kill_worker(0).unwrap();
        cluster.kill_worker(1).unwrap();
        job.join().unwrap()
    });
    let log = cluster.log("scheduler");
    let values = values.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(i64s(&values), [mix(9, &inputs)]);
    assert!(log.contains("its only copy was lost"), "{log}");
}

#[test]
fn a_local_cluster_serves_metrics_when_asked() {
    use std::io::{Read, Write};
    let cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 1,
        binary: Some(test_worker_binary()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts");
    let addr = cluster.metrics_address().expect("a port was picked");
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let client = cluster.client().unwrap();
    assert_eq!(client.metrics_address().as_deref(), Some(addr.as_str()));
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.lines().any(|l| l == "partita_workers 1"), "{text}");
    // Without the option, nothing is served and the client says so.
    let plain = partita_tests::cluster().expect("the test cluster");
    assert_eq!(plain.metrics_address(), None);
}

#[test]
fn scattered_values_feed_tasks_and_err_once_lost() {
    let mut cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    // Numbers and an 8 MB chunk, pushed from this process straight to the workers.
    let numbers: Vec<i64> = (0..6).map(|i| i * 10 + 1).collect();
    let scatter_numbers = || {
        let futures = client
            .scatter(numbers.iter().map(|&n| Value::new(n)).collect())
            .unwrap();
        client
            .wait(&futures, Some(Duration::from_secs(20)))
            .unwrap();
        futures
    };
    let futures = scatter_numbers();
    assert_eq!(i64s(&client.gather(&futures).unwrap()), numbers);
    let info = client.info().unwrap();
    let held: Vec<u64> = info.workers.iter().map(|w| w.held).collect();
    assert_eq!(
        held,
        [3, 3],
        "equal sizes alternate between the workers: {info:?}"
    );
    let holders = client.who_has(&futures).unwrap();
    let keys: Vec<&Key> = holders.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, futures.iter().map(|f| f.key()).collect::<Vec<_>>());
    let mut workers: Vec<String> = (holders.iter())
        .map(|(_, peers)| {
            assert_eq!(peers.len(), 1, "{holders:?}");
            peers[0].address.clone()
        })
        .collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 2, "{holders:?}");
    assert_eq!(info.stats.tasks_finished, 0, "nothing ran");
    let big = ndarray::Array::from_shape_fn((1000, 1000), |(i, j)| (i * 1000 + j) as f64);
    let chunk = client
        .scatter(vec![Value::new(partita::array::Chunk::new(
            big.clone().into_dyn(),
        ))])
        .unwrap();
    let back = chunk[0].result().unwrap();
    let back = back.get::<partita::array::Chunk>().unwrap();
    assert_eq!(back.typed::<f64>().unwrap(), &big.into_dyn());
    // Tasks read them where they are, like any other future.
    assert_eq!(mix_on(&client, "scatter-mix", &futures), mix(1, &numbers));
    // Released, they leave the workers.
    drop((chunk, futures));
    nothing_held(&client);

    // One worker dies holding three of six fresh values (nothing read them, so there are
    // no copies elsewhere): they cannot be recomputed, so their futures err saying so; the
    // others still gather, and the cluster goes on scattering.
    let futures = scatter_numbers();
    cluster.kill_worker(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let erred = loop {
        let erred: Vec<&partita::distributed::Future> = (futures.iter())
            .filter(|f| f.status() == partita::distributed::FutureStatus::Error)
            .collect();
        if !erred.is_empty() || Instant::now() > deadline {
            break erred;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(erred.len(), 3, "{}", cluster.log("scheduler"));
    let message = erred[0].result().unwrap_err().to_string();
    assert!(message.contains("scatter it again"), "{message}");
    for (f, n) in futures.iter().zip(&numbers) {
        if f.status() == partita::distributed::FutureStatus::Finished {
            assert_eq!(*f.result().unwrap().get::<i64>().unwrap(), *n);
        }
    }
    let again = client.scatter(vec![Value::new(5i64)]).unwrap();
    assert_eq!(*again[0].result().unwrap().get::<i64>().unwrap(), 5);
}

#[test]
fn broadcast_values_sit_on_every_worker_and_outlive_one() {
    let mut cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    let numbers = [3i64, 5, 7];
    let futures = client
        .scatter_broadcast(numbers.iter().map(|&n| Value::new(n)).collect())
        .unwrap();
    // Each copy is reported as the worker keeps it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let holders = client.who_has(&futures).unwrap();
        if holders.iter().all(|(_, peers)| peers.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{holders:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(client.info().unwrap().workers.iter().all(|w| w.held == 3));
    // Either worker may die: every value is still held by the other.
    cluster.kill_worker(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.workers().unwrap().len() > 1 {
        assert!(Instant::now() < deadline, "the dead worker is still listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client heard the worker leave, so its gather goes straight to the live copies
    // (not to the dead worker first, waiting out its timeout).
    assert_eq!(i64s(&client.gather(&futures).unwrap()), numbers);
    let holders = client.who_has(&futures).unwrap();
    assert!(holders.iter().all(|(_, p)| p.len() == 1), "{holders:?}");
    assert_eq!(mix_on(&client, "broadcast-mix", &futures), mix(1, &numbers));
    // Released, every copy goes.
    drop(futures);
    nothing_held(&client);
}

/// Values spread over the workers: scattered ones (no lineage) and computed ones.
fn spread_values(client: &Client) -> (Vec<partita::distributed::Future>, Vec<i64>) {
    let numbers: Vec<i64> = (0..8).map(|i| 100 + i).collect();
    let mut futures = client
        .scatter(numbers.iter().map(|&n| Value::new(n)).collect())
        .unwrap();
    let mut expected = numbers;
    for i in 0..8 {
        let key = Key::new("spread-computed", [i as u32]);
        let op = Arc::new(Mix { salt: i });
        futures.push(client.submit_task(key, op, &[]).unwrap());
        expected.push(mix(i, &[]));
    }
    client
        .wait(&futures, Some(Duration::from_secs(30)))
        .unwrap();
    (futures, expected)
}

#[test]
fn retiring_a_worker_hands_its_values_off_scattered_ones_too() {
    let cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    let (futures, expected) = spread_values(&client);
    let holders = client.who_has(&futures).unwrap();
    let leaving = holders[0].1[0].clone();
    let held_there = (holders.iter())
        .filter(|(_, on)| on.iter().any(|p| p.id == leaving.id))
        .count();
    assert!(held_there > 0 && held_there < futures.len(), "{holders:?}");
    // Bad requests are refused whole, naming the address, and change nothing.
    let err = client
        .retire_workers(&[leaving.address.as_str(), "127.0.0.1:1"])
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    let everyone: Vec<String> = client
        .workers()
        .unwrap()
        .iter()
        .map(|(p, _)| p.address.clone())
        .collect();
    let everyone: Vec<&str> = everyone.iter().map(String::as_str).collect();
    let err = client.retire_workers(&everyone).unwrap_err();
    assert!(err.to_string().contains("no open worker"), "{err}");
    assert_eq!(client.workers().unwrap().len(), 2);
    // Retired: gone, and every value is on the other worker, none recomputed or lost.
    let retired = client.retire_workers(&[leaving.address.as_str()]).unwrap();
    assert_eq!(retired, std::slice::from_ref(&leaving));
    assert_eq!(client.workers().unwrap().len(), 1);
    assert_eq!(i64s(&client.gather(&futures).unwrap()), expected);
    let holders = client.who_has(&futures).unwrap();
    assert!(
        holders
            .iter()
            .all(|(_, on)| on.len() == 1 && on[0].id != leaving.id),
        "{holders:?}"
    );
    retired_one_and_lost_nothing(&client);
    // And they feed new tasks.
    assert_eq!(mix_on(&client, "after-retire", &futures), mix(1, &expected));
    assert!(cluster.log("scheduler").contains("retiring"));
}

#[test]
fn a_worker_asked_to_stop_retires_gracefully() {
    let mut cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    let (futures, expected) = spread_values(&client);
    // SIGTERM, as a service manager stops it: it hands its values off and exits cleanly.
    cluster
        .retire_worker(0, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("scheduler")));
    assert_eq!(client.workers().unwrap().len(), 1);
    assert_eq!(i64s(&client.gather(&futures).unwrap()), expected);
    let stats = client.info().unwrap().stats;
    assert_eq!(
        (stats.workers_retired, stats.lost_values),
        (1, 0),
        "{stats:?}"
    );
    assert!(
        cluster.log("worker-0").contains("retiring"),
        "{}",
        cluster.log("worker-0")
    );
}

#[test]
fn rebalance_evens_out_values_scattered_onto_one_worker() {
    use std::collections::BTreeMap;
    let cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    let workers = client.workers().unwrap();
    let a = workers[0].0.address.clone();
    let numbers: Vec<i64> = (0..8).map(|i| 1000 + i).collect();
    let values = numbers.iter().map(|&n| Value::new(n)).collect();
    let futures = client.scatter_on(values, std::slice::from_ref(&a)).unwrap();
    client
        .wait(&futures, Some(Duration::from_secs(30)))
        .unwrap();
    let on = |client: &Client| -> BTreeMap<String, usize> {
        let mut on = BTreeMap::new();
        for (key, peers) in client.who_has(&futures).unwrap() {
            assert_eq!(peers.len(), 1, "{key}: {peers:?}");
            *on.entry(peers[0].address.clone()).or_default() += 1;
        }
        on
    };
    assert_eq!(on(&client).get(&a), Some(&8));
    let moved = client.rebalance(None, &[]).unwrap();
    assert_eq!(
        moved.moved.len(),
        4,
        "{moved:?}\n{}",
        cluster.log("scheduler")
    );
    assert!(moved.nbytes > 0);
    let counts: Vec<usize> = on(&client).into_values().collect();
    assert_eq!(counts, [4, 4]);
    // Four each now; the values come back whole.
    let held: Vec<u64> = client
        .info()
        .unwrap()
        .workers
        .iter()
        .map(|w| w.held)
        .collect();
    assert_eq!(held, [4, 4]);
    assert_eq!(i64s(&client.gather(&futures).unwrap()), numbers);
    // Even already: nothing moves. An unknown address is refused, naming it.
    let again = client.rebalance(Some(&futures), &[]).unwrap();
    assert!(again.moved.is_empty(), "{again:?}");
    let err = client
        .rebalance(None, &["nowhere:1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere:1"), "{err}");
    assert_eq!(
        mix_on(&client, "after-rebalance", &futures),
        mix(1, &numbers)
    );
    drop(futures);
    nothing_held(&client);
}

#[test]
fn replicate_copies_values_worker_to_worker() {
    let cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(20)).unwrap();
    let (futures, expected) = spread_values(&client);
    let holders = client.replicate(&futures, None).unwrap();
    assert!(
        holders.iter().all(|(_, on)| on.len() == 2),
        "{holders:?}\n{}\n{}\n{}",
        cluster.log("scheduler"),
        cluster.log("worker-0"),
        cluster.log("worker-1")
    );
    assert_eq!(client.who_has(&futures).unwrap(), holders);
    // At least n: already there, nothing to do.
    let again = client.replicate(&futures[..2], Some(1)).unwrap();
    assert!(again.iter().all(|(_, on)| on.len() == 2));
    assert!(client.replicate(&futures, Some(0)).is_err());
    // A future that failed cannot be copied: its error, naming the task.
    let failed = client
        .submit_task(
            Key::named("replicate-failing"),
            Arc::new(Fail {
                message: "nothing to copy".into(),
            }),
            &[],
        )
        .unwrap();
    let err = client.replicate(&[failed], None).unwrap_err().to_string();
    assert!(
        err.contains("replicate-failing") && err.contains("nothing to copy"),
        "{err}"
    );
    // Both copies are real: either worker may die now.
    let mut cluster = cluster;
    cluster.kill_worker(1).unwrap();
    assert_eq!(i64s(&client.gather(&futures).unwrap()), expected);
    // Released, every copy goes.
    drop(futures);
    nothing_held(&client);
}

#[test]
fn scattering_without_workers_is_an_error_and_leaves_nothing() {
    let mut cluster = start(0, 0);
    let client = cluster.client().unwrap();
    let err = client.scatter(vec![Value::new(1i64)]).unwrap_err();
    assert!(err.to_string().contains("no worker"), "{err}");
    assert_eq!(client.info().unwrap().tasks, TaskCounts::default());
    // Once a worker joins, the same client scatters.
    cluster.add_worker().unwrap();
    client.wait_for_workers(1, Duration::from_secs(20)).unwrap();
    let one = client.scatter(vec![Value::new(1i64)]).unwrap();
    assert_eq!(*one[0].result().unwrap().get::<i64>().unwrap(), 1);
}

/// A one-worker cluster whose worker runs under a nanny.
fn start_with_nanny(memory_limit: u64) -> LocalCluster {
    LocalCluster::start(LocalClusterOptions {
        n_workers: 1,
        threads_per_worker: 1,
        memory_limit,
        binary: Some(test_worker_binary()),
        nanny: true,
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts")
}

/// The pid of the worker process worker `i`'s nanny started last (from its log).
fn nanny_child(cluster: &LocalCluster, i: usize) -> Option<u32> {
    (cluster.log(&format!("worker-{i}")).lines().rev()).find_map(|l| {
        let rest = l.split("worker process ").nth(1)?;
        rest.strip_suffix(" started")?.parse().ok()
    })
}

#[test]
fn a_nanny_starts_a_new_worker_when_its_worker_is_killed() {
    let cluster = start_with_nanny(0);
    let client = cluster.client().unwrap();
    let (graph, out, expected) = small_graph("nanny-before");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
    let first = client.workers().unwrap()[0].0.clone();
    let nanny = cluster.worker_pids()[0];
    let child = nanny_child(&cluster, 0).unwrap_or_else(|| panic!("{}", cluster.log("worker-0")));
    assert_ne!(child, nanny);
    let killed = std::process::Command::new("kill")
        .args(["-9", &child.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The scheduler loses the old worker and a new process joins as a new worker.
    wait_for_replacement(&cluster, &client, &first, Duration::from_secs(60));
    assert_eq!(cluster.worker_pids(), [nanny], "the nanny itself lives on");
    assert_ne!(nanny_child(&cluster, 0), Some(child));
    let (graph, out, expected) = small_graph("nanny-after");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
    let log = cluster.log("worker-0");
    assert!(log.contains("starting a new one"), "{log}");
    // The new process said which nanny started it, so the scheduler dropped the old
    // worker as it joined instead of waiting out the old connection's timeout.
    let log = cluster.log("scheduler");
    assert!(
        log.contains("its nanny started a new worker process"),
        "{log}"
    );
}

/// A one-worker cluster under a nanny with `--liveness-timeout liveness`, two threads
/// (a task stuck on one, run again on the next process, keeps it), a client, and the
/// worker there first.
fn nanny_cluster_with_liveness(liveness: &str) -> (LocalCluster, Client, Peer) {
    let cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 1,
        threads_per_worker: 2,
        binary: Some(test_worker_binary()),
        nanny: true,
        worker_args: vec!["--liveness-timeout".into(), liveness.into()],
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts");
    let client = cluster.client().unwrap();
    client.wait_for_workers(1, Duration::from_secs(20)).unwrap();
    let first = client.workers().unwrap()[0].0.clone();
    (cluster, client, first)
}

/// Run 16 quick tasks of kind `group`, so the worker runs the next of that kind on its
/// event loop, then that next one sleeping `ms` there; returns its future.
fn block_the_event_loop(client: &Client, group: &str, ms: u64) -> partita::distributed::Future {
    for i in 0..16 {
        let key = Key::new(group, [i]);
        let f = client
            .submit_task(key, Arc::new(Mix { salt: 1 }), &[])
            .unwrap();
        f.result().unwrap();
    }
    let stuck = Arc::new(SlowMix { salt: 1, ms });
    client
        .submit_task(Key::new(group, [99]), stuck, &[])
        .unwrap()
}

/// Wait (at most `within`) until the one worker connected is not `first`.
fn wait_for_replacement(cluster: &LocalCluster, client: &Client, first: &Peer, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let workers = client.workers().unwrap();
        if workers.len() == 1 && workers[0].0.id != first.id {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{workers:?}\n{}\n{}",
            cluster.log("worker-0"),
            cluster.log("scheduler")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_nanny_restarts_a_worker_whose_event_loop_stops_turning() {
    let (cluster, client, first) = nanny_cluster_with_liveness("3");
    let child = nanny_child(&cluster, 0).unwrap_or_else(|| panic!("{}", cluster.log("worker-0")));
    // Ten minutes on the event loop: the nanny kills it after 3 s without a beat.
    let blocking = block_the_event_loop(&client, "loop-quick", 600_000);
    wait_for_replacement(&cluster, &client, &first, Duration::from_secs(60));
    let log = cluster.log("worker-0");
    assert!(log.contains("event loop has not turned"), "{log}");
    assert_ne!(nanny_child(&cluster, 0), Some(child), "{log}");
    client.cancel(&[blocking]).unwrap();
    let (graph, out, expected) = small_graph("after-the-stuck-loop");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
}

#[test]
fn a_worker_the_scheduler_gave_up_on_rejoins_through_its_nanny() {
    // No liveness check: the worker's loop, blocked 12 s by a task run on it, misses the
    // scheduler's 10 s heartbeat timeout; the scheduler closes it, and once the loop turns
    // again the worker exits for its nanny to start a fresh one.
    let (cluster, client, first) = nanny_cluster_with_liveness("0");
    let blocking = block_the_event_loop(&client, "written-off", 12_000);
    wait_for_replacement(&cluster, &client, &first, Duration::from_secs(90));
    let log = cluster.log("worker-0");
    assert!(log.contains("lost the scheduler"), "{log}");
    assert!(log.contains("starting a new one"), "{log}");
    assert_eq!(client.info().unwrap().stats.workers_lost, 1);
    client.cancel(&[blocking]).unwrap();
    let (graph, out, expected) = small_graph("after-the-write-off");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
}

#[test]
fn workers_and_clients_rejoin_a_scheduler_started_again() {
    use partita::distributed::{Dataset, Lock, Pub, Sub};
    // SIGKILL the scheduler; the worker notices (its connection times out) and its nanny
    // starts a fresh one, which waits for a scheduler. Only then is the scheduler started
    // again (same credentials, a new port): the waiting worker finds the new address by
    // reading the cluster file again, and so does the client from before.
    let mut cluster = start_with_nanny(0);
    let old = cluster.client().unwrap();
    let (graph, out, expected) = small_graph("before-the-restart");
    assert_eq!(i64s(&run(graph, &[out], &old).unwrap()), [expected]);
    let (graph, kept_key, kept_value) = small_graph("kept-across-the-restart");
    let kept = old.submit(graph, std::slice::from_ref(&kept_key)).unwrap();
    assert_eq!(
        kept[0].result().unwrap().get::<i64>().ok(),
        Some(&kept_value)
    );
    // A lock and a subscription taken from the first scheduler.
    let held = Lock::new(&old, "across-the-restart");
    assert!(held.acquire(None).unwrap());
    let other = Lock::new(&old, "released-first-thing");
    assert!(other.acquire(None).unwrap());
    let sub = Sub::new(&old, "news").unwrap();
    let err = cluster
        .start_scheduler()
        .expect_err("one is running")
        .to_string();
    assert!(err.contains("the scheduler is running"), "{err}");
    cluster.kill_scheduler();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = cluster.log("worker-0");
        let waiting = log
            .split_once("lost the scheduler")
            .is_some_and(|(_, after)| after.contains("trying again in"));
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No scheduler to connect to again: an error within the client's reconnect time,
    // not a hang; its futures are lost.
    assert!(!old.is_connected());
    old.set_reconnect_timeout(Duration::from_millis(500));
    let (graph, out, _) = small_graph("on-the-old-client");
    let started = Instant::now();
    let err = run(graph, &[out], &old)
        .expect_err("its scheduler died")
        .to_string();
    assert!(err.contains("could not connect again"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(kept[0].status(), FutureStatus::Lost);
    cluster.start_scheduler().unwrap();
    // Giving back a lease of the lost scheduler as the first call: nothing to give back,
    // no reconnecting for it.
    other.release().unwrap();
    assert!(!old.is_connected());
    // The old client connects again by itself, at its next call.
    old.set_reconnect_timeout(Duration::from_secs(30));
    old.wait_for_workers(1, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("worker-0")));
    assert!(old.is_connected());
    let (graph, out, expected) = small_graph("after-the-restart");
    assert_eq!(i64s(&run(graph, &[out], &old).unwrap()), [expected]);
    // The lock went with the old scheduler: the new one grants it (numbering its leases
    // from 1 again), and releasing the old lease gives back nothing of the new one's.
    let again = Lock::new(&old, "across-the-restart");
    assert!(again.acquire(Some(Duration::from_secs(10))).unwrap());
    held.release().unwrap();
    assert!(again.locked().unwrap());
    again.release().unwrap();
    assert!(!again.locked().unwrap());
    // So did the subscription: an error, not another one's messages; a new one works.
    let err = sub
        .get(Some(Duration::from_millis(10)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ended with the connection"), "{err}");
    drop(sub);
    let fresh = Sub::new(&old, "news").unwrap();
    let hello = Dataset::Opaque {
        bytes: b"hello".to_vec(),
        futures: Vec::new(),
    };
    assert_eq!(Pub::new(&old, "news").put(&hello).unwrap(), 1);
    assert!(fresh.get(Some(Duration::from_secs(10))).unwrap().is_some());
    // A future from before stays lost until its key is submitted again.
    assert_eq!(kept[0].status(), FutureStatus::Lost);
    let err = kept[0].result().unwrap_err().to_string();
    assert!(err.contains("lost the connection"), "{err}");
    // A graph reading it as a persisted value says to persist it again.
    let mut b = GraphBuilder::new();
    let (input, sum) = (Key::named("persisted-input"), Key::named("persisted-sum"));
    b.add_task(
        input.clone(),
        Arc::new(Persisted::new(kept[0].clone())),
        &[],
    );
    b.add_task(sum.clone(), Arc::new(Mix { salt: 4 }), &[input]);
    let err = run(b.build().unwrap(), &[sum], &old)
        .expect_err("the value is gone")
        .to_string();
    assert!(err.contains("persist it again"), "{err}");
    let (graph, _, _) = small_graph("kept-across-the-restart");
    let again = old.submit(graph, std::slice::from_ref(&kept_key)).unwrap();
    assert_eq!(
        again[0].result().unwrap().get::<i64>().ok(),
        Some(&kept_value)
    );
    assert_eq!(
        kept[0].result().unwrap().get::<i64>().ok(),
        Some(&kept_value)
    );
    // A new client works too.
    let client = cluster.client().unwrap();
    let (graph, out, expected) = small_graph("on-a-new-client");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
    // The first scheduler's log is kept.
    assert!(std::fs::exists(cluster.dir().join("scheduler.1.log")).unwrap());
}

#[test]
fn a_nanny_kills_a_worker_past_its_memory_limit_and_the_task_errs() {
    let cluster = start_with_nanny(200 << 20);
    let client = cluster.client().unwrap();
    // 400 MiB held for 2 s: each worker that runs it passes 95% of 200 MiB and is killed;
    // after three such deaths the task errs, naming itself.
    let hog = client
        .submit_task(
            Key::named("memory-hog"),
            Arc::new(partita_tests::Hog {
                bytes: 400 << 20,
                ms: 2000,
            }),
            &[],
        )
        .unwrap();
    let err = hog.result().unwrap_err().to_string();
    assert!(err.contains("memory-hog") && err.contains("died"), "{err}");
    let log = cluster.log("worker-0");
    assert!(
        log.contains("of its 200 MiB memory limit; killing it"),
        "{log}"
    );
    // The cluster goes on with a fresh worker.
    client.wait_for_workers(1, Duration::from_secs(60)).unwrap();
    let (graph, out, expected) = small_graph("after-hog");
    assert_eq!(i64s(&run(graph, &[out], &client).unwrap()), [expected]);
}

#[test]
fn a_small_memory_limit_spills_and_leaves_nothing_on_disk() {
    // 24 outputs of 16 MB each (384 MB) held until the run ends, on one worker limited
    // to 100 MB: most of them must live on disk for a while.
    let cluster = start(1, 100_000_000);
    let client = cluster.client().unwrap();
    let len = 2_000_000;
    let mut b = GraphBuilder::new();
    let keys: Vec<Key> = (0..24).map(|i| Key::new("spill-blob", [i])).collect();
    for (i, k) in keys.iter().enumerate() {
        let op = Blob {
            len,
            seed: i as f64 * 1e7,
        };
        b.add_task(k.clone(), Arc::new(op), &[]);
    }
    let values = run(b.build().unwrap(), &keys, &client)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("worker-0")));
    for (i, v) in values.iter().enumerate() {
        let v = v.get::<Vec<f64>>().unwrap();
        assert_eq!(v.len(), len);
        assert_eq!(v[0], i as f64 * 1e7);
        assert_eq!(v[len - 1], i as f64 * 1e7 + (len - 1) as f64);
    }
    let log = cluster.log("worker-0");
    assert!(log.contains("spilling"), "the worker never spilled:\n{log}");
    // Released keys delete their spill files (asynchronously: wait a little).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftover: Vec<_> = walk(cluster.dir())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "value" || e == "tmp"))
            .collect();
        if leftover.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "spill files left: {leftover:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_client_with_a_wrong_token_is_refused() {
    let cluster = start(1, 0);
    let mut credentials = ClusterFile::read(&cluster.cluster_file()).unwrap();
    credentials.token = "not-the-token".into();
    let err = Client::connect_with(credentials).unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(err.to_string().contains("token"), "{err}");
    // Logged by the scheduler, which goes on serving.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster.log("scheduler").contains("wrong token") {
        assert!(Instant::now() < deadline, "{}", cluster.log("scheduler"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = cluster.client().unwrap();
    let (graph, key, expected) = small_graph("after-refusal");
    assert_eq!(i64s(&run(graph, &[key], &client).unwrap()), [expected]);
}

#[test]
fn garbage_datagrams_do_not_bring_the_scheduler_down() {
    let cluster = start(1, 0);
    let credentials = ClusterFile::read(&cluster.cluster_file()).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in [0usize, 1, 7, 64, 1200, 1500, 9000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = socket.send_to(&bytes, &credentials.address);
        }
    }
    let client = cluster.client().unwrap();
    let (graph, key, expected) = small_graph("after-garbage");
    assert_eq!(i64s(&run(graph, &[key], &client).unwrap()), [expected]);
}

/// Scheduler and workers turn transparent huge pages off (`partita_cli`'s
/// `small_pages_only`); the kernel shows the flag in /proc/PID/status.
#[cfg(target_os = "linux")]
#[test]
fn cluster_processes_run_without_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return; // the user's choice wins; nothing to check
    }
    let cluster = start(1, 0);
    let mut pids = cluster.worker_pids();
    pids.push(cluster.scheduler_pid().unwrap());
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        // Kernels before 5.0 do not report it.
        let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else {
            return;
        };
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("0"),
            "process {pid}: {line}"
        );
    }
}

/// A worker's polars pool gets the worker's threads and its group-bys a larger
/// pre-aggregation table (`local_cluster.rs`, `POLARS_THREADS`, `HOT_TABLE`): the variables
/// are in the worker's environment, not the scheduler's, unless the user set them for all.
#[cfg(target_os = "linux")]
#[test]
fn local_workers_get_polars_settings_for_their_work() {
    if std::env::var_os("POLARS_MAX_THREADS").is_some() {
        return; // the user's choice wins; nothing to check
    }
    let cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 1,
        threads_per_worker: 3,
        binary: Some(test_worker_binary()),
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts");
    let env = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let has = |env: &[u8], entry: &[u8]| env.split(|b| *b == 0).any(|e| e == entry);
    let worker = env(cluster.worker_pids()[0]);
    assert!(
        has(&worker, b"POLARS_MAX_THREADS=3"),
        "{}",
        String::from_utf8_lossy(&worker)
    );
    // A larger pre-aggregation table for partial group-bys (see local_cluster.rs).
    if std::env::var_os("POLARS_HOT_TABLE_SIZE").is_none() {
        assert!(has(&worker, b"POLARS_HOT_TABLE_SIZE=131072"));
    }
    let scheduler = env(cluster.scheduler_pid().unwrap());
    for name in [&b"POLARS_MAX_THREADS"[..], b"POLARS_HOT_TABLE_SIZE"] {
        assert!(!scheduler.windows(name.len()).any(|w| w == name));
    }
}

#[test]
fn dropping_a_local_cluster_ends_its_processes() {
    let cluster = start(2, 0);
    let mut pids = cluster.worker_pids();
    assert_eq!(pids.len(), 2);
    pids.push(cluster.scheduler_pid().unwrap());
    drop(cluster);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its cluster"
        );
    }
}

/// 200 tasks of 100 ms named `tag` (about 5 s on the test cluster's four threads), given
/// to `job` with options whose cancel token fires after 300 ms: `job` must stop with
/// `Error::Cancelled` within 2 s, and the cluster must stay usable.
fn assert_cancelled_promptly<T: Send>(
    tag: &str,
    job: impl FnOnce(GraphBuilder, Vec<Key>, &ComputeOptions) -> partita::Result<T> + Send,
) {
    let client = cluster().expect("the test cluster");
    let mut b = GraphBuilder::new();
    let keys: Vec<Key> = (0..200).map(|i| Key::new(tag, [i])).collect();
    for (i, k) in keys.iter().enumerate() {
        let op = SlowMix {
            salt: i as i64,
            ms: 100,
        };
        b.add_task(k.clone(), Arc::new(op), &[]);
    }
    let options = ComputeOptions::default();
    let cancel = options.context.cancel.clone();
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        let job = s.spawn(|| job(b, keys, &options));
        std::thread::sleep(Duration::from_millis(300));
        cancel.cancel();
        job.join().unwrap()
    });
    let err = result.err().expect("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let (graph, key, expected) = small_graph(&format!("after-{tag}"));
    assert_eq!(i64s(&run(graph, &[key], client).unwrap()), [expected]);
}

#[test]
fn a_run_on_the_cluster_can_be_cancelled_promptly() {
    assert_cancelled_promptly("cancel-me", |mut b, keys, options| {
        let out = Key::named("cancel-me-out");
        b.add_task(out.clone(), Arc::new(Mix { salt: 0 }), &keys);
        let client = cluster().expect("the test cluster");
        compute_with(b.build()?, &[out], client, options)
    });
}

/// `Scheduler::persist` on a cluster leaves the value on the workers: later graphs read it
/// there without running its task again, a local scheduler fetches it, a lost copy is
/// recomputed from lineage, and another cluster's client says it cannot take it.
#[test]
fn persisted_values_stay_on_the_workers_and_are_not_recomputed() {
    let mut cluster = start(1, 0);
    let client = cluster.client().unwrap();
    let runs_dir = tempfile::tempdir().unwrap();
    let runs = || std::fs::read_dir(runs_dir.path()).unwrap().count();
    // A value that counts the times its task runs (a file per run; it returns the count).
    let counted = Key::named("persist-counted");
    let graph_of_counted = || {
        let mut b = GraphBuilder::new();
        let op = FailTimes {
            dir: runs_dir.path().into(),
            failures: 0,
        };
        b.add_task(counted.clone(), Arc::new(op), &[]);
        b.build().unwrap()
    };
    let plan = ExecutionPlan::new(
        graph_of_counted(),
        std::slice::from_ref(&counted),
        OptimizeOptions::default(),
    );
    let ops = client
        .persist(&plan.unwrap(), &ExecutionContext::default())
        .unwrap();
    assert!(Persisted::of(ops[0].as_ref()).is_some());
    assert_eq!(runs(), 1);
    // A later graph: the persisted value under a key of its own, and a task reading it.
    let later = |salt: i64| {
        let mut b = GraphBuilder::new();
        let held = Key::new("persist-held", [salt as u32]);
        b.add_task(held.clone(), Arc::clone(&ops[0]), &[]);
        let out = Key::new("persist-use", [salt as u32]);
        b.add_task(out.clone(), Arc::new(Mix { salt }), &[held]);
        (b.build().unwrap(), out)
    };
    for salt in 0..3 {
        let (graph, out) = later(salt);
        let got = run(graph, std::slice::from_ref(&out), &client).unwrap();
        assert_eq!(i64s(&got), [mix(salt, &[0])]);
    }
    let (graph, out) = later(3);
    let got = run(graph, std::slice::from_ref(&out), &LocalScheduler::new()).unwrap();
    assert_eq!(i64s(&got), [mix(3, &[0])]);
    // Another client of the same cluster reads it there too.
    let (graph, out) = later(6);
    let second = cluster.client().unwrap();
    let got = run(graph, std::slice::from_ref(&out), &second).unwrap();
    assert_eq!(i64s(&got), [mix(6, &[0])]);
    drop(second);
    assert_eq!(runs(), 1, "the persisted task ran again");
    // Another cluster cannot take it: the error names the key and says what to do.
    let other = start(1, 0);
    let (graph, out) = later(4);
    let err = run(graph, &[out], &other.client().unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("persisted on another cluster"),
        "{err}"
    );
    // Its only holder dies: the value is made again from its task when next needed.
    cluster.add_worker().unwrap();
    client.wait_for_workers(2, Duration::from_secs(30)).unwrap();
    cluster.kill_worker(0).unwrap();
    let (graph, out) = later(5);
    let got = run(graph, std::slice::from_ref(&out), &client)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log("scheduler")));
    assert_eq!(i64s(&got), [mix(5, &[1])]);
    assert_eq!(runs(), 2);
    // Dropped, it is released: the same task submitted again runs again.
    drop(ops);
    let got = run(graph_of_counted(), std::slice::from_ref(&counted), &client).unwrap();
    assert_eq!(i64s(&got), [2]);
    assert_eq!(runs(), 3);
}

#[test]
fn persisting_on_the_cluster_can_be_cancelled_promptly() {
    assert_cancelled_promptly("cancel-persist", |b, keys, options| {
        let plan = ExecutionPlan::new(b.build()?, &keys, OptimizeOptions::default())?;
        let client = cluster().expect("the test cluster");
        client.persist(&plan, &options.context)
    });
}

/// Dask's `workers=`: tasks run only on the workers named (by address or host), wait for
/// one that is not connected, or run anywhere meanwhile with `allow_other_workers`.
#[test]
fn restricted_tasks_run_where_asked_and_wait_for_absent_workers() {
    use partita::distributed::SubmitOptions;
    let client = cluster().expect("the test cluster");
    let pid_of: std::collections::HashMap<String, i64> = (client.run(Arc::new(ProcessId)))
        .unwrap()
        .into_iter()
        .map(|(peer, r)| (peer.address, *r.unwrap().get::<i64>().unwrap()))
        .collect();
    let mut addresses: Vec<String> = pid_of.keys().cloned().collect();
    addresses.sort();
    let (a, b) = (addresses[0].clone(), addresses[1].clone());
    // Eight quick tasks, all on b though a is as idle (and would steal them otherwise).
    let only_b = SubmitOptions::on_workers([b.clone()]);
    let pids: Vec<partita::distributed::Future> = (0..8)
        .map(|i| {
            let key = Key::new("restricted-pid", [i]);
            (client.submit_task_with(key, Arc::new(ProcessId), &[], &only_b)).unwrap()
        })
        .collect();
    let ran = i64s(&client.gather(&pids).unwrap());
    assert!(ran.iter().all(|p| *p == pid_of[&b]), "{ran:?} {pid_of:?}");
    // A whole graph on a, by its host and port; same value as the local scheduler's.
    let (graph, key, expected) = small_graph("restricted-graph");
    let on_a = SubmitOptions::on_workers([a.clone()]);
    let futures = client.submit_with(graph, &[key], &on_a).unwrap();
    assert_eq!(i64s(&client.gather(&futures).unwrap()), [expected]);
    let holders: Vec<String> = (client.who_has(&futures).unwrap()[0].1.iter())
        .map(|p| p.address.clone())
        .collect();
    assert_eq!(holders.as_slice(), std::slice::from_ref(&a));
    // Persisted through a restricted handle (Dask's persist(workers=)): blocks kept on b.
    let data =
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 6]), |i| (i[0] * 6 + i[1]) as f64);
    let x = partita::array::from_ndarray(&data, [4, 3]).unwrap();
    let on_b = client.with_options(SubmitOptions::on_workers([b.clone()]));
    let y = (&x * 2.0).unwrap().persist(&on_b).unwrap();
    let blocks =
        partita::Layer::materialize(&[Arc::clone(partita::Collection::layer(&y))]).unwrap();
    let held: Vec<partita::distributed::Future> = (blocks.ids())
        .filter_map(|id| Persisted::of(blocks.op(id).as_ref()).map(|p| p.future().clone()))
        .collect();
    assert_eq!(held.len(), 4);
    for (key, peers) in client.who_has(&held).unwrap() {
        let on: Vec<&str> = peers.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(on, [b.as_str()], "{key}");
    }
    assert_eq!(y.compute::<f64>(client).unwrap(), data.mapv(|v| v * 2.0));
    drop((held, blocks, y));
    // Scattered onto a named worker (Dask's scatter(workers=)), or refused naming it.
    let values = vec![Value::new(3i64), Value::new(4i64), Value::new(5i64)];
    let on_a = client.scatter_on(values, std::slice::from_ref(&a)).unwrap();
    // Pushed, but the scheduler hears so from the worker: wait for that before asking.
    client.wait(&on_a, Some(Duration::from_secs(30))).unwrap();
    for (key, peers) in client.who_has(&on_a).unwrap() {
        let on: Vec<&str> = peers.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(on, [a.as_str()], "{key}");
    }
    assert_eq!(i64s(&client.gather(&on_a).unwrap()), [3, 4, 5]);
    let absent_worker = ["10.255.255.1:9".to_string()];
    let err = (client.scatter_on(vec![Value::new(1i64)], &absent_worker)).unwrap_err();
    assert!(err.to_string().contains("10.255.255.1:9"), "{err}");
    drop(on_a);
    // No such worker: it waits (pending, not failed); loosely restricted, it runs anyway.
    let absent = SubmitOptions::on_workers(["10.255.255.1:9"]);
    let waiting = (client.submit_task_with(
        Key::named("restricted-absent"),
        Arc::new(ProcessId),
        &[],
        &absent,
    ))
    .unwrap();
    assert!(waiting.wait(Some(Duration::from_millis(300))).is_err());
    assert_eq!(
        waiting.status(),
        partita::distributed::FutureStatus::Pending
    );
    let loose = SubmitOptions {
        allow_other_workers: true,
        ..absent
    };
    let anywhere = (client.submit_task_with(
        Key::named("restricted-loose"),
        Arc::new(ProcessId),
        &[],
        &loose,
    ))
    .unwrap();
    let pid = *anywhere.result().unwrap().get::<i64>().unwrap();
    assert!(pid_of.values().any(|p| *p == pid));
    // Cancelled while it waits: gone, and the cluster goes on.
    waiting.cancel().unwrap();
    drop((waiting, anywhere, pids, futures));
    nothing_held(client);
    let (graph, key, expected) = small_graph("after-restricted");
    assert_eq!(i64s(&run(graph, &[key], client).unwrap()), [expected]);
}

/// Dask's `priority=`: a later submission of higher priority starts before the queued
/// tasks of an earlier one (one worker, one thread, busy with a first task meanwhile).
#[test]
fn higher_priority_submissions_start_before_queued_lower_ones() {
    use partita::distributed::SubmitOptions;
    let cluster = start(1, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(1, Duration::from_secs(30)).unwrap();
    let span = |tag: &str, i: u32, options: &SubmitOptions| {
        let key = Key::new(tag, [i]);
        (client.submit_task_with(key, Arc::new(Span { ms: 60 }), &[], options)).unwrap()
    };
    let blocker = span("prio-blocker", 0, &SubmitOptions::default());
    let low: Vec<_> = (0..6)
        .map(|i| span("prio-low", i, &SubmitOptions::default()))
        .collect();
    let urgent = SubmitOptions {
        priority: 10,
        ..SubmitOptions::default()
    };
    let high = span("prio-high", 0, &urgent);
    let start_of =
        |f: &partita::distributed::Future| f.result().unwrap().get::<Vec<i64>>().unwrap()[1];
    let high_start = start_of(&high);
    assert!(start_of(&blocker) < high_start);
    // At most the one or two the worker took before the urgent task came (its slots).
    let before = low.iter().filter(|f| start_of(f) < high_start).count();
    assert!(
        before <= 2,
        "{before} of 6 lower-priority tasks started first"
    );
}

/// Dask's resources: tasks asking for one wait while no worker offers it, then run only
/// on a worker offering it and never more at once than it offers (here one slot on a
/// worker of two threads); tasks asking for nothing run anywhere meanwhile.
#[test]
fn tasks_asking_for_resources_run_where_offered_and_no_more_at_once() {
    use partita::distributed::{FutureStatus, Resources, SubmitOptions};
    let mut cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 1,
        threads_per_worker: 2,
        binary: Some(test_worker_binary()),
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts");
    let client = cluster.client().unwrap();
    client.wait_for_workers(1, Duration::from_secs(30)).unwrap();
    let one_slot = Resources::parse("SLOT=1").unwrap();
    let slot = SubmitOptions::with_resources(one_slot.clone());
    let spans = |tag: &str, options: &SubmitOptions| -> Vec<partita::distributed::Future> {
        (0..4)
            .map(|i| {
                let key = Key::new(tag, [i]);
                (client.submit_task_with(key, Arc::new(Span { ms: 150 }), &[], options)).unwrap()
            })
            .collect()
    };
    // No worker offers a slot: they wait, pending (not failed).
    let asking = spans("slot-span", &slot);
    assert!(
        client
            .wait(&asking, Some(Duration::from_millis(500)))
            .is_err()
    );
    assert!(asking.iter().all(|f| f.status() == FutureStatus::Pending));
    // A worker offering one slot joins: they all run there, one after the other.
    cluster.add_worker_offering(&one_slot).unwrap();
    let plain = spans("plain-span", &SubmitOptions::default());
    let ran: Vec<Vec<i64>> = (client.gather(&asking).unwrap().iter())
        .map(|v| v.get::<Vec<i64>>().unwrap().clone())
        .collect();
    let info = client.info().unwrap();
    let offering: Vec<&str> = (info.workers.iter())
        .filter(|w| w.resources == one_slot)
        .map(|w| w.peer.address.as_str())
        .collect();
    assert_eq!(offering.len(), 1, "{info:?}");
    let pids: std::collections::BTreeMap<String, i64> = (client.run(Arc::new(ProcessId)))
        .unwrap()
        .into_iter()
        .map(|(peer, r)| (peer.address, *r.unwrap().get::<i64>().unwrap()))
        .collect();
    let slot_pid = pids[offering[0]];
    assert!(ran.iter().all(|r| r[0] == slot_pid), "{ran:?} {pids:?}");
    let mut by_start = ran.clone();
    by_start.sort_by_key(|r| r[1]);
    for pair in by_start.windows(2) {
        assert!(
            pair[1][1] >= pair[0][2],
            "slot tasks overlapped: {by_start:?}"
        );
    }
    // The others ran too, wherever.
    assert_eq!(client.gather(&plain).unwrap().len(), 4);
    // Eight more queue on the one slot; a second worker offering one joins: the tasks
    // waiting for the slot move there (the first has both threads idle but one slot).
    let more: Vec<_> = (0..8)
        .map(|i| {
            let key = Key::new("slot-span-2", [i]);
            let op = Arc::new(Span { ms: 300 });
            client.submit_task_with(key, op, &[], &slot).unwrap()
        })
        .collect();
    cluster.add_worker_offering(&one_slot).unwrap();
    let ran: Vec<Vec<i64>> = (client.gather(&more).unwrap().iter())
        .map(|v| v.get::<Vec<i64>>().unwrap().clone())
        .collect();
    let by_pid = ran
        .iter()
        .fold(std::collections::BTreeMap::new(), |mut m, r| {
            m.entry(r[0]).or_insert_with(Vec::new).push((r[1], r[2]));
            m
        });
    assert_eq!(by_pid.len(), 2, "all ran in one process: {ran:?}");
    for spans in by_pid.values() {
        let mut spans = spans.clone();
        spans.sort_unstable();
        assert!(
            spans.windows(2).all(|p| p[1].0 >= p[0].1),
            "overlap: {spans:?}"
        );
    }
}

/// Dask's `client.restart`: every worker process is replaced through its nanny, all work
/// and data are dropped (futures cancelled, datasets gone), and the cluster works after.
#[test]
fn restart_replaces_every_worker_process_and_forgets_everything() {
    use partita::distributed::{Dataset, FutureStatus};
    let cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 2,
        threads_per_worker: 1,
        binary: Some(test_worker_binary()),
        nanny: true,
        ..LocalClusterOptions::default()
    })
    .expect("the cluster starts");
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(30)).unwrap();
    let pids = |client: &Client| -> std::collections::BTreeSet<i64> {
        (client.run(Arc::new(ProcessId)).unwrap().into_iter())
            .map(|(_, r)| *r.unwrap().get::<i64>().unwrap())
            .collect()
    };
    let before = pids(&client);
    let (graph, key, expected) = small_graph("restart-before");
    let done = client.submit(graph, &[key]).unwrap();
    assert_eq!(i64s(&client.gather(&done).unwrap()), [expected]);
    let slow = (client.submit_task(
        Key::named("restart-slow"),
        Arc::new(SlowMix {
            salt: 1,
            ms: 30_000,
        }),
        &[],
    ))
    .unwrap();
    let scattered = client.scatter(vec![Value::new(5i64)]).unwrap();
    client
        .publish_dataset("kept", &Dataset::Futures(scattered.clone()), false)
        .unwrap();
    let started = Instant::now();
    if let Err(e) = client.restart(Duration::from_secs(60)) {
        panic!(
            "{e}\n{}\n{}",
            cluster.log("worker-0"),
            cluster.log("scheduler")
        );
    }
    // Not held up by the 30 s task.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let after = pids(&client);
    assert_eq!(after.len(), 2);
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
    for f in done.iter().chain([&slow]).chain(&scattered) {
        assert_eq!(f.status(), FutureStatus::Cancelled, "{f:?}");
        assert!(f.result().is_err());
    }
    assert!(client.list_datasets().unwrap().is_empty());
    let info = client.info().unwrap();
    assert_eq!(info.tasks.memory + info.tasks.processing, 0, "{info:?}");
    assert!(info.workers.iter().all(|w| w.held == 0), "{info:?}");
    // The same graph again computes afresh.
    let (graph, key, expected) = small_graph("restart-before");
    assert_eq!(i64s(&run(graph, &[key], &client).unwrap()), [expected]);
}

#[test]
fn restart_without_nannies_is_refused_and_changes_nothing() {
    let client = cluster().expect("the test cluster");
    let (graph, key, expected) = small_graph("no-restart");
    let futures = client.submit(graph, &[key]).unwrap();
    client.wait(&futures, None).unwrap();
    let err = client
        .restart(Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nanny") && err.contains("127.0.0.1"), "{err}");
    assert_eq!(i64s(&client.gather(&futures).unwrap()), [expected]);
}

/// Tasks that wait on tasks they submitted: two one-thread workers, and fib(12)'s chain
/// holds up to eleven tasks waiting at once. Without `secede` the first two would hold
/// both threads and wait forever for their subtasks; with it the cluster computes it.
#[test]
fn tasks_that_submit_tasks_and_secede_do_not_deadlock() {
    let cluster = start(2, 0);
    let client = cluster.client().unwrap();
    client.wait_for_workers(2, Duration::from_secs(30)).unwrap();
    let fib = |n: u32| -> i64 {
        let (mut a, mut b) = (0i64, 1i64);
        for _ in 0..n {
            (a, b) = (b, a + b);
        }
        a
    };
    let future = (client.submit_task(TaskFib::key(12), Arc::new(TaskFib { n: 12 }), &[])).unwrap();
    assert_eq!(
        future.wait(Some(Duration::from_secs(60))).unwrap(),
        FutureStatus::Finished
    );
    assert_eq!(*future.result().unwrap().get::<i64>().unwrap(), fib(12));
    // Every task ran; the workers hold threads for nothing now.
    let info = client.info().unwrap();
    assert!(
        info.workers
            .iter()
            .all(|w| w.metrics.executing == 0 || w.processing == 0)
    );
    // A kind of task quick enough to run on the workers' event loops (many quick runs)
    // that then asks for the client is run again on a thread, not failed.
    let quick: Vec<_> = (0..60)
        .map(|i| {
            let op = Arc::new(MaybeAsk { n: i, ask: false });
            client.submit_task(Key::new("maybe-ask", [i as u32]), op, &[])
        })
        .collect::<partita::Result<_>>()
        .unwrap();
    assert_eq!(
        i64s(&client.gather(&quick).unwrap()),
        (0..60).collect::<Vec<_>>()
    );
    let asks: Vec<_> = (0..4)
        .map(|i| {
            let op = Arc::new(MaybeAsk { n: 0, ask: true });
            client.submit_task(Key::new("maybe-ask", [100 + i]), op, &[])
        })
        .collect::<partita::Result<_>>()
        .unwrap();
    assert_eq!(i64s(&client.gather(&asks).unwrap()), [2, 2, 2, 2]);
    // A task knows its key; outside a worker, the calls say where they work.
    let key = Key::named("which-task");
    let f = client
        .submit_task(key.clone(), Arc::new(CurrentTask), &[])
        .unwrap();
    assert_eq!(
        *f.result().unwrap().get::<String>().unwrap(),
        key.to_string()
    );
    let err = partita::distributed::get_client().unwrap_err().to_string();
    assert!(err.contains("get_client() works in a task"), "{err}");
    assert!(partita::distributed::secede().is_err());
    assert!(partita::distributed::rejoin().is_err());
    assert_eq!(partita::distributed::current_task(), None);
}

/// Dask's coordination primitives across processes: tasks on two workers increment a
/// file under one cluster lock (none lost), put values in a queue and wait on an event
/// the client sets; a variable carries futures from one client to another; a lock held
/// by a client that goes away is free again.
#[test]
fn locks_queues_events_and_variables_coordinate_clients_and_tasks() {
    use partita::distributed::{Dataset, Event, Lock, Queue, Semaphore, Variable};
    let client = cluster().expect("the test cluster");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("counter");
    std::fs::write(&file, "0").unwrap();
    // Eight increments, four threads: without the lock, overlapping reads lose updates.
    let futures: Vec<_> = (0..8)
        .map(|i| {
            let op = LockedIncrement {
                file: file.clone(),
                lock: "counter-lock".into(),
                ms: 20,
            };
            client.submit_task(Key::new("locked-inc", [i]), Arc::new(op), &[])
        })
        .collect::<partita::Result<_>>()
        .unwrap();
    let mut seen: Vec<i64> = (client.gather(&futures).unwrap().iter())
        .map(|v| *v.get::<i64>().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "8");
    assert!(!Lock::new(client, "counter-lock").locked().unwrap());

    // Tasks put into a queue, then wait for the client's go.
    let go = Event::new(client, "go-event");
    let queue = Queue::new(client, "results-queue");
    let roots: Vec<_> = (0..3)
        .map(|i| {
            client
                .scatter(vec![Value::new(10 + i as i64)])
                .unwrap()
                .remove(0)
        })
        .collect();
    let waiting: Vec<_> = (roots.iter().enumerate())
        .map(|(i, root)| {
            let op = QueueAndWait {
                queue: "results-queue".into(),
                go: "go-event".into(),
            };
            let key = Key::new("queue-and-wait", [i as u32]);
            client
                .submit_task(key, Arc::new(op), std::slice::from_ref(root))
                .unwrap()
        })
        .collect();
    let mut got = Vec::new();
    for _ in 0..3 {
        match queue.get(Some(Duration::from_secs(30))).unwrap() {
            Some(Dataset::Opaque { bytes, .. }) => {
                got.push(i64::from_le_bytes(bytes.try_into().unwrap()))
            }
            other => panic!("expected a value, got {other:?}"),
        }
    }
    got.sort_unstable();
    assert_eq!(got, [10, 11, 12]);
    assert!(
        queue
            .get(Some(Duration::from_millis(100)))
            .unwrap()
            .is_none()
    );
    assert!(waiting.iter().all(|f| !f.done()));
    go.set().unwrap();
    assert_eq!(i64s(&client.gather(&waiting).unwrap()), [10, 11, 12]);
    assert!(go.is_set().unwrap() && go.wait(Some(Duration::ZERO)).unwrap());
    go.clear().unwrap();
    assert!(!go.wait(Some(Duration::from_millis(50))).unwrap());

    // A variable hands futures to another client; the data outlives the setter's
    // futures while the variable holds it.
    let var = Variable::new(client, "shared-var");
    assert!(var.get(Some(Duration::from_millis(50))).unwrap().is_none());
    let (graph, key, expected) = small_graph("variable-held");
    let f = client.submit(graph, &[key]).unwrap();
    var.set(&Dataset::Futures(f)).unwrap();
    let other = partita_tests::another_client().unwrap();
    let Some(Dataset::Futures(mine)) = Variable::new(&other, "shared-var").get(None).unwrap()
    else {
        panic!("expected futures");
    };
    assert_eq!(i64s(&other.gather(&mine).unwrap()), [expected]);
    var.delete().unwrap();

    // A lock held by a client that leaves is free again; a semaphore's leases count.
    let held = partita_tests::another_client().unwrap();
    assert!(Lock::new(&held, "left-lock").acquire(None).unwrap());
    let lock = Lock::new(client, "left-lock");
    assert!(!lock.acquire(Some(Duration::from_millis(100))).unwrap());
    drop(held);
    assert!(lock.acquire(Some(Duration::from_secs(30))).unwrap());
    lock.release().unwrap();
    assert!(
        lock.release()
            .unwrap_err()
            .to_string()
            .contains("more often")
    );
    let sem = Semaphore::new(client, "two-leases", 2);
    assert!(sem.acquire(None).unwrap() && sem.acquire(None).unwrap());
    assert!(!sem.acquire(Some(Duration::from_millis(50))).unwrap());
    assert_eq!(sem.leases().unwrap(), 2);
    let err = Semaphore::new(client, "two-leases", 3)
        .acquire(None)
        .unwrap_err();
    assert!(err.to_string().contains("has 2 leases"), "{err}");
    sem.release().unwrap();
    sem.release().unwrap();
    assert_eq!(sem.leases().unwrap(), 0);
}

/// `(i, mix(i, []))` for the futures of [`slow_backlog`].
fn check_backlog(client: &Client, futures: &[partita::distributed::Future]) {
    let values = client.gather(futures).unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v.get::<i64>().unwrap(), mix(i as i64, &[]), "task {i}");
    }
}

/// `n` independent tasks of `ms` milliseconds each.
fn slow_backlog(client: &Client, name: &str, n: i64, ms: u64) -> Vec<partita::distributed::Future> {
    (0..n)
        .map(|i| {
            let op = Arc::new(SlowMix { salt: i, ms });
            client
                .submit_task(Key::new(name, [i as u32]), op, &[])
                .unwrap()
        })
        .collect()
}

/// Wait (at most 30 s) until `n` worker processes run and `n` workers are connected.
fn settles_at(cluster: &LocalCluster, client: &Client, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.running_workers() != n || client.info().unwrap().workers.len() != n {
        assert!(
            Instant::now() < deadline,
            "{} processes, {:?}",
            cluster.running_workers(),
            client.info()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adaptive scaling with real processes: one worker and a backlog of 30 tasks of 300 ms
/// (9 s on its one thread) grow the cluster up to the maximum of 3; every result is
/// right; once idle the cluster shrinks back to its minimum of one worker, which the
/// others handed their values to: nothing lost, nothing computed again.
#[test]
fn adapt_grows_for_a_backlog_and_shrinks_back_keeping_the_values() {
    let mut cluster = start(1, 0);
    let options = AdaptOptions {
        minimum: 1,
        maximum: Some(3),
        interval: Duration::from_millis(100),
        target_duration: Duration::from_secs(1),
        wait_count: 3,
    };
    cluster.adapt(options).unwrap();
    assert!(cluster.is_adaptive());
    let client = cluster.client().unwrap();
    let futures = slow_backlog(&client, "adapt-slow", 30, 300);
    let mut peak = 1;
    while !futures.iter().all(|f| f.done()) {
        peak = peak.max(cluster.running_workers());
        std::thread::sleep(Duration::from_millis(20));
    }
    check_backlog(&client, &futures);
    assert_eq!(peak, 3, "the cluster grew to {peak} worker processes only");
    settles_at(&cluster, &client, 1);
    check_backlog(&client, &futures);
    let stats = client.info().unwrap().stats;
    assert_eq!(
        (stats.workers_lost, stats.lost_values, stats.recomputed),
        (0, 0, 0),
        "{stats:?}"
    );
    assert!(stats.workers_retired >= 2, "{stats:?}");
}

/// `scale(n)`: up starts processes, down retires the emptiest workers gracefully (the
/// values they held move to the ones that stay), and an idle cluster holding nothing
/// scales to zero and back.
#[test]
fn scale_up_and_down_keeps_the_values() {
    let mut cluster = start(1, 0);
    let client = cluster.client().unwrap();
    cluster.scale(3, Duration::from_secs(30)).unwrap();
    assert_eq!(client.info().unwrap().workers.len(), 3);
    // Values on all three workers.
    let futures = slow_backlog(&client, "scale-values", 6, 50);
    check_backlog(&client, &futures);
    cluster.scale(1, Duration::from_secs(30)).unwrap();
    settles_at(&cluster, &client, 1);
    check_backlog(&client, &futures);
    let stats = client.info().unwrap().stats;
    assert_eq!(
        (stats.workers_retired, stats.lost_values),
        (2, 0),
        "{stats:?}"
    );
    // To zero: refused while values are held (the worker stays), done once they are gone.
    let err = cluster
        .scale(0, Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(err.contains("hold values"), "{err}");
    assert_eq!(cluster.running_workers(), 1);
    drop(futures);
    nothing_held(&client);
    cluster.scale(0, Duration::from_secs(30)).unwrap();
    settles_at(&cluster, &client, 0);
    cluster.scale(2, Duration::from_secs(30)).unwrap();
    let again = slow_backlog(&client, "scale-again", 4, 10);
    check_backlog(&client, &again);
}

/// Dask's `Pub`/`Sub` across clients: each subscription gets every message published
/// after it began, in order; a message published to nobody is dropped, one holding
/// futures is refused naming the topic; a dropped subscription ends. And a bounded
/// queue makes its producer wait for room.
#[test]
fn topics_reach_every_subscriber_and_bounded_queues_wait_for_room() {
    use partita::distributed::{Dataset, Pub, Queue, Sub};
    let client = cluster().expect("the test cluster");
    let other = partita_tests::another_client().unwrap();
    let bytes = |b: &[u8]| Dataset::Opaque {
        bytes: b.to_vec(),
        futures: Vec::new(),
    };
    let text = |d: Option<Dataset>| match d {
        Some(Dataset::Opaque { bytes, .. }) => String::from_utf8(bytes).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    };
    let topic = Pub::new(client, "news");
    assert_eq!(topic.put(&bytes(b"nobody hears this")).unwrap(), 0);
    let mine = Sub::new(&other, "news").unwrap();
    // On the publisher's connection: its unsubscribe (sent without waiting, on drop)
    // reaches the scheduler before the publisher's next message.
    let theirs = Sub::new(client, "news").unwrap();
    assert_eq!(topic.put(&bytes(b"one")).unwrap(), 2);
    assert_eq!(Pub::new(&other, "news").put(&bytes(b"two")).unwrap(), 2);
    for sub in [&mine, &theirs] {
        assert_eq!(text(sub.get(Some(Duration::from_secs(30))).unwrap()), "one");
        assert_eq!(text(sub.get(Some(Duration::from_secs(30))).unwrap()), "two");
        assert!(sub.get(Some(Duration::from_millis(50))).unwrap().is_none());
    }
    let f = client.scatter(vec![Value::new(1i64)]).unwrap();
    let err = topic.put(&Dataset::Futures(f)).unwrap_err().to_string();
    assert!(
        err.contains("news") && err.contains("plain values"),
        "{err}"
    );
    drop(theirs);
    assert_eq!(topic.put(&bytes(b"three")).unwrap(), 1);
    assert_eq!(text(mine.get(None).unwrap()), "three");

    // A queue of 2: the third put waits until a get makes room, or times out.
    let q = Queue::new(client, "bounded").with_maxsize(2);
    assert!(q.put_timeout(&bytes(b"a"), None).unwrap());
    assert!(q.put_timeout(&bytes(b"b"), None).unwrap());
    assert!(
        !q.put_timeout(&bytes(b"c"), Some(Duration::from_millis(50)))
            .unwrap()
    );
    assert_eq!(q.len().unwrap(), 2);
    let producer = {
        let q = Queue::new(&other, "bounded").with_maxsize(2);
        std::thread::spawn(move || {
            q.put(&Dataset::Opaque {
                bytes: b"d".to_vec(),
                futures: Vec::new(),
            })
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!producer.is_finished());
    assert_eq!(text(q.get(None).unwrap()), "a");
    producer.join().unwrap().unwrap();
    let rest: Vec<String> = (0..2).map(|_| text(q.get(None).unwrap())).collect();
    assert_eq!(rest, ["b", "d"]);
}

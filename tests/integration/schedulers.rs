//! Scheduler behaviour: same answers everywhere, errors that name the task, cancellation,
//! progress, thread counts.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use partita::{
    CancelToken, ComputeOptions, Error, ExecutionContext, FnOp, GraphBuilder, Key, Literal,
    LocalScheduler, ProgressBar, ProgressFn, Value, compute, compute_with,
};
use partita_tests::{Fail, Mix, Panic, as_i64s, compute_everywhere, local_schedulers, schedulers};

/// `width` leaves under a binary tree of `Mix`es, root key ("root",).
fn tree(width: usize) -> partita::Graph {
    let mut b = GraphBuilder::new();
    let mut level: Vec<Key> = (0..width)
        .map(|i| {
            let k = Key::new("leaf", [i as u32]);
            b.add_task(k.clone(), Arc::new(Literal(Value::new(i as i64))), &[]);
            k
        })
        .collect();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| {
                let k = Key::new(format!("combine-{depth}"), [i as u32]);
                b.add_task(k.clone(), Arc::new(Mix { salt: 0 }), pair);
                k
            })
            .collect();
    }
    b.add_task(Key::named("root"), Arc::new(Mix { salt: 7 }), &level);
    b.build().unwrap()
}

#[test]
fn every_scheduler_gives_the_same_tree_result() {
    let g = tree(37);
    let out = compute_everywhere(&g, &[Key::named("root"), Key::new("leaf", [3])]).unwrap();
    assert_eq!(as_i64s(&out)[1], 3);
}

fn graph_with_failure(op: Arc<dyn partita::Op>) -> partita::Graph {
    let mut b = GraphBuilder::new();
    for i in 0..20 {
        b.add_task(
            Key::new("ok", [i]),
            Arc::new(Mix { salt: i64::from(i) }),
            &[],
        );
    }
    b.add_task(Key::new("bad", [4, 2]), op, &[Key::new("ok", [3])]);
    let deps: Vec<Key> = (0..20)
        .map(|i| Key::new("ok", [i]))
        .chain([Key::new("bad", [4, 2])])
        .collect();
    b.add_task(Key::named("out"), Arc::new(Mix { salt: 0 }), &deps);
    b.build().unwrap()
}

#[test]
fn a_failing_task_is_named_and_the_scheduler_stays_usable() {
    for s in schedulers() {
        let g = graph_with_failure(Arc::new(Fail {
            message: "expected a positive number".into(),
        }));
        let err = compute(g, &[Key::named("out")], s.as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task ('bad', 4, 2) failed: type error: expected a positive number",
            "on {}",
            s.name()
        );
        assert_eq!(err.task_key(), Some(&Key::new("bad", [4, 2])));
        // The same scheduler still works afterwards.
        let ok = compute(tree(8), &[Key::new("leaf", [5])], s.as_ref()).unwrap();
        assert_eq!(as_i64s(&ok), vec![5]);
    }
}

#[test]
fn a_panicking_task_is_caught_and_named() {
    for s in schedulers() {
        let g = graph_with_failure(Arc::new(Panic {
            message: "index out of bounds".into(),
        }));
        let err = compute(g, &[Key::named("out")], s.as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task ('bad', 4, 2) panicked: index out of bounds"
        );
    }
}

#[test]
fn the_first_error_stops_outstanding_work() {
    // 400 slow independent tasks feed one sink; the failing task has the best priority, so
    // on any scheduler it runs near the start and the rest must not all run.
    for s in local_schedulers() {
        let ran = Arc::new(AtomicUsize::new(0));
        let mut b = GraphBuilder::new();
        b.add_task(
            Key::named("boom"),
            Arc::new(Fail {
                message: "boom".into(),
            }),
            &[],
        );
        let mut deps = vec![Key::named("boom")];
        for i in 0..400 {
            let ran = Arc::clone(&ran);
            let op = FnOp::new("slow", move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                Ok(Value::new(1i64))
            });
            b.add_task(Key::new("slow", [i]), Arc::new(op), &[]);
            deps.push(Key::new("slow", [i]));
        }
        b.add_task(Key::named("sink"), Arc::new(Mix { salt: 0 }), &deps);
        let err = compute(b.build().unwrap(), &[Key::named("sink")], s.as_ref()).unwrap_err();
        assert!(err.to_string().contains("task 'boom' failed"), "{err}");
        let n = ran.load(Ordering::SeqCst);
        assert!(
            n < 50,
            "{} ran {n} of 400 tasks after the failure",
            s.name()
        );
    }
}

#[test]
fn a_run_can_be_cancelled_from_another_thread() {
    for s in local_schedulers() {
        let token = CancelToken::new();
        let started = Arc::new(AtomicUsize::new(0));
        let mut b = GraphBuilder::new();
        let mut deps = Vec::new();
        for i in 0..2000 {
            let started = Arc::clone(&started);
            let op = FnOp::new("slow", move |_| {
                started.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                Ok(Value::new(1i64))
            });
            b.add_task(Key::new("slow", [i]), Arc::new(op), &[]);
            deps.push(Key::new("slow", [i]));
        }
        b.add_task(Key::named("sink"), Arc::new(Mix { salt: 0 }), &deps);
        let options = ComputeOptions {
            context: ExecutionContext {
                cancel: token.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let canceller = {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                token.cancel();
            })
        };
        let start = Instant::now();
        let err = compute_with(
            b.build().unwrap(),
            &[Key::named("sink")],
            s.as_ref(),
            &options,
        )
        .unwrap_err();
        canceller.join().unwrap();
        assert!(matches!(err, Error::Cancelled), "{err}");
        // Uncancelled, this takes 10 s on one thread.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "cancellation was not prompt"
        );
        assert!(started.load(Ordering::SeqCst) < 2000);
    }
}

#[test]
fn progress_is_reported_up_to_the_total() {
    for s in local_schedulers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = Arc::clone(&seen);
            ProgressFn::new(move |done, total| seen.lock().push((done, total)))
        };
        let options = ComputeOptions {
            context: ExecutionContext {
                progress: Some(sink),
                ..Default::default()
            },
            ..Default::default()
        };
        let run = compute_with(tree(3000), &[Key::named("root")], s.as_ref(), &options).unwrap();
        // Progress counts the tasks that run, after fusion.
        let total = run.stats.tasks_run;
        assert!(total > 5000);
        let seen = seen.lock();
        assert!(
            seen.len() >= 2 && seen.len() <= 1001,
            "{} updates",
            seen.len()
        );
        assert!(seen.iter().all(|&(_, t)| t == total));
        assert_eq!(seen.last().unwrap().0, total);
        // Reports arrive in order on every scheduler, however many threads finish at once.
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "{} out of order",
            s.name()
        );
    }
}

#[test]
fn the_progress_bar_follows_the_run() {
    let bar = Arc::new(ProgressBar::hidden());
    let options = ComputeOptions {
        context: ExecutionContext {
            progress: Some(bar.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let run = compute_with(
        tree(100),
        &[Key::named("root")],
        &LocalScheduler::with_threads(2),
        &options,
    )
    .unwrap();
    assert_eq!(bar.position(), run.stats.tasks_run as u64);
    assert!(run.stats.tasks_run > 190);
}

#[test]
fn the_thread_count_is_respected() {
    let names = Arc::new(Mutex::new(HashSet::new()));
    let mut b = GraphBuilder::new();
    for i in 0..200 {
        let names = Arc::clone(&names);
        let op = FnOp::new("who", move |_| {
            names
                .lock()
                .insert(std::thread::current().name().map(str::to_owned));
            std::thread::sleep(Duration::from_micros(200));
            Ok(Value::new(()))
        });
        b.add_task(Key::new("who", [i]), Arc::new(op), &[]);
    }
    let keys: Vec<Key> = (0..200).map(|i| Key::new("who", [i])).collect();
    let s = LocalScheduler::with_threads(3);
    assert_eq!(s.threads(), 3);
    compute(b.build().unwrap(), &keys, &s).unwrap();
    let names = names.lock();
    assert!(names.len() <= 3 && !names.is_empty(), "{names:?}");
    assert!(names.iter().all(|n| {
        n.as_deref()
            .is_some_and(|n| n.starts_with("partita-local-"))
    }));
}

#[test]
fn slow_tasks_are_shared_between_threads() {
    // One tiny task first lets a worker start reserving a batch; the slow ones that follow
    // must still be spread over both threads rather than hoarded.
    let ran_on = Arc::new(Mutex::new(Vec::new()));
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("tiny"), Arc::new(Literal(Value::new(0i64))), &[]);
    let mut keys = vec![Key::named("tiny")];
    for i in 0..8 {
        let ran_on = Arc::clone(&ran_on);
        let op = FnOp::new("slow", move |_| {
            std::thread::sleep(Duration::from_millis(20));
            ran_on
                .lock()
                .push(std::thread::current().name().map(str::to_owned));
            Ok(Value::new(()))
        });
        b.add_task(Key::new("slow", [i]), Arc::new(op), &[]);
        keys.push(Key::new("slow", [i]));
    }
    compute(b.build().unwrap(), &keys, &LocalScheduler::with_threads(2)).unwrap();
    let ran_on = ran_on.lock();
    let mut per_thread = std::collections::HashMap::new();
    for name in ran_on.iter() {
        *per_thread.entry(name.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_thread.len(), 2, "{per_thread:?}");
    assert!(per_thread.values().all(|&n| n >= 2), "{per_thread:?}");
}

/// A value whose size accounting panics: user code the scheduler calls outside the op.
#[derive(Debug)]
struct BadSize;

impl partita::Data for BadSize {
    fn nbytes(&self) -> usize {
        panic!("size unknown")
    }
    fn codec(&self) -> &'static str {
        "bad-size"
    }
    fn encode(&self, _out: &mut Vec<u8>) -> partita::Result<()> {
        Ok(())
    }
}

#[test]
fn panics_in_value_bookkeeping_are_errors_naming_the_task() {
    for s in local_schedulers() {
        let mut b = GraphBuilder::new();
        b.add_task(
            Key::new("bad", [1]),
            Arc::new(FnOp::new("bad", |_| Ok(Value::new(BadSize)))),
            &[],
        );
        let err = compute(b.build().unwrap(), &[Key::new("bad", [1])], s.as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task ('bad', 1) panicked: size unknown",
            "on {}",
            s.name()
        );
        assert_eq!(
            as_i64s(&compute(tree(4), &[Key::new("leaf", [1])], s.as_ref()).unwrap()),
            vec![1]
        );
    }
}

struct PanickingObserver;

impl partita::TaskObserver for PanickingObserver {
    fn task_finished(&self, _: partita::TaskId, _: &Key, _: u64, _: u64) {
        panic!("observer bug")
    }
}

#[test]
fn a_panicking_observer_fails_the_run_cleanly() {
    for s in local_schedulers() {
        let options = ComputeOptions {
            context: ExecutionContext {
                observer: Some(Arc::new(PanickingObserver)),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = compute_with(tree(16), &[Key::named("root")], s.as_ref(), &options).unwrap_err();
        assert!(err.to_string().contains("panicked: observer bug"), "{err}");
    }
}

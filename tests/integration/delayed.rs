//! The delayed API: lazy nodes over Rust functions, shared sub-graphs, typed results.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use partita::delayed::{self, Delayed};
use partita::{
    Collection, ComputeOptions, Error, LocalScheduler, SyncScheduler, compute_collections,
};
use partita_tests::local_schedulers;

#[test]
fn functions_of_several_arguments_compose() {
    let a = delayed::value(3i64);
    let b = delayed::value(4.5f64);
    let c = delayed::value("x".to_string());
    let d = delayed::call(
        "describe",
        |(a, b, c): (i64, f64, String)| format!("{c}={}", a as f64 * b),
        (&a, &b, &c),
    );
    for s in local_schedulers() {
        assert_eq!(d.compute(s.as_ref()).unwrap(), "x=13.5");
    }
}

#[test]
fn shared_sub_graphs_run_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let base = delayed::value(10i64).map("expensive", move |x| {
        counter.fetch_add(1, Ordering::SeqCst);
        x * 2
    });
    let left = base.map("plus1", |x| x + 1);
    let right = base.map("minus1", |x| x - 1);
    for s in local_schedulers() {
        calls.store(0, Ordering::SeqCst);
        let both = delayed::compute_all(&[left.clone(), right.clone()], s.as_ref()).unwrap();
        assert_eq!(both, vec![21, 19]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "on {}", s.name());
    }
}

#[test]
fn a_wide_fan_in_reduces() {
    let parts: Vec<Delayed<i64>> = (0..1000i64)
        .map(|i| delayed::value(i).map("sq", |x| x * x))
        .collect();
    let total = delayed::call("sum", |xs: Vec<i64>| xs.into_iter().sum::<i64>(), &parts);
    let expected: i64 = (0..1000i64).map(|x| x * x).sum();
    for s in local_schedulers() {
        assert_eq!(total.compute(s.as_ref()).unwrap(), expected);
    }
}

#[test]
fn user_errors_fail_the_task_and_name_it() {
    let x = delayed::value(-4.0f64);
    let root = delayed::try_call(
        "sqrt",
        |(v,): (f64,)| {
            if v < 0.0 {
                Err(format!("cannot take the root of {v}"))
            } else {
                Ok(v.sqrt())
            }
        },
        (&x,),
    );
    let err = root.compute(&LocalScheduler::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task {} failed: cannot take the root of -4", root.key())
    );
    assert!(matches!(err.root_cause(), Error::External(_)));
}

#[test]
fn wrong_types_give_a_type_error_not_a_panic() {
    let x = delayed::value(1i64);
    // Reinterpret the node as if it held a String.
    let y: Delayed<String> = delayed::apply_op("identity", Arc::new(partita::op::Identity), (&x,));
    let err = y.compute(&SyncScheduler).unwrap_err().to_string();
    assert!(
        err.contains("expected a value of type alloc::string::String, got i64"),
        "{err}"
    );
    let z = delayed::call("len", |(s,): (String,)| s.len() as i64, (&y,));
    let err = z.compute(&SyncScheduler).unwrap_err().to_string();
    assert!(err.contains("argument 0"), "{err}");
}

#[test]
fn heterogeneous_collections_compute_together() {
    let a = delayed::value(2i64).map("x3", |x| x * 3);
    let b = delayed::value(true);
    let (values, stats) = compute_collections(
        &[&a as &dyn Collection, &b],
        &SyncScheduler,
        &ComputeOptions::default(),
    )
    .unwrap();
    assert_eq!(*values[0][0].get::<i64>().unwrap(), 6);
    assert!(*values[1][0].get::<bool>().unwrap());
    assert_eq!(stats.tasks_run, 2, "the literal fuses into its map");
}

#[test]
fn long_delayed_chains_do_not_overflow_the_stack() {
    let mut x = delayed::value(0i64);
    for _ in 0..50_000 {
        x = x.map("inc", |v| v + 1);
    }
    assert_eq!(x.compute(&LocalScheduler::with_threads(2)).unwrap(), 50_000);
}

#[test]
fn arc_arguments_share_the_buffer_instead_of_copying_it() {
    let data = delayed::value((0..1_000_000).map(f64::from).collect::<Vec<f64>>());
    let addr = |(v,): (Arc<Vec<f64>>,)| Arc::as_ptr(&v) as usize as i64;
    let a = delayed::call("addr", addr, (&data.shared(),));
    let b = delayed::call("addr", addr, (&data.shared(),));
    let sum = delayed::call(
        "sum",
        |(v,): (Arc<Vec<f64>>,)| v.iter().sum::<f64>(),
        (&data.shared(),),
    );
    for s in local_schedulers() {
        let both = delayed::compute_all(&[a.clone(), b.clone()], s.as_ref()).unwrap();
        assert_eq!(
            both[0],
            both[1],
            "both readers saw the same buffer on {}",
            s.name()
        );
        assert_eq!(sum.compute(s.as_ref()).unwrap(), 499_999_500_000.0);
    }
}

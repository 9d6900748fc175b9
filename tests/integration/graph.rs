//! Graph validation: every malformed graph gives an error naming the key involved.

use std::sync::Arc;

use partita::op::Identity;
use partita::{Error, GraphBuilder, Key, Literal, SyncScheduler, Value, compute};

fn lit(v: i64) -> Arc<Literal> {
    Arc::new(Literal(Value::new(v)))
}

#[test]
fn missing_dependency_names_the_task_and_the_missing_key() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::new("a", [0]), lit(1), &[]);
    b.add_task(
        Key::new("b", [0]),
        Arc::new(Identity),
        &[Key::new("a", [7])],
    );
    let err = b.build().unwrap_err();
    match &err {
        Error::MissingDependency { key, missing } => {
            assert_eq!(key, &Key::new("b", [0]));
            assert_eq!(missing, &Key::new("a", [7]));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "missing dependency: task ('b', 0) depends on ('a', 7), which is not in the graph"
    );
}

#[test]
fn cycle_is_reported_with_a_key_on_it() {
    // tail -> c0 -> c1 -> c2 -> c0: the tail is not on the cycle and must not be blamed.
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("root"), lit(1), &[]);
    b.add_task(Key::named("tail"), Arc::new(Identity), &[Key::named("c0")]);
    b.add_task(Key::named("c0"), Arc::new(Identity), &[Key::named("c1")]);
    b.add_task(Key::named("c1"), Arc::new(Identity), &[Key::named("c2")]);
    b.add_task(Key::named("c2"), Arc::new(Identity), &[Key::named("c0")]);
    match b.build().unwrap_err() {
        Error::Cycle { key, cycle } => {
            let on_cycle = ["c0", "c1", "c2"].map(Key::named);
            assert!(on_cycle.contains(&key), "{key} is not on the cycle");
            assert_eq!(cycle.first(), cycle.last());
            assert_eq!(cycle.len(), 4);
            assert!(cycle.iter().all(|k| on_cycle.contains(k)));
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn self_dependency_is_a_cycle() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("me"), Arc::new(Identity), &[Key::named("me")]);
    let err = b.build().unwrap_err().to_string();
    assert_eq!(
        err,
        "cycle in graph: task 'me' depends on itself ('me' -> 'me')"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::new("x", [1]), lit(1), &[]);
    b.add_task(Key::new("x", [1]), lit(2), &[]);
    assert_eq!(
        b.build().unwrap_err().to_string(),
        "duplicate key in graph: ('x', 1)"
    );
}

#[test]
fn by_id_dependencies_must_exist() {
    let mut b = GraphBuilder::new();
    let err = b
        .add_task_by_id(Key::named("x"), lit(1), &[partita::TaskId(3)])
        .unwrap_err();
    assert!(
        err.to_string().contains("task 'x' depends on task id 3"),
        "{err}"
    );
}

#[test]
fn asking_for_an_unknown_key_names_it() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("x"), lit(1), &[]);
    let err = compute(b.build().unwrap(), &[Key::new("y", [2, 3])], &SyncScheduler).unwrap_err();
    assert_eq!(err.to_string(), "key not in graph: ('y', 2, 3)");
}

#[test]
fn built_graphs_are_topologically_numbered() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("c"), Arc::new(Identity), &[Key::named("b")]);
    b.add_task(Key::named("b"), Arc::new(Identity), &[Key::named("a")]);
    b.add_task(Key::named("a"), lit(5), &[]);
    let g = b.build().unwrap();
    for id in g.ids() {
        assert!(g.dependencies(id).iter().all(|d| d < &id));
    }
    let c = g.id_of(&Key::named("c")).unwrap();
    assert_eq!(g.dependencies(c), &[g.id_of(&Key::named("b")).unwrap()]);
    assert_eq!(g.dependents(g.id_of(&Key::named("a")).unwrap()).len(), 1);
    assert_eq!(g.edge_count(), 2);
}

#[test]
fn an_empty_request_computes_nothing() {
    let g = GraphBuilder::new().build().unwrap();
    for s in partita_tests::schedulers() {
        assert!(compute(g.clone(), &[], s.as_ref()).unwrap().is_empty());
    }
}

#[test]
fn a_refused_by_id_duplicate_does_not_poison_the_build() {
    let mut b = GraphBuilder::new();
    let x = b.add_task_by_id(Key::named("x"), lit(1), &[]).unwrap();
    let err = b.add_task_by_id(Key::named("x"), lit(2), &[]).unwrap_err();
    assert_eq!(err.to_string(), "duplicate key in graph: 'x'");
    b.add_task_by_id(Key::named("y"), Arc::new(Identity), &[x])
        .unwrap();
    let g = b.build().unwrap();
    assert_eq!(g.len(), 2);
}

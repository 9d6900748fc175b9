//! Graphs as data: MessagePack round trips, clear errors for closures and corrupt bytes.

use std::sync::Arc;

use partita::{FnOp, Graph, GraphBuilder, Key, Literal, Op, SyncScheduler, Value, compute};
use partita_tests::{AddVectors, Blob, Mix, SumVector, as_i64s};

fn remote_graph() -> Graph {
    let mut b = GraphBuilder::new();
    b.add_task(
        Key::new("v", [0]),
        Arc::new(Blob { len: 5, seed: 1.5 }),
        &[],
    );
    b.add_task(
        Key::new("v", [1]),
        Arc::new(Blob { len: 5, seed: -1.0 }),
        &[],
    );
    b.add_task(
        Key::named("sum"),
        Arc::new(AddVectors),
        &[Key::new("v", [0]), Key::new("v", [1])],
    );
    b.add_task(
        Key::named("total"),
        Arc::new(SumVector),
        &[Key::named("sum")],
    );
    b.add_task(Key::named("lit"), Arc::new(Literal(Value::new(41i64))), &[]);
    b.add_task(
        Key::named("mix"),
        Arc::new(Mix { salt: 1 }),
        &[Key::named("lit"), Key::named("lit")],
    );
    b.build().unwrap()
}

#[test]
fn a_graph_round_trips_through_messagepack() {
    let g = remote_graph();
    let bytes = g.encode().unwrap();
    let back = Graph::decode(&bytes).unwrap();
    assert_eq!(back.len(), g.len());
    assert_eq!(back.keys(), g.keys());
    for id in g.ids() {
        assert_eq!(back.dependencies(id), g.dependencies(id));
        assert_eq!(back.op(id).name(), g.op(id).name());
    }
    let outs = [Key::named("total"), Key::named("mix")];
    let a = compute(g, &outs, &SyncScheduler).unwrap();
    let b = compute(back, &outs, &SyncScheduler).unwrap();
    assert_eq!(*a[0].get::<f64>().unwrap(), *b[0].get::<f64>().unwrap());
    assert_eq!(as_i64s(&a[1..]), as_i64s(&b[1..]));
    assert_eq!(as_i64s(&b[1..]), vec![1 + 41 * 31 * 2]);
}

#[test]
fn a_single_op_round_trips_as_a_trait_object() {
    let op: Arc<dyn Op> = Arc::new(Mix { salt: 99 });
    let bytes = rmp_serde::to_vec(&op).unwrap();
    let back: Arc<dyn Op> = rmp_serde::from_slice(&bytes).unwrap();
    let v = back.execute(&[Value::new(1i64)]).unwrap();
    assert_eq!(*v.get::<i64>().unwrap(), 99 + 31);
}

#[test]
fn encoding_a_closure_names_the_task() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("ok"), Arc::new(Mix { salt: 0 }), &[]);
    let op = FnOp::new("my-closure", |_| Ok(Value::new(1i64)));
    b.add_task(
        Key::new("local-only", [3]),
        Arc::new(op),
        &[Key::named("ok")],
    );
    let err = b.build().unwrap().encode().unwrap_err().to_string();
    assert!(
        err.contains("cannot encode task ('local-only', 3)"),
        "{err}"
    );
    assert!(err.contains("'my-closure' is a Rust closure"), "{err}");
}

#[test]
fn corrupt_graph_bytes_are_errors_not_panics() {
    let bytes = remote_graph().encode().unwrap();
    // Every truncation and a sweep of single-byte corruptions.
    for cut in 0..bytes.len() {
        assert!(
            Graph::decode(&bytes[..cut]).is_err(),
            "truncated at {cut} decoded"
        );
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0xA5;
        // May decode to a different valid graph; must not panic.
        let _ = Graph::decode(&bad);
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(
        Graph::decode(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
}

#[test]
fn forward_references_on_the_wire_are_refused() {
    // Hand-craft: header then a task that names itself as a dependency (id 0 -> 0).
    let mut bytes = Vec::new();
    #[derive(serde::Serialize)]
    struct Header {
        version: u32,
        tasks: u64,
    }
    #[derive(serde::Serialize)]
    struct T<'a> {
        key: Key,
        op: &'a Arc<dyn Op>,
        deps: Vec<u32>,
    }
    rmp_serde::encode::write(
        &mut bytes,
        &Header {
            version: 1,
            tasks: 1,
        },
    )
    .unwrap();
    let op: Arc<dyn Op> = Arc::new(Mix { salt: 0 });
    rmp_serde::encode::write(
        &mut bytes,
        &T {
            key: Key::named("x"),
            op: &op,
            deps: vec![0],
        },
    )
    .unwrap();
    let err = Graph::decode(&bytes).unwrap_err().to_string();
    assert!(
        err.contains("task 'x' refers to task #0, which is not before it"),
        "{err}"
    );
}

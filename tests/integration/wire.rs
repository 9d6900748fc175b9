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

/// Values are what peers send on bulk streams: every truncation of an array chunk, a
/// reduction partial and a frame partition (as column buffers, and as Arrow IPC when it
/// has a list column) is an error, and a sweep of byte corruptions decodes to an error or
/// to some value, never a panic.
#[test]
fn corrupt_values_are_errors_not_panics() {
    use partita::array::Chunk;
    use partita::array::reduction::{ReduceBlock, Reduction};
    use partita::frame::Partition;
    use partita::frame::polars::prelude::*;

    let chunk = Value::new(Chunk::new(ndarray::ArrayD::from_shape_fn(
        ndarray::IxDyn(&[3, 4]),
        |ix| (ix[0] * 4 + ix[1]) as f64 / 3.0,
    )));
    let partial = ReduceBlock {
        reduction: Reduction::Var { ddof: 1 },
        axes: vec![0],
        arg: None,
        program: None,
        block: None,
    }
    .execute(std::slice::from_ref(&chunk))
    .unwrap();
    let frame = Partition::value(
        df!(
            "k" => ["a", "b", "c"],
            "v" => [1i64, 2, 3],
            "x" => [Some(0.5), None, Some(2.0)],
        )
        .unwrap(),
    );
    let list = Series::new(
        "l".into(),
        [
            Series::new("".into(), [1i64, 2]),
            Series::new("".into(), [3i64]),
        ],
    );
    let ipc = Partition::value(
        DataFrame::new(
            2,
            vec![list.into_column(), Column::new("s".into(), ["x", "y"])],
        )
        .unwrap(),
    );
    assert_eq!(frame.as_arc().codec(), "frame-columns");
    assert_eq!(ipc.as_arc().codec(), "frame-ipc");
    for value in [chunk, partial, frame, ipc] {
        let bytes = value.encode().unwrap();
        Value::decode(bytes.clone()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Value::decode(bytes[..cut].to_vec()).is_err(),
                "{value:?} truncated to {cut} of {} bytes decoded",
                bytes.len()
            );
        }
        for i in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xA5, 0xFF] {
                let mut bad = bytes.clone();
                bad[i] ^= mask;
                let _ = Value::decode(bad);
            }
        }
    }
}

/// Ops arrive as MessagePack trait objects: corrupt ones are errors naming the task.
#[test]
fn corrupt_ops_are_errors_not_panics() {
    use partita::array::reduction::{ReduceBlock, Reduction};
    use partita::distributed::worker::{decode_op, encode_op};

    let x = partita::array::random::random(&[4, 4], [2, 2], 1).unwrap();
    let y = (&(&x * 2.0).unwrap() + &x.t().unwrap()).unwrap();
    let fused = y.sum(0).unwrap();
    let key = Key::named("op");
    let mut ops: Vec<Arc<dyn Op>> = vec![Arc::new(ReduceBlock {
        reduction: Reduction::Mean,
        axes: vec![0, 1],
        arg: None,
        program: None,
        block: None,
    })];
    // The fused reduction's own tasks: per-block ops carrying an elementwise program, and
    // the merges.
    use partita::Collection;
    ops.extend(fused.layer().tasks().iter().map(|t| Arc::clone(&t.op)));
    assert!(ops.len() > 3);
    for op in ops {
        let bytes = encode_op(&key, &op).unwrap();
        decode_op(&key, &bytes).unwrap();
        for cut in 0..bytes.len() {
            let err = decode_op(&key, &bytes[..cut]).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains("task 'op'"), "{err}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xA5;
            let _ = decode_op(&key, &bad);
        }
    }
}

//! Optimizer passes: culling, fusion, ordering.

use std::sync::Arc;

use partita::optimize::{cull, fuse, order};
use partita::{
    ComputeOptions, ExecutionPlan, GraphBuilder, Key, Literal, OptimizeOptions, SyncScheduler,
    Value, compute_with,
};
use partita_tests::{Fail, Mix, as_i64s, compute_everywhere};

#[test]
fn cull_keeps_only_what_the_outputs_need() {
    let mut b = GraphBuilder::new();
    for i in 0..10 {
        b.add_task(
            Key::new("x", [i]),
            Arc::new(Mix { salt: i64::from(i) }),
            &[],
        );
    }
    b.add_task(
        Key::named("y"),
        Arc::new(Mix { salt: 0 }),
        &[Key::new("x", [2]), Key::new("x", [5])],
    );
    let g = b.build().unwrap();
    let mut outputs = vec![g.id_of(&Key::named("y")).unwrap()];
    let culled = cull(g.clone(), &mut outputs);
    assert_eq!(culled.len(), 3);
    assert_eq!(culled.key(outputs[0]), &Key::named("y"));
    // And the run does only that work.
    let run = compute_with(
        g,
        &[Key::named("y")],
        &SyncScheduler,
        &ComputeOptions::default(),
    )
    .unwrap();
    assert_eq!(run.stats.tasks_run, 3);
    assert_eq!(as_i64s(&run.values), vec![(2 + 5) * 31]);
}

fn chain(len: u32, output_mid: bool) -> (partita::Graph, Vec<Key>) {
    let mut b = GraphBuilder::new();
    b.add_task(Key::new("c", [0]), Arc::new(Literal(Value::new(1i64))), &[]);
    for i in 1..len {
        b.add_task(
            Key::new("c", [i]),
            Arc::new(Mix { salt: i64::from(i) }),
            &[Key::new("c", [i - 1])],
        );
    }
    let mut outs = vec![Key::new("c", [len - 1])];
    if output_mid {
        outs.push(Key::new("c", [len / 2]));
    }
    (b.build().unwrap(), outs)
}

#[test]
fn linear_chains_fuse_into_one_task() {
    let (g, outs) = chain(6, false);
    let mut ids = g.resolve(&outs).unwrap();
    let fused = fuse(g.clone(), &mut ids);
    assert_eq!(fused.len(), 1);
    assert_eq!(fused.key(ids[0]), &Key::new("c", [5]));
    assert_eq!(fused.op(ids[0]).name(), "mix");
    let out = compute_everywhere(&g, &outs).unwrap();
    let expected = (1..6).fold(1i64, |acc, i| i + acc * 31);
    assert_eq!(as_i64s(&out), vec![expected]);
}

#[test]
fn outputs_inside_a_chain_are_kept() {
    let (g, outs) = chain(7, true);
    let mut ids = g.resolve(&outs).unwrap();
    let fused = fuse(g.clone(), &mut ids);
    assert_eq!(fused.len(), 2);
    assert_eq!(fused.key(ids[1]), &Key::new("c", [3]));
    let out = compute_everywhere(&g, &outs).unwrap();
    assert_eq!(as_i64s(&out)[1], (1..4).fold(1i64, |acc, i| i + acc * 31));
}

/// Stands for a value held elsewhere (as a cluster's persisted values do).
#[derive(Debug)]
struct Held(i64);

impl serde::Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("held elsewhere"))
    }
}

impl<'de> serde::Deserialize<'de> for Held {
    fn deserialize<D: serde::Deserializer<'de>>(_d: D) -> Result<Held, D::Error> {
        Err(serde::de::Error::custom("held elsewhere"))
    }
}

#[typetag::serde(name = "test-held")]
impl partita::Op for Held {
    fn execute(&self, _inputs: &[Value]) -> partita::Result<Value> {
        Ok(Value::new(self.0))
    }
    fn name(&self) -> &str {
        "held"
    }
    fn remote_handle(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[test]
fn handles_to_values_held_elsewhere_are_not_fused() {
    // held -> a -> b: without the handle, the whole chain would be one task.
    let mut b = GraphBuilder::new();
    b.add_task(Key::named("held"), Arc::new(Held(4)), &[]);
    b.add_task(
        Key::named("a"),
        Arc::new(Mix { salt: 1 }),
        &[Key::named("held")],
    );
    b.add_task(
        Key::named("b"),
        Arc::new(Mix { salt: 2 }),
        &[Key::named("a")],
    );
    let g = b.build().unwrap();
    let mut ids = g.resolve(&[Key::named("b")]).unwrap();
    let fused = fuse(g.clone(), &mut ids);
    assert_eq!(fused.len(), 2);
    let held = fused.id_of(&Key::named("held")).unwrap();
    assert_eq!(fused.op(held).name(), "held");
    assert_eq!(fused.dependencies(ids[0]), [held]);
    let out = compute_with(
        g,
        &[Key::named("b")],
        &SyncScheduler,
        &ComputeOptions::default(),
    );
    assert_eq!(as_i64s(&out.unwrap().values), vec![2 + (1 + 4 * 31) * 31]);
}

#[test]
fn an_error_inside_a_fused_chain_names_the_inner_task() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::new("a", [0]), Arc::new(Literal(Value::new(1i64))), &[]);
    b.add_task(
        Key::new("a", [1]),
        Arc::new(Fail {
            message: "bad input".into(),
        }),
        &[Key::new("a", [0])],
    );
    b.add_task(
        Key::new("a", [2]),
        Arc::new(Mix { salt: 0 }),
        &[Key::new("a", [1])],
    );
    let g = b.build().unwrap();
    let plan =
        ExecutionPlan::new(g.clone(), &[Key::new("a", [2])], OptimizeOptions::default()).unwrap();
    assert_eq!(plan.graph.len(), 1, "the chain is fused");
    for s in partita_tests::schedulers() {
        let err = partita::compute(g.clone(), &[Key::new("a", [2])], s.as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task ('a', 1) failed: type error: bad input"
        );
    }
}

#[test]
fn a_panic_inside_a_fused_chain_names_the_inner_task() {
    let mut b = GraphBuilder::new();
    b.add_task(Key::new("p", [0]), Arc::new(Literal(Value::new(1i64))), &[]);
    b.add_task(
        Key::new("p", [1]),
        Arc::new(partita_tests::Panic {
            message: "boom".into(),
        }),
        &[Key::new("p", [0])],
    );
    b.add_task(
        Key::new("p", [2]),
        Arc::new(Mix { salt: 0 }),
        &[Key::new("p", [1])],
    );
    let g = b.build().unwrap();
    for s in partita_tests::schedulers() {
        let err = partita::compute(g.clone(), &[Key::new("p", [2])], s.as_ref()).unwrap_err();
        assert_eq!(err.to_string(), "task ('p', 1) panicked: boom");
    }
}

#[test]
fn order_finishes_a_branch_before_starting_the_next_root() {
    // Two-level tree: s_j = mix(l_2j, l_2j+1). Each s_j must come right after its leaves.
    let mut b = GraphBuilder::new();
    let mut sums = Vec::new();
    for j in 0..8u32 {
        let leaves = [Key::new("l", [2 * j]), Key::new("l", [2 * j + 1])];
        for l in &leaves {
            b.add_task(l.clone(), Arc::new(Mix { salt: 1 }), &[]);
        }
        b.add_task(Key::new("s", [j]), Arc::new(Mix { salt: 0 }), &leaves);
        sums.push(Key::new("s", [j]));
    }
    b.add_task(Key::named("total"), Arc::new(Mix { salt: 0 }), &sums);
    let g = b.build().unwrap();
    let out = g.resolve(&[Key::named("total")]).unwrap();
    let ord = order(&g, &out);
    assert_eq!(ord.len(), g.len());
    let names: Vec<String> = ord.iter().map(|&t| g.key(t).to_string()).collect();
    assert_eq!(
        &names[..6],
        &[
            "('l', 0)", "('l', 1)", "('s', 0)", "('l', 2)", "('l', 3)", "('s', 1)"
        ]
    );
    // Dependencies always come first.
    let mut pos = vec![0; g.len()];
    for (i, t) in ord.iter().enumerate() {
        pos[t.index()] = i;
    }
    for t in g.ids() {
        assert!(
            g.dependencies(t)
                .iter()
                .all(|d| pos[d.index()] < pos[t.index()])
        );
    }
}

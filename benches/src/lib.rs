//! Workloads for partita's benchmarks: graphs of trivial tasks that measure the per-task
//! cost of building, optimizing and scheduling, not of the tasks themselves.

use std::sync::Arc;

use partita::{Graph, GraphBuilder, Key, Op, Result, Value};
use serde::{Deserialize, Serialize};

/// Produces its index as an i64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leaf(pub i64);

#[typetag::serde(name = "bench-leaf")]
impl Op for Leaf {
    fn execute(&self, _inputs: &[Value]) -> Result<Value> {
        Ok(Value::new(self.0))
    }
    fn name(&self) -> &str {
        "leaf"
    }
}

/// Sums i64 inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sum;

#[typetag::serde(name = "bench-sum")]
impl Op for Sum {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let mut total = 0i64;
        for v in inputs {
            total = total.wrapping_add(*v.get::<i64>()?);
        }
        Ok(Value::new(total))
    }
    fn name(&self) -> &str {
        "sum"
    }
}

/// Adds one to its single i64 input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inc;

#[typetag::serde(name = "bench-inc")]
impl Op for Inc {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        partita::op::expect_inputs("inc", inputs, 1)?;
        Ok(Value::new(inputs[0].get::<i64>()? + 1))
    }
    fn name(&self) -> &str {
        "inc"
    }
}

/// `n` independent leaves reduced by a tree of fan-in `split_every`. Returns the root key.
pub fn tree_reduction(n: usize, split_every: usize) -> (Graph, Key) {
    let mut b = GraphBuilder::with_capacity(n + n / (split_every - 1) + 2);
    let leaf_name: Arc<str> = "leaf".into();
    let mut level: Vec<Key> = (0..n)
        .map(|i| {
            let k = Key::indexed(&leaf_name, &[i as u32]);
            b.add_task(k.clone(), Arc::new(Leaf(i as i64)), &[]);
            k
        })
        .collect();
    let sum: Arc<dyn Op> = Arc::new(Sum);
    let mut depth = 0u32;
    while level.len() > 1 {
        depth += 1;
        let name: Arc<str> = format!("sum-{depth}").into();
        level = level
            .chunks(split_every)
            .enumerate()
            .map(|(i, group)| {
                let k = Key::indexed(&name, &[i as u32]);
                b.add_task(k.clone(), Arc::clone(&sum), group);
                k
            })
            .collect();
    }
    let root = level.pop().expect("n >= 1");
    (b.build().expect("valid"), root)
}

/// A chain of `n` tasks: a leaf holding 1, then `n - 1` increments (the result is `n`).
pub fn chain(n: usize) -> (Graph, Key) {
    let mut b = GraphBuilder::with_capacity(n);
    let name: Arc<str> = "chain".into();
    let inc: Arc<dyn Op> = Arc::new(Inc);
    b.add_task(Key::indexed(&name, &[0]), Arc::new(Leaf(1)), &[]);
    for i in 1..n as u32 {
        b.add_task(
            Key::indexed(&name, &[i]),
            Arc::clone(&inc),
            &[Key::indexed(&name, &[i - 1])],
        );
    }
    (
        b.build().expect("valid"),
        Key::indexed(&name, &[n as u32 - 1]),
    )
}

/// `n` leaves feeding one task.
pub fn fan_in(n: usize) -> (Graph, Key) {
    let mut b = GraphBuilder::with_capacity(n + 1);
    let name: Arc<str> = "in".into();
    let keys: Vec<Key> = (0..n)
        .map(|i| {
            let k = Key::indexed(&name, &[i as u32]);
            b.add_task(k.clone(), Arc::new(Leaf(i as i64)), &[]);
            k
        })
        .collect();
    b.add_task(Key::named("fan-in"), Arc::new(Sum), &keys);
    (b.build().expect("valid"), Key::named("fan-in"))
}

/// The expected result of each workload, to check the benchmarks compute the right thing.
pub fn expected_sum(n: usize) -> i64 {
    (n as i64) * (n as i64 - 1) / 2
}

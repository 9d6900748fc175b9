//! Ops: what a task runs.
//!
//! Key decision: `Op` is a *serializable trait object* (`typetag`), so a client, scheduler and
//! worker exchange graphs as data: any crate adds ops by implementing [`Op`] under
//! `#[typetag::serde]`, and a process that links that crate can decode them. Closures are
//! allowed for local-only work ([`FnOp`]); encoding one fails with an error, which
//! [`Graph::encode`](crate::Graph::encode) turns into one naming the task.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result, panic_message};
use crate::key::Key;
use crate::value::{Value, ValueList};

/// What a task runs: `execute(inputs) -> value`.
///
/// Contract for implementations:
/// - `inputs` are the results of the task's dependencies, in the order they were declared.
/// - `execute` is deterministic in its inputs and may run on any thread, on any machine, any
///   number of times (a lost result is recomputed from lineage); it must not rely on side
///   effects of other tasks.
/// - It reports bad inputs as errors, never by panicking; schedulers do catch panics, but a
///   panic is a bug in the op.
/// - Ops meant to run remotely implement `Serialize`/`Deserialize` and are registered with
///   `#[typetag::serde]`; their serialized form must carry everything `execute` needs.
#[typetag::serde]
pub trait Op: Send + Sync + fmt::Debug {
    /// Run the op on its inputs.
    fn execute(&self, inputs: &[Value]) -> Result<Value>;

    /// A short name for diagnostics and progress displays.
    fn name(&self) -> &str;

    /// For an op that stands for a value held outside this process (a result persisted on
    /// a cluster): itself, for the scheduler that holds the value, which uses it where it
    /// is instead of running the op (see [`Scheduler::persist`](crate::Scheduler::persist)).
    /// Such a task is never fused into another, so that scheduler sees it. `None` for
    /// every other op.
    fn remote_handle(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Run `op` as the task `key`: its errors are wrapped to name the task (unless they
/// already name an inner one) and a panic becomes [`Error::Panic`] naming the task.
pub fn execute_guarded(key: &Key, op: &dyn Op, inputs: &[Value]) -> Result<Value> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.execute(inputs))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.in_task(key)),
        Err(payload) => Err(Error::Panic {
            key: key.clone(),
            message: panic_message(&*payload),
        }),
    }
}

/// Check the number of inputs an op got.
pub fn expect_inputs(op: &str, inputs: &[Value], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(Error::Graph(format!(
            "op {op} takes {n} input(s), got {}",
            inputs.len()
        )));
    }
    Ok(())
}

/// A task that returns a fixed value (a graph's data literal).
#[derive(Debug, Clone)]
pub struct Literal(pub Value);

impl Serialize for Literal {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes = self.0.encode().map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Literal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Literal, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Value::decode(bytes.into_vec())
            .map(Literal)
            .map_err(serde::de::Error::custom)
    }
}

#[typetag::serde(name = "literal")]
impl Op for Literal {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("literal", inputs, 0)?;
        Ok(self.0.clone())
    }
    fn name(&self) -> &str {
        "literal"
    }
}

/// Returns its single input (an alias for another key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity;

#[typetag::serde(name = "identity")]
impl Op for Identity {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        expect_inputs("identity", inputs, 1)?;
        Ok(inputs[0].clone())
    }
    fn name(&self) -> &str {
        "identity"
    }
}

/// Gathers all inputs into a [`ValueList`] (Dask's "list of keys" task).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Collect;

#[typetag::serde(name = "collect")]
impl Op for Collect {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        Ok(Value::new(ValueList(inputs.to_vec())))
    }
    fn name(&self) -> &str {
        "collect"
    }
}

type OpFn = dyn Fn(&[Value]) -> Result<Value> + Send + Sync;

/// A closure as an op, for local-only work. It cannot be sent to another process.
#[derive(Clone)]
pub struct FnOp {
    name: Arc<str>,
    f: Arc<OpFn>,
}

impl FnOp {
    /// Wrap a closure; `name` shows in diagnostics.
    pub fn new(
        name: impl Into<Arc<str>>,
        f: impl Fn(&[Value]) -> Result<Value> + Send + Sync + 'static,
    ) -> FnOp {
        FnOp {
            name: name.into(),
            f: Arc::new(f),
        }
    }
}

impl fmt::Debug for FnOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnOp({})", self.name)
    }
}

impl Serialize for FnOp {
    fn serialize<S: Serializer>(&self, _s: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(format!(
            "op '{}' is a Rust closure and runs only in the process that made it; \
             use a serializable op to run it on a cluster",
            self.name
        )))
    }
}

impl<'de> Deserialize<'de> for FnOp {
    fn deserialize<D: Deserializer<'de>>(_d: D) -> std::result::Result<FnOp, D::Error> {
        Err(serde::de::Error::custom("a closure op cannot be decoded"))
    }
}

#[typetag::serde(name = "fn")]
impl Op for FnOp {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        (self.f)(inputs)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A linear chain of tasks fused into one by the optimizer.
///
/// The first step takes the fused task's inputs; each later step takes the previous step's
/// result. Each step keeps its original key so an error names the task that really failed,
/// and intermediate results are dropped as soon as the next step has run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusedChain {
    /// `(original key, op)` in execution order.
    pub steps: Vec<(Key, Arc<dyn Op>)>,
}

#[typetag::serde(name = "fused")]
impl Op for FusedChain {
    fn execute(&self, inputs: &[Value]) -> Result<Value> {
        let Some(((first_key, first), rest)) = self.steps.split_first() else {
            return Err(Error::Internal("empty fused chain".into()));
        };
        let mut value = execute_guarded(first_key, first.as_ref(), inputs)?;
        for (key, op) in rest {
            value = execute_guarded(key, op.as_ref(), std::slice::from_ref(&value))?;
        }
        Ok(value)
    }
    fn name(&self) -> &str {
        self.steps.last().map_or("fused", |(_, op)| op.name())
    }
}

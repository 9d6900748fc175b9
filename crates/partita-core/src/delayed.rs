//! `delayed`: lazy general task graphs from plain Rust functions.
//!
//! ```
//! use partita_core::delayed::{self, Delayed};
//! use partita_core::LocalScheduler;
//!
//! let x = delayed::value(20i64);
//! let y = delayed::value(22i64);
//! let total: Delayed<i64> = delayed::call("add", |(a, b): (i64, i64)| a + b, (&x, &y));
//! let doubled = total.map("double", |t| t * 2);
//! assert_eq!(doubled.compute(&LocalScheduler::new()).unwrap(), 84);
//! ```
//!
//! Functions receive their arguments by value (a clone of each input; cheap for scalars).
//! For large values, read the node through [`Delayed::shared`] and take `Arc<T>`: no copy.
//!
//! Each call adds one task in a new [`Layer`] that points at its arguments' layers, so nodes
//! share sub-graphs: computing `a` and `b` together runs their common ancestors once. Functions
//! are closures, so delayed graphs run locally; use serializable [`Op`](crate::Op)s for
//! cluster work.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::{BoxError, Error, Result};
use crate::graph::Task;
use crate::key::Key;
use crate::layer::{Collection, Layer, compute_collections};
use crate::op::{FnOp, Literal, Op};
use crate::scheduler::{ComputeOptions, RunStats, Scheduler};
use crate::value::{FromValue, IntoValue, Value};

/// A lazy value of type `T`.
pub struct Delayed<T> {
    layer: Arc<Layer>,
    key: Key,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Delayed<T> {
    fn clone(&self) -> Self {
        Delayed {
            layer: Arc::clone(&self.layer),
            key: self.key.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delayed({})", self.key)
    }
}

impl<T> Collection for Delayed<T> {
    fn layer(&self) -> &Arc<Layer> {
        &self.layer
    }
    fn output_keys(&self) -> Vec<Key> {
        vec![self.key.clone()]
    }
}

impl<T> Delayed<T> {
    fn node(name: &str, op: Arc<dyn Op>, deps: Vec<Key>, layers: Vec<Arc<Layer>>) -> Delayed<T> {
        let key = Key::named(Key::unique_name(name));
        let layer = Layer::new(
            key.name_arc().clone(),
            vec![Task::new(key.clone(), op, deps)],
            layers,
        );
        Delayed {
            layer,
            key,
            _type: PhantomData,
        }
    }

    /// The value of task `key` in `layer` (or a layer it depends on), as a `Delayed<T>`: how
    /// collections hand out scalar results such as a frame's length. The task must produce
    /// a `T`; computing fails with a type error otherwise.
    pub fn from_layer(layer: Arc<Layer>, key: Key) -> Delayed<T> {
        Delayed {
            layer,
            key,
            _type: PhantomData,
        }
    }

    /// The key of this node's task.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The same node, read as `Arc<T>`: functions taking it share the result's buffer
    /// instead of receiving a clone (use it for large values read by several tasks).
    pub fn shared(&self) -> Delayed<Arc<T>>
    where
        T: crate::value::Data,
    {
        Delayed {
            layer: Arc::clone(&self.layer),
            key: self.key.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: FromValue + 'static> Delayed<T> {
    /// A node applying `f` to this value.
    pub fn map<R: IntoValue>(
        &self,
        name: &str,
        f: impl Fn(T) -> R + Send + Sync + 'static,
    ) -> Delayed<R> {
        call(name, move |(t,): (T,)| f(t), (self,))
    }

    /// Compute this value.
    pub fn compute(&self, scheduler: &dyn Scheduler) -> Result<T> {
        self.compute_with(scheduler, &ComputeOptions::default())
            .map(|(v, _)| v)
    }

    /// Compute with options; also returns the run's statistics.
    pub fn compute_with(
        &self,
        scheduler: &dyn Scheduler,
        options: &ComputeOptions,
    ) -> Result<(T, RunStats)> {
        let (values, stats) = compute_collections(&[self], scheduler, options)?;
        Ok((T::from_value(&values[0][0])?, stats))
    }
}

/// A node holding a literal value (encodable, so it can travel in a graph).
pub fn value<T: IntoValue>(v: T) -> Delayed<T> {
    Delayed::node(
        "literal",
        Arc::new(Literal(v.into_value())),
        Vec::new(),
        Vec::new(),
    )
}

/// Decodes a function's arguments from its task's inputs.
pub trait FromInputs: Sized + 'static {
    /// Convert the inputs, or a type error naming the argument.
    fn from_inputs(inputs: &[Value]) -> Result<Self>;
}

/// Arguments of a delayed call: a tuple of `&Delayed<_>` or a slice/`Vec` of them.
pub trait DelayedArgs {
    /// What the function receives.
    type Values: FromInputs;
    /// The argument nodes' keys and layers.
    fn parts(&self) -> (Vec<Key>, Vec<Arc<Layer>>);
}

fn arg<T: FromValue>(inputs: &[Value], i: usize) -> Result<T> {
    let v = inputs
        .get(i)
        .ok_or_else(|| Error::Graph(format!("delayed function expected argument {i}, got none")))?;
    T::from_value(v).map_err(|e| Error::Type(format!("argument {i}: {e}")))
}

macro_rules! tuple_args {
    ($n:literal; $($T:ident $i:tt),+) => {
        impl<$($T: FromValue + 'static),+> FromInputs for ($($T,)+) {
            fn from_inputs(inputs: &[Value]) -> Result<Self> {
                if inputs.len() != $n {
                    return Err(Error::Graph(format!(
                        "delayed function takes {} argument(s), got {}", $n, inputs.len()
                    )));
                }
                Ok(($(arg::<$T>(inputs, $i)?,)+))
            }
        }
        impl<'a, $($T: FromValue + 'static),+> DelayedArgs for ($(&'a Delayed<$T>,)+) {
            type Values = ($($T,)+);
            fn parts(&self) -> (Vec<Key>, Vec<Arc<Layer>>) {
                (vec![$(self.$i.key.clone()),+], vec![$(Arc::clone(&self.$i.layer)),+])
            }
        }
    };
}

tuple_args!(1; A 0);
tuple_args!(2; A 0, B 1);
tuple_args!(3; A 0, B 1, C 2);
tuple_args!(4; A 0, B 1, C 2, D 3);
tuple_args!(5; A 0, B 1, C 2, D 3, E 4);
tuple_args!(6; A 0, B 1, C 2, D 3, E 4, F 5);

impl<T: FromValue + 'static> FromInputs for Vec<T> {
    fn from_inputs(inputs: &[Value]) -> Result<Self> {
        (0..inputs.len()).map(|i| arg::<T>(inputs, i)).collect()
    }
}

impl<T: FromValue + 'static> DelayedArgs for &[Delayed<T>] {
    type Values = Vec<T>;
    fn parts(&self) -> (Vec<Key>, Vec<Arc<Layer>>) {
        let keys = self.iter().map(|d| d.key.clone()).collect();
        let mut layers: Vec<Arc<Layer>> = self.iter().map(|d| Arc::clone(&d.layer)).collect();
        layers.dedup_by(|a, b| Arc::ptr_eq(a, b));
        (keys, layers)
    }
}

impl<T: FromValue + 'static> DelayedArgs for &Vec<Delayed<T>> {
    type Values = Vec<T>;
    fn parts(&self) -> (Vec<Key>, Vec<Arc<Layer>>) {
        self.as_slice().parts()
    }
}

fn fn_op<V: FromInputs, R: IntoValue>(
    name: &str,
    f: impl Fn(V) -> Result<R> + Send + Sync + 'static,
) -> Arc<dyn Op> {
    Arc::new(FnOp::new(name, move |inputs: &[Value]| {
        f(V::from_inputs(inputs)?).map(IntoValue::into_value)
    }))
}

/// A node calling `f` on the values of `args`: `call("add", |(a, b)| a + b, (&x, &y))`.
pub fn call<A: DelayedArgs, R: IntoValue>(
    name: &str,
    f: impl Fn(A::Values) -> R + Send + Sync + 'static,
    args: A,
) -> Delayed<R> {
    let (keys, layers) = args.parts();
    Delayed::node(name, fn_op(name, move |v| Ok(f(v))), keys, layers)
}

/// Like [`call`] for a fallible function; its error fails the task (and names it).
pub fn try_call<A: DelayedArgs, R: IntoValue, E: Into<BoxError>>(
    name: &str,
    f: impl Fn(A::Values) -> std::result::Result<R, E> + Send + Sync + 'static,
    args: A,
) -> Delayed<R> {
    let (keys, layers) = args.parts();
    Delayed::node(
        name,
        fn_op(name, move |v| f(v).map_err(Error::external)),
        keys,
        layers,
    )
}

/// A node running any [`Op`] on `args` (use this for ops that must run on a cluster).
pub fn apply_op<A: DelayedArgs, R>(name: &str, op: Arc<dyn Op>, args: A) -> Delayed<R> {
    let (keys, layers) = args.parts();
    Delayed::node(name, op, keys, layers)
}

/// Compute many values of one type in one run, sharing common sub-graphs.
pub fn compute_all<T: FromValue + 'static>(
    items: &[Delayed<T>],
    scheduler: &dyn Scheduler,
) -> Result<Vec<T>> {
    let refs: Vec<&dyn Collection> = items.iter().map(|d| d as &dyn Collection).collect();
    let (values, _) = compute_collections(&refs, scheduler, &ComputeOptions::default())?;
    values.iter().map(|v| T::from_value(&v[0])).collect()
}

"""Futures on a cluster, Dask-style (`client.compute`, `client.submit`, `client.map`,
`client.gather`, `pt.as_completed`, `pt.wait`) and `pt.delayed`.

A Python function sent to the cluster travels as `cloudpickle.dumps((f, args, kwargs))`,
with every future among its arguments (at the top level, or inside lists, tuples and dicts)
replaced by a `Dep(i)` placeholder for the task's i-th input. Workers started by
`python -m partita worker` (as `pt.LocalCluster` starts them) run it with `run_call`.
"""

import hashlib
import operator
import pickle
import uuid

from . import _partita

Future = _partita.Future


class Dep:
    """Where the i-th input of a submitted call goes among its arguments."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


def _substitute(obj, inputs):
    if isinstance(obj, Dep):
        return inputs[obj.index]
    if type(obj) is list:
        return [_substitute(x, inputs) for x in obj]
    if type(obj) is tuple:
        return tuple(_substitute(x, inputs) for x in obj)
    if type(obj) is dict:
        return {k: _substitute(v, inputs) for k, v in obj.items()}
    return obj


def run_call(payload, inputs):
    """On a worker: unpickle `(f, args, kwargs)`, put the inputs in place and call."""
    f, args, kwargs = pickle.loads(payload)
    return f(*_substitute(args, inputs), **_substitute(kwargs, inputs))


def _replace(obj, deps, kind):
    """`obj` with every `kind` instance in it replaced by a `Dep` (appended to `deps`)."""
    if isinstance(obj, kind):
        for i, d in enumerate(deps):
            if d is obj:
                return Dep(i)
        deps.append(obj)
        return Dep(len(deps) - 1)
    if type(obj) is list:
        return [_replace(x, deps, kind) for x in obj]
    if type(obj) is tuple:
        return tuple(_replace(x, deps, kind) for x in obj)
    if type(obj) is dict:
        return {k: _replace(v, deps, kind) for k, v in obj.items()}
    return obj


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError as e:  # pragma: no cover - cloudpickle is a dependency
        raise _partita.PartitaNotImplementedError(
            "sending Python functions to a cluster needs cloudpickle (pip install cloudpickle)"
        ) from e
    return cloudpickle


def _name(f):
    return getattr(f, "__name__", None) or type(f).__name__


def submit(client, f, *args, key=None, pure=True, **kwargs):
    if not callable(f):
        raise TypeError(f"submit takes a function first, got {type(f).__name__}")
    deps = []
    args = _replace(list(args), deps, Future)
    kwargs = _replace(dict(kwargs), deps, Future)
    payload = _cloudpickle().dumps((f, tuple(args), kwargs))
    if key is None:
        if pure:
            # Same function and arguments, same key: the result is shared, like Dask.
            h = hashlib.sha256(payload)
            for d in deps:
                h.update(d.key.encode())
            key = f"{_name(f)}-{h.hexdigest()[:32]}"
        else:
            key = f"{_name(f)}-{uuid.uuid4().hex}"
    return client._submit_call(str(key), _name(f), payload, deps)


def _rust(collection):
    rust = getattr(collection, "_rust", None)
    if rust is None:
        raise TypeError(
            "compute takes partita arrays, dataframes and delayed values, got "
            f"{type(collection).__name__}"
        )
    return rust


class Client(_partita.Client):
    """A connection to a partita cluster: `pt.Client(cluster_file_or_local_cluster)`.

    Pass it as `scheduler=` to any compute, or use its futures: `compute`, `submit`, `map`,
    `gather`, `cancel`, `wait` (and `pt.as_completed`)."""

    def compute(self, collections):
        """Start computing an array or frame (or a list of them) and return at once with a
        `Future` (or a list of them); `future.result()` gives the NumPy array or frame."""
        if isinstance(collections, (list, tuple)):
            return self._compute([_rust(c) for c in collections])
        return self._compute([_rust(collections)])[0]

    def submit(self, func, *args, key=None, pure=True, **kwargs):
        """Run `func(*args, **kwargs)` on a worker; futures among the arguments are replaced
        by their values there. Needs workers started with `python -m partita worker`."""
        return submit(self, func, *args, key=key, pure=pure, **kwargs)

    def map(self, func, *iterables, pure=True, **kwargs):
        """`submit(func, *items)` for the items of `iterables` taken together."""
        return [submit(self, func, *items, pure=pure, **kwargs) for items in zip(*iterables)]

    def gather(self, futures, timeout=None):
        """The result of a future, or the results of a list of futures (fetched together)."""
        if isinstance(futures, Future):
            return self._gather([futures], timeout)[0]
        return self._gather(list(futures), timeout)

    def cancel(self, futures):
        """Stop computing these futures (one or a list) and forget them on the cluster."""
        if isinstance(futures, Future):
            futures = [futures]
        self._cancel(list(futures))

    def wait(self, futures, timeout=None):
        """Block until every future is done (TimeoutError after `timeout` seconds)."""
        if isinstance(futures, Future):
            futures = [futures]
        self._wait(list(futures), timeout)


def as_completed(futures):
    """Iterate over `futures` in the order they finish (or fail)."""
    return _partita.AsCompleted(list(futures))


def wait(futures, timeout=None):
    """Block until every future is done (TimeoutError after `timeout` seconds)."""
    import time

    futures = [futures] if isinstance(futures, Future) else list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    for f in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        f.wait(left)


# ---------------------------------------------------------------------------------------
# pt.delayed


def _identity(x):
    return x


class Delayed:
    """A lazy Python value: the result of calling a `pt.delayed` function (or a value
    wrapped by `pt.delayed(obj)`). Compute it with `.compute(scheduler=...)`,
    `pt.compute(...)` or `client.compute(...)`; operators and item access make new delayed
    values. Its task runs on every scheduler, a cluster included."""

    __slots__ = ("_rust",)

    def __init__(self, rust):
        self._rust = rust

    @property
    def key(self):
        return self._rust.key

    def compute(self, scheduler=None, num_workers=None):
        from . import compute

        return compute(self, scheduler=scheduler, num_workers=num_workers)[0]

    def __repr__(self):
        return f"Delayed({self.key!r})"

    def __bool__(self):
        raise TypeError("the truth of a delayed value is known only once it is computed")

    def __iter__(self):
        raise TypeError("a delayed value cannot be iterated before it is computed")

    def __getitem__(self, index):
        return _call(operator.getitem, (self, index), {}, "getitem")

    def __call__(self, *args, **kwargs):
        return _call(_apply, (self, args, kwargs), {}, "call")


def _apply(f, args, kwargs):
    return f(*args, **kwargs)



def _binary(op, name, reflected=False):
    def method(self, other):
        args = (other, self) if reflected else (self, other)
        return _call(op, args, {}, name)

    method.__name__ = f"__{'r' if reflected else ''}{name}__"
    return method


for _opname, _op in [
    ("add", operator.add),
    ("sub", operator.sub),
    ("mul", operator.mul),
    ("truediv", operator.truediv),
    ("floordiv", operator.floordiv),
    ("mod", operator.mod),
    ("pow", operator.pow),
    ("matmul", operator.matmul),
]:
    setattr(Delayed, f"__{_opname}__", _binary(_op, _opname))
    setattr(Delayed, f"__r{_opname}__", _binary(_op, _opname, reflected=True))
for _opname, _op in [("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge)]:
    setattr(Delayed, f"__{_opname}__", _binary(_op, _opname))
Delayed.__neg__ = lambda self: _call(operator.neg, (self,), {}, "neg")
Delayed.__abs__ = lambda self: _call(operator.abs, (self,), {}, "abs")


def _call(f, args, kwargs, name):
    from .array import Array, _unknown_chunks
    from .frame import DataFrame

    def lift(obj):
        # An array or frame argument arrives whole (a NumPy array, a polars DataFrame), as
        # in dask: its blocks are joined by tasks the call depends on.
        if isinstance(obj, Array):
            if not obj.known:
                raise _unknown_chunks("passing an array to a delayed function")
            return Delayed(_partita.delayed_of_array(obj._rust))
        if isinstance(obj, DataFrame):
            return Delayed(_partita.delayed_of_frame(obj._rust))
        if type(obj) is list:
            return [lift(x) for x in obj]
        if type(obj) is tuple:
            return tuple(lift(x) for x in obj)
        if type(obj) is dict:
            return {k: lift(v) for k, v in obj.items()}
        return obj

    args = lift(tuple(args))
    kwargs = lift(dict(kwargs))
    deps = []
    args = _replace(tuple(args), deps, Delayed)
    kwargs = _replace(dict(kwargs), deps, Delayed)
    payload = _cloudpickle().dumps((f, args, kwargs))
    return Delayed(_partita.delayed_call(name, payload, [d._rust for d in deps]))


class DelayedFunction:
    """`pt.delayed(f)`: calling it makes a `Delayed` instead of running `f`."""

    def __init__(self, f, name=None):
        self._f = f
        self._name = name or _name(f)
        self.__doc__ = getattr(f, "__doc__", None)
        self.__name__ = self._name

    def __call__(self, *args, **kwargs):
        return _call(self._f, args, kwargs, self._name)

    def __repr__(self):
        return f"delayed({self._name})"


def delayed(obj=None, *, name=None):
    """Dask's `delayed`: `pt.delayed(f)(*args)` is a lazy call of `f` whose arguments may be
    other delayed values (also inside lists, tuples and dicts); `pt.delayed(obj)` wraps a
    plain value. Usable as a decorator, with or without `name=`."""
    if obj is None:
        return lambda f: delayed(f, name=name)
    if isinstance(obj, Delayed):
        return obj
    if callable(obj):
        return DelayedFunction(obj, name)
    return _call(_identity, (obj,), {}, name or "literal")

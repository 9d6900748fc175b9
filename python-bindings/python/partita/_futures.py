"""Futures on a cluster, Dask-style: `client.compute`, `client.submit`, `client.map`,
`client.gather`, `pt.as_completed`, `pt.wait`.

A Python function sent to the cluster travels as `cloudpickle.dumps((f, args, kwargs))`,
with every future among its arguments (at the top level, or inside lists, tuples and dicts)
replaced by a `Dep(i)` placeholder for the task's i-th input. Workers started by
`python -m partita worker` (as `pt.LocalCluster` starts them) run it with `run_call`.
"""

import hashlib
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


def _replace_futures(obj, deps):
    if isinstance(obj, Future):
        for i, d in enumerate(deps):
            if d is obj:
                return Dep(i)
        deps.append(obj)
        return Dep(len(deps) - 1)
    if type(obj) is list:
        return [_replace_futures(x, deps) for x in obj]
    if type(obj) is tuple:
        return tuple(_replace_futures(x, deps) for x in obj)
    if type(obj) is dict:
        return {k: _replace_futures(v, deps) for k, v in obj.items()}
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
    args = _replace_futures(list(args), deps)
    kwargs = _replace_futures(dict(kwargs), deps)
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
            f"compute takes partita arrays and dataframes, got {type(collection).__name__}"
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

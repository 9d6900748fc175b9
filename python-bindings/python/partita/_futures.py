"""Futures on a cluster, Dask-style (`client.compute`, `client.submit`, `client.map`,
`client.gather`, `pt.as_completed`, `pt.wait`) and `pt.delayed`.

A Python function sent to the cluster travels as a pickle of `(f, args, kwargs)`, with
every future among its arguments (at the top level, or inside lists, tuples and dicts)
replaced by a `Dep(i)` placeholder for the task's i-th input. When the function is
importable by name and the arguments are plain data (numbers, strings, bytes and
containers of them), plain `pickle` writes them instead, the function apart: its pickle,
made once per function, then a pickle of `(args, kwargs)` (see `_BY_NAME`); a worker
unpickles each such function once. Anything else goes through cloudpickle, so lambdas,
closures and notebook functions travel by value. Workers started by `python -m partita
worker` (as `pt.LocalCluster` starts them) run calls with `run_call`.
"""

import collections.abc
import hashlib
import numbers
import operator
import os
import pickle
import sys
import types
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


# A call whose function travels by name begins with these bytes, then the length of the
# function's pickle (4 bytes, little-endian), that pickle, and a pickle of `(args, kwargs)`.
# Pickles of protocol 2 and later begin with b"\x80", so the two kinds cannot be mistaken.
_BY_NAME = b"PTC\x01"

# Functions a worker has unpickled, by their pickle (a name to import: the same function).
_FUNCTIONS = {}


def run_call(payload, inputs):
    """On a worker: unpickle the function and its arguments, put the inputs in place and
    call."""
    if payload.startswith(_BY_NAME):
        end = 8 + int.from_bytes(payload[4:8], "little")
        name = payload[8:end]
        f = _FUNCTIONS.get(name)
        if f is None:
            f = pickle.loads(name)
            if len(_FUNCTIONS) >= 1024:
                _FUNCTIONS.clear()
            _FUNCTIONS[name] = f
        args, kwargs = pickle.loads(payload[end:])
    else:
        f, args, kwargs = pickle.loads(payload)
    if inputs:  # else there is no `Dep` to replace
        args, kwargs = _substitute(args, inputs), _substitute(kwargs, inputs)
    return f(*args, **kwargs)


# Values plain `pickle` writes in full, the same on every machine.
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})


class _Args:
    """What `_prepare` learns while it walks a call's arguments: the inputs found (each once)
    and whether everything else is plain data."""

    __slots__ = ("kind", "deps", "seen", "plain")

    def __init__(self, kind):
        self.kind = kind
        self.deps = []
        self.seen = {}
        self.plain = True


def _prepare(obj, found):
    """`obj` with every `found.kind` instance in it (at the top, or inside lists, tuples and
    dicts) replaced by a `Dep` for its place in `found.deps`. For delayed calls, arrays and
    frames become delayed values first (they arrive whole, as in dask)."""
    t = type(obj)
    if t in _PLAIN:
        return obj
    # An input of exactly the kind looked for (the common case) skips the other tests.
    if t is not found.kind:
        if t is list:
            return [_prepare(x, found) for x in obj]
        if t is tuple:
            return tuple(_prepare(x, found) for x in obj)
        if t is dict:
            if not all(type(k) in _PLAIN for k in obj):
                found.plain = False
            return {k: _prepare(v, found) for k, v in obj.items()}
        if found.kind is Delayed and not isinstance(obj, Delayed):
            obj = _lift(obj)
        if not isinstance(obj, found.kind):
            found.plain = False
            return obj
    i = found.seen.get(id(obj))
    if i is None:
        i = found.seen[id(obj)] = len(found.deps)
        found.deps.append(obj)
    return Dep(i)


_COLLECTIONS = None


def _lift(obj):
    """A partita array or frame as a delayed value of the whole; anything else unchanged."""
    global _COLLECTIONS
    if _COLLECTIONS is None:
        from .array import Array, _unknown_chunks
        from .frame import DataFrame

        _COLLECTIONS = (Array, DataFrame, _unknown_chunks)
    array, frame, unknown_chunks = _COLLECTIONS
    if isinstance(obj, array):
        if not obj.known:
            raise unknown_chunks("passing an array to a delayed function")
        return Delayed(_partita.delayed_of_array(obj._rust))
    if isinstance(obj, frame):
        return Delayed(_partita.delayed_of_frame(obj._rust))
    return obj


# What a call's payload begins with for a function plain `pickle` writes as a reference a
# worker can import (`_BY_NAME`, the pickle's length, the pickle), or False, by function.
_BY_REFERENCE = {}


def _reference(f):
    """The payload prefix naming `f` (see `_BY_NAME`), or False when `f` must travel by
    value."""
    try:
        known = _BY_REFERENCE.get(f)
    except TypeError:  # an unhashable callable
        return False
    if known is None:
        known = False
        module = getattr(f, "__module__", None)
        # Functions of an importable module (not `__main__`, not one registered with
        # cloudpickle to travel by value), and builtins of a module like `operator.add`;
        # wrappers (partials, bound methods, callable objects) may carry anything.
        plain_kind = isinstance(f, types.FunctionType) or (
            isinstance(f, types.BuiltinFunctionType) and isinstance(f.__self__, types.ModuleType)
        )
        # Modules registered to travel by value (none unless cloudpickle was imported).
        cp = sys.modules.get("cloudpickle.cloudpickle")
        by_value = getattr(cp, "_PICKLE_BY_VALUE_MODULES", ())
        parts = module.split(".") if isinstance(module, str) else []
        registered = any(".".join(parts[:i]) in by_value for i in range(1, len(parts) + 1))
        if plain_kind and parts and module != "__main__" and not registered:
            try:
                name = pickle.dumps(f, protocol=pickle.HIGHEST_PROTOCOL)
                known = _BY_NAME + len(name).to_bytes(4, "little") + name
            except Exception:
                pass
        if len(_BY_REFERENCE) >= 1024:
            _BY_REFERENCE.clear()
        _BY_REFERENCE[f] = known
    return known


def _dumps_call(f, args, kwargs, plain):
    """The payload of a call: the function's name and a plain pickle of the arguments when
    the function is importable and the arguments `plain` data (several times faster),
    cloudpickle otherwise (lambdas, closures, notebook functions and classes travel by
    value)."""
    if plain:
        prefix = _reference(f)
        if prefix:
            return prefix + pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    return _cloudpickle().dumps((f, args, kwargs))


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


def _workers(workers):
    """`workers=` as a list of addresses or hosts: one string, or any iterable of them."""
    if workers is None:
        return []
    if isinstance(workers, str):
        return [workers]
    try:
        workers = list(workers)
    except TypeError:
        workers = [workers]
    for w in workers:
        if not isinstance(w, str):
            raise TypeError(f"workers= takes worker addresses or hosts (strings), got {type(w).__name__}")
    return workers


_UPLOADS = None


def _install_upload(name, data, load):
    """On a worker: `client.upload_file`'s file, written atomically into this process's
    upload folder (on `sys.path`; an archive goes on it itself), then imported."""
    import atexit
    import importlib
    import importlib.util
    import shutil
    import tempfile

    global _UPLOADS
    if _UPLOADS is None:
        # In the worker's own folder, removed with it.
        local = _partita.worker_local_directory()
        if local is None:
            _UPLOADS = tempfile.mkdtemp(prefix=f"partita-uploads-{os.getpid()}-")
            atexit.register(shutil.rmtree, _UPLOADS, ignore_errors=True)
        else:
            _UPLOADS = os.path.join(local, "uploads")
            os.makedirs(_UPLOADS, exist_ok=True)
    path = os.path.join(_UPLOADS, name)
    part = path + ".part"
    with open(part, "wb") as f:
        f.write(data)
    os.replace(part, path)
    if name.endswith(".py"):
        # A new version within the same second and size would pass for the cached one.
        try:
            os.remove(importlib.util.cache_from_source(path))
        except OSError:
            pass
    entry = _UPLOADS if name.endswith(".py") else path
    if entry not in sys.path:
        sys.path.insert(0, entry)
    importlib.invalidate_caches()
    # Functions unpickled by name before may be the old version's.
    _FUNCTIONS.clear()
    if load and name.endswith(".py"):
        module = name[: -len(".py")]
        if module in sys.modules:
            importlib.reload(sys.modules[module])
        else:
            importlib.import_module(module)


def _resources(resources):
    """`resources=` as `{name: amount}` (None: none), as dask's `{"GPU": 1}`."""
    if resources is None:
        return None
    if not isinstance(resources, collections.abc.Mapping):
        raise TypeError(f"resources= takes a dict such as {{'GPU': 1}}, got {type(resources).__name__}")
    out = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            raise TypeError(f"resources= maps names (strings) to numbers, got {name!r}: {amount!r}")
        out[name] = float(amount)
    return out


def submit(
    client,
    f,
    *args,
    key=None,
    pure=True,
    retries=None,
    workers=None,
    allow_other_workers=False,
    resources=None,
    priority=0,
    **kwargs,
):
    if not callable(f):
        raise TypeError(f"submit takes a function first, got {type(f).__name__}")
    found = _Args(Future)
    args = tuple(_prepare(a, found) for a in args)
    kwargs = {k: _prepare(v, found) for k, v in kwargs.items()}
    payload = _dumps_call(f, args, kwargs, found.plain)
    deps = found.deps
    if key is None:
        if pure:
            # Same function and arguments, same key: the result is shared, like Dask.
            h = hashlib.sha256(payload)
            for d in deps:
                h.update(d.key.encode())
            key = f"{_name(f)}-{h.hexdigest()[:32]}"
        else:
            key = f"{_name(f)}-{uuid.uuid4().hex}"
    return client._submit_call(
        str(key), _name(f), payload, deps, retries, _workers(workers), allow_other_workers, _resources(resources), priority
    )


def _rust(collection):
    rust = getattr(collection, "_rust", None)
    if rust is None:
        raise TypeError(
            "compute takes partita arrays, dataframes and delayed values, got "
            f"{type(collection).__name__}"
        )
    return rust


_NO_DEFAULT = object()


class _DatasetPickler(pickle.Pickler):
    """Pickles a published object with its futures and persisted collections replaced by
    references to parts (`Client._publish_dataset` turns those into keys on the cluster)."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.parts = []

    def persistent_id(self, obj):
        from .array import Array
        from .frame import DataFrame

        if isinstance(obj, Future):
            part = obj
        elif isinstance(obj, (Array, DataFrame)):
            part = obj._rust
        elif isinstance(obj, Delayed):
            raise TypeError(
                "a delayed value is not published; compute it on the cluster "
                "(client.compute) and publish the future"
            )
        else:
            return None
        self.parts.append(part)
        return len(self.parts) - 1


class _DatasetUnpickler(pickle.Unpickler):
    def __init__(self, file, parts):
        super().__init__(file)
        self.parts = parts

    def persistent_load(self, pid):
        return _wrap_part(self.parts[pid])


def _wrap_part(part):
    from .array import Array
    from .frame import DataFrame

    if isinstance(part, _partita.RustArray):
        return Array(part)
    if isinstance(part, _partita.RustFrame):
        return DataFrame(part)
    return part


def _pickle_dataset(obj):
    import io

    buf = io.BytesIO()
    pickler = _DatasetPickler(buf)
    pickler.dump(obj)
    return buf.getvalue(), pickler.parts


def _unpickle_dataset(pickled, parts):
    import io

    if pickled is None:
        # Published from Rust: its one part.
        return _wrap_part(parts[0])
    return _DatasetUnpickler(io.BytesIO(pickled), parts).load()


class _Datasets(collections.abc.MutableMapping):
    """`client.datasets`: the published datasets as a mapping."""

    def __init__(self, client):
        self._client = client

    def __getitem__(self, name):
        return self._client.get_dataset(name)

    def __setitem__(self, name, value):
        self._client.publish_dataset(value, name=name)

    def __delitem__(self, name):
        if not self._client.unpublish_dataset(name):
            raise KeyError(f"no dataset named {name!r} is published")

    def __contains__(self, name):
        return name in self._client.list_datasets()

    def __iter__(self):
        return iter(self._client.list_datasets())

    def __len__(self):
        return len(self._client.list_datasets())

    def __repr__(self):
        return f"<Datasets: {list(self._client.list_datasets())}>"


class Client(_partita.Client):
    """A connection to a partita cluster: `pt.Client(cluster_file_or_local_cluster)`.

    Pass it as `scheduler=` to any compute, or use its futures: `compute`, `submit`, `map`,
    `scatter`, `gather`, `cancel`, `wait` (and `pt.as_completed`); `persist` keeps arrays and
    frames in the workers' memory. Inside a task on a worker, `pt.get_client()` gives one."""

    def __init__(self, address):
        _remember(self)

    def persist(self, collections, workers=None, allow_other_workers=False, resources=None, priority=0):
        """Compute an array or frame (or a list of them) now and keep the results in the
        workers' memory, as dask's `client.persist`: returns the same kind of collection (or
        a list), whose later graphs start from there; nothing is gathered here. The data
        stays on the cluster until the returned collection is dropped. `workers`,
        `allow_other_workers` and `resources` restrict where it is computed (and so kept),
        and `priority` orders it, as for `compute`."""
        target = self
        if workers is not None or resources is not None or priority:
            target = self._with_options(_workers(workers), allow_other_workers, _resources(resources), priority)

        def one(c):
            if not hasattr(c, "persist"):
                raise TypeError(f"cannot persist a {type(c).__name__}; arrays and frames persist")
            return c.persist(scheduler=target)

        if isinstance(collections, (list, tuple)):
            return [one(c) for c in collections]
        return one(collections)

    def compute(self, collections, retries=None, workers=None, allow_other_workers=False, resources=None, priority=0):
        """Start computing an array, frame or delayed value (or a list of them) and return at
        once with a `Future` (or a list of them); `future.result()` gives the NumPy array,
        frame or Python object. A task that raises is run again up to `retries` times
        (default: `client.retries`) before its error counts. `workers` (an address as
        `client.nthreads()` lists them, a host, or a list of those) restricts where the
        tasks run, as dask's: they wait for such a worker if none is connected, unless
        `allow_other_workers=True`. `resources` (`{"GPU": 1}`, as dask's) is what each
        task holds while it runs: only workers started offering that much
        (`--resources "GPU=2"`, `pt.LocalCluster(resources=...)`) run them, each as many
        at once as its offer covers; with none connected they wait for one. A higher
        `priority` (an int, 0 by default) starts its tasks before those of lower priority
        still waiting, as dask's (running tasks are not interrupted)."""
        rust = [_rust(c) for c in collections] if isinstance(collections, (list, tuple)) else [_rust(collections)]
        futures = self._compute(rust, retries, _workers(workers), allow_other_workers, _resources(resources), priority)
        return futures if isinstance(collections, (list, tuple)) else futures[0]

    def submit(
        self,
        func,
        *args,
        key=None,
        pure=True,
        retries=None,
        workers=None,
        allow_other_workers=False,
        resources=None,
        priority=0,
        **kwargs,
    ):
        """Run `func(*args, **kwargs)` on a worker; futures among the arguments are replaced
        by their values there. Needs workers started with `python -m partita worker`. If it
        raises, it is run again up to `retries` times (default: `client.retries`, 0 unless
        set) before the error counts. `workers`, `allow_other_workers` and `resources`
        restrict where it runs, and `priority` orders it, as for `compute`."""
        return submit(
            self,
            func,
            *args,
            key=key,
            pure=pure,
            retries=retries,
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            priority=priority,
            **kwargs,
        )

    def map(self, func, *iterables, **kwargs):
        """`submit(func, *items, **kwargs)` for the items of `iterables` taken together;
        the keywords (`pure`, `retries`, `workers`, `resources`, `priority`, ...) are
        `submit`'s and apply to every call."""
        if "key" in kwargs:
            raise TypeError("map takes no key=: each call gets its own")
        return [submit(self, func, *items, **kwargs) for items in zip(*iterables)]

    def scatter(self, data, broadcast=False, workers=None):
        """Put data held here on the cluster, as dask's `client.scatter`: a future for one
        object, a list (or tuple) of futures for a list (or tuple), a dict of futures for a
        dict. Each object goes straight to one worker (the one holding the least data),
        pickled as a submitted function's result is (a NumPy array's buffer out of band),
        never through the scheduler; pass the futures to `submit` and `map`, or `gather`
        them back. With `broadcast=True` every worker connected now gets a copy (tasks
        anywhere read it without fetching it). A scattered object cannot be recomputed: if
        the workers holding it die, its future errs saying so. Needs workers started with
        `python -m partita worker`. `workers` (an address, a host, or a list) puts the
        data only there (and broadcasts only to them)."""
        workers = _workers(workers)
        if isinstance(data, dict):
            futures = self._scatter(list(data.values()), broadcast, workers)
            return dict(zip(data.keys(), futures))
        if isinstance(data, (list, tuple)):
            return type(data)(self._scatter(list(data), broadcast, workers))
        return self._scatter([data], broadcast, workers)[0]

    def who_has(self, futures):
        """Where the data of a future (or a list of them) is now, as dask's
        `client.who_has`: `{key: [worker address, ...]}`, a key per chunk or partition of
        a computed collection; `[]` for a key still pending."""
        if isinstance(futures, Future):
            futures = [futures]
        return dict(self._who_has(list(futures)))

    def run(self, func, *args, **kwargs):
        """Call `func(*args, **kwargs)` on every worker now, outside any graph, as dask's
        `client.run`: `{worker address: result}`. For looking around (versions, process
        ids, memory) or preparing workers (loading a model, configuring logging). It runs
        beside the workers' tasks; nothing is kept. If it raises on a worker, the first
        such error is raised here. Arguments are plain data (futures are not resolved)."""
        if not callable(func):
            raise TypeError(f"run takes a function first, got {type(func).__name__}")
        found = _Args(Future)
        args = tuple(_prepare(a, found) for a in args)
        kwargs = {k: _prepare(v, found) for k, v in kwargs.items()}
        if found.deps:
            raise TypeError("client.run takes plain arguments; pass a future's result, not the future")
        return dict(self._run(_name(func), _dumps_call(func, args, kwargs, found.plain)))

    def get_task_stream(self):
        """Where and when the tasks the scheduler remembers (its last 100,000) ran, oldest
        first, as dask's `client.get_task_stream()`: a dict per run with `key`, `worker`
        (its address), `status` (`"OK"` or `"error"`), `nbytes` and `startstops`, a tuple
        of one `{"action": "compute", "start": ..., "stop": ...}` in Unix seconds. For what
        one block of code ran, use `with pt.get_task_stream(client) as ts:` and `ts.data`."""
        return _task_records(self._task_stream(0)[1])

    def upload_file(self, filename, load=True):
        """Send a local `.py`, `.zip`, `.egg` or `.whl` file to every worker connected now
        and put it on their import path, as dask's `client.upload_file`: functions from
        a module you are editing then run on the cluster by reference. A `.py` file is
        imported at once with `load=True` (reloaded if it was imported before, so an
        edited file takes effect); an error importing it on a worker is raised here. The
        files live in the worker's own folder, removed when it stops (short of a
        SIGKILL, as its spill files); a worker that joins (or restarts) later does not
        have them: upload again."""
        name = os.path.basename(os.fspath(filename))
        if not name.endswith((".py", ".zip", ".egg", ".whl")):
            raise ValueError(f"upload_file takes a .py, .zip, .egg or .whl file, got {name!r}")
        with open(filename, "rb") as f:
            data = f.read()
        self.run(_install_upload, name, data, load)

    def replicate(self, futures, n=None):
        """Copy the data of a future (or a list of them) to at least `n` workers, every
        worker by default, as dask's `client.replicate`: worker to worker, the workers
        holding the least data first; returns once the copies are made (after waiting for
        the futures). Tasks anywhere then read the data without fetching it, and it
        survives the death of all but one of its holders. Copies go when the future is
        released; none is removed here."""
        if isinstance(futures, Future):
            futures = [futures]
        self._replicate(list(futures), n)

    def rebalance(self, futures=None, workers=None):
        """Even out the memory the workers hold, as dask's `client.rebalance`: values move
        worker to worker from those holding more bytes than the mean to the emptiest
        holding less, each kept by its recipient before its sender drops it, as long as a
        move leaves the recipient at most at the mean (inputs of tasks running on the
        sender stay). `futures`: only their data (a future or a list; all data by
        default, after waiting for them); `workers`: only among the workers at these
        addresses or on these hosts (all by default). Returns `{"moved": values moved, "nbytes": bytes}`."""
        if isinstance(futures, Future):
            futures = [futures]
        return self._rebalance(None if futures is None else list(futures), _workers(workers))

    def publish_dataset(self, *args, name=None, override=False, **kwargs):
        """Publish data on the cluster under a name for any client to get, as dask's
        `client.publish_dataset`: `client.publish_dataset(df=frame)` or
        `client.publish_dataset(frame, name="df")`. The data stays on the workers after this
        client and its futures are gone, until `unpublish_dataset`. What is published is
        on the cluster already: futures, and arrays and frames persisted with a client of
        this cluster (`client.persist(x)`), alone or inside lists, dicts and other
        picklable objects (a lazy array or frame raises TypeError: persist it first).
        KeyError if a name is taken, unless `override=True`."""
        if args:
            if name is None:
                raise TypeError("publish_dataset(obj, name=...) needs the dataset's name")
            kwargs[name] = args[0] if len(args) == 1 else args
        elif name is not None:
            raise TypeError("name= names a positional object: publish_dataset(obj, name=...)")
        if not kwargs:
            raise TypeError("publish_dataset needs something to publish")
        if not override:
            taken = sorted(set(self.list_datasets()) & kwargs.keys())
            if taken:
                raise KeyError(f"dataset {taken[0]!r} is already published; override=True replaces it")
        for n, obj in kwargs.items():
            pickled, parts = _pickle_dataset(obj)
            self._publish_dataset(n, pickled, parts, override)

    def get_dataset(self, name, default=_NO_DEFAULT):
        """The data published under `name` (by any client), as it was published: its
        futures and persisted arrays and frames now belong to this client, and the data
        stays while they live, even if the dataset is unpublished. KeyError if nothing is
        published under that name, unless a `default` is given."""
        try:
            pickled, parts = self._get_dataset(name)
        except KeyError:
            if default is _NO_DEFAULT:
                raise
            return default
        return _unpickle_dataset(pickled, parts)

    @property
    def datasets(self):
        """The published datasets as a mapping (dask's `client.datasets`): `client.datasets
        ["df"]` gets, `client.datasets["df"] = x` publishes, `del client.datasets["df"]`
        unpublishes, `list(client.datasets)` lists."""
        return _Datasets(self)

    def nthreads(self):
        """`{worker address: threads}` for the workers connected now (dask's
        `client.nthreads()`)."""
        return dict(self.workers())

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


def _task_records(rows):
    return [
        {
            "key": key,
            "worker": worker,
            "status": "error" if erred else "OK",
            "nbytes": nbytes,
            "startstops": ({"action": "compute", "start": start, "stop": stop},),
        }
        for key, worker, start, stop, nbytes, erred in rows
    ]


class get_task_stream:
    """`with pt.get_task_stream(client) as ts:` ... then `ts.data`: the runs of tasks
    (records as `client.get_task_stream()` gives them) that the scheduler heard of while
    the block ran, as dask's `get_task_stream` context manager."""

    def __init__(self, client):
        self.client = client
        self.data = []
        self._since = None

    def __enter__(self):
        self._since = self.client._task_stream(2**64 - 1)[0]
        return self

    def __exit__(self, *exc):
        self.data.extend(_task_records(self.client._task_stream(self._since)[1]))
        return False


def fire_and_forget(obj):
    """Have the cluster run a future (or the futures in a list, tuple, set or dict's
    values, nested) to the end even once every reference to it is gone, as dask's
    `fire_and_forget`: for calls made for what they do (write a file, notify a service).
    Its value is released once computed, its error once it fails."""
    if isinstance(obj, Future):
        obj._fire_and_forget()
    elif isinstance(obj, dict):
        for v in obj.values():
            fire_and_forget(v)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            fire_and_forget(v)
    else:
        raise TypeError(f"fire_and_forget takes futures (or lists and dicts of them), got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------
# Tasks that submit tasks

# Clients made in this process, oldest first (weakly held): the last still open is what
# `get_client()` gives outside a worker, as dask's default client.
_clients = []


def _remember(client):
    import weakref

    _clients[:] = [r for r in _clients if r() is not None]
    _clients.append(weakref.ref(client))


def get_client():
    """The client to use here, as dask's `get_client`: inside a task running on a worker,
    a client of that worker's cluster (one connection per worker process, made at the
    first call), to submit more tasks, gather futures or publish datasets from the task;
    elsewhere the last `Client` made in this process that is still open. A task that then
    waits on what it submitted should `secede()` first (or use `with worker_client()`), or
    tasks waiting for their subtasks could hold every worker thread. ValueError when
    there is no client."""
    shared = _partita.worker_connection()
    if shared is not None:
        return Client(shared)
    for ref in reversed(_clients):
        client = ref()
        if client is not None and client._is_open():
            return client
    raise ValueError("no client found: make one with pt.Client(cluster_file_or_local_cluster)")


def secede():
    """Give this task's worker thread back while it waits (on futures of tasks it
    submitted, say), as dask's `secede`: the worker starts its next ready task, and the
    scheduler no longer counts this one as the worker's load. Resources the task holds
    stay held. Only in a task running on a worker."""
    _partita.secede()


def rejoin():
    """After `secede()`: block until the worker has a thread for this task again (ahead of
    tasks queued there), as dask's `rejoin`."""
    _partita.rejoin()


class worker_client:
    """`with pt.worker_client() as client:` inside a task on a worker, as dask's: the
    worker's client, with the task seceded for the block (its thread serves other tasks
    while this one waits on futures) and rejoined after it. `separate_thread=False`
    keeps the thread (for a block that only submits, never waits)."""

    def __init__(self, timeout=None, separate_thread=True):
        self._separate = separate_thread
        self._client = None

    def __enter__(self):
        if _partita.current_task() is None:
            raise ValueError("worker_client() works in a task running on a worker; elsewhere use pt.Client(...)")
        self._client = get_client()
        if self._separate:
            secede()
        return self._client

    def __exit__(self, *exc):
        if self._separate:
            rejoin()
        return False


def current_task():
    """The key of the task running on this thread, when it runs on a worker (dask's
    `get_worker().get_current_task()`), else None."""
    return _partita.current_task()


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
    # The common `f(1, "a")`: plain arguments only, nothing to look for inside them.
    if not kwargs and _PLAIN.issuperset(map(type, args)):
        return Delayed(_partita.delayed_call(name, _dumps_call(f, args, {}, True), []))
    found = _Args(Delayed)
    args = tuple(_prepare(a, found) for a in args)
    kwargs = {k: _prepare(v, found) for k, v in kwargs.items()} if kwargs else {}
    payload = _dumps_call(f, args, kwargs, found.plain)
    return Delayed(_partita.delayed_call(name, payload, [d._rust for d in found.deps]))


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

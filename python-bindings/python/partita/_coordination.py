"""Dask's coordination primitives on a partita cluster: `Event`, `Lock`, `Semaphore`,
`Variable` and `Queue`.

Each is a name the scheduler keeps an object under, shared by every client of the
cluster, and so by tasks (inside a task, the default client is the worker's own, from
`pt.get_client()`). A handle sends nothing until used, pickles as its name, and finds its
client when used: the one given, else `pt.get_client()`. Waits are answered by the
scheduler, can be given a timeout, and stop on Ctrl-C. Leases of a lock or semaphore
belong to the client's connection, and are given back if it closes or its process dies.
Values of variables and queues are pickled as published datasets are: futures and
persisted arrays and frames inside them stay on the cluster, held while the variable or
queue holds them, and come back as futures (or collections) of the getter's client.
"""

import uuid

from ._futures import _pickle_dataset, _unpickle_dataset, get_client


class _Named:
    def __init__(self, name, client):
        self.name = name if name is not None else uuid.uuid4().hex
        self._client = client

    @property
    def client(self):
        return self._client if self._client is not None else get_client()

    def __repr__(self):
        return f"<{type(self).__name__}: {self.name}>"


class Event(_Named):
    """A named flag (dask's `distributed.Event`): `set()`, `clear()`, `is_set()`, and
    `wait(timeout=None)` returning whether it was set before the timeout."""

    def __init__(self, name=None, client=None):
        super().__init__(name, client)

    def set(self):
        self.client._event(self.name, "set")

    def clear(self):
        self.client._event(self.name, "clear")

    def is_set(self):
        return self.client._event(self.name, "is_set")

    def wait(self, timeout=None):
        return self.client._event(self.name, "wait", timeout)

    def __reduce__(self):
        return (Event, (self.name,))


class Semaphore(_Named):
    """At most `max_leases` holders at once, across the cluster (dask's
    `distributed.Semaphore`): `acquire(timeout=None)` returns whether a lease was taken,
    `release()` gives one back, `get_value()` counts those held; a `with` block holds one.
    The first process to acquire it sets `max_leases`; another number is then an error.
    A lease belongs to the handle that took it; one a task took and did not release is
    given back when the task ends, and any is when its client's connection closes."""

    def __init__(self, max_leases=1, name=None, client=None):
        if not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive int, got {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        # Leases this handle took, last taken last: only it releases them.
        self._leases = []

    def acquire(self, timeout=None):
        lease = self.client._acquire(self.name, self.max_leases, timeout)
        if lease is None:
            return False
        self._leases.append(lease)
        return True

    def release(self):
        """Give back the lease this handle took last (RuntimeError if it holds none)."""
        if not self._leases:
            raise RuntimeError(f"semaphore {self.name!r} released more often than this handle acquired it")
        self.client._release(self.name, self._leases.pop())
        return True

    def get_value(self):
        return self.client._leases(self.name)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __reduce__(self):
        return (Semaphore, (self.max_leases, self.name))


class Lock(Semaphore):
    """A named lock across the cluster (dask's `distributed.Lock`): `acquire(blocking=True,
    timeout=None)` returns whether it was taken, `release()`, `locked()`; a `with` block
    holds it. Not reentrant."""

    def __init__(self, name=None, client=None):
        super().__init__(1, name, client)

    def acquire(self, blocking=True, timeout=None):
        if not blocking:
            if timeout is not None:
                raise ValueError("a non-blocking acquire takes no timeout")
            timeout = 0
        return super().acquire(timeout)

    def release(self):
        """Release it (ValueError unless this handle holds it)."""
        if not self._leases:
            raise ValueError(f"lock {self.name!r} is not held by this handle")
        return super().release()

    def locked(self):
        return self.get_value() > 0

    def __reduce__(self):
        return (Lock, (self.name,))


class Variable(_Named):
    """A named value shared across the cluster (dask's `distributed.Variable`):
    `set(value)`, `get(timeout=None)` (waits for a first value; TimeoutError after
    `timeout` seconds), `delete()`. Futures and persisted collections in the value stay on
    the cluster while the variable holds them."""

    def __init__(self, name=None, client=None):
        super().__init__(name, client)

    def set(self, value):
        pickled, parts = _pickle_dataset(value)
        self.client._put_item(self.name, False, pickled, parts)

    def get(self, timeout=None):
        got = self.client._get_item(self.name, False, timeout)
        if got is None:
            raise TimeoutError(f"variable {self.name!r} got no value within {timeout} s")
        return _unpickle_dataset(*got)

    def delete(self):
        self.client._delete_variable(self.name)

    def __reduce__(self):
        return (Variable, (self.name,))


class Queue(_Named):
    """A named first-in first-out queue across the cluster (dask's `distributed.Queue`):
    `put(value, timeout=None)` (with `maxsize`, waits while the queue holds that many
    items; TimeoutError after `timeout` seconds, nothing put), `get(timeout=None,
    batch=False)` (waits for an item; TimeoutError after `timeout` seconds; `batch=True`
    takes everything there now, an int that many, waiting for each), `qsize()`. Each item
    goes to one getter. The first put with a `maxsize` (> 0) bounds the queue while it
    exists; a put with another is refused."""

    def __init__(self, name=None, client=None, maxsize=0):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise ValueError(f"maxsize must be an int, got {maxsize!r}")
        super().__init__(name, client)
        self.maxsize = max(maxsize, 0)

    def put(self, value, timeout=None):
        pickled, parts = _pickle_dataset(value)
        if not self.client._put_item(self.name, True, pickled, parts, self.maxsize, timeout):
            raise TimeoutError(f"queue {self.name!r} had no room within {timeout} s")

    def get(self, timeout=None, batch=False):
        client = self.client
        if batch is False:
            got = client._get_item(self.name, True, timeout)
            if got is None:
                raise TimeoutError(f"queue {self.name!r} got no item within {timeout} s")
            return _unpickle_dataset(*got)
        if batch is True:
            out = []
            for _ in range(client._queue_size(self.name)):
                got = client._get_item(self.name, True, 0)
                if got is None:
                    break
                out.append(_unpickle_dataset(*got))
            return out
        if not isinstance(batch, int) or batch < 0:
            raise ValueError(f"batch must be True, False or a count, got {batch!r}")
        return [self.get(timeout) for _ in range(batch)]

    def qsize(self):
        return self.client._queue_size(self.name)

    def __reduce__(self):
        return (Queue, (self.name, None, self.maxsize))


class Pub(_Named):
    """Publishes to a named topic (dask's `distributed.Pub`): `put(value)` sends a message
    to every subscription of the topic at that moment (none: dropped). Messages are plain
    values (no futures or persisted collections: a Queue or Variable carries those)."""

    def __init__(self, name, client=None):
        super().__init__(name, client)

    def put(self, value):
        pickled, parts = _pickle_dataset(value)
        self.client._publish(self.name, pickled, parts)

    def __reduce__(self):
        return (Pub, (self.name,))


class Sub(_Named):
    """A subscription to a named topic (dask's `distributed.Sub`), from its creation on:
    `get(timeout=None)` takes the next message (TimeoutError after `timeout` seconds), and
    iterating yields messages as they come. It ends with `close()` (or when collected);
    pickled into a task, it subscribes afresh there."""

    def __init__(self, name, client=None):
        super().__init__(name, client)
        self._subscription = self.client._subscribe(name)

    def get(self, timeout=None):
        got = self._subscription.get(timeout)
        if got is None:
            raise TimeoutError(f"topic {self.name!r} sent no message within {timeout} s")
        return _unpickle_dataset(*got)

    def __iter__(self):
        while True:
            yield self.get()

    def close(self):
        self._subscription.close()

    def __reduce__(self):
        return (Sub, (self.name,))

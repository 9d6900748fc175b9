"""pt.delayed: lazy Python calls, checked against the same calls run directly, on the sync
and threads schedulers and on a LocalCluster (the calls travel with cloudpickle)."""

import _thread
import sys
import threading
import time

import cloudpickle
import numpy as np
import polars as pl
import pytest

import partita as pt

cloudpickle.register_pickle_by_value(sys.modules[__name__])

from udfs import add, inc, nap  # noqa: E402


def test_a_delayed_graph_matches_running_it_directly(scheduler):
    xs = [pt.delayed(inc)(i) for i in range(6)]
    total = pt.delayed(sum)(xs)
    both = pt.delayed(add)(total, pt.delayed(10))
    assert both.compute(scheduler=scheduler) == sum(i + 1 for i in range(6)) + 10
    # Operators, item access and keyword arguments make delayed values too.
    d = pt.delayed(dict)(a=xs[0], b=[xs[1], xs[2]])
    expr = (d["a"] + d["b"][1]) * 2 - 1
    assert expr.compute(scheduler=scheduler) == (1 + 3) * 2 - 1
    # Several at once, with arrays and frames, in one run.
    arr = pt.ones((4, 4), chunks=2)
    frame = pt.from_polars(pl.DataFrame({"x": [1, 2, 3]}), npartitions=2)
    a, f, t = pt.compute(arr.sum(), frame, total, scheduler=scheduler)
    assert a == 16.0 and f["x"].to_list() == [1, 2, 3] and t == 21


def test_delayed_values_hold_numpy_and_polars_objects(scheduler):
    x = np.arange(12.0).reshape(3, 4)
    m = pt.delayed(np.asarray)(x.tolist())
    s = pt.delayed(np.sum)(m, axis=0)
    np.testing.assert_allclose(s.compute(scheduler=scheduler), x.sum(axis=0))
    df = pt.delayed(pl.DataFrame)({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]})
    grouped = pt.delayed(lambda d: d.group_by("k").agg(pl.col("v").sum()).sort("k"))(df)
    expected = pl.DataFrame({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]}).group_by("k").agg(pl.col("v").sum()).sort("k")
    assert grouped.compute(scheduler=scheduler).equals(expected)


def test_a_failing_delayed_call_names_its_task(scheduler):
    @pt.delayed
    def fails(x):
        raise ZeroDivisionError(f"no inverse of {x}")

    out = pt.delayed(inc)(fails(0))
    with pytest.raises(pt.ComputeError, match="no inverse of 0") as info:
        out.compute(scheduler=scheduler)
    assert "fails" in str(info.value)


def test_arrays_and_frames_arrive_whole_in_delayed_calls(scheduler):
    # As in dask: a delayed function given a collection receives it computed, whole.
    x = np.arange(24.0).reshape(4, 6)
    a = pt.from_numpy(x, chunks=(3, 4))
    df = pl.DataFrame({"k": [1, 2, 1, 3, 2], "v": [1.0, 2.0, 3.0, 4.0, 5.0]})
    f = pt.from_polars(df, npartitions=3)

    def describe(arr, frame, extra):
        return (type(arr).__name__, arr.shape, float(arr.sum()), type(frame).__name__, frame.height, extra["n"].shape)

    out = pt.delayed(describe)(a * 2, f.filter(pl.col("v") > 1), {"n": [a.T][0]})
    assert out.compute(scheduler=scheduler) == ("ndarray", (4, 6), float((x * 2).sum()), "DataFrame", 4, (6, 4))
    # Mixed with other delayed values and scalars; a 0-d array arrives as a 0-d ndarray.
    total = pt.delayed(lambda s, m, k: float(s) + float(m.sum()) + k)(a.sum(), a, 1)
    assert total.compute(scheduler=scheduler) == float(x.sum()) * 2 + 1
    grouped = pt.delayed(lambda d: d.group_by("k").agg(pl.col("v").sum()).sort("k"))(f)
    assert grouped.compute(scheduler=scheduler).equals(df.group_by("k").agg(pl.col("v").sum()).sort("k"))


def test_delayed_refuses_what_it_cannot_do():
    d = pt.delayed(inc)(1)
    with pytest.raises(TypeError, match="truth"):
        bool(d)
    a = pt.ones((4,), chunks=2)
    with pytest.raises(pt.ShapeError, match="compute_chunk_sizes"):
        pt.delayed(inc)(a[a > 0])
    assert repr(pt.delayed(inc)) == "delayed(inc)"
    assert pt.delayed(name="plus")(add)(1, 2).key.startswith("plus")


def test_client_compute_of_delayed_values(cluster_client):
    total = pt.delayed(sum)([pt.delayed(inc)(i) for i in range(4)])
    future = cluster_client.compute(total)
    assert future.result(timeout=60) == 10
    assert cluster_client.submit(inc, future).result(timeout=60) == 11


def test_ctrl_c_cancels_a_running_compute(scheduler):
    naps = [pt.delayed(nap)(i) for i in range(400)]  # 10 s of work on two threads
    total = pt.delayed(sum)(naps)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        total.compute(scheduler=scheduler)
    assert time.monotonic() - start < 8
    # the scheduler is usable afterwards
    assert pt.delayed(add)(1, 2).compute(scheduler=scheduler) == 3


class Point:
    """Defined here, so a worker gets it only by value (this module travels by value)."""

    def __init__(self, x, y):
        self.x, self.y = x, y


def test_calls_travel_by_plain_pickle_only_when_a_worker_can_load_them(scheduler):
    import functools
    import math
    import operator

    from partita import _futures

    by_ref = _futures._reference
    assert by_ref(math.sqrt) and by_ref(operator.add) and by_ref(sum)
    assert not by_ref(lambda x: x)
    assert not by_ref(functools.partial(math.sqrt))
    assert not by_ref(inc)  # its module is registered with cloudpickle to travel by value

    def local(x):
        return x

    local.__module__ = "__main__"
    assert not by_ref(local)
    # An importable function with an argument of a class the worker cannot import: the
    # call must go through cloudpickle, which sends the class by value.
    got = pt.delayed(getattr)(Point(3, 4), "y")
    assert got.compute(scheduler=scheduler) == 4
    # Plain arguments through plain pickle, nested and repeated inputs included.
    x = pt.delayed(inc)(1)
    out = pt.delayed(operator.add)(pt.delayed(math.hypot)(3.0, 4.0), pt.delayed(sum)([x, x, 1]))
    assert out.compute(scheduler=scheduler) == 5.0 + 5
    # By name: the function's own pickle (made once), then the arguments'; a worker runs
    # either kind of payload, and the same call always makes the same bytes (pure keys).
    payload = _futures._dumps_call(math.hypot, (3.0, 4.0), {}, True)
    assert payload.startswith(_futures._BY_NAME)
    assert payload == _futures._dumps_call(math.hypot, (3.0, 4.0), {}, True)
    assert _futures.run_call(payload, []) == 5.0
    assert _futures.run_call(payload, []) == 5.0  # the function unpickled once, kept
    by_value = _futures._dumps_call(lambda a, b: a - b, (_futures.Dep(0), 1), {}, True)
    assert not by_value.startswith(_futures._BY_NAME)
    assert _futures.run_call(by_value, [10]) == 9


THIS_MODULE = __name__
THREAD_LOCAL = threading.local()


def test_python_tasks_keep_their_thread_state_between_calls(scheduler):
    # Tasks running on the same thread see the same `threading.local`, as in plain Python
    # threads (and Dask's): the thread keeps one Python thread state for all of them.
    if scheduler not in ("sync", "threads"):
        pytest.skip("a worker process's threads are not visible here")
    def count(i):
        # Looked up when called: a `threading.local` cannot be pickled with the call.
        local = sys.modules[THIS_MODULE].THREAD_LOCAL
        local.n = getattr(local, "n", 0) + 1
        return threading.get_ident(), local.n

    calls = pt.compute(*[pt.delayed(count)(i) for i in range(64)], scheduler=scheduler)
    by_thread = {}
    for ident, n in calls:
        by_thread.setdefault(ident, []).append(n)
    for ns in by_thread.values():
        assert sorted(ns) == list(range(1, len(ns) + 1))

"""Futures on a LocalCluster: client.compute / submit / map / gather / cancel, as_completed
and wait; Python functions (cloudpickled) running on workers started by `python -m partita`.
Results are checked against NumPy, polars and plain Python run directly."""

import _thread
import sys
import threading
import time

import cloudpickle
import numpy as np
import polars as pl
import pytest

import partita as pt

# Workers cannot import this test module: send its functions by value (functions defined in
# a notebook or script, `__main__`, travel by value anyway).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

from udfs import add, inc  # noqa: E402


def test_compute_returns_futures_whose_results_match_numpy_and_polars(cluster_client):
    x = np.random.default_rng(5).normal(size=(90, 60))
    a = pt.from_numpy(x, chunks=(30, 20))
    future = cluster_client.compute((a * 2).sum(axis=1))
    assert isinstance(future, pt.Future)
    np.testing.assert_allclose(future.result(timeout=60), (x * 2).sum(axis=1))
    assert future.status == "finished" and future.done()
    frame = pl.DataFrame({"k": [1, 2, 1, 3], "v": [1.0, 2.0, 3.0, 4.0]})
    df = pt.from_polars(frame, npartitions=2)
    futures = cluster_client.compute([df.filter(pl.col("v") > 1.5), a.T])
    got_frame, got_t = cluster_client.gather(futures)
    assert got_frame.equals(frame.filter(pl.col("v") > 1.5))
    np.testing.assert_array_equal(got_t, x.T)
    assert "partita.Future" in repr(futures[0])


def test_submit_and_map_run_python_functions_on_the_workers(cluster_client):
    future = cluster_client.submit(inc, 41)
    assert future.result(timeout=60) == 42
    # Futures as arguments become their values on the worker; lambdas travel too.
    total = cluster_client.submit(lambda xs, y=0: sum(xs) + y, [cluster_client.submit(inc, i) for i in range(5)], y=future)
    assert total.result(timeout=60) == sum(i + 1 for i in range(5)) + 42
    squares = cluster_client.map(lambda v: v * v, range(10))
    assert cluster_client.gather(squares) == [v * v for v in range(10)]
    pairs = cluster_client.map(add, [1, 2, 3], [10, 20, 30])
    assert cluster_client.gather(pairs) == [11, 22, 33]
    # The same function and arguments share one key (pure, like Dask).
    assert cluster_client.submit(inc, 41).key == future.key
    # NumPy arrays are results too, and travel between tasks.
    arr = cluster_client.submit(np.arange, 6)
    assert cluster_client.submit(np.sum, arr).result(timeout=60) == 15


def make_arrays(seed):
    rng = np.random.default_rng(seed)
    return {
        "c": rng.normal(size=(300, 200)),
        "f": np.asfortranarray(rng.normal(size=(50, 70))),
        "odd": np.arange(13, dtype=np.uint8),  # a length that needs padding
        "strided": rng.normal(size=(40, 40))[::2, ::3],  # not contiguous: pickled in band
        "rec": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
        "empty": np.zeros((0, 3)),
        "scalar": 7,
    }


def both_with_flags(a, b):
    return a, b, a["c"].flags.writeable and b["c"].flags.writeable


def test_numpy_results_travel_intact_and_writable(cluster_client):
    # Two results made on (most likely) different workers, read by one task, then gathered:
    # their arrays go out of band (pickle protocol 5) and arrive equal, with their dtype and
    # memory order, and writable like the arrays the task returned.
    fa, fb = cluster_client.submit(make_arrays, 1), cluster_client.submit(make_arrays, 2)
    got_a, got_b, writable = cluster_client.submit(both_with_flags, fa, fb).result(timeout=60)
    assert writable
    for got, seed in ((got_a, 1), (got_b, 2), (fa.result(timeout=60), 1)):
        want = make_arrays(seed)
        assert got.keys() == want.keys()
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(got[k], v)
                assert got[k].dtype == v.dtype, k
                assert got[k].flags.f_contiguous == v.flags.f_contiguous, k
                assert got[k].flags.writeable, k
            else:
                assert got[k] == v
    big = cluster_client.submit(np.arange, 3_000_001, dtype=np.int64)
    assert cluster_client.submit(np.sum, big).result(timeout=60) == 3_000_000 * 3_000_001 // 2


def test_scatter_puts_local_data_on_the_workers_for_submitted_functions(cluster_client):
    def in_memory():
        return cluster_client.scheduler_info()["tasks"]["memory"]

    before = in_memory()
    x = np.random.default_rng(3).normal(size=(500, 400))
    frame = pl.DataFrame({"k": [1, 2, 1], "v": [0.5, 1.5, 2.5]})
    fx = cluster_client.scatter(x)
    assert isinstance(fx, pt.Future) and fx.key.startswith("scatter-")
    np.testing.assert_array_equal(fx.result(timeout=60), x)
    # Tasks read scattered data where it lies, as with dask.
    assert cluster_client.submit(np.sum, fx).result(timeout=60) == pytest.approx(x.sum())
    col_means = cluster_client.submit(lambda a, f: (a.mean(axis=0), f["v"].sum()), fx, cluster_client.scatter(frame))
    got_means, got_v = col_means.result(timeout=60)
    np.testing.assert_allclose(got_means, x.mean(axis=0))
    assert got_v == frame["v"].sum()
    # Lists, tuples and dicts give futures in the same shape; objects go to both workers.
    listed = cluster_client.scatter([1, "two", {"three": 3}])
    assert isinstance(listed, list)
    assert cluster_client.gather(listed) == [1, "two", {"three": 3}]
    tupled = cluster_client.scatter((4, 5))
    assert isinstance(tupled, tuple) and cluster_client.gather(list(tupled)) == [4, 5]
    named = cluster_client.scatter({"a": 10, "b": 20})
    assert set(named) == {"a", "b"}
    assert cluster_client.submit(add, named["a"], named["b"]).result(timeout=60) == 30
    held = [w["held"] for w in cluster_client.scheduler_info()["workers"].values()]
    assert len(held) == 2 and min(held) >= 1, held
    # Where each lies, as dask's who_has says it.
    workers = cluster_client.nthreads()
    assert len(workers) == 2 and all(n >= 1 for n in workers.values()), workers
    where = cluster_client.who_has(listed + [fx])
    assert set(where) == {f.key for f in listed + [fx]}
    assert all(len(holders) >= 1 and set(holders) <= set(workers) for holders in where.values()), where
    assert list(cluster_client.who_has(fx)) == [fx.key]
    assert cluster_client.scatter([]) == []
    # Broadcast: a copy on every worker.
    table = cluster_client.scatter({"lookup": np.arange(1000)}, broadcast=True)["lookup"]
    deadline = time.monotonic() + 30
    while len(cluster_client.who_has(table)[table.key]) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(cluster_client.who_has(table)[table.key]) == sorted(workers)
    hits = cluster_client.map(lambda t, i: int(t[i]), [table] * 4, range(4))
    assert cluster_client.gather(hits) == [0, 1, 2, 3]
    del table, hits
    # What cannot be pickled is an error naming why, and nothing stays behind.
    with pytest.raises(Exception, match="cannot pickle"):
        cluster_client.scatter([2, threading.Lock()])
    # Dropping the futures frees the data on the workers.
    del fx, col_means, listed, tupled, named
    deadline = time.monotonic() + 30
    while in_memory() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_memory() == before


def test_a_failing_python_function_raises_its_error_naming_the_task(cluster_client):
    def boom(x):
        raise ValueError(f"bad value {x}")

    future = cluster_client.submit(boom, 7)
    with pytest.raises(pt.ComputeError, match="bad value 7") as info:
        future.result(timeout=60)
    assert "boom" in str(info.value)
    assert future.status == "error"
    # Its dependents fail with the same error; the client goes on.
    after = cluster_client.submit(inc, future)
    with pytest.raises(pt.ComputeError, match="bad value 7"):
        after.result(timeout=60)
    assert cluster_client.submit(inc, 1).result(timeout=60) == 2


def flaky(directory, failures):
    """Raises on its first `failures` calls (counted with files, whichever worker runs it)."""
    import os

    runs = len(os.listdir(directory))
    open(os.path.join(directory, f"run-{runs}"), "w").close()
    if runs < failures:
        raise RuntimeError(f"run {runs} fails on purpose")
    return runs


def test_failing_functions_are_retried_when_asked(cluster_client, tmp_path):
    def fresh(name):
        d = tmp_path / name
        d.mkdir()
        return str(d)

    # Not by default: the first error counts, after one run.
    d = fresh("once")
    with pytest.raises(pt.ComputeError, match="run 0 fails"):
        cluster_client.submit(flaky, d, 1).result(timeout=60)
    assert len(list((tmp_path / "once").iterdir())) == 1
    # Per call, as Dask's `retries=`; too few retries still fail, naming the task.
    assert cluster_client.submit(flaky, fresh("thrice"), 2, retries=2).result(timeout=60) == 2
    with pytest.raises(pt.ComputeError, match="run 1 fails") as info:
        cluster_client.submit(flaky, fresh("twice"), 2, retries=1).result(timeout=60)
    assert "flaky" in str(info.value)
    assert cluster_client.gather(cluster_client.map(flaky, [fresh("m0"), fresh("m1")], [1, 1], retries=1)) == [1, 1]
    # Per compute: every task of the graph; not asked, the delayed call fails once.
    d = fresh("computed")
    with pytest.raises(pt.ComputeError, match="run 0 fails"):
        cluster_client.compute(pt.delayed(flaky)(d, 1)).result(timeout=60)
    assert cluster_client.compute(pt.delayed(flaky)(d, 2) + 10, retries=1).result(timeout=60) == 12
    with pytest.raises(OverflowError):
        cluster_client.compute(pt.delayed(flaky)(d, 0), retries=-1)
    with pytest.raises(TypeError):
        cluster_client.compute(pt.delayed(flaky)(d, 0), retries="twice")
    # For everything the client sends, delayed graphs included.
    assert cluster_client.retries == 0
    cluster_client.retries = 3
    try:
        d = fresh("delayed")
        assert pt.compute(pt.delayed(flaky)(d, 3), scheduler=cluster_client)[0] == 3
    finally:
        cluster_client.retries = 0
    with pytest.raises(OverflowError):
        cluster_client.retries = -1


def test_as_completed_and_wait(cluster_client):
    slow = cluster_client.submit(time.sleep, 1.5, pure=False)
    fast = cluster_client.submit(inc, 100)
    order = [f.key for f in pt.as_completed([slow, fast])]
    assert order == [fast.key, slow.key]
    pt.wait([slow, fast], timeout=30)
    assert slow.done() and fast.done()
    sleeper = cluster_client.submit(time.sleep, 2, pure=False)
    with pytest.raises(TimeoutError):
        pt.wait(sleeper, timeout=0.1)
    cluster_client.cancel(sleeper)
    sleeper.wait(timeout=30)
    assert sleeper.status == "cancelled"
    with pytest.raises(pt.PartitaError):
        sleeper.result(timeout=30)


def interrupt_after(seconds):
    """Deliver a Ctrl-C (KeyboardInterrupt) to the main thread after `seconds`."""
    timer = threading.Timer(seconds, _thread.interrupt_main)
    timer.start()
    return timer


def test_ctrl_c_stops_waiting_on_as_completed_and_wait(cluster_client):
    sleeper = cluster_client.submit(time.sleep, 60, pure=False)
    for waiting in (lambda: list(pt.as_completed([sleeper])), lambda: pt.wait([sleeper])):
        start = time.monotonic()
        interrupt_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            waiting()
        assert time.monotonic() - start < 10  # not the 60 s the task takes
    cluster_client.cancel(sleeper)
    sleeper.wait(timeout=30)
    assert sleeper.status == "cancelled"
    # the client is still usable
    assert cluster_client.submit(inc, 1).result(timeout=30) == 2


def test_submit_checks_its_arguments(cluster_client):
    with pytest.raises(TypeError, match="function"):
        cluster_client.submit(3)
    a = pt.ones((4,), chunks=2)
    with pytest.raises(TypeError, match="only futures of client.submit"):
        cluster_client.submit(inc, cluster_client.compute(a))
    with pytest.raises(TypeError, match="partita arrays"):
        cluster_client.compute(np.ones(3))


def test_run_calls_a_function_in_every_worker_process(cluster_client):
    import os

    pids = cluster_client.run(os.getpid)
    assert set(pids) == set(cluster_client.nthreads())
    assert len(set(pids.values())) == len(pids) == 2 and os.getpid() not in pids.values()
    assert set(cluster_client.run(lambda x, y=0: x + y, 40, y=2).values()) == {42}
    x = np.arange(6.0)
    assert list(cluster_client.run(np.sum, x).values()) == [x.sum(), x.sum()]

    def boom(text):
        raise ValueError(text)

    with pytest.raises(pt.ComputeError, match="bad 7"):
        cluster_client.run(boom, "bad 7")
    with pytest.raises(TypeError, match="plain arguments"):
        cluster_client.run(np.sum, cluster_client.scatter(x))
    # Nothing stays behind, and the client goes on.
    assert cluster_client.submit(inc, 1).result(timeout=60) == 2


def test_exception_cancelled_and_done_callbacks_as_in_dask(cluster_client, monkeypatch):
    import os
    import queue

    def boom(x):
        raise ValueError(f"bad value {x}")

    client = cluster_client
    ok = client.submit(inc, 2)
    failing = client.submit(boom, 5)
    assert ok.exception(timeout=60) is None
    error = failing.exception(timeout=60)
    assert isinstance(error, pt.ComputeError) and "bad value 5" in str(error)
    assert not ok.cancelled() and not failing.cancelled()
    seen = queue.Queue()
    # Already done: called at once (on partita's callback thread), with the future.
    ok.add_done_callback(lambda f: seen.put((f.key, f.status, threading.current_thread() is threading.main_thread())))
    assert seen.get(timeout=10) == (ok.key, "finished", False)
    # Called when it finishes, not before.
    slow = client.submit(time.sleep, 0.3, pure=False)
    slow.add_done_callback(lambda f: seen.put((f.key, f.status)))
    assert seen.empty()
    assert seen.get(timeout=60) == (slow.key, "finished")
    # Cancelled: done too; exception() says so without raising.
    waiting = client.submit(os.getpid, workers="10.255.255.1:9", pure=False)
    waiting.add_done_callback(lambda f: seen.put((f.key, f.cancelled())))
    waiting.cancel()
    assert seen.get(timeout=30) == (waiting.key, True)
    assert isinstance(waiting.exception(timeout=10), pt.CancelledError)
    # A callback that raises is reported as unraisable, never raised into the client.
    reported = queue.Queue()
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.put(u.exc_type))
    ok.add_done_callback(lambda f: 1 / 0)
    assert reported.get(timeout=10) is ZeroDivisionError
    with pytest.raises(TypeError, match="function"):
        ok.add_done_callback(3)
    with pytest.raises(TimeoutError):
        client.submit(time.sleep, 1, pure=False).exception(timeout=0.05)
    assert client.submit(inc, 1).result(timeout=60) == 2


def test_fire_and_forget_runs_a_dropped_call_to_the_end_then_frees_it(cluster_client, tmp_path):
    client = cluster_client

    def known():
        return sum(client.scheduler_info()["tasks"].values())

    def write(_, path, text):
        import os

        with open(path + ".part", "w") as f:
            f.write(text)
        os.replace(path + ".part", path)
        return len(text)

    before = known()
    target = tmp_path / "written.txt"
    # It waits for a slow input: nothing of it has started when both futures are dropped
    # (without fire_and_forget both would be cancelled and nothing written).
    slow = client.submit(time.sleep, 0.5, pure=False)
    future = client.submit(write, slow, str(target), "hello", pure=False)
    pt.fire_and_forget({"calls": [future]})
    del future, slow
    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert target.read_text() == "hello"
    # Done, it is released: the scheduler forgets it.
    while known() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert known() == before
    with pytest.raises(TypeError, match="futures"):
        pt.fire_and_forget(3)


def test_upload_file_puts_a_local_module_on_the_workers(cluster_client, tmp_path, monkeypatch):
    import importlib
    import uuid

    name = f"partita_upload_{uuid.uuid4().hex[:8]}"
    source = tmp_path / f"{name}.py"
    source.write_text("def scale(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    # By reference: the workers cannot import it yet.
    with pytest.raises(pt.ComputeError, match=name):
        cluster_client.submit(module.scale, 4).result(timeout=60)
    cluster_client.upload_file(source)
    assert cluster_client.submit(module.scale, 4, pure=False).result(timeout=60) == 12
    # An edited version replaces it (reloaded where it was imported).
    source.write_text("def scale(x):\n    return 5 * x\n")
    cluster_client.upload_file(str(source))
    assert cluster_client.submit(module.scale, 4, pure=False).result(timeout=60) == 20
    assert set(cluster_client.run(lambda: __import__(name).scale(1)).values()) == {5}
    # A file that does not import is an error here; the cluster goes on.
    broken = tmp_path / f"{name}_broken.py"
    broken.write_text("def nope(:\n")
    with pytest.raises(Exception, match="SyntaxError|invalid syntax"):
        cluster_client.upload_file(broken)
    with pytest.raises(ValueError, match=r"\.py"):
        cluster_client.upload_file(tmp_path / "notes.txt")
    assert cluster_client.submit(inc, 1).result(timeout=60) == 2


def test_the_task_stream_says_where_and_when_tasks_ran_as_in_dask(cluster_client):
    client = cluster_client
    workers = set(client.nthreads())

    def slow(x):
        import time

        time.sleep(0.1)
        return x

    def bad(x):
        raise ValueError(x)

    before = time.time()
    with pt.get_task_stream(client) as ts:
        futures = client.map(slow, range(3), pure=False)
        failing = client.submit(bad, 1, pure=False)
        client.gather(futures)
        failing.wait(timeout=60)
    after = time.time()
    runs = {r["key"]: r for r in ts.data}
    assert set(runs) == {f.key for f in futures} | {failing.key}, ts.data
    for f in futures:
        run = runs[f.key]
        assert run["worker"] in workers and run["status"] == "OK" and run["nbytes"] > 0
        (span,) = run["startstops"]
        assert span["action"] == "compute"
        assert before <= span["start"] and span["stop"] - span["start"] >= 0.1 and span["stop"] <= after
    assert runs[failing.key]["status"] == "error"
    # The whole stream remembers them too.
    assert {f.key for f in futures} <= {r["key"] for r in client.get_task_stream()}


def fib_by_tasks(n):
    """Fibonacci by tasks that submit tasks, waiting in a worker_client block."""
    if n < 2:
        return n
    with pt.worker_client() as client:
        a = client.submit(fib_by_tasks, n - 1)
        b = client.submit(fib_by_tasks, n - 2)
        return a.result() + b.result()


def test_tasks_submit_tasks_through_get_client_and_secede_as_in_dask(cluster_client):
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    # Two one-thread workers, and up to nine tasks waiting on their subtasks at once:
    # without seceding, the first two would hold both threads forever.
    assert cluster_client.submit(fib_by_tasks, 10).result(timeout=120) == fib(10)

    # The lower-level calls: a task gets the worker's client, secedes, waits, rejoins.
    def total_of_squares(n):
        client = pt.get_client()
        assert isinstance(client, pt.Client)
        futures = client.map(lambda v: v * v, range(n))
        pt.secede()
        values = client.gather(futures)
        pt.rejoin()
        return sum(values), pt.current_task()

    future = cluster_client.submit(total_of_squares, 20)
    total, key = future.result(timeout=60)
    assert total == sum(v * v for v in range(20)) and key == future.key
    # A task can compute collections through its worker's client too.
    x = np.arange(12.0).reshape(3, 4)

    def sum_on_cluster(values):
        with pt.worker_client() as client:
            return pt.from_numpy(values, chunks=(2, 2)).sum(axis=0).compute(scheduler=client)

    np.testing.assert_array_equal(cluster_client.submit(sum_on_cluster, x).result(timeout=60), x.sum(axis=0))

    # Outside a task: get_client is the last open client; the others say where they work.
    assert pt.get_client() is cluster_client
    assert pt.current_task() is None
    with pytest.raises(ValueError, match="worker_client"):
        with pt.worker_client():
            pass
    with pytest.raises(pt.PartitaNotImplementedError, match="secede"):
        pt.secede()
    with pytest.raises(pt.PartitaNotImplementedError, match="rejoin"):
        pt.rejoin()
    # A task that raises after seceding reports its error; the cluster goes on.

    def fails_while_seceded():
        pt.secede()
        raise RuntimeError("boom after secede")

    with pytest.raises(pt.ComputeError, match="boom after secede"):
        cluster_client.submit(fails_while_seceded).result(timeout=60)
    assert cluster_client.submit(inc, 1).result(timeout=60) == 2


def test_get_client_without_any_client_raises():
    import partita._futures as futures

    saved = list(futures._clients)
    futures._clients.clear()
    try:
        with pytest.raises(ValueError, match="no client found"):
            pt.get_client()
    finally:
        futures._clients[:] = saved


def test_locks_events_variables_and_queues_coordinate_tasks_as_in_dask(cluster_client, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")

    def locked_increment(path, lock):
        # Read, pause, write: without the lock, overlapping runs lose updates.
        with lock:
            n = int(open(path).read())
            time.sleep(0.02)
            open(path, "w").write(str(n + 1))
        return n + 1

    lock = pt.Lock("py-counter-lock")
    futures = [cluster_client.submit(locked_increment, str(counter), lock, pure=False) for _ in range(6)]
    assert sorted(cluster_client.gather(futures)) == [1, 2, 3, 4, 5, 6]
    assert counter.read_text() == "6" and not lock.locked()
    assert lock.acquire(timeout=1) and lock.locked()
    assert not pt.Lock("py-counter-lock").acquire(blocking=False)
    with pytest.raises(ValueError, match="not held"):
        pt.Lock("py-counter-lock").release()  # another handle does not hold it
    lock.release()
    with pytest.raises(ValueError, match="not held"):
        lock.release()

    # A task that raises while holding a lock (no `with`) gives it back as it ends.
    def take_and_fail(lock):
        lock.acquire()
        raise RuntimeError("failed holding the lock")

    with pytest.raises(pt.ComputeError, match="failed holding the lock"):
        cluster_client.submit(take_and_fail, pt.Lock("py-dropped-lock")).result(timeout=60)
    assert pt.Lock("py-dropped-lock").acquire(timeout=10)

    # Tasks put arrays into a queue and wait for the client's event, giving their
    # thread back meanwhile (two threads, three tasks).
    def produce(i, queue, event):
        queue.put({"i": i, "data": np.arange(i + 1.0)})
        pt.secede()
        return event.wait(timeout=60)

    queue, go = pt.Queue("py-queue"), pt.Event("py-go")
    waiting = [cluster_client.submit(produce, i, queue, go) for i in range(3)]
    items = sorted((queue.get(timeout=30) for _ in range(3)), key=lambda d: d["i"])
    for i, item in enumerate(items):
        np.testing.assert_array_equal(item["data"], np.arange(i + 1.0))
    with pytest.raises(TimeoutError):
        queue.get(timeout=0.1)
    assert not any(f.done() for f in waiting) and not go.is_set()
    go.set()
    assert cluster_client.gather(waiting) == [True, True, True]
    assert go.wait(timeout=0)
    go.clear()
    assert not go.wait(timeout=0.05)

    # A variable carries a future and a frame to a task; the data stays while it does.
    var = pt.Variable("py-var")
    with pytest.raises(TimeoutError):
        var.get(timeout=0.05)
    x = np.random.default_rng(3).normal(size=(40, 30))
    frame = pl.DataFrame({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]})
    f = cluster_client.compute(pt.from_numpy(x, chunks=(10, 10)).sum(axis=0))
    var.set({"sums": f, "frame": frame, "note": "hello"})
    del f
    got = var.get()
    assert got["note"] == "hello" and got["frame"].equals(frame)
    np.testing.assert_allclose(got["sums"].result(timeout=60), x.sum(axis=0))

    def read_var(v):
        value = v.get(timeout=30)
        return value["sums"].result().sum(), value["note"]

    total, note = cluster_client.submit(read_var, var).result(timeout=60)
    assert note == "hello" and total == pytest.approx(x.sum())
    var.delete()
    with pytest.raises(TimeoutError):
        var.get(timeout=0.05)

    # A semaphore of two: leases counted; a third waits out its timeout.
    sem = pt.Semaphore(max_leases=2, name="py-sem")
    assert sem.acquire() and sem.acquire() and not sem.acquire(timeout=0.05)
    assert sem.get_value() == 2
    with pytest.raises(pt.GraphError, match="has 2 leases"):
        pt.Semaphore(max_leases=3, name="py-sem").acquire()
    sem.release()
    sem.release()
    assert sem.get_value() == 0
    with pytest.raises(ValueError, match="maxsize"):
        pt.Queue(maxsize="3")
    # Bad arguments are plain errors naming what is wrong.
    with pytest.raises(ValueError, match="max_leases"):
        pt.Semaphore(max_leases=0)
    with pytest.raises(ValueError, match="timeout"):
        pt.Event("py-go").wait(timeout=-1)


def test_ctrl_c_stops_waiting_on_a_lock(cluster_client):
    lock = pt.Lock("py-ctrl-c-lock")
    assert lock.acquire()
    threading.Timer(0.3, _thread.interrupt_main).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pt.Lock("py-ctrl-c-lock").acquire(timeout=30)
    assert time.monotonic() - start < 10
    # The interrupted wait holds nothing: one release frees the lock.
    lock.release()
    assert not lock.locked()


def _fill(queue, n):
    for i in range(n):
        queue.put(np.full(3, float(i)))
    return n


def test_a_bounded_queue_makes_producers_wait_for_consumers(cluster_client):
    # A task puts 6 arrays into a queue of 2: it waits for room while the client takes
    # them, and every item arrives in order.
    q = pt.Queue("py-bounded", maxsize=2)
    producer = cluster_client.submit(_fill, q, 6)
    deadline = time.monotonic() + 30
    while q.qsize() < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert q.qsize() == 2 and not producer.done()
    got = [q.get(timeout=30) for _ in range(6)]
    assert producer.result(timeout=30) == 6
    for i, a in enumerate(got):
        np.testing.assert_array_equal(a, np.full(3, float(i)))
    # Full, a put with a timeout raises TimeoutError and puts nothing; its future's data
    # is not kept.
    q.put(1)
    q.put(2)
    future = cluster_client.scatter([np.ones(4)])[0]
    with pytest.raises(TimeoutError, match="no room"):
        q.put({"f": future}, timeout=0.1)
    assert q.qsize() == 2
    # The bound is the queue's: a handle naming none waits too, one naming another is
    # refused.
    with pytest.raises(TimeoutError):
        pt.Queue("py-bounded").put(3, timeout=0.05)
    with pytest.raises(pt.GraphError, match="at most 2"):
        pt.Queue("py-bounded", maxsize=5).put(3)
    assert q.get(batch=True) == [1, 2]
    # Emptied, the queue is forgotten with its bound.
    unbounded = pt.Queue("py-bounded")
    for i in range(5):
        unbounded.put(i)
    assert unbounded.get(batch=True) == list(range(5))


def _shout(topic, words):
    pub = pt.Pub(topic)
    for w in words:
        pub.put({"word": w.upper(), "array": np.arange(3.0)})
    return len(words)


def test_pub_sub_fans_messages_out_as_in_dask(cluster_client):
    # Two subscriptions (one iterated), a publishing task: each gets every message, in
    # order; a message published before subscribing, or to nobody, is not seen.
    pt.Pub("py-news").put("too early")
    first, second = pt.Sub("py-news"), pt.Sub("py-news")
    assert cluster_client.submit(_shout, "py-news", ["a", "b", "c"]).result(timeout=60) == 3
    got = [first.get(timeout=30) for _ in range(3)]
    assert [m["word"] for m in got] == ["A", "B", "C"]
    np.testing.assert_array_equal(got[0]["array"], np.arange(3.0))
    it = iter(second)
    assert [next(it)["word"] for _ in range(3)] == ["A", "B", "C"]
    with pytest.raises(TimeoutError, match="py-news"):
        first.get(timeout=0.05)
    # Futures do not travel by topic (a Queue or Variable carries them).
    future = cluster_client.scatter([np.ones(2)])[0]
    with pytest.raises(pt.GraphError, match="plain values"):
        pt.Pub("py-news").put(future)
    # A closed subscription gets nothing more and says so.
    second.close()
    pt.Pub("py-news").put("late")
    assert first.get(timeout=30) == "late"
    with pytest.raises(ValueError, match="closed"):
        second.get(timeout=0)
    # close() from another thread ends a get waiting for ever, and nothing hangs.
    quiet = pt.Sub("py-quiet")
    errors = []

    def wait():
        try:
            quiet.get()
        except Exception as e:  # noqa: BLE001 - the test looks at it
            errors.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    quiet.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and "ended" in str(errors[0]), errors

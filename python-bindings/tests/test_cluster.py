"""A LocalCluster from Python: worker processes run by `python -m partita`, results equal to
NumPy and polars, clear errors, and no process left behind."""

import os

import numpy as np
import polars as pl
import pytest

import partita as pt


def test_arrays_frames_and_shared_runs_on_a_cluster(cluster_client):
    x = np.random.default_rng(3).normal(size=(120, 90))
    a = pt.from_numpy(x, chunks=(40, 30))
    np.testing.assert_allclose((a + a * 2).sum(axis=0).compute(scheduler=cluster_client), (x * 3).sum(axis=0))
    np.testing.assert_allclose((a @ a.T).compute(scheduler=cluster_client), x @ x.T)
    frame = pl.DataFrame({"k": [1, 2, 1, 3, 2], "v": [1.0, 2.0, 3.0, 4.0, 5.0]})
    df = pt.from_polars(frame, npartitions=3)
    grouped = df.group_by("k").agg(pl.col("v").sum()).sort("k")
    total, small = pt.compute(a.sum(), grouped, scheduler=cluster_client)
    np.testing.assert_allclose(total, x.sum())
    assert small.equals(frame.group_by("k").agg(pl.col("v").sum()).sort("k"))
    assert len(cluster_client.workers()) == 2
    assert "partita.Client" in repr(cluster_client)


def test_python_kernels_run_on_the_cluster_and_unpicklable_ones_say_so(cluster_client):
    x = np.arange(10.0)
    a = pt.from_numpy(x, chunks=5).map_blocks(lambda b: b + 1)
    np.testing.assert_allclose(a.compute(scheduler=cluster_client), x + 1)
    frame = pl.DataFrame({"v": [1, 2, 3, 4]})
    df = pt.from_polars(frame, npartitions=2).map_partitions(lambda p: p.with_columns(w=pl.col("v") * 2))
    assert df.compute(scheduler=cluster_client).equals(frame.with_columns(w=pl.col("v") * 2))
    # A kernel holding something that cannot be pickled runs locally, and a cluster names
    # the task it could not send.
    import threading

    lock = threading.Lock()

    def locked(b):
        with lock:
            return b * 2

    c = pt.from_numpy(x, chunks=5).map_blocks(locked)
    np.testing.assert_allclose(c.compute(scheduler="threads"), x * 2)
    with pytest.raises(pt.CodecError, match="cannot pickle"):
        c.compute(scheduler=cluster_client)
    # The cluster is still usable.
    assert pt.ones((10,), chunks=5).sum().compute(scheduler=cluster_client) == 10.0


def test_persist_on_a_cluster_leaves_the_data_on_the_workers(cluster_client, tmp_path):
    # Each block counts its runs in a file of its own: persisted blocks run once, and
    # later computations, on the cluster or here, start from them.
    def counted(b):
        import uuid

        (tmp_path / f"run-{uuid.uuid4()}").write_text("")
        return b * 2

    x = np.arange(20.0)
    p = pt.from_numpy(x, chunks=5).map_blocks(counted).persist(scheduler=cluster_client)
    runs = lambda: len(list(tmp_path.iterdir()))  # noqa: E731
    persisted_runs = runs()
    assert persisted_runs >= 4  # (and maybe one here, for the result's dtype)
    np.testing.assert_allclose((p + 1).compute(scheduler=cluster_client), x * 2 + 1)
    np.testing.assert_allclose(p.sum().compute(scheduler=cluster_client), (x * 2).sum())
    np.testing.assert_allclose(p.compute(), x * 2)  # the threads scheduler fetches them
    assert runs() == persisted_runs
    # The blocks are on this cluster's workers, not in this process: another cluster
    # cannot be handed them.
    with pt.LocalCluster(n_workers=1) as other, pt.Client(other) as elsewhere:
        with pytest.raises(pt.PartitaError, match="persisted on another cluster"):
            p.sum().compute(scheduler=elsewhere)

    frame = pl.DataFrame({"k": [1, 2, 1, 3, 2, 3], "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    df = pt.from_polars(frame, npartitions=3).filter(pl.col("v") > 1.5).persist(scheduler=cluster_client)
    assert df.npartitions == 3
    got = df.group_by("k").agg(pl.col("v").sum()).sort("k").compute(scheduler=cluster_client)
    want = frame.filter(pl.col("v") > 1.5).group_by("k").agg(pl.col("v").sum()).sort("k")
    assert got.equals(want)
    assert df.compute().sort("v").equals(frame.filter(pl.col("v") > 1.5))
    # Dask's spelling: client.persist(x) or client.persist([x, y]).
    a, f = cluster_client.persist([pt.from_numpy(x, chunks=5) + 1, pt.from_polars(frame, npartitions=2)])
    assert isinstance(a, pt.Array) and isinstance(f, pt.DataFrame)
    np.testing.assert_allclose(a.sum().compute(scheduler=cluster_client), (x + 1).sum())
    assert f.compute(scheduler=cluster_client).equals(frame)
    np.testing.assert_allclose(cluster_client.persist(pt.from_numpy(x, chunks=4)).compute(), x)
    with pytest.raises(TypeError, match="cannot persist a int"):
        cluster_client.persist(3)


def test_a_cluster_stops_its_processes_when_closed(tmp_path):
    with pt.LocalCluster(n_workers=1) as cluster:
        scheduler, workers = cluster.pids()
        with pt.Client(cluster.cluster_file) as client:
            assert pt.arange(0, 10, chunks=3).sum().compute(scheduler=client) == 45
        with pytest.raises(pt.TransportError, match="closed"):
            client.workers()
    for pid in [scheduler, *workers]:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} outlived its cluster"
    assert "closed" in repr(cluster)


def test_bad_cluster_files_are_named(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(pt.PartitaError, match="nope.json"):
        pt.Client(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(pt.PartitaError, match="bad.json"):
        pt.Client(str(bad))


def test_debug_logs_give_a_task_stream(monkeypatch):
    # Workers inherit RUST_LOG: at debug level each task they run is a line with its key
    # and duration, each batch of fetched values one with its source.
    monkeypatch.setenv("RUST_LOG", "info,partita_distributed=debug")
    with pt.LocalCluster(n_workers=2) as cluster, pt.Client(cluster) as client:
        x = pt.arange(0, 100, chunks=10)
        assert (x + 1).sum().compute(scheduler=client) == sum(range(1, 101))
        logs = cluster.log("worker-0") + cluster.log("worker-1")
    ran = [line for line in logs.splitlines() if " ran " in line and "micros=" in line]
    assert len(ran) >= 10, logs
    assert any("ok=true" in line for line in ran)
    # What the worker used meanwhile: CPU time, time waiting for a core, page faults.
    assert all("cpu_micros=" in line and "minflt=" in line for line in ran), ran[:3]
    assert any(" fetched " in line and "from=" in line for line in logs.splitlines()), logs


def test_scheduler_info_shows_workers_tasks_and_counters():
    with pt.LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=2**30) as cluster:
        with pt.Client(cluster) as client:
            info = client.scheduler_info()
            assert info["type"] == "Scheduler"
            assert info["address"] == client.scheduler_address
            assert len(info["workers"]) == 2, info
            for address, w in info["workers"].items():
                assert ":" in address
                assert (w["nthreads"], w["memory_limit"]) == (1, 2**30), w
                assert set(w["metrics"]) >= {"memory", "managed_bytes", "executing", "paused"}
            assert sum(info["tasks"].values()) == 0
            # Ten blocks held on the workers for `x`.
            x = client.persist(pt.arange(0, 1000, chunks=100))
            info = client.scheduler_info()
            assert info["tasks"]["memory"] == 10, info["tasks"]
            assert sum(w["held"] for w in info["workers"].values()) == 10
            assert info["stats"]["tasks_finished"] == 10
            assert x.sum().compute(scheduler=client) == sum(range(1000))


def test_metrics_link_serves_prometheus_text_when_asked():
    import urllib.request

    with pt.LocalCluster(n_workers=1, metrics_address="127.0.0.1:0") as cluster:
        link = cluster.metrics_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/metrics"), link
        with pt.Client(cluster) as client:
            assert client.metrics_link == link
            assert pt.arange(0, 10, chunks=5).sum().compute(scheduler=client) == 45
            text = urllib.request.urlopen(link, timeout=10).read().decode()
            lines = text.splitlines()
            assert "partita_workers 1" in lines, text
            assert any(line.startswith("partita_tasks_finished_total ") for line in lines), text
            info = urllib.request.urlopen(link.replace("/metrics", "/info"), timeout=10).read()
            assert b'"workers"' in info
    with pt.LocalCluster(n_workers=1) as cluster, pt.Client(cluster) as client:
        assert cluster.metrics_link is None and client.metrics_link is None
    with pytest.raises(ValueError, match="metrics_address"):
        pt.LocalCluster(n_workers=1, metrics_address="localhost")


def test_rebalance_evens_out_data_scattered_onto_one_worker():
    with pt.LocalCluster(n_workers=2, threads_per_worker=1) as cluster, pt.Client(cluster) as client:
        first, second = sorted(client.nthreads())
        arrays = [np.full(1000, float(i)) for i in range(6)]
        futures = client.scatter(arrays, workers=first)
        client.wait(futures)
        assert all(on == [first] for on in client.who_has(futures).values())
        moved = client.rebalance(futures)
        assert moved["moved"] == 3 and moved["nbytes"] >= 3 * 8000, moved
        on = [tuple(w) for w in client.who_has(futures).values()]
        assert sorted(on) == [(first,)] * 3 + [(second,)] * 3
        for got, want in zip(client.gather(futures), arrays):
            np.testing.assert_array_equal(got, want)
        # Even already: nothing moves; an unknown worker is refused, naming it.
        assert client.rebalance()["moved"] == 0
        with pytest.raises(pt.TransportError, match="127.0.0.1:1"):
            client.rebalance(workers=["127.0.0.1:1"])
        # Tasks read the moved data where it is now.
        assert client.gather(client.map(np.sum, futures)) == [a.sum() for a in arrays]


def test_replicate_and_retire_workers_keep_data_on_the_cluster():
    with pt.LocalCluster(n_workers=2, threads_per_worker=1) as cluster, pt.Client(cluster) as client:
        rng = np.random.default_rng(11)
        arrays = [rng.normal(size=(200, 50)) for _ in range(4)]
        frame = pl.DataFrame({"k": [1, 2, 1, 3], "v": [0.5, 1.5, 2.5, 3.5]})
        futures = client.scatter(arrays + [frame])
        sums = client.map(np.sum, futures[:4])
        # Copies on both workers, worker to worker.
        client.replicate(futures + sums)
        assert all(len(on) == 2 for on in client.who_has(futures + sums).values())
        # A worker retired: its data moves to the other one, nothing is lost or recomputed.
        workers = sorted(client.nthreads())
        scattered_alone = client.scatter([np.arange(10.0), np.ones(7)])
        retired = client.retire_workers([workers[0]])
        assert list(retired) == [workers[0]] and isinstance(retired[workers[0]]["id"], int)
        assert sorted(client.nthreads()) == workers[1:]
        got = client.gather(futures + sums + scattered_alone)
        for a, b in zip(got[:4], arrays):
            np.testing.assert_array_equal(a, b)
        assert got[4].equals(frame)
        assert got[5:9] == pytest.approx([a.sum() for a in arrays])
        np.testing.assert_array_equal(got[9], np.arange(10.0))
        np.testing.assert_array_equal(got[10], np.ones(7))
        stats = client.scheduler_info()["stats"]
        assert stats["workers_retired"] == 1 and stats["lost_values"] == 0, stats
        # The last worker is not retired by a client (its data would have nowhere to go),
        # nor an unknown address; the error names it.
        with pytest.raises(pt.TransportError, match="no open worker"):
            client.retire_workers(workers[1:])
        with pytest.raises(pt.TransportError, match="127.0.0.1:1"):
            client.retire_workers(["127.0.0.1:1"])
        assert client.submit(np.sum, scattered_alone[0]).result(timeout=60) == 45.0


def test_a_nanny_starts_a_new_worker_process_when_one_is_killed():
    import signal
    import time

    with pt.LocalCluster(n_workers=1, nanny=True) as cluster, pt.Client(cluster) as client:
        [(address, pid)] = client.run(os.getpid).items()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            workers = client.nthreads()
            if len(workers) == 1 and address not in workers:
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.05)
        [new_pid] = client.run(os.getpid).values()
        assert new_pid != pid
        x = np.arange(12.0)
        assert pt.from_numpy(x, chunks=4).sum().compute(scheduler=client) == x.sum()


def test_workers_rejoin_a_restarted_scheduler_and_bad_worker_args_say_so():
    x = np.arange(12.0)
    # Worker flags pass through (here: how long a worker tries to reach its scheduler).
    with pt.LocalCluster(n_workers=1, worker_args=["--death-timeout", "30"]) as cluster:
        with pt.Client(cluster) as client:
            assert pt.from_numpy(x, chunks=4).sum().compute(scheduler=client) == x.sum()
        scheduler_pid, _ = cluster.pids()
        with pt.Client(cluster) as old:
            kept = old.submit(sum, [1, 2, 3])
            assert kept.result() == 6
            cluster.restart_scheduler()
            assert cluster.pids()[0] != scheduler_pid
            with pt.Client(cluster) as client:
                client.wait_for_workers(1, timeout=60)
                assert pt.from_numpy(x, chunks=4).sum().compute(scheduler=client) == x.sum()
            # The client from before connects again by itself at its next call; its
            # futures from before are lost.
            assert old.reconnect_timeout == 10.0
            old.reconnect_timeout = 30
            assert pt.from_numpy(x, chunks=4).sum().compute(scheduler=old) == x.sum()
            assert old.is_connected()
            assert kept.status == "lost"
            with pytest.raises(ValueError, match="seconds"):
                old.reconnect_timeout = -1
        assert "lost the scheduler" in cluster.log("worker-0")
    # A flag the worker does not know: an error quoting the worker's own complaint.
    with pytest.raises(pt.TransportError, match="--no-such-flag"):
        pt.LocalCluster(n_workers=1, nanny=False, worker_args=["--no-such-flag"])


def test_published_datasets_outlive_their_publisher_and_compute_alike():
    x = np.random.default_rng(5).normal(size=(60, 40))
    frame = pl.DataFrame({"k": [i % 7 for i in range(50)], "v": [float(i) for i in range(50)]})
    with pt.LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        with pt.Client(cluster) as publisher:
            a = publisher.persist(pt.from_numpy(x, chunks=(20, 20)) * 2)
            df = publisher.persist(pt.from_polars(frame, npartitions=3))
            total = publisher.compute(a.sum())
            call = publisher.submit(sum, [1, 2, 3])
            bundle = {"a": a, "df": df, "total": total, "call": call, "note": "plain"}
            publisher.publish_dataset(bundle=bundle)
            publisher.publish_dataset(a, name="array")
            with pytest.raises(KeyError, match="array"):
                publisher.publish_dataset(a, name="array")
            publisher.publish_dataset(a, name="array", override=True)
            with pytest.raises(TypeError, match="persist"):
                publisher.publish_dataset(lazy=pt.from_numpy(x, chunks=20) + 1)
            with pytest.raises(TypeError, match="delayed"):
                publisher.publish_dataset(d=pt.delayed(sum)([1]))
            del a, df, total, call, bundle
        # The publisher and everything it held are gone; the published data is not.
        with pt.Client(cluster) as getter:
            assert getter.list_datasets() == ("array", "bundle")
            got = getter.get_dataset("bundle")
            assert got["note"] == "plain"
            np.testing.assert_allclose((got["a"] + 1).compute(scheduler=getter), x * 2 + 1)
            grouped = got["df"].group_by("k").agg(pl.col("v").sum()).sort("k")
            assert grouped.compute(scheduler=getter).equals(frame.group_by("k").agg(pl.col("v").sum()).sort("k"))
            np.testing.assert_allclose(got["total"].result(timeout=60), (x * 2).sum())
            assert got["call"].result(timeout=60) == 6
            assert "array" in getter.datasets and sorted(getter.datasets) == ["array", "bundle"]
            np.testing.assert_allclose(getter.datasets["array"].compute(scheduler=getter), x * 2)
            del getter.datasets["array"]
            getter.unpublish_dataset("bundle")
            assert getter.list_datasets() == ()
            with pytest.raises(KeyError, match="bundle"):
                getter.get_dataset("bundle")
            assert getter.get_dataset("bundle", default=None) is None
            # Unpublishing an unknown name does nothing, as Dask's; deleting it from the
            # mapping is a KeyError, as for any mapping.
            assert getter.unpublish_dataset("bundle") is False
            with pytest.raises(KeyError, match="bundle"):
                del getter.datasets["bundle"]
            # Unpublished, but still held by this client's objects.
            np.testing.assert_allclose(got["a"].compute(scheduler=getter), x * 2)
            assert got["df"].compute(scheduler=getter).equals(frame)


def test_workers_restrict_where_tasks_run_as_in_dask(cluster_client):
    client = cluster_client
    pids = client.run(os.getpid)
    a, b = sorted(pids)
    # Every call on b, though a is as idle.
    futures = client.map(lambda i: (i, os.getpid()), range(8), workers=b, pure=False)
    assert {pid for _, pid in client.gather(futures)} == {pids[b]}
    # A computation restricted to a, by a list of addresses; same answer as NumPy.
    x = np.random.default_rng(8).normal(size=(40, 30))
    total = client.compute(pt.from_numpy(x, chunks=(10, 10)).sum(axis=0), workers=[a])
    np.testing.assert_allclose(total.result(timeout=60), x.sum(axis=0))
    assert set(sum(client.who_has(total).values(), [])) == {a}
    # No such worker: it waits; allowed elsewhere, it runs.
    waiting = client.submit(os.getpid, workers="10.255.255.1:9", pure=False)
    with pytest.raises(TimeoutError):
        waiting.result(timeout=0.3)
    assert waiting.status == "pending"
    anywhere = client.submit(os.getpid, workers=["10.255.255.1:9"], allow_other_workers=True, pure=False)
    assert anywhere.result(timeout=60) in pids.values()
    waiting.cancel()
    with pytest.raises(TypeError, match="strings"):
        client.submit(os.getpid, workers=[1])
    # Scattered onto one worker, or refused naming the absent one.
    data = client.scatter([np.arange(5.0), "text"], workers=[a])
    client.wait(data, timeout=30)  # the scheduler hears of them from the worker
    assert set(sum(client.who_has(data).values(), [])) == {a}
    np.testing.assert_array_equal(data[0].result(timeout=60), np.arange(5.0))
    with pytest.raises(pt.TransportError, match="10.255.255.1:9"):
        client.scatter(1, workers="10.255.255.1:9")


def test_restart_replaces_worker_processes_and_cancels_futures():
    with pt.LocalCluster(n_workers=2, nanny=True) as cluster, pt.Client(cluster) as client:
        client.wait_for_workers(2)
        before = set(client.run(os.getpid).values())
        x = np.arange(20.0)
        total = client.compute(pt.from_numpy(x, chunks=5).sum())
        assert total.result(timeout=60) == x.sum()
        client.publish_dataset(kept=client.scatter(x))
        client.restart()
        after = set(client.run(os.getpid).values())
        assert len(after) == 2 and not (after & before)
        assert total.status == "cancelled"
        with pytest.raises(pt.CancelledError):
            total.result(timeout=5)
        assert client.list_datasets() == ()
        assert pt.from_numpy(x, chunks=5).sum().compute(scheduler=client) == x.sum()


def test_restart_without_a_nanny_says_so():
    with pt.LocalCluster(n_workers=1, nanny=False) as cluster, pt.Client(cluster) as client:
        x = client.scatter(7)
        with pytest.raises(pt.TransportError, match="nanny"):
            client.restart()
        assert x.result(timeout=60) == 7


def test_persist_with_workers_keeps_the_data_there(cluster_client):
    client = cluster_client
    a, b = sorted(client.nthreads())
    x = np.random.default_rng(9).normal(size=(30, 20))
    y = client.persist(pt.from_numpy(x, chunks=(10, 10)) * 2, workers=[b])
    # Computing it runs nothing: the future's keys are the blocks, all held on b.
    future = client.compute(y)
    np.testing.assert_allclose(future.result(timeout=60), x * 2)
    assert set(sum(client.who_has(future).values(), [])) == {b}
    # Tasks on top of it are unrestricted: a worker running one fetches a copy of its
    # input, so afterwards every block is still on b, perhaps elsewhere too.
    np.testing.assert_allclose((y + 1).compute(scheduler=client), x * 2 + 1)
    assert all(b in holders for holders in client.who_has(future).values())


def test_resources_limit_where_and_how_many_tasks_run_as_in_dask():
    def _span(_):  # defined here so it travels by value (workers cannot import this module)
        import time

        start = time.time()
        time.sleep(0.15)
        return start, time.time()

    with (
        pt.LocalCluster(n_workers=1, threads_per_worker=2, nanny=False, resources={"SLOT": 1}) as cluster,
        pt.Client(cluster) as client,
    ):
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["resources"] == {"SLOT": 1.0}
        # Two threads, one slot: the tasks asking for it run one after the other.
        spans = client.gather(client.map(_span, range(4), resources={"SLOT": 1}, pure=False))
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans
        # A whole computation holding it; same answer as NumPy.
        x = np.random.default_rng(11).normal(size=(30, 20))
        total = client.compute(pt.from_numpy(x, chunks=(10, 10)).sum(axis=0), resources={"SLOT": 1})
        np.testing.assert_allclose(total.result(timeout=60), x.sum(axis=0))
        kept = client.persist(pt.from_numpy(x, chunks=(10, 10)) * 3, resources={"SLOT": 0.5})
        np.testing.assert_allclose(kept.compute(scheduler=client), x * 3)
        # Nobody offers a GPU: it waits, as dask's does.
        waiting = client.submit(os.getpid, resources={"GPU": 1}, pure=False)
        with pytest.raises(TimeoutError):
            waiting.result(timeout=0.3)
        assert waiting.status == "pending"
        waiting.cancel()
        with pytest.raises(ValueError, match="SLOT"):
            client.submit(os.getpid, resources={"SLOT": -1})
        with pytest.raises(TypeError, match="numbers"):
            client.submit(os.getpid, resources={"SLOT": "one"})
        with pytest.raises(TypeError, match="dict"):
            client.compute(pt.from_numpy(x, chunks=10).sum(), resources="SLOT=1")
        # Still usable after the refusals.
        assert client.submit(os.getpid, pure=False).result(timeout=60) > 0


def test_priority_starts_urgent_work_before_queued_work_as_in_dask():
    def started(_):  # defined here so it travels by value
        import time

        now = time.time()
        time.sleep(0.06)
        return now

    with pt.LocalCluster(n_workers=1, nanny=False) as cluster, pt.Client(cluster) as client:
        first = client.submit(started, -1, pure=False)
        queued = client.map(started, range(6), pure=False)
        urgent = client.submit(started, 99, priority=10, pure=False)
        at = urgent.result(timeout=60)
        assert first.result(timeout=60) < at
        # At most the one or two the worker had taken before the urgent call came.
        assert sum(s < at for s in client.gather(queued)) <= 2
        # A whole computation too (same answer as NumPy).
        x = np.random.default_rng(12).normal(size=(20, 20))
        total = client.compute(pt.from_numpy(x, chunks=10).sum(), priority=-3)
        np.testing.assert_allclose(total.result(timeout=60), x.sum())


def test_adaptive_target_and_workers_to_close_answer_without_changing_anything():
    from udfs import nap

    with pt.LocalCluster(n_workers=2, threads_per_worker=1, nanny=False) as cluster, pt.Client(cluster) as client:
        workers = sorted(client.nthreads())
        # Idle and empty: none wanted, both may go; nothing changes.
        idle = client.adaptive_target("5s")
        assert idle["workers"] == 0 and sorted(idle["to_close"]) == workers, idle
        # Holding data: never every worker; the empty one goes first.
        futures = client.scatter([np.arange(5.0)], workers=workers[1])
        client.wait(futures)
        assert client.workers_to_close(2) == [workers[0]]
        assert client.adaptive_target(5)["to_close"] == [workers[0]]
        # A backlog of 8 x 0.5 s on two threads: more workers for a 1 s target.
        slow = client.map(nap, range(8), seconds=0.5)
        slow[0].result()
        busy = client.adaptive_target("1s")
        assert busy["workers"] > 2 and busy["to_close"] == [], busy
        with pytest.raises(ValueError, match="target_duration"):
            client.adaptive_target("soon")
        assert client.gather(slow) == list(range(8))
        assert sorted(client.nthreads()) == workers and cluster.n_workers == 2


def test_scale_and_adapt_resize_the_cluster_as_in_dask():
    import time

    def settle(cluster, client, n):
        deadline = time.monotonic() + 60
        while cluster.n_workers != n or len(client.nthreads()) != n:
            assert time.monotonic() < deadline, (cluster.n_workers, client.nthreads())
            time.sleep(0.05)

    with pt.LocalCluster(n_workers=1, nanny=False) as cluster, pt.Client(cluster) as client:
        # scale: up, data on every worker, down to one holding all of it.
        cluster.scale(3)
        assert len(client.nthreads()) == 3 and cluster.n_workers == 3
        arrays = [np.arange(10.0) * i for i in range(6)]
        futures = client.scatter(arrays)
        cluster.scale(1)
        settle(cluster, client, 1)
        for got, want in zip(client.gather(futures), arrays):
            np.testing.assert_array_equal(got, want)
        assert client.scheduler_info()["stats"]["lost_values"] == 0
        with pytest.raises(pt.TransportError, match="hold values"):
            cluster.scale(0)
        # adapt: a backlog of 24 calls of 0.3 s (7 s on one thread) grows the cluster to its maximum, and once
        # idle it shrinks back to the minimum, the results kept.
        with pytest.raises(ValueError, match="interval"):
            cluster.adapt(interval="soon")
        with pytest.raises(pt.ShapeError, match="at least 10ms"):
            cluster.adapt(interval="1e3us")
        with pytest.raises(pt.ShapeError, match="minimum 5 is above maximum 2"):
            cluster.adapt(minimum=5, maximum=2)
        cluster.adapt(minimum=1, maximum=3, interval="0.1 seconds", target_duration=1, wait_count=3)
        assert cluster.adaptive
        from udfs import nap

        squares = client.map(nap, range(24), seconds=0.3)
        peak = 1
        while not all(f.done() for f in squares):
            peak = max(peak, cluster.n_workers)
            time.sleep(0.02)
        assert client.gather(squares) == list(range(24))
        assert peak == 3
        settle(cluster, client, 1)
        assert client.gather(squares) == list(range(24))
        stats = client.scheduler_info()["stats"]
        assert stats["lost_values"] == 0 and stats["recomputed"] == 0, stats
        # scale stops adapting.
        cluster.scale(2)
        assert not cluster.adaptive and cluster.n_workers == 2

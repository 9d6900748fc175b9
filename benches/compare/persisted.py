"""H2O q1-q5 on a frame persisted in a cluster's memory: partita against Dask distributed.

    ~/.cache/partita/bench-venv/bin/python benches/compare/persisted.py partita|dask [RUNS]

(the suite's virtualenv, where `benches/compare/run` installs partita's release wheel and
Dask, and has made the 1e7-row parquet files). Each engine starts a cluster of two
one-thread worker processes, persists the ten files there (timed), then runs q1-q5 (the
suite's own questions, `engines.questions()`) RUNS times each on the persisted frame and
prints the medians. Run the two engines alternately: the machine drifts. The first
question on freshly persisted data pays the workers' warm-up (BENCHMARKS.md).
"""

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engines as E  # noqa: E402

DATA = os.path.expanduser("~/.cache/partita/bench-data/h2o-groupby-1e+07")


def timed(f, runs):
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    engine, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    questions = E.questions()[:5]
    out = []
    if engine == "partita":
        import partita as pt

        with pt.LocalCluster(n_workers=2, threads_per_worker=1, nanny=False) as cluster, pt.Client(cluster) as client:
            t = time.perf_counter()
            df = pt.read_parquet(DATA).persist(scheduler=client)
            out.append(f"persist {time.perf_counter() - t:.2f} s")
            for q in questions:
                out.append(f"{q.name[:2]} {timed(lambda: q.partita(df).compute(scheduler=client), runs):.3f}")
    elif engine == "dask":
        import dask.dataframe as dd
        from distributed import Client, LocalCluster, wait

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            t = time.perf_counter()
            df = client.persist(dd.read_parquet(DATA))
            wait(df)
            out.append(f"persist {time.perf_counter() - t:.2f} s")
            for q in questions:
                out.append(f"{q.name[:2]} {timed(lambda: q.dask(df).compute(), runs):.3f}")
    else:
        sys.exit(f"unknown engine {engine!r}: partita or dask")
    print(engine, " | ".join(out))


if __name__ == "__main__":
    main()

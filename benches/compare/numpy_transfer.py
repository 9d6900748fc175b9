"""A 1 GB NumPy array returned by a Python task, read by a task on the other worker.

    ~/.cache/partita/bench-venv/bin/python benches/compare/numpy_transfer.py [ROUNDS]

(the suite's virtualenv, where `benches/compare/run` installs partita's release wheel), or
any Python with partita installed. Each round makes two such arrays (one per worker,
most likely), then times a task that takes both: one of them crosses between the workers
as the `python-pickle` codec's out-of-band body. The first round of a fresh machine pays
for touching its memory for the first time; the median is printed with every round.
"""

import statistics
import sys
import time

import partita as pt

N = 125_000_000  # float64: 1 GB


def make(seed):
    import numpy as np

    return np.random.default_rng(seed).random(N)


def both(a, b):
    return a.shape[0] + b.shape[0]


def main(rounds: int) -> None:
    with pt.LocalCluster(n_workers=2, threads_per_worker=1, nanny=False) as cluster:
        client = pt.Client(cluster)
        times = []
        for r in range(rounds):
            fx, fy = client.submit(make, 2 * r), client.submit(make, 2 * r + 1)
            client.wait([fx, fy])
            start = time.perf_counter()
            f = client.submit(both, fx, fy)
            if f.result() != 2 * N:
                raise SystemExit("wrong result")
            times.append(time.perf_counter() - start)
            del fx, fy, f
        client.close()
    t = statistics.median(times)
    print(
        f"1 GB NumPy result worker to worker: median {t:.3f} s ({8 * N / 1e9 / t:.2f} GB/s), "
        f"rounds {[round(x, 3) for x in times]}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)

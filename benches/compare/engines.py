"""Engines and workloads of the comparison suite.

An *engine* is one way of running a workload: partita on its local (threads) scheduler or on
a LocalCluster, Dask threaded or distributed, Polars single-node, NumPy on one thread. A
*workload* is written once against the small interface an engine offers (`random`,
`from_numpy`, `rechunk`, `compute`, `delayed`, `read`, ...), so every engine runs the same
computation; only the library underneath changes.

Each run builds the graph and computes it inside the timer (graph construction is part of
what a user waits for); cluster start-up and imports are not timed.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import polars as pl

# --------------------------------------------------------------------------------------
# sizes


def sizes(quick: bool, large: bool) -> dict:
    """Problem sizes: the issues' targets, or a tiny set for a smoke run."""
    if quick:
        return {
            "square": 2000,
            "square_chunk": 500,
            "vector": 2_000_000,
            "vector_chunk": 200_000,
            "matmul": 800,
            "matmul_chunk": 200,
            "rechunk_to": 50,
            "rows": 100_000,
            "trivial": 1_000,
            "memory_limit": 384 * 2**20,
        }
    return {
        "square": 20_000,
        "square_chunk": 2_000,
        "vector": 200_000_000,
        "vector_chunk": 10_000_000,
        "matmul": 8_000,
        "matmul_chunk": 2_000,
        "rechunk_to": 200,
        "rows": 100_000_000 if large else 10_000_000,
        "trivial": 10_000,
        "memory_limit": 2**30,
    }


# --------------------------------------------------------------------------------------
# engines


class Engine:
    """How one library computes things. Subclasses fill in what they support."""

    name = "?"

    def start(self, memory_limit: int = 0) -> None:
        pass

    def stop(self) -> None:
        pass


class NumpyEngine(Engine):
    """NumPy on one thread (BLAS limited to one thread by the parent's environment)."""

    name = "numpy"

    def random(self, shape, chunks, seed):
        return np.random.default_rng(seed).random(shape)

    def from_numpy(self, a, chunks):
        return a

    def rechunk(self, x, chunks):
        return x

    def compute(self, x):
        return np.asarray(x)


class PartitaEngine(Engine):
    """partita's Python package: the local (threads) scheduler, or a LocalCluster of two
    one-thread worker processes when `cluster` is set."""

    def __init__(self, cluster: bool):
        import partita as pt

        self.pt = pt
        self.cluster = cluster
        self.name = "partita-cluster" if cluster else "partita-threads"
        self.scheduler = "threads"
        self._cluster = None

    def start(self, memory_limit: int = 0) -> None:
        if self.cluster:
            # No nannies: the figures measure the workers themselves (and a nanny would
            # kill a worker of the memory group past 95% of its limit instead of letting
            # it spill), as before nannies became pt.LocalCluster's default.
            self._cluster = self.pt.LocalCluster(
                n_workers=2, threads_per_worker=1, memory_limit=memory_limit, nanny=False
            )
            self.scheduler = self.pt.Client(self._cluster)

    def stop(self) -> None:
        if self._cluster is not None:
            self.scheduler.close()
            self._cluster.close()

    # arrays
    def random(self, shape, chunks, seed):
        return self.pt.random.random(shape, chunks=chunks, seed=seed)

    def from_numpy(self, a, chunks):
        return self.pt.from_numpy(a, chunks=chunks)

    def rechunk(self, x, chunks):
        return x.rechunk(chunks)

    def read_zarr(self, path):
        return self.pt.read_zarr(path)

    def compute(self, x):
        """A collection's result as the library gives it (NumPy, polars, Python objects)."""
        return self.pt.compute(x, scheduler=self.scheduler)[0]

    compute_object = compute

    # tasks
    def delayed(self, f):
        return self.pt.delayed(f)

    # frames
    def read(self, directory):
        return self.pt.read_parquet(directory)

    def group_by(self, q, df):
        return self.compute(q.partita(df))

    def join(self, q, x, right):
        return self.compute(x.join(right, on=q.key, how=q.how))


class DaskEngine(Engine):
    """Dask: the threaded scheduler (one thread per core), or a distributed LocalCluster of
    two one-thread worker processes when `distributed` is set."""

    def __init__(self, distributed: bool):
        import dask

        self.dask = dask
        self.distributed = distributed  # which scheduler _compute uses
        self.name = "dask-distributed" if distributed else "dask-threads"
        self._client = None

    def start(self, memory_limit: int = 0) -> None:
        if self.distributed:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                memory_limit=memory_limit or "auto",
                dashboard_address=None,
            )
            self._client = Client(cluster)
            self._cluster = cluster

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()

    def compute_object(self, x):
        """A collection's result as the library gives it (pandas, Python objects)."""
        return self._compute(x)

    def _compute(self, x):
        if self.distributed:
            return x.compute()
        return x.compute(scheduler="threads")

    # arrays
    def random(self, shape, chunks, seed):
        import dask.array as da

        return da.random.default_rng(seed).random(shape, chunks=chunks)

    def from_numpy(self, a, chunks):
        import dask.array as da

        return da.from_array(a, chunks=chunks)

    def rechunk(self, x, chunks):
        return x.rechunk(chunks)

    def read_zarr(self, path):
        import dask.array as da

        return da.from_zarr(path)

    def compute(self, x):
        return np.asarray(self._compute(x))

    # tasks
    def delayed(self, f):
        return self.dask.delayed(f)

    # frames
    def read(self, directory):
        import dask.dataframe as dd

        return dd.read_parquet(directory)

    def group_by(self, q, df):
        return self._compute(q.dask(df))

    def join(self, q, x, right):
        return self._compute(x.merge(right, on=q.key, how=q.how))


class PolarsEngine(Engine):
    """Polars single-node: `scan_parquet(...)` then the same query, `.collect()`."""

    name = "polars"

    def read(self, directory):
        return pl.scan_parquet(sorted(glob.glob(os.path.join(directory, "*.parquet"))))

    def group_by(self, q, lf):
        return q.polars(lf).collect()

    def join(self, q, x, right):
        return x.join(right, on=q.key, how=q.how).collect()


def make_engine(name: str) -> Engine:
    if name == "numpy":
        return NumpyEngine()
    if name == "polars":
        return PolarsEngine()
    if name in ("partita-threads", "partita-cluster"):
        return PartitaEngine(cluster=name == "partita-cluster")
    if name in ("dask-threads", "dask-distributed"):
        return DaskEngine(distributed=name == "dask-distributed")
    raise ValueError(f"unknown engine {name!r}")


ENGINES = [
    "partita-threads",
    "partita-cluster",
    "dask-threads",
    "dask-distributed",
    "polars",
    "numpy",
]

# --------------------------------------------------------------------------------------
# array workloads


class ArrayWorkload:
    """`body(engine, x)` is the computation; `make(engine, s)` its input at full size;
    `small(s)` a shared NumPy input on which every engine must give NumPy's answer; `expect`
    checks the full-size answer (each engine draws its own random numbers there, so the
    check is statistical)."""

    group = "arrays"

    def __init__(self, name, make, body, small, small_chunks, expect):
        self.name = name
        self.make = make
        self.body = body
        self.small = small
        self.small_chunks = small_chunks
        self.expect = expect


def _transpose_mean(e, x):
    return e.compute((x + x.T).mean(axis=0))


def _expect_transpose_mean(r, s):
    n = s["square"]
    r = np.asarray(r)
    if r.shape != (n,):
        return f"shape {r.shape}, expected ({n},)"
    # each entry is the mean of 2n uniforms: 1 +- a few sqrt(2/12/(2n))
    if not np.all(np.abs(r - 1.0) < 8 * np.sqrt(1 / (12 * n)) + 1e-9):
        return f"entries far from 1: min {r.min()}, max {r.max()}"
    return None


def _expect_sum(r, s):
    n = s["vector"]
    if abs(float(r) / n - 0.5) > 8 * np.sqrt(1 / (12 * n)):
        return f"sum/n = {float(r) / n}, expected about 0.5"
    return None


def _expect_std(r, s):
    if abs(float(r) - np.sqrt(1 / 12)) > 1e-3:
        return f"std {float(r)}, expected about {np.sqrt(1 / 12)}"
    return None


def _expect_matmul(r, s):
    n = s["matmul"]
    # sum_ij (m m^T)_ij = sum_k (column sum k)^2, about n * (n/2)^2 * (1 + 1/(3n))
    expected = n * (n / 2) ** 2 * (1 + 1 / (3 * n))
    if abs(float(r) / expected - 1) > 0.01:
        return f"{float(r)}, expected about {expected}"
    return None


def _expect_rechunk(r, s):
    n = s["square"]
    r = np.asarray(r)
    if r.shape != (n,):
        return f"shape {r.shape}, expected ({n},)"
    if abs(r.mean() / n - 0.5) > 1e-3:
        return f"column sums average {r.mean()}, expected about {n / 2}"
    return None


def _expect_mask_sum(r, s):
    n = s["square"] // 2
    # half the uniforms pass, averaging 0.75: n^2 * 0.375, give or take a few sqrt(n^2 * 0.1)
    if abs(float(r) - n * n * 0.375) > 8 * np.sqrt(n * n * 0.11) + 1e-9:
        return f"{float(r)}, expected about {n * n * 0.375}"
    return None


def _expect_mask_rows(r, s):
    n = s["square"] // 2
    r = np.asarray(r)
    if r.shape != (n,):
        return f"shape {r.shape}, expected ({n},)"
    # rows chosen by column 0 > 0.5: column 0 averages 0.75, the others 0.5
    tol = 8 * np.sqrt(1 / (12 * n / 2))
    if abs(r[0] - 0.75) > tol or not np.all(np.abs(r[1:] - 0.5) < tol):
        return f"column means off: first {r[0]}, others {r[1:].min()}..{r[1:].max()}"
    return None


def array_workloads(s) -> list:
    sq, sc = s["square"], s["square_chunk"]
    vec, vc = s["vector"], s["vector_chunk"]
    mm, mc = s["matmul"], s["matmul_chunk"]
    rt = s["rechunk_to"]
    rng = np.random.default_rng(7)
    small_square = rng.random((300, 300))
    small_vector = rng.random(100_000)
    return [
        ArrayWorkload(
            f"(x + x.T).mean(axis=0), {sq}^2 in {sc}^2 chunks",
            lambda e: e.random((sq, sq), (sc, sc), 1),
            _transpose_mean,
            small_square,
            (70, 70),
            _expect_transpose_mean,
        ),
        ArrayWorkload(
            f"x.sum(), {vec:.0e} f64 in {vc:.0e} chunks",
            lambda e: e.random((vec,), (vc,), 2),
            lambda e, x: float(e.compute(x.sum())),
            small_vector,
            (9_000,),
            _expect_sum,
        ),
        ArrayWorkload(
            f"x.std(), {vec:.0e} f64 in {vc:.0e} chunks",
            lambda e: e.random((vec,), (vc,), 3),
            lambda e, x: float(e.compute(x.std())),
            small_vector,
            (9_000,),
            _expect_std,
        ),
        ArrayWorkload(
            f"(m @ m.T).sum(), {mm}^2 in {mc}^2 chunks",
            lambda e: e.random((mm, mm), (mc, mc), 4),
            lambda e, m: float(e.compute((m @ m.T).sum())),
            small_square,
            (70, 70),
            _expect_matmul,
        ),
        ArrayWorkload(
            f"x.rechunk(({sq}, {rt})).sum(axis=0), {sq}^2 from {sc}^2 chunks",
            lambda e: e.random((sq, sq), (sc, sc), 5),
            lambda e, x: e.compute(e.rechunk(x, (x.shape[0], rt)).sum(axis=0)),
            small_square,
            (70, 70),
            _expect_rechunk,
        ),
        # Boolean masks: the result's chunk sizes are unknown until computed (half the side
        # of the other square workloads: a 2-d mask copies what it selects).
        ArrayWorkload(
            f"x[x[:, 0] > 0.5].mean(axis=0), {sq // 2}^2 in {sc}^2 chunks",
            lambda e: e.random((sq // 2, sq // 2), (sc, sc), 6),
            lambda e, x: e.compute(x[x[:, 0] > 0.5].mean(axis=0)),
            small_square,
            (70, 70),
            _expect_mask_rows,
        ),
        ArrayWorkload(
            f"x[x > 0.5].sum(), {sq // 2}^2 in {sc}^2 chunks",
            lambda e: e.random((sq // 2, sq // 2), (sc, sc), 7),
            lambda e, x: float(e.compute(x[x > 0.5].sum())),
            small_square,
            (70, 70),
            _expect_mask_sum,
        ),
    ]


def memory_workloads(s) -> list:
    """The larger-than-memory case: the transpose-mean of an array stored on disk (Zarr,
    read by every engine) on workers whose memory limit is a fraction of it (3.2 GB at full
    size against 1 GiB per worker). Stored, not random: partita generates random input
    inside the kernels that read it, so a random array never exists in memory there."""
    w = array_workloads(s)[0]
    mem = s["memory_limit"]
    out = [
        ArrayWorkload(
            w.name.replace(" in ", " stored as Zarr in ") + f", workers limited to {mem / 2**20:.0f} MiB",
            None,
            w.body,
            w.small,
            w.small_chunks,
            w.expect,
        )
    ]
    for x in out:
        x.group = "memory"
        x.stored = True
    return out


# --------------------------------------------------------------------------------------
# scheduler overhead


class TaskWorkload:
    group = "tasks"

    def __init__(self, n):
        self.n = n
        self.name = f"{n} delayed Python calls + sum tree (fan-in 100)"

    def run(self, e):
        from taskfns import inc, total

        f_inc, f_total = e.delayed(inc), e.delayed(total)
        parts = [f_inc(i) for i in range(self.n)]
        while len(parts) > 1:
            parts = [f_total(parts[i : i + 100]) for i in range(0, len(parts), 100)]
        return e.compute_object(parts[0])

    def expect(self, r):
        want = self.n * (self.n + 1) // 2
        return None if r == want else f"{r}, expected {want}"


# --------------------------------------------------------------------------------------
# H2O group-by questions


class Question:
    """One H2O group-by question. Most are `group_by(keys).agg(aggs)`, the same polars
    expressions for Polars and partita (`aggs`); the others give `polars` and `partita`
    queries of their own."""

    group = "frames"

    def __init__(self, name, keys, dask, aggs=None, polars=None, partita=None, split_out=1):
        self.name = name
        self.keys = keys
        self.dask = dask
        self.polars = polars or (lambda d: d.group_by(*keys).agg(*aggs))
        self.partita = partita or (lambda df: df.group_by(*keys, split_out=split_out).agg(*aggs))


def _dask_q8(df):
    import pandas as pd

    x = df[~df["v3"].isna()][["id6", "v3"]]
    return x.groupby("id6", dropna=False, observed=True).apply(
        lambda g: g.nlargest(2, columns="v3"),
        include_groups=False,
        meta=pd.DataFrame({"v3": pd.Series([], dtype="float64")}),
    )


def _dask_q9(df):
    import pandas as pd

    x = df[["id2", "id4", "v1", "v2"]]
    return x.groupby(["id2", "id4"], dropna=False, observed=True).apply(
        lambda g: pd.Series({"r2": g[["v1", "v2"]].corr().iloc[0, 1] ** 2}),
        include_groups=False,
        meta={"r2": "float64"},
    )


def _pearson_r2(x, y):
    cov = (pl.col(x) * pl.col(y)).mean() - pl.col(x).mean() * pl.col(y).mean()
    den = pl.col(x).std(ddof=0) * pl.col(y).std(ddof=0)
    nan = pl.lit(0.0) / pl.lit(0.0)  # a NaN literal does not survive JSON
    return pl.when(den == 0).then(nan).otherwise(cov / den).pow(2).alias("r2")


def questions() -> list:
    dg = dict(dropna=False, observed=True)
    c = pl.col
    ids = ["id1", "id2", "id3", "id4", "id5", "id6"]
    return [
        Question(
            "q1 sum v1 by id1",
            ["id1"],
            lambda d: d.groupby("id1", **dg).agg({"v1": "sum"}),
            aggs=[c("v1").sum()],
        ),
        Question(
            "q2 sum v1 by id1:id2",
            ["id1", "id2"],
            lambda d: d.groupby(["id1", "id2"], **dg).agg({"v1": "sum"}),
            aggs=[c("v1").sum()],
        ),
        Question(
            "q3 sum v1 mean v3 by id3",
            ["id3"],
            lambda d: d.groupby("id3", **dg).agg({"v1": "sum", "v3": "mean"}, split_out=2),
            aggs=[c("v1").sum(), c("v3").mean()],
            split_out=2,
        ),
        Question(
            "q4 mean v1:v3 by id4",
            ["id4"],
            lambda d: d.groupby("id4", **dg).agg({"v1": "mean", "v2": "mean", "v3": "mean"}),
            aggs=[c("v1").mean(), c("v2").mean(), c("v3").mean()],
        ),
        Question(
            "q5 sum v1:v3 by id6",
            ["id6"],
            lambda d: d.groupby("id6", **dg).agg({"v1": "sum", "v2": "sum", "v3": "sum"}, split_out=2),
            aggs=[c("v1").sum(), c("v2").sum(), c("v3").sum()],
            split_out=2,
        ),
        Question(
            "q6 median sd v3 by id4:id5",
            ["id4", "id5"],
            lambda d: d.groupby(["id4", "id5"], **dg).agg({"v3": ["median", "std"]}, shuffle_method="tasks"),
            aggs=[c("v3").median().alias("median_v3"), c("v3").std().alias("sd_v3")],
            split_out=2,
        ),
        Question(
            "q7 max v1 - min v2 by id3",
            ["id3"],
            lambda d: d.groupby("id3", **dg)
            .agg({"v1": "max", "v2": "min"}, split_out=2)
            .assign(range_v1_v2=lambda t: t["v1"] - t["v2"])[["range_v1_v2"]],
            aggs=[(c("v1").max() - c("v2").min()).alias("range_v1_v2")],
            split_out=2,
        ),
        Question(
            "q8 largest two v3 by id6",
            ["id6", "v3"],
            _dask_q8,
            polars=lambda d: d.drop_nulls("v3")
            .group_by("id6")
            .agg(c("v3").top_k(2).alias("largest2_v3"))
            .explode("largest2_v3"),
            # top_k needs a polars feature partita's Rust polars leaves out: the same
            # answer through sort + head
            partita=lambda df: df.drop_nulls(["v3"])
            .group_by("id6", split_out=2)
            .agg(c("v3").sort(descending=True).head(2).alias("largest2_v3"))
            .explode("largest2_v3"),
        ),
        Question(
            "q9 regression v1 v2 by id2:id4",
            ["id2", "id4"],
            _dask_q9,
            polars=lambda d: d.group_by("id2", "id4").agg((pl.corr("v1", "v2") ** 2).alias("r2")),
            # pl.corr needs a polars feature partita's Rust polars leaves out: Pearson's r
            # from means and population standard deviations (NaN for a constant column)
            partita=lambda df: df.group_by("id2", "id4", split_out=2).agg(_pearson_r2("v1", "v2")),
        ),
        Question(
            "q10 sum v3 count by id1:id6",
            ids,
            lambda d: d.groupby(ids, **dg).agg({"v3": "sum", "v1": "size"}, split_out=4),
            aggs=[c("v3").sum(), pl.len().alias("count")],
            split_out=4,
        ),
    ]


def normalize(result, keys) -> pl.DataFrame:
    """Any engine's group-by answer as a polars frame: key columns first, then the values
    in the order the question names them, rows sorted by all columns."""
    import pandas as pd

    if isinstance(result, (pd.DataFrame, pd.Series)):
        if isinstance(result, pd.Series):
            result = result.to_frame()
        if isinstance(result.columns, pd.MultiIndex):
            result.columns = ["_".join(str(p) for p in c if p) for c in result.columns]
        index_names = [n for n in result.index.names if n is not None]
        result = result.reset_index(level=index_names if index_names else None, drop=not index_names)
        result = result[[c for c in result.columns if not str(c).startswith("level_")]]
        result = pl.from_pandas(result)
    keyed = [k for k in keys if k in result.columns]
    values = [c for c in result.columns if c not in keyed]
    out = result.select(keyed + values)
    out.columns = keyed + [f"value{i}" for i in range(len(values))]
    return out.sort(out.columns, nulls_last=True)


def compare_frames(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """None when equal within float tolerance, else what differs."""
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    for g, w in zip(got.columns, want.columns):
        a, b = got[g], want[w]
        if a.dtype.is_numeric() and b.dtype.is_numeric():
            av = a.cast(pl.Float64).to_numpy()
            bv = b.cast(pl.Float64).to_numpy()
            if not np.allclose(av, bv, rtol=1e-6, atol=1e-9, equal_nan=True):
                bad = int(np.argmax(~np.isclose(av, bv, rtol=1e-6, atol=1e-9, equal_nan=True)))
                return f"column {g}: row {bad} is {av[bad]}, expected {bv[bad]}"
        elif a.dtype != b.dtype:
            return f"column {g} is {a.dtype}, expected {b.dtype}"
        elif a.to_list() != b.to_list():
            return f"column {g} differs"
    return None


# --------------------------------------------------------------------------------------
# H2O join questions


class JoinQuestion:
    group = "joins"

    def __init__(self, name, right, key, how):
        self.name = name
        self.right = right
        self.key = key
        self.how = how


def join_questions() -> list:
    return [
        JoinQuestion("join q1 small inner on int", "small", "id1", "inner"),
        JoinQuestion("join q2 medium inner on int", "medium", "id2", "inner"),
        JoinQuestion("join q3 medium left on int", "medium", "id2", "left"),
        JoinQuestion("join q4 medium inner on factor", "medium", "id5", "inner"),
        JoinQuestion("join q5 big inner on int", "big", "id3", "inner"),
    ]


def join_fingerprint(result) -> list:
    """Rows, the sums of v1 and v2, and v2's null count: every engine must agree."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        result = pl.from_pandas(result)
    v2 = result["v2"]
    return [
        result.height,
        round(float(result["v1"].sum()), 2),
        round(float(v2.sum()), 2),
        int(v2.null_count()),
    ]


def workloads(s) -> list:
    return (
        array_workloads(s)
        + [TaskWorkload(s["trivial"])]
        + questions()
        + join_questions()
        + memory_workloads(s)
    )


def make_engine_groups(name: str) -> tuple:
    """The workload groups an engine runs, without importing its library."""
    return {
        "numpy": ("arrays",),
        "polars": ("frames", "joins"),
        "partita-threads": ("arrays", "frames", "joins", "tasks"),
        "partita-cluster": ("arrays", "frames", "joins", "tasks", "memory"),
        "dask-threads": ("arrays", "frames", "joins", "tasks"),
        "dask-distributed": ("arrays", "frames", "joins", "tasks", "memory"),
    }[name]

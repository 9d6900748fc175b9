"""partita: Dask-style lazy arrays and dataframes whose work is done in Rust.

    import partita as pt
    x = pt.random.random((4000, 4000), chunks=(1000, 1000), seed=0)
    (x + x.T).mean(axis=0).compute()          # a numpy array

    df = pt.from_polars(polars_frame, npartitions=4)
    df.filter(pl.col("x") > 1).group_by("k").agg(pl.col("v").sum()).compute()  # polars
"""

import os as _os


def _openblas_core_hint() -> None:
    """Name OpenBLAS's kernel family from the CPU's flags, unless the user has.

    When the extension is built with the ``blas`` feature, OpenBLAS picks its kernels by CPU
    model as it loads, and a release older than the CPU falls back to its slowest ones
    (Debian 12's OpenBLAS 0.3.21 on a 2024 Xeon: ``Prescott``, 5x slower matrix products).
    It reads ``OPENBLAS_CORETYPE`` only then, so this runs before the extension is imported;
    worker processes inherit it.
    """
    if "OPENBLAS_CORETYPE" in _os.environ:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
        _os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        _os.environ["OPENBLAS_CORETYPE"] = "Haswell"


_openblas_core_hint()

from ._partita import (
    AuthError,
    LocalCluster,
    CancelledError,
    CodecError,
    ComputeError,
    DTypeError,
    GraphError,
    InternalError,
    PartitaError,
    PartitaIOError,
    PartitaNotImplementedError,
    SchemaError,
    ShapeError,
    TransportError,
)
from . import _partita, random
from .array import (
    Array,
    abs,
    arange,
    arccos,
    arcsin,
    arctan,
    arctan2,
    asarray,
    ceil,
    clip,
    concatenate,
    cos,
    cosh,
    exp,
    expm1,
    eye,
    floor,
    from_numpy,
    full,
    hypot,
    isfinite,
    isinf,
    isnan,
    linspace,
    map_blocks,
    log,
    log1p,
    log2,
    log10,
    matmul,
    maximum,
    minimum,
    ones,
    read_zarr,
    round,
    sign,
    sin,
    sinh,
    sqrt,
    square,
    stack,
    tan,
    tanh,
    tensordot,
    trunc,
    where,
    zeros,
)
from ._futures import (
    Client,
    Delayed,
    Future,
    as_completed,
    current_task,
    delayed,
    fire_and_forget,
    get_client,
    get_task_stream,
    rejoin,
    secede,
    wait,
    worker_client,
)
from ._coordination import Event, Lock, Pub, Queue, Semaphore, Sub, Variable
from .diagnostics import GraphPicture, ProgressBar
from .frame import DataFrame, GroupBy, concat, from_polars, read_csv, read_ipc, read_parquet


def compute(*collections, scheduler=None, num_workers=None):
    """Compute several arrays, frames and delayed values in one run, sharing the work they
    have in common; returns a tuple of results (numpy arrays, polars frames, Python
    objects). Other arguments pass through."""
    from .diagnostics import run_with_progress

    lazy = [i for i, c in enumerate(collections) if isinstance(c, (Array, DataFrame, Delayed))]
    if not lazy:
        return tuple(collections)
    rust = [collections[i]._rust for i in lazy]
    computed = run_with_progress(lambda p: _partita.compute(rust, scheduler, num_workers, p))
    out = list(collections)
    for i, value in zip(lazy, computed):
        out[i] = value
    return tuple(out)


__all__ = [name for name in dir() if not name.startswith("_")]

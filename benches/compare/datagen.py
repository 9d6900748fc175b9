"""The H2O db-benchmark tables, written once as parquet files and shared by every engine.

Group-by table (groupby-datagen.R's layout, K = 100): id1, id2 strings "id001".."id100",
id3 strings "id0000000001".. over rows/K values, id4, id5 ints 1..100, id6 ints over rows/K
values, v1 1..5, v2 1..15, v3 uniform [0, 100) with 6 decimals; 10 files.

Join tables (join-datagen.R's layout): `x` of `rows` rows (int keys id1..id3 over
1..rows/1e6, 1..rows/1e3, 1..rows, their string forms "id<k>" as id4..id6, v1), and `small`
(rows/1e6), `medium` (rows/1e3), `big` (rows) right tables whose unique keys cover 90% of x's
key range plus 10% that match nothing; x and big in 10 files each.

Stored array (the larger-than-memory case): an n x n float64 array of uniform numbers as a
Zarr v3 store, written by partita (zstd chunks, which Python's zarr and Dask read).

Each table is written to a temporary directory renamed into place, so an interrupted run
never leaves half a table that a later run would trust.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import polars as pl

FILES = 10
K = 100


def _atomic_dir(path, fill):
    if os.path.isdir(path):
        return path
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    fill(tmp)
    os.replace(tmp, path)
    return path


def groupby_table(root: str, rows: int) -> str:
    def fill(tmp):
        rng = np.random.default_rng(20261128)
        groups = max(rows // K, 1)
        for f in range(FILES):
            n = rows // FILES + (1 if f < rows % FILES else 0)
            ints = lambda hi: rng.integers(1, hi + 1, n, dtype=np.int32)  # noqa: E731
            df = pl.DataFrame(
                {
                    "id1": ints(K),
                    "id2": ints(K),
                    "id3": ints(groups),
                    "id4": ints(K),
                    "id5": ints(K),
                    "id6": ints(groups),
                    "v1": ints(5),
                    "v2": ints(15),
                    "v3": np.round(rng.random(n) * 100, 6),
                }
            ).with_columns(
                pl.format("id{}", pl.col("id1").cast(pl.String).str.zfill(3)).alias("id1"),
                pl.format("id{}", pl.col("id2").cast(pl.String).str.zfill(3)).alias("id2"),
                pl.format("id{}", pl.col("id3").cast(pl.String).str.zfill(10)).alias("id3"),
            )
            df.write_parquet(os.path.join(tmp, f"part.{f}.parquet"))

    return _atomic_dir(os.path.join(root, f"h2o-groupby-{rows:.0e}"), fill)


def join_tables(root: str, rows: int) -> str:
    def right(rng, n, level, sizes):
        unique = rng.permutation(np.arange(n // 10 + 1, n + n // 10 + 1, dtype=np.int64))
        cols = {}
        for lv in range(1, level + 1):
            cols[f"id{lv}"] = unique if lv == level else rng.integers(1, sizes[lv - 1] + 1, n)
        df = pl.DataFrame(cols)
        df = df.with_columns(
            [pl.format("id{}", pl.col(f"id{lv}")).alias(f"id{lv + 3}") for lv in range(1, level + 1)]
        )
        return df.with_columns(pl.Series("v2", rng.integers(0, 10_000, n) / 100.0))

    def fill(tmp):
        rng = np.random.default_rng(20261129)
        sizes = [max(rows // 1_000_000, 1), max(rows // 1_000, 1), max(rows, 1)]
        for name, level in [("small", 1), ("medium", 2)]:
            os.makedirs(os.path.join(tmp, name))
            right(rng, sizes[level - 1], level, sizes).write_parquet(
                os.path.join(tmp, name, "part.0.parquet")
            )
        big = right(rng, sizes[2], 3, sizes)
        os.makedirs(os.path.join(tmp, "big"))
        os.makedirs(os.path.join(tmp, "x"))
        for f in range(FILES):
            start = rows * f // FILES
            n = rows * (f + 1) // FILES - start
            big.slice(start, n).write_parquet(os.path.join(tmp, "big", f"part.{f}.parquet"))
            x = pl.DataFrame({f"id{lv + 1}": rng.integers(1, sizes[lv] + 1, n) for lv in range(3)})
            x = x.with_columns(
                [pl.format("id{}", pl.col(f"id{lv}")).alias(f"id{lv + 3}") for lv in (1, 2, 3)]
            ).with_columns(pl.Series("v1", rng.integers(0, 10_000, n) / 100.0))
            x.write_parquet(os.path.join(tmp, "x", f"part.{f}.parquet"))

    return _atomic_dir(os.path.join(root, f"h2o-join-{rows:.0e}"), fill)


def stored_array(root: str, n: int, chunk: int) -> str:
    """A Zarr store of n x n uniform float64 in chunk x chunk blocks; returns its path."""
    import partita as pt

    def fill(tmp):
        x = pt.random.random((n, n), chunks=(chunk, chunk), seed=1)
        x.to_zarr(os.path.join(tmp, "x.zarr"))

    return os.path.join(_atomic_dir(os.path.join(root, f"uniform-{n}x{n}-{chunk}"), fill), "x.zarr")

"""map_blocks with Python functions, shared computation, progress bars and graph pictures."""

import io
import os
import shutil

import numpy as np
import polars as pl
import pytest

import partita as pt


def data(shape=(13, 9), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.local_only
def test_map_blocks_matches_numpy(scheduler):
    x = data()
    a = pt.from_numpy(x, chunks=(5, 4))
    seen = []

    def kernel(block):
        seen.append(block.shape)
        return np.sin(block) * 2 + block.sum()

    out = a.map_blocks(kernel, dtype="float64").compute(scheduler=scheduler)
    # Blockwise, so a block's own sum: compare block by block.
    expected = np.empty_like(x)
    for r in range(0, 13, 5):
        for c in range(0, 9, 4):
            b = x[r : r + 5, c : c + 4]
            expected[r : r + 5, c : c + 4] = np.sin(b) * 2 + b.sum()
    np.testing.assert_allclose(out, expected)
    assert sorted(set(seen)) == [(3, 1), (3, 4), (5, 1), (5, 4)]


def test_map_blocks_several_arrays_and_inferred_dtype(scheduler):
    x, y = data(seed=1), data(seed=2)
    a = pt.from_numpy(x, chunks=(5, 4))
    b = pt.from_numpy(y, chunks=(4, 9))  # aligned to common chunks first
    out = pt.map_blocks(lambda p, q: p > q, a, b)
    assert out.dtype == np.dtype(bool)
    np.testing.assert_array_equal(out.compute(scheduler=scheduler), x > y)


def test_map_blocks_with_new_chunks(scheduler):
    x = data((8, 6))
    a = pt.from_numpy(x, chunks=(4, 3))
    out = a.map_blocks(lambda b: b[:2, :], chunks=((2, 2), (3, 3)))
    assert out.shape == (4, 6)
    np.testing.assert_allclose(out.compute(scheduler=scheduler), np.concatenate([x[0:2], x[4:6]]))


def test_map_blocks_errors_name_the_problem(scheduler):
    a = pt.from_numpy(data(), chunks=(5, 4))
    with pytest.raises(pt.ShapeError, match=r"map_blocks-\d+', \d+, \d+\) failed.*shape \[1, \d\]"):
        a.map_blocks(lambda b: b[:1], dtype="float64").compute(scheduler=scheduler)

    def boom(b):
        raise ValueError("kernel exploded")

    with pytest.raises(pt.ComputeError, match="kernel exploded"):
        a.map_blocks(boom, dtype="float64").compute(scheduler=scheduler)
    with pytest.raises(pt.ComputeError, match="NumPy array"):
        a.map_blocks(lambda b: "not an array", dtype="float64").compute(scheduler=scheduler)
    with pytest.raises(pt.ShapeError, match="axes"):
        a.map_blocks(lambda b: b, chunks=(5,))
    # Still usable afterwards.
    np.testing.assert_allclose(a.map_blocks(lambda b: b + 1).compute(scheduler=scheduler), data() + 1)


@pytest.mark.local_only
def test_compute_several_at_once(scheduler):
    x = data()
    calls = []

    def counted(b):
        calls.append(1)
        return b * 2

    a = pt.from_numpy(x, chunks=(5, 9)).map_blocks(counted, dtype="float64")
    frame = pl.DataFrame({"k": [1, 2, 1, 3], "v": [1.0, 2.0, 3.0, 4.0]})
    df = pt.from_polars(frame, npartitions=2)
    total, col_max, small, plain = pt.compute(
        a.sum(), a.max(axis=0), df.group_by("k").agg(pl.col("v").sum()).sort("k"), 42, scheduler=scheduler
    )
    np.testing.assert_allclose(total, (x * 2).sum())
    np.testing.assert_allclose(col_max, (x * 2).max(axis=0))
    assert small.equals(frame.group_by("k").agg(pl.col("v").sum()).sort("k"))
    assert plain == 42
    # The shared map_blocks ran once per block (3 blocks), not once per consumer.
    assert len(calls) == 3
    with pytest.raises(TypeError, match="arrays, dataframes and delayed values"):
        pt._partita.compute([object()])


def test_progress_bar_reports_every_computation(scheduler):
    out = io.StringIO()
    a = pt.from_numpy(data((40, 40)), chunks=(10, 10))
    with pt.ProgressBar(out=out, dt=0.0):
        a.sum().compute(scheduler=scheduler)
        pt.from_polars(pl.DataFrame({"x": [1, 2, 3]}), npartitions=3).compute(scheduler=scheduler)
    text = out.getvalue()
    assert text.count("100% Completed") >= 2
    assert "[" + "#" * 40 + "]" in text
    # Outside the block nothing is drawn.
    out.truncate(0)
    a.sum().compute(scheduler=scheduler)
    assert out.getvalue() == ""


def test_progress_bar_minimum_and_failure():
    out = io.StringIO()
    with pt.ProgressBar(out=out, minimum=60.0):
        pt.ones((10,), chunks=5).sum().compute()
    assert out.getvalue() == ""
    with pt.ProgressBar(out=out) as bar:
        with pytest.raises(pt.PartitaError):
            pt.ones((10,), chunks=5).map_blocks(lambda b: b[:1]).compute()
    assert "(failed)" in out.getvalue()
    assert bar.last_duration is not None


def test_visualize_writes_dot_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    a = pt.ones((4, 4), chunks=2).sum(axis=0)
    with pytest.warns(RuntimeWarning, match="Graphviz"):
        pic = a.visualize(tmp_path / "graph.png")
    assert pic.format == "dot" and pic.path.endswith("graph.dot")
    text = open(pic.path).read()
    assert text.startswith("digraph partita")
    assert text.count("->") >= 4
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".partita-graph-")]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_visualize_svg_and_png(tmp_path):
    df = pt.from_polars(pl.DataFrame({"x": [1, 2, 3]}), npartitions=2).filter(pl.col("x") > 1)
    svg = df.visualize(tmp_path / "g.svg")
    assert svg.format == "svg" and "<svg" in svg._repr_svg_()
    png = pt.ones((4,), chunks=2).visualize(tmp_path / "g", format="png")
    assert png.path.endswith("g.png") and png._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="cannot draw"):
        df.visualize(tmp_path / "g.bmp")

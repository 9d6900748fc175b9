"""Boolean masks (`x[mask]`): chunk sizes unknown until computed, like dask's; results
against NumPy's `x[mask]` on the same data, on every scheduler."""

import math

import numpy as np
import pytest

import partita as pt


def data(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def test_a_mask_over_rows(scheduler):
    x = data((23, 6))
    a = pt.from_numpy(x, chunks=(5, 4))
    y = a[a[:, 0] > 0]
    assert not y.known
    assert math.isnan(y.shape[0]) and y.shape[1] == 6
    assert all(math.isnan(c) for c in y.chunks[0]) and y.chunks[1] == (4, 2)
    assert math.isnan(y.size) and math.isnan(y.nbytes)
    want = x[x[:, 0] > 0]
    np.testing.assert_array_equal(y.compute(scheduler=scheduler), want)
    np.testing.assert_array_equal(np.asarray(y), want)
    assert "nan" in repr(y) and "unknown" in y._repr_html_()
    with pytest.raises(pt.ShapeError, match="compute_chunk_sizes"):
        len(y)


def test_a_full_mask_keeps_numpys_order(scheduler):
    x = data((17, 11), 1)
    a = pt.from_numpy(x, chunks=(4, 3))
    y = a[a > 0.5]
    assert y.ndim == 1
    np.testing.assert_array_equal(y.compute(scheduler=scheduler), x[x > 0.5])
    # Reductions over the unknown axis are ordinary arrays.
    np.testing.assert_allclose(y.sum().compute(scheduler=scheduler), x[x > 0.5].sum())
    np.testing.assert_allclose(y.mean().compute(scheduler=scheduler), x[x > 0.5].mean())
    np.testing.assert_allclose(y.std(ddof=1).compute(scheduler=scheduler), x[x > 0.5].std(ddof=1))
    assert y.max().compute(scheduler=scheduler) == x[x > 0.5].max()
    assert y.sum().known


def test_elementwise_and_reductions_on_a_selection(scheduler):
    x = data((30, 5), 2)
    row = data((5,), 3)
    a = pt.from_numpy(x, chunks=(7, 2))
    m = a[:, 1] > -0.2
    y = a[m]
    sel = x[x[:, 1] > -0.2]
    z = (2 - y) * 3 + pt.from_numpy(row, chunks=3)
    np.testing.assert_allclose(z.compute(scheduler=scheduler), (2 - sel) * 3 + row)
    np.testing.assert_allclose((row + y).compute(scheduler=scheduler), row + sel)
    np.testing.assert_allclose(pt.exp(y).compute(scheduler=scheduler), np.exp(sel))
    np.testing.assert_allclose((y / y.max(axis=1, keepdims=True)).compute(scheduler=scheduler), sel / sel.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(pt.where(y > 0, y, 0).compute(scheduler=scheduler), np.where(sel > 0, sel, 0))
    np.testing.assert_allclose(y.sum(axis=0).compute(scheduler=scheduler), sel.sum(axis=0))
    np.testing.assert_array_equal(y.argmax(axis=1).compute(scheduler=scheduler), sel.argmax(axis=1))
    np.testing.assert_array_equal(y.astype("int64").compute(scheduler=scheduler), sel.astype("int64"))
    np.testing.assert_allclose(y.clip(-0.5, 0.5).compute(scheduler=scheduler), sel.clip(-0.5, 0.5))
    # Several at once, sharing the mask.
    s, t = pt.compute(y, y.sum(), scheduler=scheduler)
    np.testing.assert_array_equal(s, sel)
    np.testing.assert_allclose(t, sel.sum())


def test_masking_a_selection_again(scheduler):
    x = data((50,), 4)
    a = pt.from_numpy(x, chunks=9)
    y = a[a > -1]
    z = y[y < 1]
    np.testing.assert_array_equal(z.compute(scheduler=scheduler), x[(x > -1)][x[x > -1] < 1])


def test_compute_chunk_sizes_and_persist(scheduler):
    x = data((40, 3), 5)
    x[10:20] = -5.0  # the second and third blocks select nothing
    a = pt.from_numpy(x, chunks=(10, 3))
    y = a[a[:, 0] > 0]
    want = x[x[:, 0] > 0]
    assert y.compute_chunk_sizes(scheduler=scheduler) is y  # in place, like dask
    assert y.known and y.shape == want.shape and sum(y.chunks[0]) == len(want)
    assert all(c > 0 for c in y.chunks[0])
    np.testing.assert_array_equal(y.T.compute(scheduler=scheduler), want.T)
    p = a[a[:, 0] > 0].persist(scheduler=scheduler)
    assert p.known and p.shape == want.shape
    np.testing.assert_array_equal(p[::2].compute(scheduler=scheduler), want[::2])


def test_a_numpy_mask_gives_known_chunks(scheduler):
    x = data((12, 4), 6)
    a = pt.from_numpy(x, chunks=(5, 2))
    m = x[:, 2] > 0
    y = a[m]
    assert y.known and y.shape == x[m].shape
    np.testing.assert_array_equal(y.compute(scheduler=scheduler), x[m])
    np.testing.assert_array_equal(a[x > 0].compute(scheduler=scheduler), x[x > 0])
    np.testing.assert_array_equal(a[m, :].compute(scheduler=scheduler), x[m, :])


def test_empty_selections(scheduler):
    x = data((9, 2), 7)
    a = pt.from_numpy(x, chunks=4)
    y = a[a[:, 0] > 100]
    assert y.compute(scheduler=scheduler).shape == (0, 2)
    assert y.sum().compute(scheduler=scheduler) == 0
    with pytest.raises(pt.ShapeError, match="zero-size"):
        y.min().compute(scheduler=scheduler)
    assert y.compute_chunk_sizes().shape == (0, 2)


def test_what_needs_chunk_sizes_says_so():
    a = pt.from_numpy(data((8, 4)), chunks=3)
    y = a[a > 0]
    for action in [
        lambda: y.T,
        lambda: y.rechunk(2),
        lambda: y[1:],
        lambda: y.reshape(2, -1),
        lambda: y @ y,
        lambda: y.argmin(),
        lambda: a[a[:, 0] > 0] + a,
        lambda: pt.map_blocks(lambda b: b, y),
        lambda: y.to_zarr("/nonexistent/never-written"),
        lambda: pt.concatenate([y, y]),
    ]:
        with pytest.raises(pt.PartitaError, match="compute_chunk_sizes|unknown|boolean-mask"):
            action()
    with pytest.raises(pt.DTypeError, match="bool"):
        a._rust.mask(a._rust)
    with pytest.raises(pt.ShapeError, match=r"\[3\]"):
        a[pt.from_numpy(np.array([True, False, True]))]
    with pytest.raises(pt.ShapeError, match="same mask"):
        a[a[:, 0] > 0] + a[a[:, 1] > 0]

"""partita arrays against NumPy on the same data, on every scheduler."""

import numpy as np
import pytest

import partita as pt


def data(shape=(13, 9), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("chunks", [(5, 4), 3, (13, 9), "auto"])
def test_elementwise_and_reductions_match_numpy(scheduler, chunks):
    x = data()
    a = pt.from_numpy(x, chunks=chunks)
    y = ((a + 1) * 2 - a / 3) ** 2
    np.testing.assert_allclose(y.compute(scheduler=scheduler), ((x + 1) * 2 - x / 3) ** 2)
    np.testing.assert_allclose((2 - a).compute(scheduler=scheduler), 2 - x)
    np.testing.assert_allclose(pt.exp(a).compute(scheduler=scheduler), np.exp(x))
    np.testing.assert_allclose(abs(a).compute(scheduler=scheduler), np.abs(x))
    for axis in [None, 0, 1, (0, 1), -1]:
        np.testing.assert_allclose(a.sum(axis=axis).compute(scheduler=scheduler), x.sum(axis=axis))
        np.testing.assert_allclose(a.mean(axis=axis).compute(scheduler=scheduler), x.mean(axis=axis))
        np.testing.assert_allclose(a.std(axis=axis, ddof=1).compute(scheduler=scheduler), x.std(axis=axis, ddof=1))
        np.testing.assert_allclose(a.max(axis=axis).compute(scheduler=scheduler), x.max(axis=axis))
    np.testing.assert_array_equal(a.argmin(axis=0).compute(scheduler=scheduler), x.argmin(axis=0))
    for axis in [None, 0, 1]:
        for name in ["argmin", "argmax"]:
            got = getattr(a, name)(axis=axis, keepdims=True, split_every=2).compute(scheduler=scheduler)
            np.testing.assert_array_equal(got, getattr(x, name)(axis=axis, keepdims=True))
    kept = a.sum(axis=1, keepdims=True).compute(scheduler=scheduler)
    assert kept.shape == (13, 1)


def test_comparisons_where_and_dtypes(scheduler):
    x = data()
    a = pt.from_numpy(x, chunks=4)
    mask = a > 0
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask.compute(scheduler=scheduler), x > 0)
    np.testing.assert_allclose(pt.where(a > 0, a, 0.0).compute(scheduler=scheduler), np.where(x > 0, x, 0.0))
    ints = pt.arange(10, chunks=3)
    assert ints.dtype == np.int64
    np.testing.assert_array_equal((ints * 2 + 1).compute(scheduler=scheduler), np.arange(10) * 2 + 1)
    np.testing.assert_array_equal(ints.astype("float32").compute(scheduler=scheduler), np.arange(10, dtype="float32"))


def test_slicing_transpose_matmul_and_joining(scheduler):
    x = data((12, 10))
    a = pt.from_numpy(x, chunks=(5, 3))
    for key in [(slice(1, 10, 2), slice(None, None, -1)), (3,), (slice(None), 4), (None, slice(2, 5)), (Ellipsis, 1)]:
        np.testing.assert_allclose(a[key].compute(scheduler=scheduler), x[key])
    np.testing.assert_allclose(a.T.compute(scheduler=scheduler), x.T)
    np.testing.assert_allclose((a @ a.T).compute(scheduler=scheduler), x @ x.T)
    np.testing.assert_allclose(
        pt.concatenate([a, a[:3]], axis=0).compute(scheduler=scheduler), np.concatenate([x, x[:3]], axis=0)
    )
    np.testing.assert_allclose(pt.stack([a, a], axis=1).compute(scheduler=scheduler), np.stack([x, x], axis=1))
    np.testing.assert_allclose(a.reshape(120).compute(scheduler=scheduler), x.reshape(120))
    b = a.rechunk((12, 2))
    assert b.chunks == ((12,), (2, 2, 2, 2, 2))
    np.testing.assert_allclose(b.compute(scheduler=scheduler), x)
    np.testing.assert_allclose(a[[0, 5, 11]].compute(scheduler=scheduler), x[[0, 5, 11]])


def test_creation_and_introspection():
    z = pt.zeros((4, 6), chunks=(2, 3))
    assert z.shape == (4, 6) and z.chunks == ((2, 2), (3, 3)) and z.npartitions == 4
    assert z.dtype == np.float64 and z.nbytes == 4 * 6 * 8 and z.ndim == 2 and len(z) == 4
    np.testing.assert_array_equal(pt.ones((3,), dtype="int32").compute(), np.ones(3, dtype="int32"))
    np.testing.assert_array_equal(pt.full((2, 2), 7).compute(), np.full((2, 2), 7))
    np.testing.assert_allclose(pt.linspace(0, 1, 11, chunks=4).compute(), np.linspace(0, 1, 11))
    np.testing.assert_array_equal(pt.eye(4, chunks=2).compute(), np.eye(4))
    assert "partita.Array" in repr(z)
    html = z._repr_html_()
    assert "<svg" in html and "Bytes" in html


def test_random_numbers_do_not_depend_on_chunks_or_scheduler():
    a = pt.random.random((30, 20), chunks=(7, 6), seed=42).compute(scheduler="sync")
    b = pt.random.random((30, 20), chunks=(30, 20), seed=42).compute(scheduler="threads")
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a < 1)).all()
    c = pt.random.random((30, 20), chunks=(7, 6), seed=43).compute()
    assert not np.array_equal(a, c)
    n = pt.random.normal(5.0, 2.0, size=(20000,), chunks=5000, seed=1).compute()
    assert abs(n.mean() - 5.0) < 0.1 and abs(n.std() - 2.0) < 0.1


def test_zarr_round_trip_and_errors(scheduler, tmp_path):
    x = data((11, 7))
    path = tmp_path / "x.zarr"
    pt.from_numpy(x, chunks=(4, 3)).to_zarr(path, scheduler=scheduler)
    back = pt.read_zarr(path)
    assert back.chunks == ((4, 4, 3), (3, 3, 1))
    np.testing.assert_array_equal(back.compute(scheduler=scheduler), x)
    np.testing.assert_array_equal(pt.read_zarr(str(path), chunks=(11, 7)).T.compute(scheduler=scheduler), x.T)
    # Random numbers written and read back are the ones computed directly.
    r = pt.random.random((9, 9), chunks=(5, 5), seed=3)
    r.T.to_zarr(tmp_path / "r.zarr", scheduler=scheduler)
    np.testing.assert_array_equal(pt.read_zarr(tmp_path / "r.zarr").compute(), r.compute().T)
    with pytest.raises(pt.PartitaError) as info:
        pt.read_zarr(tmp_path / "missing.zarr")
    assert "missing.zarr" in str(info.value)


def test_zarr_stores_cross_with_python_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    x = data((10, 6))
    # partita writes, Python's zarr reads (zstd chunks, Zarr v3).
    pt.from_numpy(x, chunks=(4, 4)).to_zarr(tmp_path / "ours.zarr")
    theirs = zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")
    assert theirs.shape == (10, 6) and theirs.chunks == (4, 4)
    np.testing.assert_array_equal(theirs[:], x)
    # Python's zarr writes, partita reads.
    z = zarr.create_array(str(tmp_path / "zarr.zarr"), shape=(7, 5), chunks=(3, 2), dtype="int32")
    y = np.arange(35, dtype="int32").reshape(7, 5)
    z[:] = y
    back = pt.read_zarr(tmp_path / "zarr.zarr")
    assert back.chunks == ((3, 3, 1), (2, 2, 1)) and back.dtype == np.int32
    np.testing.assert_array_equal(back.compute(), y)


def test_numpy_interop_and_persist():
    x = data((6, 4))
    a = pt.asarray(x, chunks=2)
    assert np.asarray(a).shape == (6, 4)
    p = (a * 2).persist()
    assert p.graph_size() == p.npartitions
    np.testing.assert_allclose(p.compute(), x * 2)
    np.testing.assert_allclose(pt.compute(a, a + 1)[1], x + 1)


def test_errors_are_partita_exceptions_with_the_shapes():
    a = pt.zeros((4, 6), chunks=2)
    b = pt.zeros((5,), chunks=2)
    with pytest.raises(pt.ShapeError) as info:
        a + b
    assert isinstance(info.value, pt.PartitaError)
    assert "6" in str(info.value) and "5" in str(info.value)
    with pytest.raises(pt.PartitaError):
        a.sum(axis=3)
    with pytest.raises(pt.DTypeError):
        pt.from_numpy(np.zeros(3, dtype="complex128"))
    with pytest.raises(TypeError):
        a + "text"
    with pytest.raises(ValueError):
        a.compute(scheduler="nope")
    # Bools given to take are refused, never read as indices 0 and 1; bad axes are errors,
    # not wrapped around. (Boolean masks are test_mask.py's.)
    x = pt.arange(6, chunks=4)
    with pytest.raises(pt.PartitaNotImplementedError, match="boolean mask"):
        x[1:, x > 2]
    with pytest.raises(TypeError, match="boolean mask"):
        x.take([True, False])
    with pytest.raises(TypeError):
        x.take([0.5])
    with pytest.raises(pt.ShapeError, match="axis 2"):
        a.swapaxes(0, 2)
    with pytest.raises(pt.ShapeError, match="axis -3"):
        a.take([0], axis=-3)
    np.testing.assert_array_equal(a.take([1, 0], axis=-1).compute(), np.zeros((4, 2)))

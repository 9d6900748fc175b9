"""Chunked n-d arrays with dask.array's manners; the graphs and kernels are Rust's."""

import builtins
import math
import numbers
import os

import numpy as np

from . import _partita
from .diagnostics import run_with_progress, visualize

_dtype_names = {"bool", "uint8", "int32", "int64", "float32", "float64"}


def _shape(shape):
    if shape is None:
        return []
    if isinstance(shape, numbers.Integral):
        return [int(shape)]
    return [int(s) for s in shape]


def _dtype(dtype, default="float64"):
    if dtype is None:
        return default
    name = np.dtype(dtype).name
    if name not in _dtype_names:
        raise _partita.DTypeError(
            f"unsupported dtype {name}; partita arrays hold bool, uint8, int32, int64, float32 or float64"
        )
    return name


def _chunks(chunks):
    if chunks is None or isinstance(chunks, str) or isinstance(chunks, numbers.Integral):
        return chunks if chunks is not None else "auto"
    chunks = list(chunks)
    if chunks and all(isinstance(c, (tuple, list)) for c in chunks):
        return [list(c) for c in chunks]
    return [int(c) for c in chunks]


def _operand(value):
    if isinstance(value, Array):
        return value._rust
    if isinstance(value, (bool, numbers.Number, np.generic)):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.name in _dtype_names:
        # A NumPy operand joins the graph as data, like dask's (chunks aligned when built).
        return from_numpy(value)._rust
    return None


class Array:
    """A lazy chunked array. Operations build a graph; `compute()` runs it."""

    __array_priority__ = 100  # numpy defers to our reflected operators

    def __init__(self, rust):
        self._rust = rust

    # -- introspection -------------------------------------------------------------
    @property
    def known(self):
        """Whether every chunk size is known: False after selecting with a boolean mask
        (`x[mask]`), until `compute_chunk_sizes()`."""
        return not isinstance(self._rust, _partita.RustFilteredArray)

    @property
    def shape(self):
        return tuple(math.nan if s is None else s for s in self._rust.shape)

    @property
    def chunks(self):
        return tuple(tuple(math.nan if x is None else x for x in c) for c in self._rust.chunks)

    @property
    def numblocks(self):
        return tuple(len(c) for c in self._rust.chunks)

    @property
    def npartitions(self):
        return self._rust.npartitions

    @property
    def dtype(self):
        return np.dtype(self._rust.dtype)

    @property
    def ndim(self):
        return len(self._rust.shape)

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self):
        return self._rust.nbytes if self.known else math.nan

    @property
    def name(self):
        return self._rust.name

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        if not self.known:
            raise _unknown_chunks("len()")
        return self.shape[0]

    def __repr__(self):
        return (
            f"partita.Array<shape={self.shape}, dtype={self.dtype}, "
            f"chunksize={tuple(c[0] if c else 0 for c in self.chunks)}, npartitions={self.npartitions}>"
        )

    def _repr_html_(self):
        from ._repr import array_html

        return array_html(self)

    # -- computing -----------------------------------------------------------------
    def compute(self, scheduler=None, num_workers=None):
        """Compute into a numpy array (scheduler: "threads", the default, "sync", or a Client)."""
        return run_with_progress(lambda p: self._rust.compute(scheduler, num_workers, p))

    def persist(self, scheduler=None, num_workers=None):
        """Compute every block now; later graphs start from the results (whose chunk sizes
        are known, also after a boolean mask). With a Client the blocks stay on the
        workers (like dask's client.persist) until the result is dropped; those of a
        boolean mask's result come here, as their sizes are needed."""
        return Array(run_with_progress(lambda p: self._rust.persist(scheduler, num_workers, p)))

    def compute_chunk_sizes(self, scheduler=None, num_workers=None):
        """Find the chunk sizes a boolean mask left unknown, in place (like dask), and
        return this array. Only the mask is computed (its `True`s counted per block), not
        the selected data."""
        if not self.known:
            rust = self._rust
            self._rust = run_with_progress(lambda p: rust.compute_chunk_sizes(scheduler, num_workers, p))
        return self

    def to_zarr(self, path, scheduler=None, num_workers=None):
        """Write to a Zarr v3 array at `path` (zstd-compressed chunks, Python's zarr reads
        it), computing block by block; the store appears at `path` only when complete."""
        run_with_progress(lambda p: self._rust.to_zarr(os.fspath(path), scheduler, num_workers, p))

    def __array__(self, dtype=None, copy=None):
        out = self.compute()
        return out if dtype is None else out.astype(dtype)

    def graph_size(self):
        """The number of tasks that computing this array runs (before optimization)."""
        return self._rust.graph_size()

    def visualize(self, filename="mydask", format=None):
        """Draw the task graph with Graphviz (SVG/PNG/PDF by extension or `format`); DOT
        text when Graphviz is not installed. Returns a GraphPicture notebooks display."""
        return visualize(self._rust.dot(), filename, format)

    def map_blocks(self, function, *others, dtype=None, chunks=None):
        """`function(block, *other_blocks) -> block` on every block (NumPy arrays in and
        out), like dask's map_blocks; see `partita.map_blocks`."""
        return map_blocks(function, self, *others, dtype=dtype, chunks=chunks)

    # -- elementwise ---------------------------------------------------------------
    def _binary(self, op, other, reflected=False):
        operand = _operand(other)
        if operand is None:
            return NotImplemented
        if self.known and isinstance(operand, _partita.RustFilteredArray):
            # The selection leads: it knows how to broadcast a known array along its axes.
            return Array(operand.binary(op, self._rust, not reflected))
        return Array(self._rust.binary(op, operand, reflected))

    def __add__(self, o):
        return self._binary("add", o)

    def __radd__(self, o):
        return self._binary("add", o, True)

    def __sub__(self, o):
        return self._binary("sub", o)

    def __rsub__(self, o):
        return self._binary("sub", o, True)

    def __mul__(self, o):
        return self._binary("mul", o)

    def __rmul__(self, o):
        return self._binary("mul", o, True)

    def __truediv__(self, o):
        return self._binary("truediv", o)

    def __rtruediv__(self, o):
        return self._binary("truediv", o, True)

    def __floordiv__(self, o):
        return self._binary("floordiv", o)

    def __rfloordiv__(self, o):
        return self._binary("floordiv", o, True)

    def __mod__(self, o):
        return self._binary("mod", o)

    def __rmod__(self, o):
        return self._binary("mod", o, True)

    def __pow__(self, o):
        return self._binary("pow", o)

    def __rpow__(self, o):
        return self._binary("pow", o, True)

    def __and__(self, o):
        return self._binary("and", o)

    def __rand__(self, o):
        return self._binary("and", o, True)

    def __or__(self, o):
        return self._binary("or", o)

    def __ror__(self, o):
        return self._binary("or", o, True)

    def __xor__(self, o):
        return self._binary("xor", o)

    def __rxor__(self, o):
        return self._binary("xor", o, True)

    def __eq__(self, o):
        return self._binary("eq", o)

    def __ne__(self, o):
        return self._binary("ne", o)

    def __lt__(self, o):
        return self._binary("lt", o)

    def __le__(self, o):
        return self._binary("le", o)

    def __gt__(self, o):
        return self._binary("gt", o)

    def __ge__(self, o):
        return self._binary("ge", o)

    __hash__ = None

    def __neg__(self):
        return Array(self._rust.unary("negative"))

    def __pos__(self):
        return self

    def __abs__(self):
        return Array(self._rust.unary("abs"))

    def __invert__(self):
        return Array(self._rust.unary("invert"))

    def __matmul__(self, o):
        if not isinstance(o, Array):
            return NotImplemented
        return Array(self._rust.matmul(o._rust))

    def __rmatmul__(self, o):
        if not isinstance(o, Array):
            return NotImplemented
        return Array(o._rust.matmul(self._rust))

    def astype(self, dtype):
        return Array(self._rust.astype(_dtype(dtype)))

    def clip(self, min=None, max=None):
        low = -np.inf if min is None else min
        high = np.inf if max is None else max
        return Array(self._rust.clip(_operand(low), _operand(high)))

    # -- reductions ----------------------------------------------------------------
    def _reduce(self, name, axis=None, keepdims=False, split_every=None, ddof=0):
        if axis is not None and not isinstance(axis, (tuple, list)):
            axis = [axis]
        axis = None if axis is None else [int(a) for a in axis]
        return Array(self._rust.reduce(name, axis, keepdims, split_every, ddof))

    def sum(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("sum", axis, keepdims, split_every)

    def prod(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("prod", axis, keepdims, split_every)

    def mean(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("mean", axis, keepdims, split_every)

    def var(self, axis=None, ddof=0, keepdims=False, split_every=None):
        return self._reduce("var", axis, keepdims, split_every, ddof)

    def std(self, axis=None, ddof=0, keepdims=False, split_every=None):
        return self._reduce("std", axis, keepdims, split_every, ddof)

    def min(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("min", axis, keepdims, split_every)

    def max(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("max", axis, keepdims, split_every)

    def any(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("any", axis, keepdims, split_every)

    def all(self, axis=None, keepdims=False, split_every=None):
        return self._reduce("all", axis, keepdims, split_every)

    def argmin(self, axis=None, keepdims=False, split_every=None):
        return Array(self._rust.argreduce("argmin", axis, keepdims, split_every))

    def argmax(self, axis=None, keepdims=False, split_every=None):
        return Array(self._rust.argreduce("argmax", axis, keepdims, split_every))

    # -- shape ---------------------------------------------------------------------
    @property
    def T(self):
        return self.transpose()

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = axes[0]
        return Array(self._rust.transpose([int(a) for a in axes] if axes else None))

    def swapaxes(self, a, b):
        return Array(self._rust.swapaxes(_axis(a, self.ndim, "swapaxes"), _axis(b, self.ndim, "swapaxes")))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = shape[0]
        return Array(self._rust.reshape([int(s) for s in shape]))

    def rechunk(self, chunks="auto"):
        return Array(self._rust.rechunk(_chunks(chunks)))

    def take(self, indices, axis=0):
        indices = np.asarray(indices)
        if indices.dtype == np.bool_:
            raise TypeError("take: indices must be integers; select with a boolean mask as x[mask]")
        if indices.size and indices.dtype.kind not in "iu":
            raise TypeError(f"take: indices must be integers, got {indices.dtype}")
        return Array(self._rust.take([int(i) for i in indices.ravel()], _axis(axis, self.ndim, "take")))

    def _mask(self, mask):
        """`self[mask]` for a boolean partita or NumPy array over the leading axes."""
        if isinstance(mask, Array):
            if self.known == mask.known:
                return Array(self._rust.mask(mask._rust))
            raise _partita.ShapeError(
                "a boolean mask and the array it selects from must both have known chunks, or "
                "both be selected by the same mask; call compute_chunk_sizes() first"
            )
        # A NumPy mask is data at hand: count its Trues now, so the result knows its chunks
        # (as dask's does).
        mask = np.asarray(mask)
        if not self.known:
            raise _unknown_chunks("selecting with a NumPy mask")
        return Array(self._rust.mask(from_numpy(mask)._rust)).compute_chunk_sizes(scheduler="sync")

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        # A boolean mask, alone or followed by full slices (`x[mask]`, `x[mask, :]`).
        first = key[0] if key else None
        is_mask = (isinstance(first, Array) and first.dtype == np.bool_) or (
            isinstance(first, np.ndarray) and first.dtype == np.bool_
        )
        if is_mask:
            if builtins.any(not (isinstance(k, slice) and k == slice(None)) for k in key[1:]):
                raise _partita.PartitaNotImplementedError(
                    "a boolean mask combined with other indices is not implemented; select with the mask "
                    "first, then index the result"
                )
            return self._mask(first)
        if not self.known:
            raise _unknown_chunks("indexing")
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            named = sum(1 for k in key if k is not None and k is not Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - named) + key[i + 1 :]
        items = []
        for k in key:
            if k is None:
                items.append(("newaxis",))
            elif isinstance(k, slice):
                if k == slice(None):
                    items.append(("full",))
                else:
                    step = 1 if k.step is None else int(k.step)
                    start = None if k.start is None else int(k.start)
                    stop = None if k.stop is None else int(k.stop)
                    items.append(("slice", start, stop, step))
            elif isinstance(k, (numbers.Integral, np.integer)):
                items.append(("at", int(k)))
            elif isinstance(k, (Array, np.ndarray)) and k.dtype == np.bool_:
                raise _partita.PartitaNotImplementedError(
                    "a boolean mask is implemented on the leading axes only (x[mask], with mask.shape == "
                    "x.shape[:mask.ndim])"
                )
            elif isinstance(k, (list, np.ndarray)) and len(key) == 1:
                return self.take(k, 0)
            else:
                raise TypeError(f"unsupported index {k!r}: use ints, slices, None or ...")
        return Array(self._rust.index(items))


def _unknown_chunks(what):
    """The error for `what` on an array whose chunk sizes a boolean mask left unknown."""
    return _partita.ShapeError(
        f"{what} needs the chunk sizes along axis 0, which are unknown after selecting with a "
        "boolean mask; call compute_chunk_sizes() (or persist()) first"
    )


def _axis(axis, ndim, what):
    """A NumPy-style axis (negative counts from the end), checked."""
    a = int(axis)
    if not -ndim <= a < ndim:
        raise _partita.ShapeError(f"{what}: axis {a} is out of range for an array of {ndim} dimensions")
    return a % ndim


def _wrap_function(name):
    def function(x):
        return Array(asarray(x)._rust.unary(name))

    function.__name__ = name
    function.__doc__ = f"Elementwise `{name}`, like numpy.{name}."
    return function


exp = _wrap_function("exp")
expm1 = _wrap_function("expm1")
log = _wrap_function("log")
log1p = _wrap_function("log1p")
log2 = _wrap_function("log2")
log10 = _wrap_function("log10")
sqrt = _wrap_function("sqrt")
square = _wrap_function("square")
sin = _wrap_function("sin")
cos = _wrap_function("cos")
tan = _wrap_function("tan")
arcsin = _wrap_function("arcsin")
arccos = _wrap_function("arccos")
arctan = _wrap_function("arctan")
sinh = _wrap_function("sinh")
cosh = _wrap_function("cosh")
tanh = _wrap_function("tanh")
floor = _wrap_function("floor")
ceil = _wrap_function("ceil")
round = _wrap_function("round")
trunc = _wrap_function("trunc")
sign = _wrap_function("sign")
isnan = _wrap_function("isnan")
isinf = _wrap_function("isinf")
isfinite = _wrap_function("isfinite")
abs = _wrap_function("abs")


def _binary_function(name):
    def function(a, b):
        a = asarray(a) if not isinstance(a, Array) and _operand(b) is None else a
        if isinstance(a, Array):
            return a._binary(name, b)
        return asarray(b)._binary(name, a, True)

    function.__name__ = name
    return function


maximum = _binary_function("maximum")
minimum = _binary_function("minimum")
arctan2 = _binary_function("arctan2")
hypot = _binary_function("hypot")


def clip(a, a_min=None, a_max=None):
    return asarray(a).clip(a_min, a_max)


def where(condition, x, y):
    """`x` where `condition`, else `y` (arrays or scalars, broadcast)."""
    cond = asarray(condition)
    if not cond.known:
        return Array(cond._rust.where_(_operand(x), _operand(y)))
    return Array(_partita.where_(cond._rust, _operand(x), _operand(y)))


def matmul(a, b):
    return asarray(a) @ asarray(b)


def tensordot(a, b, axes=2):
    a, b = asarray(a), asarray(b)
    if isinstance(axes, numbers.Integral):
        axes_a = list(range(a.ndim - axes, a.ndim))
        axes_b = list(range(axes))
    else:
        axes_a, axes_b = axes
        axes_a = [axes_a] if isinstance(axes_a, numbers.Integral) else list(axes_a)
        axes_b = [axes_b] if isinstance(axes_b, numbers.Integral) else list(axes_b)
    return Array(_partita.tensordot(a._rust, b._rust, [x % a.ndim for x in axes_a], [x % b.ndim for x in axes_b]))


def concatenate(arrays, axis=0):
    arrays = [asarray(a) for a in arrays]
    return Array(_partita.concatenate([a._rust for a in arrays], int(axis) % arrays[0].ndim))


def stack(arrays, axis=0):
    arrays = [asarray(a) for a in arrays]
    return Array(_partita.stack([a._rust for a in arrays], int(axis) % (arrays[0].ndim + 1)))


def from_numpy(array, chunks="auto"):
    """A partita array holding a copy of a numpy array's data."""
    array = np.ascontiguousarray(array)
    if array.dtype.name not in _dtype_names:
        raise _partita.DTypeError(
            f"unsupported dtype {array.dtype.name}; partita arrays hold bool, uint8, int32, int64, float32 or float64"
        )
    return Array(_partita.from_numpy(array, _chunks(chunks)))


def read_zarr(path, chunks=None):
    """A Zarr v3 array on disk as a partita array, read lazily block by block (`chunks`:
    the store's own by default, like `dask.array.from_zarr`)."""
    return Array(_partita.read_zarr(os.fspath(path), None if chunks is None else _chunks(chunks)))


def asarray(a, chunks="auto"):
    """`a` as a partita array (partita arrays pass through)."""
    if isinstance(a, Array):
        return a
    return from_numpy(np.asarray(a), chunks)


def full(shape, fill_value, dtype=None, chunks="auto"):
    if dtype is None:
        dtype = np.asarray(fill_value).dtype
    return Array(_partita.full(_shape(shape), fill_value, _dtype(dtype), _chunks(chunks)))


def zeros(shape, dtype="float64", chunks="auto"):
    return full(shape, 0, dtype, chunks)


def ones(shape, dtype="float64", chunks="auto"):
    return full(shape, 1, dtype, chunks)


def arange(start, stop=None, step=1, dtype=None, chunks="auto"):
    if stop is None:
        start, stop = 0, start
    if dtype is None:
        dtype = np.arange(start, start + step, step).dtype if builtins.all(
            isinstance(v, numbers.Integral) for v in (start, stop, step)
        ) else "float64"
        dtype = "int64" if np.dtype(dtype).kind == "i" else dtype
    return Array(_partita.arange(float(start), float(stop), float(step), _dtype(dtype), _chunks(chunks)))


def linspace(start, stop, num=50, endpoint=True, dtype="float64", chunks="auto"):
    return Array(_partita.linspace(float(start), float(stop), int(num), bool(endpoint), _dtype(dtype), _chunks(chunks)))


def eye(N, M=None, k=0, dtype="float64", chunks="auto"):
    return Array(_partita.eye(int(N), int(N if M is None else M), int(k), _dtype(dtype), _chunks(chunks)))


def map_blocks(function, *arrays, dtype=None, chunks=None):
    """Apply a Python `function` to matching blocks of `arrays` (aligned to common chunks),
    each block a NumPy array; it must return a NumPy array of `dtype` and, by default, the
    input block's shape.

    dtype: the output dtype; when omitted it is found by calling `function` on empty blocks
    (as dask does), falling back to the first array's dtype.
    chunks: the output's block sizes when they differ from the inputs', one tuple of sizes
    per axis (the same number of blocks per axis), or one size per axis for uniform blocks.
    A block of the wrong shape or dtype fails the computation with an error naming it."""
    if not arrays:
        raise TypeError("map_blocks needs at least one array")
    arrays = [a if isinstance(a, Array) else asarray(a) for a in arrays]
    if not builtins.all(a.known for a in arrays):
        raise _unknown_chunks("map_blocks")
    if dtype is None:
        dtype = arrays[0].dtype
        try:
            probe = function(*[np.empty((0,) * a.ndim, dtype=a.dtype) for a in arrays])
            if isinstance(probe, np.ndarray):
                dtype = probe.dtype
        except Exception:
            pass
    spec = None
    if chunks is not None:
        numblocks = arrays[0].numblocks
        chunks = list(chunks)
        if len(chunks) != len(numblocks):
            raise _partita.ShapeError(
                f"map_blocks: chunks {tuple(chunks)} has {len(chunks)} axes, the arrays have {len(numblocks)}"
            )
        spec = [
            [int(c)] * n if isinstance(c, numbers.Integral) else [int(x) for x in c]
            for c, n in zip(chunks, numblocks)
        ]
    return Array(_partita.map_blocks(function, [a._rust for a in arrays], _dtype(dtype), spec))

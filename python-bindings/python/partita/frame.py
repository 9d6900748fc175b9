"""Partitioned dataframes: Dask's partitioning with polars' expressions."""


import polars as pl

from . import _partita
from .diagnostics import run_with_progress, visualize


def _names(columns):
    if columns is None:
        return None
    if isinstance(columns, str):
        return [columns]
    return [str(c) for c in columns]


def _exprs(exprs):
    out = []
    for e in exprs:
        if isinstance(e, (list, tuple)):
            out.extend(_exprs(e))
        elif isinstance(e, str):
            out.append(pl.col(e))
        elif isinstance(e, pl.Expr):
            out.append(e)
        elif isinstance(e, pl.LazyFrame):
            raise TypeError("a polars LazyFrame cannot cross into partita; pass expressions")
        else:
            out.append(pl.lit(e))
    return out


class DataFrame:
    """A lazy dataframe split into partitions, each a polars DataFrame when computed."""

    def __init__(self, rust):
        self._rust = rust

    # -- introspection -------------------------------------------------------------
    @property
    def schema(self):
        """The result's schema (a polars Schema), known without computing."""
        return self._rust.empty().schema

    @property
    def columns(self):
        return list(self._rust.columns)

    @property
    def dtypes(self):
        return list(self.schema.values())

    @property
    def npartitions(self):
        return self._rust.npartitions

    def __repr__(self):
        cols = ", ".join(f"{k}: {v}" for k, v in self.schema.items())
        return f"partita.DataFrame<npartitions={self.npartitions}, {cols}>"

    def _repr_html_(self):
        from ._repr import frame_html

        return frame_html(self)

    def graph_size(self):
        return self._rust.graph_size()

    # -- per partition -------------------------------------------------------------
    def select(self, *exprs):
        return DataFrame(self._rust.select(_exprs(exprs)))

    def with_columns(self, *exprs, **named):
        exprs = _exprs(exprs) + [pl.lit(v).alias(k) if not isinstance(v, pl.Expr) else v.alias(k) for k, v in named.items()]
        return DataFrame(self._rust.with_columns(exprs))

    def filter(self, predicate):
        if isinstance(predicate, (list, tuple)):
            combined = predicate[0]
            for p in predicate[1:]:
                combined = combined & p
            predicate = combined
        return DataFrame(self._rust.filter(predicate))

    def drop(self, *columns):
        names = []
        for c in columns:
            names.extend(_names(c))
        return DataFrame(self._rust.drop(names))

    def rename(self, mapping):
        return DataFrame(self._rust.rename(list(mapping.keys()), list(mapping.values())))

    def fill_null(self, value):
        return DataFrame(self._rust.fill_null(value if isinstance(value, pl.Expr) else pl.lit(value)))

    def drop_nulls(self, subset=None):
        return DataFrame(self._rust.drop_nulls(_names(subset)))

    def explode(self, columns):
        return DataFrame(self._rust.explode(_names(columns)))

    def map_partitions(self, function, schema=None):
        """Run `function(polars.DataFrame) -> polars.DataFrame` on every partition. The
        output schema comes from calling it on an empty frame unless `schema` (a polars
        Schema or dict) is given."""
        schema_of = None if schema is None else pl.DataFrame(schema=schema)
        return DataFrame(self._rust.map_partitions(function, schema_of))

    # -- whole frame ---------------------------------------------------------------
    def group_by(self, *by, split_out=None, split_every=None):
        keys = []
        for b in by:
            keys.extend(_names(b))
        return GroupBy(self, keys, split_out, split_every)

    def join(self, other, on=None, how="inner", left_on=None, right_on=None):
        left_on = _names(left_on if left_on is not None else on)
        right_on = _names(right_on if right_on is not None else on)
        if left_on is None or right_on is None:
            raise ValueError("join needs `on` or both `left_on` and `right_on`")
        return DataFrame(self._rust.join(other._rust, left_on, right_on, how))

    def sort(self, by, *more_by, descending=False, nulls_last=False, npartitions=None):
        keys = _names(by) + [c for b in more_by for c in _names(b)]
        flags = [descending] if isinstance(descending, bool) else list(descending)
        return DataFrame(self._rust.sort(keys, flags, nulls_last, npartitions))

    def unique(self, subset=None):
        return DataFrame(self._rust.unique(_names(subset)))

    def value_counts(self, column):
        return DataFrame(self._rust.value_counts(column))

    def describe(self):
        return DataFrame(self._rust.describe())

    def repartition(self, npartitions):
        return DataFrame(self._rust.repartition(int(npartitions)))

    def shuffle(self, on, npartitions=None):
        return DataFrame(self._rust.shuffle(_names(on), int(npartitions or self.npartitions)))

    # -- computing -----------------------------------------------------------------
    def compute(self, scheduler=None, num_workers=None):
        """Compute into a polars DataFrame (scheduler: "threads", the default, "sync", or a Client)."""
        return run_with_progress(lambda p: self._rust.compute(scheduler, num_workers, p))

    def persist(self, scheduler=None, num_workers=None):
        """Compute every partition now; later graphs start from the results. With a Client
        the partitions stay on the workers (like dask's client.persist) until the result is
        dropped."""
        return DataFrame(run_with_progress(lambda p: self._rust.persist(scheduler, num_workers, p)))

    def head(self, n=5, scheduler=None, num_workers=None):
        """The first `n` rows, computing only the partitions needed."""
        return run_with_progress(lambda p: self._rust.head(n, scheduler, num_workers, p))

    def tail(self, n=5, scheduler=None, num_workers=None):
        """The last `n` rows, computing only the partitions needed."""
        return run_with_progress(lambda p: self._rust.tail(n, scheduler, num_workers, p))

    def __len__(self):
        return run_with_progress(lambda p: self._rust.length(None, None, p))

    def to_pandas(self, scheduler=None, num_workers=None):
        return self.compute(scheduler, num_workers).to_pandas()

    def to_parquet(self, path, scheduler=None, num_workers=None):
        """One parquet file per partition in directory `path` (which must not exist)."""
        return run_with_progress(lambda p: self._rust.to_parquet(str(path), scheduler, num_workers, p))

    def to_csv(self, path, scheduler=None, num_workers=None):
        return run_with_progress(lambda p: self._rust.to_csv(str(path), scheduler, num_workers, p))

    def graph_size(self):
        """The number of tasks that computing this frame runs (before optimization)."""
        return self._rust.graph_size()

    def visualize(self, filename="mydask", format=None):
        """Draw the task graph with Graphviz (SVG/PNG/PDF by extension or `format`); DOT
        text when Graphviz is not installed. Returns a GraphPicture notebooks display."""
        return visualize(self._rust.dot(), filename, format)


class GroupBy:
    """A pending group-by; `agg` makes the frame."""

    def __init__(self, frame, keys, split_out, split_every):
        self._frame, self._keys = frame, keys
        self._split_out, self._split_every = split_out, split_every

    def agg(self, *aggs, **named):
        exprs = _exprs(aggs) + [e.alias(k) for k, e in named.items()]
        return DataFrame(self._frame._rust.group_by_agg(self._keys, exprs, self._split_out, self._split_every))


def from_polars(df, npartitions=1):
    """Split a polars DataFrame into `npartitions` partitions of consecutive rows."""
    if isinstance(df, pl.LazyFrame):
        raise TypeError("a polars LazyFrame cannot cross into partita; collect it or pass a DataFrame")
    return DataFrame(_partita.RustFrame.from_polars(df, int(npartitions)))


def read_parquet(path, columns=None, partition_bytes=None):
    """A parquet file, directory or glob: a partition per file (or row-group span)."""
    return DataFrame(_partita.RustFrame.read_parquet(str(path), _names(columns), partition_bytes))


def read_csv(path, separator=",", has_header=True, blocksize=None):
    """A CSV file (or directory/glob), large files split at line boundaries."""
    return DataFrame(_partita.RustFrame.read_csv(str(path), separator, has_header, blocksize))


def read_ipc(path):
    return DataFrame(_partita.RustFrame.read_ipc(str(path)))


def concat(frames):
    return DataFrame(_partita.RustFrame.concat([f._rust for f in frames]))

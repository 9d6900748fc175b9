"""partita dataframes against polars run directly on the same data, on every scheduler."""

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import partita as pt

PARTITIONS = [1, 3, 7, 40]


def sample(rows=30, seed=0):
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "k": rng.choice(["a", "b", "c", None], size=rows).tolist(),
            "g": rng.integers(0, 5, size=rows),
            "v": rng.normal(size=rows),
            "n": rng.integers(0, 100, size=rows).astype("int32"),
        }
    )


def same(got, expected, by=None):
    if by:
        got, expected = got.sort(by, maintain_order=True), expected.sort(by, maintain_order=True)
    assert_frame_equal(got, expected, check_exact=False, rel_tol=1e-9)


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_per_partition_operations_match_polars(scheduler, npartitions):
    df = sample()
    f = pt.from_polars(df, npartitions=npartitions)
    assert f.npartitions == npartitions
    q = (
        f.filter(pl.col("v") > 0)
        .with_columns((pl.col("v") * 2).alias("w"))
        .select("k", "g", "w")
        .rename({"g": "group"})
    )
    expected = (
        df.filter(pl.col("v") > 0).with_columns((pl.col("v") * 2).alias("w")).select("k", "g", "w").rename({"g": "group"})
    )
    assert q.schema == expected.schema  # known before computing
    same(q.compute(scheduler=scheduler), expected)
    assert len(f) == df.height


@pytest.mark.parametrize("npartitions", PARTITIONS)
def test_group_by_join_and_sort_match_polars(scheduler, npartitions):
    df = sample(50, 1)
    f = pt.from_polars(df, npartitions=npartitions)
    aggs = [pl.col("v").sum().alias("s"), pl.col("v").mean().alias("m"), pl.col("n").median().alias("med"), pl.len()]
    got = f.group_by("k").agg(*aggs).compute(scheduler=scheduler)
    same(got, df.group_by("k").agg(*aggs), by="k")
    other = pl.DataFrame({"k": ["a", "b", "z"], "city": ["Oslo", "Lima", "Pune"]})
    for how in ["inner", "left", "full", "semi", "anti"]:
        got = f.join(pt.from_polars(other, 2), on="k", how=how).compute(scheduler=scheduler)
        expected = df.join(other, on="k", how=how)
        same(got, expected, by=[c for c in expected.columns])
    got = f.sort("g", "v", descending=[True, False]).compute(scheduler=scheduler)
    same(got, df.sort(["g", "v"], descending=[True, False], maintain_order=True))


@pytest.mark.parametrize("npartitions", [1, 3, 7])
def test_expressions_of_aggregations_match_polars(scheduler, npartitions):
    # Written in Python polars, decomposed by partita's Rust polars: H2O q7's range, q9's
    # Pearson r squared from moments, a when over aggregates, powers and literals.
    df = sample(60, 3)
    f = pt.from_polars(df, npartitions=npartitions)
    c = pl.col
    cov = (c("v") * c("n")).mean() - c("v").mean() * c("n").mean()
    den = c("v").std(ddof=0) * c("n").std(ddof=0)
    aggs = [
        (c("v").max() - c("n").min()).alias("range"),
        pl.when(den == 0).then(pl.lit(0.0) / pl.lit(0.0)).otherwise(cov / den).pow(2).alias("r2"),
        pl.when(pl.len() > 3).then(c("n").sum()).otherwise(-1).alias("big"),
        (c("v").sum().abs().sqrt() * 0.5).alias("root"),
    ]
    for split_out in [1, 2]:
        got = f.group_by("k", split_out=split_out).agg(*aggs).compute(scheduler=scheduler)
        same(got, df.group_by("k").agg(*aggs), by="k")


def test_map_partitions_runs_python_functions(scheduler):
    df = sample()
    f = pt.from_polars(df, npartitions=4)

    def add_total(part):
        return part.with_columns((pl.col("v") + pl.col("n")).alias("total"))

    got = f.map_partitions(add_total).compute(scheduler=scheduler)
    same(got, add_total(df))

    def broken(part):
        raise RuntimeError("no luck")

    with pytest.raises(pt.PartitaError) as info:
        f.map_partitions(broken, schema=df.schema).compute(scheduler=scheduler)
    assert "no luck" in str(info.value)


def test_files_head_describe_and_pandas(tmp_path):
    df = sample(100, 2)
    f = pt.from_polars(df, npartitions=5)
    assert f.to_parquet(tmp_path / "out") == 100
    back = pt.read_parquet(tmp_path / "out")
    assert back.npartitions == 5
    same(back.compute(), df)
    same(pt.read_parquet(tmp_path / "out", columns=["g"]).compute(), df.select("g"))
    same(back.head(7), df.head(7))
    same(back.tail(3), df.tail(3))
    described = f.describe().compute()
    assert described["statistic"].to_list()[:2] == ["count", "null_count"]
    assert described["v"][0] == 100
    pandas = f.to_pandas()
    assert list(pandas.columns) == df.columns and len(pandas) == 100
    f.to_csv(tmp_path / "csv")
    csv = pt.read_csv(tmp_path / "csv")
    assert csv.npartitions == 5
    same(csv.compute(), df.with_columns(pl.col("n").cast(pl.Int64)))


def test_errors_name_the_column_and_lazyframes_are_refused():
    f = pt.from_polars(sample(), npartitions=2)
    with pytest.raises(pt.SchemaError) as info:
        f.select(pl.col("nope"))
    assert "nope" in str(info.value)
    with pytest.raises(pt.PartitaError):
        f.group_by("missing").agg(pl.len())
    with pytest.raises(TypeError):
        pt.from_polars(sample().lazy())
    with pytest.raises(pt.PartitaIOError):
        pt.read_parquet("/nonexistent/partita/file.parquet")
    assert "partitions" in f._repr_html_()


def test_expressions_arrive_intact_or_are_refused_by_name():
    """Python polars encodes some expressions in a form partita's Rust polars reads as a
    different expression (or not at all); each must either compute polars' answer or be
    refused with an error naming it, never silently compute something else."""
    df = sample(40, 2)
    f = pt.from_polars(df, npartitions=3)
    cases = [
        pl.col("v").std().alias("x"),
        pl.col("v").var().alias("x"),
        pl.col("v").top_k(2).alias("x"),
        (pl.corr("v", "n") ** 2).alias("x"),
        pl.col("v").max().alias("x"),
    ]
    refused = 0
    for agg in cases:
        try:
            got = f.group_by("g").agg(agg).compute(scheduler="sync")
        except pt.PartitaNotImplementedError as e:
            refused += 1
            assert "cannot be passed to partita" in str(e) and str(agg)[:10] in str(e)
            continue
        expected = df.group_by("g").agg(agg)
        if got.schema["x"] == pl.List(pl.Float64):
            got, expected = got.with_columns(pl.col("x").list.sort()), expected.with_columns(pl.col("x").list.sort())
        same(got, expected, by="g")
    with pytest.raises(TypeError, match="polars expression"):
        f._rust.select([42])  # the Python layer turns plain values into literals first
    # max is among the expressions that do arrive intact
    assert refused < len(cases)

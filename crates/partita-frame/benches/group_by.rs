//! One partition's group-by partial, as the H2O questions make them: the direct path of
//! `partita_frame::groupby::aggregate` against polars' own group-by on the same frame.
//!
//! `cargo bench -p partita-frame --bench group_by` on a frame like one H2O file (1e6 rows):
//! a string key of 100,000 values like `id0000012345` (q3) and an `Int32` key of 100,000
//! values (q5), with `sum`, and the `sum(cast f64)` + `count` a mean decomposes into.
//! Run it as `POLARS_MAX_THREADS=1 cargo bench -p partita-frame --bench group_by` to time
//! polars on one thread, as in a one-thread worker (the direct path is single-threaded).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use polars::prelude::{DataFrame, DataType, Expr, IntoLazy, col, df};

const ROWS: usize = 1_000_000;
const GROUPS: u64 = 100_000;

fn frame() -> DataFrame {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut id3, mut id6, mut v1, mut v3) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROWS {
        id3.push(format!("id{:010}", next() % GROUPS + 1));
        id6.push((next() % GROUPS + 1) as i32);
        v1.push((next() % 5 + 1) as i32);
        v3.push((next() % 10_000) as f64 / 100.0);
    }
    df!("id3" => id3, "id6" => id6, "v1" => v1, "v3" => v3).unwrap()
}

fn polars(frame: &DataFrame, keys: &[String], aggs: &[Expr]) -> DataFrame {
    frame
        .clone()
        .lazy()
        .group_by(keys.iter().map(|k| col(k.as_str())).collect::<Vec<_>>())
        .agg(aggs)
        .collect_with_engine(polars::prelude::Engine::Streaming)
        .map(|r| match r {
            polars_core::query_result::QueryResult::Single(frame) => frame,
            polars_core::query_result::QueryResult::Multiple(_) => unreachable!("one sink"),
        })
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let frame = frame();
    let q3 = vec![
        col("v1").sum().alias("s1"),
        col("v3").cast(DataType::Float64).sum().alias("s3"),
        col("v3").count().alias("n3"),
    ];
    let q5 = vec![col("v1").sum().alias("s1"), col("v3").sum().alias("s3")];
    let mut group = c.benchmark_group("group_by 1e6 rows, 1e5 groups");
    group.sample_size(20);
    for (name, key, aggs) in [
        ("string key (q3)", "id3", &q3),
        ("int key (q5)", "id6", &q5),
    ] {
        let keys = vec![key.to_string()];
        group.bench_function(format!("{name}: partita direct"), |b| {
            b.iter(|| black_box(partita_frame::groupby::aggregate(&frame, &keys, aggs).unwrap()))
        });
        group.bench_function(format!("{name}: polars"), |b| {
            b.iter(|| black_box(polars(&frame, &keys, aggs)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

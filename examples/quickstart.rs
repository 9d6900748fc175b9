//! Quickstart: lazy task graphs computed in parallel with a progress bar.
//!
//! First a graph of plain Rust functions: pi by Monte Carlo, 400 independent sampling tasks
//! (each with its own seed, so the answer is the same on every run and every scheduler)
//! combined by a tree of partial sums, the way Dask reduces. Then a chunked array:
//! `(x + x.T).mean(axis=0)` over a 6000 x 6000 random matrix, streamed block by block.
//! Last a partitioned dataframe: a filter, a new column and a group-by over 2,000,000 rows
//! in 8 polars partitions, checked against polars run directly.
//! Run it with
//!
//! ```text
//! cargo run --release -p partita-examples --bin quickstart
//! ```

use std::sync::Arc;

use partita::array::random;
use partita::delayed::{self, Delayed};
use partita::{
    Collection, ComputeOptions, ExecutionContext, LocalScheduler, ProgressBar, SyncScheduler,
    compute_collections,
};

const TASKS: u64 = 400;
const SAMPLES_PER_TASK: u64 = 250_000;

/// SplitMix64: a tiny, well-mixed generator; good enough for a demo, no dependency needed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How many of `n` random points in the unit square fall inside the quarter circle.
fn hits(seed: u64, n: u64) -> i64 {
    let mut state = seed;
    let unit = |x: u64| (x >> 11) as f64 / (1u64 << 53) as f64;
    (0..n)
        .filter(|_| {
            let x = unit(splitmix64(&mut state));
            let y = unit(splitmix64(&mut state));
            x * x + y * y <= 1.0
        })
        .count() as i64
}

/// Sum in a tree of fan-in 8, like `dask.array.sum(split_every=8)`.
fn tree_sum(mut level: Vec<Delayed<i64>>) -> Delayed<i64> {
    while level.len() > 1 {
        level = level
            .chunks(8)
            .map(|group| delayed::call("partial-sum", |xs: Vec<i64>| xs.iter().sum::<i64>(), group))
            .collect();
    }
    level.pop().expect("at least one task")
}

fn main() -> partita::Result<()> {
    let samples: Vec<Delayed<i64>> = (0..TASKS)
        .map(|i| delayed::value(i).map("sample", |seed| hits(seed, SAMPLES_PER_TASK)))
        .collect();
    let inside = tree_sum(samples);
    let pi = inside.map("estimate", |n| {
        4.0 * n as f64 / (TASKS * SAMPLES_PER_TASK) as f64
    });

    let scheduler = LocalScheduler::new();
    let options = ComputeOptions {
        context: ExecutionContext {
            progress: Some(Arc::new(ProgressBar::new())),
            ..Default::default()
        },
        ..Default::default()
    };
    let (estimate, stats) = pi.compute_with(&scheduler, &options)?;
    println!(
        "pi ~ {estimate:.6} from {} samples ({} tasks on {} threads in {:.2?}, peak {} bytes of results alive)",
        TASKS * SAMPLES_PER_TASK,
        stats.tasks_run,
        scheduler.threads(),
        stats.elapsed,
        stats.peak_live_bytes,
    );

    // The single-threaded scheduler gives the same answer: handy for debugging.
    let again = pi.compute(&SyncScheduler)?;
    assert_eq!(estimate, again, "schedulers disagree");
    println!("the sync scheduler agrees: {again:.6}");

    // A chunked array, dask.array style: nothing is computed until `compute`.
    let x = random::random(&[6000, 6000], [1000, 1000], 42)?;
    let y = (&x + &x.t()?)?.mean(0)?;
    println!(
        "x: shape {:?} in {} blocks of {:?}; y = (x + x.T).mean(axis=0) is {} tasks",
        x.shape(),
        x.npartitions(),
        x.chunks()[0][0],
        partita::Layer::materialize(std::slice::from_ref(y.layer()))?.len()
    );
    let (values, stats) = compute_collections(&[&y], &scheduler, &options)?;
    let first = values[0][0]
        .get::<partita::array::Chunk>()?
        .typed::<f64>()?[[0]];
    println!(
        "y[0] = {first:.6} (expected near 1.0); {} tasks in {:.2?}, at most {} MiB of blocks alive at once \
         of the {} MiB matrix",
        stats.tasks_run,
        stats.elapsed,
        stats.peak_live_bytes >> 20,
        x.nbytes() >> 20
    );

    sales_report(&scheduler, &options)
}

/// A partitioned dataframe: per-partition steps fuse into one polars plan per partition,
/// the group-by runs as per-partition partials merged in a tree.
fn sales_report(scheduler: &LocalScheduler, options: &ComputeOptions) -> partita::Result<()> {
    use partita::frame::DataFrame;
    use partita::frame::polars::prelude::*;
    let rows = 2_000_000i64;
    let table = df!("i" => (0..rows).collect::<Vec<i64>>())
        .and_then(|df| {
            df.lazy()
                .with_columns([
                    (col("i") % lit(7)).alias("store"),
                    ((col("i") * lit(7919) % lit(1000)).cast(DataType::Float64) / lit(10.0))
                        .alias("price"),
                ])
                .collect()
        })
        .map_err(|e| partita::Error::External(e.into()))?;
    let sales = DataFrame::from_polars(table.clone(), 8)?;
    let report = sales
        .filter(col("price").gt(lit(5.0)))?
        .with_columns([(col("price") * lit(1.2)).alias("with_tax")])?
        .group_by(&["store"])?
        .agg([
            len().alias("sales"),
            col("with_tax").sum().alias("revenue"),
            col("price").std(1).alias("price_std"),
        ])?;
    println!(
        "sales by store (schema known before computing: {:?})",
        report.columns()
    );
    let out = report
        .compute_with(scheduler, options)?
        .sort(["store"], SortMultipleOptions::default())
        .map_err(|e| partita::Error::External(e.into()))?;
    println!("{out}");
    let direct = table
        .lazy()
        .filter(col("price").gt(lit(5.0)))
        .group_by([col("store")])
        .agg([len().alias("sales")])
        .sort(["store"], SortMultipleOptions::default())
        .collect()
        .map_err(|e| partita::Error::External(e.into()))?;
    assert!(
        out.column("sales")
            .map_err(|e| partita::Error::External(e.into()))?
            .as_materialized_series()
            .equals(
                direct
                    .column("sales")
                    .map_err(|e| partita::Error::External(e.into()))?
                    .as_materialized_series()
            ),
        "partita and polars disagree"
    );
    println!("polars run directly agrees on the counts");
    Ok(())
}

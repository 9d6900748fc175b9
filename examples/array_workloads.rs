//! The array workloads of the arrays issue, timed, with peak memory: what to compare with
//! Dask. Run with
//!
//! ```text
//! cargo run --release -p partita-examples --bin array_workloads [-- NAME]
//! ```
//!
//! Add `--features partita/blas` for OpenBLAS matrix products (Debian: libopenblas-serial-dev;
//! on a CPU newer than the OpenBLAS release also set `OPENBLAS_CORETYPE`, e.g. `SkylakeX`,
//! see `partita::array::linalg::openblas_core_hint`).
//!
//! NAME is one of `transpose-mean`, `sum-std`, `matmul` (default: all). Each line prints the
//! median of three runs and the process's peak resident memory so far.

use std::time::{Duration, Instant};

// glibc maps every allocation above 32 MB fresh from the kernel, which zeroes it, and
// unmaps it on free: with 80 MB chunks that is most of the time of a streamed reduction.
// mimalloc keeps freed memory for reuse. (Polars' Python package ships a custom global
// allocator for the same reason.) This is the binary's choice; the library imposes none.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use partita::array::{Axes, random};
use partita::{LocalScheduler, Result, Scheduler};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(name: &str, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f()?);
        times.push(start.elapsed());
    }
    println!(
        "{name:<40} median {:>8.3} s   peak RSS {:>7.0} MiB",
        median(times).as_secs_f64(),
        peak_rss_mib()
    );
    Ok(last.expect("runs >= 1"))
}

fn transpose_mean(s: &dyn Scheduler) -> Result<()> {
    let x = random::random(&[20000, 20000], [2000, 2000], 0)?;
    let y = (&x + &x.t()?)?.mean(0)?;
    let out = time("(x + x.T).mean(axis=0), 20000^2", 3, || y.compute::<f64>(s))?;
    assert!((out.mean().unwrap_or(0.0) - 1.0).abs() < 1e-3);
    let (_, stats) = partita::compute_collections(&[&y], s, &Default::default())?;
    println!(
        "  peak of live task results: {:.0} MiB",
        stats.peak_live_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

fn sum_std(s: &dyn Scheduler) -> Result<()> {
    let n = 200_000_000usize;
    let x = random::random(&[n], 10_000_000, 0)?;
    // Dask's anchor generates the numbers as part of the job; so does this line.
    let fresh = x.sum(Axes::All)?;
    time("random 2e8 f64 then sum, streamed", 3, || {
        fresh.compute::<f64>(s)
    })?;
    let fresh_std = x.std(Axes::All, 0)?;
    time("random 2e8 f64 then std, streamed", 3, || {
        fresh_std.compute::<f64>(s)
    })?;
    // Materialize once so the comparison is with summing data that exists, like NumPy.
    let x = time("persist random 2e8 f64", 1, || x.persist(s))?;
    let total = x.sum(Axes::All)?;
    let t = time("sum of 2e8 f64 (1e7 per chunk)", 3, || {
        total.compute::<f64>(s)
    })?;
    let std = x.std(Axes::All, 0)?;
    let sd = time("std of 2e8 f64 (1e7 per chunk)", 3, || {
        std.compute::<f64>(s)
    })?;
    // The memory-bandwidth reference: one pass over the same data in memory.
    let data: Vec<f64> = x.compute::<f64>(s)?.into_raw_vec_and_offset().0;
    // Called through a black-boxed function pointer so the optimizer cannot hoist the pass
    // out of the timing loop (it would, seeing a pure function of unchanged data).
    let sum_fn = std::hint::black_box(plain_sum as fn(&[f64]) -> f64);
    let plain = time("single-pass Rust sum (8 accumulators, 1 thread)", 3, || {
        Ok(sum_fn(&data))
    })?;
    let mean = plain / n as f64;
    let std_fn = std::hint::black_box(plain_sq_dev as fn(&[f64], f64) -> f64);
    let plain_sd = time("two-pass Rust std (1 thread)", 3, || {
        Ok((std_fn(&data, mean) / n as f64).sqrt())
    })?;
    println!(
        "  sums agree: {} vs {}; std {} vs {}",
        t[[]],
        plain,
        sd[[]],
        plain_sd
    );
    Ok(())
}

/// The memory-bandwidth reference: one pass, eight independent accumulators so the adds
/// vectorize.
fn plain_sum(data: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = data.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The sum of squared deviations from `mean`, the same way.
fn plain_sq_dev(data: &[f64], mean: f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = data.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += (c[k] - mean) * (c[k] - mean);
        }
    }
    acc.iter().sum::<f64>() + tail
}

fn matmul(s: &dyn Scheduler) -> Result<()> {
    let m = random::random(&[8000, 8000], [2000, 2000], 0)?;
    let total = m.matmul(&m.t()?)?.sum(Axes::All)?;
    time("(m @ m.T).sum(), 8000^2 in 2000^2 chunks", 3, || {
        total.compute::<f64>(s)
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let which = std::env::args().nth(1);
    let s = LocalScheduler::new();
    println!("local scheduler, {} threads", s.threads());
    let run = |name: &str| which.as_deref().is_none_or(|w| w == name);
    if run("transpose-mean") {
        transpose_mean(&s)?;
    }
    if run("sum-std") {
        sum_std(&s)?;
    }
    if run("matmul") {
        matmul(&s)?;
    }
    Ok(())
}

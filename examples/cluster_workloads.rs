//! The distributed issue's workloads on a `LocalCluster` (a scheduler and two worker
//! processes of one thread each, over loopback QUIC), beside the local scheduler. Run with
//!
//! ```text
//! cargo build --release -p partita-cli      # the `partita` binary the cluster runs
//! cargo run --release -p partita-examples --bin cluster_workloads [-- NAME]
//! ```
//!
//! NAME is one of `trivial [N]`, `chain`, `transfer`, `scatter`, `transpose-mean` (default:
//! all). Each line prints the median of three runs; cluster start-up is not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use partita::array::random;
use partita::distributed::{Client, FutureStatus, LocalCluster, LocalClusterOptions};
use partita::op::{Collect, Identity};
use partita::{
    ComputeOptions, GraphBuilder, Key, Literal, LocalScheduler, OptimizeOptions, Result, Scheduler,
    Value, compute_with,
};

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    Ok(median(times))
}

/// Compute options that run every task as written (no fusion), so each is one task.
fn unfused() -> ComputeOptions {
    ComputeOptions {
        optimize: OptimizeOptions {
            cull: true,
            fuse: false,
        },
        ..ComputeOptions::default()
    }
}

/// One literal, `n` identity tasks reading it, and a tree of `Collect`s (fan-in 100) down
/// to one output: `n` trivial tasks plus about `n / 99` more, all run (no fusion).
fn trivial(n: usize, on: &dyn Scheduler) -> Result<()> {
    let mut b = GraphBuilder::new();
    let root = Key::named("trivial-root");
    b.add_task(root.clone(), Arc::new(Literal(Value::new(1i64))), &[]);
    let mut level: Vec<Key> = (0..n)
        .map(|i| {
            let k = Key::new("trivial", [i as u32]);
            b.add_task(k.clone(), Arc::new(Identity), std::slice::from_ref(&root));
            k
        })
        .collect();
    let mut depth = 0u32;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(100)
            .enumerate()
            .map(|(i, group)| {
                let k = Key::new("trivial-collect", [depth, i as u32]);
                b.add_task(k.clone(), Arc::new(Collect), group);
                k
            })
            .collect();
    }
    let graph = b.build()?;
    let tasks = graph.len();
    let options = unfused();
    let elapsed = time(3, || {
        compute_with(graph.clone(), &level, on, &options).map(|_| ())
    })?;
    println!(
        "{:<12} trivial tasks: {tasks:>7} tasks   median {:>7.3} s   {:>9.0} tasks/s",
        on.name(),
        elapsed.as_secs_f64(),
        tasks as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn transpose_mean(on: &dyn Scheduler) -> Result<()> {
    let x = random::random(&[20000, 20000], [2000, 2000], 0)?;
    let y = (&x + &x.t()?)?.mean(0)?;
    let elapsed = time(3, || {
        let m = y.compute::<f64>(on)?;
        assert!((m.mean().unwrap_or(0.0) - 1.0).abs() < 1e-3);
        Ok(())
    })?;
    println!(
        "{:<12} (x + x.T).mean(axis=0), 20000^2 in 2000^2 chunks   median {:>7.3} s",
        on.name(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// A chain of `n` identity tasks, each reading the one before: latency per hop (scheduler
/// to worker and back), nothing to overlap.
fn chain(n: usize, on: &dyn Scheduler) -> Result<()> {
    let mut b = GraphBuilder::new();
    let mut last = Key::named("chain-root");
    b.add_task(last.clone(), Arc::new(Literal(Value::new(1i64))), &[]);
    for i in 0..n {
        let k = Key::new("chain", [i as u32]);
        b.add_task(k.clone(), Arc::new(Identity), std::slice::from_ref(&last));
        last = k;
    }
    let graph = b.build()?;
    let options = unfused();
    let elapsed = time(3, || {
        compute_with(graph.clone(), std::slice::from_ref(&last), on, &options).map(|_| ())
    })?;
    println!(
        "{:<12} chain of {n} tasks: median {:>7.3} s   {:>7.1} us per task",
        on.name(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

/// One 1 GB value (125,000,000 f64 in one chunk) moved from one worker to the other: two
/// such values are made together (root tasks go to different workers), then a task reading
/// both runs where one of them is and fetches the other. Only that task is timed; each round
/// uses fresh values, so the copy fetched in an earlier round cannot serve.
fn transfer(client: &Client) -> Result<()> {
    const N: usize = 125_000_000;
    let mut times = Vec::new();
    for round in 0..3u64 {
        let x = random::random(&[N], [N], 2 * round)?;
        let y = random::random(&[N], [N], 2 * round + 1)?;
        let made = client.submit_collections(&[&x, &y])?;
        let inputs: Vec<_> = made.into_iter().flatten().collect();
        client.wait(&inputs, None)?;
        let start = Instant::now();
        let both = client.submit_task(
            Key::new("transfer-both", [round as u32]),
            Arc::new(Collect),
            &inputs,
        )?;
        let status = both.wait(None)?;
        times.push(start.elapsed());
        if status != FutureStatus::Finished {
            // The error, with the task that failed.
            both.result()?;
        }
    }
    let t = median(times);
    println!(
        "distributed  1 GB value worker to worker: median {:>7.3} s   {:>5.2} GB/s",
        t.as_secs_f64(),
        (N * 8) as f64 / 1e9 / t.as_secs_f64()
    );
    Ok(())
}

/// One 1 GB value (125,000,000 f64 in one chunk) pushed from this process to a worker
/// (`Client::scatter`) and the future dropped; timed until the worker has kept it.
fn scatter(client: &Client) -> Result<()> {
    const N: usize = 125_000_000;
    let values = random::random(&[N], [N], 7)?.compute::<f64>(&LocalScheduler::new())?;
    let value = Value::new(partita::array::Chunk::new(values));
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let futures = client.scatter(vec![value.clone()])?;
        times.push(start.elapsed());
        client.wait(&futures, None)?;
    }
    let t = median(times);
    println!(
        "distributed  1 GB value scattered to a worker: median {:>7.3} s   {:>5.2} GB/s",
        t.as_secs_f64(),
        (N * 8) as f64 / 1e9 / t.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    let which = std::env::args().nth(1);
    let want = |name: &str| which.as_deref().is_none_or(|w| w == name);
    let cluster = LocalCluster::start(LocalClusterOptions {
        n_workers: 2,
        threads_per_worker: 1,
        ..LocalClusterOptions::default()
    })?;
    let client = cluster.client()?;
    let local = LocalScheduler::with_threads(2);
    // `trivial N` runs one size only.
    let sizes = match std::env::args().nth(2).and_then(|n| n.parse().ok()) {
        Some(n) => vec![n],
        None => vec![10_000, 100_000],
    };
    if want("trivial") {
        for &n in &sizes {
            trivial(n, &local)?;
            trivial(n, &client)?;
        }
    }
    if want("chain") {
        chain(1000, &local)?;
        chain(1000, &client)?;
    }
    if want("transfer") {
        transfer(&client)?;
    }
    if want("scatter") {
        scatter(&client)?;
    }
    if want("transpose-mean") {
        transpose_mean(&local)?;
        transpose_mean(&client)?;
    }
    Ok(())
}

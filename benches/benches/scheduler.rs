//! Per-task overhead of build + optimize + run, on the sync and local schedulers.
//!
//! `cargo bench -p partita-benches --bench scheduler` prints a table of bytes per task (heap
//! allocated at the peak of each phase, from a counting allocator) and then criterion's
//! timings; criterion's throughput line is tasks per second.

// A counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to the system one.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use partita::{
    ExecutionContext, ExecutionPlan, Graph, Key, LocalScheduler, OptimizeOptions, Scheduler,
    SyncScheduler,
};
use partita_benches::{chain, expected_sum, fan_in, tree_reduction};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above the starting level while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

type Workload = (&'static str, usize, fn() -> (Graph, Key));

const WORKLOADS: [Workload; 3] = [
    ("tree-1M", 1_000_000, || tree_reduction(1_000_000, 8)),
    ("chain-100k", 100_000, || chain(100_000)),
    ("fan-in-100k", 100_000, || fan_in(100_000)),
];

fn run(make: fn() -> (Graph, Key), fuse: bool, scheduler: &dyn Scheduler) -> i64 {
    let (graph, root) = make();
    let plan = ExecutionPlan::new(graph, &[root], OptimizeOptions { cull: true, fuse }).unwrap();
    let out = scheduler
        .execute(&plan, &ExecutionContext::default())
        .unwrap();
    *out.values[0].get::<i64>().unwrap()
}

fn report_bytes() {
    eprintln!("\nbytes per task (peak heap above baseline, divided by tasks)");
    eprintln!(
        "{:<14} {:>9} {:>10} {:>10} {:>10}",
        "workload", "tasks", "build", "+plan", "+run"
    );
    for (name, _, make) in WORKLOADS {
        let ((graph, root), build) = peak_during(make);
        let tasks = graph.len();
        let (plan, plan_bytes) = peak_during(|| {
            ExecutionPlan::new(
                graph,
                std::slice::from_ref(&root),
                OptimizeOptions::default(),
            )
            .unwrap()
        });
        let (_, run_bytes) = peak_during(|| {
            LocalScheduler::with_threads(2)
                .execute(&plan, &ExecutionContext::default())
                .unwrap()
        });
        let per = |b: usize| b as f64 / tasks as f64;
        eprintln!(
            "{name:<14} {tasks:>9} {:>10.0} {:>10.0} {:>10.0}",
            per(build),
            per(plan_bytes),
            per(run_bytes)
        );
    }
    eprintln!();
}

fn bench(c: &mut Criterion) {
    report_bytes();
    let local = LocalScheduler::new();
    let mut group = c.benchmark_group("build+optimize+run");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for (name, n, make) in WORKLOADS {
        let expected = if name.starts_with("chain") {
            n as i64
        } else {
            expected_sum(n)
        };
        group.throughput(Throughput::Elements(n as u64));
        let fusions: &[bool] = if name.starts_with("chain") {
            &[true, false]
        } else {
            &[true]
        };
        for &fuse in fusions {
            let label = if fuse {
                name.to_string()
            } else {
                format!("{name}-unfused")
            };
            for s in [&SyncScheduler as &dyn Scheduler, &local] {
                group.bench_function(BenchmarkId::new(s.name(), &label), |b| {
                    b.iter(|| assert_eq!(black_box(run(make, fuse, s)), expected))
                });
            }
        }
    }
    group.finish();

    let mut phases = c.benchmark_group("phases/tree-1M");
    phases
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    phases.throughput(Throughput::Elements(1_000_000));
    phases.bench_function("build", |b| {
        b.iter(|| black_box(tree_reduction(1_000_000, 8)))
    });
    phases.bench_function("plan", |b| {
        b.iter_batched(
            || tree_reduction(1_000_000, 8),
            |(g, k)| black_box(ExecutionPlan::new(g, &[k], OptimizeOptions::default()).unwrap()),
            criterion::BatchSize::PerIteration,
        )
    });
    phases.bench_function("run-local", |b| {
        let (g, k) = tree_reduction(1_000_000, 8);
        let plan = ExecutionPlan::new(g, &[k], OptimizeOptions::default()).unwrap();
        b.iter(|| black_box(local.execute(&plan, &ExecutionContext::default()).unwrap()))
    });
    phases.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

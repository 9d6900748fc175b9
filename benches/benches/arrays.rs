//! Array kernels at sizes that fit a quick criterion run; the full-size workloads and their
//! Dask anchors are in `examples/array_workloads.rs`.
//!
//! `cargo bench -p partita-benches --bench arrays`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use partita::LocalScheduler;
use partita::array::{Axes, random};

fn bench(c: &mut Criterion) {
    let s = LocalScheduler::new();
    let mut g = c.benchmark_group("arrays");
    g.sample_size(10).measurement_time(Duration::from_secs(5));

    let x = random::random(&[4000, 4000], [1000, 1000], 0).unwrap();
    let tm = (&x + &x.t().unwrap()).unwrap().mean(0).unwrap();
    g.throughput(Throughput::Elements(16_000_000));
    g.bench_function("(x + x.T).mean(0) 4000^2", |b| {
        b.iter(|| black_box(tm.compute::<f64>(&s).unwrap()))
    });

    let v = random::random(&[20_000_000], 2_000_000, 0).unwrap();
    let sum = v.sum(Axes::All).unwrap();
    let std = v.std(Axes::All, 0).unwrap();
    g.throughput(Throughput::Elements(20_000_000));
    g.bench_function("random + sum 2e7", |b| {
        b.iter(|| black_box(sum.compute::<f64>(&s).unwrap()))
    });
    g.bench_function("random + std 2e7", |b| {
        b.iter(|| black_box(std.compute::<f64>(&s).unwrap()))
    });
    let kept = v.persist(&s).unwrap();
    let kept_sum = kept.sum(Axes::All).unwrap();
    g.bench_function("sum of 2e7 in memory", |b| {
        b.iter(|| black_box(kept_sum.compute::<f64>(&s).unwrap()))
    });

    let m = random::random(&[1500, 1500], [500, 500], 0).unwrap();
    let mm = m.matmul(&m.t().unwrap()).unwrap().sum(Axes::All).unwrap();
    g.throughput(Throughput::Elements(2 * 1500 * 1500 * 1500));
    g.bench_function("(m @ m.T).sum() 1500^2 (flops)", |b| {
        b.iter(|| black_box(mm.compute::<f64>(&s).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The distributed scheduler's and workers' state machines alone, on the simulated cluster
//! (no sockets, no encoding): what the decisions cost per task, apart from the network.
//!
//! `cargo bench -p partita-proto --bench cluster_state`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use partita_proto::Time;
use partita_proto::messages::ClientId;
use partita_proto::sim::{Sim, SimConfig, fan_out, spec, tree_reduction, wide_map};

fn simulate(tasks: Vec<partita_proto::messages::TaskSpec>, wanted: Vec<partita_core::Key>) {
    simulate_on(2, tasks, wanted)
}

fn simulate_on(
    workers: u32,
    tasks: Vec<partita_proto::messages::TaskSpec>,
    wanted: Vec<partita_core::Key>,
) {
    let config = SimConfig {
        workers,
        nthreads: 1,
        check_consistency: false,
        max_steps: u64::MAX,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.submit_at(Time::ZERO, ClientId(0), tasks, wanted);
    black_box(sim.run().expect("the simulation finishes"));
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cluster_state");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for n in [10_000u32, 100_000] {
        let (tasks, outs) = fan_out("fan", n);
        g.throughput(Throughput::Elements(u64::from(n) + 1));
        g.bench_function(format!("one value read by {n} tasks"), |b| {
            b.iter(|| simulate(tasks.clone(), outs.clone()))
        });
    }
    // The `trivial` cluster workload: the readers collected 100 at a time, level by level,
    // so most collects fetch half their inputs from the other worker.
    let (mut tasks, mut level) = fan_out("triv", 100_000);
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = (level.chunks(100).enumerate())
            .map(|(i, group)| {
                let k = partita_core::Key::new("triv-collect", [depth, i as u32]);
                tasks.push(spec(k.clone(), group.to_vec()));
                k
            })
            .collect();
    }
    g.throughput(Throughput::Elements(tasks.len() as u64));
    g.bench_function("100,000 readers collected 100 at a time", |b| {
        b.iter(|| simulate(tasks.clone(), level.clone()))
    });
    let (tasks, outs) = wide_map("map", 10_000);
    g.throughput(Throughput::Elements(20_000));
    g.bench_function("10,000 independent pairs", |b| {
        b.iter(|| simulate(tasks.clone(), outs.clone()))
    });
    // Many roots on many workers: each worker's first claim on the root queue splits a
    // run of it (counted runs: half a run walked per claim, not the whole queue).
    let (tasks, root) = tree_reduction("roots", 200_000, 100);
    g.throughput(Throughput::Elements(tasks.len() as u64));
    g.bench_function("200,000 roots summed 100 at a time on 64 workers", |b| {
        b.iter(|| simulate_on(64, tasks.clone(), vec![root.clone()]))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Memory: intermediates are released as soon as their last dependent has run, checked with
//! the schedulers' byte accounting.

use std::sync::Arc;

use parking_lot::Mutex;
use partita::{
    ComputeOptions, ExecutionContext, GraphBuilder, Key, LocalScheduler, OptimizeOptions,
    SyncScheduler, TaskId, TaskObserver, compute_with,
};
use partita_tests::{AddVectors, Blob, SumVector};

const MIB: usize = 1 << 20;

/// 64 leaves of 1 MiB, each transformed (another 1 MiB), then summed pairwise in a tree:
/// 64 + 64 + 63 intermediates of 1 MiB = ~191 MiB of results in total.
fn big_tree() -> (partita::Graph, Key) {
    let len = MIB / 8;
    let mut b = GraphBuilder::new();
    let mut level = Vec::new();
    for i in 0..64u32 {
        b.add_task(
            Key::new("leaf", [i]),
            Arc::new(Blob {
                len,
                seed: f64::from(i),
            }),
            &[],
        );
        b.add_task(
            Key::new("shift", [i]),
            Arc::new(Blob { len, seed: 1.0 }),
            &[Key::new("leaf", [i])],
        );
        level.push(Key::new("shift", [i]));
    }
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        level = level
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| {
                let k = Key::new(format!("add-{depth}"), [i as u32]);
                b.add_task(k.clone(), Arc::new(AddVectors), pair);
                k
            })
            .collect();
    }
    b.add_task(Key::named("total"), Arc::new(SumVector), &level);
    (b.build().unwrap(), Key::named("total"))
}

#[test]
fn a_graph_ten_times_the_budget_runs_within_it() {
    let (g, out) = big_tree();
    let budget = 19 * MIB as u64; // a tenth of the ~191 MiB the intermediates add up to
    let mut answers = Vec::new();
    let schedulers: Vec<Box<dyn partita::Scheduler>> = vec![
        Box::new(SyncScheduler),
        Box::new(LocalScheduler::with_threads(2)),
    ];
    for s in schedulers {
        // Without fusion every intermediate is a stored result, the harder case.
        let options = ComputeOptions {
            optimize: OptimizeOptions {
                cull: true,
                fuse: false,
            },
            ..Default::default()
        };
        let run =
            compute_with(g.clone(), std::slice::from_ref(&out), s.as_ref(), &options).unwrap();
        assert!(
            run.stats.peak_live_bytes <= budget,
            "{}: peak {} MiB over the {} MiB budget",
            s.name(),
            run.stats.peak_live_bytes / MIB as u64,
            budget / MIB as u64
        );
        assert_eq!(
            run.stats.final_live_bytes, 8,
            "only the f64 output is alive at the end"
        );
        answers.push(*run.values[0].get::<f64>().unwrap());
    }
    // Reference: leaf i holds i + k, shift i holds 1 + i + k; summed over i and k.
    let n = (MIB / 8) as f64;
    let expected: f64 = (0..64)
        .map(|i| 1.0 * n + f64::from(i) * n + n * (n - 1.0) / 2.0)
        .sum();
    for a in answers {
        assert!((a - expected).abs() / expected < 1e-12, "{a} != {expected}");
    }
}

/// Records `(task, live bytes after it)` for every finished task.
#[derive(Default)]
pub struct LiveLog(pub Mutex<Vec<(TaskId, u64, u64)>>);

impl TaskObserver for LiveLog {
    fn task_finished(&self, task: TaskId, _key: &Key, nbytes: u64, live: u64) {
        self.0.lock().push((task, nbytes, live));
    }
}

/// After each task, the live bytes must be exactly the results that an output needs or
/// that some unfinished task will still read.
pub fn check_exact_release(
    graph: &partita::Graph,
    outputs: &[Key],
    scheduler: &dyn partita::Scheduler,
    optimize: OptimizeOptions,
) {
    let log = Arc::new(LiveLog::default());
    let options = ComputeOptions {
        optimize,
        context: ExecutionContext {
            observer: Some(log.clone()),
            ..Default::default()
        },
    };
    let plan = partita::ExecutionPlan::new(graph.clone(), outputs, optimize).unwrap();
    let run = scheduler.execute(&plan, &options.context).unwrap();
    let g = &plan.graph;
    let is_output = plan.output_mask();
    let mut finished = vec![false; g.len()];
    let mut size = vec![0u64; g.len()];
    let log = log.0.lock();
    assert_eq!(log.len(), g.len());
    for &(task, nbytes, live) in log.iter() {
        finished[task.index()] = true;
        size[task.index()] = nbytes;
        let expected: u64 = g
            .ids()
            .filter(|t| finished[t.index()])
            .filter(|t| {
                is_output[t.index()] || g.dependents(*t).iter().any(|d| !finished[d.index()])
            })
            .map(|t| size[t.index()])
            .sum();
        assert_eq!(
            live,
            expected,
            "after {} on {}",
            g.key(task),
            scheduler.name()
        );
    }
    let outputs_bytes: u64 = g
        .ids()
        .filter(|t| is_output[t.index()])
        .map(|t| size[t.index()])
        .sum();
    assert_eq!(run.stats.final_live_bytes, outputs_bytes);
}

#[test]
fn values_die_exactly_when_no_longer_needed() {
    let (g, out) = big_tree();
    for s in [
        &SyncScheduler as &dyn partita::Scheduler,
        &LocalScheduler::with_threads(1),
    ] {
        for fuse in [false, true] {
            check_exact_release(
                &g,
                std::slice::from_ref(&out),
                s,
                OptimizeOptions { cull: true, fuse },
            );
        }
    }
}

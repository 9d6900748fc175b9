//! Whole computations on the simulated cluster: placement, queuing, stealing, worker death,
//! retries, shared keys and memory. Every test is deterministic and runs in milliseconds.

use std::time::Duration;

use partita_core::Key;
use partita_proto::Time;
use partita_proto::messages::{ClientId, FromClient, TaskSpec, WorkerId};
use partita_proto::scheduler::TaskStatus;
use partita_proto::sim::{
    KillMode, Outcome, Sim, SimConfig, TaskBehavior, chain, fan_out, order_depth_first, spec,
    tree_reduction, wide_map,
};

const C: ClientId = ClientId(0);
const MIB: u64 = 1 << 20;

fn assert_all_in_memory(sim: &Sim, keys: &[Key]) {
    for k in keys {
        assert_eq!(
            sim.report().outcomes.get(&(C, k.clone())),
            Some(&Outcome::InMemory),
            "{k}"
        );
        assert_eq!(sim.scheduler().task_status(k), TaskStatus::Memory, "{k}");
    }
    assert!(
        sim.report().violations.is_empty(),
        "{:?}",
        sim.report().violations
    );
}

#[test]
fn chain_tree_and_wide_map_finish() {
    let mut sim = Sim::new(SimConfig::default());
    let (chain_tasks, last) = chain("chain", 50);
    let (tree_tasks, root) = tree_reduction("tree", 64, 4);
    let (map_tasks, mapped) = wide_map("map", 200);
    sim.submit_at(Time::ZERO, C, chain_tasks, vec![last.clone()]);
    sim.submit_at(Time::ZERO, C, tree_tasks, vec![root.clone()]);
    sim.submit_at(Time::ZERO, C, map_tasks, mapped.clone());
    sim.run().unwrap();
    let mut wanted = mapped.clone();
    wanted.extend([last, root]);
    assert_all_in_memory(&sim, &wanted);
    // The map spreads over all four workers.
    let used: std::collections::BTreeSet<WorkerId> = mapped
        .iter()
        .flat_map(|k| sim.report().placements[k].clone())
        .collect();
    assert_eq!(used.len(), 4);
    // Intermediates nobody wants any more are forgotten.
    assert_eq!(
        sim.scheduler().task_status(&Key::new("tree", [0, 0])),
        TaskStatus::Released
    );
}

/// `info()` (what a client's `FromClient::Info` gets) counts what happened: the workers
/// with their threads, the tasks by state, every task finished once.
#[test]
fn info_reports_workers_tasks_by_state_and_counters() {
    let mut sim = Sim::new(SimConfig::default());
    let (tree_tasks, root) = tree_reduction("tree", 64, 4);
    let (map_tasks, mapped) = wide_map("map", 200);
    let total = (tree_tasks.len() + map_tasks.len()) as u64;
    sim.submit_at(Time::ZERO, C, tree_tasks, vec![root.clone()]);
    sim.submit_at(Time::ZERO, C, map_tasks, mapped.clone());
    let before = sim.scheduler().info();
    assert_eq!(before.stats.tasks_finished, 0);
    sim.run().unwrap();
    let info = sim.scheduler().info();
    let ids: Vec<WorkerId> = info.workers.iter().map(|w| w.peer.id).collect();
    assert_eq!(ids, sim.scheduler().workers());
    assert_eq!(ids.len() as u32, SimConfig::default().workers);
    for w in &info.workers {
        assert_eq!(w.nthreads, SimConfig::default().nthreads);
        assert_eq!(w.processing, 0, "{w:?}");
        assert_eq!(Some(w), sim.scheduler().worker(w.peer.id).as_ref());
    }
    // The wanted keys are in memory; the tree's inner tasks were released.
    assert_eq!(info.tasks.memory, mapped.len() as u64 + 1);
    assert_eq!(
        info.workers.iter().map(|w| w.held).sum::<u64>(),
        info.tasks.memory
    );
    assert_eq!(
        (info.tasks.waiting, info.tasks.queued, info.tasks.processing),
        (0, 0, 0)
    );
    assert_eq!(info.tasks.erred, 0);
    assert_eq!(
        info.tasks.released + info.tasks.memory,
        sim.scheduler().task_count() as u64
    );
    assert_eq!(info.stats.tasks_finished, total);
}

/// Order `tasks` depth-first towards `out`, submit them at time zero and run until `out`
/// is in memory.
fn compute_one(sim: &mut Sim, mut tasks: Vec<TaskSpec>, out: &Key) {
    order_depth_first(&mut tasks, std::slice::from_ref(out));
    sim.submit_at(Time::ZERO, C, tasks, vec![out.clone()]);
    sim.run().unwrap();
    assert_all_in_memory(sim, std::slice::from_ref(out));
}

fn peak_with_saturation(worker_saturation: f64) -> u64 {
    let mut config = SimConfig::default();
    config.scheduler.worker_saturation = worker_saturation;
    let mut sim = Sim::new(config);
    let (tasks, root) = tree_reduction("r", 1000, 4);
    for t in &tasks {
        // Roots are large, reductions small: peak memory counts root outputs held.
        let nbytes = if t.deps.is_empty() { MIB } else { 1024 };
        sim.set_behavior(
            t.key.clone(),
            TaskBehavior {
                nbytes,
                ..TaskBehavior::default()
            },
        );
    }
    sim.submit_at(Time::ZERO, C, tasks, vec![root.clone()]);
    sim.run().unwrap();
    assert_all_in_memory(&sim, &[root]);
    sim.report().peak_memory.values().max().copied().unwrap()
}

#[test]
fn root_task_queuing_bounds_root_outputs() {
    let queued = peak_with_saturation(1.1);
    assert!(
        queued <= 16 * MIB,
        "a worker held {} of 1000 root outputs at once",
        queued / MIB
    );
    // Sending every root at once (the workers still order them) holds more.
    let unqueued = peak_with_saturation(f64::INFINITY);
    assert!(queued < unqueued, "{queued} vs {unqueued}");
}

#[test]
fn locality_runs_a_task_where_its_large_input_is() {
    // One thread per worker, so the two inputs start on different workers.
    let mut sim = Sim::new(SimConfig {
        nthreads: 1,
        ..SimConfig::default()
    });
    let (big, small, out) = (Key::named("big"), Key::named("small"), Key::named("out"));
    sim.set_behavior(
        big.clone(),
        TaskBehavior {
            nbytes: 500 * MIB,
            ..TaskBehavior::default()
        },
    );
    let mut tasks = vec![
        spec(small.clone(), vec![]),
        spec(big.clone(), vec![]),
        spec(out.clone(), vec![small.clone(), big.clone()]),
    ];
    order_depth_first(&mut tasks, std::slice::from_ref(&out));
    sim.submit_at(Time::ZERO, C, tasks, vec![out.clone()]);
    sim.run().unwrap();
    let r = sim.report();
    assert_ne!(
        r.placements[&big], r.placements[&small],
        "inputs start on different workers"
    );
    assert_eq!(r.placements[&out], r.placements[&big]);
    assert!(
        r.transfer_bytes < MIB,
        "only the small input moves: {}",
        r.transfer_bytes
    );
}

fn stealing_run(work_stealing: bool) -> (Time, u64) {
    let mut config = SimConfig {
        workers: 1,
        nthreads: 1,
        ..SimConfig::default()
    };
    config.scheduler.work_stealing = work_stealing;
    let mut sim = Sim::new(config);
    let data = Key::named("data");
    let mut tasks = vec![spec(data.clone(), vec![])];
    let outs: Vec<Key> = (0..40).map(|i| Key::new("use", [i])).collect();
    for k in &outs {
        tasks.push(spec(k.clone(), vec![data.clone()]));
        sim.set_behavior(
            k.clone(),
            TaskBehavior {
                duration: Duration::from_millis(10),
                ..TaskBehavior::default()
            },
        );
    }
    order_depth_first(&mut tasks, &outs);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    // Everything lands on worker 0 (the only one); worker 1 joins idle a little later.
    sim.add_worker_at(Time::from_millis(5), WorkerId(1), 1);
    let end = sim.run().unwrap();
    assert_all_in_memory(&sim, &outs);
    let on_one = outs
        .iter()
        .filter(|k| sim.report().placements[*k] == vec![WorkerId(1)])
        .count();
    (end, on_one as u64)
}

#[test]
fn idle_worker_steals_and_finishes_sooner() {
    let (slow, none_moved) = stealing_run(false);
    let (fast, moved) = stealing_run(true);
    assert_eq!(none_moved, 0);
    assert!(moved >= 10, "only {moved} tasks were stolen");
    assert!(
        fast.as_micros() * 10 < slow.as_micros() * 7,
        "{fast} vs {slow}"
    );
}

/// H2O's split group-by on the simulator: ten partials of `ms` milliseconds, each split in
/// two (`take`, `split_bytes` each) for two combines of 15 ms, on two one-thread workers.
/// Returns the simulation run to its end, the partials and the end time.
fn partials_then_two_combines(
    ms: [u64; 10],
    split_bytes: u64,
    bandwidth: u64,
) -> (Sim, Vec<Key>, Time) {
    let mut sim = Sim::new(SimConfig {
        workers: 2,
        nthreads: 1,
        latency: Duration::from_micros(300),
        bandwidth,
        ..SimConfig::default()
    });
    let behave = |millis: u64, nbytes: u64| TaskBehavior {
        duration: Duration::from_micros(millis * 1000),
        nbytes,
        ..TaskBehavior::default()
    };
    let roots: Vec<Key> = (0..10).map(|i| Key::new("partial", [i])).collect();
    let mut tasks: Vec<_> = roots.iter().map(|k| spec(k.clone(), vec![])).collect();
    for (k, ms) in roots.iter().zip(ms) {
        sim.set_behavior(k.clone(), behave(ms, 2 * split_bytes));
    }
    let outs: Vec<Key> = (0..2).map(|j| Key::new("combine", [j])).collect();
    let mut splits = vec![Vec::new(), Vec::new()];
    for (i, root) in roots.iter().enumerate() {
        for (j, split) in splits.iter_mut().enumerate() {
            let k = Key::new("take", [i as u32, j as u32]);
            tasks.push(spec(k.clone(), vec![root.clone()]));
            sim.set_behavior(k.clone(), behave(0, split_bytes));
            split.push(k);
        }
    }
    for (out, split) in outs.iter().zip(splits) {
        tasks.push(spec(out.clone(), split));
        sim.set_behavior(out.clone(), behave(15, split_bytes));
    }
    order_depth_first(&mut tasks, &outs);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    let end = sim.run().unwrap();
    assert_all_in_memory(&sim, &outs);
    (sim, roots, end)
}

#[test]
fn a_started_task_is_not_asked_for_again_and_the_one_queued_behind_it_moves() {
    // q3's partials (measured on the cluster): worker 1 finishes its run first and takes
    // the last root of worker 0's run as its extra slot, just after starting its own last
    // one; worker 0 then idles while that root waits behind the running one. Stealing must
    // take the queued root: asking again and again for the running one (which the worker
    // refuses) left worker 0 idle for a whole partial.
    let ms = [89, 64, 74, 90, 62, 72, 82, 65, 77, 77];
    let (sim, roots, end) = partials_then_two_combines(ms, 1024, 100_000_000);
    let on = |w| {
        (roots.iter())
            .filter(|k| sim.report().placements[*k] == vec![w])
            .count()
    };
    assert_eq!((on(WorkerId(0)), on(WorkerId(1))), (5, 5));
    // 752 ms of partials on two threads, plus the combines and the round trips.
    assert!(end < Time::from_millis(410), "finished at {end}");
    let asked = sim.scheduler().stats().steal_requests;
    assert!(asked <= 4, "{asked} steal requests");
}

#[test]
fn two_tasks_ready_together_are_not_swapped_between_workers() {
    // q5's partials (measured): both combines become ready within microseconds of each
    // other. The first goes where most of its inputs are, and the idle worker asks for it;
    // the second must count that steal as under way, or it goes to the idle worker too,
    // and then the first worker, now idle, steals it back: two moves and round trips where
    // one does.
    let ms = [74, 72, 83, 91, 46, 59, 71, 59, 52, 57];
    let (sim, _, _) = partials_then_two_combines(ms, 1_200_000, 1_000_000_000);
    let combines = [Key::new("combine", [0]), Key::new("combine", [1])];
    let on: Vec<_> = combines
        .iter()
        .map(|k| &sim.report().placements[k])
        .collect();
    assert_ne!(on[0], on[1], "both combines ran on one worker");
    let asked = sim.scheduler().stats().steal_requests;
    assert!(asked <= 2, "{asked} steal requests");
}

#[test]
fn worker_death_mid_computation_recomputes_lost_values() {
    let mut sim = Sim::new(SimConfig::default());
    // Three stages: 32 loads, 32 maps, a tree of sums over the maps.
    let mut tasks = Vec::new();
    let mut maps = Vec::new();
    for i in 0..32 {
        tasks.push(spec(Key::new("load", [i]), vec![]));
        tasks.push(spec(Key::new("map", [i]), vec![Key::new("load", [i])]));
        maps.push(Key::new("map", [i]));
    }
    let mut sums = Vec::new();
    for j in 0..8u32 {
        tasks.push(spec(
            Key::new("sum", [j]),
            maps[j as usize * 4..j as usize * 4 + 4].to_vec(),
        ));
        sums.push(Key::new("sum", [j]));
    }
    let total = Key::named("total");
    tasks.push(spec(total.clone(), sums));
    order_depth_first(&mut tasks, std::slice::from_ref(&total));
    for t in &tasks {
        sim.set_behavior(
            t.key.clone(),
            TaskBehavior {
                duration: Duration::from_millis(2),
                ..TaskBehavior::default()
            },
        );
    }
    sim.submit_at(Time::ZERO, C, tasks, vec![total.clone()]);
    sim.kill_worker_at(Time::from_millis(12), WorkerId(1), KillMode::Disconnect);
    sim.run().unwrap();
    assert_all_in_memory(&sim, &[total]);
    let stats = sim.scheduler().stats();
    assert_eq!(stats.workers_lost, 1);
    assert!(stats.lost_values > 0 && stats.recomputed > 0, "{stats:?}");
    let rerun = (sim.report().placements.iter())
        .filter(|(_, ws)| ws.len() > 1 && ws.contains(&WorkerId(1)))
        .count();
    assert!(rerun > 0, "values lost with worker 1 were computed again");
}

#[test]
fn heartbeat_timeout_detects_a_silent_worker() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, outs) = wide_map("m", 40);
    for t in &tasks {
        sim.set_behavior(
            t.key.clone(),
            TaskBehavior {
                duration: Duration::from_millis(20),
                ..TaskBehavior::default()
            },
        );
    }
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.kill_worker_at(Time::from_millis(10), WorkerId(2), KillMode::Silent);
    let end = sim.run().unwrap();
    assert_all_in_memory(&sim, &outs);
    assert_eq!(
        sim.scheduler().workers(),
        vec![WorkerId(0), WorkerId(1), WorkerId(3)]
    );
    assert!(
        sim.report()
            .logs
            .iter()
            .any(|l| l.contains("worker-2 removed: no heartbeat"))
    );
    // Noticed after the 500 ms timeout, not before.
    assert!(end > Time::from_millis(500), "{end}");
}

#[test]
fn task_killing_three_workers_errs_and_cluster_goes_on() {
    let mut sim = Sim::new(SimConfig::default());
    let poison = Key::new("poison", [3]);
    let after = Key::named("after");
    sim.set_behavior(
        poison.clone(),
        TaskBehavior {
            kills_worker: true,
            ..TaskBehavior::default()
        },
    );
    let tasks = vec![
        spec(poison.clone(), vec![]),
        spec(after.clone(), vec![poison.clone()]),
    ];
    sim.submit_at(Time::ZERO, C, tasks, vec![after.clone()]);
    sim.run().unwrap();
    assert_eq!(sim.report().executions(&poison), 3);
    match &sim.report().outcomes[&(C, after.clone())] {
        Outcome::Erred(e) => {
            assert!(
                e.contains("('poison', 3) failed: it was running on 3 workers that died"),
                "{e}"
            );
            // The dependent reports the failure that stopped it, as local schedulers do.
            assert!(
                e.starts_with("task ('poison', 3) failed: it was running"),
                "{e}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(sim.scheduler().workers().len(), 1);
    let (tasks, root) = tree_reduction("later", 16, 4);
    sim.submit_at(sim.now(), C, tasks, vec![root.clone()]);
    sim.run().unwrap();
    assert_all_in_memory(&sim, &[root]);
}

#[test]
fn retries_rescue_a_task_and_errors_name_the_failing_key() {
    for retries in [1, 0] {
        let mut sim = Sim::new(SimConfig::default());
        let (flaky, down) = (Key::named("flaky"), Key::named("down"));
        sim.set_behavior(
            flaky.clone(),
            TaskBehavior {
                fail_times: 1,
                ..TaskBehavior::default()
            },
        );
        let mut first = spec(flaky.clone(), vec![]);
        first.retries = retries;
        sim.submit_at(
            Time::ZERO,
            C,
            vec![first, spec(down.clone(), vec![flaky.clone()])],
            vec![down.clone()],
        );
        sim.run().unwrap();
        let outcome = &sim.report().outcomes[&(C, down.clone())];
        if retries == 1 {
            assert_eq!(outcome, &Outcome::InMemory);
            assert_eq!(sim.report().executions(&flaky), 2);
        } else {
            let Outcome::Erred(e) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(e, "task 'flaky' failed: simulated failure");
        }
    }
}

#[test]
fn shared_key_is_freed_when_both_clients_release_it() {
    let mut sim = Sim::new(SimConfig::default());
    let (c1, c2) = (ClientId(1), ClientId(2));
    let (tasks, last) = chain("shared", 3);
    sim.submit_at(Time::ZERO, c1, tasks.clone(), vec![last.clone()]);
    sim.submit_at(Time::ZERO, c2, tasks, vec![last.clone()]);
    sim.run().unwrap();
    assert_eq!(sim.report().executions(&last), 1, "one task, shared");
    let holder = sim.scheduler().who_has(&last)[0];
    let release = || FromClient::ReleaseKeys {
        keys: vec![Key::new("shared", [2])],
    };
    sim.client_sends_at(sim.now(), c1, release());
    sim.run_until(sim.now() + Duration::from_millis(5));
    assert_eq!(sim.scheduler().task_status(&last), TaskStatus::Memory);
    assert!(sim.worker(holder).unwrap().holds(&last));
    sim.client_sends_at(sim.now(), c2, release());
    sim.run_until(sim.now() + Duration::from_millis(5));
    assert_eq!(sim.scheduler().task_status(&last), TaskStatus::Forgotten);
    assert_eq!(sim.scheduler().task_count(), 0);
    assert!(
        !sim.worker(holder).unwrap().holds(&last),
        "FreeKeys reached the worker"
    );
    assert_eq!(sim.held_bytes(holder), (0, 0));
}

#[test]
fn spilling_bounds_memory_and_leaves_nothing_behind() {
    let config = SimConfig {
        workers: 2,
        memory_limit: 16 * MIB,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    // 64 MiB of wanted results (and as much in intermediates) on 2 x 16 MiB workers, and
    // a tree of 1 MiB partial sums over them.
    let (mut tasks, outs) = wide_map("big", 64);
    let mut level = outs.clone();
    let mut depth = 0;
    while level.len() > 1 {
        depth += 1;
        let next: Vec<Key> = (0..level.len().div_ceil(4) as u32)
            .map(|j| Key::new("sum", [depth, j]))
            .collect();
        for (j, k) in next.iter().enumerate() {
            tasks.push(spec(
                k.clone(),
                level[j * 4..(j * 4 + 4).min(level.len())].to_vec(),
            ));
        }
        level = next;
    }
    let total = level[0].clone();
    for t in &tasks {
        sim.set_behavior(
            t.key.clone(),
            TaskBehavior {
                nbytes: MIB,
                ..TaskBehavior::default()
            },
        );
    }
    let mut wanted = outs.clone();
    wanted.push(total.clone());
    order_depth_first(&mut tasks, &wanted);
    sim.submit_at(Time::ZERO, C, tasks, wanted.clone());
    sim.run().unwrap();
    assert_all_in_memory(&sim, &wanted);
    let spilled: u64 = [WorkerId(0), WorkerId(1)]
        .iter()
        .map(|w| sim.held_bytes(*w).1)
        .sum();
    assert!(
        spilled >= 32 * MIB,
        "results beyond the target went to disk: {spilled}"
    );
    for (w, peak) in &sim.report().peak_memory {
        assert!(*peak <= 16 * MIB, "{w} peaked at {} MiB", peak / MIB);
    }
    sim.client_sends_at(sim.now(), C, FromClient::ReleaseKeys { keys: wanted });
    sim.run_until(sim.now() + Duration::from_millis(50));
    for w in [WorkerId(0), WorkerId(1)] {
        assert_eq!(
            sim.held_bytes(w),
            (0, 0),
            "{w} still holds values or spill files"
        );
    }
    assert!(
        sim.report().violations.is_empty(),
        "{:?}",
        sim.report().violations
    );
}

#[test]
fn cancel_answers_and_forgets() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, last) = chain("slow", 20);
    for t in &tasks {
        sim.set_behavior(
            t.key.clone(),
            TaskBehavior {
                duration: Duration::from_millis(5),
                ..TaskBehavior::default()
            },
        );
    }
    sim.submit_at(Time::ZERO, C, tasks, vec![last.clone()]);
    sim.client_sends_at(
        Time::from_millis(12),
        C,
        FromClient::Cancel {
            keys: vec![last.clone()],
        },
    );
    sim.run().unwrap();
    assert_eq!(sim.report().outcomes[&(C, last)], Outcome::Cancelled);
    sim.run_until(sim.now() + Duration::from_millis(20));
    assert_eq!(sim.scheduler().task_count(), 0);
    assert!(sim.report().executions(&Key::new("slow", [10])) == 0);
}

#[test]
fn a_value_read_by_many_tasks_is_freed_after_the_last_reader() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, outs) = fan_out("fan", 2_000);
    let root = Key::new("fan-in", [0]);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    assert_all_in_memory(&sim, &outs);
    assert_eq!(sim.report().executions(&root), 1);
    // Every reader is done: nobody needs the root's value, only its lineage is kept.
    assert_eq!(sim.scheduler().task_status(&root), TaskStatus::Released);
    assert!(sim.scheduler().who_has(&root).is_empty());
    // Releasing the outputs forgets everything.
    sim.client_sends_at(sim.now(), C, FromClient::ReleaseKeys { keys: outs });
    sim.run_until(sim.now() + Duration::from_millis(5));
    assert_eq!(sim.scheduler().task_count(), 0);
}

#[test]
fn root_tasks_are_taken_in_runs_so_reductions_read_local_inputs() {
    // 2,000 quick roots reduced 100 at a time (delayed calls and their sum): with the two
    // workers taking turns at the front of the queue, each sum would fetch about half its
    // inputs (about 1,000 transfers); taking runs, only the final sum fetches.
    let mut sim = Sim::new(SimConfig {
        workers: 2,
        nthreads: 1,
        latency: Duration::from_micros(300),
        ..SimConfig::default()
    });
    let quick = |nbytes| TaskBehavior {
        duration: Duration::from_micros(5),
        nbytes,
        ..TaskBehavior::default()
    };
    let leaves: Vec<Key> = (0..2000).map(|i| Key::named(format!("inc-{i}"))).collect();
    let mut tasks: Vec<_> = leaves.iter().map(|k| spec(k.clone(), vec![])).collect();
    let sums: Vec<Key> = (0..20).map(|j| Key::named(format!("total-{j}"))).collect();
    for (j, k) in sums.iter().enumerate() {
        tasks.push(spec(k.clone(), leaves[j * 100..(j + 1) * 100].to_vec()));
    }
    let out = Key::named("total-20");
    tasks.push(spec(out.clone(), sums.clone()));
    for t in &tasks {
        sim.set_behavior(t.key.clone(), quick(28));
    }
    compute_one(&mut sim, tasks, &out);
    let placed = |k: &Key| sim.report().placements[k][0];
    let used: std::collections::BTreeSet<WorkerId> = leaves.iter().map(placed).collect();
    assert_eq!(used.len(), 2, "both workers share the roots");
    for (j, k) in sums.iter().enumerate() {
        let local = (leaves[j * 100..(j + 1) * 100].iter())
            .filter(|leaf| placed(leaf) == placed(k))
            .count();
        assert!(
            local >= 50,
            "{k} found {local} of its 100 inputs where it ran"
        );
    }
    let transfers = sim.report().transfers;
    assert!(transfers <= 100, "{transfers} transfers");
}

#[test]
fn a_worker_joining_late_takes_the_later_half_of_the_roots_left() {
    // 200 roots of 1 ms on one one-thread worker; a second joins 20 ms in. It takes a run
    // of its own, the later half of what is queued, so each worker's roots stay contiguous
    // in priority order (a sum of neighbours finds its inputs in one place).
    let mut config = SimConfig {
        workers: 1,
        nthreads: 1,
        ..SimConfig::default()
    };
    config.scheduler.work_stealing = false;
    let mut sim = Sim::new(config);
    let roots: Vec<Key> = (0..200).map(|i| Key::new("read", [i])).collect();
    let mut tasks: Vec<_> = roots.iter().map(|k| spec(k.clone(), vec![])).collect();
    order_depth_first(&mut tasks, &roots);
    sim.submit_at(Time::ZERO, C, tasks, roots.clone());
    sim.add_worker_at(Time::from_millis(20), WorkerId(1), 1);
    sim.run().unwrap();
    assert_all_in_memory(&sim, &roots);
    let on: Vec<WorkerId> = roots
        .iter()
        .map(|k| sim.report().placements[k][0])
        .collect();
    let late = on.iter().filter(|w| **w == WorkerId(1)).count();
    assert!(
        (60..=120).contains(&late),
        "the late worker ran {late} of 200"
    );
    // Worker 0's roots, then worker 1's, then worker 0's again at most once more (it
    // finishes its run and splits what the other has left): few changes of worker.
    let changes = on.windows(2).filter(|p| p[0] != p[1]).count();
    assert!(
        changes <= 4,
        "{changes} changes of worker along the roots: {on:?}"
    );
}

#[test]
fn dependents_of_one_result_are_co_assigned_so_reductions_move_little() {
    // One small root read by 2,000 tasks, reduced 100 at a time, then to one key: the
    // 2,000 become ready together when the root finishes.
    let mut sim = Sim::new(SimConfig {
        workers: 2,
        nthreads: 1,
        ..SimConfig::default()
    });
    let root = Key::named("root");
    let mut tasks = vec![spec(root.clone(), vec![])];
    let leaves: Vec<Key> = (0..2000).map(|i| Key::new("leaf", [i])).collect();
    tasks.extend(leaves.iter().map(|k| spec(k.clone(), vec![root.clone()])));
    let groups: Vec<Key> = (0..20).map(|j| Key::new("group", [j])).collect();
    for (j, g) in groups.iter().enumerate() {
        tasks.push(spec(g.clone(), leaves[j * 100..(j + 1) * 100].to_vec()));
    }
    let out = Key::named("out");
    tasks.push(spec(out.clone(), groups.clone()));
    compute_one(&mut sim, tasks, &out);
    let placed = |k: &Key| sim.report().placements[k][0];
    let used: std::collections::BTreeSet<WorkerId> = leaves.iter().map(placed).collect();
    assert_eq!(used.len(), 2, "both workers share the leaves");
    // Alternating placement would move about 1,000 leaves (half of each group's inputs);
    // runs of priority order move only what straddles a boundary (11 here).
    let transfers = sim.report().transfers;
    assert!(transfers < 100, "{transfers} transfers");
}

/// Each key's holders, as the scheduler knows them.
fn holders(sim: &Sim, keys: &[Key]) -> Vec<Vec<WorkerId>> {
    keys.iter().map(|k| sim.scheduler().who_has(k)).collect()
}

#[test]
fn a_retiring_worker_hands_its_values_off_and_nothing_is_recomputed() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, outs) = wide_map("m", 40);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    let on_1: Vec<&Key> = (outs.iter())
        .filter(|k| sim.scheduler().who_has(k).contains(&WorkerId(1)))
        .collect();
    assert!(!on_1.is_empty(), "worker 1 holds some results");
    let at = sim.now() + Duration::from_millis(1);
    sim.retire_worker_at(at, WorkerId(1));
    sim.run_until(at + Duration::from_secs(1));
    assert_eq!(sim.report().stopped, [WorkerId(1)]);
    assert!(!sim.is_alive(WorkerId(1)));
    assert_all_in_memory(&sim, &outs);
    for (k, held) in outs.iter().zip(holders(&sim, &outs)) {
        assert!(
            !held.is_empty() && !held.contains(&WorkerId(1)),
            "{k}: {held:?}"
        );
        assert_eq!(sim.report().executions(k), 1, "{k} computed again");
    }
    let stats = sim.scheduler().stats();
    assert_eq!(
        (stats.workers_retired, stats.workers_lost, stats.lost_values),
        (1, 0, 0),
        "{stats:?}"
    );
    assert!(sim.scheduler().worker(WorkerId(1)).is_none());
    // The client heard it leave.
    assert!(sim.report().client_messages.iter().any(|(_, m)| matches!(
        m,
        partita_proto::messages::ToClient::WorkerLeft { peer } if peer.id == WorkerId(1)
    )));
}

#[test]
fn retiring_mid_computation_moves_work_and_values_and_loses_nothing() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, root) = tree_reduction("t", 64, 4);
    for t in &tasks {
        let behavior = TaskBehavior {
            duration: Duration::from_millis(2),
            ..TaskBehavior::default()
        };
        sim.set_behavior(t.key.clone(), behavior);
    }
    sim.submit_at(Time::ZERO, C, tasks, vec![root.clone()]);
    sim.retire_worker_at(Time::from_millis(9), WorkerId(2));
    sim.run().unwrap();
    assert_all_in_memory(&sim, std::slice::from_ref(&root));
    assert_eq!(sim.report().stopped, [WorkerId(2)]);
    let stats = sim.scheduler().stats();
    assert_eq!((stats.lost_values, stats.recomputed), (0, 0), "{stats:?}");
    // Nothing ran on worker 2 once it asked to leave (allowing for the message's way).
    let late: Vec<&Key> = (sim.report().placements.iter())
        .filter(|(_, on)| on.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(late.is_empty(), "ran twice: {late:?}");
    sim.scheduler().check_consistency().unwrap();
}

#[test]
fn replicate_copies_values_to_the_workers_asked_for() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, outs) = wide_map("r", 8);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    let at = sim.now();
    let replicate = |request, n| FromClient::Replicate {
        request,
        keys: outs.clone(),
        n,
    };
    sim.client_sends_at(at, C, replicate(1, Some(2)));
    sim.run_until(at + Duration::from_millis(100));
    assert!(holders(&sim, &outs).iter().all(|h| h.len() == 2));
    sim.client_sends_at(sim.now(), C, replicate(2, None));
    sim.run_until(sim.now() + Duration::from_millis(100));
    assert!(holders(&sim, &outs).iter().all(|h| h.len() == 4));
    let answers: Vec<(u64, usize)> = (sim.report().client_messages.iter())
        .filter_map(|(_, m)| match m {
            partita_proto::messages::ToClient::Replicated { request, holders } => {
                assert_eq!(holders.len(), outs.len());
                let fewest = holders.iter().map(|(_, on)| on.len()).min();
                Some((*request, fewest.unwrap_or(0)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(1, 2), (2, 4)]);
    // The copies are real: a worker that held none before serves a task reading them all.
    let before = sim.report().transfers;
    assert!(before >= 8 * 3, "{before} transfers");
    // Released, every copy goes.
    sim.client_sends_at(sim.now(), C, FromClient::ReleaseKeys { keys: outs.clone() });
    sim.run_until(sim.now() + Duration::from_millis(100));
    for w in 0..4 {
        assert_eq!(sim.held_bytes(WorkerId(w)), (0, 0), "worker {w}");
    }
}

#[test]
fn rebalance_spreads_values_to_workers_that_joined_later_and_loses_nothing() {
    let mut sim = Sim::new(SimConfig {
        workers: 1,
        ..SimConfig::default()
    });
    let (tasks, outs) = wide_map("b", 40);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    // The inputs' frees arrive.
    sim.run_until(sim.now() + Duration::from_millis(10));
    assert_eq!(sim.held_bytes(WorkerId(0)).0, 40 * 1024);
    let at = sim.now();
    for id in 1..4 {
        sim.add_worker_at(at, WorkerId(id), 2);
    }
    let rebalance = FromClient::Rebalance {
        request: 5,
        keys: None,
        workers: Vec::new(),
    };
    sim.client_sends_at(at + Duration::from_millis(1), C, rebalance);
    sim.run_until(at + Duration::from_millis(200));
    // Ten values each (the mean exactly), every one held once, none computed again.
    for w in 0..4 {
        assert_eq!(sim.held_bytes(WorkerId(w)).0, 10 * 1024, "worker {w}");
    }
    assert!(holders(&sim, &outs).iter().all(|h| h.len() == 1));
    assert_all_in_memory(&sim, &outs);
    for k in &outs {
        assert_eq!(sim.report().executions(k), 1, "{k} computed again");
    }
    let answers: Vec<(u64, usize, u64)> = (sim.report().client_messages.iter())
        .filter_map(|(_, m)| match m {
            partita_proto::messages::ToClient::Rebalanced {
                request,
                holders,
                nbytes,
                refused: None,
            } => Some((*request, holders.len(), *nbytes)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(5, 30, 30 * 1024)]);
    sim.scheduler().check_consistency().unwrap();
    // Released, every copy goes: the senders dropped theirs.
    sim.client_sends_at(sim.now(), C, FromClient::ReleaseKeys { keys: outs });
    sim.run_until(sim.now() + Duration::from_millis(100));
    for w in 0..4 {
        assert_eq!(sim.held_bytes(WorkerId(w)), (0, 0), "worker {w}");
    }
}

#[test]
fn client_retirement_is_all_or_nothing_and_the_last_worker_goes_at_once() {
    use partita_proto::messages::ToClient;
    let mut sim = Sim::new(SimConfig {
        workers: 2,
        ..SimConfig::default()
    });
    let (tasks, outs) = wide_map("w", 10);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    let retire = |addresses: &[&str]| FromClient::RetireWorkers {
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
    };
    let last_reply = |sim: &Sim| {
        (sim.report().client_messages.iter().rev())
            .find_map(|(_, m)| match m {
                ToClient::Retiring { workers, refused } => Some((workers.clone(), refused.clone())),
                _ => None,
            })
            .expect("a Retiring reply")
    };
    // An unknown address, or every worker: refused, and nobody retires.
    sim.client_sends_at(sim.now(), C, retire(&["sim://worker-0", "nowhere:1"]));
    sim.run_until(sim.now() + Duration::from_millis(50));
    let (workers, refused) = last_reply(&sim);
    assert!(workers.is_empty());
    assert_eq!(refused[0].0, "nowhere:1");
    sim.client_sends_at(sim.now(), C, retire(&["sim://worker-0", "sim://worker-1"]));
    sim.run_until(sim.now() + Duration::from_millis(50));
    let (workers, refused) = last_reply(&sim);
    assert!(workers.is_empty() && refused.len() == 2, "{refused:?}");
    assert!(refused[0].1.contains("no open worker"), "{refused:?}");
    assert!(sim.report().stopped.is_empty());
    // One of two: it retires, its values move to the other.
    sim.client_sends_at(sim.now(), C, retire(&["sim://worker-0"]));
    sim.run_until(sim.now() + Duration::from_millis(100));
    let (workers, _) = last_reply(&sim);
    assert_eq!(workers.len(), 1);
    assert_eq!(sim.report().stopped, [WorkerId(0)]);
    assert!(holders(&sim, &outs).iter().all(|h| h == &[WorkerId(1)]));
    // The last worker asking to stop goes at once; its values are lost as in a death and
    // computed again when a worker joins.
    let at = sim.now();
    sim.retire_worker_at(at, WorkerId(1));
    sim.run_until(at + Duration::from_millis(50));
    assert_eq!(sim.report().stopped, [WorkerId(0), WorkerId(1)]);
    assert!(sim.scheduler().stats().lost_values >= 10);
    sim.add_worker_at(sim.now(), WorkerId(2), 2);
    sim.run_until(sim.now() + Duration::from_millis(200));
    assert_all_in_memory(&sim, &outs);
    assert!(holders(&sim, &outs).iter().all(|h| h == &[WorkerId(2)]));
}

#[test]
fn a_published_value_lost_with_its_worker_is_recomputed_for_nobody_in_particular() {
    let mut sim = Sim::new(SimConfig::default());
    let (tasks, root) = tree_reduction("t", 16, 4);
    compute_one(&mut sim, tasks, &root);
    let at = sim.now() + Duration::from_millis(1);
    let publish = FromClient::PublishDataset {
        request: 1,
        name: "total".into(),
        keys: vec![root.clone()],
        payload: Default::default(),
        replace: false,
    };
    sim.client_sends_at(at, C, publish);
    // The publisher lets go of every key it had.
    let release = FromClient::ReleaseKeys {
        keys: vec![root.clone()],
    };
    sim.client_sends_at(at + Duration::from_millis(1), C, release);
    sim.run_until(at + Duration::from_millis(10));
    assert_eq!(sim.scheduler().task_status(&root), TaskStatus::Memory);
    let holder = sim.scheduler().who_has(&root)[0];
    let at = sim.now() + Duration::from_millis(1);
    sim.kill_worker_at(at, holder, KillMode::Disconnect);
    sim.run_until(at + Duration::from_secs(2));
    // Recomputed from lineage: a dataset wants its keys as a client would.
    assert_eq!(sim.scheduler().task_status(&root), TaskStatus::Memory);
    assert_eq!(sim.report().executions(&root), 2);
    assert!(!sim.scheduler().who_has(&root).contains(&holder));
    // Another client gets it by wanting the key, with no tasks.
    let other = ClientId(7);
    sim.submit_at(sim.now(), other, vec![], vec![root.clone()]);
    sim.run().unwrap();
    assert_eq!(
        sim.report().outcomes.get(&(other, root.clone())),
        Some(&Outcome::InMemory)
    );
    assert!(
        sim.report().violations.is_empty(),
        "{:?}",
        sim.report().violations
    );
    sim.scheduler().check_consistency().unwrap();
}

/// Adaptive scaling on the simulator, the way `LocalCluster::adapt` acts on the scheduler's
/// advice: every 100 ms ask `adaptive_target`, start workers when it wants more than are
/// running, retire the workers it names after three answers in a row asked for fewer. A map
/// of 200 tasks of 50 ms on one one-thread worker grows the cluster, finishes in a fraction
/// of the 10 s one worker needs, and the cluster shrinks back to one worker holding every
/// value: nothing lost, nothing computed twice.
#[test]
fn adaptive_scaling_grows_for_a_backlog_and_shrinks_back_without_losing_values() {
    use std::collections::BTreeSet;
    let mut sim = Sim::new(SimConfig {
        workers: 1,
        nthreads: 1,
        ..SimConfig::default()
    });
    let (tasks, outs) = wide_map("m", 200);
    for k in &outs {
        let behavior = TaskBehavior {
            duration: Duration::from_millis(50),
            ..TaskBehavior::default()
        };
        sim.set_behavior(k.clone(), behavior);
    }
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    let target = Duration::from_millis(500);
    let (minimum, maximum) = (1, 8);
    let mut running: BTreeSet<u32> = BTreeSet::from([0]);
    let (mut next_id, mut below, mut peak) = (1, 0, 1);
    let mut finished_at = None;
    let mut t = Time::ZERO;
    while t < Time::from_millis(30_000) {
        t = t + Duration::from_millis(100);
        sim.run_until(t);
        running.retain(|id| sim.is_alive(WorkerId(*id)));
        let advice = sim.scheduler().adaptive_target(target);
        let want = (advice.workers as usize).clamp(minimum, maximum);
        if want > running.len() {
            below = 0;
            for _ in running.len()..want {
                sim.add_worker_at(t, WorkerId(next_id), 1);
                running.insert(next_id);
                next_id += 1;
            }
        } else if want < running.len() && !advice.to_close.is_empty() {
            below += 1;
            if below >= 3 {
                below = 0;
                let n = running.len() - want;
                let addresses = (advice.to_close.iter().take(n))
                    .map(|p| p.address.clone())
                    .collect();
                sim.client_sends_at(t, C, FromClient::RetireWorkers { addresses });
            }
        } else {
            below = 0;
        }
        peak = peak.max(running.len());
        let done = outs
            .iter()
            .all(|k| sim.report().outcomes.contains_key(&(C, k.clone())));
        if done && finished_at.is_none() {
            finished_at = Some(t);
        }
        if done && running.len() == 1 && sim.scheduler().workers().len() == 1 {
            break;
        }
    }
    let finished_at = finished_at.expect("the map finished");
    assert_all_in_memory(&sim, &outs);
    assert!(peak >= 4, "the cluster grew to {peak} workers only");
    assert!(peak <= maximum);
    assert!(
        finished_at < Time::from_millis(5_000),
        "finished at {finished_at}"
    );
    assert_eq!(sim.scheduler().workers().len(), 1, "shrank back to one");
    let stats = sim.scheduler().stats();
    assert_eq!(
        (stats.recomputed, stats.lost_values, stats.workers_lost),
        (0, 0, 0)
    );
    assert_eq!(stats.workers_retired as usize, peak - 1);
    for k in &outs {
        assert_eq!(sim.report().executions(k), 1, "{k}");
    }
    // Idle and holding values: it recommends keeping the one worker, and closing nobody.
    let advice = sim.scheduler().adaptive_target(target);
    assert_eq!((advice.workers, advice.to_close.len()), (1, 0));
}

/// Workers retiring one after the other while values move: the first hands its values to
/// a worker that joined empty (the emptiest), which is asked to retire before they land.
/// It closes only once they have landed and moved on to the worker that stays, so nothing
/// is lost. Workers retired together never hand values to each other: each value moves
/// once.
#[test]
fn workers_retiring_in_turn_pass_values_on_and_lose_nothing() {
    use partita_proto::messages::ToClient;
    for together in [false, true] {
        let mut sim = Sim::new(SimConfig {
            workers: 2,
            nthreads: 1,
            ..SimConfig::default()
        });
        let (tasks, outs) = wide_map("w", 30);
        sim.submit_at(Time::ZERO, C, tasks, outs.clone());
        sim.run().unwrap();
        let on_zero = holders(&sim, &outs)
            .iter()
            .filter(|h| h == &&[WorkerId(0)])
            .count();
        assert!(on_zero > 0);
        sim.add_worker_at(sim.now(), WorkerId(2), 1);
        sim.run_until(sim.now() + Duration::from_millis(1));
        let retire = |addresses: &[&str]| FromClient::RetireWorkers {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        };
        let at = sim.now() + Duration::from_millis(1);
        if together {
            sim.client_sends_at(at, C, retire(&["sim://worker-0", "sim://worker-2"]));
        } else {
            sim.client_sends_at(at, C, retire(&["sim://worker-0"]));
            let soon = at + Duration::from_micros(50);
            sim.client_sends_at(soon, C, retire(&["sim://worker-2"]));
        }
        let transfers = sim.report().transfers;
        sim.run_until(at + Duration::from_millis(100));
        let mut stopped = sim.report().stopped.clone();
        stopped.sort();
        assert_eq!(stopped, [WorkerId(0), WorkerId(2)], "together: {together}");
        assert_all_in_memory(&sim, &outs);
        assert!(holders(&sim, &outs).iter().all(|h| h == &[WorkerId(1)]));
        let stats = sim.scheduler().stats();
        assert_eq!(
            (stats.lost_values, stats.recomputed),
            (0, 0),
            "together: {together}"
        );
        let refused = (sim.report().client_messages.iter())
            .any(|(_, m)| matches!(m, ToClient::Retiring { refused, .. } if !refused.is_empty()));
        assert!(!refused);
        if together {
            assert_eq!(
                sim.report().transfers - transfers,
                on_zero as u64,
                "each moved once"
            );
        }
    }
}

/// Retiring the last open worker while values move to it is refused (they would have
/// nowhere to go), even though it holds nothing yet; once they landed and nothing else
/// is held, an idle worker holding nothing may go.
#[test]
fn the_last_open_worker_is_not_retired_while_values_move_to_it() {
    use partita_proto::messages::ToClient;
    let mut sim = Sim::new(SimConfig {
        workers: 1,
        nthreads: 1,
        ..SimConfig::default()
    });
    let (tasks, outs) = wide_map("w", 10);
    sim.submit_at(Time::ZERO, C, tasks, outs.clone());
    sim.run().unwrap();
    sim.add_worker_at(sim.now(), WorkerId(1), 1);
    sim.run_until(sim.now() + Duration::from_millis(1));
    let retire = |address: &str| FromClient::RetireWorkers {
        addresses: vec![address.to_string()],
    };
    let at = sim.now() + Duration::from_millis(1);
    sim.client_sends_at(at, C, retire("sim://worker-0"));
    sim.client_sends_at(at + Duration::from_micros(50), C, retire("sim://worker-1"));
    sim.run_until(at + Duration::from_millis(100));
    let replies: Vec<&Vec<(String, String)>> = (sim.report().client_messages.iter())
        .filter_map(|(_, m)| match m {
            ToClient::Retiring { refused, .. } => Some(refused),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2);
    assert!(replies[0].is_empty());
    assert!(replies[1][0].1.contains("no open worker"), "{replies:?}");
    assert_eq!(sim.report().stopped, [WorkerId(0)]);
    assert_all_in_memory(&sim, &outs);
    assert!(holders(&sim, &outs).iter().all(|h| h == &[WorkerId(1)]));
    // Released, nothing is held: the last worker may retire.
    sim.client_sends_at(sim.now(), C, FromClient::ReleaseKeys { keys: outs });
    sim.run_until(sim.now() + Duration::from_millis(10));
    sim.client_sends_at(sim.now(), C, retire("sim://worker-1"));
    sim.run_until(sim.now() + Duration::from_millis(10));
    assert_eq!(sim.report().stopped, [WorkerId(0), WorkerId(1)]);
}

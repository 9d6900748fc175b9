//! Property tests on random DAGs: every scheduler, with and without optimization, agrees with
//! a naive recursive evaluator, and no result outlives its last reader.

use partita::{LocalScheduler, OptimizeOptions, SyncScheduler};
use partita_tests::{DagSpec, as_i64s, compute_everywhere};
use proptest::prelude::*;

use crate::memory::check_exact_release;

fn dag() -> impl Strategy<Value = DagSpec> {
    (1usize..60)
        .prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| {
                    if i == 0 {
                        Just(Vec::new()).boxed()
                    } else {
                        prop::collection::vec(0..i, 0..4).boxed()
                    }
                })
                .collect::<Vec<_>>();
            (deps, prop::collection::vec(0..n, 1..5))
        })
        .prop_map(|(deps, outputs)| DagSpec { deps, outputs })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn schedulers_agree_with_the_reference(spec in dag()) {
        let graph = spec.graph();
        let values = compute_everywhere(&graph, &spec.output_keys()).unwrap();
        prop_assert_eq!(as_i64s(&values), spec.reference());
    }

    #[test]
    fn no_result_outlives_its_last_reader(spec in dag(), fuse in any::<bool>()) {
        let graph = spec.graph();
        let optimize = OptimizeOptions { cull: true, fuse };
        check_exact_release(&graph, &spec.output_keys(), &SyncScheduler, optimize);
        check_exact_release(&graph, &spec.output_keys(), &LocalScheduler::with_threads(1), optimize);
    }

    #[test]
    fn many_threads_end_with_only_the_outputs_alive(spec in dag()) {
        let graph = spec.graph();
        let plan = partita::ExecutionPlan::new(graph, &spec.output_keys(), OptimizeOptions::default()).unwrap();
        let run = partita::Scheduler::execute(&LocalScheduler::with_threads(4), &plan, &Default::default()).unwrap();
        let mut unique = plan.outputs.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(run.stats.final_live_bytes, 8 * unique.len() as u64);
        prop_assert_eq!(run.stats.tasks_run, plan.graph.len());
    }
}

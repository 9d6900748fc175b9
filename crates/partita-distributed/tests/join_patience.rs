//! A worker that cannot reach its scheduler tries again for `death_timeout` (Dask's
//! `--death-timeout`), and only then: one started while the scheduler does not answer
//! yet joins once it does.

use std::time::{Duration, Instant};

use partita_distributed::{SchedulerOptions, SchedulerServer, WorkerOptions, run_worker};

#[test]
fn a_worker_waits_for_a_scheduler_that_answers_late() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = SchedulerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().join("c.json"));
    // Bound but not serving: connections wait unanswered until they time out.
    let server = runtime.block_on(SchedulerServer::bind(options)).unwrap();
    let credentials = server.cluster().clone();
    let worker = |death_timeout| WorkerOptions {
        nthreads: 1,
        spill_dir: Some(dir.path().to_path_buf()),
        death_timeout,
        ..WorkerOptions::default()
    };
    // One try: the error names the scheduler.
    let started = Instant::now();
    let once = runtime.block_on(run_worker(credentials.clone(), worker(Duration::ZERO)));
    let err = once.expect_err("nobody answered").to_string();
    assert!(err.contains("cannot connect to the scheduler"), "{err}");
    let one_try = started.elapsed();
    // Patient: still trying when the scheduler starts serving, then joined.
    let patient = runtime.spawn(run_worker(
        credentials.clone(),
        worker(Duration::from_secs(60)),
    ));
    std::thread::sleep(one_try + Duration::from_secs(1));
    assert!(!patient.is_finished(), "gave up within {one_try:?}");
    let stop = server.shutdown_handle();
    let running = runtime.spawn(server.run());
    let client = partita_distributed::Client::connect_with(credentials).unwrap();
    client.wait_for_workers(1, Duration::from_secs(30)).unwrap();
    drop(client);
    stop.send(true).unwrap();
    runtime.block_on(running).unwrap().unwrap();
    runtime.block_on(patient).unwrap().ok();
}

//! A scheduler started again: with `reuse_credentials` it keeps the cluster file's
//! certificate, key and token; without, workers that read the cluster file again before
//! each try to join find its new address and credentials.

use std::time::Duration;

use partita_distributed::{
    Client, ClusterFile, SchedulerOptions, SchedulerServer, WorkerOptions, run_worker,
};

fn options(file: &std::path::Path, reuse: bool) -> SchedulerOptions {
    let mut options = SchedulerOptions::new("127.0.0.1:0".parse().unwrap(), file.to_path_buf());
    options.reuse_credentials = reuse;
    options
}

#[test]
fn reused_credentials_are_the_files_and_a_bad_file_is_named() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    // No file yet: new credentials, written out.
    let first = runtime
        .block_on(SchedulerServer::bind(options(&file, true)))
        .unwrap();
    let before = first.cluster().clone();
    drop(first);
    let again = runtime
        .block_on(SchedulerServer::bind(options(&file, true)))
        .unwrap();
    assert!(again.cluster().same_credentials(&before));
    assert!(ClusterFile::read(&file).unwrap().same_credentials(&before));
    drop(again);
    // Without reuse: new ones.
    let fresh = runtime
        .block_on(SchedulerServer::bind(options(&file, false)))
        .unwrap();
    assert!(!fresh.cluster().same_credentials(&before));
    drop(fresh);
    // A file that is not a cluster file: an error naming it, and the file left alone.
    std::fs::write(&file, b"{\"address\": 7}").unwrap();
    let err = runtime
        .block_on(SchedulerServer::bind(options(&file, true)))
        .expect_err("not a cluster file")
        .to_string();
    assert!(
        err.contains("cannot reuse the credentials of") && err.contains("cluster.json"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"{\"address\": 7}");
}

#[test]
fn a_waiting_worker_joins_the_scheduler_that_replaced_its_cluster_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.json");
    // A scheduler that never answers (bound, not serving), then one at the same path
    // with new credentials and another port.
    let silent = runtime
        .block_on(SchedulerServer::bind(options(&file, false)))
        .unwrap();
    let old = silent.cluster().clone();
    let worker = runtime.spawn(run_worker(
        old.clone(),
        WorkerOptions {
            nthreads: 1,
            spill_dir: Some(dir.path().to_path_buf()),
            death_timeout: Duration::from_secs(60),
            cluster_file: Some(file.clone()),
            ..WorkerOptions::default()
        },
    ));
    std::thread::sleep(Duration::from_millis(300));
    let server = runtime
        .block_on(SchedulerServer::bind(options(&file, false)))
        .unwrap();
    let new = server.cluster().clone();
    assert!(!new.same_credentials(&old));
    let stop = server.shutdown_handle();
    let running = runtime.spawn(server.run());
    let client = Client::connect(&file).unwrap();
    client.wait_for_workers(1, Duration::from_secs(30)).unwrap();
    // It serves data with the new credentials too: a value scattered to it comes back.
    let futures = client
        .scatter(vec![partita_core::Value::new(41i64)])
        .unwrap();
    assert_eq!(
        *client.gather(&futures).unwrap()[0].get::<i64>().unwrap(),
        41
    );
    drop(futures);
    drop(client);
    stop.send(true).unwrap();
    runtime.block_on(running).unwrap().unwrap();
    runtime.block_on(worker).unwrap().ok();
    drop(silent);
}

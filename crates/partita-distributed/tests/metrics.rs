//! The scheduler's opt-in HTTP endpoint: `/metrics` in the OpenMetrics text format and
//! `/info` as JSON, with a worker in this process; off by default.

use std::time::{Duration, Instant};

use partita_distributed::{
    ClusterInfo, SchedulerOptions, SchedulerServer, WorkerOptions, run_worker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a fresh connection: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_and_info_describe_the_cluster_over_http() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options =
        SchedulerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().join("c.json"));
    options.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = runtime.block_on(SchedulerServer::bind(options)).unwrap();
    let addr = server.metrics_address().expect("asked for metrics");
    let credentials = server.cluster().clone();
    // The cluster file tells clients where, with the port the listener got.
    assert_eq!(credentials.metrics, Some(addr.to_string()));
    let written =
        partita_distributed::ClusterFile::read(&dir.path().join("c.json")).expect("written");
    assert_eq!(written.metrics, Some(addr.to_string()));
    let stop = server.shutdown_handle();
    let running = runtime.spawn(server.run());
    let worker = WorkerOptions {
        nthreads: 3,
        memory_limit: 1 << 30,
        spill_dir: Some(dir.path().to_path_buf()),
        ..WorkerOptions::default()
    };
    runtime.spawn(run_worker(credentials.clone(), worker));

    // The worker shows up (it joins asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    let info: ClusterInfo = loop {
        let (status, body) = runtime.block_on(get(addr, "/info"));
        assert_eq!(status, 200, "{body}");
        let info: ClusterInfo = serde_json::from_str(&body).expect("JSON");
        if !info.workers.is_empty() || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(info.workers.len(), 1, "{info:?}");
    assert_eq!(
        (info.workers[0].nthreads, info.workers[0].memory_limit),
        (3, 1 << 30)
    );

    // A computation shows in the counters.
    let client = partita_distributed::Client::connect_with(credentials).unwrap();
    let x = partita_array::arange(0.0, 100.0, 1.0, partita_array::DType::F64, 10).unwrap();
    let total = x.sum(partita_array::Axes::All).unwrap();
    let sum = total.compute::<f64>(&client).unwrap();
    assert_eq!(sum.iter().copied().collect::<Vec<_>>(), vec![4950.0]);
    let (_, body) = runtime.block_on(get(addr, "/info"));
    let after: ClusterInfo = serde_json::from_str(&body).expect("JSON");
    let finished = after.stats.tasks_finished;
    assert!(finished >= 10, "{after:?}");

    let (status, text) = runtime.block_on(get(addr, "/metrics"));
    assert_eq!(status, 200, "{text}");
    let address = &info.workers[0].peer.address;
    for line in [
        "partita_workers 1".to_string(),
        "partita_tasks{state=\"erred\"} 0".to_string(),
        format!("partita_tasks_finished_total {finished}"),
        format!("partita_worker_threads{{worker=\"worker-0\",address=\"{address}\"}} 3"),
        format!(
            "partita_worker_memory_limit_bytes{{worker=\"worker-0\",address=\"{address}\"}} 1073741824"
        ),
        "# EOF".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert_eq!(runtime.block_on(get(addr, "/nowhere")).0, 404);

    // Stopping the scheduler stops the endpoint.
    stop.send(true).unwrap();
    runtime.block_on(running).unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime
        .block_on(tokio::net::TcpStream::connect(addr))
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the endpoint outlived its scheduler"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_metrics_address_in_use_is_an_error_naming_it_and_writes_no_cluster_file() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    let mut options = SchedulerOptions::new("127.0.0.1:0".parse().unwrap(), file.clone());
    options.metrics = Some(addr);
    let Err(err) = runtime.block_on(SchedulerServer::bind(options)) else {
        panic!("bound metrics on a port already taken");
    };
    let text = err.to_string();
    assert!(
        text.contains("cannot serve metrics") && text.contains(&addr.to_string()),
        "{text}"
    );
    assert!(
        !file.exists(),
        "a cluster file for a scheduler that did not start"
    );
}

//! The scheduler's monitoring endpoint: plain HTTP, off unless asked for
//! (`partita scheduler --metrics ADDR`, [`crate::SchedulerOptions::metrics`]).
//!
//! - `GET /metrics`: Prometheus / OpenMetrics text (workers, their memory and load, tasks by
//!   state, counters), for a Prometheus server or `curl`.
//! - `GET /info`: the same [`ClusterInfo`] as JSON, as `partita info --json` prints it.
//!
//! Key decisions:
//! - **Snapshots, not live metrics.** Each request asks the scheduler's loop for
//!   [`SchedulerState::info`](partita_proto::scheduler::SchedulerState::info) (one pass over
//!   its tasks) and encodes it; nothing is updated per event, so the task path pays nothing
//!   for monitoring. A scrape every few seconds of a million tasks costs a few ms of the
//!   scheduler's time.
//! - **Read-only and unauthenticated**, like Dask's dashboard: it shows names, addresses and
//!   counts, never data or the token. Bind it to localhost or a trusted network.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use partita_proto::messages::ClusterInfo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// How the endpoint asks the scheduler's loop for a snapshot.
pub(crate) type InfoRequests = mpsc::Sender<oneshot::Sender<ClusterInfo>>;

/// Serve `/metrics` and `/info` on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    requests: InfoRequests,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/info", get(info))
        .with_state(requests);
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!("the metrics endpoint stopped: {e}");
    }
}

async fn snapshot(requests: &InfoRequests) -> Result<ClusterInfo, Response> {
    let gone = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler is shutting down\n",
        )
            .into_response()
    };
    let (reply, answer) = oneshot::channel();
    requests.send(reply).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())
}

async fn metrics(State(requests): State<InfoRequests>) -> Response {
    match snapshot(&requests).await {
        Ok(info) => match encode(&info) {
            Ok(text) => (
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Err(response) => response,
    }
}

async fn info(State(requests): State<InfoRequests>) -> Response {
    match snapshot(&requests).await {
        Ok(info) => match serde_json::to_string(&info) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Err(response) => response,
    }
}

type Labels = Vec<(&'static str, String)>;

/// `info` in the OpenMetrics text format, every name prefixed `partita_`.
pub fn encode(info: &ClusterInfo) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("partita");
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        registry.register(name, help, g);
    };
    gauge(
        &mut registry,
        "workers",
        "Workers connected",
        info.workers.len() as u64,
    );
    let tasks = Family::<Labels, Gauge>::default();
    for (state, n) in info.tasks.by_state() {
        tasks
            .get_or_create(&vec![("state", state.to_string())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register("tasks", "Tasks the scheduler knows, by state", tasks);
    let st = &info.stats;
    for (name, help, n) in [
        ("tasks_finished", "Tasks finished", st.tasks_finished),
        (
            "tasks_recomputed",
            "Tasks finished again after their value was lost",
            st.recomputed,
        ),
        (
            "values_lost",
            "Values lost with the workers holding them",
            st.lost_values,
        ),
        ("workers_lost", "Workers declared dead", st.workers_lost),
        (
            "workers_retired",
            "Workers that left gracefully, their values handed off",
            st.workers_retired,
        ),
        ("steal_requests", "Steal requests sent", st.steal_requests),
        ("steals", "Tasks moved by stealing", st.steals),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        registry.register(name, help, c);
    }
    // Per worker, labelled by its id and data address.
    let family = || Family::<Labels, Gauge>::default();
    let (threads, limit, memory, managed, spilled) =
        (family(), family(), family(), family(), family());
    let (executing, ready, assigned, held, paused, retiring) =
        (family(), family(), family(), family(), family(), family());
    for w in &info.workers {
        let labels = vec![
            ("worker", w.peer.id.to_string()),
            ("address", w.peer.address.clone()),
        ];
        let m = &w.metrics;
        for (f, value) in [
            (&threads, u64::from(w.nthreads)),
            (&limit, w.memory_limit),
            (&memory, m.rss),
            (&managed, m.managed_bytes),
            (&spilled, m.spilled_bytes),
            (&executing, u64::from(m.executing)),
            (&ready, u64::from(m.pending)),
            (&assigned, w.processing),
            (&held, w.held),
            (&paused, u64::from(m.paused)),
            (&retiring, u64::from(w.retiring)),
        ] {
            f.get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
    let w = registry.sub_registry_with_prefix("worker");
    w.register("threads", "Threads running tasks", threads);
    w.register_with_unit("memory_limit", "Memory limit (0: none)", Unit::Bytes, limit);
    w.register_with_unit(
        "memory",
        "Resident memory, last reported",
        Unit::Bytes,
        memory,
    );
    w.register_with_unit(
        "managed",
        "Values held in memory, last reported",
        Unit::Bytes,
        managed,
    );
    w.register_with_unit(
        "spilled",
        "Values spilled to disk, last reported",
        Unit::Bytes,
        spilled,
    );
    w.register("executing_tasks", "Tasks running, last reported", executing);
    w.register(
        "ready_tasks",
        "Tasks waiting for a thread or data, last reported",
        ready,
    );
    w.register(
        "assigned_tasks",
        "Tasks the scheduler sent it, not finished",
        assigned,
    );
    w.register("held_values", "Values it holds", held);
    w.register(
        "paused",
        "1 while above the pause threshold of its memory limit",
        paused,
    );
    w.register(
        "retiring",
        "1 while it hands its values off before leaving",
        retiring,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use partita_proto::messages::{
        ClusterInfo, Peer, SchedulerStats, TaskCounts, WorkerId, WorkerMetrics, WorkerStatus,
    };

    #[test]
    fn every_count_becomes_a_sample() {
        let info = ClusterInfo {
            workers: vec![WorkerStatus {
                peer: Peer {
                    id: WorkerId(4),
                    address: "10.0.0.4:9000".into(),
                },
                nthreads: 8,
                memory_limit: 0,
                processing: 5,
                held: 40,
                metrics: WorkerMetrics {
                    managed_bytes: 3 << 20,
                    spilled_bytes: 1 << 20,
                    rss: 7 << 20,
                    executing: 4,
                    pending: 1,
                    paused: true,
                },
                retiring: true,
                resources: Default::default(),
            }],
            tasks: TaskCounts {
                waiting: 2,
                erred: 1,
                ..TaskCounts::default()
            },
            stats: SchedulerStats {
                tasks_finished: 1234,
                steals: 3,
                ..SchedulerStats::default()
            },
        };
        let text = super::encode(&info).unwrap();
        let labels = "{worker=\"worker-4\",address=\"10.0.0.4:9000\"}";
        for line in [
            "partita_workers 1".to_string(),
            "partita_tasks{state=\"waiting\"} 2".into(),
            "partita_tasks{state=\"erred\"} 1".into(),
            "partita_tasks_finished_total 1234".into(),
            "partita_steals_total 3".into(),
            "partita_workers_lost_total 0".into(),
            format!("partita_worker_memory_bytes{labels} 7340032"),
            format!("partita_worker_managed_bytes{labels} 3145728"),
            format!("partita_worker_spilled_bytes{labels} 1048576"),
            format!("partita_worker_executing_tasks{labels} 4"),
            format!("partita_worker_assigned_tasks{labels} 5"),
            format!("partita_worker_held_values{labels} 40"),
            format!("partita_worker_paused{labels} 1"),
            format!("partita_worker_retiring{labels} 1"),
            "partita_workers_retired_total 0".into(),
            "# TYPE partita_tasks_finished counter".into(),
            "# EOF".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}

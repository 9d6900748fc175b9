//! The scheduler process: accepts workers and clients over QUIC and drives
//! [`SchedulerState`] with what they say.
//!
//! One task owns the state machine and is the only one that changes it; connection tasks
//! turn frames into events on a channel, and the state's actions become frames on each
//! peer's outgoing channel. A peer that sends a wrong token, another protocol version, or a
//! malformed or oversized frame has its connection closed and logged; nothing else is
//! affected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partita_core::{Error, Result};
use partita_proto::Time;
use partita_proto::messages::{ClientId, FromClient, FromWorker, Hello, Role, ToWorker, WorkerId};
use partita_proto::scheduler::{SchedulerAction, SchedulerConfig, SchedulerEvent, SchedulerState};
use tokio::sync::{mpsc, watch};

use crate::cluster_file::{ClusterFile, ServerConfigs};
use crate::wire::{Outbox, Welcome, read_msg, spawn_writer, write_msg};

/// How to start a scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Where to listen (`0.0.0.0:8786`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address written in the cluster file for peers to dial; defaults to the bound
    /// address (with `127.0.0.1` in place of an unspecified IP).
    pub advertise: Option<String>,
    /// Where to write the cluster file.
    pub cluster_file: PathBuf,
    /// The state machine's tunables.
    pub config: SchedulerConfig,
    /// Where to serve `/metrics` (Prometheus text) and `/info` (JSON) over plain HTTP;
    /// `None` (the default) serves nothing. See the `metrics` module.
    pub metrics: Option<SocketAddr>,
    /// Keep the certificate, key and token of `cluster_file` when it exists, rather than
    /// make new ones: peers holding a copy of the file join a scheduler started again.
    pub reuse_credentials: bool,
}

impl SchedulerOptions {
    /// Listen on `listen`, write the cluster file to `cluster_file`, default tunables
    /// except a 10 s heartbeat timeout.
    pub fn new(listen: SocketAddr, cluster_file: PathBuf) -> SchedulerOptions {
        SchedulerOptions {
            listen,
            advertise: None,
            cluster_file,
            config: SchedulerConfig {
                heartbeat_timeout: Duration::from_secs(10),
                ..SchedulerConfig::default()
            },
            metrics: None,
            reuse_credentials: false,
        }
    }
}

/// A bound scheduler; [`SchedulerServer::run`] serves until shut down.
#[derive(Debug)]
pub struct SchedulerServer {
    endpoint: quinn::Endpoint,
    servers: ServerConfigs,
    cluster: Arc<ClusterFile>,
    config: SchedulerConfig,
    shutdown: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
    metrics: Option<tokio::net::TcpListener>,
}

/// The channel to one peer's writer task.
type Writer = mpsc::UnboundedSender<Vec<u8>>;

#[derive(Default)]
struct Registry {
    workers: HashMap<WorkerId, (Writer, quinn::Connection)>,
    clients: HashMap<ClientId, Writer>,
}

impl SchedulerServer {
    /// Bind, make credentials (or reuse the cluster file's, see
    /// [`SchedulerOptions::reuse_credentials`]) and write the cluster file (mode 0600).
    pub async fn bind(options: SchedulerOptions) -> Result<SchedulerServer> {
        // Credentials first: the server presents the certificate it also writes out.
        let provisional = match options.reuse_credentials && options.cluster_file.exists() {
            true => {
                let kept = ClusterFile::read(&options.cluster_file).map_err(|e| {
                    Error::Codec(format!(
                        "cannot reuse the credentials of {}: {e}",
                        options.cluster_file.display()
                    ))
                })?;
                tracing::info!(
                    "keeping the credentials of {}",
                    options.cluster_file.display()
                );
                ClusterFile {
                    metrics: None,
                    ..kept
                }
            }
            false => ClusterFile::generate(String::new())?,
        };
        let servers = provisional.server_configs()?;
        let endpoint = crate::cluster_file::endpoint(options.listen, Some(&servers))
            .map_err(|e| Error::Transport(format!("cannot listen on {}: {e}", options.listen)))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| Error::Transport(format!("no local address: {e}")))?;
        // An address others can reach: a wildcard bind is announced as loopback unless
        // `advertise` says otherwise.
        let reachable = |a: SocketAddr| {
            let ip = if a.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                a.ip().to_string()
            };
            format!("{ip}:{}", a.port())
        };
        let address = (options.advertise.clone()).unwrap_or_else(|| reachable(local));
        let metrics =
            match options.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    Error::Transport(format!("cannot serve metrics on {addr}: {e}"))
                })?),
                None => None,
            };
        let cluster = ClusterFile {
            address,
            // The bound port (`--metrics 127.0.0.1:0` picks one), for clients to show.
            metrics: (metrics.as_ref())
                .and_then(|l| l.local_addr().ok())
                .map(reachable),
            ..provisional
        };
        cluster.write(&options.cluster_file)?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        tracing::info!(address = %cluster.address, file = %options.cluster_file.display(), "scheduler listening");
        if let Some(addr) = metrics.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!("metrics at http://{addr}/metrics, cluster info at http://{addr}/info");
        }
        Ok(SchedulerServer {
            endpoint,
            servers,
            cluster: Arc::new(cluster),
            config: options.config,
            shutdown,
            shutdown_tx,
            metrics,
        })
    }

    /// Where `/metrics` and `/info` are served, when [`SchedulerOptions::metrics`] asked.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The credentials peers join with.
    pub fn cluster(&self) -> &ClusterFile {
        &self.cluster
    }

    /// A handle that stops [`SchedulerServer::run`] when sent `true`.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown_tx.clone()
    }

    /// Serve until the shutdown handle fires.
    pub async fn run(mut self) -> Result<()> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<SchedulerEvent>();
        // Snapshots for the metrics endpoint, answered by the loop between events.
        let (info_tx, mut info_requests) = mpsc::channel(16);
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(crate::metrics::serve(
                listener,
                info_tx,
                self.shutdown.clone(),
            ));
        } else {
            drop(info_tx);
        }
        let registry = Arc::new(Mutex::new(Registry::default()));
        let ids = Arc::new(AtomicU32::new(0));
        let mut shutdown = self.shutdown.clone();

        // Accept loop.
        let endpoint = self.endpoint.clone();
        let cluster = Arc::clone(&self.cluster);
        let reg = Arc::clone(&registry);
        let accept_shutdown = self.shutdown.clone();
        let servers = self.servers.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let remote = incoming.remote_address();
                let connecting = match servers.accept(incoming) {
                    Ok(connecting) => connecting,
                    Err(e) => {
                        tracing::warn!(%remote, "connection refused: {e}");
                        continue;
                    }
                };
                let (cluster, reg, tx, ids) = (
                    Arc::clone(&cluster),
                    Arc::clone(&reg),
                    events_tx.clone(),
                    Arc::clone(&ids),
                );
                let shutdown = accept_shutdown.clone();
                tokio::spawn(async move {
                    let peer = serve_peer(connecting, remote, cluster, reg, tx, ids, shutdown);
                    if let Err(e) = peer.await {
                        tracing::warn!(%remote, "connection closed: {e}");
                    }
                });
            }
        });

        // The state machine's loop.
        let start = Instant::now();
        let now = || Time(start.elapsed().as_micros() as u64);
        let mut config = self.config.clone();
        config.clock_origin_unix_micros = (std::time::SystemTime::now())
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut state = SchedulerState::new(config);
        let mut outboxes = Outboxes::default();
        loop {
            let wake = state
                .poll_timeout()
                .map(|t| t.since(now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let event = tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => break },
                Some(reply) = info_requests.recv() => {
                    let _ = reply.send(state.info());
                    continue;
                }
                _ = tokio::time::sleep(wake) => SchedulerEvent::Tick,
                _ = shutdown.changed() => break,
            };
            // Handle whatever else is queued before sleeping again; each peer gets what
            // the pass produced for it in one piece at the end (or as it grows large).
            let actions = state.handle(event, now());
            perform(&registry, &mut outboxes, actions);
            while let Ok(event) = events.try_recv() {
                let actions = state.handle(event, now());
                perform(&registry, &mut outboxes, actions);
            }
            outboxes.flush(&registry);
        }
        self.endpoint.close(0u32.into(), b"scheduler shutting down");
        Ok(())
    }
}

/// What one pass of the loop says to each peer (see [`Outbox`]).
#[derive(Default)]
struct Outboxes {
    workers: HashMap<WorkerId, Outbox>,
    clients: HashMap<ClientId, Outbox>,
}

impl Outboxes {
    fn flush(&mut self, registry: &Mutex<Registry>) {
        let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
        for (id, outbox) in &mut self.workers {
            match reg.workers.get(id) {
                Some((out, _)) => outbox.flush(out),
                None => *outbox = Outbox::default(),
            }
        }
        for (id, outbox) in &mut self.clients {
            match reg.clients.get(id) {
                Some(out) => outbox.flush(out),
                None => *outbox = Outbox::default(),
            }
        }
        self.workers.retain(|id, _| reg.workers.contains_key(id));
        self.clients.retain(|id, _| reg.clients.contains_key(id));
    }
}

/// How long a retired worker has to close its connection after `Close`.
const RETIRED_GRACE: Duration = Duration::from_secs(10);

fn perform(registry: &Mutex<Registry>, outboxes: &mut Outboxes, actions: Vec<SchedulerAction>) {
    let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
    for action in actions {
        match action {
            SchedulerAction::SendToWorker(id, msg) => {
                if let Some((out, conn)) = reg.workers.get(&id) {
                    // A retired worker closes its connection itself; one that does not
                    // within RETIRED_GRACE is closed from here.
                    if matches!(msg, ToWorker::Close { .. }) {
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RETIRED_GRACE).await;
                            conn.close(0u32.into(), b"retired");
                        });
                    }
                    let outbox = outboxes.workers.entry(id).or_default();
                    if let Err(e) = outbox.push(&msg, out) {
                        tracing::error!(worker = %id, "cannot encode a message: {e}");
                    }
                }
            }
            SchedulerAction::SendToClient(id, msg) => {
                if let Some(out) = reg.clients.get(&id) {
                    let outbox = outboxes.clients.entry(id).or_default();
                    if let Err(e) = outbox.push(&msg, out) {
                        tracing::error!(client = %id, "cannot encode a message: {e}");
                    }
                }
            }
            SchedulerAction::CloseWorker(id, reason) => {
                if let Some((out, _)) = reg.workers.get(&id)
                    && let Some(outbox) = outboxes.workers.get_mut(&id)
                {
                    outbox.flush(out);
                }
                if let Some((_, conn)) = reg.workers.get(&id) {
                    tracing::warn!(worker = %id, "closing: {reason}");
                    conn.close(2u32.into(), reason.as_bytes());
                }
            }
            SchedulerAction::Log(level, line) => crate::wire::log(level, &line),
        }
    }
}

/// One peer's connection: handshake, then frames to events until it closes.
async fn serve_peer(
    connecting: quinn::Connecting,
    remote: std::net::SocketAddr,
    cluster: Arc<ClusterFile>,
    registry: Arc<Mutex<Registry>>,
    events: mpsc::UnboundedSender<SchedulerEvent>,
    ids: Arc<AtomicU32>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let conn = connecting
        .await
        .map_err(|e| Error::Transport(format!("handshake with {remote} failed: {e}")))?;
    let handshake = async {
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| Error::Transport(format!("{remote}: {e}")))?;
        let hello: Hello = read_msg(&mut recv)
            .await?
            .ok_or_else(|| Error::Transport(format!("{remote} closed before saying hello")))?;
        if let Err(e) = hello.check(&cluster.token) {
            let _ = write_msg(
                &mut send,
                &Welcome::Refused {
                    reason: e.to_string(),
                },
            )
            .await;
            let _ = send.finish();
            // Give the refusal a moment to arrive before closing.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(e);
        }
        Ok::<_, Error>((send, recv, hello))
    };
    let (mut send, mut recv, hello) =
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                conn.close(1u32.into(), b"refused");
                return Err(e);
            }
            Err(_) => {
                conn.close(1u32.into(), b"handshake timeout");
                return Err(Error::Transport(format!("{remote} sent no hello in 10 s")));
            }
        };
    let id = ids.fetch_add(1, Ordering::Relaxed);
    write_msg(&mut send, &Welcome::Accepted { id }).await?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    spawn_writer(send, out_rx);
    match hello.role {
        Role::Worker {
            nthreads,
            memory_limit,
            address,
            nanny,
            resources,
        } => {
            let worker = WorkerId(id);
            tracing::info!(%worker, name = %hello.name, %address, nthreads, "worker joined");
            lock(&registry)
                .workers
                .insert(worker, (out_tx, conn.clone()));
            let _ = events.send(SchedulerEvent::WorkerJoined {
                worker,
                nthreads,
                memory_limit,
                address,
                nanny,
                resources,
            });
            let reason = pump::<FromWorker>(&mut recv, &conn, &mut shutdown, |msg| {
                events
                    .send(SchedulerEvent::FromWorker { worker, msg })
                    .is_ok()
            })
            .await;
            lock(&registry).workers.remove(&worker);
            tracing::warn!(%worker, "worker lost: {reason}");
            let _ = events.send(SchedulerEvent::WorkerLost { worker, reason });
        }
        Role::Client => {
            let client = ClientId(id);
            tracing::info!(%client, name = %hello.name, "client connected");
            lock(&registry).clients.insert(client, out_tx);
            let _ = events.send(SchedulerEvent::ClientConnected { client });
            let reason = pump::<FromClient>(&mut recv, &conn, &mut shutdown, |msg| {
                events
                    .send(SchedulerEvent::FromClient { client, msg })
                    .is_ok()
            })
            .await;
            lock(&registry).clients.remove(&client);
            tracing::info!(%client, "client gone: {reason}");
            let _ = events.send(SchedulerEvent::ClientGone { client });
        }
    }
    Ok(())
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read frames and hand them to `deliver` until the stream ends, a frame is bad (then the
/// connection is closed) or the scheduler shuts down; returns why it stopped.
async fn pump<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    conn: &quinn::Connection,
    shutdown: &mut watch::Receiver<bool>,
    mut deliver: impl FnMut(T) -> bool,
) -> String {
    loop {
        let msg = tokio::select! {
            m = read_msg::<T>(recv) => m,
            _ = shutdown.changed() => return "scheduler shutting down".into(),
        };
        match msg {
            Ok(Some(m)) => {
                if !deliver(m) {
                    return "scheduler stopped".into();
                }
            }
            Ok(None) => return "connection closed".into(),
            Err(e) => {
                conn.close(3u32.into(), b"bad message");
                return e.to_string();
            }
        }
    }
}

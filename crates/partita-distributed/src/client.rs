//! The client: submits graphs to the scheduler and gathers results straight from workers.
//!
//! [`Client`] implements partita's [`Scheduler`] trait, so any array, frame or delayed
//! graph computes on a cluster unchanged (`x.compute(&client)`). It owns a small tokio
//! runtime; its methods block, so call them from ordinary threads, not from async code.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partita_core::{
    Error, Execution, ExecutionContext, ExecutionPlan, Key, Result, RunStats, Scheduler, Value,
};
use partita_proto::messages::{FromClient, Peer, Role, TaskFailure, TaskSpec, ToClient};
use serde_bytes::ByteBuf;
use tokio::sync::mpsc;

use crate::cluster_file::ClusterFile;
use crate::wire::{Peers, framed, join, read_msg, spawn_writer};
use crate::worker::encode_op;

/// Messages for one waiting computation.
type Inbox = mpsc::UnboundedSender<ToClient>;

#[derive(Default)]
struct Routes {
    /// Waiting computations by the keys they want.
    by_key: HashMap<Key, Vec<(u64, Inbox)>>,
    /// Every waiting computation (for messages not about one key).
    all: HashMap<u64, Inbox>,
    next: u64,
}

/// A connection to a partita cluster.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    cluster: Arc<ClusterFile>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    routes: Arc<Mutex<Routes>>,
    peers: Arc<Peers>,
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// How many running computations of this client want each key: the scheduler keeps
    /// one "wanted" mark per client, released when the last of them is done.
    held: Mutex<HashMap<Key, usize>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("scheduler", &self.cluster.address)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Connect with the cluster file the scheduler wrote.
    pub fn connect(cluster_file: impl AsRef<Path>) -> Result<Client> {
        Client::connect_with(ClusterFile::read(cluster_file.as_ref())?)
    }

    /// Connect with credentials in hand.
    pub fn connect_with(cluster: ClusterFile) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("partita-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the client runtime: {e}")))?;
        let cluster = Arc::new(cluster);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (endpoint, conn, out, peers) = runtime.block_on(async {
            let bind = crate::wire::resolve("0.0.0.0:0")?;
            let endpoint = quinn::Endpoint::client(bind)
                .map_err(|e| Error::Transport(format!("cannot open a UDP socket: {e}")))?;
            let name = format!("client-{}", std::process::id());
            let (conn, send, mut recv, _id) =
                join(&endpoint, &cluster, Role::Client, &name).await?;
            let (out, rx) = mpsc::unbounded_channel();
            spawn_writer(send, rx);
            let routes = Arc::clone(&routes);
            tokio::spawn(async move {
                loop {
                    match read_msg::<ToClient>(&mut recv).await {
                        Ok(Some(msg)) => route(&routes, msg),
                        Ok(None) | Err(_) => {
                            // Wake every waiter: the scheduler is gone.
                            let mut r = lock(&routes);
                            r.by_key.clear();
                            r.all.clear();
                            break;
                        }
                    }
                }
            });
            let peers = Arc::new(Peers::new(endpoint.clone(), Arc::clone(&cluster), name));
            Ok::<_, Error>((endpoint, conn, out, peers))
        })?;
        Ok(Client {
            runtime,
            cluster,
            out,
            routes,
            peers,
            conn,
            endpoint,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &str {
        &self.cluster.address
    }

    fn send(&self, msg: &FromClient) -> Result<()> {
        self.out
            .send(framed(msg)?)
            .map_err(|_| Error::Transport("the connection to the scheduler is closed".into()))
    }

    fn register(&self, keys: &[Key]) -> (u64, mpsc::UnboundedReceiver<ToClient>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut r = lock(&self.routes);
        r.next += 1;
        let id = r.next;
        for k in keys {
            r.by_key
                .entry(k.clone())
                .or_default()
                .push((id, tx.clone()));
        }
        r.all.insert(id, tx);
        (id, rx)
    }

    fn unregister(&self, id: u64) {
        let mut r = lock(&self.routes);
        r.all.remove(&id);
        r.by_key.retain(|_, v| {
            v.retain(|(i, _)| *i != id);
            !v.is_empty()
        });
    }

    /// The workers connected now, with their thread counts.
    pub fn workers(&self) -> Result<Vec<(Peer, u32)>> {
        let (id, mut rx) = self.register(&[]);
        let result = (|| {
            self.send(&FromClient::ListWorkers)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = self
                    .runtime
                    .block_on(async { tokio::time::timeout(left, rx.recv()).await });
                match msg {
                    Ok(Some(ToClient::Workers { workers })) => return Ok(workers),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err(scheduler_gone()),
                    Err(_) => {
                        return Err(Error::Transport(
                            "the scheduler did not answer in 10 s".into(),
                        ));
                    }
                }
            }
        })();
        self.unregister(id);
        result
    }

    /// Wait until at least `n` workers are connected.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.workers()?.len();
            if have >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Transport(format!(
                    "only {have} of {n} workers joined within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fetch a computed value from the workers holding it, trying each in turn.
    fn gather_one(&self, key: &Key, holders: &[Peer]) -> Result<Value> {
        let mut last = None;
        for peer in holders {
            match self.runtime.block_on(self.peers.fetch(&peer.address, key)) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Transport(format!("no worker holds {key} any more"))))
    }
}

/// The error a local scheduler would have given for this failure.
fn rebuild_error(failure: TaskFailure) -> Error {
    if failure.panicked {
        Error::Panic {
            key: failure.task,
            message: failure.message,
        }
    } else {
        Error::Compute {
            key: failure.task,
            source: Box::new(Error::External(failure.message.into())),
        }
    }
}

impl Client {
    /// Gather `key` into `values`; when no holder answers (it died after the scheduler
    /// said so), ask the scheduler again where the key is, a bounded number of times.
    fn gather_or_ask(
        &self,
        key: Key,
        holders: &[Peer],
        values: &mut HashMap<Key, Value>,
        failures: &mut u32,
    ) -> Result<()> {
        match self.gather_one(&key, holders) {
            Ok(value) => {
                values.insert(key, value);
                Ok(())
            }
            Err(e) if *failures < MAX_GATHER_RETRIES => {
                *failures += 1;
                tracing::warn!("gathering {key} failed ({e}); asking the scheduler again");
                std::thread::sleep(Duration::from_millis(200));
                self.send(&FromClient::WhoHas { keys: vec![key] })
            }
            Err(e) => Err(e),
        }
    }
}

/// How many failed gathers one computation tolerates (each followed by a `WhoHas`).
const MAX_GATHER_RETRIES: u32 = 50;

fn scheduler_gone() -> Error {
    Error::Transport("lost the connection to the scheduler".into())
}

fn route(routes: &Mutex<Routes>, msg: ToClient) {
    let r = lock(routes);
    let key = match &msg {
        ToClient::KeyInMemory { key, .. }
        | ToClient::KeyErred { key, .. }
        | ToClient::Cancelled { key } => Some(key),
        ToClient::GraphRefused { .. } | ToClient::WhoHasReply { .. } | ToClient::Workers { .. } => {
            None
        }
    };
    match key {
        Some(k) => {
            for (_, tx) in r.by_key.get(k).into_iter().flatten() {
                let _ = tx.send(msg.clone());
            }
        }
        None => {
            for tx in r.all.values() {
                let _ = tx.send(msg.clone());
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"client closing");
        self.endpoint.close(0u32.into(), b"client closing");
    }
}

impl Scheduler for Client {
    fn name(&self) -> &str {
        "distributed"
    }

    fn execute(&self, plan: &ExecutionPlan, ctx: &ExecutionContext) -> Result<Execution> {
        let started = Instant::now();
        if ctx.observer.is_some() {
            return Err(Error::NotImplemented(
                "per-task observers on a cluster (tasks run in other processes); use the \
                 progress callback"
                    .into(),
            ));
        }
        let graph = &plan.graph;
        let mut tasks = Vec::with_capacity(graph.len());
        for id in graph.ids() {
            let key = graph.key(id);
            tasks.push(TaskSpec {
                key: key.clone(),
                deps: graph
                    .dependencies(id)
                    .iter()
                    .map(|d| graph.key(*d).clone())
                    .collect(),
                payload: ByteBuf::from(encode_op(key, graph.op(id))?),
                priority: i64::from(plan.priority[id.index()]),
                retries: 0,
            });
        }
        let mut wanted: Vec<Key> = Vec::new();
        let mut seen = HashSet::new();
        for id in &plan.outputs {
            let k = graph.key(*id);
            if seen.insert(k.clone()) {
                wanted.push(k.clone());
            }
        }
        {
            let mut held = lock(&self.held);
            for k in &wanted {
                *held.entry(k.clone()).or_default() += 1;
            }
        }
        let (route_id, mut rx) = self.register(&wanted);
        let result = (|| {
            self.send(&FromClient::SubmitGraph {
                tasks,
                wanted: wanted.clone(),
            })?;
            let total = wanted.len();
            let mut values: HashMap<Key, Value> = HashMap::with_capacity(total);
            let mut failed_gathers = 0u32;
            while values.len() < total {
                if ctx.cancel.is_cancelled() {
                    let _ = self.send(&FromClient::Cancel {
                        keys: wanted.clone(),
                    });
                    return Err(Error::Cancelled);
                }
                let msg = self.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                });
                match msg {
                    Err(_) => continue,
                    Ok(None) => return Err(scheduler_gone()),
                    Ok(Some(ToClient::KeyInMemory { key, workers, .. })) => {
                        if values.contains_key(&key) || !seen.contains(&key) {
                            continue;
                        }
                        self.gather_or_ask(key, &workers, &mut values, &mut failed_gathers)?;
                        if let Some(p) = &ctx.progress {
                            p.advanced(values.len(), total);
                        }
                    }
                    Ok(Some(ToClient::WhoHasReply { holders })) => {
                        // Where a key we could not gather lives now; no holder means it is
                        // being recomputed and a KeyInMemory will follow.
                        for (key, workers) in holders {
                            if !values.contains_key(&key)
                                && seen.contains(&key)
                                && !workers.is_empty()
                            {
                                self.gather_or_ask(
                                    key,
                                    &workers,
                                    &mut values,
                                    &mut failed_gathers,
                                )?;
                            }
                        }
                        if let Some(p) = &ctx.progress {
                            p.advanced(values.len(), total);
                        }
                    }
                    Ok(Some(ToClient::KeyErred { error, .. })) => {
                        // The failure that stopped this key (maybe a dependency's), rebuilt
                        // as the local schedulers report it.
                        return Err(rebuild_error(error));
                    }
                    Ok(Some(ToClient::GraphRefused { error })) => {
                        return Err(Error::Graph(format!(
                            "the scheduler refused the graph: {error}"
                        )));
                    }
                    Ok(Some(ToClient::Cancelled { key })) => {
                        return Err(Error::Compute {
                            key,
                            source: Box::new(Error::Cancelled),
                        });
                    }
                    Ok(Some(_)) => {}
                }
            }
            Ok(values)
        })();
        self.unregister(route_id);
        // Whatever happened, this computation no longer wants its outputs kept; the
        // scheduler may forget those no other computation of this client still wants.
        let released: Vec<Key> = {
            let mut held = lock(&self.held);
            (wanted.iter())
                .filter(|k| match held.get_mut(*k) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    _ => {
                        held.remove(*k);
                        true
                    }
                })
                .cloned()
                .collect()
        };
        if !released.is_empty() {
            let _ = self.send(&FromClient::ReleaseKeys { keys: released });
        }
        let values = result?;
        if let Some(p) = &ctx.progress {
            p.finished(values.len(), values.len(), true);
        }
        let out = plan
            .outputs
            .iter()
            .map(|id| values[graph.key(*id)].clone())
            .collect();
        Ok(Execution {
            values: out,
            stats: RunStats {
                tasks_run: graph.len(),
                elapsed: started.elapsed(),
                ..RunStats::default()
            },
        })
    }
}

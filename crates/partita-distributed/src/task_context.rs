//! Tasks that submit tasks: what code running inside a task on a worker can ask of its
//! worker and its cluster (Dask's `get_client`, `secede`, `rejoin`).
//!
//! Key decisions:
//! - **One client per worker process**, connected at the first [`get_client`] with the
//!   worker's own credentials and shared by every task after it (connecting takes a QUIC
//!   handshake; a task that submits a few tasks should not pay one each).
//! - **A task waiting on futures gives its thread back** with [`secede`]: the worker
//!   starts the next ready task, the scheduler stops counting the task as load. Without
//!   it, tasks that wait for tasks they submitted can hold every thread of the cluster
//!   while what they wait for sits queued behind them. [`rejoin`] blocks until the worker
//!   has a thread for it again (ahead of queued tasks).
//! - **What a task is, lives in a thread-local** set around each op the worker runs on its
//!   blocking pool, so any op (Rust or Python) can call these without an argument. A quick
//!   op run on the worker's event loop ([`crate::worker`]) must not block, so a run there
//!   that asks for the client or to secede stops with an error, its result is dropped, and
//!   it runs again on a pool thread (Dask's `Reschedule`); its kind never runs on the loop
//!   again.
//! - **Leases end with their task**: a semaphore lease a task took and did not release
//!   is given back when the task ends (with a warning), so a task that raised while
//!   holding a lock does not hold it for the life of its worker process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use partita_core::{Error, Key, Result};
use partita_proto::worker::WorkerEvent;
use tokio::sync::mpsc;

use crate::{Client, ClusterFile};

/// Tasks waiting to rejoin, each woken through its channel.
pub(crate) type Rejoining = HashMap<Key, std::sync::mpsc::SyncSender<()>>;

/// What the worker running in this process lends its tasks.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    pub(crate) cluster: Arc<ClusterFile>,
    pub(crate) events: mpsc::UnboundedSender<WorkerEvent>,
    /// Tasks blocked in [`rejoin`], woken by the worker's `Rejoined`; `None` once the
    /// worker stopped (then nobody waits: rejoining is an error).
    pub(crate) rejoining: Arc<Mutex<Option<Rejoining>>>,
    /// Kinds of op (`Key::group`) that used the cluster: never run on the event loop.
    pub(crate) uses_cluster: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The task running on this thread.
struct Current {
    key: Key,
    worker: WorkerHandle,
    /// Run on the event loop's thread: no slot to give back, no blocking allowed.
    inline: bool,
    seceded: bool,
    /// An inline run asked for something only a pool thread may do: run it again there.
    rerun: bool,
    /// Semaphore leases taken during the task and not given back (client, name, lease).
    leases: Vec<(Client, String, u64)>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// The worker running in this process, while one runs.
static WORKER: Mutex<Option<WorkerHandle>> = Mutex::new(None);

/// The client tasks of this process share, and the credentials it was made with.
static CLIENT: Mutex<Option<(Arc<ClusterFile>, Client)>> = Mutex::new(None);

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lend `worker` to tasks of this process until the guard drops.
pub(crate) fn register_worker(worker: WorkerHandle) -> WorkerRegistration {
    let cluster = Arc::clone(&worker.cluster);
    *locked(&WORKER) = Some(worker);
    WorkerRegistration(cluster)
}

pub(crate) struct WorkerRegistration(Arc<ClusterFile>);

impl Drop for WorkerRegistration {
    fn drop(&mut self) {
        let mut current = locked(&WORKER);
        if current
            .as_ref()
            .is_some_and(|w| Arc::ptr_eq(&w.cluster, &self.0))
        {
            *current = None;
        }
    }
}

/// Run `f` as task `key` of `worker` on this thread (`inline`: on the event loop's);
/// also says whether an inline run must be done again on a pool thread (it asked for the
/// client, or to secede: its result, an error saying so, is to be dropped). Leases the
/// task took and did not give back are given back, with a warning.
pub(crate) fn run_as<T>(
    key: &Key,
    worker: &WorkerHandle,
    inline: bool,
    f: impl FnOnce() -> T,
) -> (T, bool) {
    struct Reset(Option<Current>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let current = Current {
        key: key.clone(),
        worker: worker.clone(),
        inline,
        seceded: false,
        rerun: false,
        leases: Vec::new(),
    };
    let reset = Reset(CURRENT.with(|c| c.borrow_mut().replace(current)));
    let out = f();
    let (rerun, leases) = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.as_mut().expect("set above");
        (c.rerun, std::mem::take(&mut c.leases))
    });
    drop(reset);
    for (client, name, lease) in leases {
        tracing::warn!(task = %key, "the task ended holding a lease of semaphore {name:?}: given back");
        if let Err(e) = crate::primitives::release_lease(&client, &name, lease) {
            tracing::warn!(task = %key, "giving back a lease of {name:?} failed: {e}");
        }
    }
    (out, rerun)
}

/// Semaphore lease `lease` of `name` was taken through `client` (by the task running on
/// this thread, if any): given back when the task ends, unless released before.
pub(crate) fn took_lease(client: &Client, name: &str, lease: u64) {
    CURRENT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.leases.push((client.clone(), name.to_string(), lease));
        }
    });
}

/// Lease `lease` of `name` is being given back.
pub(crate) fn gave_back_lease(name: &str, lease: u64) {
    CURRENT.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.leases.retain(|(_, n, l)| !(n == name && *l == lease));
        }
    });
}

fn worker_stopped() -> Error {
    Error::Transport("the worker stopped".into())
}

fn outside_a_task(what: &str) -> Error {
    Error::NotImplemented(format!("{what} works in a task running on a worker"))
}

/// In an inline run: mark it to be run again on a pool thread, and say why it stops.
fn needs_pool(c: &mut Current, what: &str) -> Error {
    c.rerun = true;
    locked(&c.worker.uses_cluster).insert(c.key.group().to_string());
    Error::NotImplemented(format!(
        "{what} in a task the worker ran on its event loop: it runs again on a thread"
    ))
}

/// The key of the task running on this thread, if it runs on a worker (Dask's
/// `get_worker().get_current_task()`).
pub fn current_task() -> Option<Key> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.key.clone()))
}

/// A client of the cluster this process's worker belongs to: inside a task, to submit
/// more tasks, gather futures, publish datasets (Dask's `get_client`). One connection per
/// worker process, made at the first call. A task that then waits on what it submitted
/// should [`secede`] first. An error outside a worker process.
pub fn get_client() -> Result<Client> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(c) = c.as_mut() else { return Ok(()) };
        if c.inline {
            return Err(needs_pool(c, "get_client()"));
        }
        locked(&c.worker.uses_cluster).insert(c.key.group().to_string());
        Ok(())
    })?;
    let Some(worker) = locked(&WORKER).clone() else {
        return Err(Error::NotImplemented(
            "get_client() works in a task running on a worker; elsewhere connect with \
             Client::connect(cluster_file)"
                .into(),
        ));
    };
    let mut cached = locked(&CLIENT);
    if let Some((cluster, client)) = cached.as_ref()
        && Arc::ptr_eq(cluster, &worker.cluster)
    {
        return Ok(client.clone());
    }
    let client = Client::connect_with((*worker.cluster).clone())?;
    let old = cached.replace((Arc::clone(&worker.cluster), client.clone()));
    drop(cached);
    // A client of an earlier worker of this process: its runtime may not be dropped in an
    // async context, which this thread may be.
    if let Some(old) = old {
        std::thread::spawn(move || drop(old));
    }
    Ok(client)
}

/// Give this task's thread back to its worker while it waits (on futures of tasks it
/// submitted, say): the worker starts the next ready task and the scheduler no longer
/// counts this one as load (Dask's `secede`). Resources the task holds stay held. Does
/// nothing if already seceded. An error outside a task on a worker.
pub fn secede() -> Result<()> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(c) = c.as_mut() else {
            return Err(outside_a_task("secede()"));
        };
        if c.inline {
            return Err(needs_pool(c, "secede()"));
        }
        locked(&c.worker.uses_cluster).insert(c.key.group().to_string());
        if c.seceded {
            return Ok(());
        }
        let key = c.key.clone();
        c.worker
            .events
            .send(WorkerEvent::Secede { key })
            .map_err(|_| worker_stopped())?;
        c.seceded = true;
        Ok(())
    })
}

/// After [`secede`]: wait until the worker has a thread for this task again (before any
/// task still queued there), then go on (Dask's `rejoin`). Does nothing if the task has
/// not seceded. An error outside a task on a worker, or if the worker stops meanwhile.
pub fn rejoin() -> Result<()> {
    let wait = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(c) = c.as_mut() else {
            return Err(outside_a_task("rejoin()"));
        };
        if !c.seceded {
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (locked(&c.worker.rejoining).as_mut())
            .ok_or_else(worker_stopped)?
            .insert(c.key.clone(), tx);
        let key = c.key.clone();
        c.worker
            .events
            .send(WorkerEvent::Rejoin { key })
            .map_err(|_| worker_stopped())?;
        c.seceded = false;
        Ok(Some(rx))
    })?;
    match wait {
        Some(rx) => rx.recv().map_err(|_| {
            Error::Transport("the worker stopped while this task waited to rejoin".into())
        }),
        None => Ok(()),
    }
}

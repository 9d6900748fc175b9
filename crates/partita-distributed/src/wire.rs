//! Moving bytes: framed control messages on QUIC streams, the join handshake, and the data
//! protocol by which workers and clients fetch values from a worker.
//!
//! - A control connection is one long-lived bidirectional stream: `Hello` from the joining
//!   side, [`Welcome`] back, then length-prefixed MessagePack frames (partita-proto's
//!   `frame`/`encode`) in both directions. A writer task drains a channel and writes every
//!   frame queued so far in one call, so bursts of small messages share packets.
//! - A value is fetched on a fresh stream of a cached connection to the holder: `Hello`
//!   (for the token) and `DataOpen::Fetch` frames, answered by a `DataResponse` frame
//!   followed by the value's own encoding (raw buffers for arrays, Arrow IPC for frames) as
//!   raw bytes. A client scattering a value pushes it the same way: `Hello`,
//!   `DataOpen::Push` and the encoding, answered by a `PushReply`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use partita_core::{Error, Key, Result, Value};
use partita_proto::messages::{
    DataOpen, DataPush, DataRequest, DataResponse, Hello, MAX_CONTROL_MESSAGE_BYTES,
    PROTOCOL_VERSION, PushReply, Role, RunReply, RunRequest, TaskFailure, decode,
    encode_framed_into,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::cluster_file::{ClusterFile, Link, SERVER_NAME};

/// The scheduler's answer to a `Hello`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Welcome {
    /// Joined; the id the scheduler gave the peer (a `WorkerId` or `ClientId`).
    Accepted { id: u32 },
    /// Refused, and why (wrong token, other protocol version).
    Refused { reason: String },
}

/// Largest value a peer may announce (1 TiB): a corrupt length must not allocate wildly.
const MAX_VALUE_BYTES: u64 = 1 << 40;

fn transport(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport(format!("{what}: {e}"))
}

/// A state machine's log line, through `tracing`.
pub(crate) fn log(level: partita_proto::scheduler::LogLevel, line: &str) {
    use partita_proto::scheduler::LogLevel;
    match level {
        LogLevel::Debug => tracing::debug!("{line}"),
        LogLevel::Info => tracing::info!("{line}"),
        LogLevel::Warn => tracing::warn!("{line}"),
        LogLevel::Error => tracing::error!("{line}"),
    }
}

/// Encode and frame a message, ready for a stream.
pub fn framed<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_framed_into(msg, &mut out)?;
    Ok(out)
}

/// Write one framed message.
pub async fn write_msg<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<()> {
    send.write_all(&framed(msg)?)
        .await
        .map_err(|e| transport("write", e))
}

/// Read one framed message; `None` when the stream ended cleanly between messages.
pub async fn read_msg<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<Option<T>> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(transport("read", e)),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_CONTROL_MESSAGE_BYTES {
        return Err(Error::Codec(format!(
            "frame declares {len} bytes, over the limit of {MAX_CONTROL_MESSAGE_BYTES} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| transport("read (truncated frame)", e))?;
    decode(&body).map(Some)
}

/// Spawn the task writing pre-framed messages from `rx` to `send`, batching what is queued.
///
/// Batching costs no latency: the event loops feeding these channels hand over everything
/// one pass over their ready events produced as one buffer (see [`Outbox`]), and the
/// writer adds whatever else is queued when it runs.
pub fn spawn_writer(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    tokio::spawn(async move {
        while let Some(mut buf) = rx.recv().await {
            while buf.len() < (1 << 20) {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
}

/// Frames an event loop produced for one peer, encoded in place one after another into one
/// buffer (no buffer per message), held until the loop has no ready event left (or
/// [`Outbox::FLUSH_BYTES`] pile up), then handed to the peer's writer at once.
///
/// A worker running a hundred quick tasks in one pass sends their hundred `TaskFinished`
/// in one write, one packet, one wake-up of the scheduler, instead of a hundred; a lone
/// message still leaves as soon as the loop goes idle, which is at once.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
}

impl Outbox {
    /// Hand over early past this many bytes, so a long pass streams.
    pub const FLUSH_BYTES: usize = 1 << 20;

    /// Queue an encoded message; hands over to `to` if the buffer is large.
    pub fn push<T: Serialize>(
        &mut self,
        msg: &T,
        to: &mpsc::UnboundedSender<Vec<u8>>,
    ) -> Result<()> {
        encode_framed_into(msg, &mut self.buf)?;
        if self.buf.len() >= Self::FLUSH_BYTES {
            self.flush(to);
        }
        Ok(())
    }

    /// Hand whatever is queued to the writer.
    pub fn flush(&mut self, to: &mpsc::UnboundedSender<Vec<u8>>) {
        if !self.buf.is_empty() {
            let _ = to.send(std::mem::take(&mut self.buf));
        }
    }
}

/// A `Hello` for this cluster.
pub fn hello(cluster: &ClusterFile, role: Role, name: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        role,
        token: cluster.token.clone(),
        name: name.to_string(),
    }
}

/// Connect to the scheduler and join as `role`: returns the connection, the control stream
/// and the id the scheduler assigned.
pub async fn join(
    endpoint: &quinn::Endpoint,
    cluster: &ClusterFile,
    role: Role,
    name: &str,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, u32)> {
    let addr = resolve(&cluster.address)?;
    let conn = endpoint
        .connect_with(cluster.client_config(Link::to(addr))?, addr, SERVER_NAME)
        .map_err(|e| transport(&format!("cannot connect to the scheduler at {addr}"), e))?
        .await
        .map_err(|e| transport(&format!("cannot connect to the scheduler at {addr}"), e))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport("open", e))?;
    write_msg(&mut send, &hello(cluster, role, name)).await?;
    match read_msg::<Welcome>(&mut recv).await? {
        Some(Welcome::Accepted { id }) => Ok((conn, send, recv, id)),
        Some(Welcome::Refused { reason }) => Err(Error::Auth(format!(
            "the scheduler at {addr} refused this peer: {reason}"
        ))),
        None => Err(Error::Transport(format!(
            "the scheduler at {addr} closed the connection during the handshake"
        ))),
    }
}

/// Read a value of `nbytes` whose last `body` bytes are its bulk: the head into a byte
/// buffer, the body into 8-byte words the value's codec can keep as they are (an f64
/// array's elements), so a received array is copied once, out of quinn's buffers; a
/// length over [`MAX_VALUE_BYTES`] or that the machine cannot allocate is an error, not an
/// abort. The outer error is the stream's (the rest of the response is lost); the inner
/// one this value's decoding.
/// Send `value` on `send`: `before` (bytes already framed: a hello, a request), then the
/// header `header(nbytes, body)` makes, then the value's encoding, its body straight from
/// the value's memory (an array's buffer) as quinn takes it, never copied into an encoding
/// first. `what` names the transfer in errors.
pub(crate) async fn write_value<H: Serialize>(
    send: &mut quinn::SendStream,
    mut before: Vec<u8>,
    value: &Value,
    header: impl FnOnce(u64, u64) -> H,
    what: &str,
) -> Result<()> {
    let (head, mut parts) = value.encode_split()?;
    let body: usize = parts.iter().map(|p| p.len()).sum();
    before.extend(framed(&header((head.len() + body) as u64, body as u64))?);
    let failed = |e| Error::Transport(format!("{what}: {e}"));
    send.write_all(&before).await.map_err(failed)?;
    send.write_chunk(head.into()).await.map_err(failed)?;
    send.write_all_chunks(&mut parts).await.map_err(failed)?;
    Ok(())
}

pub(crate) async fn read_value(
    recv: &mut quinn::RecvStream,
    nbytes: u64,
    body: u64,
    key: &Key,
) -> Result<Result<Value>> {
    if nbytes > MAX_VALUE_BYTES {
        return Err(Error::Codec(format!(
            "{key}: {nbytes} bytes announced, over the limit of {MAX_VALUE_BYTES}"
        )));
    }
    let too_big = |what: &str| Error::Codec(format!("{key}: {what} do not fit in memory"));
    let n = usize::try_from(nbytes).map_err(|_| too_big(&format!("{nbytes} bytes")))?;
    let body = usize::try_from(body).map_err(|_| too_big(&format!("{body} bytes")))?;
    let Some(head_len) = n.checked_sub(body) else {
        return Err(Error::Codec(format!(
            "{key}: a body of {body} bytes in a value of {n}"
        )));
    };
    let mut head = Vec::new();
    head.try_reserve_exact(head_len)
        .map_err(|e| Error::Codec(format!("{key}: cannot hold {head_len} bytes: {e}")))?;
    read_into(recv, head_len, key, n, 0, |b| head.extend_from_slice(b)).await?;
    // Zeroed by the allocator (fresh pages are zero already), so this is not a pass over
    // the memory; fallible, so an absurd announcement is an error, not an abort.
    let mut words: Vec<u64> = bytemuck::allocation::try_zeroed_slice_box(body.div_ceil(8))
        .map_err(|()| Error::Codec(format!("{key}: cannot hold {body} bytes")))?
        .into_vec();
    let mut at = 0;
    {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        read_into(recv, body, key, n, head_len, |b| {
            bytes[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        })
        .await?;
    }
    Ok(Value::decode_split(head.into(), words, body))
}

/// Read exactly `len` bytes of a value, handing each piece to `sink` (never more than
/// asked for, so `sink` may index a buffer of `len` bytes).
async fn read_into(
    recv: &mut quinn::RecvStream,
    len: usize,
    key: &Key,
    total: usize,
    done_before: usize,
    mut sink: impl FnMut(&[u8]),
) -> Result<()> {
    let mut got = 0;
    while got < len {
        match recv.read_chunk(len - got, true).await {
            Ok(Some(chunk)) => {
                got += chunk.bytes.len();
                sink(&chunk.bytes);
            }
            Ok(None) => {
                return Err(Error::Transport(format!(
                    "{key}: the stream ended after {} of {total} bytes",
                    done_before + got
                )));
            }
            Err(e) => return Err(transport("read", e)),
        }
    }
    Ok(())
}

/// `host:port` to a socket address.
pub fn resolve(address: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| Error::Transport(format!("cannot resolve {address:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{address:?} resolves to no address")))
}

/// Connections to peers' data servers, opened on first use and reused.
///
/// Each address has its own slot, locked while connecting: a connection attempt to a
/// worker that died (which waits out the handshake timeout) holds up requests to that
/// address only, never to the others nor [`Peers::forget`].
#[derive(Debug)]
pub struct Peers {
    endpoint: quinn::Endpoint,
    cluster: Arc<ClusterFile>,
    name: String,
    connections: std::sync::Mutex<HashMap<String, Slot>>,
    next_request: AtomicU64,
}

type Slot = Arc<Mutex<PeerLink>>;

/// What is known of one peer's address.
#[derive(Debug, Default)]
struct PeerLink {
    conn: Option<quinn::Connection>,
    /// The peer stopped answering (its connection timed out, or connecting did) at this
    /// instant: requests fail at once for [`UNREACHABLE_FOR`] instead of each waiting out
    /// another handshake timeout (a worker that died, before the scheduler says so).
    unreachable: Option<(std::time::Instant, String)>,
}

/// How long a peer that stopped answering is not tried again.
const UNREACHABLE_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl Peers {
    pub fn new(endpoint: quinn::Endpoint, cluster: Arc<ClusterFile>, name: String) -> Peers {
        Peers {
            endpoint,
            cluster,
            name,
            connections: std::sync::Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn connection(&self, address: &str) -> Result<quinn::Connection> {
        let slot = Arc::clone(self.slots().entry(address.to_string()).or_default());
        let mut link = slot.lock().await;
        if let Some(c) = link.conn.take() {
            match c.close_reason() {
                None => {
                    link.conn = Some(c.clone());
                    return Ok(c);
                }
                Some(quinn::ConnectionError::TimedOut) => {
                    link.unreachable = Some((std::time::Instant::now(), "timed out".into()));
                }
                Some(_) => {}
            }
        }
        if let Some((since, why)) = &link.unreachable {
            if since.elapsed() < UNREACHABLE_FOR {
                return Err(Error::Transport(format!(
                    "worker {address} is unreachable ({why} {:.1} s ago)",
                    since.elapsed().as_secs_f64()
                )));
            }
            link.unreachable = None;
        }
        let addr = resolve(address)?;
        let connecting = self
            .endpoint
            .connect_with(
                self.cluster.client_config(Link::to(addr))?,
                addr,
                SERVER_NAME,
            )
            .map_err(|e| transport(&format!("cannot connect to worker {address}"), e))?;
        match connecting.await {
            Ok(fresh) => {
                link.conn = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => {
                let why = format!("connecting failed: {e}");
                link.unreachable = Some((std::time::Instant::now(), why));
                Err(transport(&format!("cannot connect to worker {address}"), e))
            }
        }
    }

    /// Close the connection to `address` (a worker that left), failing the fetches and
    /// pushes on it at once; a later request connects afresh.
    pub fn forget(&self, address: &str) {
        let Some(slot) = self.slots().remove(address) else {
            return;
        };
        // Locked: a connection attempt is under way, and fails by itself.
        if let Ok(link) = slot.try_lock()
            && let Some(c) = link.conn.as_ref()
        {
            c.close(0u32.into(), b"the worker left the cluster");
        }
    }

    /// Fetch `key` from the data server at `address`.
    pub async fn fetch(&self, address: &str, key: &Key) -> Result<Value> {
        let mut results = self.fetch_many(address, std::slice::from_ref(key)).await;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::Internal(format!("no answer for {key}"))))
    }

    /// Fetch `keys` from the data server at `address` in one request (one stream, one
    /// round trip): one result per key, in order. Keys the peer does not hold are errors
    /// of their own; a broken stream fails the keys not yet received.
    pub async fn fetch_many(&self, address: &str, keys: &[Key]) -> Vec<Result<Value>> {
        let mut out = Vec::with_capacity(keys.len());
        if let Err(e) = self.fetch_into(address, keys, &mut out).await {
            while let Some(key) = keys.get(out.len()) {
                out.push(Err(Error::Transport(format!(
                    "fetching {key} from {address}: {e}"
                ))));
            }
        }
        out
    }

    /// Push `value` under `key` to the data server at `address` (a client's scatter), and
    /// wait for the worker to say it kept it; `copy` for a further replica of a value the
    /// cluster holds already.
    pub async fn push(&self, address: &str, key: &Key, value: &Value, copy: bool) -> Result<()> {
        let conn = self.connection(address).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport("open", e))?;
        let hello = framed(&hello(&self.cluster, Role::Client, &self.name))?;
        let push = |nbytes, body| {
            DataOpen::Push(DataPush {
                key: key.clone(),
                nbytes,
                body,
                copy,
            })
        };
        let what = format!("pushing {key} to worker {address}");
        write_value(&mut send, hello, value, push, &what).await?;
        let _ = send.finish();
        match read_msg::<PushReply>(&mut recv).await? {
            Some(PushReply::Stored { key: got }) if &got == key => Ok(()),
            Some(PushReply::Refused { reason, .. }) => Err(Error::Transport(format!(
                "worker {address} refused {key}: {reason}"
            ))),
            Some(PushReply::Stored { key: got }) => Err(Error::Codec(format!(
                "worker {address} answered for {got} where {key} was due"
            ))),
            None => Err(Error::Transport(format!(
                "worker {address} closed the stream before keeping {key}"
            ))),
        }
    }

    /// Run an encoded op (no inputs) on the worker at `address`: its value, or
    /// `Err(failure)` when the op failed there; the outer error is the stream's.
    pub async fn run(
        &self,
        address: &str,
        key: &Key,
        payload: &[u8],
    ) -> Result<std::result::Result<Value, TaskFailure>> {
        let conn = self.connection(address).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport("open", e))?;
        let mut request = framed(&hello(&self.cluster, Role::Client, &self.name))?;
        request.extend(framed(&DataOpen::Run(RunRequest {
            key: key.clone(),
            payload: serde_bytes::ByteBuf::from(payload.to_vec()),
        }))?);
        let failed = |e| Error::Transport(format!("running {key} on worker {address}: {e}"));
        send.write_all(&request).await.map_err(failed)?;
        let _ = send.finish();
        match read_msg::<RunReply>(&mut recv).await? {
            Some(RunReply::Value { nbytes, body }) => {
                read_value(&mut recv, nbytes, body, key).await?.map(Ok)
            }
            Some(RunReply::Failed { error }) => Ok(Err(error)),
            None => Err(Error::Transport(format!(
                "worker {address} closed the stream before answering {key}"
            ))),
        }
    }

    async fn fetch_into(
        &self,
        address: &str,
        keys: &[Key],
        out: &mut Vec<Result<Value>>,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let conn = self.connection(address).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport("open", e))?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut request = framed(&hello(&self.cluster, Role::Client, &self.name))?;
        request.extend(framed(&DataOpen::Fetch(DataRequest {
            request_id,
            keys: keys.to_vec(),
        }))?);
        send.write_all(&request)
            .await
            .map_err(|e| transport("request", e))?;
        let _ = send.finish();
        for key in keys {
            let (got, nbytes) = match read_msg::<DataResponse>(&mut recv).await? {
                Some(DataResponse::Data {
                    key, nbytes, body, ..
                }) => (key, Some((nbytes, body))),
                Some(DataResponse::Missing { key, .. }) => (key, None),
                None => {
                    return Err(Error::Transport(format!(
                        "worker {address} closed the stream before answering for {key}"
                    )));
                }
            };
            if &got != key {
                return Err(Error::Codec(format!(
                    "worker {address} answered with {got} where {key} was due"
                )));
            }
            let Some((nbytes, body)) = nbytes else {
                out.push(Err(Error::Transport(format!(
                    "worker {address} does not hold {key}"
                ))));
                continue;
            };
            // A value that does not decode fails alone; a broken stream fails the rest.
            out.push(read_value(&mut recv, nbytes, body, key).await?);
        }
        Ok(())
    }
}

//! The cluster file: where the scheduler is and the secrets to join it.
//!
//! The scheduler makes a self-signed certificate (rcgen) for the name [`SERVER_NAME`] and a
//! random token, and writes `{address, certificate, key, token}` as JSON with mode 0600.
//! Every peer trusts exactly that certificate (never the system's roots), workers serve
//! their data with it too, and every connection must present the token. The file is the
//! cluster's secret: whoever can read it can join.
//!
//! It also holds the QUIC transport settings, chosen per connection by [`Link`]: over
//! loopback, datagrams grow to 64 KiB (MTU discovery up to the largest UDP payload) and are
//! sent one per system call, which moves a 1 GB value about 3x faster than Ethernet-sized
//! datagrams batched by segmentation offload (quinn's per-packet work, not the copy or the
//! cipher, was the limit). Across a network the defaults stay: 1452-byte datagrams found by
//! MTU discovery, batched by GSO. Over loopback, too, each end asks the other to acknowledge
//! within a millisecond (QUIC's ACK frequency extension; 25 ms by default), and every
//! endpoint asks the kernel for 8 MiB socket buffers: with the default 208 KiB receive
//! buffer, bursts of 64 KiB datagrams were dropped, and a drop at the end of a transfer
//! stalled it for a probe timeout, which waits the peer's ACK delay (a 2 MB result took
//! 28 ms to gather instead of 1 ms).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use partita_core::{Error, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// The TLS name every partita endpoint answers to, whatever its address.
pub const SERVER_NAME: &str = "partita-cluster";

/// ALPN protocol id, so a stray QUIC client of another protocol is refused in the handshake.
pub const ALPN: &[u8] = b"partita/1";

/// The largest UDP payload QUIC may use (IPv6's limit; quinn caps there too).
const MAX_UDP_PAYLOAD: u16 = 65_527;

/// The kind of path a connection runs over, which decides its datagram sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Both ends on this machine: 64 KiB datagrams, no segmentation offload.
    Loopback,
    /// Anything else: Ethernet-sized datagrams batched by segmentation offload.
    Network,
}

impl Link {
    /// The link to (or from) `peer`.
    pub fn to(peer: SocketAddr) -> Link {
        if peer.ip().to_canonical().is_loopback() {
            Link::Loopback
        } else {
            Link::Network
        }
    }
}

/// Server configurations for both links, made once; [`ServerConfigs::accept`] picks one
/// for each incoming connection by where it comes from.
#[derive(Clone, Debug)]
pub struct ServerConfigs {
    loopback: Arc<quinn::ServerConfig>,
    network: Arc<quinn::ServerConfig>,
}

impl ServerConfigs {
    /// Start the handshake of `incoming` with the configuration for its link.
    pub fn accept(
        &self,
        incoming: quinn::Incoming,
    ) -> std::result::Result<quinn::Connecting, quinn::ConnectionError> {
        let config = match Link::to(incoming.remote_address()) {
            Link::Loopback => &self.loopback,
            Link::Network => &self.network,
        };
        incoming.accept_with(Arc::clone(config))
    }
}

/// A QUIC endpoint bound to `bind`, serving with `server` if given. Its peers may send
/// datagrams up to [`MAX_UDP_PAYLOAD`]; which size they use is decided per connection by
/// MTU discovery within the bound of its [`Link`].
pub fn endpoint(
    bind: SocketAddr,
    server: Option<&ServerConfigs>,
) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(std::io::Error::other)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime to run QUIC on"))?;
    let socket = std::net::UdpSocket::bind(bind)?;
    size_socket_buffers(&socket);
    quinn::Endpoint::new(
        config,
        server.map(|s| s.network.as_ref().clone()),
        socket,
        runtime,
    )
}

/// The longest a loopback peer may hold back an acknowledgement.
const LOOPBACK_ACK_DELAY: Duration = Duration::from_millis(1);

/// Socket buffer size asked of the kernel, each way.
const SOCKET_BUFFER: usize = 8 << 20;

/// Below this receive buffer, a burst of large datagrams overflows it.
const SMALL_RECEIVE_BUFFER: usize = 1 << 20;

/// Ask for [`SOCKET_BUFFER`] bytes of socket buffer each way. The kernel's default receive
/// buffer (208 KiB on Linux) holds three 64 KiB datagrams: a sender's burst overflows it,
/// the kernel drops datagrams, and each drop at the end of a transfer stalls it until
/// QUIC's probe timeout (about 30 ms) resends them. The kernel caps the size
/// (`net.core.rmem_max` on Linux); a cap below [`SMALL_RECEIVE_BUFFER`] is logged.
fn size_socket_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    match sock.recv_buffer_size() {
        Ok(n) if n < SMALL_RECEIVE_BUFFER => tracing::info!(
            "the UDP receive buffer is {n} bytes (asked for {SOCKET_BUFFER}): large transfers \
             may drop datagrams and stall; raise the system's cap (on Linux, sysctl \
             net.core.rmem_max) for faster transfers"
        ),
        Ok(n) => tracing::debug!("UDP receive buffer: {n} bytes"),
        Err(e) => tracing::debug!("cannot read the UDP receive buffer size: {e}"),
    }
}

/// Everything a worker or client needs to join a cluster.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The scheduler's address (`host:port`).
    pub address: String,
    /// The cluster's certificate, PEM.
    pub certificate: String,
    /// Its private key, PEM (workers serve data with it).
    pub key: String,
    /// The shared secret every connection presents.
    pub token: String,
    /// Where the scheduler serves `/metrics` and `/info` (`host:port`), if it does
    /// (`partita scheduler --metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

impl std::fmt::Debug for ClusterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFile")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ClusterFile {
    /// New credentials (a fresh certificate, key and token) for a scheduler at `address`.
    pub fn generate(address: String) -> Result<ClusterFile> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| Error::Internal(format!("cannot generate a certificate: {e}")))?;
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::Internal(format!("no randomness for the cluster token: {e}")))?;
        Ok(ClusterFile {
            address,
            certificate: certified.cert.pem(),
            key: certified.signing_key.serialize_pem(),
            token: secret.iter().map(|b| format!("{b:02x}")).collect(),
            metrics: None,
        })
    }

    /// Whether `other` holds the same certificate, key and token (its address may differ).
    pub fn same_credentials(&self, other: &ClusterFile) -> bool {
        self.certificate == other.certificate && self.key == other.key && self.token == other.token
    }

    /// Read and check a cluster file.
    pub fn read(path: &Path) -> Result<ClusterFile> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let file: ClusterFile = serde_json::from_str(&text).map_err(|e| {
            Error::Codec(format!(
                "{} is not a partita cluster file: {e}",
                path.display()
            ))
        })?;
        file.certificate_der()?;
        file.key_der()?;
        Ok(file)
    }

    /// Write atomically (temporary file, then rename) with mode 0600.
    pub fn write(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp: PathBuf = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cluster"),
            std::process::id()
        ));
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Codec(format!("cannot encode the cluster file: {e}")))?;
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    fn certificate_der(&self) -> Result<CertificateDer<'static>> {
        CertificateDer::from_pem_slice(self.certificate.as_bytes())
            .map_err(|e| Error::Codec(format!("the cluster file's certificate is not PEM: {e}")))
    }

    fn key_der(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| Error::Codec(format!("the cluster file's key is not PEM: {e}")))
    }

    /// Server configurations for both links (see [`ServerConfigs`]).
    pub fn server_configs(&self) -> Result<ServerConfigs> {
        Ok(ServerConfigs {
            loopback: Arc::new(self.server_config(Link::Loopback)?),
            network: Arc::new(self.server_config(Link::Network)?),
        })
    }

    /// A QUIC server configuration presenting the cluster's certificate, for `link`.
    pub fn server_config(&self, link: Link) -> Result<quinn::ServerConfig> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(vec![self.certificate_der()?], self.key_der()?)
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(tls_error)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport(link));
        Ok(config)
    }

    /// A QUIC client configuration trusting only the cluster's certificate, for `link`.
    pub fn client_config(&self, link: Link) -> Result<quinn::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.certificate_der()?).map_err(tls_error)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(tls_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(link));
        Ok(config)
    }
}

/// ring's TLS 1.3 suites with AES-128-GCM first (ring's default puts AES-256-GCM first).
/// Both ends are partita's, so the first suite is the one every connection uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Transport(format!("TLS configuration: {e}"))
}

/// Keep-alives every second and a 5 s idle timeout: a SIGKILLed peer (which sends nothing)
/// is noticed within seconds. Windows sized for bulk transfers on fast links. Over loopback,
/// MTU discovery searches up to 64 KiB and segmentation offload is off: quinn would batch
/// up to ten such datagrams into one send, more than the kernel takes in one (64 KiB); with
/// it on, 64 KiB datagrams measured no faster than Ethernet-sized ones.
fn transport(link: Link) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("5 s is a valid timeout"),
    ));
    t.max_concurrent_bidi_streams(1024u32.into());
    t.stream_receive_window((64u32 << 20).into());
    t.receive_window((256u32 << 20).into());
    t.send_window(256 << 20);
    if link == Link::Loopback {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        t.enable_segmentation_offload(false);
        // Acknowledge within a millisecond, not QUIC's default 25 ms: the probe timeout that
        // resends a datagram lost at the end of a burst waits the peer's ACK delay, and a
        // sender short of congestion window waits for late acknowledgements.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.max_ack_delay(Some(LOOPBACK_ACK_DELAY))
            .reordering_threshold(1u32.into());
        t.ack_frequency_config(Some(ack));
    }
    Arc::new(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        let file = ClusterFile::generate("127.0.0.1:1234".into()).unwrap();
        file.write(&path).unwrap();
        let back = ClusterFile::read(&path).unwrap();
        assert_eq!(back.address, "127.0.0.1:1234");
        assert_eq!(back.token, file.token);
        assert_eq!(back.token.len(), 48);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(
            ClusterFile::generate("x:1".into()).unwrap().token,
            file.token
        );
    }

    #[test]
    fn links_are_told_apart_by_address() {
        for loopback in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                Link::to(loopback.parse().unwrap()),
                Link::Loopback,
                "{loopback}"
            );
        }
        for network in [
            "10.0.0.1:1",
            "192.168.1.2:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert_eq!(
                Link::to(network.parse().unwrap()),
                Link::Network,
                "{network}"
            );
        }
    }

    /// Over loopback, MTU discovery takes both directions of a connection to datagrams far
    /// beyond Ethernet's, which is what makes worker-to-worker transfers fast; and each end
    /// asks the other to acknowledge within [`LOOPBACK_ACK_DELAY`] (an ACK_FREQUENCY frame).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_connections_grow_their_datagrams_and_ack_quickly() {
        let file = ClusterFile::generate("127.0.0.1:0".into()).unwrap();
        let servers = file.server_configs().unwrap();
        let server = endpoint("127.0.0.1:0".parse().unwrap(), Some(&servers)).unwrap();
        let addr = server.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let incoming = server.accept().await.unwrap();
            let conn = servers.accept(incoming).unwrap().await.unwrap();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let body = recv.read_to_end(1 << 24).await.unwrap();
                send.write_all(&body).await.unwrap();
                send.finish().unwrap();
            }
            let stats = conn.stats();
            (stats.path.current_mtu, stats.frame_tx.ack_frequency)
        });
        let client = endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let config = file.client_config(Link::to(addr)).unwrap();
        let conn = client
            .connect_with(config, addr, SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let body = vec![7u8; 4 << 20];
        // Discovery runs alongside traffic; give it a few round trips of data.
        for _ in 0..50 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&body).await.unwrap();
            send.finish().unwrap();
            assert_eq!(recv.read_to_end(1 << 24).await.unwrap(), body);
            if conn.stats().path.current_mtu > 16_000 {
                break;
            }
        }
        let client_mtu = conn.stats().path.current_mtu;
        let client_asked = conn.stats().frame_tx.ack_frequency;
        conn.close(0u32.into(), b"done");
        let (server_mtu, server_asked) = echo.await.unwrap();
        assert!(client_asked > 0, "the client never asked for quick acks");
        assert!(server_asked > 0, "the server never asked for quick acks");
        assert!(
            client_mtu > 16_000,
            "client datagrams stayed at {client_mtu} bytes"
        );
        assert!(
            server_mtu > 16_000,
            "server datagrams stayed at {server_mtu} bytes"
        );
    }

    #[test]
    fn socket_buffers_grow_as_far_as_the_system_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&socket);
        let before = sock.recv_buffer_size().unwrap();
        size_socket_buffers(&socket);
        let after = sock.recv_buffer_size().unwrap();
        assert!(
            after >= before,
            "the receive buffer shrank: {before} -> {after}"
        );
        // Linux grants what is asked up to net.core.rmem_max (and reports twice that).
        #[cfg(target_os = "linux")]
        if let Ok(cap) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") {
            let cap: usize = cap.trim().parse().unwrap();
            assert!(
                after >= SOCKET_BUFFER.min(cap),
                "receive buffer {after} bytes, cap {cap}, asked {SOCKET_BUFFER}"
            );
        }
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\"address\": 3}").unwrap();
        let err = ClusterFile::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("not a partita cluster file"),
            "{err}"
        );
        let err = ClusterFile::read(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }
}

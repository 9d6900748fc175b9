"""The yardstick for "loopback speed" with encryption: 1 GiB over TLS 1.3 on 127.0.0.1.

    python3 benches/compare/tls_loopback.py [ROUNDS]

Like `tcp_loopback.py`, but both ends speak TLS 1.3 with AES-128-GCM (what partita's QUIC
connections prefer) through Python's `ssl` (OpenSSL), the receiver in a process of its own
reading into one reused 4 MiB buffer. The certificate is a throwaway self-signed one made
with the `openssl` command. partita's worker-to-worker transfer
(`cargo run --release -p partita-examples --bin cluster_workloads -- transfer`) encrypts
and decrypts every byte the same way, over QUIC instead of TCP.
"""

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# TLS 1.3 suites cannot be chosen from Python before 3.13: OpenSSL's configuration, read
# when `ssl` loads, limits them to AES-128-GCM.
_CONF = Path(tempfile.mkdtemp(), "openssl.cnf")
_CONF.write_text(
    "openssl_conf = default_conf\n[default_conf]\nssl_conf = ssl_sect\n"
    "[ssl_sect]\nsystem_default = tls\n[tls]\nCiphersuites = TLS_AES_128_GCM_SHA256\n"
)
os.environ["OPENSSL_CONF"] = str(_CONF)
import ssl  # noqa: E402

TOTAL = 1 << 30
CHUNK = 4 << 20


def receive(cert: str, key: str, port, ready) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port.value = server.getsockname()[1]
    ready.set()
    conn, _ = server.accept()
    conn = ctx.wrap_socket(conn, server_side=True)
    buf = memoryview(bytearray(CHUNK))
    got = 0
    while got < TOTAL:
        n = conn.recv_into(buf, CHUNK)
        if n == 0:
            raise RuntimeError(f"connection closed after {got} of {TOTAL} bytes")
        got += n
    conn.sendall(b"!")
    conn.close()


def one_round(cert: str, key: str) -> float:
    port, ready = mp.Value("i", 0), mp.Event()
    receiver = mp.Process(target=receive, args=(cert, key, port, ready))
    receiver.start()
    ready.wait()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sender = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port.value)))
    data = bytes(CHUNK)
    start = time.perf_counter()
    for _ in range(TOTAL // CHUNK):
        sender.sendall(data)
    sender.recv(1)  # the receiver has everything
    elapsed = time.perf_counter() - start
    suite = sender.cipher()[0]
    if suite != "TLS_AES_128_GCM_SHA256":
        raise RuntimeError(f"negotiated {suite}, not AES-128-GCM")
    sender.close()
    receiver.join()
    return elapsed


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = str(Path(tmp, "cert.pem")), str(Path(tmp, "key.pem"))
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", key, "-out", cert, "-days", "1", "-nodes", "-subj", "/CN=localhost"],
            check=True, capture_output=True,
        )
        for _ in range(rounds):
            t = one_round(cert, key)
            print(f"TLS 1.3 loopback 1 GiB into a reused 4 MiB buffer: {t:.3f} s  {TOTAL / t / 1e9:.2f} GB/s")

"""The yardstick for "loopback speed": 1 GiB over plain TCP on 127.0.0.1, no encryption.

    python3 benches/compare/tcp_loopback.py [ROUNDS]

Prints each round's time and GB/s twice: received into one reused 4 MiB buffer (the
socket's own speed), and received into a fresh 1 GiB buffer, as a receiver that keeps the
value must (the kernel then zeroes each page on first touch). partita's worker-to-worker
transfer (`cargo run --release -p partita-examples --bin cluster_workloads -- transfer`)
keeps what it receives, and goes over QUIC with TLS 1.3, so it also encrypts and decrypts
every byte this does not.
"""

import socket
import sys
import threading
import time

TOTAL = 1 << 30
CHUNK = 4 << 20


def receive(server: socket.socket, keep: bool) -> None:
    conn, _ = server.accept()
    buf = memoryview(bytearray(TOTAL if keep else CHUNK))
    got = 0
    while got < TOTAL:
        n = conn.recv_into(buf[got:] if keep else buf)
        if n == 0:
            raise RuntimeError(f"connection closed after {got} of {TOTAL} bytes")
        got += n
    conn.close()


def one_round(keep: bool) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    receiver = threading.Thread(target=receive, args=(server, keep))
    receiver.start()
    sender = socket.socket()
    sender.connect(server.getsockname())
    data = bytes(CHUNK)
    start = time.perf_counter()
    for _ in range(TOTAL // CHUNK):
        sender.sendall(data)
    receiver.join()
    elapsed = time.perf_counter() - start
    sender.close()
    server.close()
    return elapsed


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for _ in range(rounds):
        for keep, into in ((False, "a reused 4 MiB buffer"), (True, "fresh memory")):
            t = one_round(keep)
            print(f"TCP loopback 1 GiB into {into}: {t:.3f} s  {TOTAL / t / 1e9:.2f} GB/s")

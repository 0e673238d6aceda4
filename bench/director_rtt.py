#!/usr/bin/env python3
"""Round-trip latency on one TCP connection, for bench/director.sh.

  director_rtt.py echo PORT              threaded echo server on 127.0.0.1:PORT (TCP_NODELAY)
  director_rtt.py rtt PORT [N] [WARMUP]  WARMUP round trips (default 500), then N (default 20000)
                                         64-byte round trips on one TCP_NODELAY connection to
                                         127.0.0.1:PORT; prints `p50_us=… p99_us=… n=…`

Every socket operation has a 10 s timeout, so a stuck proxy ends the client instead of hanging it.
"""
import socket
import sys
import threading
import time

SIZE = 64


def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return


def echo(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1024)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def rtt(port, n, warmup):
    payload = b"x" * SIZE
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples = []
    clock = time.perf_counter_ns
    for i in range(warmup + n):
        t0 = clock()
        sock.sendall(payload)
        got = 0
        while got < SIZE:
            chunk = sock.recv(SIZE - got)
            if not chunk:
                sys.exit("connection closed by the peer")
            got += len(chunk)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
    sock.close()
    samples.sort()

    def pct(p):
        return samples[min(len(samples) - 1, int(len(samples) * p))] / 1000.0

    print(f"p50_us={pct(0.50):.1f} p99_us={pct(0.99):.1f} n={len(samples)}")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "echo":
        echo(int(sys.argv[2]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "rtt":
        n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
        warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 500
        rtt(int(sys.argv[2]), n, warmup)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

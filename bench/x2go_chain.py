#!/usr/bin/env python3
"""AUTHID chains as X2Go Client makes them, with per-request latency.

Each of CLIENTS clients logs in once with its password, then sends TASK with the AUTHID of the
previous reply, over one keep-alive connection, for SECONDS (at most 200,000 requests each). A
refused token starts a new chain with the password (counted as a relogin). Prints one line:

    requests N  req/s R  p50 A ms  p99 B ms  max C ms  relogins L  errors E

Latency is measured around each request from this process (the chain's password logins are
excluded: they are PAM's time, not the token path's). wrk's latency figures are not used here:
with a Lua `response` callback its histogram does not match the requests it made.

Usage: x2go_chain.py URL USER PASSWORD TASK CLIENTS SECONDS [SID]
"""
import asyncio
import re
import sys
import time
import urllib.parse

URL, USER, PASSWORD, TASK = sys.argv[1:5]
CLIENTS, SECONDS = int(sys.argv[5]), float(sys.argv[6])
SID = sys.argv[7] if len(sys.argv) > 7 else ""
MAX_REQUESTS = 200_000
u = urllib.parse.urlsplit(URL)
HOST, PORT, PATH = u.hostname, u.port, u.path or "/"
AUTHID = re.compile(rb"AUTHID:([^\n]+)\n")


async def call(reader, writer, body):
    data = body.encode()
    writer.write(
        (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n"
         f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        + data)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    payload = await reader.readexactly(length)
    return status, payload


async def client(deadline, lat, stats):
    reader, writer = await asyncio.open_connection(HOST, PORT)
    q = urllib.parse.quote
    prefix = f"task={TASK}&user={q(USER)}&sid={q(SID)}&login={q(USER)}"
    authid = None
    n = 0
    while time.monotonic() < deadline and n < MAX_REQUESTS:
        n += 1
        if authid is None:
            status, body = await call(reader, writer, f"{prefix}&password={q(PASSWORD)}&authid=")
        else:
            t = time.perf_counter()
            status, body = await call(reader, writer, f"{prefix}&password=&authid={authid}")
            lat.append(time.perf_counter() - t)
        m = AUTHID.search(body) if status == 200 else None
        if m:
            authid = m.group(1).decode()
        else:
            if authid is not None:
                stats["relogins"] += 1
            if status != 200:
                stats["errors"] += 1
            authid = None
    writer.close()


async def main():
    lat, stats = [], {"relogins": 0, "errors": 0}
    start = time.monotonic()
    deadline = start + SECONDS
    await asyncio.gather(*(client(deadline, lat, stats) for _ in range(CLIENTS)))
    took = time.monotonic() - start
    lat.sort()
    pick = lambda f: lat[min(len(lat) - 1, int(len(lat) * f))] * 1000 if lat else float("nan")
    print(f"requests {len(lat)}  req/s {len(lat) / took:.0f}  p50 {pick(0.50):.2f} ms  "
          f"p99 {pick(0.99):.2f} ms  max {pick(1.0):.2f} ms  relogins {stats['relogins']}  errors {stats['errors']}")


asyncio.run(main())

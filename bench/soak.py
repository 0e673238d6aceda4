#!/usr/bin/env python3
"""Soak: mixed load on the real broker with faults injected at random, and what was lost.

One `switchboard broker` on a PostgreSQL cluster of the soak's own, 20 simulated agent hosts
(`switchboard agent --simulate`, reporting every second), and for MINUTES:
  * REST placements with confirmation (pool `sim`, 15 hosts), drains, undrains and weight
    changes (every acknowledged change is remembered);
  * X2Go logins (`/plain/` selectsession with a password, profile `desk`, 5 hosts);
  * faults, one every 20-40 s, chosen at random: SIGKILL of the broker (restarted at once),
    SIGKILL of the agent simulator (restarted), a PostgreSQL lock on the store's tables for 8 s,
    a PostgreSQL restart, a slowloris burst (600 half-open HTTP connections held 15 s).

Then the load stops, the broker is given time to come back, and every acknowledged write is
checked against the store itself (psql), not the broker: each confirmed session's row, and each
host's weight (the last acknowledged value, or a later one whose answer was lost with a fault).

Prints requests served, errors by class, the faults injected, the longest window with no
successful placement, and acknowledged writes lost (must be 0), each also as a FIGURE line.

Usage: bench/soak.py BINARY MINUTES   (bench/soak.sh starts PostgreSQL and calls this)
Environment: SOAK_PG_URL, SOAK_PG_CTL (a command line that runs pg_ctl for the cluster),
SOAK_PG_DATA, SOAK_PSQL.
"""

import http.client
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BIN = os.path.abspath(sys.argv[1])
MINUTES = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
PG_URL = os.environ["SOAK_PG_URL"]
PG_CTL = shlex.split(os.environ["SOAK_PG_CTL"])
PG_DATA = os.environ["SOAK_PG_DATA"]
PSQL = os.environ.get("SOAK_PSQL", "psql")
HOSTS = 20
X2GO_HOSTS = 5
USER, PASSWORD = "soaker", "soak-pw-1"
random.seed(int(os.environ.get("SOAK_SEED", "7")))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def name(i):
    return "sim-%05d" % (i + 1)


def addr(i):
    return "127.0.%d.%d" % (((i + 2) >> 8) & 0xFF, (i + 2) & 0xFF)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = {}
        self.last_placement = time.time()
        self.longest_gap = 0.0
        self.faults = {}

    def served(self):
        with self.lock:
            self.ok += 1

    def error(self, cls):
        with self.lock:
            self.errors[cls] = self.errors.get(cls, 0) + 1

    def placed(self):
        with self.lock:
            now = time.time()
            self.longest_gap = max(self.longest_gap, now - self.last_placement)
            self.last_placement = now

    def fault(self, kind):
        with self.lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1


STATS = Stats()
CHILDREN = []


def request(port, method, path, token=None, body=None, form=None, timeout=10):
    """(status, bytes) or raises; one connection per request (faults break connections)."""
    headers = {}
    data = None
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def classify(status, body):
    try:
        code = json.loads(body)["error"]["code"]
    except Exception:
        code = "-"
    return "%d %s" % (status, code)


class Broker:
    def __init__(self, cfg, port, log):
        self.cfg, self.port, self.log = cfg, port, log
        self.proc = None
        self.lock = threading.Lock()

    def start(self):
        self.proc = subprocess.Popen([BIN, "broker", "--config", self.cfg], stderr=self.log,
                                     env=dict(os.environ, RUST_LOG="warn"))
        CHILDREN.append(self.proc)

    def wait_ready(self, limit=60):
        t0 = time.time()
        while time.time() - t0 < limit:
            try:
                if request(self.port, "GET", "/readyz", timeout=2)[0] == 200:
                    return time.time() - t0
            except OSError:
                pass
            time.sleep(0.05)
        return None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def placer(port, token, stop, acked, k):
    i = 0
    while not stop.is_set() and i < 1_000_000:
        i += 1
        user = "u%d-%d" % (k, i)
        try:
            s, b = request(port, "POST", "/api/v1/sessions", token, {"user": user, "pool": "sim"})
            if s != 200:
                STATS.error("place " + classify(s, b))
                time.sleep(0.2)
                continue
            sid = json.loads(b)["id"]
            s, b = request(port, "POST", "/api/v1/sessions/%d/confirm" % sid, token)
            if s == 200:
                STATS.served()
                STATS.placed()
                with STATS.lock:
                    acked.append(sid)
            else:
                STATS.error("confirm " + classify(s, b))
        except OSError as e:
            STATS.error("connection " + type(e).__name__)
            time.sleep(0.2)
        time.sleep(0.02)


def operator(port, token, stop, weights):
    """Drains, undrains and weight changes on the REST pool's hosts."""
    n = 0
    while not stop.is_set() and n < 1_000_000:
        n += 1
        h = name(random.randrange(X2GO_HOSTS, HOSTS))
        try:
            if random.random() < 0.6:
                w = random.randint(1, 250)
                with STATS.lock:
                    weights.setdefault(h, {"acked": None, "after": set()})["after"].add(w)
                s, b = request(port, "PUT", "/api/v1/hosts/%s/weight" % h, token, {"weight": w})
                if s == 200:
                    with STATS.lock:
                        weights[h] = {"acked": w, "after": set()}
            else:
                # A drain is undone at once: placements keep a place to go.
                s, b = request(port, "POST", "/api/v1/hosts/%s/drain" % h, token)
                if s == 200:
                    STATS.served()
                    s, b = request(port, "POST", "/api/v1/hosts/%s/undrain" % h, token)
            if s == 200:
                STATS.served()
            else:
                STATS.error("operator " + classify(s, b))
        except OSError as e:
            STATS.error("connection " + type(e).__name__)
        time.sleep(0.1)


def x2go(port, stop):
    n = 0
    while not stop.is_set() and n < 1_000_000:
        n += 1
        try:
            s, b = request(port, "POST", "/plain/", form={
                "task": "selectsession", "user": USER, "password": PASSWORD, "sid": "desk"},
                timeout=20)
            if s == 200 and b"SERVER:" in b:
                STATS.served()
            else:
                STATS.error("x2go %d %s" % (s, b.split(b"\n", 1)[0][:40].decode(errors="replace")))
        except OSError as e:
            STATS.error("connection " + type(e).__name__)
        time.sleep(0.5)


def slowloris(port, seconds=15, n=600):
    held = []
    for i in range(n):
        try:
            s = socket.socket()
            s.bind(("127.3.%d.%d" % (i // 250, i % 250 + 1), 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
            s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        except OSError:
            pass
    time.sleep(seconds)
    for s in held:
        s.close()


def psql(sql):
    return subprocess.run([PSQL, PG_URL, "-At", "-c", sql], capture_output=True, text=True,
                          timeout=60)


def main():
    work = tempfile.mkdtemp(prefix="switchboard-soak.")
    port, agent_port = free_port(), free_port()
    tokens = os.path.join(work, "tokens")
    token = subprocess.run([BIN, "token", "add", tokens, "soak"], check=True,
                           capture_output=True, text=True).stdout.strip()
    pw = os.path.join(work, "passwd")
    subprocess.run([BIN, "passwd", pw, USER], input=PASSWORD + "\n", check=True,
                   capture_output=True, text=True)
    profiles = os.path.join(work, "profiles.conf")
    with open(profiles, "w") as f:
        f.write("[desk]\nname=Soak desktops\ncommand=XFCE\nhost=%s\n" % ",".join(
            "%s (%s)" % (name(i), addr(i)) for i in range(X2GO_HOSTS)))
    cfg = os.path.join(work, "broker.toml")
    with open(cfg, "w") as f:
        f.write('data_dir = "%s"\n[store]\nurl = "%s"\n' % (work, PG_URL))
        f.write('[http]\nlisten = "127.0.0.1:%d"\n[agents]\nlisten = "127.0.0.1:%d"\n' % (port, agent_port))
        f.write('[api]\ntokens_file = "%s"\n[management]\nsocket = "%s/mgmt.sock"\n' % (tokens, work))
        f.write('[auth]\nmethod = "file:%s"\n[x2go]\nsession_profiles = "%s"\nagent = true\n' % (pw, profiles))
        f.write('[[pool]]\nname = "sim"\npolicy = "least-load"\n')
        for i in range(X2GO_HOSTS, HOSTS):
            f.write('[[pool.host]]\nname = "%s"\naddress = "%s:22"\n' % (name(i), addr(i)))
    log = open(os.path.join(work, "broker.log"), "w")
    broker = Broker(cfg, port, log)
    broker.start()
    if broker.wait_ready() is None:
        sys.exit("broker did not start; see " + log.name)
    creds = os.path.join(work, "credentials")
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        for i in range(HOSTS):
            s, b = request(port, "POST", "/api/v1/hosts/%s/credentials" % name(i), token)
            if s != 201:
                sys.exit("enroll %s: %d %s" % (name(i), s, b[:200]))
            f.write("%s %s\n" % (name(i), json.loads(b)["credential"]))
    agent_cfg = os.path.join(work, "agent.toml")
    with open(agent_cfg, "w") as f:
        f.write('broker = "127.0.0.1:%d"\nserver_name = "localhost"\n' % agent_port)
        f.write('ca = "%s/tls/agent-ca.crt"\ncredential_file = "%s"\nreport_interval = "1s"\n' % (work, creds))
    agent_log = open(os.path.join(work, "agents.log"), "w")

    def start_agents():
        p = subprocess.Popen([BIN, "agent", "--config", agent_cfg, "--simulate", str(HOSTS)],
                             stderr=agent_log, env=dict(os.environ, RUST_LOG="warn"))
        CHILDREN.append(p)
        return p

    agents = start_agents()
    time.sleep(3)
    stop = threading.Event()
    acked, weights = [], {}
    threads = [threading.Thread(target=placer, args=(port, token, stop, acked, k)) for k in range(4)]
    threads.append(threading.Thread(target=operator, args=(port, token, stop, weights)))
    threads.append(threading.Thread(target=x2go, args=(port, stop)))
    for t in threads:
        t.start()
    STATS.last_placement = time.time()
    end = time.time() + MINUTES * 60
    print("soak: %.1f min, broker on 127.0.0.1:%d, %d simulated hosts, work dir %s"
          % (MINUTES, port, HOSTS, work), flush=True)
    try:
        while time.time() < end - 30:
            time.sleep(random.uniform(20, 40))
            if time.time() >= end - 30:
                break
            kind = random.choice(["kill-broker", "kill-agents", "pg-lock", "pg-restart", "slowloris"])
            STATS.fault(kind)
            print("  %5.0f s  fault: %s" % (MINUTES * 60 - (end - time.time()), kind), flush=True)
            if kind == "kill-broker":
                broker.kill()
                broker.start()
            elif kind == "kill-agents":
                agents.send_signal(signal.SIGKILL)
                agents.wait()
                agents = start_agents()
            elif kind == "pg-lock":
                threading.Thread(target=psql, args=(
                    "BEGIN; LOCK TABLE sessions, host_state, audit IN ACCESS EXCLUSIVE MODE; "
                    "SELECT pg_sleep(8); COMMIT;",)).start()
            elif kind == "pg-restart":
                # The server must not inherit a pipe of ours: its log goes to a file.
                subprocess.run(PG_CTL + ["-D", PG_DATA,
                                         "-l", os.path.join(os.path.dirname(PG_DATA), "log"),
                                         "-m", "fast", "-w", "restart"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            else:
                threading.Thread(target=slowloris, args=(port,)).start()
        while time.time() < end:
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    if broker.proc.poll() is not None:
        broker.start()
    broker.wait_ready(120)
    time.sleep(2)

    # Every acknowledged write, against the store itself.
    lost = 0
    checked = 0
    ids = sorted(set(acked))
    found = set()
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        r = psql("SELECT id FROM sessions WHERE id IN (%s)" % ",".join(map(str, chunk)))
        if r.returncode != 0:
            sys.exit("psql: " + r.stderr)
        found.update(int(x) for x in r.stdout.split())
    lost += len(ids) - len(found)
    checked += len(ids)
    r = psql("SELECT name, weight FROM host_state WHERE weight IS NOT NULL")
    stored = {l.split("|")[0]: int(l.split("|")[1]) for l in r.stdout.split() if "|" in l}
    for h, w in weights.items():
        if w["acked"] is None:
            continue
        checked += 1
        if stored.get(h) != w["acked"] and stored.get(h) not in w["after"]:
            lost += 1
            print("  LOST: %s weight %s in the store, %s acknowledged" % (h, stored.get(h), w["acked"]))

    print("requests served: %d" % STATS.ok)
    print("errors by class:")
    for cls, n in sorted(STATS.errors.items(), key=lambda kv: -kv[1]):
        print("  %6d  %s" % (n, cls))
    print("faults injected: %s" % ", ".join("%s x%d" % kv for kv in sorted(STATS.faults.items())))
    print("longest window with no successful placement: %.1f s" % STATS.longest_gap)
    print("acknowledged writes lost: %d (of %d checked against the store)" % (lost, checked))
    print("FIGURE soak_requests=%d count higher" % STATS.ok)
    print("FIGURE soak_longest_gap_s=%.1f s lower" % STATS.longest_gap)
    print("FIGURE soak_lost=%d count lower" % lost)
    broker.kill()
    agents.send_signal(signal.SIGKILL)
    agents.wait()
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Nothing of ours outlives the soak, whatever ended it.
        for p in CHILDREN:
            if p.poll() is None:
                p.kill()

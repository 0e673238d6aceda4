#!/usr/bin/env python3
"""Agent links at scale: one `switchboard broker` and N simulated agents (`switchboard agent
--simulate N`, one process, every host its own TLS link) reporting every second, on loopback.

Measures, for the broker process only:
  * CPU (share of one core) and RSS over a steady window;
  * report-to-snapshot latency p99 (from the broker's own histogram,
    switchboard_report_to_snapshot_seconds: agent frame decoded -> snapshot published);
  * time until all N agents are linked after a broker start, and again after a broker restart
    (SIGTERM, then a new broker process on the same store and port).
Targets (issue: agent): CPU <= 50 % of one core, RSS <= 1 GiB, p99 <= 200 ms, all back
within 30 s of a restart.

Usage: bench/agents.py BINARY [N] [STEADY_SECONDS]

Besides the human output, every headline figure is printed once more as
`FIGURE name=value unit higher|lower|info` (which way is better; info: not a performance figure),
for bench/compare.sh.
"""

import http.client
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
STEADY = int(sys.argv[3]) if len(sys.argv) > 3 else 30
TICK = os.sysconf("SC_CLK_TCK")


def figure(name, value, unit, better):
    """One machine-readable line; nothing when the figure was not measured."""
    if value is not None and math.isfinite(value):
        print("FIGURE %s=%.6g %s %s" % (name, value, unit, better))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sim_name(i):
    return "sim-%05d" % (i + 1)


def sim_addr(i):
    n = i + 2
    return "127.%d.%d.%d:22" % ((n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid, key="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Api:
    def __init__(self, port, token):
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path):
        for attempt in range(3):
            try:
                self.conn.request(method, path, headers={"Authorization": "Bearer " + self.token})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                time.sleep(0.1 * (attempt + 1))
        raise RuntimeError("broker API not answering")

    def metrics(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return 0.0


def buckets(text, name):
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def wait_linked(api, want, limit):
    start = time.time()
    while time.time() - start < limit:
        if metric(api.metrics(), "switchboard_agents_connected") >= want:
            return time.time() - start
        time.sleep(0.25)
    return None


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each process (broker, simulator) holds one descriptor per link, plus margin.
    need = N + 4096
    if hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError):
            sys.exit("need %d file descriptors (hard limit %d); run as root or raise it" % (need, hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    work = tempfile.mkdtemp(prefix="switchboard-agents-bench.")
    http_port, agent_port = free_port(), free_port()
    tokens = os.path.join(work, "tokens")
    token = subprocess.run([BIN, "token", "add", tokens, "bench"], check=True,
                           capture_output=True, text=True).stdout.strip()
    cfg = os.path.join(work, "broker.toml")
    with open(cfg, "w") as f:
        f.write('data_dir = "%s"\n[store]\nurl = "sqlite://%s/switchboard.db"\n' % (work, work))
        f.write('[http]\nlisten = "127.0.0.1:%d"\n[agents]\nlisten = "127.0.0.1:%d"\n' % (http_port, agent_port))
        f.write('[api]\ntokens_file = "%s"\n[management]\nsocket = "%s/mgmt.sock"\n' % (tokens, work))
        f.write('[[pool]]\nname = "sim"\npolicy = "least-load"\n')
        for i in range(N):
            f.write('[[pool.host]]\nname = "%s"\naddress = "%s"\n' % (sim_name(i), sim_addr(i)))
    log = open(os.path.join(work, "broker.log"), "w")
    procs = []

    def start_broker():
        env = dict(os.environ, RUST_LOG="warn")
        p = subprocess.Popen([BIN, "broker", "--config", cfg], stderr=log, env=env)
        procs.append(p)
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return p, time.time() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("broker did not become ready; see " + log.name)

    try:
        broker, ready_s = start_broker()
        print("broker ready in %.2f s with %d hosts configured" % (ready_s, N))
        figure("start_ready_s", ready_s, "s", "lower")
        api = Api(http_port, token)
        t0 = time.time()
        creds = os.path.join(work, "credentials")
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            for i in range(N):
                status, body = api.call("POST", "/api/v1/hosts/%s/credentials" % sim_name(i))
                if status != 201:
                    raise RuntimeError("enroll %s: %d %s" % (sim_name(i), status, body[:200]))
                f.write("%s %s\n" % (sim_name(i), json.loads(body)["credential"]))
        enroll_s = time.time() - t0
        print("enrolled %d hosts in %.1f s (durable, one API call each)" % (N, enroll_s))
        figure("enroll_s", enroll_s, "s", "lower")
        agent_cfg = os.path.join(work, "agent.toml")
        with open(agent_cfg, "w") as f:
            f.write('broker = "127.0.0.1:%d"\nserver_name = "localhost"\n' % agent_port)
            f.write('ca = "%s/tls/agent-ca.crt"\ncredential_file = "%s"\nreport_interval = "1s"\n' % (work, creds))
        agents = subprocess.Popen([BIN, "agent", "--config", agent_cfg, "--simulate", str(N)],
                                  stderr=open(os.path.join(work, "agents.log"), "w"),
                                  env=dict(os.environ, RUST_LOG="warn"))
        procs.append(agents)
        linked = wait_linked(api, N, 120)
        if linked is None:
            raise RuntimeError("not all agents linked within 120 s")
        print("all %d agents linked %.1f s after the simulator started" % (N, linked))
        figure("linked_s", linked, "s", "lower")

        # Steady state: reports every second from every host.
        time.sleep(5)
        m0 = api.metrics()
        before = buckets(m0, "switchboard_report_to_snapshot_seconds")
        commits0 = buckets(m0, "switchboard_store_commit_duration_seconds")
        c0, w0 = cpu_seconds(broker.pid), time.time()
        if os.environ.get("PROFILE"):
            # perf record of the broker over the steady window (report with `perf report -i FILE`).
            subprocess.run(["perf", "record", "-F", "499", "-g", "-p", str(broker.pid), "-o",
                            os.environ["PROFILE"], "--", "sleep", str(STEADY)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            time.sleep(STEADY)
        c1, w1 = cpu_seconds(broker.pid), time.time()
        m1 = api.metrics()
        after = buckets(m1, "switchboard_report_to_snapshot_seconds")
        commits1 = buckets(m1, "switchboard_store_commit_duration_seconds")
        rss, hwm = rss_mib(broker.pid), rss_mib(broker.pid, "VmHWM")
        cpu = (c1 - c0) / (w1 - w0) * 100
        diff = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
        total = diff[-1][1] if diff else 0
        p99 = next((le for le, n in diff if total and n >= 0.99 * total), float("nan"))
        p50 = next((le for le, n in diff if total and n >= 0.50 * total), float("nan"))
        print("steady %d s: %.0f reports/s" % (STEADY, total / (w1 - w0)))
        print("  broker CPU      %5.1f %% of one core   (target <= 50 %%)" % cpu)
        print("  broker RSS      %5.0f MiB (peak %.0f)  (target <= 1024 MiB)" % (rss, hwm))
        print("  report->snapshot p50 <= %.3f s, p99 <= %.3f s (bucket bounds; target p99 <= 0.200 s)" % (p50, p99))
        cdiff = sorted((le, commits1.get(le, 0) - commits0.get(le, 0)) for le in commits1)
        ctotal = cdiff[-1][1] if cdiff else 0
        cp99 = next((le for le, n in cdiff if ctotal and n >= 0.99 * ctotal), float("nan"))
        print("  store commits   %.0f/s (session churn of the simulated hosts), p99 <= %.3f s" % (ctotal / (w1 - w0), cp99))
        figure("reports_per_s", total / (w1 - w0), "1/s", "higher")
        figure("broker_cpu_pct", cpu, "%", "lower")
        figure("broker_rss_mib", rss, "MiB", "lower")
        figure("broker_peak_rss_mib", hwm, "MiB", "lower")
        figure("report_to_snapshot_p50_s", p50, "s", "lower")
        figure("report_to_snapshot_p99_s", p99, "s", "lower")
        figure("store_commits_per_s", ctotal / (w1 - w0), "1/s", "info")
        figure("store_commit_p99_s", cp99, "s", "lower")

        # Restart: SIGTERM, start again on the same store and ports.
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=60)
        t_down = time.time()
        broker, ready_s = start_broker()
        api = Api(http_port, token)
        back = wait_linked(api, N, 120)
        since_start = time.time() - t_down
        if back is None:
            print("  restart: NOT all agents back within 120 s")
        else:
            print("  restart: broker ready in %.2f s; all %d agents back %.1f s after it was ready, %.1f s after the old one stopped (target <= 30 s)"
                  % (ready_s, N, back, since_start))
            figure("restart_ready_s", ready_s, "s", "lower")
            figure("restart_back_s", back, "s", "lower")
            figure("restart_total_s", since_start, "s", "lower")
        ok = cpu <= 50 and rss <= 1024 and p99 <= 0.2 and back is not None and back + ready_s <= 30
        print("RESULT: %s" % ("all targets met" if ok else "target missed"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()

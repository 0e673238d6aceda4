#!/usr/bin/env bash
# The director against HAProxy in front of the same backends on loopback, with the direct path as
# the ceiling. Interleaved: each round measures direct, HAProxy and the director one after the
# other, ROUNDS times; the table at the end has medians (min–max).
#
#   (a) single-stream bulk throughput: iperf3 -t DURATION -O 1 -J against iperf3 -s (HAProxy also
#       with `option splice-auto`, for reference);
#   (b) new connections/s: wrk -t1 -c32 -dDURATION --latency -H 'Connection: close' against nginx
#       (one worker, return 200 "ok\n"): one request per connection;
#   (c) latency per round trip: bench/director_rtt.py, 500 warm-up then RTT_N 64-byte round trips on
#       one TCP_NODELAY connection to a Python echo server; added latency = path minus direct.
#       Unpinned; with PIN=1 also "rttpin": client, echo server and proxy all on CPU 0 (taskset),
#       as the reference's "CPU0" rows: no cross-CPU wake-ups, much less spread.
#
# Targets (the director issue): director/HAProxy >= 1.0 for throughput and for connections/s;
# added p99 round-trip latency of the director <= HAProxy's. Reference figures on this 2-vCPU VM
# (lvs-haproxy.md §4): direct 28 Gbit/s, HAProxy 9.3 Gbit/s (10.8 with splice); 18.5k vs 11.7k
# connections/s; HAProxy adds about +15–30 µs per round trip at p50, unpinned.
#
# HAProxy is Debian's 2.6 in `mode tcp`, nbthread 1, timeout client/server 60s, one `listen` per
# backend, as in that reference; the director likewise runs with `[director] threads = 1`
# (DIRECTOR_THREADS=0 gives it its default, one thread per CPU). The CPU used by HAProxy and by the director in each run is read
# from /proc/PID/stat (utime + stime). Before each measurement the script waits (at most IDLE_WAIT
# seconds) until the whole machine is at most IDLE_MAX % busy; "foreign" is the CPU used during a
# run by processes other than the benchmark's own (servers, proxy, client), in % of the machine,
# and a run with more than IDLE_MAX % foreign is done again (at most REDO times).
# Clients, servers and proxies share the machine's cores: every figure here is CPU-bound.
#
# Usage: bench/director.sh [quick]
#   quick: 1 round of 3 s each, a smoke check. The full run is 3 rounds of 10 s (about 6 minutes
#   on an idle machine).
#   Environment: ROUNDS, DURATION (seconds per iperf3/wrk run), RTT_N (20000 round trips),
#   IDLE_MAX (15), IDLE_WAIT (60), REDO (2), PIN=1 (see (c)), KEEP=1 keeps the work directory,
#   SWITCHBOARD (default target/release/switchboard; cargo build --release -p switchboard-cli);
#   BENCH_BIN, when set, is used instead of SWITCHBOARD; BENCH_QUICK=1 without an argument is quick.
# After the report it prints `FIGURE name=value unit higher|lower|info` lines, the medians of the
# table (which way is better for the director's figures; the other legs are info), for
# bench/compare.sh.
# Needs haproxy, iperf3, nginx, wrk (installed when missing if run as root; else apt-get install
# haproxy iperf3 nginx wrk), python3, ss
# (iproute2), timeout (coreutils) and taskset (util-linux). Uses 127.0.0.1 only. Runs as root or as any user.
# When the binary has no director yet (`switchboard director` exits 69), the director leg is
# skipped and the report says so.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin

MODE=${1:-full}
if [ -z "${1:-}" ] && [ "${BENCH_QUICK:-0}" != 0 ]; then MODE=quick; fi
case "$MODE" in
  full) ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10} ;;
  quick) ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-3} ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bench/director.sh [quick]   (see the top of the file)" >&2; exit 64 ;;
esac
RTT_N=${RTT_N:-20000}
IDLE_MAX=${IDLE_MAX:-15}
IDLE_WAIT=${IDLE_WAIT:-60}
REDO=${REDO:-2}
PIN=${PIN:-0}
SWITCHBOARD=${BENCH_BIN:-${SWITCHBOARD:-target/release/switchboard}}
PYTHON=${PYTHON:-python3}
for v in ROUNDS DURATION RTT_N IDLE_MAX IDLE_WAIT REDO PIN; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number, not '${!v}'" >&2; exit 64; }
done
if [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 20 ]; then echo "ROUNDS must be 1..20" >&2; exit 64; fi
if [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 300 ]; then echo "DURATION must be 1..300" >&2; exit 64; fi
if [ "$REDO" -gt 5 ]; then echo "REDO must be 0..5" >&2; exit 64; fi
if [ "$RTT_N" -lt 100 ] || [ "$RTT_N" -gt 1000000 ]; then echo "RTT_N must be 100..1000000" >&2; exit 64; fi

# ---- prerequisites ----
# As root, the Debian packages are installed when missing (as bench/api.sh and bench/x2go.sh do).
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  for p in haproxy iperf3 nginx wrk; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
      echo "==> installing $p"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null; }
  done
fi
missing=()
for c in haproxy iperf3 nginx wrk "$PYTHON" ss timeout taskset; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them: apt-get install -y haproxy iperf3 nginx wrk python3 iproute2 coreutils" >&2
  exit 1
fi
if [ ! -x "$SWITCHBOARD" ]; then
  echo "no switchboard binary at $SWITCHBOARD: build it with" >&2
  echo "  cargo build --release -p switchboard-cli" >&2
  echo "or point SWITCHBOARD at one." >&2
  exit 1
fi
case "$SWITCHBOARD" in /*) ;; *) SWITCHBOARD=$PWD/$SWITCHBOARD ;; esac

CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
# Upper bound on the life of every background process: the idle waits, the runs and slack.
BUDGET=$((ROUNDS * (REDO + 1) * (10 * IDLE_WAIT + 10 * DURATION + 300) + 300))

WORK=$(mktemp -d /tmp/switchboard-director-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local p alive
  # Every background process runs under `timeout`, which leads its own process group and passes
  # TERM on to it; KILL goes to the whole group.
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn NAME CMD...: CMD in the background under timeout, output in $WORK/NAME.log; sets SPAWNED
# to the timeout process (its pid is the process group to kill).
spawn() {
  local name=$1
  shift
  timeout --kill-after=5 "$BUDGET" "$@" > "$WORK/$name.log" 2>&1 &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}
# The process timeout started (its only child).
child_of() {
  local c
  for _ in $(seq 1 100); do
    c=$(pgrep -o -P "$1" || true)
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.05
  done
  echo "no child process under $1" >&2
  return 1
}
alive() { # PID: exists and is not a zombie
  local line
  [ -r "/proc/$1/stat" ] || return 1
  read -r line < "/proc/$1/stat" 2>/dev/null || return 1
  line=${line##*) }
  [ "${line%% *}" != Z ]
}
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
wait_listen() { # NAME PID PORT...
  local name=$1 pid=$2 port
  shift 2
  for port in "$@"; do
    for _ in $(seq 1 200); do
      listening "$port" && continue 2
      alive "$pid" || { echo "$name exited; its log:" >&2; tail -n 20 "$WORK/$name.log" >&2; exit 1; }
      sleep 0.05
    done
    echo "$name does not listen on 127.0.0.1:$port after 10 s; its log:" >&2
    tail -n 20 "$WORK/$name.log" >&2
    exit 1
  done
}

# Distinct free loopback ports, all bound at once so none is handed out twice.
read -r P_IPERF P_NGINX P_ECHO H_IPERF H_SPLICE H_WEB H_ECHO D_IPERF D_WEB D_ECHO < <("$PYTHON" -c '
import socket
socks = []
for _ in range(10):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')

# ---- backends ----
spawn iperf3 iperf3 -s -B 127.0.0.1 -p "$P_IPERF"
IPERF_PID=$(child_of "$SPAWNED")

mkdir -p "$WORK/nginx"
NGINX_USER=""
# As root, nginx's workers would switch to nobody:nobody (no such group on Debian).
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root root;"
cat > "$WORK/nginx.conf" <<EOF
$NGINX_USER
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / { return 200 "ok\n"; }
  }
}
EOF
spawn nginx nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx/" -c "$WORK/nginx.conf" -g 'daemon off;'
NGINX_PID=$(child_of "$SPAWNED")

spawn echo "$PYTHON" bench/director_rtt.py echo "$P_ECHO"
ECHO_PID=$(child_of "$SPAWNED")

wait_listen iperf3 "$IPERF_PID" "$P_IPERF"
wait_listen nginx "$NGINX_PID" "$P_NGINX"
wait_listen echo "$ECHO_PID" "$P_ECHO"
NGINX_WORKER=$(child_of "$NGINX_PID")

# ---- HAProxy ----
cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 4000
  nbthread 1
  stats socket $WORK/haproxy.sock mode 600 level admin
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  maxconn 4000
listen iperf_tcp
  bind 127.0.0.1:$H_IPERF
  server s1 127.0.0.1:$P_IPERF
listen iperf_splice
  bind 127.0.0.1:$H_SPLICE
  option splice-auto
  server s1 127.0.0.1:$P_IPERF
listen web_tcp
  bind 127.0.0.1:$H_WEB
  balance roundrobin
  server n1 127.0.0.1:$P_NGINX
listen echo_tcp
  bind 127.0.0.1:$H_ECHO
  server e1 127.0.0.1:$P_ECHO
EOF
timeout 10 haproxy -q -c -f "$WORK/haproxy.cfg"
spawn haproxy haproxy -db -f "$WORK/haproxy.cfg"
HAPROXY_PID=$(child_of "$SPAWNED")
wait_listen haproxy "$HAPROXY_PID" "$H_IPERF" "$H_SPLICE" "$H_WEB" "$H_ECHO"

# ---- the director ----
# One thread, as HAProxy's nbthread 1 above (DIRECTOR_THREADS=0 leaves the default, one per CPU).
DIRECTOR_THREADS=${DIRECTOR_THREADS:-1}
THREADS_LINE="threads = $DIRECTOR_THREADS"
[ "$DIRECTOR_THREADS" = 0 ] && THREADS_LINE="# threads: one per CPU"
cat > "$WORK/director.toml" <<EOF
[director]
$THREADS_LINE

[management]
socket = "$WORK/director.sock"

[state]
file = "$WORK/director-state.json"

[[service]]
name = "iperf"
listen = "127.0.0.1:$D_IPERF"
scheduler = "rr"
backends = ["127.0.0.1:$P_IPERF"]
[service.health]
interval = "1s"

[[service]]
name = "web"
listen = "127.0.0.1:$D_WEB"
scheduler = "rr"
backends = ["127.0.0.1:$P_NGINX"]

[[service]]
name = "echo"
listen = "127.0.0.1:$D_ECHO"
scheduler = "rr"
backends = ["127.0.0.1:$P_ECHO"]
EOF
DIRECTOR_SKIP=""
DIRECTOR_PID=""
RUST_LOG=${RUST_LOG:-warn} spawn director "$SWITCHBOARD" director --config "$WORK/director.toml"
DIRECTOR_T=$SPAWNED
for _ in $(seq 1 300); do
  if ! alive "$DIRECTOR_T"; then
    rc=0
    wait "$DIRECTOR_T" || rc=$?
    if [ "$rc" -eq 69 ]; then
      DIRECTOR_SKIP="\`switchboard director\` is not available in $SWITCHBOARD (exit 69)"
      break
    fi
    echo "switchboard director exited with status $rc; its log:" >&2
    tail -n 30 "$WORK/director.log" >&2
    exit 1
  fi
  if listening "$D_IPERF" && listening "$D_WEB" && listening "$D_ECHO"; then
    DIRECTOR_PID=$(child_of "$DIRECTOR_T")
    break
  fi
  sleep 0.1
done
if [ -z "$DIRECTOR_SKIP" ] && [ -z "$DIRECTOR_PID" ]; then
  echo "switchboard director does not listen on its three ports after 30 s; its log:" >&2
  tail -n 30 "$WORK/director.log" >&2
  exit 1
fi

LEGS=(direct haproxy)
[ -z "$DIRECTOR_SKIP" ] && LEGS+=(director)

# ---- measuring ----
RES=$WORK/results.tsv
: > "$RES"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RES"; } # metric leg round value

# machine: sets M_BUSY (user+nice+system ticks), M_ALL (ticks not idle) and M_TOTAL.
machine() {
  local _c u n s i w q sq st _rest
  read -r _c u n s i w q sq st _rest < /proc/stat
  M_BUSY=$((u + n + s))
  M_ALL=$((u + n + s + q + sq + st))
  M_TOTAL=$((M_ALL + i + w))
}
ticks() { # PID -> utime + stime, 0 when gone
  local line f
  if [ -n "$1" ] && read -r line < "/proc/$1/stat" 2>/dev/null; then
    line=${line##*) }
    read -r -a f <<< "$line"
    echo $((f[11] + f[12]))
  else
    echo 0
  fi
}
# Sets CHILD_MS to the CPU time, in ms, of this shell's waited-for children (the clients), from
# bash's `times`. Not in $(...): a subshell has its own, empty, count.
children_ms() {
  local _l1 l2
  times > "$WORK/times"
  { read -r _l1; read -r l2; } < "$WORK/times"
  CHILD_MS=0
  [[ $l2 =~ ^([0-9]+)m([0-9]+)\.([0-9]+)s\ ([0-9]+)m([0-9]+)\.([0-9]+)s ]] || return 0
  CHILD_MS=$(( (BASH_REMATCH[1] * 60 + 10#${BASH_REMATCH[2]}) * 1000 + 10#${BASH_REMATCH[3]}
             + (BASH_REMATCH[4] * 60 + 10#${BASH_REMATCH[5]}) * 1000 + 10#${BASH_REMATCH[6]} ))
}
ours_ticks() {
  local t=0 p
  for p in "$IPERF_PID" "$NGINX_PID" "$NGINX_WORKER" "$ECHO_PID" "$HAPROXY_PID" "$DIRECTOR_PID"; do
    [ -n "$p" ] && t=$((t + $(ticks "$p")))
  done
  echo "$t"
}
wait_idle() {
  local deadline=$((SECONDS + IDLE_WAIT)) a0 t0 pct
  while :; do
    machine; a0=$M_ALL; t0=$M_TOTAL
    sleep 1
    machine
    pct=$((100 * (M_ALL - a0) / (M_TOTAL - t0 > 0 ? M_TOTAL - t0 : 1)))
    [ "$pct" -le "$IDLE_MAX" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "   (the machine is still ${pct}% busy after waiting ${IDLE_WAIT} s; measuring anyway)"
      return 0
    fi
  done
}

# measure TEST LEG ROUND PROXY_PID OUT CLIENT...: waits for an idle machine, runs CLIENT in the
# foreground (stdout to OUT, stderr to OUT.err), and sets RUN_MS (wall), PROXY_MS (CPU of
# PROXY_PID) and FOREIGN (% of the machine).
# A run during which other processes used more than IDLE_MAX % of the machine is done again, at
# most REDO times.
measure() {
  local test=$1 leg=$2 round=$3 proxy=$4 out=$5 attempt p0 o0 c0 b0 tt0 w0 p1 o1 c1 b1 tt1 w1
  local ours total
  shift 5
  for attempt in $(seq 0 "$REDO"); do
    wait_idle
    p0=$(ticks "$proxy"); o0=$(ours_ticks); children_ms; c0=$CHILD_MS
    machine; b0=$M_BUSY; tt0=$M_TOTAL; w0=${EPOCHREALTIME/./}
    "$@" > "$out" 2> "$out.err" || true
    w1=${EPOCHREALTIME/./}; machine; b1=$M_BUSY; tt1=$M_TOTAL
    p1=$(ticks "$proxy"); o1=$(ours_ticks); children_ms; c1=$CHILD_MS
    RUN_MS=$(((w1 - w0) / 1000))
    PROXY_MS=$(((p1 - p0) * 1000 / CLK_TCK))
    ours=$(((o1 - o0) * 1000 / CLK_TCK + c1 - c0))
    total=$(((tt1 - tt0) * 1000 / CLK_TCK))
    if [ "$total" -le 0 ]; then total=1; fi
    FOREIGN=$((100 * ((b1 - b0) * 1000 / CLK_TCK - ours) / total))
    if [ "$FOREIGN" -lt 0 ]; then FOREIGN=0; fi
    if [ "$FOREIGN" -le "$IDLE_MAX" ] || [ "$attempt" -ge "$REDO" ]; then break; fi
    echo "   ($test $leg: other processes used ${FOREIGN}% of the machine during the run; again)"
  done
  record foreign_pct "$leg" "$round" "$FOREIGN"
  if [ -n "$proxy" ]; then
    record "${test}_proxy_ms" "$leg" "$round" "$PROXY_MS"
    record "${test}_wall_ms" "$leg" "$round" "$RUN_MS"
  fi
}
proxy_pid() {
  case "$1" in haproxy|haproxy-splice) echo "$HAPROXY_PID" ;; director) echo "$DIRECTOR_PID" ;; *) echo "" ;; esac
}
proxy_name() { case "$1" in haproxy-splice) echo haproxy ;; *) echo "$1" ;; esac; }
cpu_note() { # LEG: "haproxy 0.95 core" for proxied legs
  if [ "$1" != direct ]; then
    awk -v n="$(proxy_name "$1")" -v p="$PROXY_MS" -v w="$RUN_MS" \
      'BEGIN { printf "%s %.2f core", n, p / (w > 0 ? w : 1) }'
  fi
}

port_of() { # TEST LEG
  case "$1:$2" in
    iperf:direct) echo "$P_IPERF" ;; iperf:haproxy) echo "$H_IPERF" ;;
    iperf:haproxy-splice) echo "$H_SPLICE" ;; iperf:director) echo "$D_IPERF" ;;
    wrk:direct) echo "$P_NGINX" ;; wrk:haproxy) echo "$H_WEB" ;; wrk:director) echo "$D_WEB" ;;
    rtt:direct) echo "$P_ECHO" ;; rtt:haproxy) echo "$H_ECHO" ;; rtt:director) echo "$D_ECHO" ;;
  esac
}

run_iperf() { # LEG ROUND
  local leg=$1 r=$2 out gbps
  out=$WORK/r$r-iperf-$leg.json
  measure iperf "$leg" "$r" "$(proxy_pid "$leg")" "$out" \
    timeout $((DURATION + 30)) iperf3 -c 127.0.0.1 -p "$(port_of iperf "$leg")" -t "$DURATION" -O 1 -J
  gbps=$("$PYTHON" -c '
import json, sys
try:
    bps = json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]
    print("%.2f" % (bps / 1e9))
except Exception:
    pass' "$out")
  if [ -z "$gbps" ]; then
    printf '   %-6s %-15s failed: %s\n' iperf3 "$leg" \
      "$( (grep -m1 '"error"' "$out"; tail -n 2 "$out.err") | tr -s ' \n' ' ')"
    return 0
  fi
  record gbps "$leg" "$r" "$gbps"
  printf '   %-6s %-15s %8s Gbit/s                 %-19s foreign %s%%\n' iperf3 "$leg" "$gbps" "$(cpu_note "$leg")" "$FOREIGN"
}

us() { # wrk latency (e.g. 579.00us, 2.07ms, 1.01s) -> µs
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } }'
}
run_wrk() { # LEG ROUND
  local leg=$1 r=$2 out cps reqs p50 p99 errs
  out=$WORK/r$r-wrk-$leg.txt
  measure wrk "$leg" "$r" "$(proxy_pid "$leg")" "$out" \
    timeout $((DURATION + 30)) wrk -t1 -c32 -d"${DURATION}s" --latency -H 'Connection: close' \
    "http://127.0.0.1:$(port_of wrk "$leg")/"
  cps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  p50=$(us "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(us "$(awk '$1 == "99%" {print $2}' "$out")")
  errs=$(grep -E 'Socket errors|Non-2xx' "$out" | tr -s ' ' | tr '\n' ' ' || true)
  if [ -z "$cps" ]; then
    printf '   %-6s %-15s failed: %s\n' wrk "$leg" "$(tail -n 2 "$out" "$out.err" | tr '\n' ' ')"
    return 0
  fi
  record cps "$leg" "$r" "$cps"
  record wrk_p50_us "$leg" "$r" "$p50"
  record wrk_p99_us "$leg" "$r" "$p99"
  if [ "$leg" != direct ]; then record wrk_requests "$leg" "$r" "$reqs"; fi
  if [ -n "$errs" ]; then record wrk_errors "$leg" "$r" 1; fi
  printf '   %-6s %-15s %8s conn/s  p50 %6s µs  %-19s foreign %s%%%s\n' wrk "$leg" "$cps" "$p50" \
    "$(cpu_note "$leg")" "$FOREIGN" "${errs:+   ($errs)}"
}
# pin CPUS: the echo server and the proxies on CPUS (taskset -a: every thread).
pin() {
  local p
  for p in "$ECHO_PID" "$HAPROXY_PID" "$DIRECTOR_PID"; do
    if [ -n "$p" ]; then taskset -a -p -c "$1" "$p" > /dev/null; fi
  done
}
run_rtt() { # LEG ROUND [pin]: with pin, client, echo server and proxies all on CPU 0
  local leg=$1 r=$2 test=rtt out p50 p99 client=()
  if [ "${3:-}" = pin ]; then
    test=rttpin
    client=(taskset -c 0)
    pin 0
  fi
  out=$WORK/r$r-$test-$leg.txt
  measure "$test" "$leg" "$r" "$(proxy_pid "$leg")" "$out" \
    timeout 300 "${client[@]}" "$PYTHON" bench/director_rtt.py rtt "$(port_of rtt "$leg")" "$RTT_N" 500
  if [ "$test" = rttpin ]; then pin "0-$((NCPU - 1))"; fi
  p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' "$out")
  p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' "$out")
  if [ -z "$p50" ]; then
    printf '   %-6s %-15s failed: %s\n' "$test" "$leg" "$(tail -n 2 "$out" "$out.err" | tr '\n' ' ')"
    return 0
  fi
  record "${test}_p50_us" "$leg" "$r" "$p50"
  record "${test}_p99_us" "$leg" "$r" "$p99"
  printf '   %-6s %-15s p50 %7s µs  p99 %7s µs  %-19s foreign %s%%\n' "$test" "$leg" "$p50" "$p99" \
    "$(cpu_note "$leg")" "$FOREIGN"
}

echo "== bench/director.sh: $ROUNDS round(s), ${DURATION} s per iperf3/wrk run, $RTT_N round trips; $NCPU CPUs"
echo "   $(haproxy -v | head -n 1)"
echo "   $(iperf3 -v | head -n 1), $(nginx -v 2>&1), $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
echo "   switchboard: $SWITCHBOARD"
if [ -n "$DIRECTOR_SKIP" ]; then
  echo "   director leg SKIPPED: $DIRECTOR_SKIP"
fi
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS"
  for leg in "${LEGS[@]}"; do
    run_iperf "$leg" "$r"
    if [ "$leg" = haproxy ]; then run_iperf haproxy-splice "$r"; fi
  done
  for leg in "${LEGS[@]}"; do run_wrk "$leg" "$r"; done
  for leg in "${LEGS[@]}"; do run_rtt "$leg" "$r"; done
  if [ "$PIN" = 1 ]; then
    for leg in "${LEGS[@]}"; do run_rtt "$leg" "$r" pin; done
  fi
done

# The backends must have survived the runs (the director's health checks included).
for pid in "$IPERF_PID" "$NGINX_PID" "$ECHO_PID" "$HAPROXY_PID" ${DIRECTOR_PID:+"$DIRECTOR_PID"}; do
  alive "$pid" || echo "   warning: process $pid ($(basename "$(readlink -f "/proc/$pid/exe" 2>/dev/null || echo gone)")) ended during the runs"
done

# ---- report ----
"$PYTHON" - "$RES" "$ROUNDS" "$RTT_N" "$DIRECTOR_SKIP" "$IDLE_MAX" <<'EOF'
import statistics
import sys
from collections import defaultdict

path, rounds, rtt_n, skip, idle_max = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
vals = defaultdict(list)     # (metric, leg) -> [values in round order]
by_round = defaultdict(dict) # (metric, leg) -> {round: value}
for line in open(path):
    metric, leg, rnd, value = line.rstrip("\n").split("\t")
    if value == "":
        continue
    vals[(metric, leg)].append(float(value))
    by_round[(metric, leg)][int(rnd)] = float(value)

def med(metric, leg):
    v = vals.get((metric, leg))
    return statistics.median(v) if v else None

def cell(metric, leg, fmt):
    v = vals.get((metric, leg))
    if not v:
        return "skipped" if leg == "director" and skip else "n/a"
    m = statistics.median(v)
    if len(v) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))})"

f1 = lambda x: f"{x:,.1f}"
f2 = lambda x: f"{x:.2f}"
f0 = lambda x: f"{x:,.0f}"
legs = ["direct", "haproxy", "haproxy-splice", "director"]
rows = [
    ("1 TCP stream (iperf3), Gbit/s", "gbps", f2, legs),
    ("new connections/s (wrk, Connection: close)", "cps", f0, ["direct", "haproxy", "director"]),
    ("  wrk latency p50, µs", "wrk_p50_us", f0, ["direct", "haproxy", "director"]),
    ("  wrk latency p99, µs", "wrk_p99_us", f0, ["direct", "haproxy", "director"]),
    ("64 B round trip p50, µs", "rtt_p50_us", f1, ["direct", "haproxy", "director"]),
    ("64 B round trip p99, µs", "rtt_p99_us", f1, ["direct", "haproxy", "director"]),
]
if any(m == "rttpin_p50_us" for (m, _) in vals):
    rows += [
        ("64 B round trip p50, all on CPU 0, µs", "rttpin_p50_us", f1, ["direct", "haproxy", "director"]),
        ("64 B round trip p99, all on CPU 0, µs", "rttpin_p99_us", f1, ["direct", "haproxy", "director"]),
    ]

# Proxy CPU, derived per run: busy cores, CPU-s per GB, µs per connection, µs per round trip.
def derived(leg):
    out = defaultdict(list)
    for r in range(1, rounds + 1):
        g = by_round[("gbps", leg)].get(r)
        pm = by_round[("iperf_proxy_ms", leg)].get(r)
        wm = by_round[("iperf_wall_ms", leg)].get(r)
        if g and pm is not None and wm:
            cores = pm / wm
            out["iperf_cores"].append(cores)
            out["s_per_gb"].append(cores / (g / 8))
        pm = by_round[("wrk_proxy_ms", leg)].get(r)
        wm = by_round[("wrk_wall_ms", leg)].get(r)
        n = by_round[("wrk_requests", leg)].get(r)
        if pm is not None and wm and n:
            out["wrk_cores"].append(pm / wm)
            out["us_per_conn"].append(pm * 1000 / n)
        pm = by_round[("rtt_proxy_ms", leg)].get(r)
        if pm is not None and by_round[("rtt_p50_us", leg)].get(r) is not None:
            out["us_per_rtt"].append(pm * 1000 / (rtt_n + 500))
    return out

for leg in ["haproxy", "haproxy-splice", "director"]:
    for k, v in derived(leg).items():
        vals[(k, leg)] = v
rows += [
    ("proxy CPU in the iperf3 run, cores", "iperf_cores", f2, legs[1:]),
    ("proxy CPU per GB moved, CPU-s", "s_per_gb", f2, legs[1:]),
    ("proxy CPU in the wrk run, cores", "wrk_cores", f2, ["haproxy", "director"]),
    ("proxy CPU per connection, µs", "us_per_conn", f1, ["haproxy", "director"]),
    ("proxy CPU per round trip, µs", "us_per_rtt", f1, ["haproxy", "director"]),
    ("foreign CPU during the runs, % of machine", "foreign_pct", f0, ["direct", "haproxy", "director"]),
]
# Foreign CPU of the HAProxy leg includes its splice runs.
vals[("foreign_pct", "haproxy")] = vals.get(("foreign_pct", "haproxy"), []) + vals.get(("foreign_pct", "haproxy-splice"), [])

print()
print(f"== medians of {rounds} round(s) (min–max)")
cols = ["direct", "haproxy", "haproxy-splice", "director"]
w0 = max(len(r[0]) for r in rows) + 2
cells = [[cell(m, leg, fmt) if leg in ls else "" for leg in cols] for (_, m, fmt, ls) in rows]
widths = [max(len(c), *(len(row[i]) for row in cells)) + 2 for i, c in enumerate(cols)]
print("   " + "".ljust(w0) + "".join(c.ljust(widths[i]) for i, c in enumerate(cols)))
for (label, *_), row in zip(rows, cells):
    print("   " + label.ljust(w0) + "".join(c.ljust(widths[i]) for i, c in enumerate(row)))

errs = [leg for (m, leg) in vals if m == "wrk_errors"]
if errs:
    print(f"   wrk reported socket errors or non-2xx answers for: {', '.join(sorted(set(errs)))} (see KEEP=1 outputs)")
foreign = vals.get(("foreign_pct", "direct"), []) + vals.get(("foreign_pct", "haproxy"), []) + vals.get(("foreign_pct", "director"), [])
if foreign and max(foreign) > idle_max:
    print(f"   warning: other processes used up to {max(foreign):.0f}% of the machine during some runs; the figures are disturbed")

print()
print("== added latency per round trip (median of the path minus median of direct)")
for test, label in [("rtt", ""), ("rttpin", ", all on CPU 0")]:
    if not any(m == f"{test}_p50_us" for (m, _) in vals):
        continue
    for leg in ["haproxy", "director"]:
        d50, d99 = med(f"{test}_p50_us", "direct"), med(f"{test}_p99_us", "direct")
        p50, p99 = med(f"{test}_p50_us", leg), med(f"{test}_p99_us", leg)
        if None in (d50, d99, p50, p99):
            print(f"   {leg:<9} " + ("skipped" if leg == "director" and skip else "n/a") + label)
            continue
        print(f"   {leg:<9} p50 {p50 - d50:+.1f} µs   p99 {p99 - d99:+.1f} µs{label}")

print()
print("== targets (director against HAProxy)")
if skip:
    print(f"   not measured: the director leg was skipped ({skip})")
    h, d = med("gbps", "haproxy"), med("gbps", "direct")
    hc, dc = med("cps", "haproxy"), med("cps", "direct")
    if h and d and hc and dc:
        print(f"   for reference: HAProxy/direct {h / d:.2f}x throughput, {hc / dc:.2f}x connections/s")
else:
    def target(label, ratio, ok, extra=""):
        print(f"   {label:<40} {ratio:<26} {'met' if ok else 'NOT met'}{extra}")
    dg, hg, hs = med("gbps", "director"), med("gbps", "haproxy"), med("gbps", "haproxy-splice")
    if dg and hg:
        extra = f"   (against HAProxy with splice: {dg / hs:.2f}x)" if hs else ""
        target("throughput director/HAProxy >= 1.0", f"{dg / hg:.2f}x", dg / hg >= 1.0, extra)
    dc, hc = med("cps", "director"), med("cps", "haproxy")
    if dc and hc:
        target("connections/s director/HAProxy >= 1.0", f"{dc / hc:.2f}x", dc / hc >= 1.0)
    d99, h99, x99 = med("rtt_p99_us", "director"), med("rtt_p99_us", "haproxy"), med("rtt_p99_us", "direct")
    if None not in (d99, h99, x99):
        target("added p99 director <= HAProxy", f"{d99 - x99:+.1f} vs {h99 - x99:+.1f} µs", d99 - x99 <= h99 - x99)
    d99, h99, x99 = med("rttpin_p99_us", "director"), med("rttpin_p99_us", "haproxy"), med("rttpin_p99_us", "direct")
    if None not in (d99, h99, x99):
        target("  the same, all on CPU 0", f"{d99 - x99:+.1f} vs {h99 - x99:+.1f} µs", d99 - x99 <= h99 - x99)

# Machine-readable figures for bench/compare.sh: FIGURE name=value unit higher|lower|info, the
# medians of the table. Only the director's own figures say which way is better; direct, HAProxy,
# the added latencies and the ratios are info.
units = {
    "gbps": ("Gbit/s", "higher"), "cps": ("conn/s", "higher"),
    "wrk_p50_us": ("us", "lower"), "wrk_p99_us": ("us", "lower"),
    "rtt_p50_us": ("us", "lower"), "rtt_p99_us": ("us", "lower"),
    "rttpin_p50_us": ("us", "lower"), "rttpin_p99_us": ("us", "lower"),
    "iperf_cores": ("cores", "info"), "s_per_gb": ("CPU-s/GB", "lower"),
    "wrk_cores": ("cores", "info"), "us_per_conn": ("us", "lower"),
    "us_per_rtt": ("us", "lower"), "foreign_pct": ("%", "info"),
}
print()
for _, metric, _, ls in rows:
    unit, better = units.get(metric, ("-", "info"))
    for leg in ls:
        m = med(metric, leg)
        if m is not None:
            print(f"FIGURE {leg}.{metric}={m:.6g} {unit} {better if leg == 'director' else 'info'}")
for test in ["rtt", "rttpin"]:
    for leg in ["haproxy", "director"]:
        for q in ["p50", "p99"]:
            d, p = med(f"{test}_{q}_us", "direct"), med(f"{test}_{q}_us", leg)
            if None not in (d, p):
                print(f"FIGURE {leg}.added_{test}_{q}_us={p - d:.6g} us info")
for metric in ["gbps", "cps"]:
    d, h = med(metric, "director"), med(metric, "haproxy")
    if d and h:
        print(f"FIGURE ratio.director_haproxy_{metric}={d / h:.6g} x info")
EOF

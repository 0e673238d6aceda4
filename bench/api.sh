#!/usr/bin/env bash
# REST API throughput: placements/s and durable confirmations/s through `switchboard broker`
# over 1,000 hosts, with SQLite and with PostgreSQL, measured by wrk on loopback.
#
# Usage: bench/api.sh [DURATION_SECONDS]   (default 10)
#        bench/api.sh quick [DURATION_SECONDS]   (or BENCH_QUICK=1: default 3, a smoke check)
# BENCH_BIN=/path/to/switchboard uses that binary instead of `cargo build --release`.
# Besides the human output it prints `FIGURE name=value unit higher|lower|info` lines (which way is
# better; info: not a performance figure) for bench/compare.sh.
# Targets on a 2-core machine with SQLite: >= 20,000 placements/s and >= 5,000 durable
# confirmations/s, both at p99 <= 20 ms. wrk and the broker share the machine's cores.
set -euo pipefail
[ -z "${BENCH_BIN:-}" ] || BENCH_BIN=$(realpath "$BENCH_BIN")
cd "$(dirname "$0")/.."
QUICK=${BENCH_QUICK:-0}
if [ "${1:-}" = quick ]; then QUICK=1; shift; fi
DURATION=${1:-10}
if [ "$QUICK" != 0 ]; then DURATION=${1:-3}; fi
for p in wrk postgresql python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    echo "==> installing $p"; apt-get install -y -qq "$p" >/dev/null; }
done
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q -p switchboard-cli
  BIN=target/release/switchboard
fi
WORK=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
BROKER_PID=""
cleanup() { [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null; stop_postgres; rm -rf "$WORK"; }
. scripts/pg.sh
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# FIGURE lines of one wrk run: requests/s, latency p50 and p99 in ms, non-2xx answers and socket
# errors. LATENCY is lower, or info where a Lua response callback makes wrk's histogram unreliable.
wrk_figures() { # NAME FILE LATENCY
  awk -v p="$1" -v lat="$3" '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 }
      return v + 0
    }
    /^Requests\/sec:/ { printf "FIGURE %s_rps=%s req/s higher\n", p, $2 }
    $1 == "50%" { printf "FIGURE %s_p50_ms=%.4f ms %s\n", p, ms($2), lat }
    $1 == "99%" { printf "FIGURE %s_p99_ms=%.4f ms %s\n", p, ms($2), lat }
    /Non-2xx|Socket errors/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) errors += $i }
    END { printf "FIGURE %s_errors=%d count info\n", p, errors }' "$2"
}

run_backend() {
  local name=$1 url=$2 port
  port=$(free_port)
  local cfg="$WORK/$name.toml"
  {
    echo "[store]"; echo "url = \"$url\""
    echo "[http]"; echo "listen = \"127.0.0.1:$port\""
    echo "[api]"; echo "tokens_file = \"$WORK/tokens\""
    echo "[management]"; echo "socket = \"$WORK/$name.sock\""
    echo "[placement]"; echo "reservation_ttl = \"1h\""
    echo "[[pool]]"; echo "name = \"bench\""; echo "agent = false"
    for h in $(seq 0 999); do
      echo "[[pool.host]]"; echo "name = \"h$h\""; echo "address = \"127.0.$((h / 250)).$((h % 250 + 2)):22\""
    done
  } > "$cfg"
  RUST_LOG=warn "$BIN" broker --config "$cfg" 2> "$WORK/$name.log" &
  BROKER_PID=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "== $name: placements (POST /api/v1/sessions, new user each time)"
  wrk -t2 -c64 -d"${DURATION}s" --latency -s bench/place.lua "http://127.0.0.1:$port" \
    | tee "$WORK/$name.place" | grep -E 'Requests/sec|Non-2xx|99%|50%|requests in'
  wrk_figures "$name.place" "$WORK/$name.place" lower
  echo "== $name: place + durable confirm (every other request is a confirmation)"
  wrk -t2 -c64 -d"${DURATION}s" --latency -s bench/confirm.lua "http://127.0.0.1:$port" \
    | tee "$WORK/$name.confirm" | grep -E 'Requests/sec|Non-2xx|99%|50%|requests in'
  wrk_figures "$name.place_confirm" "$WORK/$name.confirm" info
  local rps
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/$name.confirm")
  echo "   => durable confirmations/s ~ $(python3 -c "print(round($rps / 2))")"
  if [ -n "$rps" ]; then echo "FIGURE $name.confirms_per_s=$(python3 -c "print(round($rps / 2))") 1/s higher"; fi
  kill "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""
}

export SB_TOKEN
SB_TOKEN=$("$BIN" token add "$WORK/tokens" bench 2>/dev/null)
run_backend sqlite "sqlite://$WORK/switchboard.db"
start_postgres
run_backend postgres "${SWITCHBOARD_TEST_POSTGRES_URL%/postgres}/postgres"

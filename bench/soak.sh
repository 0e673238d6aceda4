#!/usr/bin/env bash
# Soak: mixed load on the real broker (placements, confirmations, drains, weight changes, X2Go
# logins, 20 simulated agent hosts reporting every second) with faults injected at random
# (SIGKILL of the broker and of the agents, store locks, PostgreSQL restarts, slowloris bursts).
# Prints requests served, errors by class, the longest window with no successful placement and
# the acknowledged writes lost (must be 0, checked against the store with psql). See bench/soak.py.
#
# Usage: bench/soak.sh [MINUTES]   (default 10)
# BENCH_BIN=/path/to/switchboard uses that binary instead of `cargo build --release`.
# The PostgreSQL cluster is the soak's own (scripts/pg.sh), removed at the end.
set -euo pipefail
[ -z "${BENCH_BIN:-}" ] || BENCH_BIN=$(realpath "$BENCH_BIN")
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q -p switchboard-cli
  BIN=target/release/switchboard
fi
. scripts/pg.sh
trap stop_postgres EXIT
start_postgres
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if [ "$(id -u)" -eq 0 ]; then
  export SOAK_PG_CTL="runuser -u postgres -- $bin/pg_ctl"
else
  export SOAK_PG_CTL="$bin/pg_ctl"
fi
export SOAK_PG_DATA="$PGTMP/data" SOAK_PG_URL="$SWITCHBOARD_TEST_POSTGRES_URL" SOAK_PSQL="$bin/psql"
ulimit -n "$(ulimit -Hn)"
python3 bench/soak.py "$BIN" "$MINUTES"

#!/usr/bin/env bash
# Agent links at scale: one broker and 10,000 simulated agents reporting every second over TLS
# on loopback. Prints the broker's CPU and RSS, report-to-snapshot latency p99, and how fast all
# agents are back after a broker restart, against the targets (<= 50 % of one core, <= 1 GiB,
# p99 <= 200 ms, <= 30 s).
#
# Usage: bench/agents.sh [N] [STEADY_SECONDS]   (defaults 10000 and 30)
#        bench/agents.sh quick [N] [STEADY_SECONDS]   (or BENCH_QUICK=1: defaults 2000 and 10, a smoke check)
# BENCH_BIN=/path/to/switchboard uses that binary instead of `cargo build --release`.
# Besides the human output it prints `FIGURE name=value unit higher|lower|info` lines (which way is
# better; info: not a performance figure) for bench/compare.sh.
# Raises the open-files limit it needs (one per link in each process, plus margin; run as root
# if the hard limit is lower). The simulator and the broker share the machine's cores.
set -euo pipefail
[ -z "${BENCH_BIN:-}" ] || BENCH_BIN=$(realpath "$BENCH_BIN")
cd "$(dirname "$0")/.."
QUICK=${BENCH_QUICK:-0}
if [ "${1:-}" = quick ]; then QUICK=1; shift; fi
N_DEFAULT=10000 STEADY_DEFAULT=30
if [ "$QUICK" != 0 ]; then N_DEFAULT=2000 STEADY_DEFAULT=10; fi
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q -p switchboard-cli
  BIN=target/release/switchboard
fi
exec python3 bench/agents.py "$BIN" "${1:-$N_DEFAULT}" "${2:-$STEADY_DEFAULT}"

#!/usr/bin/env bash
# Agent links at scale: one broker and 10,000 simulated agents reporting every second over TLS
# on loopback. Prints the broker's CPU and RSS, report-to-snapshot latency p99, and how fast all
# agents are back after a broker restart, against the targets (<= 50 % of one core, <= 1 GiB,
# p99 <= 200 ms, <= 30 s).
#
# Usage: bench/agents.sh [N] [STEADY_SECONDS]   (defaults 10000 and 30)
# Raises the open-files limit it needs (one per link in each process, plus margin; run as root
# if the hard limit is lower). The simulator and the broker share the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p switchboard-cli
exec python3 bench/agents.py target/release/switchboard "${1:-10000}" "${2:-30}"

#!/usr/bin/env bash
# Regression gate: git revision REV against the working tree, on every benchmark's quick mode.
#
# Usage: bench/compare.sh REV          (REV: anything `git rev-parse` takes: HEAD~3, main, a tag)
#        bench/compare.sh --help
#
# What it does:
#   1. Builds REV: `git worktree add --detach` into $COMPARE_DIR/rev-src, then
#      `cargo build --release -p switchboard-cli` there with its own CARGO_TARGET_DIR,
#      $COMPARE_DIR/rev-target, and the bench executables of the criterion and harness=false
#      benches (`cargo bench --no-run`). Then builds the working tree the same way, in place (its
#      usual target directory). The binaries are copied to $COMPARE_DIR/bin/{rev,tree}/, so a build
#      started elsewhere during the run does not change what is measured.
#      COST: REV is a second, separate release build, and the bench executables (profile `bench`,
#      release with debug info) are one more build per tree. On this 2-core machine a release build
#      takes about 14 minutes: the first run spends up to about an hour compiling. Later runs reuse
#      $COMPARE_DIR/rev-target and target/ and recompile only what changed.
#   2. Runs every selected benchmark's quick mode ROUNDS times, interleaved: in each round every
#      benchmark runs for REV, then for the working tree (A, B, A, B, ...). The shell benchmarks are
#      the working tree's bench/*.sh, run against each binary (BENCH_BIN=..., BENCH_QUICK=1); the
#      Rust benches are each tree's own bench executables.
#        agents        bench/agents.sh quick: 2,000 simulated agents, 10 s steady window
#        api           bench/api.sh quick: wrk 3 s per run, SQLite and a private PostgreSQL
#        x2go          bench/x2go.sh quick: 3 s per run against x2gobroker (needs root)
#        director      bench/director.sh quick: 1 round of 3 s (haproxy, iperf3, nginx, wrk)
#        placement     crates/core/benches/placement.rs (criterion: --quick --output-format bencher,
#                      and its own individually timed medians and p99s, and the heap per 1M sessions)
#        restart       crates/broker/benches/restart.rs (harness=false: ready time with 100,000
#                      sessions, SQLite, and PostgreSQL on a private server when one can be started)
#        gateway_rtt   crates/broker/benches/gateway_rtt.rs (harness=false: GATEWAY_RTT_N round trips)
#        start_or_get  crates/k8s/benches/start_or_get.rs (harness=false: decisions/s, fake API server)
#      Each run is bounded by `timeout` (BENCH_TIMEOUT, or per benchmark 600 to 2400 s) and every
#      load loop inside the benchmarks is bounded in time or count. All traffic is on loopback
#      (127.0.0.0/8); only the builds may reach the crate registry. One round of every benchmark
#      for both sides takes roughly 10 to 15 minutes on an idle 2-core machine (an estimate), so
#      the default 3 rounds about 30 to 45 minutes, after the builds.
#   3. Prints, after each run, the figures it produced, and at the end one table: bench, figure,
#      which way is better, REV median (min–max over rounds), tree median (min–max), the ratio
#      tree/REV, and a verdict:
#        ok       no change beyond the spread
#        WORSE    worse beyond the spread: every tree round is worse than every REV round (for
#                 lower-is-better: tree min > REV max; for higher-is-better: tree max < REV min)
#                 AND the tree median is worse than REV's by more than TOLERANCE %
#        better   the same the other way
#        MISSING  measured for REV but never for the tree
#        new      measured for the tree only (not in REV, or REV's run failed)
#        info     a reference figure (x2gobroker, HAProxy, direct paths, ratios): shown, not judged
#      With 3 rounds, chance alone puts one range wholly above the other about 1 time in 20 for a
#      given figure; TOLERANCE takes out the small shifts. For a decisive answer use ROUNDS=5
#      (about 1 in 250).
#
# Exit status: 0 when nothing is worse; 1 when a figure is WORSE or MISSING, or a tree run failed
# where the REV run of the same round succeeded (the report says which); 2 when a build or the
# setup failed, or no figure could be measured for both sides; 64 on a usage error.
#
# Environment:
#   ROUNDS=3          rounds (1..20). Not passed on to the benchmarks.
#   BENCHES="..."     which benchmarks (spaces or commas), from: agents api x2go director placement
#                     restart gateway_rtt start_or_get (default: all). Only the selected Rust benches
#                     are built. A benchmark that fails for both sides in round 1 is not run again.
#   TOLERANCE=5       percent, see WORSE above (0: the spread alone decides).
#   COMPARE_DIR=/tmp/switchboard-compare   REV's worktree and target dir, the copied binaries, and
#                     one run-YYYYmmdd-HHMMSS directory per run with every run's output
#                     (rN-BENCH-SIDE.out/.err), figures.tsv, runs.tsv and report.txt.
#   BENCH_TIMEOUT     seconds, the limit of every benchmark run (default: per benchmark).
#   GATEWAY_RTT_N=9000   round trips for gateway_rtt (its ROUNDS; its default is 20,000).
#   PAUSE=2           seconds between runs (lets sockets in TIME_WAIT and the CPU settle).
#   VERBOSE=1         prints each run's whole output after it.
#   Passed on to the benchmarks as they are: DURATION, RTT_N, IDLE_MAX, IDLE_WAIT, REDO, PIN,
#   DIRECTOR_THREADS (bench/director.sh), PODS (start_or_get), SWITCHBOARD_TEST_POSTGRES_URL
#   (restart; when unset, a private PostgreSQL is started if /usr/lib/postgresql/*/bin exists).
# Needs git, cargo, python3, timeout; each benchmark needs what its own script says (api.sh and
# x2go.sh install their Debian packages when missing, as root).
#
# Machine-readable figures: the shell benchmarks print `FIGURE name=value unit higher|lower|info`
# lines; for the Rust benches (which print tables, not FIGURE lines) this script reads their
# output. The same parsing is applied to both trees.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "compare.sh: $*" >&2; exit 2; }

ALL_BENCHES=(agents api x2go director placement restart gateway_rtt start_or_get)

case "${1:-}" in
  -h|--help|help) usage; exit 0 ;;
  "") echo "usage: bench/compare.sh REV   (bench/compare.sh --help)" >&2; exit 64 ;;
  -*) echo "unknown option: $1   (bench/compare.sh --help)" >&2; exit 64 ;;
esac
[ "$#" -eq 1 ] || { echo "usage: bench/compare.sh REV   (one revision)" >&2; exit 64; }
REV=$1

# Our own knobs. ROUNDS means something else to bench/director.sh and gateway_rtt: not passed on.
CMP_ROUNDS=${ROUNDS:-3}
unset ROUNDS
TOLERANCE=${TOLERANCE:-5}
PAUSE=${PAUSE:-2}
GATEWAY_RTT_N=${GATEWAY_RTT_N:-9000}
VERBOSE=${VERBOSE:-0}
STATE=${COMPARE_DIR:-/tmp/switchboard-compare}
[[ $CMP_ROUNDS =~ ^[0-9]+$ ]] && [ "$CMP_ROUNDS" -ge 1 ] && [ "$CMP_ROUNDS" -le 20 ] \
  || { echo "ROUNDS must be 1..20, not '$CMP_ROUNDS'" >&2; exit 64; }
[[ $TOLERANCE =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "TOLERANCE must be a percentage, not '$TOLERANCE'" >&2; exit 64; }
[[ $PAUSE =~ ^[0-9]+$ ]] && [ "$PAUSE" -le 60 ] || { echo "PAUSE must be 0..60, not '$PAUSE'" >&2; exit 64; }
[[ $GATEWAY_RTT_N =~ ^[0-9]+$ ]] && [ "$GATEWAY_RTT_N" -ge 300 ] && [ "$GATEWAY_RTT_N" -le 1000000 ] \
  || { echo "GATEWAY_RTT_N must be 300..1000000, not '$GATEWAY_RTT_N'" >&2; exit 64; }
if [ -n "${BENCH_TIMEOUT:-}" ]; then
  [[ $BENCH_TIMEOUT =~ ^[0-9]+$ ]] && [ "$BENCH_TIMEOUT" -ge 10 ] && [ "$BENCH_TIMEOUT" -le 86400 ] \
    || { echo "BENCH_TIMEOUT must be 10..86400 seconds, not '$BENCH_TIMEOUT'" >&2; exit 64; }
fi
BENCHES=${BENCHES:-${ALL_BENCHES[*]}}
read -r -a SELECTED <<< "${BENCHES//,/ }"
[ "${#SELECTED[@]}" -gt 0 ] || { echo "BENCHES is empty" >&2; exit 64; }
for b in "${SELECTED[@]}"; do
  case " ${ALL_BENCHES[*]} " in *" $b "*) ;; *) echo "unknown benchmark '$b' (known: ${ALL_BENCHES[*]})" >&2; exit 64 ;; esac
done

for c in git cargo python3 timeout realpath; do
  command -v "$c" >/dev/null 2>&1 || die "needs $c"
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$ROOT is not a git work tree"
SHA=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") || die "not a revision: $REV"
REV_LABEL="$REV ($(git -C "$ROOT" log -1 --format='%h %s' "$SHA" | cut -c1-70))"
CHANGED=$(git -C "$ROOT" status --porcelain --untracked-files=no | wc -l)
TREE_LABEL="working tree (HEAD $(git -C "$ROOT" rev-parse --short HEAD), $CHANGED changed tracked files)"

crate_of() { case "$1" in placement) echo core ;; restart|gateway_rtt) echo broker ;; start_or_get) echo k8s ;; esac; }
is_cargo_bench() { case "$1" in placement|restart|gateway_rtt|start_or_get) return 0 ;; *) return 1 ;; esac; }
limit_of() { # default time limit of one run, seconds
  case "$1" in
    director) echo 2400 ;; placement) echo 1200 ;; gateway_rtt) echo 600 ;; *) echo 900 ;;
  esac
}

mkdir -p "$STATE"
STATE=$(realpath "$STATE")
WT=$STATE/rev-src
REV_TARGET=$STATE/rev-target
BINS=$STATE/bin
exec 9> "$STATE/lock"
if command -v flock >/dev/null 2>&1; then
  flock -n 9 || die "another bench/compare.sh is using $STATE (set COMPARE_DIR for a second one)"
fi
RUN=$STATE/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
FIG=$RUN/figures.tsv
RUNS=$RUN/runs.tsv
: > "$FIG"
: > "$RUNS"

CHILD=""
WT_ADDED=""
PG_STARTED=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHILD" ]; then
    kill -TERM "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  if [ -n "$PG_STARTED" ]; then stop_postgres; fi
  if [ -n "$WT_ADDED" ]; then
    git -C "$ROOT" worktree remove --force "$WT" >/dev/null 2>&1 || rm -rf "$WT"
    git -C "$ROOT" worktree prune >/dev/null 2>&1 || true
  fi
  echo "logs: $RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT TERM

# ---- helpers in Python: cargo's JSON, the figures of one run, the report ----
cat > "$RUN/artifacts.py" <<'EOF'
# artifacts.py CARGO_JSON: "name<TAB>kinds<TAB>executable" for every built executable.
import json
import sys

for line in open(sys.argv[1], errors="replace"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], ",".join(m["target"]["kind"]), m["executable"], sep="\t")
EOF

cat > "$RUN/figures.py" <<'EOF'
# figures.py BENCH OUTPUT ROUND SIDE TSV: the figures of one run, appended to TSV as
# round, side, bench, name, value, unit, better. Prints their count, then a short summary.
# Shell benchmarks print `FIGURE name=value unit higher|lower|info`; the Rust benches print
# tables, read here.
import math
import re
import sys
import textwrap

bench, path, rnd, side, tsv = sys.argv[1:6]
text = open(path, errors="replace").read()
figs = []


def add(name, value, unit, better):
    try:
        v = float(str(value).replace(",", ""))
    except (TypeError, ValueError):
        return
    if math.isfinite(v):
        figs.append((name, v, unit, better))


def dur_ms(s):
    """A Rust `{:?}` Duration (1.23s, 234.50ms, 12.00µs, 100.00ns) in ms."""
    m = re.fullmatch(r"([\d.]+)(s|ms|µs|us|ns)", s.strip())
    if not m:
        return None
    return float(m.group(1)) * {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "ns": 1e-6}[m.group(2)]


for m in re.finditer(r"^FIGURE ([A-Za-z0-9_.:/+-]+)=(\S+) (\S+) (higher|lower|info)[ \t]*$", text, re.M):
    add(*m.groups())

if bench == "placement":
    heap = None
    for line in text.splitlines():
        m = re.search(r"memory: \d+ sessions on \d+ hosts take ([\d.]+) MB of heap", line)
        if m:
            heap = m.group(1)
        m = re.search(r"placement (\S+): median (\d+) ns, p99 (\d+) ns per decision", line)
        if m:
            label = m.group(1)
            add(f"place_{label}_p50_ns", m.group(2), "ns", "lower")
            add(f"place_{label}_p99_ns", m.group(3), "ns", "lower")
            if heap is not None:
                add(f"heap_1M_sessions_{label}_mb", heap, "MB", "lower")
                heap = None
        m = re.search(r"load report \((\S+) pool\): median (\d+) ns, p99 (\d+) ns per report", line)
        if m:
            add(f"report_load_{m.group(1)}_p50_ns", m.group(2), "ns", "lower")
            add(f"report_load_{m.group(1)}_p99_ns", m.group(3), "ns", "lower")
        # criterion --output-format bencher: "test ID ... bench:   1,234 ns/iter (+/- 56)"
        m = re.search(r"test (\S+) \.\.\. .*?bench:\s+([\d,]+) ns/iter", line)
        if m:
            add(f"criterion.{m.group(1)}", m.group(2), "ns", "lower")
elif bench == "restart":
    for m in re.finditer(r"restart \((\w+)\): \d+ sessions on \d+ hosts, ready in (\d+) ms", text):
        add(f"{m.group(1).lower()}_ready_ms", m.group(2), "ms", "lower")
elif bench == "gateway_rtt":
    num = r"\|\s*(-?[\d.]+)\s*"
    m = re.search(r"^\| direct TCP " + num * 2 + r"\|", text, re.M)
    if m:
        add("direct_p50_us", m.group(1), "us", "info")
        add("direct_p99_us", m.group(2), "us", "info")
    m = re.search(r"^\| Switchboard gateway \(ws\) " + num * 4 + r"\|", text, re.M)
    if m:
        add("gateway_p50_us", m.group(1), "us", "lower")
        add("gateway_p99_us", m.group(2), "us", "lower")
        add("gateway_added_p50_us", m.group(3), "us", "info")
        add("gateway_added_p99_us", m.group(4), "us", "info")
    m = re.search(r"^\| websockify[^|]*" + num * 4 + r"\|", text, re.M)
    if m:
        add("websockify_p50_us", m.group(1), "us", "info")
        add("websockify_p99_us", m.group(2), "us", "info")
elif bench == "start_or_get":
    m = re.search(r"fake API server: \d+ ready pods loaded in (\S+)", text)
    if m:
        add("fake_api_load_ms", dur_ms(m.group(1)), "ms", "info")
    m = re.search(r"broker start: pod cache filled \(list of \d+ pods\) in (\S+)", text)
    if m:
        add("cache_fill_ms", dur_ms(m.group(1)), "ms", "lower")
    m = re.search(r"^\| ready pod, from the reflector cache \| ([\d.]+) \|", text, re.M)
    if m:
        add("cached_decisions_per_s", m.group(1), "1/s", "higher")
    m = re.search(r"^\| ready pod, one API GET each[^|]*\| ([\d.]+) \|", text, re.M)
    if m:
        add("api_get_decisions_per_s", m.group(1), "1/s", "info")
    m = re.search(r"^\| new pod: create \+ watch to Ready[^|]*\| ([\d.]+) \|", text, re.M)
    if m:
        add("new_pods_per_s", m.group(1), "1/s", "higher")
    m = re.search(r"one new pod alone: (\S+) from request to Ready", text)
    if m:
        add("new_pod_alone_ms", dur_ms(m.group(1)), "ms", "lower")
    m = re.search(r"^\| seed: `kubectl get pod -o json` per login \| ([\d.]+) \|", text, re.M)
    if m:
        add("kubectl_per_s", m.group(1), "1/s", "info")

# A name printed twice in one run (it should not be) keeps its last value.
seen = {}
for f in figs:
    seen[f[0]] = f
figs = list(seen.values())
with open(tsv, "a") as out:
    for name, v, unit, better in figs:
        out.write(f"{rnd}\t{side}\t{bench}\t{name}\t{v!r}\t{unit}\t{better}\n")


def fmt(v):
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


print(len(figs))
if figs:
    line = "  ".join(f"{n}={fmt(v)}" for n, v, _, _ in figs)
    print(textwrap.fill(line, width=110, initial_indent="      ", subsequent_indent="      ",
                        break_on_hyphens=False))
EOF

cat > "$RUN/report.py" <<'EOF'
# report.py FIGURES_TSV RUNS_TSV ROUNDS TOLERANCE REV_LABEL TREE_LABEL BENCH...: the table and the
# verdicts. Exit status 3 when something is worse or missing, or a tree run failed where REV's
# succeeded; 4 when nothing could be compared (1 is Python's own, for a crash).
import statistics
import sys
from collections import defaultdict

fig_path, runs_path, rounds, tol, rev_label, tree_label = sys.argv[1:7]
order = sys.argv[7:]
rounds, tol = int(rounds), float(tol) / 100

vals = defaultdict(lambda: {"rev": [], "tree": []})  # (bench, name) -> side -> values
meta = {}                                             # (bench, name) -> (unit, better)
first = {}
for i, line in enumerate(open(fig_path)):
    rnd, side, bench, name, value, unit, better = line.rstrip("\n").split("\t")
    key = (bench, name)
    vals[key][side].append(float(value))
    meta[key] = (unit, better)
    first.setdefault(key, i)

runs = defaultdict(dict)  # (bench, round) -> side -> (status, rc, out)
for line in open(runs_path):
    rnd, bench, side, status, rc, secs, nf, out = line.rstrip("\n").split("\t")
    runs[(bench, int(rnd))][side] = (status, int(rc), out)


def fmt(v):
    a = abs(v)
    if a >= 1000 or (a >= 100 and float(v).is_integer()):
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.3g}"


def cell(v):
    if not v:
        return "-"
    m = statistics.median(v)
    s = fmt(m) if len(v) == 1 else f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))})"
    if len(v) < rounds:
        s += f" n={len(v)}"
    return s


def verdict(r, t, better):
    if better == "info":
        return "info"
    if r and not t:
        return "MISSING"
    if t and not r:
        return "new"
    mr, mt = statistics.median(r), statistics.median(t)
    slack = abs(mr) * tol
    if better == "lower":
        if min(t) > max(r) and mt > mr + slack:
            return "WORSE"
        if max(t) < min(r) and mt < mr - slack:
            return "better"
    else:
        if max(t) < min(r) and mt < mr - slack:
            return "WORSE"
        if min(t) > max(r) and mt > mr + slack:
            return "better"
    return "ok"


rank = {b: i for i, b in enumerate(order)}
keys = sorted(vals, key=lambda k: (rank.get(k[0], len(rank)), first[k]))
rows = []
bad = []
for k in keys:
    bench, name = k
    unit, better = meta[k]
    r, t = vals[k]["rev"], vals[k]["tree"]
    ratio = "-"
    if r and t and statistics.median(r) != 0:
        ratio = f"{statistics.median(t) / statistics.median(r):.3f}"
    v = verdict(r, t, better)
    if v in ("WORSE", "MISSING"):
        bad.append((bench, name, unit, better, r, t, v))
    rows.append((bench, f"{name} [{unit}]", {"lower": "lower", "higher": "higher"}.get(better, "-"),
                 cell(r), cell(t), ratio, v))

print()
print(f"== REV:  {rev_label}")
print(f"   tree: {tree_label}")
print(f"   {rounds} round(s), interleaved; median (min–max over rounds); WORSE = every tree round worse "
      f"than every REV round and the median worse by more than {tol * 100:g} %")
head = ("bench", "figure [unit]", "better", "REV", "tree", "tree/REV", "verdict")
widths = [max(len(head[i]), *(len(row[i]) for row in rows)) if rows else len(head[i]) for i in range(7)]
print("   " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip())
print("   " + "  ".join("-" * w for w in widths))
last = None
for row in rows:
    if last is not None and row[0] != last:
        print()
    last = row[0]
    print("   " + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())

# Runs that failed.
problems = []
notes = []
for (bench, rnd), sides in sorted(runs.items(), key=lambda x: (rank.get(x[0][0], 99), x[0][1])):
    rv, tr = sides.get("rev"), sides.get("tree")
    if tr and tr[0] != "ok":
        if rv and rv[0] == "ok":
            problems.append(f"{bench} round {rnd}: the tree run {tr[0]} where REV's succeeded ({tr[2]})")
        elif rv and rv[0] != "absent":
            notes.append(f"{bench} round {rnd}: the tree run {tr[0]}, the REV run {rv[0]} ({tr[2]})")
        else:
            notes.append(f"{bench} round {rnd}: the tree run {tr[0]} ({tr[2]})")
    elif rv and rv[0] not in ("ok", "absent"):
        notes.append(f"{bench} round {rnd}: the REV run {rv[0]}; REV's figures of that round are missing ({rv[2]})")
ran = {b for (b, _) in runs}
for b in order:
    if b not in ran:
        notes.append(f"{b}: not run")
    elif max(r for (bb, r) in runs if bb == b) < rounds:
        notes.append(f"{b}: failed for both sides in round 1, not run again")
    if any(s.get("rev", ("",))[0] == "absent" for (bb, _), s in runs.items() if bb == b):
        notes.append(f"{b}: not in REV (no bench executable for REV); its figures are 'new'")

if notes:
    print()
for n in notes:
    print(f"   note: {n}")
if bad or problems:
    print()
    print(f"== REGRESSION: {len(bad)} figure(s) worse beyond the spread or missing, {len(problems)} failed tree run(s)")
    for bench, name, unit, better, r, t, v in bad:
        if v == "MISSING":
            print(f"   {bench} {name}: measured for REV ({cell(r)} {unit}), never for the tree")
        else:
            mr, mt = statistics.median(r), statistics.median(t)
            print(f"   {bench} {name}: {fmt(mr)} -> {fmt(mt)} {unit} ({(mt / mr - 1) * 100:+.1f} %, "
                  f"{better} is better; REV {fmt(min(r))}–{fmt(max(r))}, tree {fmt(min(t))}–{fmt(max(t))})"
                  if mr else f"   {bench} {name}: {fmt(mr)} -> {fmt(mt)} {unit}")
    for p in problems:
        print(f"   {p}")
    sys.exit(3)
judged = sum(1 for row in rows if row[6] not in ("info", "new"))
print()
if judged == 0:
    print("== nothing compared: no figure was measured for both REV and the tree")
    sys.exit(4)
print(f"== no regression: {judged} figure(s) judged, none worse beyond the spread")
EOF

# ---- building ----
# build SIDE SRC TARGET_DIR(empty: the tree's usual one) BENCH...: the switchboard binary and the
# named bench executables into $BINS/SIDE.
build() {
  local side=$1 src=$2 target=$3 json exe pkg crate b want
  shift 3
  local benches=("$@") envs=()
  if [ -n "$target" ]; then envs=(CARGO_TARGET_DIR="$target"); fi
  rm -rf "${BINS:?}/$side"
  mkdir -p "$BINS/$side"
  json=$RUN/build-$side.json
  echo "== building $side: cargo build --release -p switchboard-cli   (in $src${target:+, CARGO_TARGET_DIR=$target})"
  if ! (cd "$src" && exec 9>&- && env "${envs[@]}" cargo build --release -p switchboard-cli \
          --message-format=json-render-diagnostics) > "$json" 2> >(tee "$RUN/build-$side.log" >&2); then
    die "the $side build failed (see above and $RUN/build-$side.log)"
  fi
  exe=$(python3 "$RUN/artifacts.py" "$json" | awk -F'\t' '$1 == "switchboard" && $2 ~ /bin/ {print $3}' | tail -n 1)
  [ -n "$exe" ] && [ -x "$exe" ] || die "the $side build did not report a switchboard binary ($json)"
  cp -f "$exe" "$BINS/$side/switchboard"
  [ "${#benches[@]}" -gt 0 ] || return 0
  # The bench executables, one cargo call per package.
  for crate in core broker k8s; do
    want=()
    for b in "${benches[@]}"; do
      [ "$(crate_of "$b")" = "$crate" ] || continue
      if [ -f "$src/crates/$crate/benches/$b.rs" ]; then
        want+=(--bench "$b")
      else
        echo "   ($side has no crates/$crate/benches/$b.rs: $b is not measured for $side)"
      fi
    done
    [ "${#want[@]}" -gt 0 ] || continue
    pkg=switchboard-$crate
    json=$RUN/build-$side-$crate-benches.json
    echo "== building $side: cargo bench --no-run -p $pkg ${want[*]}"
    if ! (cd "$src" && exec 9>&- && env "${envs[@]}" cargo bench --no-run -p "$pkg" "${want[@]}" \
            --message-format=json-render-diagnostics) > "$json" 2> >(tee -a "$RUN/build-$side.log" >&2); then
      if [ "$side" = tree ]; then die "the tree's bench build failed (see above)"; fi
      echo "   (REV's benches of $pkg do not build: they are not measured for REV)"
      continue
    fi
    while IFS=$'\t' read -r name kinds path; do
      case ",$kinds," in *,bench,*) ;; *) continue ;; esac
      for b in "${benches[@]}"; do
        if [ "$b" = "$name" ]; then cp -f "$path" "$BINS/$side/$b"; fi
      done
    done < <(python3 "$RUN/artifacts.py" "$json")
  done
}

CARGO_SELECTED=()
for b in "${SELECTED[@]}"; do
  if is_cargo_bench "$b"; then CARGO_SELECTED+=("$b"); fi
done

echo "== bench/compare.sh: REV $REV_LABEL"
echo "   against the $TREE_LABEL"
echo "   $CMP_ROUNDS round(s) of: ${SELECTED[*]}"
echo "   run directory: $RUN"

# REV: a detached worktree at a fixed path, kept after the run when it is clean, so that the
# next comparison with the same REV rebuilds nothing (a new checkout would give every source a
# new mtime, and cargo would compile the workspace again).
if [ -e "$WT" ] && [ "$(git -C "$WT" rev-parse HEAD 2>/dev/null)" = "$SHA" ] \
  && [ -z "$(git -C "$WT" status --porcelain 2>/dev/null)" ]; then
  echo "   reusing the worktree of $REV_LABEL at $WT"
else
  if [ -e "$WT" ]; then
    git -C "$ROOT" worktree remove --force "$WT" >/dev/null 2>&1 || true
    rm -rf "$WT"
  fi
  git -C "$ROOT" worktree prune
  git -C "$ROOT" worktree add --detach --quiet "$WT" "$SHA" || die "git worktree add $WT $SHA failed"
  # Removed again only if the run stops before REV is built.
  WT_ADDED=1
fi
mkdir -p "$REV_TARGET"
build rev "$WT" "$REV_TARGET" "${CARGO_SELECTED[@]}"
WT_ADDED=""
build tree "$ROOT" "${CARGO_TARGET_DIR:-}" "${CARGO_SELECTED[@]}"
echo "   binaries: $BINS/rev/switchboard, $BINS/tree/switchboard"

# A PostgreSQL server for the restart bench's PostgreSQL leg (its databases are fresh each run).
PG_URL=${SWITCHBOARD_TEST_POSTGRES_URL:-}
case " ${SELECTED[*]} " in
  *" restart "*)
    if [ -z "$PG_URL" ] && ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
      # shellcheck source=../scripts/pg.sh
      . "$ROOT/scripts/pg.sh"
      PG_STARTED=1
      start_postgres 9>&-
      PG_URL=$SWITCHBOARD_TEST_POSTGRES_URL
      unset SWITCHBOARD_TEST_POSTGRES_URL
    elif [ -z "$PG_URL" ]; then
      echo "   (no PostgreSQL server binaries: the restart bench measures SQLite only)"
    fi ;;
esac

# ---- running ----
# bounded LIMIT OUT ERR DIR CMD...: CMD in DIR under timeout, in the background so that a signal
# to this script stops it (timeout passes TERM on to the benchmark's whole process group); sets RC.
bounded() {
  local limit=$1 out=$2 err=$3 dir=$4
  shift 4
  # (fd 9, the lock, is not passed on: a process left behind must not hold it.)
  (cd "$dir" && exec timeout --kill-after=30 "$limit" "$@") > "$out" 2> "$err" < /dev/null 9>&- &
  CHILD=$!
  RC=0
  wait "$CHILD" || RC=$?
  CHILD=""
}

# run_bench BENCH SIDE ROUND: one run; returns 0 (figures), 1 (failed) or 2 (not in this tree).
run_bench() {
  local b=$1 side=$2 r=$3 bin=$BINS/$2/switchboard out err dir limit t0 secs status nf summary label
  local cmd=()
  out=$RUN/r$r-$b-$side.out
  err=$RUN/r$r-$b-$side.err
  limit=${BENCH_TIMEOUT:-$(limit_of "$b")}
  label=REV
  if [ "$side" = tree ]; then label=tree; fi
  if is_cargo_bench "$b"; then
    if [ ! -x "$BINS/$side/$b" ]; then
      printf '   %-13s %-4s  not built for %s\n' "$b" "$label" "$label"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$b" "$side" absent 0 0 0 "-" >> "$RUNS"
      return 2
    fi
    dir=$ROOT
    if [ "$side" = rev ]; then dir=$WT; fi
    dir=$dir/crates/$(crate_of "$b")
    cmd=(env CRITERION_HOME="$RUN/criterion-$side")
    case "$b" in
      restart) if [ -n "$PG_URL" ]; then cmd+=(SWITCHBOARD_TEST_POSTGRES_URL="$PG_URL"); fi ;;
      gateway_rtt) cmd+=(ROUNDS="$GATEWAY_RTT_N") ;;
    esac
    # --bench as `cargo bench` passes it; criterion reads the rest, the harness=false mains
    # ignore their arguments.
    cmd+=("$BINS/$side/$b" --bench)
    if [ "$b" = placement ]; then cmd+=(--quick --noplot --output-format bencher); fi
  else
    dir=$ROOT
    cmd=(env BENCH_BIN="$bin" BENCH_QUICK=1 "bench/$b.sh")
  fi
  t0=$SECONDS
  bounded "$limit" "$out" "$err" "$dir" "${cmd[@]}"
  secs=$((SECONDS - t0))
  summary=$(python3 "$RUN/figures.py" "$b" "$out" "$r" "$side" "$FIG") || summary="0"
  nf=${summary%%$'\n'*}
  if [ "$RC" -eq 0 ] && [ "$nf" -gt 0 ]; then
    status=ok
  elif [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
    status="timed out after ${limit} s"
  elif [ "$RC" -ne 0 ]; then
    status="failed (exit $RC)"
  else
    status="printed no figures"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$b" "$side" "$status" "$RC" "$secs" "$nf" "$out" >> "$RUNS"
  printf '   %-13s %-4s  %-24s %4d s  %d figures\n' "$b" "$label" "$status" "$secs" "$nf"
  if [ "$nf" -gt 0 ]; then printf '%s\n' "${summary#*$'\n'}"; fi
  if [ "$status" != ok ]; then
    tail -n 6 "$err" "$out" 2>/dev/null | sed 's/^/      | /'
  elif [ "$VERBOSE" = 1 ]; then
    sed 's/^/      | /' "$out"
  fi
  [ "$status" = ok ]
}

declare -A DROPPED=()
for r in $(seq 1 "$CMP_ROUNDS"); do
  echo "== round $r/$CMP_ROUNDS"
  for b in "${SELECTED[@]}"; do
    if [ -n "${DROPPED[$b]:-}" ]; then continue; fi
    good=0
    for side in rev tree; do
      rc=0
      run_bench "$b" "$side" "$r" || rc=$?
      if [ "$rc" -eq 0 ]; then good=$((good + 1)); fi
      if [ "$PAUSE" -gt 0 ]; then sleep "$PAUSE"; fi
    done
    if [ "$r" -eq 1 ] && [ "$good" -eq 0 ]; then
      DROPPED[$b]=1
      echo "   ($b gave no figures for either side: not run again; see $RUN/r1-$b-*.err)"
    fi
  done
done

# ---- report ----
rc=0
python3 "$RUN/report.py" "$FIG" "$RUNS" "$CMP_ROUNDS" "$TOLERANCE" "$REV_LABEL" "$TREE_LABEL" \
  "${SELECTED[@]}" > "$RUN/report.txt" || rc=$?
cat "$RUN/report.txt"
if [ "$rc" -eq 3 ]; then
  echo "compare.sh: the working tree is worse than $REV beyond the spread (exit 1)" >&2
  exit 1
elif [ "$rc" -eq 4 ]; then
  die "no figure was measured for both sides (see the notes above and the logs)"
elif [ "$rc" -ne 0 ]; then
  die "the report failed (exit $rc)"
fi
exit 0

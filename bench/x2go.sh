#!/usr/bin/env bash
# The X2Go frontend against x2gobroker, side by side on the same machine, in the same run, on the
# same 10-profile session-profiles file (3 profiles with 3 hosts; 127.x addresses; agent mode NONE;
# port scan off), measured by wrk on loopback:
#
#   1. listsessions and selectsession requests/s without authentication
#      (x2gobroker: require-password = false; Switchboard: [auth] method = "none"); 1b. the same
#      on a realistic profiles file (x2gobroker's 35 [DEFAULT] client keys written out);
#   2. the same with PAM and AUTHID chains, as X2Go Client does (one password login per client, then
#      the previous reply's AUTHID on every request; bench/x2go_chain.lua);
#   3. token-chain latency (bench/x2go_chain.py, per request) while 20 wrong-password requests
#      from 20 addresses are in flight against PAM all the time.
#
# Prints each figure and the ratio Switchboard / x2gobroker. Targets: >= 50x on 1 and 2 for both
# tasks; p99 <= 10 ms for Switchboard in 3.
#
# Usage: bench/x2go.sh [DURATION_SECONDS]   (default 10). Needs root: it installs Debian packages
# when missing (x2gobroker-daemon, x2gobroker-authservice, wrk), creates the local user
# `sbbench-x2go` for PAM, and runs x2gobroker-daemon with --drop-privileges.
# bench/x2go.sh quick [DURATION_SECONDS] (or BENCH_QUICK=1): default 3 s, a smoke check.
# BENCH_BIN=/path/to/switchboard uses that binary instead of `cargo build --release`. At the end it
# prints `FIGURE name=value unit higher|lower|info` lines for bench/compare.sh.
set -euo pipefail
[ -z "${BENCH_BIN:-}" ] || BENCH_BIN=$(realpath "$BENCH_BIN")
cd "$(dirname "$0")/.."
QUICK=${BENCH_QUICK:-0}
if [ "${1:-}" = quick ]; then QUICK=1; shift; fi
DURATION=${1:-10}
if [ "$QUICK" != 0 ]; then DURATION=${1:-3}; fi
[ "$(id -u)" -eq 0 ] || { echo "bench/x2go.sh needs root (PAM user, x2gobroker-daemon)" >&2; exit 1; }
# x2gobroker's scripts start with `#!/usr/bin/env python3` and need Debian's Python.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin
for p in x2gobroker-daemon x2gobroker-authservice wrk curl python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    echo "==> installing $p"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null; }
done
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q -p switchboard-cli
  BIN=$PWD/target/release/switchboard
fi

USER_NAME=sbbench-x2go
PASSWORD='Bench-Pw-42'
id "$USER_NAME" >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
echo "$USER_NAME:$PASSWORD" | chpasswd
# Switchboard's PAM service: the shipped file.
cp packaging/pam.d/switchboard /etc/pam.d/switchboard

WORK=$(mktemp -d /tmp/switchboard-x2go-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
ATTACK=()
cleanup() {
  for p in "${PIDS[@]}" "${ATTACK[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${KEEP:-}" ] && echo "work dir: $WORK (kept)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The shared profiles file: 10 profiles, 3 with 3 hosts.
{
  echo "[DEFAULT]"
  echo "broker-agent-query-mode=NONE"
  echo "broker-portscan-x2goservers=false"
  echo "user=BROKER_USER"
  for i in $(seq 1 10); do
    echo
    echo "[profile-$i]"
    echo "name=Profile $i"
    if [ "$i" -le 3 ]; then
      echo "host=p$i-a (127.0.$i.11),p$i-b (127.0.$i.12),p$i-c (127.0.$i.13)"
      echo "command=MATE"
    else
      echo "host=p$i (127.0.$i.11)"
      echo "command=TERMINAL"
    fi
  done
} > "$WORK/profiles.conf"
chmod 644 "$WORK/profiles.conf"
# The same profiles with a realistic [DEFAULT]: the client keys of x2gobroker's shipped example
# file (its built-in defaults, written out), as sites copy it. Work in proportion to a profile's
# keys belongs at load time, so both files should serve at the same rate.
{
  echo "[DEFAULT]"
  cat <<'KEYS'
command=TERMINAL
kdrive=false
defsndport=true
useiconv=false
iconvfrom=UTF-8
height=600
export=
quality=9
fullscreen=false
layout=
useexports=true
width=800
speed=2
soundsystem=pulse
print=true
type=auto
sndport=4713
xinerama=true
variant=
usekbd=true
fstunnel=true
applications=TERMINAL,WWWBROWSER,MAILCLIENT,OFFICE
multidisp=false
sshproxyport=22
sound=true
rootless=true
iconvto=UTF-8
soundtunnel=true
dpi=96
sshport=22
setdpi=0
pack=16m-jpeg
directrdp=false
usebrokerpass=true
KEYS
  sed -n '/^\[DEFAULT\]/d; p' "$WORK/profiles.conf"
} > "$WORK/profiles-full.conf"
chmod 644 "$WORK/profiles-full.conf"

wait_http() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null -X POST -d 'task=testcon' "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answers at $1" >&2; exit 1
}

# ---- x2gobroker ----
XB_PORT=$(free_port)
XB_AUTH_PORT=$(free_port)
cat > "$WORK/x2gobroker-noauth.conf" <<EOF
[global]
require-password = false
require-cookie = false
check-credentials = false
default-agent-query-mode = NONE
default-portscan-x2goservers = false
[broker_inifile]
enable = true
use-load-checker = false
EOF
cat > "$WORK/x2gobroker-pam.conf" <<EOF
[global]
require-password = true
require-cookie = false
default-auth-mech = pam
default-agent-query-mode = NONE
default-portscan-x2goservers = false
[broker_inifile]
enable = true
use-load-checker = false
EOF
chmod 644 "$WORK"/*.conf
x2gobroker-authservice -i -s "$WORK/authservice.socket" -o root -g x2gobroker -p 0o660 \
  > "$WORK/authservice.log" 2>&1 &
PIDS+=($!)
X2GOBROKER_CONFIG="$WORK/x2gobroker-noauth.conf" X2GOBROKER_SESSIONPROFILES="$WORK/profiles.conf" \
  x2gobroker-daemon --drop-privileges -i -b "127.0.0.1:$XB_PORT" > "$WORK/xb-noauth.log" 2>&1 &
PIDS+=($!)
XB_FULL_PORT=$(free_port)
X2GOBROKER_CONFIG="$WORK/x2gobroker-noauth.conf" X2GOBROKER_SESSIONPROFILES="$WORK/profiles-full.conf" \
  x2gobroker-daemon --drop-privileges -i -b "127.0.0.1:$XB_FULL_PORT" > "$WORK/xb-full.log" 2>&1 &
PIDS+=($!)
X2GOBROKER_CONFIG="$WORK/x2gobroker-pam.conf" X2GOBROKER_SESSIONPROFILES="$WORK/profiles.conf" \
  X2GOBROKER_AUTHSERVICE_SOCKET="$WORK/authservice.socket" \
  x2gobroker-daemon --drop-privileges -i -b "127.0.0.1:$XB_AUTH_PORT" > "$WORK/xb-pam.log" 2>&1 &
PIDS+=($!)

# ---- Switchboard ----
SB_PORT=$(free_port)
SB_AUTH_PORT=$(free_port)
SB_FULL_PORT=$(free_port)
for mode in noauth pam full; do
  port=$SB_PORT; method=none; profiles=profiles.conf
  [ "$mode" = pam ] && { port=$SB_AUTH_PORT; method=pam; }
  [ "$mode" = full ] && { port=$SB_FULL_PORT; profiles=profiles-full.conf; }
  cat > "$WORK/sb-$mode.toml" <<EOF
data_dir = "$WORK/sb-$mode"
[http]
listen = "127.0.0.1:$port"
[management]
socket = "$WORK/sb-$mode.sock"
[placement]
reservation_ttl = "1h"
[auth]
method = "$method"
[x2go]
session_profiles = "$WORK/$profiles"
EOF
  mkdir -p "$WORK/sb-$mode"
  RUST_LOG=warn "$BIN" broker --config "$WORK/sb-$mode.toml" 2> "$WORK/sb-$mode.log" &
  PIDS+=($!)
done
for port in $XB_PORT $XB_AUTH_PORT $XB_FULL_PORT $SB_PORT $SB_AUTH_PORT $SB_FULL_PORT; do wait_http "http://127.0.0.1:$port/plain/"; done

rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99_ms() {
  awk '/ 99%/ { v=$2; if (v ~ /us$/) { sub(/us/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v=v*1000 } print v }' "$1"
}
ratio() { python3 -c "a=float('$1' or 0); b=float('$2' or 0); print(f'{a/b:.0f}x' if b > 0 else 'n/a')"; }
check() { # label file: fails loudly when wrk saw errors
  if grep -qE 'Non-2xx|Socket errors' "$2"; then echo "   ($1: $(grep -E 'Non-2xx|Socket errors' "$2" | tr -s ' '))"; fi
}

RESULTS=()
run_form() { # name port task
  local name=$1 port=$2 task=$3 body
  body="task=$task&user=$USER_NAME&password=&authid=&login=$USER_NAME"
  [ "$task" = selectsession ] && body="$body&sid=profile-1"
  X2GO_BODY="$body" wrk -t2 -c8 -d"${DURATION}s" --latency -s bench/x2go_form.lua \
    "http://127.0.0.1:$port/plain/" > "$WORK/$name.wrk" 2>&1 || true
  check "$name" "$WORK/$name.wrk"
}
run_chain() { # name port task
  local name=$1 port=$2 task=$3
  X2GO_TASK=$task X2GO_USER=$USER_NAME X2GO_PASSWORD=$PASSWORD X2GO_SID=profile-1 \
    wrk -t4 -c4 -d"${DURATION}s" --latency -s bench/x2go_chain.lua \
    "http://127.0.0.1:$port/plain/" > "$WORK/$name.wrk" 2>&1 || true
  check "$name" "$WORK/$name.wrk"
}

echo "== 1. no authentication (wrk -t2 -c8, ${DURATION}s each)"
for task in listsessions selectsession; do
  run_form "xb-$task" "$XB_PORT" "$task"
  run_form "sb-$task" "$SB_PORT" "$task"
  xb=$(rps "$WORK/xb-$task.wrk"); sb=$(rps "$WORK/sb-$task.wrk")
  printf '   %-14s x2gobroker %10s req/s (p99 %s ms)   Switchboard %10s req/s (p99 %s ms)   ratio %s\n' \
    "$task" "$xb" "$(p99_ms "$WORK/xb-$task.wrk")" "$sb" "$(p99_ms "$WORK/sb-$task.wrk")" "$(ratio "$sb" "$xb")"
  RESULTS+=("noauth-$task $(ratio "$sb" "$xb")")
done

echo "== 1b. the same on the realistic profiles file (35 [DEFAULT] client keys), beside the minimal one"
for task in listsessions selectsession; do
  run_form "xbf-$task" "$XB_FULL_PORT" "$task"
  run_form "sbf-$task" "$SB_FULL_PORT" "$task"
  xb=$(rps "$WORK/xbf-$task.wrk"); sb=$(rps "$WORK/sbf-$task.wrk")
  printf '   %-14s x2gobroker %10s req/s (p99 %s ms)   Switchboard %10s req/s (p99 %s ms)   ratio %s   (minimal file: Switchboard %s req/s)\n' \
    "$task" "$xb" "$(p99_ms "$WORK/xbf-$task.wrk")" "$sb" "$(p99_ms "$WORK/sbf-$task.wrk")" "$(ratio "$sb" "$xb")" "$(rps "$WORK/sb-$task.wrk")"
  RESULTS+=("full-$task $(ratio "$sb" "$xb")")
done
# Every select answered with a server of the profile, on both files (a refusal is a 200 too).
for port in $SB_PORT $SB_FULL_PORT; do
  reply=$(curl -s -X POST "http://127.0.0.1:$port/plain/" \
    -d "task=selectsession&user=$USER_NAME&password=&authid=&login=$USER_NAME&sid=profile-1")
  echo "$reply" | grep -qE '^SERVER:127\.0\.1\.1[1-3]:22' || { echo "select on port $port answered: $reply" >&2; exit 1; }
done

echo "== 2. PAM login, then AUTHID chains (wrk -t4 -c4: four X2Go clients, ${DURATION}s each)"
for task in listsessions selectsession; do
  run_chain "xbc-$task" "$XB_AUTH_PORT" "$task"
  run_chain "sbc-$task" "$SB_AUTH_PORT" "$task"
  xb=$(rps "$WORK/xbc-$task.wrk"); sb=$(rps "$WORK/sbc-$task.wrk")
  # Requests/s only: with a Lua response callback, wrk's latency histogram is not reliable.
  printf '   %-14s x2gobroker %10s req/s (%s)   Switchboard %10s req/s (%s)   ratio %s\n' \
    "$task" "$xb" "$(grep relogins "$WORK/xbc-$task.wrk")" \
    "$sb" "$(grep relogins "$WORK/sbc-$task.wrk")" "$(ratio "$sb" "$xb")"
  RESULTS+=("token-$task $(ratio "$sb" "$xb")")
done

echo "== 3. AUTHID chains (listsessions) while 20 wrong PAM passwords from 20 addresses are in flight"
wrong_passwords() { # port seconds countfile: 20 loops, one per source address, bounded in time and count
  local port=$1 until=$((SECONDS + $2)) count=$3 i
  ATTACK=()
  for i in $(seq 0 19); do
    (
      n=0
      while [ "$SECONDS" -lt "$until" ] && [ "$n" -lt 10000 ]; do
        curl -s -o /dev/null --max-time 30 --interface "127.0.9.$((i + 10))" \
          -w '%{http_code}\n' -d "task=listsessions&user=$USER_NAME&password=wrong-$n&authid=" \
          "http://127.0.0.1:$port/plain/" >> "$count" || true
        n=$((n + 1))
      done
    ) &
    ATTACK+=($!)
  done
}
for side in xb sb; do
  port=$XB_AUTH_PORT; [ "$side" = sb ] && port=$SB_AUTH_PORT
  # Four X2Go clients log in first (bench/x2go_chain.py measures each token request); a second
  # later the wrong passwords start and keep coming until the clients stop.
  /usr/bin/python3 bench/x2go_chain.py "http://127.0.0.1:$port/plain/" "$USER_NAME" "$PASSWORD" \
    listsessions 4 "$DURATION" > "$WORK/$side-under-attack.txt" &
  chain=$!
  sleep 1
  wrong_passwords "$port" "$((DURATION - 1))" "$WORK/$side-attack.codes"
  wait "$chain" || true
  for j in "${ATTACK[@]}"; do wait "$j" 2>/dev/null || true; done
  ATTACK=()
done
echo "   x2gobroker   $(cat "$WORK/xb-under-attack.txt")"
echo "   Switchboard  $(cat "$WORK/sb-under-attack.txt")   (target: p99 <= 10 ms)"
echo "   wrong passwords answered 401: x2gobroker $(grep -c '^401' "$WORK/xb-attack.codes" || true), Switchboard $(grep -c '^401' "$WORK/sb-attack.codes" || true)"

echo "== ratios (target >= 50x): ${RESULTS[*]}"
echo "   RSS after the run: x2gobroker-daemon $(ps -o rss= -C x2gobroker-daemon | awk '{s+=$1} END {print int(s/1024)}') MiB (both daemons), switchboard $(ps -o rss= -C "$(basename "$BIN")" | awk '{s+=$1} END {print int(s/1024)}') MiB (both brokers)"

# ---- machine-readable figures (bench/compare.sh) ----
# FIGURE name=value unit higher|lower|info: which way is better; info for x2gobroker's own figures
# and the ratios. A figure that was not measured is left out.
figure() { if [ -n "$2" ]; then echo "FIGURE $1=$2 $3 $4"; fi; }
chain_field() { awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }' "$1" 2>/dev/null; }
per() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b }'; }
for task in listsessions selectsession; do
  figure "noauth_${task}_rps" "$(rps "$WORK/sb-$task.wrk")" req/s higher
  figure "noauth_${task}_p99_ms" "$(p99_ms "$WORK/sb-$task.wrk")" ms lower
  figure "x2gobroker.noauth_${task}_rps" "$(rps "$WORK/xb-$task.wrk")" req/s info
  figure "ratio.noauth_${task}" "$(per "$(rps "$WORK/sb-$task.wrk")" "$(rps "$WORK/xb-$task.wrk")")" x info
  figure "full_${task}_rps" "$(rps "$WORK/sbf-$task.wrk")" req/s higher
  figure "x2gobroker.full_${task}_rps" "$(rps "$WORK/xbf-$task.wrk")" req/s info
  figure "token_${task}_rps" "$(rps "$WORK/sbc-$task.wrk")" req/s higher
  figure "x2gobroker.token_${task}_rps" "$(rps "$WORK/xbc-$task.wrk")" req/s info
  figure "ratio.token_${task}" "$(per "$(rps "$WORK/sbc-$task.wrk")" "$(rps "$WORK/xbc-$task.wrk")")" x info
done
figure attack_token_rps "$(chain_field "$WORK/sb-under-attack.txt" req/s)" req/s higher
figure attack_token_p50_ms "$(chain_field "$WORK/sb-under-attack.txt" p50)" ms lower
figure attack_token_p99_ms "$(chain_field "$WORK/sb-under-attack.txt" p99)" ms lower
figure x2gobroker.attack_token_p99_ms "$(chain_field "$WORK/xb-under-attack.txt" p99)" ms info
figure rss_mib "$(ps -o rss= -C "$(basename "$BIN")" | awk '{s+=$1} END {print int(s/1024)}')" MiB lower

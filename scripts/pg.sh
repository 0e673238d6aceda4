# Sourced by scripts/test and bench/*.sh: start_postgres starts a fresh PostgreSQL cluster in a
# temp dir on a free loopback port and exports SWITCHBOARD_TEST_POSTGRES_URL; stop_postgres stops
# it and removes its files. Needs Debian's `postgresql` package (the scripts install it).
start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] || { echo "PostgreSQL server binaries not found under /usr/lib/postgresql" >&2; exit 1; }
  PGTMP=$(mktemp -d /tmp/switchboard-pg.XXXXXX)
  local port as=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root: use the account Debian's package created.
    chown postgres: "$PGTMP"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PGTMP/data" -A trust -U switchboard --no-sync >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/log" -w \
    -o "-p $port -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  PG_STOP=("${as[@]}" "$bin/pg_ctl" -D "$PGTMP/data" -m immediate stop)
  export SWITCHBOARD_TEST_POSTGRES_URL="postgres://switchboard@127.0.0.1:$port/postgres"
  echo "==> PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}
stop_postgres() {
  if [ -n "${PGTMP:-}" ]; then
    "${PG_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PGTMP"
  fi
}


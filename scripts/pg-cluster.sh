# Sourced by pg-test.sh and store-load.sh: `pg_cluster_start` starts a throwaway PostgreSQL in a
# temp dir, on 127.0.0.1 at a free port, owned by the `postgres` OS user (PostgreSQL refuses to
# run as root), and exports PG_URL (a database `aic_test`) and PG_DIR; it is stopped and removed
# on exit. Needs Debian's `postgresql` (scripts/setup.sh).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
pg_as() { if [ "$(id -un)" = postgres ]; then "$@"; elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_cluster_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  pg_as "$pg_bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}
pg_cluster_start() {
  [ -x "$pg_bin/initdb" ] || { echo "PostgreSQL server binaries not found (install Debian's postgresql: scripts/setup.sh)" >&2; return 1; }
  PG_DIR=$(mktemp -d /tmp/aic-pg.XXXXXX); export PG_DIR
  chmod 0755 "$PG_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PG_DIR"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pg_as "$pg_bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  pg_as "$pg_bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off ${PG_EXTRA_OPTS:-}" start >/dev/null \
    || { cat "$PG_DIR/server.log" >&2; return 1; }
  pg_as "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U postgres aic_test
  export PG_URL="postgres://postgres@127.0.0.1:$port/aic_test"
  echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
}

#!/usr/bin/env bash
# Runs the control store's tests against a real PostgreSQL: a throwaway cluster in a temp dir,
# listening on 127.0.0.1 at a free port, owned by the `postgres` OS user (PostgreSQL refuses to
# run as root), stopped and removed on exit. Needs Debian's `postgresql` (scripts/setup.sh).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/initdb" ] || { echo "pg-test: PostgreSQL server binaries not found (install Debian's postgresql: scripts/setup.sh)" >&2; exit 1; }

as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; elif [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

dir=$(mktemp -d /tmp/aic-pg.XXXXXX)
chmod 0755 "$dir"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }
as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres aic_test

export AIC_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/aic_test"
echo "pg-test: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
cargo test -p aic-control --test store "$@" -- --nocapture postgres_store 2>&1 | tee "$dir/test.log"
grep -q "ran against a real PostgreSQL" "$dir/test.log" \
  || { echo "pg-test: the PostgreSQL store test did not run" >&2; exit 1; }

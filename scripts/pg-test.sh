#!/usr/bin/env bash
# Runs the control store's tests against a real PostgreSQL: a throwaway cluster in a temp dir,
# listening on 127.0.0.1 at a free port, owned by the `postgres` OS user (PostgreSQL refuses to
# run as root), stopped and removed on exit. Needs Debian's `postgresql` (scripts/setup.sh).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/pg-cluster.sh
trap pg_cluster_stop EXIT
pg_cluster_start
export AIC_TEST_POSTGRES_URL="$PG_URL"
dir="$PG_DIR"
cargo test -p aic-control --test store "$@" -- --nocapture postgres_store 2>&1 | tee "$dir/test.log"
grep -q "ran against a real PostgreSQL" "$dir/test.log" \
  || { echo "pg-test: the PostgreSQL store test did not run" >&2; exit 1; }

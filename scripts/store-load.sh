#!/usr/bin/env bash
# Session-open rate against the control store (not part of the test command or CI):
#   1. starts `aic serve` on loopback with the store under test, keys on, a 1 s key cache and
#      1 s usage flushes (so nearly every open asks the store and usage is written every second),
#   2. makes one tenant and KEYS API keys with `aic admin`,
#   3. runs `aic bench opens` (open loop, keys round-robin) at each RATE for SECONDS.
#   bash scripts/store-load.sh postgres|sqlite [SECONDS=30] [KEYS=400] [RATE...=200]
# Writes out/store-load-<store>-<rate>.json and prints one line per rate.
set -euo pipefail
cd "$(dirname "$0")/.."
store="${1:?postgres or sqlite}"; secs="${2:-30}"; nkeys="${3:-400}"; shift 3 || shift $#
rates=("$@"); [ ${#rates[@]} -gt 0 ] || rates=(200)
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n1)}"
cargo build --release -p aic --locked >&2
aic=target/release/aic
data=$(mktemp -d); log="$data/serve.log"
pid=
. scripts/pg-cluster.sh
cleanup() { set +e; [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pg_cluster_stop; rm -rf "$data"; }
trap cleanup EXIT
case "$store" in
  postgres) pg_cluster_start; url="$PG_URL" ;;
  sqlite) url="" ;;
  *) echo "store-load: the store is postgres or sqlite" >&2; exit 2 ;;
esac
env AIC_DATA_DIR="$data" ${url:+AIC_STORE_URL="$url"} "$aic" serve --listen 127.0.0.1:0 \
  --metrics-listen off --max-streams 256 --tenant-slot-share 1 \
  --key-cache-ttl-secs 1 --meter-flush-secs 1 2> "$log" & pid=$!
for _ in $(seq 300); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -n1 | awk '{print $3}')
[ -n "$addr" ] || { echo "store-load: aic serve did not start:" >&2; cat "$log" >&2; exit 1; }
export AIC_ADMIN_TOKEN=$(cat "$data/admin.token")
tenant=$("$aic" admin --server "http://$addr" tenant create load | grep -o 't_[0-9a-f]*' | head -n1)
for _ in $(seq "$nkeys"); do
  "$aic" admin --server "http://$addr" key create --tenant "$tenant" --max-streams 0 \
    | grep -o 'aick_[0-9a-f]*_[0-9a-f]*' | tail -n1
done > "$data/keys.txt"
echo "store-load: $store store, $(wc -l < "$data/keys.txt") keys, $secs s per rate" >&2
mkdir -p out
for r in "${rates[@]}"; do
  "$aic" bench opens --addr "http://$addr" --keys-file "$data/keys.txt" --rate "$r" \
    --duration "$secs" --json "out/store-load-$store-$r.json" > /dev/null
  python3 - "out/store-load-$store-$r.json" "$store" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o, f = r["open"] or {}, r["first_frame"] or {}
print(f"{sys.argv[2]}\tasked {r['rate_asked']:.0f}/s\tstarted {r['rate_started']:.1f}/s\t"
      f"ok {r['ok']}/{r['sessions']}\terrors {r['errors'] or 0}\t"
      f"open p50 {o.get('p50_ms', float('nan')):.1f} p99 {o.get('p99_ms', float('nan')):.1f} "
      f"max {o.get('max_ms', float('nan')):.1f} ms\tfirst frame p99 {f.get('p99_ms', float('nan')):.1f} ms")
PY
done
grep -c "panicked" "$log" >/dev/null && { echo "store-load: the server panicked" >&2; exit 1; }
grep -ci "store.*fail\|lookup failed\|flush failed" "$log" | sed 's/^/store errors in the server log: /' >&2 || true

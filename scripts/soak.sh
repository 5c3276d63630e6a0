#!/usr/bin/env bash
# Reliability soak of `aic serve` on loopback (not part of the test command or CI):
#   1. starts `aic serve` (keys on, its own data dir, metrics on a free port),
#   2. makes a tenant and an API key with `aic admin`,
#   3. runs `aic bench soak`: N real-time sessions for D seconds whose clients end normally,
#      vanish mid-stream or send a malformed frame, reconnecting at random,
#   4. then checks: server RSS growth after warm-up, open sessions back to 0 (Prometheus), the
#      metered bytes in equal what the clients sent (±1 frame per session), no panic in the log.
#   bash scripts/soak.sh [SESSIONS=64] [SECONDS=1800]
# Writes out/soak.json and prints the verdicts. Exits non-zero if one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="${1:-64}"; secs="${2:-1800}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n1)}"
cargo build --release -p aic --locked >&2
aic=target/release/aic
data=$(mktemp -d); log="$data/serve.log"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AIC_DATA_DIR="$data" "$aic" serve --listen 127.0.0.1:0 --metrics-listen "127.0.0.1:$mport" \
  --max-streams $((sessions + sessions / 2)) --tenant-slot-share 1 --meter-flush-secs 5 \
  2> "$log" & pid=$!
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(grep -o 'listening on [0-9.:]*' "$log" | head -n1 | awk '{print $3}')
export AIC_ADMIN_TOKEN=$(cat "$data/admin.token")
tenant=$("$aic" admin --server "http://$addr" tenant create soak | grep -o 't_[0-9a-f]*' | head -n1)
key=$("$aic" admin --server "http://$addr" key create --tenant "$tenant" --max-streams 0 | grep -o 'aick_[0-9a-f]*_[0-9a-f]*' | tail -n1)
mkdir -p out
"$aic" bench soak --addr "http://$addr" --key "$key" --sessions "$sessions" --duration "$secs" \
  --server-pid "$pid" --json out/soak.json
sleep 8   # sessions drain; one meter flush
curl -s "http://127.0.0.1:$mport/metrics" > "$data/metrics.txt" || true
# No scrape is a failure, never a silent 0.
open=$(awk '/^aic_sessions_open/ { s += $2; n++ } END { print (n ? s : "-1") }' "$data/metrics.txt")
"$aic" admin --server "http://$addr" usage --tenant "$tenant" > "$data/usage.txt"
kill -TERM "$pid"; wait "$pid" || true
python3 - "$data/usage.txt" out/soak.json "$log" "$open" "$sessions" <<'PY'
import json, re, sys
usage, rep, log, open_now, sessions = open(sys.argv[1]).read(), json.load(open(sys.argv[2])), open(sys.argv[3]).read(), float(sys.argv[4]), int(sys.argv[5])
rows = [l.split() for l in usage.splitlines()[1:] if l.strip()]
metered = sum(int(r[5]) for r in rows) if rows else -1   # key tenant sessions enc_s dec_s bytes_in ...
sent = rep["bytes_sent"]
tol = 640 * rep["sessions_opened"]
ok = True
def check(name, good, detail):
    global ok
    ok &= bool(good)
    print(f"{'PASS' if good else 'FAIL'}  {name}: {detail}")
g = rep["rss_growth_after_warmup"]
check("RSS growth after warm-up <= 5 %", g is not None and g <= 0.05, f"{100 * g:.1f} %" if g is not None else "not sampled")
check("open sessions back to 0", open_now == 0, f"{open_now:.0f}" if open_now >= 0 else "metrics not scraped")
check("metered bytes in = sent (±1 frame/session)", abs(metered - sent) <= tol, f"metered {metered}, sent {sent}, tolerance {tol}")
check("no unexpected session ends", rep["unexpected_errors"] == 0, f"{rep['unexpected_errors']} (first: {rep['first_unexpected']})")
check("no panic in the server log", "panicked" not in log, "")
print(json.dumps({k: rep[k] for k in rep if k != "rss_kib"}))
sys.exit(0 if ok else 1)
PY

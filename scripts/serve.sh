#!/usr/bin/env bash
# The main job with embedded defaults: set up, build, and run `aic serve` (gRPC codec API +
# control API on 127.0.0.1:50051, Prometheus metrics on 127.0.0.1:9464, SQLite store and
# admin token in the data dir). Extra arguments go to `aic serve`; settings can also come from
# AIC_* variables or a TOML file (--config); see README.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n1)}"
export AIC_DATA_DIR="${AIC_DATA_DIR:-$PWD/out/aic-data}"
cargo build --release --locked -q -p aic
aic=target/release/aic
cat >&2 <<MSG
[serve] data dir: $AIC_DATA_DIR (SQLite store control.db; admin token admin.token, mode 0600,
        made at first start). In another shell, make a tenant and an API key:
    export AIC_DATA_DIR=$AIC_DATA_DIR
    $aic admin tenant create demo            # prints the tenant id
    $aic admin key create --tenant <tenant id> --name laptop   # prints the API key once
  then call the codec API with the header "authorization: Bearer <API key>", and read
    $aic admin usage       $aic admin audit       curl -s 127.0.0.1:9464/metrics
  Stop with Ctrl-C or SIGTERM: open sessions finish and usage is flushed.
MSG
exec "$aic" serve "$@"

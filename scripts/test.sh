#!/usr/bin/env bash
# The whole test suite, set-up included. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* | sort | tail -n1)}"

echo "== rustfmt" >&2
cargo fmt --all -- --check
echo "== clippy (all targets, warnings are errors)" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests (unit, property, integration; benches run once in test mode)" >&2
cargo test --workspace --all-targets --locked
echo "== GPU execution providers compiled in, failing cleanly without a device" >&2
cargo test -p aic-pipeline --features cuda,tensorrt --test providers --locked
echo "== fuzz targets still compile (run them: cd fuzz && cargo +nightly fuzz run aic_frame)" >&2
cargo check --manifest-path fuzz/Cargo.toml --locked
echo "== doc tests" >&2
cargo test --workspace --doc --locked

#!/usr/bin/env bash
# The main job with embedded defaults: set up, build, and compare every available codec on the
# shipped speech clips (table on stdout, JSON report and SVG plot under out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
cargo run --release --locked -q -p aic -- codecs
cargo run --release --locked -q -p aic -- bench datasets/fixtures/speech --json out/bench.json --plot out/bench.svg "$@"

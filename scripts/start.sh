#!/usr/bin/env bash
# One command from a fresh clone to a running Ember: install build dependencies, build the
# release binary, fetch and verify the default models (cached in ~/.cache/ember, so reruns
# download nothing), then serve on 127.0.0.1:8787. Extra arguments go to `ember serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release -p ember
./target/release/ember models pull --defaults
exec ./target/release/ember serve "$@"

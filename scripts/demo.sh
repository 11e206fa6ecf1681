#!/usr/bin/env bash
# Fresh machine → running demo: install what is needed, build, run `tandem demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p tandem
exec ./target/release/tandem demo "$@"

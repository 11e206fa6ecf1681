#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run).
# Formatting and lints first (cheap to fail), then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./chaos-tests/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Multi-process tests start real `tandem` nodes; keep them from fighting over 2 cores.
# The chaos scenarios (network namespaces, root) serialize themselves with a lock and
# need the `tandem` binary built first.
cargo build -p tandem
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --no-fail-fast -- --test-threads=2

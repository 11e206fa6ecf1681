#!/usr/bin/env bash
# Type-checks the fuzz crates on stable (they are outside the workspace, so
# `cargo clippy --workspace` and CI never build them). Not run by CI.
# Fuzzing itself needs nightly and cargo-fuzz: see docs/benchmarks.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
for crate in media/fuzz node/fuzz; do
    cargo check --manifest-path "$crate/Cargo.toml" --bins
done

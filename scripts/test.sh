#!/usr/bin/env bash
# The whole test suite: unit, property, conformance and end-to-end tests.
# End-to-end tests start the real `satchel` binary on 127.0.0.1:0 with temp
# data dirs; no outside service is needed yet. Later backends (PostgreSQL,
# Garage, Azurite) are installed and started here, never silently skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

#!/usr/bin/env bash
# Installs everything the tests need (Debian 12, as root) and runs all tests:
# unit and property tests, the repository conformance suite, and the
# end-to-end tests against real PostgreSQL servers started on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The Rust SecantusDB (MongoDB-compatible; the tests that need a pruning
# oplog or speed use it): built once, ~10-25 min on 2 cores, then cached.
bash scripts/secantus-rs.sh >/dev/null
cargo test --workspace --locked --no-fail-fast 2>&1

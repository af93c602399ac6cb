#!/usr/bin/env bash
# Download tasks (issue 11): packaging a PostgreSQL set into its tar against
# reading the same files from the repository to nothing (target >= 0.9x);
# serving the packaged file by its link with curl on loopback (target
# >= 500 MB/s, <= 50 MB RSS added); Tencent DescribeBackupDownloadTask with
# 10,000 download tasks in the catalog: p50/p90/p99 and requests/s, measured
# as bench/rpc.sh measures DescribeBackupTasks.
#
#   bench/download.sh                  # defaults: pgbench scale 50, 5 rounds, 8 clients, 20 s
#   bench/download.sh --scale 100 --rounds 5 --tasks 10000 --instances 20 --clients 4 --seconds 30 --keys 200
#
# Everything (PostgreSQL, the server, curl, the load generator) shares the
# machine's cores. Needs root on Debian 12 (installs PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
command -v curl >/dev/null || apt-get install -y -q curl
cargo build --release -q -p stowage --bin stowage --example download_bench
exec "${CARGO_TARGET_DIR:-$PWD/target}/release/examples/download_bench" "$@"

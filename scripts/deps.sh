#!/usr/bin/env bash
# Installs what Stowage's demo and tests need on Debian 12 (run as root).
# Idempotent: skips what is already there.
set -euo pipefail
need=()
command -v pg_config >/dev/null || need+=(postgresql)
[ -x "$(pg_config --bindir 2>/dev/null)/initdb" ] || need+=(postgresql)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
command -v cc >/dev/null || need+=(gcc)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)  # test certificates for TLS to PostgreSQL
# MariaDB 10.11 for the MySQL/MariaDB engine's tests (started per test on a
# free port; the package's own service is not used).
[ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null || need+=(mariadb-server)
command -v mariadb-backup >/dev/null || need+=(mariadb-backup)
# The SDK compatibility tests build a virtualenv (Debian's python3 needs python3-venv for that).
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root, or install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres

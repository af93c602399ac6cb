#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine:
#   build stowage; start a throwaway PostgreSQL 15 with pgbench data (scale 10);
#   run `stowage serve` on its embedded defaults; register the database;
#   back it up with the live progress bar; list and verify the set; restore it
#   into a new data directory; start the restored server and show its data is
#   identical. Everything lives in one temp folder, removed at the end
#   (KEEP=1 keeps it). SCALE=n changes the pgbench scale.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
bash scripts/deps.sh

echo "==> building stowage (release)"
cargo build --release -q -p stowage
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/stowage

T=$(mktemp -d /tmp/stowage-demo.XXXXXX)
chmod 755 "$T"
PGBIN=$(pg_config --bindir)
AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
[ "$(id -u)" -eq 0 ] || AS=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

start_pg() { # datadir port
  "${AS[@]}" "$PGBIN/postgres" -D "$1" -c listen_addresses=127.0.0.1 -c port="$2" \
    -c unix_socket_directories="$T" -c wal_level=replica -c max_wal_senders=10 \
    -c max_replication_slots=10 -c shared_buffers=128MB > "$T/pg-$2.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do pg_isready -q -h 127.0.0.1 -p "$2" && return; sleep 0.1; done
  cat "$T/pg-$2.log"; exit 1
}
fingerprint() { # port: row counts and balance sums of every pgbench table
  psql -X -At -h "$T" -p "$1" -U postgres -d postgres -c "
    SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts),
           (SELECT count(*) FROM pgbench_branches), (SELECT sum(bbalance) FROM pgbench_branches),
           (SELECT count(*) FROM pgbench_tellers),  (SELECT sum(tbalance) FROM pgbench_tellers),
           (SELECT count(*) FROM pgbench_history),  (SELECT md5(string_agg(aid::text||':'||abalance, ',' ORDER BY aid)) FROM pgbench_accounts)"
}

echo "==> starting a throwaway PostgreSQL 15 with pgbench data (scale $SCALE)"
[ "$(id -u)" -ne 0 ] || chown postgres:postgres "$T"
"${AS[@]}" "$PGBIN/initdb" -D "$T/pgdata" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
PGPORT=$(free_port)
start_pg "$T/pgdata" "$PGPORT"
pgbench -q -i -s "$SCALE" -h "$T" -p "$PGPORT" -U postgres postgres 2>&1 | tail -1
pgbench -n -T 3 -c 2 -h "$T" -p "$PGPORT" -U postgres postgres >/dev/null 2>&1
BEFORE=$(fingerprint "$PGPORT")

echo "==> starting stowage serve (embedded defaults: SQLite catalog + local repository under $T/stowage)"
export STOWAGE_DATA_DIR="$T/stowage" STOWAGE_SERVER="http://127.0.0.1:$(free_port)"
"$BIN" serve --listen "${STOWAGE_SERVER#http://}" > "$T/stowage.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do curl -sf "$STOWAGE_SERVER/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done
grep -m1 "admin access key" "$T/stowage.log" || true

set -x
"$BIN" instance add --name demo --host 127.0.0.1 --port "$PGPORT" --user postgres
"$BIN" instance check demo
"$BIN" backup demo
"$BIN" task list
"$BIN" set list
"$BIN" verify
SET=$("$BIN" set list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sets"][0]["id"])')
"$BIN" restore "$SET" --target restored   # relative: under <data-dir>/restores/<account>/
{ set +x; } 2>/dev/null
RESTORED="$STOWAGE_DATA_DIR/restores/acc-default/restored"

echo "==> starting PostgreSQL on the restored data directory"
RPORT=$(free_port)
start_pg "$RESTORED" "$RPORT"
AFTER=$(fingerprint "$RPORT")
echo "original: $BEFORE"
echo "restored: $AFTER"
if [ "$BEFORE" = "$AFTER" ]; then
  echo "==> OK: the restored database is identical"
else
  echo "==> MISMATCH" >&2; exit 1
fi

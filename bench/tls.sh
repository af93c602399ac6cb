#!/usr/bin/env bash
# Cost of TLS on the backup stream: the same database backed up by two
# fresh Stowage servers, one registering it with --sslmode disable, one with
# --sslmode require (rustls, ring), alternating, $ROUNDS rounds each.
#
#   bench/tls.sh                 # pgbench scale $SCALE (default 50), 3 rounds
#
# Needs root on Debian 12 (installs PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-50}
ROUNDS=${ROUNDS:-3}
bash scripts/deps.sh
cargo build --release -q -p stowage
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/stowage
OUT=$(mktemp -d -p /var/tmp stowage-tls.XXXXXX)
chmod 755 "$OUT"; chown postgres:postgres "$OUT"
PGBIN=$(pg_config --bindir)
AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
. bench/lib.sh
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done; sleep 2; rm -rf "$OUT"; }
trap cleanup EXIT

D="$OUT/pgdata"
"${AS[@]}" "$PGBIN/initdb" -U postgres -A trust -D "$D" > /dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$OUT/server.key" -out "$OUT/server.crt" 2> /dev/null
chown postgres:postgres "$OUT/server.key" "$OUT/server.crt"; chmod 600 "$OUT/server.key"
PGPORT=$(free_port)
"${AS[@]}" "$PGBIN/postgres" -D "$D" -c listen_addresses=127.0.0.1 -c port="$PGPORT" \
  -c unix_socket_directories="$OUT" -c wal_level=replica -c max_wal_senders=10 \
  -c shared_buffers=256MB -c max_wal_size=8GB -c ssl=on \
  -c ssl_cert_file="$OUT/server.crt" -c ssl_key_file="$OUT/server.key" >> "$OUT/pg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
echo "pgbench -i -s $SCALE"
pgbench -q -i -s "$SCALE" -h "$OUT" -p "$PGPORT" -U postgres postgres > /dev/null 2>&1
psql -X -q -At -h "$OUT" -p "$PGPORT" -U postgres -c "CHECKPOINT"

declare -A URL SPID
for mode in disable require; do
  port=$(free_port)
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/st-$mode" --no-scheduler > "$OUT/st-$mode.log" 2>&1 &
  SPID[$mode]=$!; PIDS+=(${SPID[$mode]}); URL[$mode]="http://127.0.0.1:$port"
  for _ in $(seq 300); do curl -sf "${URL[$mode]}/v1/health" > /dev/null && break; sleep 0.1; done
done
st() { local m=$1; shift; STOWAGE_SERVER=${URL[$m]} STOWAGE_DATA_DIR="$OUT/st-$m" "$BIN" "$@"; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
printf 'round\tsslmode\twall_s\tserver_cpu_s\n'
for r in $(seq "$ROUNDS"); do
  for mode in disable require; do
    # A fresh instance each round on a fresh name: no dedup against the last round.
    st "$mode" instance add --name "db$r" --port "$PGPORT" --user postgres --sslmode "$mode" > /dev/null
    st "$mode" set list --json > /dev/null
    c0=$(cpu "${SPID[$mode]}")
    st "$mode" backup "db$r" --wait --json > "$OUT/t.json" 2> /dev/null
    c1=$(cpu "${SPID[$mode]}")
    w=$(python3 -c "import json; t=json.load(open('$OUT/t.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
    printf '%s\t%s\t%s\t%s\n' "$r" "$mode" "$w" "$(python3 -c "print(round(($c1-$c0)/$(getconf CLK_TCK),2))")"
    # Reset the repository so every backup writes everything again.
    st "$mode" set list --json | python3 -c "import json,sys; [print(s['id']) for s in json.load(sys.stdin)['sets']]" | while read -r id; do st "$mode" set delete "$id" > /dev/null; done
    st "$mode" gc > /dev/null 2>&1
  done
done

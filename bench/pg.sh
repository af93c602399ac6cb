#!/usr/bin/env bash
# PostgreSQL backup benchmark: Stowage against pg_basebackup, pgBackRest,
# restic and the `tar | zstd -1 -T2` limit, on the same data, in the same run,
# warm cache. Prints a markdown table (and writes $OUT/results.md).
#
#   bench/pg.sh                 # both datasets
#   DATASET=pgbench bench/pg.sh # pgbench scale $SCALE only (default 100)
#   DATASET=semi bench/pg.sh    # ~$SEMI_ROWS rows of semi-random data (default 13M ≈ 1.5 GB)
#   CHUNKS="16 32 64 128"       # Stowage average chunk sizes (KiB) to compare; the first is the headline
#
# pgBackRest runs two repositories on the same stanza: repo1 (file-level
# incrementals, zst:1: its full is the headline peer) and repo2 with block
# incremental (repo2-bundle=y, repo2-block=y; beta=y on 2.45).
#
# Needs root on Debian 12 (installs pgbackrest, restic, zstd, time).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-both}
SCALE=${SCALE:-100}
SEMI_ROWS=${SEMI_ROWS:-13000000}
CHUNKS=${CHUNKS:-"32 16 64 128"}
bash scripts/deps.sh
need=()
for p in pgbackrest restic zstd; do command -v $p >/dev/null || need+=($p); done
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --release -q -p stowage
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/stowage

OUT=$(mktemp -d -p /var/tmp stowage-bench.XXXXXX)
chmod 755 "$OUT"; chown postgres:postgres "$OUT"
PGBIN=$(pg_config --bindir)
AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
. bench/lib.sh
PIDS=()
trap 'stop_all 2' EXIT
RES="$OUT/results.tsv"
printf 'dataset\ttool\twall_s\tcpu_s\tstored_bytes\tpeak_rss_kb\n' > "$RES"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; printf '  %-44s wall %6ss  cpu %6ss  stored %12s B  rss %s kB\n' "$2" "$3" "$4" "$5" "$6"; }

PGPORT=$(free_port)
D="$OUT/pgdata"
pgctl_start() {
  "${AS[@]}" "$PGBIN/postgres" -D "$D" -c listen_addresses=127.0.0.1 -c port="$PGPORT" \
    -c unix_socket_directories="$OUT" -c wal_level=replica -c max_wal_senders=10 -c max_replication_slots=10 \
    -c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=1h -c wal_keep_size=2GB \
    -c archive_mode=on -c "archive_command=pgbackrest --config=$OUT/pgbackrest.conf --stanza=bench archive-push %p" \
    >> "$OUT/pg.log" 2>&1 &
  PGPID=$!; PIDS+=($PGPID)
  for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && return; sleep 0.1; done
  tail "$OUT/pg.log"; exit 1
}
pgctl_stop() { kill -INT "$PGPID"; while kill -0 "$PGPID" 2>/dev/null; do sleep 0.1; done; }
psql_() { psql -X -q -At -h "$OUT" -p "$PGPORT" -U postgres -d postgres -c "$1"; }

setup_pgbackrest() {
  mkdir -p "$OUT/pgbr" "$OUT/pgbr2" "$OUT/pgbr-log" "$OUT/pgbr-lock" "$OUT/pgbr-spool"
  # Block incremental is a beta feature in 2.45 (the version Debian 12 ships).
  BETA=""; pgbackrest version | grep -q '2\.45' && BETA="beta=y"
  cat > "$OUT/pgbackrest.conf" <<CONF
[global]
repo1-path=$OUT/pgbr
compress-type=zst
compress-level=1
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off
repo2-path=$OUT/pgbr2
repo2-bundle=y
repo2-block=y
$BETA
lock-path=$OUT/pgbr-lock
spool-path=$OUT/pgbr-spool
log-path=$OUT/pgbr-log
[bench]
pg1-path=$D
pg1-port=$PGPORT
pg1-socket-path=$OUT
CONF
  chown -R postgres:postgres "$OUT/pgbr" "$OUT/pgbr2" "$OUT/pgbr-log" "$OUT/pgbr-lock" "$OUT/pgbr-spool" "$OUT/pgbackrest.conf"
  "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench stanza-create
}
pgbr() { "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench "$@"; }
last_pgbr_backup_dir() { ls -dt "$OUT"/pgbr/backup/bench/2* | head -1; }
last_pgbr2_backup_dir() { ls -dt "$OUT"/pgbr2/backup/bench/2* | head -1; }
# pgbr_incr LABEL: a file-level incr on repo1 and a block incr on repo2.
pgbr_incr() {
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=1 --type=incr backup
  record "$ds" "pgBackRest incr $1" "$WALL" "$CPU" "$(du_b "$(last_pgbr_backup_dir)")" "$RSS"
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=2 --type=incr backup
  record "$ds" "pgBackRest block incr $1" "$WALL" "$CPU" "$(du_b "$(last_pgbr2_backup_dir)")" "$RSS"
}

# One Stowage server per chunk size, all registered on the same database.
declare -A SURL SPID
start_stowage() {
  for k in $CHUNKS; do
    local port; port=$(free_port)
    "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/stowage-$k" --chunk-avg-kib "$k" --restore-root "$OUT/restores" > "$OUT/stowage-$k.log" 2>&1 &
    SPID[$k]=$!; PIDS+=(${SPID[$k]}); SURL[$k]="http://127.0.0.1:$port"
    for _ in $(seq 300); do curl -sf "${SURL[$k]}/v1/health" >/dev/null && break; sleep 0.1; done
    st "$k" instance add --name db --port "$PGPORT" --user postgres > /dev/null
  done
}
# The chunk-size flag must do what it says: the average chunk of each
# server's first backup, from its manifest.
observed_chunks() {
  for k in $CHUNKS; do
    local set; set=$(st "$k" set list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sets"][-1]["id"])')
    st "$k" set show "$set" --files --json | python3 -c "
import json, sys
m = json.load(sys.stdin)['manifest']['files']
size = sum(f['size'] for f in m if f['chunks']); chunks = sum(f['chunks'] for f in m)
print(f'  --chunk-avg-kib $k: {chunks} chunks, observed average {size / max(chunks, 1) / 1024:.1f} KiB')"
  done
}
st() { local k=$1; shift; STOWAGE_SERVER=${SURL[$k]} STOWAGE_DATA_DIR="$OUT/stowage-$k" "$BIN" "$@"; }
# stowage_backup DATASET LABEL CHUNK: one backup; records wall (task duration), server CPU, stored bytes, peak RSS.
stowage_backup() {
  local ds=$1 label=$2 k=$3 c0 c1 j
  c0=$(proc_cpu "${SPID[$k]}")
  st "$k" backup db --wait --json > "$OUT/task.json" 2>/dev/null
  c1=$(proc_cpu "${SPID[$k]}")
  j=$(python3 -c "import json; t=json.load(open('$OUT/task.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000, t['progress']['bytes_stored'])")
  read -r wall stored <<< "$j"
  rss=$(awk '/VmHWM/{print $2}' "/proc/${SPID[$k]}/status")
  record "$ds" "$label" "$wall" "$(python3 -c "print(round(($c1-$c0)/$(ticks),2))")" "$stored" "$rss"
}

run_dataset() {
  local ds=$1
  echo "== dataset $ds"
  rm -rf "$D" "$OUT"/pgbr* "$OUT"/stowage-* "$OUT"/restic "$OUT"/r-* "$OUT"/restores "$OUT"/pgbb*
  "${AS[@]}" "$PGBIN/initdb" -D "$D" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 > /dev/null
  pgctl_start
  setup_pgbackrest
  if [ "$ds" = pgbench ]; then
    pgbench -q -i -s "$SCALE" -h "$OUT" -p "$PGPORT" -U postgres postgres 2>&1 | tail -1
  else
    psql_ "CREATE TABLE semi (id bigint, a text, b text, c int)"
    psql_ "INSERT INTO semi SELECT g, md5(random()::text) || md5(random()::text), 'row ' || g, g % 100 FROM generate_series(1, $SEMI_ROWS) g"
  fi
  psql_ "VACUUM ANALYZE"; psql_ "CHECKPOINT"
  echo "  data directory: $(du -sh "$D" | cut -f1), database $(psql_ "SELECT pg_size_pretty(pg_database_size('postgres'))")"
  # Warm the cache and measure the limit.
  tar -cf - -C "$D" . > /dev/null
  timed bash -c "tar -cf - -C '$D' . | zstd -1 -T2 -q -c > '$OUT/limit.zst'"
  record "$ds" "limit: tar | zstd -1 -T2" "$WALL" "$CPU" "$(du_b "$OUT/limit.zst")" "$RSS"
  rm -f "$OUT/limit.zst"

  start_stowage
  for k in $CHUNKS; do stowage_backup "$ds" "stowage backup (avg chunk ${k} KiB)" "$k"; done
  observed_chunks

  timed pg_basebackup -h 127.0.0.1 -p "$PGPORT" -U postgres -D - -Ft -X fetch -c fast --compress=client-zstd:1
  cp "$OUT/cmd.out" /dev/null; record "$ds" "pg_basebackup -Ft -X fetch client-zstd:1" "$WALL" "$CPU" "$(stat -c %s "$OUT/cmd.out")" "$RSS"
  timed pg_basebackup -h 127.0.0.1 -p "$PGPORT" -U postgres -D - -Ft -X fetch -c fast --compress=server-zstd:level=1,workers=2 --no-manifest
  record "$ds" "pg_basebackup -Ft -X fetch server-zstd:1,workers=2" "$WALL" "$CPU" "$(stat -c %s "$OUT/cmd.out")" "$RSS"
  rm -f "$OUT/cmd.out"

  # gz:6 first, so that repo1's increments build on the zst:1 full.
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=1 --type=full --compress-type=gz --compress-level=6 backup
  record "$ds" "pgBackRest full gz:6 (default) process-max=2" "$WALL" "$CPU" "$(du_b "$(last_pgbr_backup_dir)")" "$RSS"
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=1 --type=full backup
  local full_zst; full_zst=$(last_pgbr_backup_dir)
  record "$ds" "pgBackRest full zst:1 process-max=2" "$WALL" "$CPU" "$(du_b "$full_zst")" "$RSS"
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=2 --type=full backup
  record "$ds" "pgBackRest full zst:1 bundle+block (repo2)" "$WALL" "$CPU" "$(du_b "$(last_pgbr2_backup_dir)")" "$RSS"

  pgctl_stop
  export RESTIC_PASSWORD=bench
  restic -q -r "$OUT/restic" init > /dev/null
  timed restic -q -r "$OUT/restic" backup "$D"
  record "$ds" "restic 0.14 backup (stopped data dir)" "$WALL" "$CPU" "$(du_b "$OUT/restic")" "$RSS"
  pgctl_start

  if [ "$ds" = pgbench ]; then
    echo "  -- after a sparse change (updates touching ~1% of pages)"
    pgbench -n -t $((SCALE * 8)) -c 2 -h "$OUT" -p "$PGPORT" -U postgres postgres > /dev/null 2>&1
    psql_ "CHECKPOINT"
    for k in $CHUNKS; do stowage_backup "$ds" "stowage backup after sparse updates (${k} KiB)" "$k"; done
    pgbr_incr "after sparse updates"
    echo "  -- after pgbench -T 20 (random updates)"
    pgbench -n -T 20 -c 2 -h "$OUT" -p "$PGPORT" -U postgres postgres > /dev/null 2>&1
    psql_ "CHECKPOINT"
    for k in $CHUNKS; do stowage_backup "$ds" "2nd stowage backup after -T 20 (${k} KiB)" "$k"; done
    pgbr_incr "after -T 20"
    echo "  -- after appending 1% new rows"
    psql_ "INSERT INTO pgbench_accounts SELECT aid + 100000 * $SCALE, bid, 0, filler FROM pgbench_accounts WHERE aid <= 1000 * $SCALE"
  else
    echo "  -- after appending 1% new rows"
    psql_ "INSERT INTO semi SELECT g, md5(random()::text) || md5(random()::text), 'row ' || g, g % 100 FROM generate_series($SEMI_ROWS + 1, $SEMI_ROWS + $SEMI_ROWS / 100) g"
  fi
  psql_ "CHECKPOINT"
  for k in $CHUNKS; do stowage_backup "$ds" "next stowage backup after +1% rows (${k} KiB)" "$k"; done
  pgbr_incr "after +1% rows"

  echo "  -- restore of the latest backup"
  local k0; k0=$(echo $CHUNKS | cut -d' ' -f1)
  local set; set=$(st "$k0" set list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sets"][0]["id"])')
  sync; c0=$(proc_cpu "${SPID[$k0]}")
  st "$k0" restore "$set" --target "$OUT/restores/r-stowage" --json > "$OUT/job.json" 2>/dev/null
  c1=$(proc_cpu "${SPID[$k0]}")
  record "$ds" "stowage restore" "$(python3 -c "import json; print(json.load(open('$OUT/job.json'))['duration_ms']/1000)")" "$(python3 -c "print(round(($c1-$c0)/$(ticks),2))")" "$(du_b "$OUT/restores/r-stowage")" "-"
  mkdir -p "$OUT/r-pgbr"; chown postgres:postgres "$OUT/r-pgbr"; chmod 700 "$OUT/r-pgbr"
  sync
  timed "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=1 --pg1-path="$OUT/r-pgbr" --type=immediate --target-action=promote restore
  record "$ds" "pgBackRest restore (process-max=2)" "$WALL" "$CPU" "$(du_b "$OUT/r-pgbr")" "$RSS"
  for k in $CHUNKS; do kill -INT "${SPID[$k]}"; done
  pgctl_stop
}

case "$DATASET" in
  both) run_dataset pgbench; run_dataset semi ;;
  pgbench|semi) run_dataset "$DATASET" ;;
esac

python3 - "$RES" <<'PY' | tee "$OUT/results.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
def ref(ds, name):
    for r in rows:
        if r['dataset'] == ds and r['tool'] == name: return r
print('| dataset | tool | wall s | CPU s | stored MB | peak RSS MB | wall / pgBackRest zst:1 | stored / pgBackRest zst:1 |')
print('|---|---|---:|---:|---:|---:|---:|---:|')
for r in rows:
    b = ref(r['dataset'], 'pgBackRest full zst:1 process-max=2')
    w = float(r['wall_s']); s = int(r['stored_bytes'])
    rw = f"{w/float(b['wall_s']):.2f}" if b else '-'
    rs = f"{s/int(b['stored_bytes']):.2f}" if b else '-'
    rss = f"{int(r['peak_rss_kb'])/1024:.0f}" if r['peak_rss_kb'] not in ('-', '') else '-'
    tool = r['tool'].replace('|', '\\|')
    print(f"| {r['dataset']} | {tool} | {w:.2f} | {r['cpu_s']} | {s/1e6:.1f} | {rss} | {rw} | {rs} |")
PY

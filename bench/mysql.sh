#!/usr/bin/env bash
# MySQL/MariaDB benchmark: Stowage's logical and physical backups and its
# restore against the field's tools on the same data, in the same run, on
# MariaDB 10.11 servers started here (the recipe of
# ../shared/spec/test-servers.md §2).
#
#   bench/mysql.sh                         # sysbench: TABLES=8 tables of ROWS=1000000 rows (~2 GB)
#   TABLES=4 ROWS=250000 bench/mysql.sh    # a quick run
#
# Peers (all with 2 threads where they take threads: the machine has 2 cores):
#   mydumper --threads 2 (without, and with its compression: gzip in
#     Debian's 0.10, so zstd -1 of its plain output stands for mydumper+zstd)
#   mariadb-dump --single-transaction | zstd -1 -T2
#   mariadb-backup --backup --stream=xbstream | zstd -1 -T2
#   restore: myloader --threads 2, and zstd -dc dump | mariadb
# Measures: wall times, stored bytes, the 2nd backup after 1 % of the rows
# changed (stored bytes), peak RSS of `stowage serve` (VmHWM).
# Prints a table and ratios; KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
TABLES=${TABLES:-8}
ROWS=${ROWS:-1000000}
THREADS=${THREADS:-2}
bash scripts/deps.sh
need=()
for t in sysbench mydumper zstd; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/stowage-ci-target}
cargo build --release -q -p stowage
BIN=$CARGO_TARGET_DIR/release/stowage

OUT=$(mktemp -d -p /var/tmp stowage-mysql-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 3
  [ "${KEEP:-0}" = 1 ] && echo "kept $OUT" || rm -rf "$OUT"
}
trap cleanup EXIT
. bench/lib.sh
now() { date +%s.%N; }
secs() { python3 -c "print(round($2 - $1, 2))"; }
bytes_of() { du -sb "$1" | cut -f1; }

# start_maria NAME: a MariaDB server in $OUT/NAME on a free port; sets PORT.
start_maria() {
  local d="$OUT/$1"; mkdir -p "$d/data" "$d/tmp"
  mariadb-install-db --no-defaults --datadir="$d/data" --user=root \
    --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve > "$d/install.log" 2>&1
  PORT=$(free_port)
  /usr/sbin/mariadbd --no-defaults --user=root --datadir="$d/data" --tmpdir="$d/tmp" \
    --bind-address=127.0.0.1 --port="$PORT" --socket="$d/mysqld.sock" --pid-file="$d/mysqld.pid" \
    --log-error="$d/error.log" --skip-name-resolve --server-id=1 --log-bin="$d/data/binlog" \
    --binlog-format=ROW --innodb-buffer-pool-size=1G --innodb-log-file-size=256M \
    --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 --performance-schema=OFF \
    --max-allowed-packet=256M &
  PIDS+=($!)
  for _ in $(seq 600); do
    mariadb-admin --no-defaults --protocol=TCP -h127.0.0.1 -uroot -P"$PORT" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  cat "$d/error.log"; exit 1
}
sql() { mariadb --no-defaults --protocol=TCP -h127.0.0.1 -uroot -P"$1" -N -B -e "$2"; }
checksums() { sql "$1" "CHECKSUM TABLE $(seq -s, -f "sbtest.sbtest%g" 1 "$TABLES")" | cut -f2 | tr '\n' ' '; }

echo "== sysbench: $TABLES tables × $ROWS rows, $THREADS threads"
start_maria src; SRC=$PORT
sql "$SRC" "CREATE DATABASE sbtest"
T0=$(now)
sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$SRC" --mysql-user=root \
  --mysql-db=sbtest --tables="$TABLES" --table-size="$ROWS" --threads="$THREADS" prepare > "$OUT/prepare.log"
DATA=$(sql "$SRC" "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA='sbtest'")
echo "prepared in $(secs "$T0" "$(now)") s: $((DATA / 1000000)) MB of tables and indexes"
SUMS=$(checksums "$SRC")

port=$(free_port)
"$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/stowage" --no-scheduler \
  --restore-root "$OUT" > "$OUT/stowage.log" 2>&1 &
SPID=$!; PIDS+=($SPID)
export STOWAGE_SERVER="http://127.0.0.1:$port" STOWAGE_DATA_DIR="$OUT/stowage"
for _ in $(seq 300); do curl -sf "$STOWAGE_SERVER/v1/health" >/dev/null && break; sleep 0.1; done
"$BIN" instance add --name src --engine mysql --port "$SRC" --user root > /dev/null

# A warm-up read, so every tool finds the same cache.
sql "$SRC" "SELECT COUNT(*) FROM sbtest.sbtest1" > /dev/null

backup() {
  "$BIN" backup src --json "$@" 2>/dev/null > "$OUT/task.json"
  python3 -c "import json; t=json.load(open('$OUT/task.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000, t['progress']['bytes_stored'], t['set_id'])"
}
read -r S_WALL S_STORED SET1 <<< "$(backup)"
echo "stowage logical backup: ${S_WALL}s, stored $S_STORED B"

T0=$(now); mydumper -h 127.0.0.1 -P "$SRC" -u root -B sbtest -t "$THREADS" -o "$OUT/mydumper" > /dev/null 2>&1; MD_WALL=$(secs "$T0" "$(now)")
MD_BYTES=$(bytes_of "$OUT/mydumper")
T0=$(now); tar -C "$OUT" -cf - mydumper | zstd -q -1 -T2 -o "$OUT/mydumper.tar.zst"; MDZ_EXTRA=$(secs "$T0" "$(now)")
MDZ_BYTES=$(stat -c %s "$OUT/mydumper.tar.zst"); rm -f "$OUT/mydumper.tar.zst"
echo "mydumper: ${MD_WALL}s, $MD_BYTES B (zstd -1 of it: $MDZ_BYTES B, +${MDZ_EXTRA}s)"
T0=$(now); mydumper -h 127.0.0.1 -P "$SRC" -u root -B sbtest -t "$THREADS" -c -o "$OUT/mydumper-c" > /dev/null 2>&1; MDC_WALL=$(secs "$T0" "$(now)")
MDC_BYTES=$(bytes_of "$OUT/mydumper-c"); rm -rf "$OUT/mydumper-c"
echo "mydumper -c: ${MDC_WALL}s, $MDC_BYTES B"

T0=$(now); mariadb-dump --no-defaults --protocol=TCP -h127.0.0.1 -uroot -P"$SRC" --single-transaction \
  --databases sbtest | zstd -q -1 -T2 > "$OUT/dump.sql.zst"; MDUMP_WALL=$(secs "$T0" "$(now)")
MDUMP_BYTES=$(stat -c %s "$OUT/dump.sql.zst")
echo "mariadb-dump | zstd -1: ${MDUMP_WALL}s, $MDUMP_BYTES B"

T0=$(now); mariadb-backup --no-defaults --backup --stream=xbstream --host=127.0.0.1 --port="$SRC" --user=root \
  --datadir="$OUT/src/data" --target-dir="$OUT/mb-target" 2> "$OUT/mariadb-backup.log" | zstd -q -1 -T2 > "$OUT/mb.xb.zst"
MB_WALL=$(secs "$T0" "$(now)"); MB_BYTES=$(stat -c %s "$OUT/mb.xb.zst"); rm -f "$OUT/mb.xb.zst"
echo "mariadb-backup | zstd -1: ${MB_WALL}s, $MB_BYTES B"
read -r P_WALL P_STORED SETP <<< "$(backup --method physical)"
echo "stowage physical backup: ${P_WALL}s, stored $P_STORED B (deduplicated against the logical set: none shared)"

# 1 % of the rows changed, then a second logical backup.
# It builds on the first logical set: that dump by reference, the binary
# log since stored.
for i in $(seq 1 "$TABLES"); do sql "$SRC" "UPDATE sbtest.sbtest$i SET k = k + 1 WHERE id % 100 = 0"; done
SUMS2=$(checksums "$SRC")
read -r S2_WALL S2_STORED SET2 <<< "$(backup)"
"$BIN" set show "$SET2" --json > "$OUT/set2.json"
python3 -c "import json; m=json.load(open('$OUT/set2.json'))['meta']; assert m['dump'].get('reused_from_set') == $SET1, m['dump']"
echo "2nd stowage logical backup (1 % of rows changed): ${S2_WALL}s, stored $S2_STORED B (built on set $SET1)"

# Restores into empty servers.
start_maria dst; DST=$PORT
"$BIN" instance add --name dst --engine mysql --port "$DST" --user root > /dev/null
"$BIN" restore "$SET1" --into dst --json 2>/dev/null > "$OUT/restore.json"
R_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
[ "$(checksums "$DST")" = "$SUMS" ] || { echo "stowage's restore differs from the source"; exit 1; }
echo "stowage restore: ${R_WALL}s (checksums equal the source's)"
kill -TERM "${PIDS[-1]}"
RSS=$(awk '/VmHWM/{print $2}' "/proc/$SPID/status")
# The same restore with the secondary indexes built as the rows arrive
# (STOWAGE_MYSQL_DEFER_INDEXES=0), for the comparison.
kill -TERM "$SPID"; while kill -0 "$SPID" 2>/dev/null; do sleep 0.2; done
STOWAGE_MYSQL_DEFER_INDEXES=0 "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/stowage" --no-scheduler \
  --restore-root "$OUT" >> "$OUT/stowage.log" 2>&1 &
SPID=$!; PIDS+=($SPID)
for _ in $(seq 300); do curl -sf "$STOWAGE_SERVER/v1/health" >/dev/null && break; sleep 0.1; done
start_maria dst2; DST2=$PORT
"$BIN" instance add --name dst2 --engine mysql --port "$DST2" --user root > /dev/null
"$BIN" restore "$SET1" --into dst2 --json 2>/dev/null > "$OUT/restore2.json"
RN_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore2.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
[ "$(checksums "$DST2")" = "$SUMS" ] || { echo "stowage's restore (indexes with the rows) differs from the source"; exit 1; }
echo "stowage restore, indexes built with the rows: ${RN_WALL}s"
kill -TERM "${PIDS[-1]}"
# The second set: the first's dump, then the binary log replayed.
start_maria dst3; DST3=$PORT
"$BIN" instance add --name dst3 --engine mysql --port "$DST3" --user root > /dev/null
"$BIN" restore "$SET2" --into dst3 --json 2>/dev/null > "$OUT/restore3.json"
R2_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore3.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
[ "$(checksums "$DST3")" = "$SUMS2" ] || { echo "stowage's restore of the 2nd set differs from the source"; exit 1; }
echo "stowage restore of the 2nd set (dump + binary log): ${R2_WALL}s (checksums equal the source's)"
kill -TERM "${PIDS[-1]}"
start_maria myl; MYL=$PORT
T0=$(now); myloader -h 127.0.0.1 -P "$MYL" -u root -t "$THREADS" -d "$OUT/mydumper" > /dev/null 2>&1; ML_WALL=$(secs "$T0" "$(now)")
[ "$(checksums "$MYL")" = "$SUMS" ] || echo "note: myloader's result differs from the source"
echo "myloader: ${ML_WALL}s"
kill -TERM "${PIDS[-1]}"
start_maria plain; PLAIN=$PORT
T0=$(now); zstd -dc "$OUT/dump.sql.zst" | mariadb --no-defaults --protocol=TCP -h127.0.0.1 -uroot -P"$PLAIN"; MR_WALL=$(secs "$T0" "$(now)")
echo "zstd -dc | mariadb: ${MR_WALL}s"

python3 - <<PY
s, md, mdc, mdz, mdump, mb, p = $S_WALL, $MD_WALL, $MDC_WALL, $MDZ_EXTRA, $MDUMP_WALL, $MB_WALL, $P_WALL
ss, mdb, mdcb, mdzb, mdumpb, mbb, ps, s2 = $S_STORED, $MD_BYTES, $MDC_BYTES, $MDZ_BYTES, $MDUMP_BYTES, $MB_BYTES, $P_STORED, $S2_STORED
r, rn, ml, mr, rss, data, r2, s2w = $R_WALL, $RN_WALL, $ML_WALL, $MR_WALL, $RSS, $DATA, $R2_WALL, $S2_WALL
mb_ = lambda b: f"{b / 1e6:,.0f} MB"
print()
print(f"data: $TABLES tables × $ROWS rows, {mb_(data)} of tables and indexes")
print("| measure | Stowage | peer | ratio | target |")
print("|---|---|---|---|---|")
print(f"| logical backup wall | {s:.1f} s | mydumper -t 2 {md:.1f} s | {s / md:.2f}× | ≤ 0.7× |")
print(f"| | | mydumper -t 2 -c (gzip) {mdc:.1f} s | {s / mdc:.2f}× | |")
print(f"| | | mydumper -t 2, then zstd -1 -T2 of its output {md + mdz:.1f} s | {s / (md + mdz):.2f}× | |")
print(f"| | | mariadb-dump \\| zstd -1 {mdump:.1f} s | {s / mdump:.2f}× | |")
print(f"| stored bytes (logical) | {mb_(ss)} | mydumper + zstd -1 {mb_(mdzb)} (plain {mb_(mdb)}, -c {mb_(mdcb)}) | {ss / mdzb:.2f}× | ≤ 1.0× |")
print(f"| | | mariadb-dump \\| zstd -1 {mb_(mdumpb)} | {ss / mdumpb:.2f}× | |")
print(f"| physical backup wall | {p:.1f} s | mariadb-backup \\| zstd -1 {mb:.1f} s | {p / mb:.2f}× | |")
print(f"| stored bytes (physical) | {mb_(ps)} | {mb_(mbb)} | {ps / mbb:.2f}× | |")
print(f"| 2nd logical backup, 1 % of rows changed | {mb_(s2)} in {s2w:.1f} s | first {mb_(ss)} | {100 * s2 / ss:.2f} % | ≤ 5 % |")
print(f"| restore wall | {r:.1f} s | myloader -t 2 {ml:.1f} s | {r / ml:.2f}× | ≤ 0.8× |")
print(f"| | | zstd -dc \\| mariadb {mr:.1f} s | {r / mr:.2f}× | |")
print(f"| restore, indexes with the rows | {rn:.1f} s | indexes after the rows {r:.1f} s | {rn / r:.2f}× | |")
print(f"| restore of the 2nd set (dump + binary log) | {r2:.1f} s | first set {r:.1f} s | {r2 / r:.2f}× | |")
print(f"| peak RSS of stowage serve | {rss / 1024:.0f} MB | | | ≤ 300 MB |")
PY

#!/usr/bin/env bash
# MongoDB benchmark: Stowage's replica-set backup and restore against the
# limits of the same official Rust driver on the same data, in the same run,
# on the Rust SecantusDB (the MongoDB-compatible test server; no mongod or
# mongodump is installable here, see ../shared/spec/test-servers.md §3).
#
#   bench/mongo.sh                  # N=1000000 documents of ~1 KB in COLLS=4 collections
#   N=200000 COLLS=1 bench/mongo.sh # one big collection
#
# Peers (crates/engines/examples/mongo_bench.rs, same driver, 2 threads =
# the dump's parallelism on 2 cores):
#   backup  vs `read`: every document read once as raw BSON into nothing
#   restore vs `load`: parallel insertMany of the same documents into an empty server
#   stored  vs `zstd -1 -T2` of the raw BSON
#   2nd backup after 1 % of the documents changed: stored bytes vs the first's
#   peak RSS of `stowage serve` (VmHWM)
# Prints a table and ratios; KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
COLLS=${COLLS:-4}
THREADS=${THREADS:-2}
# SecantusDB ignores $natural order and answers every oplog query with a
# full scan (~40,000 entries/s), so each backup pays ~3 scans of the whole
# oplog there (mongod: O(1) ends, O(slice) copy). A short oplog keeps
# that artefact of the test server small; the benchmark writes nothing
# during a backup, so the window is never overrun. 30,000 entries also
# hold the 10,000 updates of the 1 % change, so the second backup can build
# on the first.
OPLOG=${OPLOG:-30000}
CHUNK=${CHUNK:-32}  # Stowage's average chunk size (KiB) for the run's new repository
bash scripts/deps.sh
command -v zstd >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd >/dev/null; }
SRS=$(bash scripts/secantus-rs.sh)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/stowage-ci-target}
cargo build --release -q -p stowage
cargo build --release -q -p stowage-engines --example mongo_bench
BIN=$CARGO_TARGET_DIR/release/stowage
MB=$CARGO_TARGET_DIR/release/examples/mongo_bench

OUT=$(mktemp -d -p /var/tmp stowage-mongo-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  [ "${KEEP:-0}" = 1 ] && echo "kept $OUT" || rm -rf "$OUT"
}
trap cleanup EXIT
. bench/lib.sh

# start_mongo NAME: a Rust SecantusDB on a free port; sets PORT.
start_mongo() {
  local d="$OUT/$1"; mkdir -p "$d"; : > "$d/secantusd.toml"
  (cd "$d" && exec "$SRS" --host 127.0.0.1 --port 0 --storage-path "$d/db" --config "$d/secantusd.toml" \
     --cache-size 2G --log-file-max 64MB --log-level WARNING \
     --oplog-max-entries "$OPLOG" --oplog-retention-seconds 86400 > "$d/out" 2> "$d/err") &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q "listening on" "$d/out" 2>/dev/null && break; sleep 0.1; done
  PORT=$(grep -o '127.0.0.1:[0-9]*' "$d/out" | head -1 | cut -d: -f2)
  [ -n "$PORT" ] || { cat "$d/err"; exit 1; }
}
uri() { echo "mongodb://127.0.0.1:$1/?replicaSet=secantus"; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }

echo "== $N documents of ~1 KB in $COLLS collection(s), $THREADS threads, chunks of ~$CHUNK KiB"
start_mongo src; SRC=$PORT
LOAD_SRC=$("$MB" load "$(uri $SRC)" "$N" "$COLLS" "$THREADS"); echo "source loaded: $LOAD_SRC"

port=$(free_port)
"$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/stowage" --no-scheduler --chunk-avg-kib "$CHUNK" > "$OUT/stowage.log" 2>&1 &
SPID=$!; PIDS+=($SPID)
export STOWAGE_SERVER="http://127.0.0.1:$port" STOWAGE_DATA_DIR="$OUT/stowage"
for _ in $(seq 300); do curl -sf "$STOWAGE_SERVER/v1/health" >/dev/null && break; sleep 0.1; done
"$BIN" instance add --name src --engine mongodb --uri "$(uri $SRC)" > /dev/null

# The limit first (its reads also warm the server's cache for the backup).
READ=$("$MB" read "$(uri $SRC)" "$THREADS"); echo "driver read: $READ"
READ=$("$MB" read "$(uri $SRC)" "$THREADS"); echo "driver read (warm): $READ"
backup() {
  "$BIN" backup src --json "$@" 2>/dev/null > "$OUT/task.json"
  python3 -c "import json; t=json.load(open('$OUT/task.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000, t['progress']['bytes_stored'], t['progress']['bytes_done'], t['set_id'])"
}
read -r B1_WALL B1_STORED B1_BYTES SET1 <<< "$(backup)"
echo "stowage backup: ${B1_WALL}s, read $B1_BYTES B, stored $B1_STORED B"

"$MB" read "$(uri $SRC)" "$THREADS" "$OUT/raw.bson" > /dev/null
RAW=$(stat -c %s "$OUT/raw.bson")
ZT0=$(date +%s.%N); zstd -q -1 -T2 -f "$OUT/raw.bson" -o "$OUT/raw.bson.zst"; ZT1=$(date +%s.%N)
ZST=$(stat -c %s "$OUT/raw.bson.zst"); rm -f "$OUT/raw.bson" "$OUT/raw.bson.zst"
echo "zstd -1 -T2 of the raw BSON: $(python3 -c "print(round($ZT1 - $ZT0, 2))")s, $ZST B of $RAW B"

TOUCH=$("$MB" touch "$(uri $SRC)" 100); echo "changed: $TOUCH"
# The second backup builds on the first (its dump by reference, the oplog
# since); a third, --full, dumps again after the same changes: what chunk
# deduplication alone saves.
read -r B2_WALL B2_STORED B2_BYTES SET2 <<< "$(backup)"
echo "2nd stowage backup (on the 1st): ${B2_WALL}s, stored $B2_STORED B"
read -r B3_WALL B3_STORED B3_BYTES SET3 <<< "$(backup --full)"
echo "3rd stowage backup (--full): ${B3_WALL}s, stored $B3_STORED B"

# Restore of the first set into an empty server, then the peer into another.
start_mongo dst; DST=$PORT
"$BIN" instance add --name dst --engine mongodb --uri "$(uri $DST)" > /dev/null
"$BIN" restore "$SET1" --into dst --json 2>/dev/null > "$OUT/restore.json"
R_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
echo "stowage restore: ${R_WALL}s $(python3 -c "import json; print(json.load(open('$OUT/restore.json'))['result'])")"
# The second set restores on its own (dump + the oplog since): same data.
start_mongo dst2; DST2=$PORT
"$BIN" instance add --name dst2 --engine mongodb --uri "$(uri $DST2)" > /dev/null
"$BIN" restore "$SET2" --into dst2 --json 2>/dev/null > "$OUT/restore2.json"
R2_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore2.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
echo "stowage restore of the 2nd set: ${R2_WALL}s $(python3 -c "import json; print(json.load(open('$OUT/restore2.json'))['result'])")"
SUMS=$("$MB" sum "$(uri $SRC)"); SUMS2=$("$MB" sum "$(uri $DST2)")
[ "$SUMS" = "$SUMS2" ] || { echo "the 2nd set's restore differs from the source: $SUMS vs $SUMS2"; exit 1; }
echo "2nd set's restore equals the source: $SUMS"
kill -TERM "${PIDS[-1]}" 2>/dev/null || true
RSS=$(awk '/VmHWM/{print $2}' "/proc/$SPID/status")
kill -TERM "${PIDS[0]}" 2>/dev/null || true  # the source is no longer needed
start_mongo peer; PEER=$PORT
LOAD=$("$MB" load "$(uri $PEER)" "$N" "$COLLS" "$THREADS"); echo "peer insertMany: $LOAD"

python3 - "$READ" "$LOAD" <<PY
import sys
read, load = sys.argv[1], sys.argv[2]
f = lambda s, k: float(s.split(k + "=")[1].split()[0])
rs, rb, ls = f(read, "secs"), f(read, "bytes"), f(load, "secs")
b1, b1s, b2s, b3s, r, r2 = $B1_WALL, $B1_STORED, $B2_STORED, $B3_STORED, $R_WALL, $R2_WALL
raw, zst, rss = $RAW, $ZST, $RSS
mb = lambda b: f"{b / 1e6:,.1f} MB"
print()
print("| measure | Stowage | peer | ratio | target |")
print("|---|---|---|---|---|")
print(f"| backup wall (throughput) | {b1:.1f} s ({rb / b1 / 1e6:.1f} MB/s) | driver read {rs:.1f} s ({rb / rs / 1e6:.1f} MB/s) | {rs / b1:.2f}× of the read throughput | ≥ 0.9× |")
print(f"| restore wall | {r:.1f} s | parallel insertMany {ls:.1f} s | {ls / r:.2f}× of its throughput | ≥ 0.9× |")
print(f"| stored bytes | {mb(b1s)} | zstd -1 of raw BSON {mb(zst)} (raw {mb(raw)}) | {b1s / zst:.3f}× | ≤ 1.0× |")
print(f"| 2nd backup after 1 % changed (on the 1st) | {mb(b2s)} | first {mb(b1s)} | {100 * b2s / b1s:.2f} % | ≤ 5 % |")
print(f"| same changes, --full (chunk dedup only) | {mb(b3s)} | first {mb(b1s)} | {100 * b3s / b1s:.2f} % | |")
print(f"| restore of the 2nd set (dump + oplog since) | {r2:.1f} s | restore of the 1st {r:.1f} s | {r / r2:.2f}× | |")
print(f"| peak RSS of stowage serve | {rss / 1024:.0f} MB | | | ≤ 300 MB |")
PY

#!/usr/bin/env bash
# MongoDB sharded-cluster benchmark: one Stowage backup of SHARDS shards
# (plus a config server) against the limits of the same official driver on
# the same data, in the same run, on the Rust SecantusDB (no mongod, mongos
# or mongodump is installable here: ../shared/spec/test-servers.md §3).
#
#   bench/mongo-sharded.sh                    # 3 shards × N=300000 documents of ~1 KB
#   SHARDS=2 N=100000 bench/mongo-sharded.sh
#
# Peers (crates/engines/examples/mongo_bench.rs, THREADS=2 per shard, as
# the backup's parts):
#   backup  vs `read` of every shard AT ONCE (the wall time of the slowest:
#           the cluster's driver-scan limit with the parts' concurrency) and
#           vs the slowest shard's `read` ALONE (the issue's limit: reachable
#           only where every shard has its own cores, as real shards do);
#           also vs Stowage backing up each shard on its own, one after
#           another (what the parallel parts save).
#   restore vs parallel insertMany of the same documents into empty shards,
#           all at once (the slowest's wall time).
#   peak RSS of `stowage serve` (VmHWM).
# Every restored shard is checked against its source (per-collection hash
# of the raw BSON). KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-3}
N=${N:-300000}
COLLS=${COLLS:-2}
THREADS=${THREADS:-2}
OPLOG=${OPLOG:-30000}  # see bench/mongo.sh: SecantusDB scans its oplog whole
bash scripts/deps.sh
SRS=$(bash scripts/secantus-rs.sh)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/stowage-ci-target}
cargo build --release -q -p stowage
cargo build --release -q -p stowage-engines --example mongo_bench
BIN=$CARGO_TARGET_DIR/release/stowage
MB=$CARGO_TARGET_DIR/release/examples/mongo_bench

OUT=$(mktemp -d -p /var/tmp stowage-mongo-sharded-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  [ "${KEEP:-0}" = 1 ] && echo "kept $OUT" || rm -rf "$OUT"
}
trap cleanup EXIT
. bench/lib.sh

# start_mongo NAME: a Rust SecantusDB on a free port; sets PORT and MPID.
start_mongo() {
  local d="$OUT/$1"; mkdir -p "$d"; : > "$d/secantusd.toml"
  (cd "$d" && exec "$SRS" --host 127.0.0.1 --port 0 --storage-path "$d/db" --config "$d/secantusd.toml" \
     --cache-size 1G --log-file-max 64MB --log-level WARNING \
     --oplog-max-entries "$OPLOG" --oplog-retention-seconds 86400 > "$d/out" 2> "$d/err") &
  MPID=$!; PIDS+=($MPID)
  for _ in $(seq 600); do grep -q "listening on" "$d/out" 2>/dev/null && break; sleep 0.1; done
  PORT=$(grep -o '127.0.0.1:[0-9]*' "$d/out" | head -1 | cut -d: -f2)
  [ -n "$PORT" ] || { cat "$d/err"; exit 1; }
}
uri() { echo "mongodb://127.0.0.1:$1/?replicaSet=secantus"; }
secs() { python3 -c "import sys; print(sys.argv[1].split('secs=')[1].split()[0])" "$1"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$1" "$(now)"; }

echo "== $SHARDS shards × $N documents of ~1 KB in $COLLS collection(s), $THREADS threads per shard"
SRC=(); SRC_PIDS=()
for k in $(seq 0 $((SHARDS - 1))); do
  start_mongo "src$k"; SRC+=("$PORT"); SRC_PIDS+=("$MPID")
  # Shard k's documents differ from the others' (an offset in N).
  echo "shard $k loaded: $("$MB" load "$(uri "$PORT")" "$N" "$COLLS" "$THREADS" $((k * N)))"
done
start_mongo cfg; CFG=$PORT

port=$(free_port)
"$BIN" serve --listen "127.0.0.1:$port" --data-dir "$OUT/stowage" --no-scheduler > "$OUT/stowage.log" 2>&1 &
SPID=$!; PIDS+=($SPID)
export STOWAGE_SERVER="http://127.0.0.1:$port" STOWAGE_DATA_DIR="$OUT/stowage"
for _ in $(seq 300); do curl -sf "$STOWAGE_SERVER/v1/health" >/dev/null && break; sleep 0.1; done
args=()
for p in "${SRC[@]}"; do args+=(--shard "$(uri "$p")"); done
"$BIN" instance add --name cluster --engine mongodb "${args[@]}" --config "$(uri "$CFG")" > /dev/null
# A second server with its own repository backs up each shard alone (in the
# first one the shards' chunks would already be stored: nothing to compress).
port2=$(free_port)
"$BIN" serve --listen "127.0.0.1:$port2" --data-dir "$OUT/stowage2" --no-scheduler > "$OUT/stowage2.log" 2>&1 &
PIDS+=($!)
S2="http://127.0.0.1:$port2"
for _ in $(seq 300); do curl -sf "$S2/v1/health" >/dev/null && break; sleep 0.1; done
for k in "${!SRC[@]}"; do
  STOWAGE_SERVER=$S2 STOWAGE_DATA_DIR="$OUT/stowage2" \
    "$BIN" instance add --name "shard$k" --engine mongodb --uri "$(uri "${SRC[$k]}")" > /dev/null
done

# The limits: each shard read alone (a warm-up read first), then all at once.
ALONE=0
for p in "${SRC[@]}"; do
  "$MB" read "$(uri "$p")" "$THREADS" > /dev/null
  r=$("$MB" read "$(uri "$p")" "$THREADS"); echo "driver read alone, shard on port $p: $r"
  ALONE=$(python3 -c "print(max($ALONE, $(secs "$r")))")
done
t0=$(now)
RUNS=()
for p in "${SRC[@]}"; do "$MB" read "$(uri "$p")" "$THREADS" > "$OUT/read-$p" & RUNS+=($!); done
for j in "${RUNS[@]}"; do wait "$j"; done
TOGETHER=$(since "$t0")
echo "driver read of every shard at once: ${TOGETHER}s ($(cat "$OUT"/read-* | tr '\n' ' '))"

backup() {
  "$BIN" backup "$1" --json --full 2>/dev/null > "$OUT/task.json"
  python3 -c "import json; t=json.load(open('$OUT/task.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000, t['progress']['bytes_done'], t['set_id'])"
}
read -r B_WALL B_BYTES SET <<< "$(backup cluster)"
echo "stowage backup of the cluster: ${B_WALL}s, read $B_BYTES B"
"$BIN" task show "$(python3 -c "import json; print(json.load(open('$OUT/task.json'))['id'])")" | sed -n '/parts:/,$p'
SEQ=0
for k in "${!SRC[@]}"; do
  read -r w _ _ <<< "$(STOWAGE_SERVER=$S2 STOWAGE_DATA_DIR="$OUT/stowage2" backup "shard$k")"
  echo "stowage backup of shard $k alone: ${w}s"
  SEQ=$(python3 -c "print($SEQ + $w)")
done

# Restore into an empty cluster of as many shards.
args=(); DST=()
for k in $(seq 0 $((SHARDS - 1))); do start_mongo "dst$k"; DST+=("$PORT"); args+=(--shard "$(uri "$PORT")"); done
start_mongo dstcfg
"$BIN" instance add --name target --engine mongodb "${args[@]}" --config "$(uri "$PORT")" > /dev/null
"$BIN" restore "$SET" --into target --json 2>/dev/null > "$OUT/restore.json"
R_WALL=$(python3 -c "import json; t=json.load(open('$OUT/restore.json')); assert t['state']=='finished', t; print(t['duration_ms']/1000)")
echo "stowage restore: ${R_WALL}s $(python3 -c "import json; print(json.load(open('$OUT/restore.json'))['result'])")"
for k in "${!SRC[@]}"; do
  a=$("$MB" sum "$(uri "${SRC[$k]}")"); b=$("$MB" sum "$(uri "${DST[$k]}")")
  [ "$a" = "$b" ] || { echo "restored shard $k differs from its source: $a vs $b"; exit 1; }
done
echo "every restored shard equals its source"
RSS=$(awk '/VmHWM/{print $2}' "/proc/$SPID/status")
for p in "${SRC_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done

# The restore's peer: parallel insertMany into empty servers, all at once.
PEER=()
for k in $(seq 0 $((SHARDS - 1))); do start_mongo "peer$k"; PEER+=("$PORT"); done
t0=$(now)
RUNS=()
for k in "${!PEER[@]}"; do
  "$MB" load "$(uri "${PEER[$k]}")" "$N" "$COLLS" "$THREADS" $((k * N)) > "$OUT/load-$k" & RUNS+=($!)
done
for j in "${RUNS[@]}"; do wait "$j"; done
LOAD=$(since "$t0")
echo "parallel insertMany into every shard at once: ${LOAD}s"

python3 - <<PY
b, alone, together, seq, r, load, rss, nbytes = $B_WALL, $ALONE, $TOGETHER, $SEQ, $R_WALL, $LOAD, $RSS, $B_BYTES
print()
print("| measure | Stowage | peer | ratio | target |")
print("|---|---|---|---|---|")
print(f"| backup wall, vs every shard read at once | {b:.1f} s ({nbytes / b / 1e6:.1f} MB/s) | driver read {together:.1f} s | {b / together:.2f}× | |")
print(f"| backup wall, vs the slowest shard read alone | {b:.1f} s | driver read {alone:.1f} s | {b / alone:.2f}× | ≤ 1.2× |")
print(f"| backup wall, vs each shard backed up alone in turn | {b:.1f} s | Stowage, sum {seq:.1f} s | {b / seq:.2f}× | |")
print(f"| restore wall, vs insertMany into every shard at once | {r:.1f} s | {load:.1f} s | {r / load:.2f}× | ≤ 1.2× |")
print(f"| peak RSS of stowage serve | {rss / 1024:.0f} MB | | | ≤ 300 MB |")
PY

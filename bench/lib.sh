# Helpers shared by the benchmark scripts (sourced, never run).
# Timing helpers write into "$OUT", which the script sets first.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
du_b() { du -sb "$1" | cut -f1; }
# Runs a command under /usr/bin/time; sets WALL CPU RSS (kB).
timed() {
  /usr/bin/time -f '%e %U %S %M' -o "$OUT/time" "$@" > "$OUT/cmd.out" 2> "$OUT/cmd.err" || { cat "$OUT/cmd.err"; return 1; }
  read -r WALL U S RSS < "$OUT/time"; CPU=$(python3 -c "print(round($U+$S,2))")
}
# CPU ticks (user + system) a running process has used; ticks() per second.
proc_cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
ticks() { getconf CLK_TCK; }
# Stops the processes in the caller's PIDS (SIGINT), waits $1 seconds,
# removes $OUT unless KEEP=1.
stop_all() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep "${1:-2}"
  [ "${KEEP:-0}" = 1 ] && echo "kept $OUT" || rm -rf "$OUT"
}

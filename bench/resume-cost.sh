#!/usr/bin/env bash
# What lossless reconnect costs fan-out: herald-bench's fan-out at its max rate against one node
# whose clients are stable JWT peers on a channel that keeps history, with resume off
# (`resume_window_secs = 0`: no watermark pings, no position tracking) and on (the default
# window). Only the watermark differs between the sides; the sides alternate within each round
# and medians are printed (server CPU per delivery, deliveries/s, watermark pings).
#
#   bench/resume-cost.sh [ROUNDS]      # default 5 rounds
#   SUBSCRIBERS=1000 bench/resume-cost.sh 3
#
# Writes bench/results/resume/<side>-<round>.json. Placement as in run.sh: the server on core
# 0, the generator on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
subscribers=${SUBSCRIBERS:-1000}
server_cpu=${SERVER_CPU:-0}
bench_cpu=${BENCH_CPU:-1}
out=${OUT:-bench/results/resume}
target=${CARGO_TARGET_DIR:-target}
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p herald -p herald-bench
herald=${HERALD:-$target/release/herald}
bench=$target/release/herald-bench
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# free_port, wait_port, stop
. bench/lib.sh

key_id=sk_bench_resume
key_secret=sk_secret_bench_resume_0123456789abcdef

config() { # side
  cat bench/herald.toml
  printf '\n[[apps.secret_keys]]\nid = "%s"\nsecret = "%s"\n' "$key_id" "$key_secret"
  printf '\n[history]\nmax_memory_bytes = 1073741824\n'
  [ "$1" = off ] && printf 'resume_window_secs = 0\n'
  printf '\n[[history.channels]]\npatterns = ["bench/**"]\nmax_messages = 1000\n'
}

run() { # side round
  local port hp
  config "$1" >"$work/$1.toml"
  port=$(free_port)
  taskset -c "$server_cpu" "$herald" serve --config "$work/$1.toml" --listen "127.0.0.1:$port" 2>"$work/$1.log" &
  hp=$!; pids+=("$hp")
  wait_port "$port"
  timeout 600 taskset -c "$bench_cpu" "$bench" suite --proto herald --addr "127.0.0.1:$port" \
    --pid "$hp" --label "resume-$1-$2" --only fanout --subscribers "$subscribers" --publishers 1 \
    --fanout-secs 5 --curve 0.5 --signing-key "$key_id:$key_secret" --out "$out/$1-$2.json" >/dev/null
  curl -s "http://127.0.0.1:$port/metrics" | awk '/^herald_watermark_pings_total/ {print $2}' >"$out/$1-$2.pings"
  stop "$hp"
}

for r in $(seq "$rounds"); do
  for side in off on; do
    echo "resume-cost.sh: round $r, resume $side" >&2
    run "$side" "$r"
  done
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
med = statistics.median
rows = {s: {"cpu": [], "rate": [], "p99": [], "pings": []} for s in ("off", "on")}
print("| Round | off: µs CPU/delivery | on: µs CPU/delivery | off: deliveries/s | on: deliveries/s |")
print("|---|---|---|---|---|")
for r in range(1, rounds + 1):
    cells = []
    for s in ("off", "on"):
        f = json.load(open(f"{out}/{s}-{r}.json"))["fanout_max"]
        rows[s]["cpu"].append(f["server_cpu_us_per_delivery"])
        rows[s]["rate"].append(f["deliveries_per_sec"])
        text = open(f"{out}/{s}-{r}.pings").read().strip()
        rows[s]["pings"].append(float(text or 0))
    print(f"| {r} | {rows['off']['cpu'][-1]:.3f} | {rows['on']['cpu'][-1]:.3f} | {rows['off']['rate'][-1]:,.0f} | {rows['on']['rate'][-1]:,.0f} |")
off, on = med(rows["off"]["cpu"]), med(rows["on"]["cpu"])
print(f"| **median** | **{off:.3f}** | **{on:.3f}** | **{med(rows['off']['rate']):,.0f}** | **{med(rows['on']['rate']):,.0f}** |")
print()
print(f"resume on / off, server CPU per delivery: {on / off:.3f} ({(on / off - 1) * 100:+.1f} %)")
print(f"watermark pings per run: off {med(rows['off']['pings']):,.0f}, on {med(rows['on']['pings']):,.0f}")
PY

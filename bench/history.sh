#!/usr/bin/env bash
# What channel history costs a publish: herald-bench's fan-out at its max rate (one channel,
# 10 subscribers, 4 publishers) against one node with history off, with the memory store and
# with the disk store, and (optionally) against another binary with history off, such as main's.
# The sides alternate within each round, so a machine that is busier for a minute weighs on all
# alike; medians are printed. Then the bytes each retained message costs: the server's RSS
# after the run over history-off's (memory), and the database file's size (disk), divided by the
# messages retained (the group keeps up to 100,000).
#
#   bench/history.sh [ROUNDS] [OTHER_HERALD]          # default 5 rounds
#   HERALD=path/to/herald bench/history.sh ...        # this side's binary, if not the one built
#   SIDES="redis-off redis" bench/history.sh 3        # the Redis engine (a redis-server per run,
#                                                     # on the server's core), history off and on
#
# Writes bench/results/history/<side>-<round>.json. Placement as in run.sh: the server on
# core 0, the generator on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
other=${2:-}
server_cpu=${SERVER_CPU:-0}
bench_cpu=${BENCH_CPU:-1}
out=${OUT:-bench/results/history}
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

# free_port, wait_port, stop, start_redis
. bench/lib.sh

config() { # side round [redis port]
  cat bench/herald.toml
  if [ -n "${3:-}" ]; then
    printf '\n[engine]\nkind = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' "$3"
  fi
  case "$1" in
    memory | disk | redis)
      printf '\n[history]\nmax_memory_bytes = 1073741824\n'
      [ "$1" = disk ] && printf 'store = "disk"\npath = "%s/history-%s"\n' "$work" "$2"
      printf '\n[[history.channels]]\npatterns = ["bench/**"]\nmax_messages = 100000\n'
      ;;
  esac
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

run() { # side round binary
  local port hp rport="" rp=""
  case "$1" in
    redis*)
      start_redis "$server_cpu" "$work/redis.log"
      pids+=("$rp")
      ;;
  esac
  config "$1" "$2" "$rport" >"$work/$1.toml"
  port=$(free_port)
  taskset -c "$server_cpu" "$3" serve --config "$work/$1.toml" --listen "127.0.0.1:$port" 2>"$work/$1.log" &
  hp=$!; pids+=("$hp")
  wait_port "$port"
  timeout 600 taskset -c "$bench_cpu" "$bench" suite --proto herald --addr "127.0.0.1:$port" \
    --pid "$hp" --label "$1-$2" --only fanout --subscribers 10 --publishers 4 --fanout-secs 5 \
    --curve 0.5 --out "$out/$1-$2.json" >/dev/null
  echo "$(rss_kb "$hp")" >"$out/$1-$2.rss"
  if [ "$1" = disk ]; then
    stat -c %s "$work/history-$2/history.redb" >"$out/$1-$2.file"
  fi
  if [ -n "$rp" ]; then
    # Redis's own memory stands in for the file: its used_memory after the run.
    redis-cli -p "$rport" info memory | awk -F: '/^used_memory:/ {print $2+0}' >"$out/$1-$2.file"
  fi
  stop "$hp"
  [ -n "$rp" ] && stop "$rp"
  rm -rf "$work/history-$2"
}

read -r -a sides <<<"${SIDES:-off memory disk}"
[ -n "$other" ] && sides=(other-off "${sides[@]}")
for r in $(seq "$rounds"); do
  for side in "${sides[@]}"; do
    echo "history.sh: round $r, $side" >&2
    case "$side" in
      other-off) run other-off "$r" "$other" ;;
      *) run "$side" "$r" "$herald" ;;
    esac
  done
done

python3 - "$out" "$rounds" "${sides[@]}" <<'PY'
import json, os, statistics, sys
out, rounds, sides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = statistics.median
rows = {s: {"pubs": [], "cpu": [], "rss": [], "file": [], "kept": []} for s in sides}
print("| Round | " + " | ".join(f"{s} publishes/s" for s in sides) + " |")
print("|---|" + "---|" * len(sides))
for r in range(1, rounds + 1):
    cells = []
    for s in sides:
        doc = json.load(open(f"{out}/{s}-{r}.json"))
        f = doc["fanout_max"]
        pubs = f["published"] / f["cpu"]["wall_secs"]
        row = rows[s]
        row["pubs"].append(pubs)
        row["cpu"].append(f["server_cpu_us_per_delivery"])
        row["rss"].append(int(open(f"{out}/{s}-{r}.rss").read()) * 1024)
        # Everything published in the round on bench/fanout (max run, curve run, probe).
        row["kept"].append(min(sum(doc[k]["published"] for k in ["fanout_max", "fanout_probe"]) + sum(c["published"] for c in doc["fanout_curve"]), 100_000))
        if os.path.exists(f"{out}/{s}-{r}.file"):
            row["file"].append(int(open(f"{out}/{s}-{r}.file").read()))
        cells.append(f"{pubs:,.0f}")
    print(f"| {r} | " + " | ".join(cells) + " |")
print("| **median** | " + " | ".join(f"**{med(rows[s]['pubs']):,.0f}**" for s in sides) + " |")
print()
for s in sides:
    x = rows[s]
    line = f"{s}: median {med(x['pubs']):,.0f} publishes/s, {med(x['cpu']):.2f} µs server CPU per delivery, RSS {med(x['rss'])/2**20:,.1f} MiB, retained {med(x['kept']):,.0f}"
    if x["file"] and s == "disk":
        line += f", file {med(x['file'])/2**20:,.1f} MiB = {med([f / k for f, k in zip(x['file'], x['kept'])]):,.0f} B per retained message"
    print(line)
if "off" in rows and "memory" in rows:
    off = med(rows["off"]["rss"])
    mem = [(m - off) / k for m, k in zip(rows["memory"]["rss"], rows["memory"]["kept"])]
    print(f"memory store: RSS over history off / retained = {med(mem):,.0f} B per retained message")
if "redis-off" in rows and "redis" in rows:
    base = med(rows["redis-off"]["file"])
    per = [(f - base) / k for f, k in zip(rows["redis"]["file"], rows["redis"]["kept"])]
    print(f"redis: used_memory over history off / retained = {med(per):,.0f} B per retained message")
if "other-off" in rows:
    a, b = med(rows["other-off"]["pubs"]), med(rows["off"]["pubs"])
    print(f"history off, this binary against the other: {100 * (b - a) / a:+.1f} %")
PY

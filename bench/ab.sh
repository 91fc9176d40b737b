#!/usr/bin/env bash
# A/B: the same herald-bench against two Herald release binaries, alternating, so a machine that
# is slower on the day (or busier for a minute) weighs on both sides alike. Each round runs the
# fan-out and direct scenarios on one node, and fan-out on three nodes through one Redis.
#
#   bench/ab.sh BEFORE_HERALD AFTER_HERALD [ROUNDS]     # default 5 rounds
#
# Writes bench/results/ab/<side>-<round>-<target>.json and prints a table of the fan-out max
# rate, the CPU per delivery and the direct rate per round, with medians. Placement as in
# run.sh: servers on core 0, the generator on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

before=${1:?before binary}
after=${2:?after binary}
rounds=${3:-5}
server_cpu=${SERVER_CPU:-0}
bench_cpu=${BENCH_CPU:-1}
out=${OUT:-bench/results/ab}
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p herald-bench
bench=target/release/herald-bench
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
suite() { timeout 600 taskset -c "$bench_cpu" "$bench" suite "$@"; }

one_node() { # binary label
  local port hp
  port=$(free_port)
  taskset -c "$server_cpu" "$1" serve --config bench/herald.toml --listen "127.0.0.1:$port" 2>"$work/h.log" &
  hp=$!; pids+=("$hp")
  wait_port "$port"
  suite --proto herald --addr "127.0.0.1:$port" --pid "$hp" --label "$2" --only fanout,direct \
    --subscribers 1000 --publishers 1 --fanout-secs 5 --curve 0.5 --out "$out/$2-node.json"
  stop "$hp"
}

three_nodes() { # binary label
  local rport rp np port addrs=() npids=()
  start_redis "$server_cpu" "$work/redis.log"
  pids+=("$rp"); npids+=("$rp")
  for i in 1 2 3; do
    port=$(free_port)
    { cat bench/herald.toml; printf '\n[engine]\nkind = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\nnode_id = "ab%s"\n' "$rport" "$i"; } >"$work/node$i.toml"
    taskset -c "$server_cpu" "$1" serve --config "$work/node$i.toml" --listen "127.0.0.1:$port" 2>"$work/node$i.log" &
    np=$!; pids+=("$np"); npids+=("$np")
    wait_port "$port"
    addrs+=("127.0.0.1:$port")
  done
  suite --proto herald --addr "$(IFS=,; echo "${addrs[*]}")" --pid "$(IFS=,; echo "${npids[*]}")" \
    --label "$2" --only fanout --subscribers 1000 --publishers 1 --fanout-secs 5 --curve 0.5 \
    --out "$out/$2-cluster.json"
  stop "${npids[@]}"
}

for r in $(seq "$rounds"); do
  for side in before after; do
    bin=$before; [ "$side" = after ] && bin=$after
    echo "ab.sh: round $r, $side" >&2
    one_node "$bin" "$side-$r"
    three_nodes "$bin" "$side-$r"
  done
done

python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(path):
    with open(path) as f:
        return json.load(f)
def fanout(doc):
    f = doc.get("fanout_max") or {}
    return f.get("deliveries_per_sec"), f.get("server_cpu_us_per_delivery")
def direct(doc):
    d = doc.get("direct") or {}
    return d.get("messages_per_sec")
rows = {}
print("| Round | side | fan-out max (1 node) | µs CPU/delivery | directs/s | fan-out max (3 nodes + Redis) | µs CPU/delivery |")
print("|---|---|---|---|---|---|---|")
for r in range(1, rounds + 1):
    for side in ["before", "after"]:
        node = load(f"{out}/{side}-{r}-node.json")
        cl = load(f"{out}/{side}-{r}-cluster.json")
        nf, nc = fanout(node); d = direct(node); cf, cc = fanout(cl)
        rows_side = rows.setdefault(side, {k: [] for k in ["nf", "nc", "d", "cf", "cc"]})
        for k, v in zip(["nf", "nc", "d", "cf", "cc"], [nf, nc, d, cf, cc]):
            if v is not None:
                rows_side[k].append(v)
        fmt = lambda v, s=1: "-" if v is None else f"{v / s:,.0f}" if s != 1 else f"{v:,.2f}"
        print(f"| {r} | {side} | {fmt(nf, 1e3)} k/s | {fmt(nc)} | {fmt(d, 1e3)} k/s | {fmt(cf, 1e3)} k/s | {fmt(cc)} |")
for side in ["before", "after"]:
    s = rows[side]
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    print(f"| **median** | {side} | {med(s['nf'])/1e3:,.0f} k/s | {med(s['nc']):.2f} | {med(s['d'])/1e3:,.0f} k/s | {med(s['cf'])/1e3:,.0f} k/s | {med(s['cc']):.2f} |")
PY

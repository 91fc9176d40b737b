#!/usr/bin/env bash
# Runs the whole benchmark: Herald, Sockudo (Pusher protocol) and the Socket.IO 4 reference
# server, one after the other on the same machine, then (unless --no-cluster) three Herald nodes
# with Redis. Writes JSON per target, results.md and fanout-latency.png into bench/results/ (or
# $OUT). Sockudo is built once by bench/sockudo/install.sh (a long release build); --no-sockudo
# or a failed install skips it.
#
#   bench/run.sh                  # full sizes (about 5 minutes)
#   bench/run.sh --smoke          # tiny sizes, a few seconds per target
#   bench/run.sh --no-cluster     # skip the Redis cluster
#   bench/run.sh --no-sockudo     # skip Sockudo
#   SOCKUDO_BIN=/path/sockudo bench/run.sh   # use that Sockudo binary, skip its install
#
# Placement: every server process on core 0 (SERVER_CPU), the load generator on core 1
# (BENCH_CPU), both with `taskset`. Everything listens on 127.0.0.1; every run is bounded by
# `timeout`. Extra arguments go to every `herald-bench suite` call.
set -euo pipefail
cd "$(dirname "$0")/.."

server_cpu=${SERVER_CPU:-0}
bench_cpu=${BENCH_CPU:-1}
out=${OUT:-bench/results}
run_timeout=${RUN_TIMEOUT:-900}
cluster=1
sockudo=1
args=()
for a in "$@"; do
  case "$a" in
    --no-cluster) cluster=0 ;;
    --no-sockudo) sockudo=0 ;;
    *) args+=("$a") ;;
  esac
done

# Each idle connection is one descriptor on each side.
ulimit -n "$(ulimit -Hn)"
echo "run.sh: open-files limit $(ulimit -n); server on CPU $server_cpu, generator on CPU $bench_cpu"

cargo build --release --quiet -p herald -p herald-bench
bash bench/socketio/install.sh
# SOCKUDO_BIN: an already built sockudo binary to use instead of bench/sockudo/install.sh's.
if [ "$sockudo" = 1 ] && [ -z "${SOCKUDO_BIN:-}" ] && ! bash bench/sockudo/install.sh; then
  echo "run.sh: Sockudo could not be installed; skipped" >&2
  sockudo=0
fi
herald=${CARGO_TARGET_DIR:-target}/release/herald
bench=${CARGO_TARGET_DIR:-target}/release/herald-bench
sockudo_bin=${SOCKUDO_BIN:-$PWD/bench/sockudo/.bin/bin/sockudo}
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
suite() { timeout "$run_timeout" taskset -c "$bench_cpu" "$bench" suite "$@" "${args[@]}"; }

# ---- The write floor: a bare writer on the servers' core, one write(2) per delivery ----
floor_args=(--sockets 1000 --deliveries-per-sec 100000,200000,400000 --secs 5)
for a in "${args[@]}"; do [ "$a" = --smoke ] && floor_args=(--sockets 20 --deliveries-per-sec 2000 --secs 0.5); done
timeout "$run_timeout" taskset -c "$bench_cpu" "$bench" write-floor "${floor_args[@]}" \
  --writer-cpu "$server_cpu" --out "$out/floor.json"

# ---- Herald, one node ----
port=$(free_port)
taskset -c "$server_cpu" "$herald" serve --config bench/herald.toml --listen "127.0.0.1:$port" \
  2>"$work/herald.log" &
hp=$!; pids+=("$hp")
wait_port "$port"
"$bench" probe --proto herald --addr "127.0.0.1:$port"
suite --proto herald --addr "127.0.0.1:$port" --pid "$hp" --label Herald --out "$out/herald.json"
stop "$hp"
files=("$out/herald.json")

# ---- Sockudo (Pusher protocol) ----
# Started from an empty directory with a clean environment: Sockudo reads config/config.toml
# from its working directory and many variables (HOST, PORT, ...) over its --config file. The
# port is written into the file, so a file that failed to parse (Sockudo then keeps its
# defaults, port 6001) shows as nothing listening, and the probe checks the app's credentials.
if [ "$sockudo" = 1 ]; then
  port=$(free_port)
  sed "s/^port = .*/port = $port/" bench/sockudo/config.toml >"$work/sockudo.toml"
  (cd "$work" && exec env -i PATH="$PATH" RUST_LOG=warn \
    taskset -c "$server_cpu" "$sockudo_bin" --config "$work/sockudo.toml") \
    >"$work/sockudo.log" 2>&1 &
  kp=$!; pids+=("$kp")
  wait_port "$port" || { cat "$work/sockudo.log" >&2; exit 1; }
  "$bench" probe --proto pusher --addr "127.0.0.1:$port"
  suite --proto pusher --addr "127.0.0.1:$port" --pid "$kp" --label Sockudo --out "$out/sockudo.json"
  stop "$kp"
  files+=("$out/sockudo.json")
fi

# ---- Socket.IO 4 ----
port=$(free_port)
(cd bench/socketio && exec taskset -c "$server_cpu" node server.js "$port") >"$work/sio.log" 2>&1 &
sp=$!; pids+=("$sp")
wait_port "$port"
"$bench" probe --proto socketio --addr "127.0.0.1:$port"
suite --proto socketio --addr "127.0.0.1:$port" --pid "$sp" --label Socket.IO --out "$out/socketio.json"
stop "$sp"

files+=("$out/socketio.json")

# ---- Herald, three nodes through Redis ----
if [ "$cluster" = 1 ] && command -v redis-server >/dev/null 2>&1; then
  start_redis "$server_cpu" "$work/redis.log"
  pids+=("$rp")
  addrs=(); npids=("$rp")
  for i in 1 2 3; do
    port=$(free_port)
    { cat bench/herald.toml; printf '\n[engine]\nkind = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\nnode_id = "bench%s"\n' "$rport" "$i"; } >"$work/node$i.toml"
    taskset -c "$server_cpu" "$herald" serve --config "$work/node$i.toml" --listen "127.0.0.1:$port" \
      2>"$work/node$i.log" &
    np=$!; pids+=("$np"); npids+=("$np")
    wait_port "$port"
    addrs+=("127.0.0.1:$port")
  done
  # Server CPU and RSS are the sum of the three nodes and Redis.
  suite --proto herald --addr "$(IFS=,; echo "${addrs[*]}")" --pid "$(IFS=,; echo "${npids[*]}")" \
    --label "Herald 3 nodes + Redis" --out "$out/herald-cluster.json"
  stop "${npids[@]}"
  files+=("$out/herald-cluster.json")
elif [ "$cluster" = 1 ]; then
  echo "run.sh: redis-server not found; cluster skipped" >&2
fi

"$bench" report --out-dir "$out" --floor "$out/floor.json" "${files[@]}"

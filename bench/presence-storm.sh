#!/usr/bin/env bash
# Presence in a big room on one node (herald-bench presence-storm): M members watch one channel
# while J churners join at a fixed rate and then leave at the same rate. Prints a summary and
# writes the JSON result.
#
#   bench/presence-storm.sh                                 # M=10,000, J=1,000 at 1,000/s
#   bench/presence-storm.sh --config extra.toml             # with extra server configuration
#   bench/presence-storm.sh --out FILE.json -- --members 2000 --joins 500
#   bench/presence-storm.sh -- --members 10000 --watchers 2000   # 8,000 members without presence
#   bench/presence-storm.sh --redis -- --members 2000     # the Redis engine, on a redis-server of its own
#
# With all M members watching, building the room costs M²/2 presence deliveries before the storm
# (at M=10,000 that did not finish within the 90 s setup bound on a shared 2-core machine);
# --watchers W keeps M members in the roster while only W receive presence.
#
# --config FILE is appended to bench/herald.toml (plus the benchmark's secret key), so it may add
# tables such as [presence] to compare configurations; it must not repeat a table the base file
# already has. Arguments after -- go to `herald-bench presence-storm`.
#
# Placement: Herald (and with --redis, redis-server) on core 0 (SERVER_CPU), the generator on
# core 1 (BENCH_CPU), with taskset. The CPU figures are Herald's alone.
# Loopback only; the run is bounded by `timeout` (RUN_TIMEOUT seconds) and the scenario's own
# deadlines.
set -euo pipefail
cd "$(dirname "$0")/.."

server_cpu=${SERVER_CPU:-0}
bench_cpu=${BENCH_CPU:-1}
run_timeout=${RUN_TIMEOUT:-300}
extra=""
out=""
redis=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) extra=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --redis) redis=1; shift ;;
    --) shift; args+=("$@"); break ;;
    *) echo "presence-storm.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
done
out=${out:-bench/results/presence-storm.json}

# The bench holds one socket per member and churner, and so does the server.
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet -p herald -p herald-bench
target_dir=${CARGO_TARGET_DIR:-target}
herald=$target_dir/release/herald
bench=$target_dir/release/herald-bench
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)

hp=""
rp=""
# The server drains thousands of departures on shutdown; give it 5 s, then stop it hard.
cleanup() {
  if [ -n "$rp" ]; then kill "$rp" 2>/dev/null || true; wait "$rp" 2>/dev/null || true; fi
  if [ -n "$hp" ]; then
    kill "$hp" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$hp" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$hp" 2>/dev/null || true
    wait "$hp" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# free_port, wait_port, stop, start_redis
. bench/lib.sh

if [ "$redis" = 1 ]; then
  start_redis "$server_cpu" "$work/redis.log"
fi

# The secret key right after the base file's [[apps]], so it belongs to app_bench; the extra
# configuration last. The key must match herald-bench's default --secret.
{
  cat bench/herald.toml
  printf '\n[[apps.secret_keys]]\nid = "sk_id_bench_storm"\nsecret = "sk_secret_bench_storm_loopback_only"\n'
  if [ "$redis" = 1 ]; then
    printf '\n[engine]\nkind = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' "$rport"
  fi
  if [ -n "$extra" ]; then printf '\n'; cat "$extra"; fi
} >"$work/herald.toml"

port=$(free_port)
taskset -c "$server_cpu" "$herald" serve --config "$work/herald.toml" --listen "127.0.0.1:$port" \
  2>"$work/herald.log" &
hp=$!
wait_port "$port"
echo "presence-storm.sh: open-files limit $(ulimit -n); herald pid $hp on CPU $server_cpu, generator on CPU $bench_cpu${extra:+; extra config $extra}"

status=0
timeout "$run_timeout" taskset -c "$bench_cpu" "$bench" presence-storm \
  --addr "127.0.0.1:$port" --pid "$hp" --out "$out" "${args[@]}" || status=$?
if [ "$status" != 0 ]; then
  echo "presence-storm.sh: herald-bench exited with $status; server log:" >&2
  tail -20 "$work/herald.log" >&2
fi
cp "$work/herald.log" "${out%.json}.herald.log"
echo "presence-storm.sh: result in $out (server log beside it)"
exit "$status"

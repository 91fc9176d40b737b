# Shell helpers the benchmark scripts share (sourced, not run). Loopback only.

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 10 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listening on $1" >&2; return 1
}

# Stops the given processes and waits for them.
stop() { kill "$@" 2>/dev/null || true; for p in "$@"; do wait "$p" 2>/dev/null || true; done; }

# Starts a throwaway redis-server (nothing saved to disk) on a free port, pinned to CPU $1 and
# logging to $2; sets `rport` and `rp` (its pid), which callers may declare local, and returns
# once it listens.
start_redis() {
  rport=$(free_port)
  taskset -c "$1" redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
    >"$2" 2>&1 &
  rp=$!
  wait_port "$rport"
}

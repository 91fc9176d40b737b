#!/usr/bin/env bash
# Installs the Socket.IO reference server's dependencies (socket.io, pinned in package-lock.json)
# into bench/socketio/node_modules (ignored). Idempotent: no network work when nothing changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v npm >/dev/null 2>&1 || { echo "bench/socketio/install.sh: npm is required" >&2; exit 1; }
stamp="$here/node_modules/.herald-lock.sha256"
want="$(sha256sum "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$here/node_modules/socket.io" ]]; then
    echo "bench/socketio/install.sh: socket.io already installed"
else
    (cd "$here" && npm ci --no-audit --no-fund)
    echo "$want" > "$stamp"
fi
node -e 'const v = require(process.argv[1] + "/node_modules/socket.io/package.json").version; if (!v.startsWith("4.")) process.exit(1); console.log("bench/socketio/install.sh: OK (socket.io " + v + ")")' "$here"

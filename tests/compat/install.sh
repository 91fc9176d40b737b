#!/usr/bin/env bash
# Installs the official Metered SDKs used by crates/server/tests/sdk_compat.rs:
#   - tests/compat/js/node_modules  (npm ci from package-lock.json)
#   - tests/compat/py/.venv         (python venv with requirements.txt)
# Idempotent: a second run with nothing changed does no network work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
js="$here/js"
py="$here/py"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' is required but not on PATH" >&2; exit 1; }
}

# ---- JS: @metered-ca/realtime + ws ----
need node
need npm
js_stamp="$js/node_modules/.herald-lock.sha256"
js_want="$(sha256sum "$js/package.json" "$js/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ -f "$js_stamp" && "$(cat "$js_stamp")" == "$js_want" && -d "$js/node_modules/@metered-ca/realtime" && -d "$js/node_modules/ws" ]]; then
    echo "install.sh: JS SDK already installed"
else
    echo "install.sh: npm ci in $js"
    (cd "$js" && npm ci --no-audit --no-fund)
    echo "$js_want" > "$js_stamp"
fi

# ---- Python: metered-realtime[webrtc] ----
python="${PYTHON:-python3}"
need "$python"
venv="$py/.venv"
py_stamp="$venv/.herald-requirements.sha256"
py_want="$(sha256sum "$py/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$py_stamp" && "$(cat "$py_stamp")" == "$py_want" && -x "$venv/bin/python" ]]; then
    echo "install.sh: Python SDK already installed"
else
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "install.sh: creating venv $venv"
        "$python" -m venv "$venv"
    fi
    echo "install.sh: pip install -r requirements.txt"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$py/requirements.txt"
    echo "$py_want" > "$py_stamp"
fi

# Sanity: both SDKs import.
(cd "$js" && node -e 'import("@metered-ca/realtime").then(m => { if (!m.SignallingClient || !m.MeteredPeer) process.exit(1); })')
"$venv/bin/python" -c 'import metered_realtime, aiortc; assert metered_realtime.__version__ == "1.0.2", metered_realtime.__version__'
echo "install.sh: OK (JS @metered-ca/realtime 1.2.0, Python metered-realtime 1.0.2)"

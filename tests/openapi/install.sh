#!/usr/bin/env bash
# Installs what crates/server/tests/openapi.rs runs: openapi-spec-validator and schemathesis,
# into the ignored venv tests/openapi/.venv. Idempotent: a second run with requirements.txt
# unchanged does no network work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { echo "install.sh: '$python' is required but not on PATH" >&2; exit 1; }
venv="$here/.venv"
stamp="$venv/.herald-requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/schemathesis" ]]; then
    echo "tests/openapi/install.sh: already installed"
else
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "tests/openapi/install.sh: creating venv $venv"
        "$python" -m venv "$venv"
    fi
    echo "tests/openapi/install.sh: pip install -r requirements.txt"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import openapi_spec_validator, schemathesis'
echo "tests/openapi/install.sh: OK ($("$venv/bin/schemathesis" --version))"

#!/usr/bin/env bash
# Installs what the browser tests (crates/cli/tests/browser.rs) need:
#   - Debian's Chromium at /usr/bin/chromium, plus fonts (text and emoji), when missing and we
#     are root (apt-get); never a browser downloaded by a test tool;
#   - tests/browser/node_modules: playwright-core, @metered-ca/realtime and ws, from
#     package-lock.json (npm ci).
# Idempotent: a second run with nothing changed does no network work.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "browser/install.sh: '$1' is required but not on PATH" >&2; exit 1; }
}

# ---- Chromium and fonts (Debian packages) ----
apt_missing=()
[[ -x /usr/bin/chromium ]] || apt_missing+=(chromium)
[[ -d /usr/share/fonts/truetype/dejavu ]] || apt_missing+=(fonts-dejavu-core)
[[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]] || apt_missing+=(fonts-noto-color-emoji)
if [[ ${#apt_missing[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "browser/install.sh: apt-get install ${apt_missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    elif [[ " ${apt_missing[*]} " == *" chromium "* ]]; then
        echo "browser/install.sh: /usr/bin/chromium is missing; install Debian's chromium package (as root: apt-get install chromium)" >&2
        exit 1
    else
        echo "browser/install.sh: optional fonts missing (${apt_missing[*]}); screenshots may show boxes for emoji" >&2
    fi
fi

# ---- npm packages ----
need node
need npm
stamp="$here/node_modules/.herald-lock.sha256"
want="$(sha256sum "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$here/node_modules/playwright-core" ]]; then
    echo "browser/install.sh: npm packages already installed"
else
    echo "browser/install.sh: npm ci in $here"
    (cd "$here" && npm ci --no-audit --no-fund)
    echo "$want" > "$stamp"
fi

# Sanity: the packages load, and the browser runs.
(cd "$here" && node -e '
  Promise.all([import("playwright-core"), import("@metered-ca/realtime"), import("ws")])
    .then(([pw, sdk]) => { if (!pw.chromium || !sdk.MeteredPeer) process.exit(1); })
    .catch((e) => { console.error(e); process.exit(1); })')
/usr/bin/chromium --version >/dev/null 2>&1 || { echo "browser/install.sh: /usr/bin/chromium does not run" >&2; exit 1; }
echo "browser/install.sh: OK ($(/usr/bin/chromium --version 2>/dev/null | head -1))"

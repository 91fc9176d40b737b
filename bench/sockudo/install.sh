#!/usr/bin/env bash
# Installs the Sockudo reference server (Rust, Pusher protocol), pinned, into bench/sockudo/.bin
# (ignored). Needs Debian's protobuf-compiler to build; installs it when missing and we are root.
# The release build takes long (tens of minutes on two cores); its target dir is deleted after.
# Idempotent: nothing is done when the pinned version is already installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version=${SOCKUDO_VERSION:-5.2.0}
bin="$here/.bin/bin/sockudo"
if [[ -x "$bin" && -f "$here/.bin/.version" && "$(cat "$here/.bin/.version")" == "$version" ]]; then
    echo "bench/sockudo/install.sh: sockudo $version already installed"
    exit 0
fi
if ! command -v protoc >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
    else
        echo "bench/sockudo/install.sh: protoc is required (apt-get install protobuf-compiler)" >&2
        exit 1
    fi
fi
build=$(mktemp -d "${TMPDIR:-/tmp}/sockudo-build.XXXXXX")
trap 'rm -rf "$build"' EXIT
CARGO_TARGET_DIR="$build" CARGO_INCREMENTAL=0 \
    cargo install sockudo --version "=$version" --locked --root "$here/.bin"
echo "$version" > "$here/.bin/.version"
echo "bench/sockudo/install.sh: OK (sockudo $version)"

#!/usr/bin/env bash
# Builds this Caddy (Caddy v2.11.9 with its standard modules and
# webhook_guard) from the checkout: what the Dockerfile runs, and what CI
# runs, so that the container recipe is checked where Docker is not.
# Usage: scripts/build-caddy.sh [output path, default ./caddy]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-caddy}
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out" ./cmd/caddy
"$out" list-modules | grep -qx 'http.handlers.webhook_guard' || {
	echo "build-caddy: $out lacks http.handlers.webhook_guard" >&2
	exit 1
}
echo "build-caddy: $out ($("$out" version | head -1))"

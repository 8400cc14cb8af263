#!/usr/bin/env bash
# End-to-end benchmark: installs wrk (Debian package) when missing, then
# runs bench/main.go. Extra arguments go to it, e.g. -duration 30s.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
	echo "== installing wrk (Debian package)"
	if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq wrk >/dev/null
fi
exec go run ./bench "$@"

#!/usr/bin/env bash
# Runs every check and test of webhookguard. This is the README's test
# command, and what CI (.ci/run) calls on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The dedupe tests start their own redis-server on a free loopback port;
# the history page's test drives Debian's chromium headless.
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus" # promtool checks docs/alerts.yml
if [ -n "$missing" ]; then
	echo "== installing$missing (Debian packages)"
	if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086 # one word per package
	$SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "== go mod download"
go mod download

echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
if [ -n "$unformatted" ]; then
	printf 'gofmt would change:\n%s\n' "$unformatted"
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== scripts/build-caddy.sh (the Dockerfile's build step)"
built=$(mktemp -d)
bash scripts/build-caddy.sh "$built/caddy"
if command -v systemd-analyze >/dev/null 2>&1; then
	echo "== systemd-analyze verify dist/webhookguard.service"
	# The unit names /usr/bin/caddy; check it against the binary just built.
	sed "s|/usr/bin/caddy|$built/caddy|g" dist/webhookguard.service >"$built/webhookguard.service"
	systemd-analyze verify "$built/webhookguard.service"
fi

echo "== promtool: docs/alerts.yml"
(cd docs && promtool check rules alerts.yml && promtool test rules alerts_test.yml)

echo "== go test -race"
# Tests that need redis-server or chromium fail, rather than skip, when
# it is missing.
export WEBHOOKGUARD_REQUIRE_REDIS=1 WEBHOOKGUARD_REQUIRE_CHROMIUM=1
go test -race -count=1 -timeout 40m ./...

# Short fuzzing runs on top of the committed seed corpora (testdata/fuzz
# beside each package, and the seeds in the code, which go test above
# already ran as tests). FUZZTIME=5s makes a quicker pass; go test's own
# progress lines (every 3 s) show that it is working.
for target in FuzzVerifySignature:. FuzzParseBatch:./internal/payload FuzzNormalize:./internal/metanorm FuzzDecodeEvent:./internal/inbox FuzzDispatcherPassOverCorruptRecord:./internal/inbox; do
	name=${target%%:*} pkg=${target#*:}
	echo "== fuzz $name in $pkg (${FUZZTIME:-20s})"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "${FUZZTIME:-20s}" "$pkg" 2>&1 | sed 's/^/   /'
	test "${PIPESTATUS[0]}" -eq 0
done

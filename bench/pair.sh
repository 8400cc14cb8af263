#!/usr/bin/env bash
# Paired in-process benchmarks of the request path: two checkouts (old and
# new, e.g. git worktrees), alternated in each of 5 rounds, so that the
# machine's drift hits both alike. Usage: bench/pair.sh OLD_DIR NEW_DIR
set -euo pipefail
old=${1:?old checkout}; new=${2:?new checkout}
for round in 1 2 3 4 5; do
	for tree in "$old" "$new"; do
		(cd "$tree" && go test -run '^$' -bench 'BenchmarkVerifyPath|BenchmarkAddedLatency|BenchmarkUnbatch' \
			-benchtime 20000x -count 1 -benchmem . | grep -E '^Benchmark' | sed "s|^|$(basename "$tree") |")
	done
done

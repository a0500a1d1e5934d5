#!/bin/sh
# make test RUNS times in a row (3 by default) with stress-ng loading the
# machine beside it, as the README's determinism claim states. Stops at the
# first failure; prints one line per run.
set -eu
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
./scripts/install-deps.sh vm stress
stress-ng --cpu 2 --io 1 --vm 1 --vm-bytes 256M --timeout 4h >/dev/null 2>&1 &
load=$!
trap 'kill $load 2>/dev/null; wait $load 2>/dev/null || true' EXIT INT TERM
i=1
while [ "$i" -le "$runs" ]; do
	start=$(date +%s)
	if ! make test; then
		echo "test-under-load: run $i of $runs FAILED after $(( $(date +%s) - start )) s" >&2
		exit 1
	fi
	echo "test-under-load: run $i of $runs passed in $(( $(date +%s) - start )) s" >&2
	i=$((i + 1))
done
echo "test-under-load: $runs of $runs runs passed under stress-ng" >&2

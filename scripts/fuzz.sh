#!/bin/sh
# Runs every Go fuzz target of the repository for FUZZN inputs each.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
n=0
for f in $(git ls-files '*_test.go'); do
	for fn in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
		echo "fuzz ./$(dirname "$f") $fn (${FUZZN:-20000x})"
		"$GO" test -run '^$' -fuzz "^$fn\$" -fuzztime "${FUZZN:-20000x}" "./$(dirname "$f")"
		n=$((n + 1))
	done
done
[ "$n" -gt 0 ] || { echo "fuzz: no fuzz target found" >&2; exit 1; }
echo "fuzz: $n targets"

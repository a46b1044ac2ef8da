#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time each. The seed
# corpora already run as ordinary tests in `go test ./...`; this adds a brief
# coverage-guided exploration so regressions in parsers surface in CI.
set -euo pipefail
fuzztime=${1:-5s}
cd "$(dirname "$0")/.."
grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | grep -v '^./tools/' | sort | while read -r file; do
  pkg=./$(dirname "${file#./}")
  for fn in $(grep -oE '^func Fuzz[A-Za-z0-9_]+' "$file" | awk '{print $2}'); do
    echo "fuzz $pkg $fn ($fuzztime)"
    go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$fuzztime" "$pkg"
  done
done

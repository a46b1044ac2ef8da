#!/usr/bin/env bash
# Regenerates the eBPF objects in a scratch copy of the tree and compares them
# with the committed ones, so a C change without `make generate` fails CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
# Copy what bpf2go needs, preserving relative paths (they end up in BTF).
tar cf - go.mod go.sum bpf $(git ls-files -co --exclude-standard -- '*/gen.go' '*.c' '*.h' | grep -v '^bpf/' ) 2>/dev/null | (cd "$tmp" && tar xf -)
status=0
for gen in $(cd "$tmp" && find . -name gen.go -path '*/*' | sort); do
  dir=$(dirname "$gen")
  (cd "$tmp/$dir" && go generate ./ >/dev/null)
  for f in "$tmp/$dir"/*_bpfel.go "$tmp/$dir"/*_bpfel.o; do
    [ -e "$f" ] || continue
    rel=${f#"$tmp/"}
    if ! cmp -s "$f" "$root/$rel"; then
      echo "stale generated file: $rel (run 'make generate' and commit)"; status=1
    fi
  done
done
[ $status -eq 0 ] && echo "generated eBPF objects are fresh"
exit $status

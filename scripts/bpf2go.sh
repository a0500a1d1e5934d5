#!/bin/sh
# Runs bpf2go (arguments as given by loader/gen.go's go:generate line) in a
# fixed directory, then copies its output back into the calling package.
#
# Why a fixed directory: clang-16's BTF writer orders the forward
# declarations it emits by heap address (BTFDebug keeps them in a std::map
# keyed by DICompositeType pointer), and the heap's layout follows the
# length of the paths on clang's command line, which bpf2go makes
# absolute. The same source compiled from /work/main and from /tmp/cc gave
# two arm64 objects that differ in the order of 9 forward declarations, so
# a clean clone at another path failed `make generate-check`. At one path
# the object is the same byte for byte from any checkout.
set -eu
out=$(pwd)
repo=$(cd "$out/.." && pwd)
stage=/tmp/listenwatch-bpf2go

# One generate at a time: the directory is part of the output.
exec 9>"$stage.lock"
flock 9

rm -rf "$stage"
mkdir -p "$stage/loader"
cp -R "$repo/bpf" "$stage/bpf"
# go.mod pins bpf2go (a tool dependency); go.sum lets it build offline.
cp "$repo/go.mod" "$repo/go.sum" "$stage/"
(cd "$stage/loader" && go tool bpf2go "$@")
cp "$stage"/loader/bpf_*_bpfel.go "$stage"/loader/bpf_*_bpfel.o "$out/"
rm -rf "$stage"

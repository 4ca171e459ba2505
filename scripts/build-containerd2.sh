#!/usr/bin/env bash
# build-containerd2.sh VERSION DIR: build containerd 2.x (containerd, ctr and
# the runc shim) from the Go module proxy into DIR/bin, so the tests can run
# Cocoon's shim under containerd 2.x as well as Debian's 1.6. Nothing is
# built when DIR/bin already holds that version.
#
# containerd's go.mod has exclude directives, so `go install` refuses it: the
# module is downloaded, copied out of the module cache and built in place.
set -euo pipefail
version=${1:?usage: build-containerd2.sh VERSION DIR}
dir=${2:?usage: build-containerd2.sh VERSION DIR}
bin=$dir/bin
if [ -x "$bin/containerd" ] && "$bin/containerd" --version 2>/dev/null | grep -q " $version"; then
	exit 0
fi
src=$(go mod download -json "github.com/containerd/containerd/v2@v$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "build-containerd2: module source for v$version not found" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
cd "$work"
mkdir -p "$bin"
CGO_ENABLED=0 go build -mod=mod -trimpath -tags no_btrfs,no_devmapper,no_zfs \
	-ldflags "-X github.com/containerd/containerd/v2/version.Version=$version" \
	-o "$bin/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2
"$bin/containerd" --version

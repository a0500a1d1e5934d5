#!/bin/sh
# Installs what building the BPF object and running the tests need, from
# Debian's packages. Idempotent: does nothing when everything is there.
# Usage: scripts/install-deps.sh [vm] [stress] [e2e]
#   vm: also qemu for make vmtest; stress: also stress-ng for make test-under-load;
#   e2e: also etcd for make e2e
set -eu

pkgs="clang-16 llvm-16 libbpf-dev bpftool hping3 iproute2 procps tmux prometheus containerd runc containernetworking-plugins"
for arg in "$@"; do
	case $arg in
	vm) pkgs="$pkgs qemu-system-x86 qemu-system-arm busybox-static cpio" ;;
	stress) pkgs="$pkgs stress-ng" ;;
	e2e) pkgs="$pkgs etcd-server" ;;
	*) echo "install-deps: unknown argument $arg (want vm, stress or e2e)" >&2; exit 2 ;;
	esac
done

missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages:$missing (run as root)" >&2
	exit 1
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null

#!/bin/sh
# Downloads (never installs) the kernels of the vmtest matrix from Debian's
# packages and caches their vmlinuz, and the modules the tests need, under
# .cache/vmtest/kernels/RELEASE/. Prints one "NAME RELEASE DIR" line per kernel.
# Kernels are resolved through their meta-packages: ABI numbers move.
set -eu
cd "$(dirname "$0")/.."
CACHE=$PWD/.cache/vmtest
mkdir -p "$CACHE/kernels" "$CACHE/apt"

# A private apt state for trixie and trixie-backports, on the mirror and
# keyring the system already uses; the system's apt configuration is not
# touched.
TRIXIE="$CACHE/apt/trixie"
mkdir -p "$TRIXIE/lists/partial" "$TRIXIE/cache/archives/partial"
cat > "$TRIXIE/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
SRC
trixie_apt() {
	"$@" -o Dir::Etc::sourcelist="$TRIXIE/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
		-o Dir::State::Lists="$TRIXIE/lists" -o Dir::Cache="$TRIXIE/cache" -o APT::Get::List-Cleanup=0
}

# A private apt state for arm64 bookworm (kernels and the guest's userland):
# no dpkg --add-architecture, the host's apt state stays untouched.
ARM64="$CACHE/apt/arm64"
mkdir -p "$ARM64/lists/partial" "$ARM64/cache/archives/partial"
cat > "$ARM64/sources.list" <<SRC
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SRC
arm64_apt() {
	"$@" -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Dir::State::status=/dev/null \
		-o Dir::Etc::sourcelist="$ARM64/sources.list" -o Dir::Etc::sourceparts=/nonexistent \
		-o Dir::State::Lists="$ARM64/lists" -o Dir::Cache="$ARM64/cache" -o APT::Get::List-Cleanup=0
}

updated=""
update() {
	[ -n "$updated" ] && return
	apt-get update -qq >&2
	trixie_apt apt-get update -qq >&2
	arm64_apt apt-get update -qq >&2
	updated=1
}

# arm64root: the guest userland for arm64 kernels (the x86 guests copy the
# host's busybox and iproute2): busybox-static and iproute2 with the shared
# libraries they need, unpacked from Debian's arm64 packages, cached.
arm64root() {
	root="$CACHE/arm64-root"
	[ -x "$root/bin/busybox" ] && [ -x "$root/bin/ip" ] && [ -x "$root/usr/sbin/hping3" ] && return
	update
	tmp=$(mktemp -d)
	(cd "$tmp" && arm64_apt apt-get download -qq busybox-static iproute2 libc6 libbpf1 libelf1 libmnl0 \
		libselinux1 libcap2 libdb5.3 libbsd0 libmd0 libtirpc3 libxtables12 zlib1g libpcre2-8-0 \
		libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1 libssl3 libzstd1 \
		libcap2-bin hping3 libpcap0.8 libtcl8.6 libdbus-1-3 libibverbs1 libnl-3-200 libnl-route-3-200 libsystemd0 liblzma5 liblz4-1 libgcrypt20 libgpg-error0 2>&1 | grep -v "unsandboxed" >&2 || true)
	mkdir -p "$root"
	for deb in "$tmp"/*.deb; do
		dpkg-deb -x "$deb" "$root"
	done
	rm -rf "$tmp"
	# usrmerge: /bin and /lib are /usr's in the guest
	[ -x "$root/bin/busybox" ] || { mkdir -p "$root/bin"; cp "$root/usr/bin/busybox" "$root/bin/busybox" 2>/dev/null || true; }
	[ -x "$root/bin/ip" ] || cp "$root/usr/bin/ip" "$root/bin/ip" 2>/dev/null || cp "$root/sbin/ip" "$root/bin/ip"
	echo "$root" >&2
}

# fetch NAME APT-WRAPPER META
fetch() {
	name=$1; wrap=$2; meta=$3
	# A cached kernel for this name skips the network entirely.
	if [ -f "$CACHE/kernels/$name.release" ]; then
		rel=$(cat "$CACHE/kernels/$name.release")
		if [ -f "$CACHE/kernels/$rel/vmlinuz" ]; then
			echo "$name $rel $CACHE/kernels/$rel"
			return
		fi
	fi
	update
	pkg=$($wrap apt-cache depends "$meta" | awk '/Depends: linux-(image|binary)-[0-9]/{print $2; exit}')
	if [ -z "$pkg" ]; then
		echo "vmkernels: cannot resolve $meta" >&2
		exit 1
	fi
	# Since 7.x the image package splits into linux-binary (vmlinuz) and
	# linux-modules: fetch those too.
	pkgs="$pkg $($wrap apt-cache depends "$pkg" | awk '/Depends: linux-(binary|modules)-[0-9]/{print $2}')"
	tmp=$(mktemp -d)
	# shellcheck disable=SC2086
	(cd "$tmp" && $wrap apt-get download -qq $pkgs 2>&1 | grep -v "unsandboxed" >&2 || true)
	mkdir -p "$tmp/x"
	for deb in "$tmp"/*.deb; do
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" --wildcards './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz' \
			'./lib/modules/*/kernel/drivers/net/veth.ko*' './usr/lib/modules/*/kernel/drivers/net/veth.ko*' 2>/dev/null || true
	done
	vmlinuz=$(find "$tmp/x" -name 'vmlinuz*' -type f | head -1)
	if [ -z "$vmlinuz" ]; then
		echo "vmkernels: no vmlinuz in $pkg" >&2
		exit 1
	fi
	rel=$(ls "$tmp/x/boot" 2>/dev/null | sed -n 's/^vmlinuz-//p' | head -1)
	[ -n "$rel" ] || rel=$(ls "$tmp/x/usr/lib/modules" | head -1)
	dir="$CACHE/kernels/$rel"
	mkdir -p "$dir"
	cp "$vmlinuz" "$dir/vmlinuz"
	veth=$(find "$tmp/x" -name 'veth.ko*' | head -1)
	if [ -n "$veth" ]; then
		case "$veth" in
		*.xz) xz -dc "$veth" > "$dir/veth.ko" ;;
		*.zst) zstd -qdc "$veth" > "$dir/veth.ko" ;;
		*) cp "$veth" "$dir/veth.ko" ;;
		esac
	fi
	rm -rf "$tmp"
	echo "$rel" > "$CACHE/kernels/$name.release"
	echo "$name $rel $dir"
}

for k in ${VMTEST_KERNELS:-6.1 6.12 newest}; do
	case $k in
	6.1) fetch 6.1 "" linux-image-cloud-amd64 ;;
	6.12) fetch 6.12 "" linux-image-6.12-cloud-amd64 ;;
	newest) fetch newest trixie_apt linux-image-cloud-amd64/trixie-backports ;;
	arm64-6.1) arm64root; fetch arm64-6.1 arm64_apt linux-image-cloud-arm64 ;;
	*) echo "vmkernels: unknown kernel $k (want 6.1, 6.12, newest, arm64-6.1)" >&2; exit 1 ;;
	esac
done

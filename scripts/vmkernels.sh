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

updated=""
update() {
	[ -n "$updated" ] && return
	apt-get update -qq >&2
	trixie_apt apt-get update -qq >&2
	updated=1
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
	*) echo "vmkernels: unknown kernel $k (want 6.1, 6.12, newest)" >&2; exit 1 ;;
	esac
done

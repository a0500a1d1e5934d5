#!/bin/sh
# Builds the Kubernetes binaries make e2e runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kubectl) from Go
# modules, cached by version under .cache/k8s/VERSION/bin (ignored, never
# committed). Cold: about 15 minutes on 2 cores; cached: nothing to do.
# Prints the bin directory.
set -eu
cd "$(dirname "$0")/.."
K8S_VERSION=${K8S_VERSION:-1.37.2}
staging="0.${K8S_VERSION#1.}"
dir=$PWD/.cache/k8s/$K8S_VERSION
bins="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
done=1
for b in $bins; do [ -x "$dir/bin/$b" ] || done=""; done
if [ -n "$done" ]; then
	echo "$dir/bin"
	exit 0
fi
mkdir -p "$dir/src" "$dir/bin"
# A wrapper module: k8s.io/kubernetes is not meant to be required, its
# staging repositories are replaced by their published versions.
{
	echo "module listenwatch.local/k8sbuild"
	echo
	echo "go 1.26"
	echo
	echo "require k8s.io/kubernetes v$K8S_VERSION"
	echo
	echo "replace ("
	gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
	sed -n 's/^[[:space:]]*\(k8s.io\/[a-z0-9-]*\) => .\/staging.*/\1/p' "$gomod" | while read -r m; do
		echo "	$m => $m v$staging"
	done
	echo ")"
} > "$dir/src/go.mod"
cat > "$dir/src/tools.go" <<'GO'
//go:build tools

package k8sbuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
cd "$dir/src"
echo "k8s-build: resolving modules for Kubernetes $K8S_VERSION" >&2
go mod tidy -e >&2 2>&1 | tail -5 >&2 || true
echo "k8s-build: building $bins (cold: about 15 minutes)" >&2
CGO_ENABLED=0 go build -trimpath -o "$dir/bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl >&2
echo "$dir/bin"

#!/bin/bash
# Build the Kubernetes binaries of the e2e cluster with `go build` from the k8s.io/kubernetes module at the release
# tools/go.mod pins (through the Go module proxy), version stamped, into $CACHE/bin (outside git). A binary
# already built from this go.mod is kept: a second run builds nothing. Low priority, one package at a time
# (a shared 2-core machine: 30-60 min the first time). usage: build.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
command -v go >/dev/null || { echo "build.sh: 'go' not found (Go >= 1.24 needed)" >&2; exit 2; }
mkdir -p "$BIN"
stamp=$(sha256sum "$HERE/tools/go.mod" "$HERE/tools/go.sum" | sha256sum | cut -c1-16)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
cd "$HERE/tools"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  if [ -x "$BIN/$cmd" ] && [ "$(cat "$BIN/$cmd.built-from" 2>/dev/null)" = "$stamp" ]; then continue; fi
  t=$(date +%s)
  GOFLAGS="-mod=readonly -buildvcs=false" nice -n 19 \
    go build -p "${DCFORGE_CLUSTER_BUILD_JOBS:-1}" -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.new" "k8s.io/kubernetes/cmd/$cmd"
  mv "$BIN/$cmd.new" "$BIN/$cmd"; echo "$stamp" > "$BIN/$cmd.built-from"
  echo "build.sh: $cmd $K8S_VERSION built in $(( $(date +%s) - t )) s"
done
"$BIN/kubectl" version --client 2>/dev/null | head -1

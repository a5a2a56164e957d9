#!/bin/bash
# Remove everything up.sh made: processes (by PID file, and the containerd shims by their node's socket path),
# pods' and nodes' network namespaces, mounts, the bridge and its iptables rule, the nodes' cgroups, the run
# folder. The node image stores stay (a later up imports nothing). Idempotent: a second run finds nothing.
# usage: down.sh   (docs/e2e-cluster.md)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
[ "$(id -u)" = 0 ] || { echo "down.sh: run as root" >&2; exit 2; }
N=$(workers)
if [ -d "$RUN" ]; then
  # let each kubelet tear its pods down (CNI DEL, sandbox netns removed) while the API and kubelets still run
  if alive kube-apiserver; then
    for ns in $($KUBECTL get ns -o name 2>/dev/null | cut -d/ -f2 | grep -vE '^(kube-system|kube-public|kube-node-lease|default)$'); do
      $KUBECTL delete ns "$ns" --wait=false >/dev/null 2>&1; done
    $KUBECTL delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1
    for _ in $(seq 30); do [ -z "$($KUBECTL get pods -A -o name 2>/dev/null)" ] && break; sleep 1; done
    $KUBECTL delete pvc --all -A --wait=false >/dev/null 2>&1   # their host-path folders go with the volumes
    for _ in $(seq 20); do [ -z "$($KUBECTL get pv -o name 2>/dev/null)" ] && break; sleep 1; done
  fi
  for i in $(seq "$N"); do stop "kube-proxy-w$i"; stop "kubelet-w$i"; done
  stop kube-scheduler; stop kube-controller-manager; stop kube-apiserver
  for i in $(seq "$N"); do
    sock=$(node_dir "$i")/containerd/containerd.sock ctr_i="ctr -a $(node_dir "$i")/containerd/containerd.sock -n k8s.io"
    # the pod sandboxes' network namespaces, read from the containers' specs before the containers go
    pod_netns=$(for c in $($ctr_i containers ls -q 2>/dev/null); do $ctr_i containers info "$c" 2>/dev/null |
      grep -o '"/var/run/netns/cni-[0-9a-f-]*"' | tr -d '"'; done | sort -u)
    echo "$pod_netns" >> "$RUN/pod-netns"
    for t in $($ctr_i tasks ls -q 2>/dev/null); do $ctr_i tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
    sleep 0.5
    for t in $($ctr_i tasks ls -q 2>/dev/null); do $ctr_i tasks rm -f "$t" >/dev/null 2>&1; done
    for c in $($ctr_i containers ls -q 2>/dev/null); do $ctr_i containers rm "$c" >/dev/null 2>&1; done
    for s in $($ctr_i snapshots ls 2>/dev/null | awk 'NR>1 && $3=="Active"{print $1}'); do
      $ctr_i snapshots rm "$s" >/dev/null 2>&1; done
    stop "containerd-w$i"
    # shims outlive containerd: found by their node's socket in their command line, killed by PID
    for p in /proc/[0-9]*; do
      tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q -- "containerd-shim.* -address $sock" && kill -9 "${p#/proc/}" 2>/dev/null
    done
  done
  stop etcd
  # mounts under the run folder and the node image stores (overlay snapshots, kubelet volumes), deepest first
  grep -oE " ($RUN|$CACHE/node-store)[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  for p in $(sort -u "$RUN/pod-netns" 2>/dev/null); do
    [ -e "$p" ] && { umount -l "$p" 2>/dev/null; rm -f "$p"; }; done
  [ -f "$RUN/hostpath_pv.made" ] && rmdir /tmp/hostpath_pv 2>/dev/null
  # the kubelets' symlinks in the fixed /var/log/containers folder that point into this cluster
  find /var/log/containers -maxdepth 1 -type l -lname "$RUN/*" -delete 2>/dev/null
fi
# by name, whether or not the run folder is left: namespaces, links, rule, cgroups
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^dcfk-w[0-9]+$'); do ip netns delete "$ns"; done
ip link del "$BRIDGE" 2>/dev/null
while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment dcforge-e2e-cluster -j DROP 2>/dev/null; do :; done
for c in /sys/fs/cgroup/*/dcfk-w*; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
left=$(ls -d /sys/fs/cgroup/*/dcfk-w* 2>/dev/null)
[ -z "$left" ] || { echo "down.sh: cgroups still busy: $left" >&2; exit 1; }
rm -rf "$RUN"
echo "e2e cluster down"

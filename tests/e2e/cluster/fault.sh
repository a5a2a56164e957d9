#!/bin/bash
# Fault hooks of the e2e cluster, for the tests (tests/e2e/cluster_faults.py) and by hand. NODE: an index (2) or
# a node name (dcf-worker-2). Every fault has its undo; down.sh undoes them all.
#   fault.sh rate NODE RATE|off        tbf rate limit on the node's link, both directions (e.g. 50mbit)
#   fault.sh cpu NODE PERCENT|off      CPU quota on the node's cgroup parent: every pod of the node together
#                                       gets PERCENT of one CPU (cgroup v1 cpu.cfs_quota_us)
#   fault.sh kubelet NODE stop|start   stop the node's kubelet (the node goes NotReady) / start it again
#   fault.sh link NODE down|up         cut the node's link to the bridge (API and other nodes) / restore it
#   fault.sh apiserver restart         stop the API server and start it again; returns once it is ready
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
usage() { echo "usage: fault.sh rate|cpu|kubelet|link NODE ARG, or fault.sh apiserver restart" >&2; exit 2; }
[ -d "$RUN" ] || { echo "fault.sh: no e2e cluster up ($RUN missing)" >&2; exit 2; }
kind=${1:-}; [ $# -ge 2 ] || usage
if [ "$kind" = apiserver ]; then
  [ "$2" = restart ] || usage
  stop kube-apiserver; restart kube-apiserver
  wait_for 60 "the API server" $KUBECTL get --raw /readyz; exit 0
fi
[ $# = 3 ] || usage
i=$(node_index "$2") arg=$3
[ "$i" -ge 1 ] && [ "$i" -le "$(workers)" ] || { echo "fault.sh: no node $2 (workers 1..$(workers))" >&2; exit 2; }
ns=$(node_ns "$i")
case $kind in
  rate)
    if [ "$arg" = off ]; then
      in_node "$i" tc qdisc del dev eth0 root 2>/dev/null || true; tc qdisc del dev "$ns" root 2>/dev/null || true
    else
      [[ $arg =~ ^[0-9]+(kbit|mbit|gbit)$ ]] || { echo "fault.sh: rate '$arg': expected e.g. 50mbit" >&2; exit 2; }
      # egress of the node (its eth0) and egress towards it (the host end of its link): both directions
      in_node "$i" tc qdisc replace dev eth0 root tbf rate "$arg" burst 64kb latency 100ms
      tc qdisc replace dev "$ns" root tbf rate "$arg" burst 64kb latency 100ms
    fi;;
  cpu)
    q=/sys/fs/cgroup/cpu/$ns
    if [ "$arg" = off ]; then echo -1 > "$q/cpu.cfs_quota_us"
    else
      [[ $arg =~ ^[0-9]+$ ]] && [ "$arg" -ge 1 ] || { echo "fault.sh: cpu '$arg': expected a percent of one CPU" >&2; exit 2; }
      echo 100000 > "$q/cpu.cfs_period_us"; echo $((arg * 1000)) > "$q/cpu.cfs_quota_us"
    fi;;
  kubelet)
    case $arg in
      stop) stop "kubelet-w$i";;
      start) alive "kubelet-w$i" || restart "kubelet-w$i"
             wait_for 60 "node $(node_name "$i") Ready" bash -c "$KUBECTL get node $(node_name "$i") | grep -qw Ready"
             advertise_gpu "$i";;
      *) usage;;
    esac;;
  link)
    case $arg in down|up) ip link set "$ns" "$arg";; *) usage;; esac;;
  *) usage;;
esac

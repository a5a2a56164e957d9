#!/bin/bash
# Bring up the multi-node e2e cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on the host
# (the API on the host end of the nodes' bridge), and N worker nodes, each in a network namespace of its own with
# its own containerd, kubelet (own root folder and cgroup parent) and kube-proxy; the pod subnets routed between
# the nodes over the bridge. Prints the admin kubeconfig's path last. Needs the binaries (build.sh) and the images
# (images.sh). usage: up.sh [WORKERS]   (default 3; docs/e2e-cluster.md)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
N=${1:-${DCFORGE_CLUSTER_WORKERS:-3}}
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 2 ] && [ "$N" -le 20 ] || { echo "up.sh: WORKERS must be 2..20, got '$N'" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "up.sh: run as root (network namespaces, cgroups, containerd)" >&2; exit 2; }
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  [ -x "$BIN/$b" ] || { echo "up.sh: $BIN/$b missing: run build.sh first (make e2e-cluster does)" >&2; exit 2; }; done
for t in etcd containerd containerd-shim-runc-v2 runc ctr iptables nsenter openssl bc; do
  command -v $t >/dev/null || { echo "up.sh: '$t' not found: apt-get install etcd-server containerd runc containernetworking-plugins iptables openssl bc" >&2; exit 2; }; done
[ -x /usr/lib/cni/bridge ] || { echo "up.sh: /usr/lib/cni/bridge missing: apt-get install containernetworking-plugins" >&2; exit 2; }
if alive kube-apiserver; then
  [ "$(workers)" = "$N" ] || { echo "up.sh: a cluster of $(workers) workers is up; down.sh first" >&2; exit 2; }
  echo "$KUBECONFIG_PATH"; exit 0
fi
[ ! -e "$RUN" ] || { echo "up.sh: $RUN left from an earlier cluster: run down.sh first" >&2; exit 2; }
for img in "$CACHE/images"/{pause,acceptance}.tar; do
  [ -f "$img" ] || { echo "up.sh: $img missing: run images.sh first (make e2e-cluster does)" >&2; exit 2; }; done
mkdir -p "$RUN/logs"; echo "$N" > "$RUN/workers"
trap 'echo "up.sh failed: logs in $RUN/logs; down.sh removes what was made" >&2' ERR

names=(); for i in $(seq "$N"); do names+=("$(node_name "$i")=$(node_ip "$i")"); done
bash "$HERE/certs.sh" "$RUN/pki" "$API_IP" "$BIN/kubectl" "${names[@]}"; P=$RUN/pki; say certificates

# the nodes' switch: a bridge on the host; the host forwards nothing off it (traffic stays among the nodes)
ip link add "$BRIDGE" type bridge; ip addr add "$API_IP/24" dev "$BRIDGE"; ip link set "$BRIDGE" up
iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment dcforge-e2e-cluster -j DROP
start etcd etcd --name dcfk --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls http://127.0.0.1:$((ETCD_PORT + 10)) \
  --initial-advertise-peer-urls http://127.0.0.1:$((ETCD_PORT + 10)) \
  --initial-cluster dcfk=http://127.0.0.1:$((ETCD_PORT + 10)) --listen-metrics-urls ""

for i in $(seq "$N"); do
  ns=$(node_ns "$i") d=$(node_dir "$i") ip=$(node_ip "$i") cidr=$(node_pod_cidr "$i")
  mkdir -p "$d/cni" "$d/pod-logs" "$d/kubelet" "$(node_store "$i")"; : > "$d/resolv.conf"
  ip netns add "$ns"
  ip link add "$ns" type veth peer name eth0 netns "$ns"
  ip link set "$ns" master "$BRIDGE" up
  in_node "$i" ip link set lo up
  in_node "$i" ip addr add "$ip/24" dev eth0; in_node "$i" ip link set eth0 up
  in_node "$i" ip route add default via "$API_IP"
  ip route add "$cidr" via "$ip" dev "$BRIDGE"               # the API server's answers to pods
  for j in $(seq "$N"); do [ "$j" = "$i" ] || in_node "$i" ip route add "$(node_pod_cidr "$j")" via "$(node_ip "$j")"; done
  in_node "$i" sysctl -qw net.ipv4.ip_forward=1
  in_node "$i" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  # the node's cgroup parent in every v1 hierarchy (cpuset needs its cpus and mems set before use)
  for c in /sys/fs/cgroup/*/; do
    mkdir -p "$c$ns"
    [ -f "$c/cpuset.cpus" ] && cat "$c/cpuset.cpus" > "$c$ns/cpuset.cpus" && cat "$c/cpuset.mems" > "$c$ns/cpuset.mems"
  done
  cat > "$d/cni/10-pods.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "$ns-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$d/cni-ipam", "ranges": [[{"subnet": "$cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
CNI
  sed -e "s#@N@#$d#g; s#$d/containerd/root#$(node_store "$i")#" "$HERE/containerd.toml.tmpl" > "$d/containerd.toml"
  start "containerd-w$i" nsenter --net="/run/netns/$ns" -- containerd --config "$d/containerd.toml"
done
say "nodes' namespaces, links, cgroups"

wait_for 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"; say etcd
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address="$API_IP" \
  --secure-port=6443 --advertise-address="$API_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
  --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file="$P/sa.pub" \
  --service-account-signing-key-file="$P/sa.key" --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction,PodSecurity --allow-privileged=false --profiling=false
wait_for 60 "the API server" $KUBECTL get --raw /readyz; say "API server ready"
# the controller manager runs as uid 1000, the acceptance pods' user: the directories its host-path provisioner
# makes for claims (mode 0750, under /tmp/hostpath_pv, seen alike by every node) are then theirs to write
install -d -o 1000 -g 1000 -m 0700 "$RUN/cm"
install -o 1000 -m 0400 "$P/controller-manager.kubeconfig" "$P/ca.crt" "$P/ca.key" "$P/sa.key" "$RUN/cm/"
[ -e /tmp/hostpath_pv ] || { install -d -m 1777 /tmp/hostpath_pv; touch "$RUN/hostpath_pv.made"; }
start kube-controller-manager setpriv --reuid=1000 --regid=1000 --clear-groups "$BIN/kube-controller-manager" \
  --kubeconfig="$RUN/cm/controller-manager.kubeconfig" --authentication-kubeconfig="$RUN/cm/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$RUN/cm/controller-manager.kubeconfig" --bind-address=127.0.0.1 --secure-port=0 \
  --leader-elect=false --use-service-account-credentials=true --root-ca-file="$RUN/cm/ca.crt" \
  --service-account-private-key-file="$RUN/cm/sa.key" --cluster-signing-cert-file="$RUN/cm/ca.crt" \
  --cluster-signing-key-file="$RUN/cm/ca.key" --service-cluster-ip-range="$SERVICE_CIDR" \
  --enable-hostpath-provisioner=true --node-monitor-grace-period=20s --node-monitor-period=2s
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$P/scheduler.kubeconfig" \
  --authentication-kubeconfig="$P/scheduler.kubeconfig" --authorization-kubeconfig="$P/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false

import_images() {  # into node $1's containerd, unless its store holds this build of them already
  local i=$1 ctr_i="ctr -a $(node_dir "$1")/containerd/containerd.sock -n k8s.io"
  wait_for 30 "containerd of $(node_name "$i")" $ctr_i version
  for img in pause acceptance; do
    stamp=$(node_store "$i")/$img.imported
    cmp -s "$CACHE/images/$img.digest" "$stamp" 2>/dev/null && continue
    nice -n 10 $ctr_i images import "$CACHE/images/$img.tar" >/dev/null
    cp "$CACHE/images/$img.digest" "$stamp"
  done
}
importing=(); for i in $(seq "$N"); do import_images "$i" & importing+=($!); done
for p in "${importing[@]}"; do wait "$p"; done   # set -e: a failed import fails up
say "images in every node"

for i in $(seq "$N"); do
  ns=$(node_ns "$i") d=$(node_dir "$i") name=$(node_name "$i") ip=$(node_ip "$i")
  sed -e "s#@N@#$d#g; s#@PKI@#$P#g; s#@IP@#$ip#g; s#@NAME@#$name#g; s#@CGROUP@#$ns#g" \
      -e "s#@PODCIDR@#$(node_pod_cidr "$i")#g" "$HERE/kubelet-config.yaml.tmpl" > "$d/kubelet-config.yaml"
  start "kubelet-w$i" nsenter --net="/run/netns/$ns" -- "$BIN/kubelet" --config="$d/kubelet-config.yaml" \
    --kubeconfig="$P/kubelet-$name.kubeconfig" --root-dir="$d/kubelet" --hostname-override="$name" --node-ip="$ip" \
    --node-labels="dcforge.io/pool=train" --v=1
  start "kube-proxy-w$i" nsenter --net="/run/netns/$ns" -- "$BIN/kube-proxy" --kubeconfig="$P/kube-proxy.kubeconfig" \
    --hostname-override="$name" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables \
    --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --conntrack-max-per-core=0
done
for i in $(seq "$N"); do
  wait_for 60 "node $(node_name "$i") Ready" bash -c "$KUBECTL get node $(node_name "$i") | grep -qw Ready"
done
say "$N nodes Ready"
for i in $(seq "$N"); do advertise_gpu "$i"; done
$KUBECTL apply -f - >/dev/null <<'SC'
# the checkpoint claims' class of the `cluster` environment, by the host-path provisioner: every node sees the
# same host folder, so a claim written on one node reads back on another (a pod moved by a node loss resumes)
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local-path-checkpoints, annotations: {storageclass.kubernetes.io/is-default-class: "true"}}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
SC
wait_for 30 "the default ServiceAccount" $KUBECTL -n default get sa default; say ready
echo "$KUBECONFIG_PATH"

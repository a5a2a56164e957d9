# Shared by the e2e cluster kit's scripts (sourced): where things live, how a node is named and addressed.
# Everything the kit makes is named dcfk* (network namespaces, links, cgroups) or lives under $RUN, so `down.sh`
# finds exactly what `up.sh` made and nothing of anyone else's.
CACHE=${DCFORGE_CLUSTER_CACHE:-$HOME/.cache/dcforge-cluster}   # built binaries, images, node image stores
RUN=${DCFORGE_CLUSTER_RUN:-$CACHE/run}                         # one cluster's state; removed by down.sh
BIN=$CACHE/bin
K8S_VERSION=v1.34.3            # the k8s.io/kubernetes release tools/go.mod pins
BRIDGE=dcfk0                   # the host bridge every node's link hangs on: the nodes' "switch"
API_IP=10.250.0.1              # the host end of the bridge: the API server's address
SERVICE_CIDR=10.97.0.0/16
POD_CIDR=10.245.0.0/16         # node i's pods: 10.245.i.0/24
ETCD_PORT=23791                # not etcd's default ports: another cluster may run on this machine
KUBECONFIG_PATH=$RUN/pki/admin.kubeconfig
KUBECTL="$BIN/kubectl --kubeconfig=$KUBECONFIG_PATH"

node_name() { echo "dcf-worker-$1"; }        # the Kubernetes node name
node_ns() { echo "dcfk-w$1"; }               # its network namespace, host-side link and cgroup
node_ip() { echo "10.250.0.$((10 + $1))"; }
node_pod_cidr() { echo "10.245.$1.0/24"; }
node_dir() { echo "$RUN/w$1"; }
node_store() { echo "$CACHE/node-store/w$1"; }  # containerd's root (its images) survives down: a later up
                                                 # imports nothing again
# the worker index of a node given by index or by name
node_index() { local n=${1#dcf-worker-}; [[ $n =~ ^[0-9]+$ ]] || { echo "not a node of the e2e cluster: $1" >&2; exit 2; }; echo "$n"; }
workers() { cat "$RUN/workers" 2>/dev/null || echo 0; }
in_node() { local i=$1; shift; nsenter --net="/run/netns/$(node_ns "$i")" -- "$@"; }

T0=$(date +%s.%N)
say() { printf '[%5.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*"; }

# start NAME [in-node I] CMD...: a daemon in the background, its PID in $RUN/NAME.pid, its command in NAME.cmd
# (the fault hooks restart it from there), its output in $RUN/logs/NAME.log
start() {
  local name=$1; shift
  printf '%q ' "$@" > "$RUN/$name.cmd"
  nohup "$@" >> "$RUN/logs/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
}
restart() { local name=$1; nohup bash -c "exec $(cat "$RUN/$name.cmd")" >> "$RUN/logs/$name.log" 2>&1 & echo $! > "$RUN/$name.pid"; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
stop() {  # stop NAME [SIGNAL]: by its PID file only; SIGKILL after 10 s
  local f=$RUN/$1.pid; [ -f "$f" ] || return 0; local p; p=$(cat "$f")
  kill "-${2:-TERM}" "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$p" 2>/dev/null || true; rm -f "$f"
}
wait_for() {  # wait_for SECONDS WHAT CMD...: poll until CMD succeeds, else fail naming WHAT
  local until=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || { echo "e2e cluster: $what not within the time allowed (logs: $RUN/logs)" >&2; return 1; }
    sleep 0.3
  done
}

# Each node advertises one `nvidia.com/gpu` (an extended resource in its status, as the Kubernetes docs advertise
# one by hand): the pools' pods ask for their node's GPUs, and run on its CPU. Done again after a kubelet restart
# (it zeroes extended resources no device plugin serves).
advertise_gpu() {
  $KUBECTL patch node "$(node_name "$1")" --subresource=status --type=json \
    -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"}]' >/dev/null
}

# The names, paths and addresses of one local cluster and its test bed (sourced by
# cluster.sh, testbed.sh, node.sh and images.sh after versions.sh). One place: change a
# range here and every script, the kubelet, kube-proxy and the CNI config follow.
#
# The real node lives in a network namespace of its own, joined to the host by one veth
# pair (the "link"). Nothing in that namespace has a default route, and the host
# blackholes the pod and Service ranges, so no packet to or from a pod can leave the
# machine. The defaults are for the main cluster; a second cluster with a real node must
# set other ranges (the e2e test of `cluster-down` does).
NAME="${MODELDEPLOY_CLUSTER:-modeldeploy}"   # another name runs a second, separate cluster
STATE_DIR="$CACHE_DIR/cluster"
[[ "$NAME" == modeldeploy ]] || STATE_DIR="$CACHE_DIR/cluster-$NAME"
KUBECONFIG_FILE="$STATE_DIR/kubeconfig"
export KWOK_WORKDIR="$CACHE_DIR/kwok"          # kwokctl's own state (certs, pids, logs)
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$NAME"
PKI_DIR="$KWOK_CLUSTER_DIR/pki"                # the cluster CA and the API server's cert
# A real node comes with the main cluster; other clusters (benchmarks, the up/down test)
# are control plane + kwok only unless they ask for one.
if [[ "$NAME" == modeldeploy ]]; then REAL_NODE="${MODELDEPLOY_REAL_NODE:-1}"; else REAL_NODE="${MODELDEPLOY_REAL_NODE:-0}"; fi

POD_NET="${MODELDEPLOY_POD_NET:-10.244.0.0/16}"          # pods + the link, blackholed on the host
SERVICE_NET="${MODELDEPLOY_SERVICE_NET:-10.96.0.0/16}"   # kube-apiserver's Service range
_net16() { local n="${1%/*}"; echo "${n%.*.*}"; }         # 10.244.0.0/16 -> 10.244
_pod16="$(_net16 "$POD_NET")"; _svc16="$(_net16 "$SERVICE_NET")"
LINK_HOST_IP="$_pod16.0.1"        # host end of the link: the API server is reached here
LINK_NODE_IP="$_pod16.0.2"        # node end of the link: the node's InternalIP
NODE_POD_CIDR="$_pod16.1.0/24"    # the real node's podCIDR (CNI bridge + host-local IPAM)
BRIDGE_IP="$_pod16.1.1"
KUBERNETES_SERVICE_IP="$_svc16.0.1"
DNS_SERVICE_IP="$_svc16.0.10"
CLUSTER_DOMAIN="cluster.local"

# Short, stable names (interface names have 15 characters at most).
TAG="$(printf '%s' "$NAME" | sha1sum | cut -c1-6)"
NETNS="modeldeploy-$NAME"
HOST_IF="mdh$TAG"
NODE_IF="mdn$TAG"
BRIDGE="mdbr0"                    # inside the node's namespace: no clash between clusters
NFT_TABLE="modeldeploy_$TAG"      # host table (inet); the node's namespace has its own
CGROUP_ROOT="/modeldeploy-$TAG"   # the kubelet's cgroupRoot in every hierarchy
NODE_NAME="${MODELDEPLOY_NODE_NAME:-real-a}"
SIMULATED_GPUS=8                  # nvidia.com/gpu advertised by the real node (simulated)
GPU_PRODUCT="Simulated-GPU-on-CPU"
EVICTION_DISK_MIB=2048            # the kubelet's nodefs/imagefs eviction threshold

NODE_DIR="$CACHE_DIR/node"
[[ "$NAME" == modeldeploy ]] || NODE_DIR="$CACHE_DIR/node-$NAME"
# containerd's image store outlives `cluster-down` (imported images are kept, by digest);
# everything under RUN_DIR is runtime state that `down` removes.
CONTAINERD_ROOT="$NODE_DIR/containerd"
RUN_DIR="$NODE_DIR/run"
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
KUBELET_DIR="$RUN_DIR/kubelet"

# Poll a command until it succeeds (node.sh and images.sh both wait on the node).
wait_until() {  # wait_until <seconds> <what> <cmd...>
  local seconds="$1" what="$2"; shift 2
  for _ in $(seq $((seconds * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "timed out after ${seconds}s waiting for $what" >&2
  return 1
}

#!/usr/bin/env bash
# The real node: containerd + runc + the CNI bridge, kubelet and kube-proxy (built from
# the pinned Kubernetes module) and kube-router's firewall (the NetworkPolicy engine), all
# in the node's network namespace (hack/testbed.sh), joined to the local control plane as
# node "$NODE_NAME" with identities of their own (client certificates signed by the
# cluster CA: system:node:<name>, system:kube-proxy, system:kube-router), plus CoreDNS.
# It advertises simulated GPUs (an extended resource, the GPU label and taint) and runs
# real pods on this machine's CPU.
#   node.sh up | down | status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
source "$HACK_DIR/cluster-env.sh"

KCTL=(kubectl --kubeconfig "$KUBECONFIG_FILE")
CRICTL=("$CRICTL_BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s)
CTR=(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io)
LOG_DIR="$RUN_DIR/logs"
CONF_DIR="$RUN_DIR/conf"
POD_LOGS_DIR="$RUN_DIR/pod-logs"
# A taint of its own keeps the e2e tests' kwok workloads off this node: only pods that
# tolerate it (the real-node tests, `make demo`) run here, as on a dedicated node.
REAL_NODE_TAINT_KEY="modeldeploy.io/real-node"

say() { echo ">> $*"; }
in_node() { nsenter --net="/var/run/netns/$NETNS" "$@"; }

# Start a long-running process of the node in its namespace, detached, with a pid file.
start_proc() {  # start_proc <name> <cmd...>
  local name="$1"; shift
  if [[ -f "$RUN_DIR/$name.pid" ]] && kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    return 0
  fi
  setsid nsenter --net="/var/run/netns/$NETNS" "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

stop_proc() {  # stop_proc <name>: TERM, then KILL after 15 s
  local pidfile="$RUN_DIR/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# kube-proxy exits when its configuration file changes: a second `up` must leave
# unchanged files alone.
write_if_changed() {  # write_if_changed <file> < content
  local new
  new="$(cat)"
  [[ -f "$1" && "$(cat "$1")" == "$new" ]] || printf '%s\n' "$new" >"$1"
}

# A client certificate signed by the cluster CA (the API server trusts it as that user).
client_cert() {  # client_cert <file prefix> <CN> [O]
  local out="$1" cn="$2" org="${3:-}" subj
  # Kept while the cluster's CA still signs it (a re-created control plane has a new CA).
  [[ -f "$out.crt" ]] && openssl verify -CAfile "$PKI_DIR/ca.crt" "$out.crt" >/dev/null 2>&1 \
    && return 0
  subj="/CN=$cn"; [[ -n "$org" ]] && subj="/O=$org$subj"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out.key" -subj "$subj" -out "$out.csr" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -CAserial "$CONF_DIR/ca.srl" -days 30 -out "$out.crt" \
    -extfile <(printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n') 2>/dev/null
  rm -f "$out.csr"
  chmod 600 "$out.key"
}

kubeconfig_for() {  # kubeconfig_for <user> <cert prefix>: reaches the API server over the link
  local port
  port="$("${KCTL[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  port="${port##*:}"
  cat <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://$LINK_HOST_IP:$port", certificate-authority: "$PKI_DIR/ca.crt"}}]
users: [{name: "$1", user: {client-certificate: "$2.crt", client-key: "$2.key"}}]
contexts: [{name: node, context: {cluster: local, user: "$1"}}]
current-context: node
EOF
}

write_containerd_config() {
  write_if_changed "$CONF_DIR/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$RUN_DIR/containerd/state"
oom_score = 0
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's -998 for sandboxes would fail in runc.
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under our state, not /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CONF_DIR/cni"
    max_conf_num = 1
EOF
}

# The CNI bridge: no masquerading, no default route in pods (routes to the pod and
# Service ranges only), addresses from the node's podCIDR.
write_cni_config() {
  mkdir -p "$CONF_DIR/cni"
  write_if_changed "$CONF_DIR/cni/10-modeldeploy.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "modeldeploy-$TAG",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$RUN_DIR/cni-ipam",
              "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$BRIDGE_IP"}]],
              "routes": [{"dst": "$POD_NET"}, {"dst": "$SERVICE_NET"}]}},
    {"type": "loopback"}
  ]
}
EOF
}

write_kubelet_config() {
  write_if_changed "$CONF_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $LINK_NODE_IP
port: 10250
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI_DIR/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
# This machine has cgroup v1 hierarchies (cgroup2 only at /sys/fs/cgroup/unified, no
# systemd): cgroupfs driver, and kubelet 1.34's opt-in to keep running on cgroup v1.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: "$CGROUP_ROOT"
failSwapOn: false
podCIDR: "$NODE_POD_CIDR"
clusterDNS: ["$DNS_SERVICE_IP"]
clusterDomain: "$CLUSTER_DOMAIN"
# No host resolvers for pods: name lookups stay inside the cluster.
resolvConf: ""
podLogsDir: "$POD_LOGS_DIR"
volumePluginDir: "$RUN_DIR/volume-plugins"
registerWithTaints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}
  - {key: $REAL_NODE_TAINT_KEY, value: "true", effect: NoSchedule}
serializeImagePulls: false
maxPods: 32
# The machine is shared with the control plane and the tests: evict before it starves.
# Absolute disk thresholds: this machine's filesystem reserves most of its blocks, so a
# percentage of its size says little about the room really left.
evictionHard: {memory.available: 500Mi, nodefs.available: ${EVICTION_DISK_MIB}Mi, imagefs.available: ${EVICTION_DISK_MIB}Mi}
# A pressure that has passed (an image import's peak) lifts its taint after 30 s, not the
# default 5 min during which nothing is scheduled here.
evictionPressureTransitionPeriod: 30s
# No registry can give an image back: the kubelet never removes one to free disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

write_kube_proxy_config() {
  write_if_changed "$CONF_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$CONF_DIR/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
bindAddress: $LINK_NODE_IP
healthzBindAddress: "$LINK_NODE_IP:10256"
metricsBindAddress: "127.0.0.1:10249"
mode: iptables
# No clusterCIDR: traffic from outside the pod range is not masqueraded (clients keep
# their address, which the servers' allow-lists check).
# Leave the machine-wide conntrack sysctls alone (0 = as they are).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

gpus_allocatable() {
  [[ "$("${KCTL[@]}" get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$SIMULATED_GPUS" ]]
}

ensure_cgroup_root() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ "$h" == */unified/ ]] && continue
    mkdir -p "$h${CGROUP_ROOT#/}"
  done
}

up() {
  [[ -f "$KUBECONFIG_FILE" ]] || { echo "the control plane is not up ($KUBECONFIG_FILE)"; exit 1; }
  bash "$HACK_DIR/testbed.sh" check || { echo "the test bed network is not up"; exit 1; }
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$CONF_DIR" "$POD_LOGS_DIR" "$CONTAINERD_ROOT" "$KUBELET_DIR"
  local start=$SECONDS
  say "real node $NODE_NAME: containerd, kubelet, kube-proxy in network namespace $NETNS"
  client_cert "$CONF_DIR/kubelet" "system:node:$NODE_NAME" system:nodes
  client_cert "$CONF_DIR/kube-proxy" system:kube-proxy
  client_cert "$CONF_DIR/kube-router" system:kube-router
  kubeconfig_for "system:node:$NODE_NAME" "$CONF_DIR/kubelet" | write_if_changed "$CONF_DIR/kubelet.kubeconfig"
  kubeconfig_for system:kube-proxy "$CONF_DIR/kube-proxy" | write_if_changed "$CONF_DIR/kube-proxy.kubeconfig"
  kubeconfig_for system:kube-router "$CONF_DIR/kube-router" | write_if_changed "$CONF_DIR/kube-router.kubeconfig"
  write_containerd_config
  write_cni_config
  write_kubelet_config
  write_kube_proxy_config
  ensure_cgroup_root

  start_proc containerd containerd --config "$CONF_DIR/containerd.toml"
  wait_until 30 containerd "${CTR[@]}" version
  bash "$HACK_DIR/images.sh" import pause

  start_proc kubelet "$KUBE_BIN/kubelet" --config "$CONF_DIR/kubelet.yaml" \
    --kubeconfig "$CONF_DIR/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
    --node-ip "$LINK_NODE_IP" --root-dir "$KUBELET_DIR" --cert-dir "$CONF_DIR/kubelet-pki" \
    --node-labels "type=real,nvidia.com/gpu.present=true,nvidia.com/gpu.product=$GPU_PRODUCT,$REAL_NODE_TAINT_KEY=true"
  start_proc kube-proxy "$KUBE_BIN/kube-proxy" --config "$CONF_DIR/kube-proxy.yaml"
  wait_until 90 "node $NODE_NAME to register" "${KCTL[@]}" get node "$NODE_NAME"
  # Simulated GPUs: an extended resource in the node's capacity (the documented way to
  # advertise one without a device plugin); the kubelet derives allocatable from it.
  # (Allocatable too, so the scheduler sees them now rather than at the kubelet's next
  # status report.)
  local field patch=""
  for field in capacity allocatable; do
    patch+="${patch:+,}{\"op\":\"add\",\"path\":\"/status/$field/nvidia.com~1gpu\",\"value\":\"$SIMULATED_GPUS\"}"
  done
  "${KCTL[@]}" patch node "$NODE_NAME" --subresource=status --type=json -p "[$patch]" >/dev/null
  wait_until 90 "node $NODE_NAME to be Ready" \
    "${KCTL[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  wait_until 30 "the simulated GPUs in $NODE_NAME's allocatable" gpus_allocatable
  wait_until 30 "kube-proxy" in_node curl -fsS "http://$LINK_NODE_IP:10256/healthz"
  network_policy_engine
  dns_addon
  say "real node $NODE_NAME Ready in $((SECONDS - start)) s ($("${KCTL[@]}" get node "$NODE_NAME" \
    -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'), $SIMULATED_GPUS simulated nvidia.com/gpu)"
}

# NetworkPolicies are enforced on this node by kube-router's firewall alone (iptables +
# ipset inside the node's namespace; its routing and service proxy stay off).
network_policy_engine() {
  "${KCTL[@]}" apply --server-side -f "$HACK_DIR/addons/kube-router-rbac.yaml" >/dev/null
  start_proc kube-router "$KUBE_ROUTER_BIN/kube-router" --run-firewall=true \
    --run-router=false --run-service-proxy=false --enable-ipv6=false \
    --kubeconfig "$CONF_DIR/kube-router.kubeconfig" --hostname-override "$NODE_NAME" \
    --service-cluster-ip-range "$SERVICE_NET" --metrics-port 0 --health-port 20244
  wait_until 60 "kube-router's firewall" in_node curl -fsS "http://127.0.0.1:20244/healthz"
}

# Cluster DNS (CoreDNS) on this node: in-cluster clients (kopf among them) find the API
# server as kubernetes.default.svc, and Services by name.
dns_addon() {
  bash "$HACK_DIR/images.sh" import coredns
  COREDNS_IMAGE="$COREDNS_IMAGE" NODE_NAME="$NODE_NAME" DNS_SERVICE_IP="$DNS_SERVICE_IP" \
    CLUSTER_DOMAIN="$CLUSTER_DOMAIN" python3 -c \
    'import os, string, sys; print(string.Template(sys.stdin.read()).substitute(os.environ))' \
    <"$HACK_DIR/addons/coredns.yaml" | "${KCTL[@]}" apply --server-side -f - >/dev/null
  "${KCTL[@]}" rollout status -n kube-system deployment/coredns --timeout=120s >/dev/null
}

# Stop pods through the CRI first (CNI DEL, unmounts), then the node's processes, then
# whatever they left: mounts, cgroups, log links. Safe to run when nothing is up.
down() {
  stop_proc kubelet
  if [[ -S "$CONTAINERD_SOCK" ]] && "${CTR[@]}" version >/dev/null 2>&1; then
    local pods
    pods="$("${CRICTL[@]}" pods -q 2>/dev/null || true)"
    if [[ -n "$pods" ]]; then
      # shellcheck disable=SC2086
      "${CRICTL[@]}" stopp $pods >/dev/null 2>&1 || true
      # shellcheck disable=SC2086
      "${CRICTL[@]}" rmp -f $pods >/dev/null 2>&1 || true
    fi
  fi
  stop_proc kube-proxy
  stop_proc kube-router
  stop_proc containerd
  # Anything still running under the node's cgroup (shims, containers) is ours.
  local h pids
  for h in /sys/fs/cgroup/pids /sys/fs/cgroup/memory; do
    [[ -d "$h${CGROUP_ROOT}" ]] || continue
    pids="$(find "$h${CGROUP_ROOT}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && kill -9 $pids 2>/dev/null || true
  done
  pkill -9 -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true
  pkill -9 -f "$RUN_DIR/" 2>/dev/null || true
  sleep 0.5
  # Mounts under our state (kubelet volumes, pod netns, snapshots), deepest first.
  local m
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
    awk -v d="$RUN_DIR" -v r="$CONTAINERD_ROOT" 'index($5, d) == 1 || index($5, r) == 1 {print $5}' \
      /proc/self/mountinfo | sort -r)
  # cgroups: deepest first, in every hierarchy.
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${CGROUP_ROOT#/}" ]] || continue
    find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # The kubelet links container logs into /var/log/containers (a fixed path).
  find /var/log/containers -maxdepth 1 -type l -lname "$POD_LOGS_DIR/*" -delete 2>/dev/null || true
  rm -rf "$RUN_DIR"
}

status() {
  local name ok=0
  for name in containerd kubelet kube-proxy kube-router; do
    if [[ -f "$RUN_DIR/$name.pid" ]] && kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"), log $LOG_DIR/$name.log)"
    else
      echo "$name: not running"; ok=1
    fi
  done
  return $ok
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The local cluster: real etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler (built by hack/build.sh) orchestrated by kwokctl's binary runtime; kwok
# fake nodes (two GPU nodes, one CPU node) for scale and scheduling; and, with the main
# cluster, one real node (hack/node.sh: containerd, kubelet, kube-proxy) in a network
# namespace of its own (hack/testbed.sh). Everything lives under .cache: the kubeconfig
# is .cache/cluster/kubeconfig and ~/.kube is never touched.
#   cluster.sh up       start (harmless when already running)
#   cluster.sh down     stop; no process, port, mount, namespace, link, rule or cgroup left
#   cluster.sh status   exit 0 when the API server (and the real node) answer
#   cluster.sh start    start again any control-plane process that died or was killed
#                       (kwokctl starts only those whose pid is not alive), as a kubelet
#                       restarts a static pod; the e2e outage tests use it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
source "$HACK_DIR/cluster-env.sh"

export KWOK_KUBE_VERSION="$KUBE_VERSION"        # so kwokctl renders flags for our release
KWOKCTL="$KWOK_BIN/kwokctl"
KCTL=(kubectl --kubeconfig "$KUBECONFIG_FILE")

alive() {
  [[ -f "$KUBECONFIG_FILE" ]] && "${KCTL[@]}" get --raw /readyz >/dev/null 2>&1
}

# kwokctl's settings. Every component listens on loopback, except that with a real node
# the API server also answers on the host end of the link, where pods reach it through
# the `kubernetes` Service (testbed.sh admits that port from the link only); its
# certificate names the link address and the Service address.
kwok_config() {
  local bind=127.0.0.1
  [[ "$REAL_NODE" == 1 ]] && bind=0.0.0.0
  cat <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  bindAddress: 127.0.0.1
  kubeApiserverCertSANs: ["$LINK_HOST_IP", "$KUBERNETES_SERVICE_IP"]
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - {key: bind-address, value: "$bind"}
  # A /16 of Service IPs (the default /24 runs out at 253 ModelDeployments).
  - {key: service-cluster-ip-range, value: "$SERVICE_NET"}
  - {key: advertise-address, value: "$LINK_HOST_IP"}
  # kubectl logs/exec reach the real kubelet with the cluster's client certificate.
  - {key: kubelet-client-certificate, value: "$PKI_DIR/admin.crt"}
  - {key: kubelet-client-key, value: "$PKI_DIR/admin.key"}
  - {key: kubelet-preferred-address-types, value: InternalIP}
  # A node may only change itself and its own pods.
  - {key: enable-admission-plugins, value: NodeRestriction}
  # Aggregated APIs (the operator's custom.metrics.k8s.io) are dialled at their endpoints'
  # addresses: the API server runs on the host, where Service IPs are blackholed (only
  # the real node's kube-proxy, in its own namespace, translates them).
  - {key: enable-aggregator-routing, value: "true"}
# kwok fakes only the nodes of hack/nodes.yaml, never the real one's pods. (kwokctl's
# binary runtime always passes --manage-all-nodes=true; the later flag wins.)
- name: kwok-controller
  extraArgs:
  - {key: manage-all-nodes, value: "false"}
  - {key: manage-nodes-with-annotation-selector, value: kwok.x-k8s.io/node=fake}
EOF
}

up() {
  bash "$HACK_DIR/build.sh" cluster
  if [[ "$REAL_NODE" == 1 ]]; then
    bash "$HACK_DIR/packages.sh" node
    bash "$HACK_DIR/build.sh" node
    # The link must exist before the API server: it advertises the link's address.
    bash "$HACK_DIR/testbed.sh" up
  fi
  if alive; then
    echo "cluster '$NAME' is already running (KUBECONFIG=$KUBECONFIG_FILE)"
  else
    # A previous run may have died half-way: clear it before creating anew.
    "$KWOKCTL" delete cluster --name "$NAME" >/dev/null 2>&1 || true
    mkdir -p "$STATE_DIR"
    rm -f "$KUBECONFIG_FILE"
    kwok_config >"$STATE_DIR/kwok.yaml"
    echo ">> starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok ($KUBE_VERSION)"
    local start=$SECONDS
    "$KWOKCTL" create cluster --name "$NAME" --runtime binary --config "$STATE_DIR/kwok.yaml" \
      --kubeconfig "$KUBECONFIG_FILE" \
      --etcd-binary "$ETCD_BIN/etcd" \
      --kube-apiserver-binary "$KUBE_BIN/kube-apiserver" \
      --kube-controller-manager-binary "$KUBE_BIN/kube-controller-manager" \
      --kube-scheduler-binary "$KUBE_BIN/kube-scheduler" \
      --kwok-controller-binary "$KWOK_BIN/kwok" \
      --kube-authorization=true --kube-admission=true \
      --disable-qps-limits \
      --wait 90s --timeout 120s
    "${KCTL[@]}" config use-context "kwok-$NAME" >/dev/null
    "${KCTL[@]}" apply --server-side -f "$HACK_DIR/nodes.yaml" >/dev/null
    "${KCTL[@]}" wait --for=condition=Ready node -l type=kwok --timeout=60s >/dev/null
    echo ">> control plane '$NAME' ready in $((SECONDS - start)) s"
  fi
  if [[ "$REAL_NODE" == 1 ]]; then
    local server
    server="$("${KCTL[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
    bash "$HACK_DIR/testbed.sh" guard-apiserver "${server##*:}"
    bash "$HACK_DIR/node.sh" up
  fi
  # The default ServiceAccount appears shortly after a namespace; wait for it so the
  # first pods are not refused.
  for _ in $(seq 60); do
    "${KCTL[@]}" get serviceaccount default -n default >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo ">> cluster '$NAME' ready; export KUBECONFIG=$KUBECONFIG_FILE"
  "${KCTL[@]}" get nodes -L nvidia.com/gpu.product
}

down() {
  # The real node first (its pods through the CRI, while the API server may still
  # answer), then the control plane, then the network.
  [[ "$REAL_NODE" == 1 ]] && bash "$HACK_DIR/node.sh" down
  if [[ -x "$KWOKCTL" ]]; then
    "$KWOKCTL" delete cluster --name "$NAME" >/dev/null 2>&1 || true
  fi
  # kwokctl stops what it started by pid files; make sure nothing of ours survives.
  pkill -f "$KWOK_CLUSTER_DIR/" 2>/dev/null || true
  [[ "$REAL_NODE" == 1 ]] && bash "$HACK_DIR/testbed.sh" down
  rm -rf "$STATE_DIR"
  echo "cluster '$NAME' stopped"
}

start() {
  [[ -f "$KWOK_CLUSTER_DIR/kwok.yaml" ]] || { echo "cluster '$NAME' was never created" >&2; exit 1; }
  "$KWOKCTL" start cluster --name "$NAME"
  for _ in $(seq 240); do
    alive && { echo "cluster '$NAME' control plane running"; return 0; }
    sleep 0.5
  done
  echo "cluster '$NAME' did not answer within 2 min of starting again" >&2
  exit 1
}

status() {
  if ! alive; then
    echo "cluster '$NAME' is not running"
    return 1
  fi
  echo "cluster '$NAME' is running; export KUBECONFIG=$KUBECONFIG_FILE"
  "${KCTL[@]}" version 2>/dev/null | grep -i server || true
  "${KCTL[@]}" get nodes -L nvidia.com/gpu.product
  if [[ "$REAL_NODE" == 1 ]]; then
    bash "$HACK_DIR/node.sh" status
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  start) start ;;
  *) echo "usage: $0 up|down|status|start" >&2; exit 2 ;;
esac

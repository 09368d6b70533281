#!/usr/bin/env bash
# The local control plane: real etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler (built by hack/build.sh) orchestrated by kwokctl's binary runtime, plus
# kwok fake nodes (two GPU nodes, one CPU node). Everything lives under .cache: the
# kubeconfig is .cache/cluster/kubeconfig and ~/.kube is never touched.
#   cluster.sh up       start (harmless when already running)
#   cluster.sh down     stop; no process or port left behind
#   cluster.sh status   exit 0 when the API server answers, with nodes and versions
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

NAME="${MODELDEPLOY_CLUSTER:-modeldeploy}"   # another name runs a second, separate cluster
STATE_DIR="$CACHE_DIR/cluster"
[[ "$NAME" == modeldeploy ]] || STATE_DIR="$CACHE_DIR/cluster-$NAME"
KUBECONFIG_FILE="$STATE_DIR/kubeconfig"
export KWOK_WORKDIR="$CACHE_DIR/kwok"          # kwokctl's own state (certs, pids, logs)
export KWOK_KUBE_VERSION="$KUBE_VERSION"        # so kwokctl renders flags for our release
KWOKCTL="$KWOK_BIN/kwokctl"
KCTL=(kubectl --kubeconfig "$KUBECONFIG_FILE")

alive() {
  [[ -f "$KUBECONFIG_FILE" ]] && "${KCTL[@]}" get --raw /readyz >/dev/null 2>&1
}

up() {
  bash "$HACK_DIR/build.sh" cluster
  if alive; then
    echo "cluster '$NAME' is already running (KUBECONFIG=$KUBECONFIG_FILE)"
    return 0
  fi
  # A previous run may have died half-way: clear it before creating anew.
  "$KWOKCTL" delete cluster --name "$NAME" >/dev/null 2>&1 || true
  mkdir -p "$STATE_DIR"
  rm -f "$KUBECONFIG_FILE"
  echo ">> starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok ($KUBE_VERSION)"
  local start=$SECONDS
  # A /16 of Service IPs (the default /24 runs out at 253 ModelDeployments).
  "$KWOKCTL" create cluster --name "$NAME" --runtime binary \
    --kubeconfig "$KUBECONFIG_FILE" \
    --etcd-binary "$ETCD_BIN/etcd" \
    --kube-apiserver-binary "$KUBE_BIN/kube-apiserver" \
    --kube-controller-manager-binary "$KUBE_BIN/kube-controller-manager" \
    --kube-scheduler-binary "$KUBE_BIN/kube-scheduler" \
    --kwok-controller-binary "$KWOK_BIN/kwok" \
    --kube-authorization=true --kube-admission=true \
    --disable-qps-limits \
    --extra-args kube-apiserver=service-cluster-ip-range=10.96.0.0/16 \
    --wait 90s --timeout 120s
  "${KCTL[@]}" config use-context "kwok-$NAME" >/dev/null
  "${KCTL[@]}" apply --server-side -f "$HACK_DIR/nodes.yaml" >/dev/null
  "${KCTL[@]}" wait --for=condition=Ready node --all --timeout=60s >/dev/null
  # The default ServiceAccount appears shortly after a namespace; wait for it so the
  # first pods are not refused.
  for _ in $(seq 60); do
    "${KCTL[@]}" get serviceaccount default -n default >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo ">> cluster '$NAME' ready in $((SECONDS - start)) s; export KUBECONFIG=$KUBECONFIG_FILE"
  "${KCTL[@]}" get nodes -L nvidia.com/gpu.product
}

down() {
  if [[ -x "$KWOKCTL" ]]; then
    "$KWOKCTL" delete cluster --name "$NAME" >/dev/null 2>&1 || true
  fi
  # kwokctl stops what it started by pid files; make sure nothing of ours survives.
  pkill -f "$KWOK_WORKDIR/clusters/$NAME/" 2>/dev/null || true
  rm -f "$KUBECONFIG_FILE"
  echo "cluster '$NAME' stopped"
}

status() {
  if ! alive; then
    echo "cluster '$NAME' is not running"
    return 1
  fi
  echo "cluster '$NAME' is running; export KUBECONFIG=$KUBECONFIG_FILE"
  "${KCTL[@]}" version 2>/dev/null | grep -i server || true
  "${KCTL[@]}" get nodes -L nvidia.com/gpu.product
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

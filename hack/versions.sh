# Pinned versions of the local control plane, read from the Go modules that build it
# (the single source: change a version there and the cache key changes with it).
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_modver() { awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) { print ($1 == "require" ? $3 : $2); exit }' "$HACK_DIR/$1/go.mod"; }
KUBE_VERSION="$(_modver kube k8s.io/kubernetes)"
ETCD_VERSION="$(_modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(_modver kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(_modver helm helm.sh/helm/v3)"
ROOT_DIR="$(cd "$HACK_DIR/.." && pwd)"
CACHE_DIR="${MODELDEPLOY_CACHE:-$ROOT_DIR/.cache}"
BIN_DIR="$CACHE_DIR/bin"
KUBE_BIN="$BIN_DIR/kubernetes-$KUBE_VERSION"
ETCD_BIN="$BIN_DIR/etcd-$ETCD_VERSION"
KWOK_BIN="$BIN_DIR/kwok-$KWOK_VERSION"
HELM_BIN="$BIN_DIR/helm-$HELM_VERSION"
CRICTL_VERSION="$(_modver crictl sigs.k8s.io/cri-tools)"
CRICTL_BIN="$BIN_DIR/cri-tools-$CRICTL_VERSION"
COREDNS_VERSION="$(_modver coredns github.com/coredns/coredns)"
COREDNS_BIN="$BIN_DIR/coredns-$COREDNS_VERSION"
KUBE_ROUTER_VERSION="$(_modver kube-router github.com/cloudnativelabs/kube-router/v2)"
KUBE_ROUTER_BIN="$BIN_DIR/kube-router-$KUBE_ROUTER_VERSION"
# The real node's sandbox process (hack/pause), cached by the hash of its source.
PAUSE_HASH="$(cat "$HACK_DIR/pause/main.go" "$HACK_DIR/pause/go.mod" | sha1sum | cut -c1-12)"
PAUSE_BIN="$BIN_DIR/pause-$PAUSE_HASH"

# Images (hack/images.sh). The operator and server tags follow the chart's appVersion,
# which is what the chart and the operator's default server image refer to.
APP_VERSION="$(awk '/^appVersion:/ {gsub(/"/, "", $2); print $2}' "$ROOT_DIR/charts/modeldeploy/Chart.yaml")"
IMAGE_REGISTRY="${IMAGE_REGISTRY:-ghcr.io/modeldeploy}"
OPERATOR_IMAGE="$IMAGE_REGISTRY/operator:$APP_VERSION"
SERVER_IMAGE="$IMAGE_REGISTRY/modelserver:$APP_VERSION"
BASE_IMAGE="localhost/modeldeploy/python:3.11-bookworm"   # debootstrap + Debian's python3
PAUSE_IMAGE="localhost/modeldeploy/pause:$PAUSE_HASH"
COREDNS_IMAGE="localhost/modeldeploy/coredns:$COREDNS_VERSION"

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

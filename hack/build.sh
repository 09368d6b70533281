#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok, kwokctl), the real node (kubelet, kube-proxy, crictl, the pause
# process, CoreDNS, kube-router's NetworkPolicy firewall) and helm from their Go modules at the versions pinned in hack/*/go.mod. Binaries are cached by version under .cache/bin: a second run builds
# nothing. A cold build takes many minutes on 2 cores; progress is printed per binary.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

# Build with the module proxy only; trimpath keeps paths of this machine out of binaries.
export GOFLAGS="-mod=mod -trimpath"

build() {  # build <module dir> <package> <output> [ldflags]
  local dir="$1" pkg="$2" out="$3" ldflags="${4:-}"
  if [[ -x "$out" ]]; then
    return 0
  fi
  local start=$SECONDS
  echo ">> building $(basename "$out") from $pkg (cold builds take minutes; go prints nothing meanwhile)"
  mkdir -p "$(dirname "$out")"
  (cd "$HACK_DIR/$dir" && go build -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  echo "   done in $((SECONDS - start)) s"
}

minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
kube_ld="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
helm_ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

want="${1:-all}"
if [[ "$want" == all || "$want" == cluster ]]; then
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    build kube "k8s.io/kubernetes/cmd/$b" "$KUBE_BIN/$b" "$kube_ld"
  done
  build etcd . "$ETCD_BIN/etcd"
  build kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_BIN/kwok"
  build kwok sigs.k8s.io/kwok/cmd/kwokctl "$KWOK_BIN/kwokctl"
fi
if [[ "$want" == all || "$want" == node ]]; then
  for b in kubelet kube-proxy; do
    build kube "k8s.io/kubernetes/cmd/$b" "$KUBE_BIN/$b" "$kube_ld"
  done
  build crictl sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_BIN/crictl"
  CGO_ENABLED=0 build coredns github.com/coredns/coredns "$COREDNS_BIN/coredns"
  build kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$KUBE_ROUTER_BIN/kube-router"
  # Static: it runs alone in an image with no libc.
  CGO_ENABLED=0 build pause . "$PAUSE_BIN"
fi
if [[ "$want" == all || "$want" == helm ]]; then
  build helm helm.sh/helm/v3/cmd/helm "$HELM_BIN/helm" "$helm_ld"
fi

#!/usr/bin/env bash
# For machines with a Docker engine: the same set-up on kind instead of the local
# Go-built control plane. It cannot run on the project's own machines (no Docker engine
# there), so it is kept small; the tests never use it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
if ! docker info >/dev/null 2>&1; then
  echo "kind-up: no Docker engine answers here; use 'make cluster-up' (the local control plane) instead." >&2
  exit 1
fi
command -v kind >/dev/null || { echo "kind-up: install kind first (go install sigs.k8s.io/kind@v0.33.0)" >&2; exit 1; }
kind get clusters | grep -qx modeldeploy || kind create cluster --name modeldeploy --image "kindest/node:$KUBE_VERSION"
# The same images as the local cluster's real node runs (buildah, hack/images.sh).
bash "$HACK_DIR/images.sh" build operator server
for ref in "$OPERATOR_IMAGE" "$SERVER_IMAGE"; do
  archive="$(mktemp)"
  buildah push --quiet "$ref" "docker-archive:$archive:$ref" >/dev/null
  kind load image-archive --name modeldeploy "$archive"
  rm -f "$archive"
done
bash "$HACK_DIR/build.sh" helm
"$HELM_BIN/helm" upgrade --install modeldeploy "$ROOT_DIR/charts/modeldeploy" \
  --namespace modeldeploy-system --create-namespace --set image.tag="$APP_VERSION"
echo "kind cluster 'modeldeploy' ready: kubectl apply -f $ROOT_DIR/examples/"

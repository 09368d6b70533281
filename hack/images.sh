#!/usr/bin/env bash
# Container images without a Docker engine: buildah (daemonless, from Debian) builds
#   - the base: Debian bookworm from debootstrap + Debian's python3 (3.11), passed to the
#     Dockerfiles as PYTHON_IMAGE (no registry is reachable here to pull python:3.11);
#   - the pause image of the real node's sandboxes (hack/pause, one static binary) and
#     the cluster DNS image (CoreDNS, one static binary);
#   - images/operator/Dockerfile and images/server/Dockerfile, unchanged from what a
#     Docker user builds.
# Each image is labelled with a hash of its inputs (Dockerfile, the sources it copies,
# its base): an unchanged tree builds nothing and imports nothing. The server's wheels
# are kept between builds in its Dockerfile's cache mount.
#   images.sh build [base|pause|coredns|operator|server ...]   (default: all five)
#   images.sh import [pause|coredns|operator|server ...]       into the real node's containerd
#   images.sh sizes                                    what README.md quotes
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
source "$HACK_DIR/cluster-env.sh"

LABEL=io.modeldeploy.inputs
WORK="$CACHE_DIR/images"
CTR=(ctr --address "$CONTAINERD_SOCK" --namespace k8s.io)
KCTL=(kubectl --kubeconfig "$KUBECONFIG_FILE")
# What the base image holds beyond debootstrap's minimal set.
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
BASE_SUITE=bookworm

say() { echo ">> $*"; }
ref_of() {
  case "$1" in
    base) echo "$BASE_IMAGE" ;; pause) echo "$PAUSE_IMAGE" ;; coredns) echo "$COREDNS_IMAGE" ;;
    operator) echo "$OPERATOR_IMAGE" ;; server) echo "$SERVER_IMAGE" ;;
    *) echo "unknown image '$1' (base, pause, coredns, operator, server)" >&2; return 2 ;;
  esac
}
built_hash() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# The hash of an image's inputs: the files it is built from, as they are in the working
# tree (tracked or new, never ignored ones), and the image it starts from.
inputs_hash() {  # inputs_hash <name>
  local base_id=""
  case "$1" in
    base) printf '%s\n' "$BASE_SUITE" "$BASE_PACKAGES"; sed -n '/^build_base()/,/^}/p' "$0" ;;
    pause) sha1sum <"$PAUSE_BIN"; sed -n '/^build_binary_image()/,/^}/p' "$0" ;;
    coredns) sha1sum <"$COREDNS_BIN/coredns"; sed -n '/^build_binary_image()/,/^}/p' "$0" ;;
    operator|server)
      base_id="$(buildah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE")"
      echo "$base_id"
      (cd "$ROOT_DIR" && git ls-files -co --exclude-standard -z -- pyproject.toml README.md \
         operator "images/$1" | sort -z | xargs -0 sha1sum) ;;
  esac | sha1sum | cut -c1-16
}

# Debian's archive as this machine's apt is configured for it (no host is written here).
debian_mirror() {
  apt-cache policy | awk -v s="$BASE_SUITE/main" '$3 == s && $2 ~ /^https?:/ {print $2; exit}'
}

build_base() {
  local mirror rootfs c
  mirror="$(debian_mirror)"
  [[ -n "$mirror" ]] || { echo "no Debian $BASE_SUITE archive configured for apt" >&2; exit 1; }
  rootfs="$WORK/base-rootfs"
  rm -rf "$rootfs"
  say "debootstrap $BASE_SUITE (minbase + $BASE_PACKAGES); about 1.5 min"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$BASE_SUITE" "$rootfs" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  # Package caches, indexes, docs and translations: not needed to run Python.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
  c="$(buildah from scratch)"
  buildah copy --quiet "$c" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label "$LABEL=$1" "$c"
  buildah commit --quiet --rm "$c" "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

# An image of one static binary and nothing else.
build_binary_image() {  # build_binary_image <ref> <binary> <hash>
  local c
  c="$(buildah from scratch)"
  buildah copy --quiet "$c" "$2" "/$(basename "$2")" >/dev/null
  buildah config --entrypoint "[\"/$(basename "$2")\"]" --user 65532:65532 --label "$LABEL=$3" "$c"
  buildah commit --quiet --rm "$c" "$1" >/dev/null
}

# The host's pip may trust a CA of its own (a proxy's): lend it to the build's RUN steps
# as mounts, which never end up in a layer.
pip_trust_mounts() {
  local cert="${PIP_CERT:-$(pip3 config get global.cert 2>/dev/null || true)}"
  [[ -n "$cert" && -f "$cert" ]] || return 0
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$WORK/pip.conf"
  echo "--volume=$cert:/etc/ssl/certs/ca-certificates.crt:ro --volume=$WORK/pip.conf:/etc/pip.conf:ro"
}

build_dockerfile() {  # build_dockerfile <operator|server> <hash>
  local dockerfile="$ROOT_DIR/images/$1/Dockerfile"
  say "buildah build -f images/$1/Dockerfile (PYTHON_IMAGE=$BASE_IMAGE); its steps follow"
  local log="$WORK/$1-build.log" rc=0
  # shellcheck disable=SC2046
  (cd "$ROOT_DIR" && buildah build --layers --isolation chroot --network host \
    --ignorefile "$dockerfile.dockerignore" $(pip_trust_mounts) \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$APP_VERSION" \
    --label "$LABEL=$2" -f "$dockerfile" -t "$(ref_of "$1")" .) 2>&1 | tee "$log" \
    | { grep --line-buffered -E '^(STEP|COMMIT)|Downloading|File was already' || true; } || rc=$?
  if [[ $rc -ne 0 || "$(built_hash "$(ref_of "$1")")" != "$2" ]]; then
    tail -30 "$log" >&2
    echo "buildah build of images/$1 failed (whole log: $log)" >&2
    exit 1
  fi
}

# The image a rebuild replaced keeps its layers (GBs for the server) under no name:
# remove it, unless a newer image still builds on it (buildah then refuses, harmlessly).
# The build cache (the dependency stage) is not touched.
drop_superseded() {  # drop_superseded <old image id or empty>
  [[ -n "$1" ]] || return 0
  buildah images --quiet --no-trunc --filter dangling=true | grep -qx "$1" || return 0
  buildah rmi "$1" >/dev/null 2>&1 || true
}

build() {
  local name hash ref start superseded
  mkdir -p "$WORK"
  for name in "$@"; do
    # The Dockerfiles start from the base: it must exist (and be current) first.
    [[ "$name" == operator || "$name" == server ]] && build base
    ref="$(ref_of "$name")"
    [[ "$name" == pause || "$name" == coredns ]] && bash "$HACK_DIR/build.sh" node >/dev/null
    hash="$(inputs_hash "$name")"
    if [[ "$(built_hash "$ref")" == "$hash" ]]; then
      echo "$ref: up to date ($LABEL=$hash)"
      continue
    fi
    start=$SECONDS
    superseded="$(buildah images --quiet --no-trunc "$ref" 2>/dev/null || true)"
    case "$name" in
      base) build_base "$hash" ;;
      pause) build_binary_image "$ref" "$PAUSE_BIN" "$hash" ;;
      coredns) build_binary_image "$ref" "$COREDNS_BIN/coredns" "$hash" ;;
      *) build_dockerfile "$name" "$hash" ;;
    esac
    echo "$ref: built in $((SECONDS - start)) s ($LABEL=$hash)"
    drop_superseded "$superseded"
  done

}

imported_hash() {  # the label on the node's copy of an image, if any
  "${CTR[@]}" images ls "name==$1" 2>/dev/null | awk -v l="$LABEL=" 'NR > 1 {
    n = split($NF, kv, ","); for (i = 1; i <= n; i++) if (index(kv[i], l) == 1) print substr(kv[i], length(l) + 1) }'
}

# Into the real node's containerd (namespace k8s.io, where the kubelet looks), so pods
# find them without a registry: streamed (no archive on disk) and uncompressed (a local
# copy needs no gzip).
import() {
  local name ref hash start imported=0
  "${CTR[@]}" version >/dev/null 2>&1 || { echo "the real node's containerd is not running ($CONTAINERD_SOCK)" >&2; exit 1; }
  mkdir -p "$WORK"
  for name in "$@"; do
    ref="$(ref_of "$name")"
    build "$name"   # a no-op when the image is current
    hash="$(built_hash "$ref")"
    if [[ "$(imported_hash "$ref")" == "$hash" ]]; then
      continue
    fi
    start=$SECONDS
    check_room_to_import "$ref"
    say "importing $ref into the node's containerd"
    buildah push --quiet "$ref" "docker-archive:/dev/stdout:$ref" | "${CTR[@]}" images import - >/dev/null
    "${CTR[@]}" images label "$ref" "$LABEL=$hash" >/dev/null
    discard_layer_blobs "$ref"
    echo "$ref: imported in $((SECONDS - start)) s"
    imported=1
  done
  ((imported)) || return 0
  wait_until 120 "node $NODE_NAME's disk-pressure taint to lift" no_disk_pressure || {
    echo "$(df -h --output=avail "$CONTAINERD_ROOT" | tail -1) free under $CONTAINERD_ROOT" >&2
    exit 1
  }
}

# An import holds the image twice for a while (its layer tarballs, then the unpacked
# snapshots). Dipping under the kubelet's eviction threshold taints the node with
# disk-pressure (no pod is scheduled until it lifts) and makes the kubelet delete unused
# images: refuse up front, with the figures, instead.
check_room_to_import() {  # check_room_to_import <ref>
  local image_bytes free_bytes need_bytes
  image_bytes="$(buildah inspect --type image --format '{{.Manifest}}' "$1" \
    | python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')"
  free_bytes="$(df --output=avail -B1 "$CONTAINERD_ROOT" | tail -1)"
  need_bytes=$((2 * image_bytes + (EVICTION_DISK_MIB + 1024) * 1024 * 1024))
  if ((free_bytes < need_bytes)); then
    echo "not enough disk to import $1 into the node: $((free_bytes >> 20)) MiB free under" \
      "$CONTAINERD_ROOT, $((need_bytes >> 20)) MiB needed (the image twice while it unpacks," \
      "plus the kubelet's ${EVICTION_DISK_MIB} MiB eviction threshold and 1 GiB to spare)." \
      "Free some (buildah rmi --prune drops unnamed images) and run again." >&2
    exit 1
  fi
}

# The kubelet may still have seen the import's peak: wait for its taint to lift.
no_disk_pressure() {
  ! "${KCTL[@]}" get node "$NODE_NAME" -o jsonpath='{.spec.taints[*].key}' \
    | grep -qw node.kubernetes.io/disk-pressure
}

# Once unpacked into the snapshotter, the layer tarballs are dead weight (6 GB for the
# server): drop them, as containerd's discard_unpacked_layers does for pulled images. No
# registry could give them back, but nothing needs them: pods start from the snapshots.
discard_layer_blobs() {
  local manifest
  manifest="$("${CTR[@]}" images ls "name==$1" | awk 'NR == 2 {print $3}')"
  "${CTR[@]}" content get "$manifest" \
    | python3 -c 'import json, sys; print("\n".join(l["digest"] for l in json.load(sys.stdin)["layers"]))' \
    | xargs -r "${CTR[@]}" content rm >/dev/null
}

sizes() {
  local name
  for name in base pause coredns operator server; do
    buildah images --format "{{.Name}}:{{.Tag}} {{.Size}}" "$(ref_of "$name")" 2>/dev/null || true
  done
}

cmd="${1:-build}"; shift || true
case "$cmd" in
  build) [[ $# -gt 0 ]] || set -- base pause coredns operator server; build "$@" ;;
  import) [[ $# -gt 0 ]] || set -- pause coredns operator server; import "$@" ;;
  sizes) sizes ;;
  *) echo "usage: $0 build|import [base|pause|coredns|operator|server ...] | sizes" >&2; exit 2 ;;
esac

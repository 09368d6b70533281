#!/usr/bin/env bash
# Debian packages the local cluster needs, installed with apt when missing (idempotent;
# prints what it installs). No package is downloaded by a pod or a container: only here.
#   packages.sh node     containerd, runc, the CNI plugins, nftables/iptables, conntrack,
#                        buildah and debootstrap (images without a Docker engine)
set -euo pipefail
case "${1:-}" in
  node) wanted=(containerd runc containernetworking-plugins nftables iptables conntrack ipset
                buildah debootstrap) ;;
  *) echo "usage: $0 node" >&2; exit 2 ;;
esac
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo ">> installing Debian packages: ${missing[*]}"
SUDO=""; [[ "$(id -u)" == 0 ]] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo ">> installed: ${missing[*]}"

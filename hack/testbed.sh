#!/usr/bin/env bash
# The network of the real node, which exists only inside this machine:
#   host ── veth (the link) ── node namespace ── bridge ── pods
# - The node's namespace has no default route: it reaches the host end of the link, its
#   pods and (through kube-proxy's DNAT) Services, nothing else.
# - The host routes the node's pod range and the Service range over the link and
#   blackholes both whole ranges, so an address of the test bed never follows the
#   default route off the machine, even when the link is gone.
# - nftables on the host: test-bed addresses may leave by the link only, and the host
#   forwards nothing into or out of the test bed. In the node's namespace: traffic from
#   pods stays on the bridge or goes to pods, Services and the host end of the link
#   (bridged packets pass this hook too, through br_netfilter). Every rule counts its
#   packets (`testbed.sh rules` prints them).
# No masquerading anywhere: pods see their clients' real addresses.
#   testbed.sh up | down | rules | check | guard-apiserver PORT | guard-agents
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
source "$HACK_DIR/cluster-env.sh"

in_node() { ip netns exec "$NETNS" "$@"; }

# Refuse ranges that overlap an address or route this machine already uses (our own
# routes aside): the test bed must never shadow a real network.
check_ranges() {
  python3 - "$POD_NET" "$SERVICE_NET" "$HOST_IF" <<'EOF'
import ipaddress, json, subprocess, sys
ours = [ipaddress.ip_network(n) for n in sys.argv[1:3]]
link = sys.argv[3]
used = []
for a in json.loads(subprocess.check_output(["ip", "-j", "-4", "addr"])):
    if a["ifname"] != link:
        used += [ipaddress.ip_interface(f'{i["local"]}/{i["prefixlen"]}').network
                 for i in a.get("addr_info", [])]
for r in json.loads(subprocess.check_output(["ip", "-j", "-4", "route"])):
    if r["dst"] != "default" and r.get("dev") != link and r.get("type") != "blackhole":
        used.append(ipaddress.ip_network(r["dst"], strict=False))
clash = [(str(o), str(u)) for o in ours for u in used
         if o.overlaps(u) and not u.is_loopback]
if clash:
    sys.exit("test-bed ranges overlap this machine's networks: "
             + ", ".join(f"{o} overlaps {u}" for o, u in clash)
             + " (set MODELDEPLOY_POD_NET / MODELDEPLOY_SERVICE_NET)")
EOF
}

host_rules() {
  cat <<EOF
table inet $NFT_TABLE {
  set testbed {
    type ipv4_addr; flags interval
    elements = { $POD_NET, $SERVICE_NET }
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname != { "lo", "$HOST_IF" } ip daddr @testbed counter drop comment "testbed-addresses-leave-only-by-the-link"
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$HOST_IF" counter drop comment "host-forwards-nothing-from-the-testbed"
    oifname "$HOST_IF" counter drop comment "host-forwards-nothing-into-the-testbed"
  }
}
EOF
}

node_rules() {
  cat <<EOF
table inet modeldeploy {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related counter accept comment "replies"
    iifname "$BRIDGE" oifname "$BRIDGE" counter accept comment "pod-to-pod-on-the-bridge"
    iifname "$BRIDGE" ip daddr { $POD_NET, $SERVICE_NET } counter accept comment "pods-to-services-and-the-host-link"
    iifname "$BRIDGE" counter drop comment "pods-reach-nothing-else"
    iifname "$NODE_IF" ip daddr { $NODE_POD_CIDR, $SERVICE_NET } counter accept comment "host-to-pods-and-services"
    iifname "$NODE_IF" counter drop comment "nothing-else-enters-from-the-host"
  }
}
EOF
}

# The test bed's names and ranges are machine-wide: one checkout owns them at a time.
OWNER_FILE="/run/modeldeploy/testbed-$NAME.owner"
claim() {
  mkdir -p "$(dirname "$OWNER_FILE")"
  if [[ -f "$OWNER_FILE" && "$(cat "$OWNER_FILE")" != "$ROOT_DIR" ]] \
      && ip netns list | grep -qw "^$NETNS"; then
    echo "the test bed of cluster '$NAME' belongs to the checkout $(cat "$OWNER_FILE");" \
      "run 'make cluster-down' there first (or use MODELDEPLOY_CLUSTER and other ranges)" >&2
    exit 1
  fi
  echo "$ROOT_DIR" >"$OWNER_FILE"
}

up() {
  claim
  check_ranges
  ip netns list | grep -qw "^$NETNS" || ip netns add "$NETNS"
  if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NODE_IF" netns "$NETNS"
  fi
  ip addr replace "$LINK_HOST_IP/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  in_node ip link set lo up
  in_node ip addr replace "$LINK_NODE_IP/30" dev "$NODE_IF"
  in_node ip link set "$NODE_IF" up
  # Routing and bridge netfilter inside the node only (both are per namespace); the
  # host's own ip_forward is left as it is.
  in_node sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # A Service address without a DNAT rule (no ready endpoint) stops in the node, never
  # goes back out, and the client learns it at once (ICMP unreachable, not a silent drop
  # that leaves it retrying its SYN).
  in_node ip route replace unreachable "$SERVICE_NET"
  # Host: the two ranges over the link, and blackholes for them underneath.
  ip route replace "$NODE_POD_CIDR" via "$LINK_NODE_IP" dev "$HOST_IF" src "$LINK_HOST_IP"
  ip route replace "$SERVICE_NET" via "$LINK_NODE_IP" dev "$HOST_IF" src "$LINK_HOST_IP" metric 10
  ip route replace blackhole "$POD_NET" metric 4000
  ip route replace blackhole "$SERVICE_NET" metric 4000
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  host_rules | nft -f -
  in_node nft delete table inet modeldeploy 2>/dev/null || true
  node_rules | in_node nft -f -
}

down() {
  if [[ -f "$OWNER_FILE" && "$(cat "$OWNER_FILE")" != "$ROOT_DIR" ]]; then
    echo "the test bed of cluster '$NAME' belongs to $(cat "$OWNER_FILE"): left alone" >&2
    return 0
  fi
  rm -f "$OWNER_FILE"
  # Deleting the namespace takes the node's end of the link, the bridge, the pods' host
  # veths and every rule inside with it; the host's end of a veth pair goes with its peer.
  ip netns list | grep -qw "^$NETNS" && ip netns delete "$NETNS"
  ip link delete "$HOST_IF" 2>/dev/null || true
  ip route delete "$NODE_POD_CIDR" 2>/dev/null || true
  ip route delete "$SERVICE_NET" metric 10 2>/dev/null || true
  ip route delete blackhole "$POD_NET" metric 4000 2>/dev/null || true
  ip route delete blackhole "$SERVICE_NET" metric 4000 2>/dev/null || true
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  nft delete table inet "$AGENT_TABLE" 2>/dev/null || true
}

# The API server listens on every address (it must answer on the link too): accept its
# port from loopback and the link only.
guard_apiserver() {
  nft add chain inet "$NFT_TABLE" input '{ type filter hook input priority filter; policy accept; }'
  nft flush chain inet "$NFT_TABLE" input
  nft add rule inet "$NFT_TABLE" input tcp dport "$1" iifname != "{ lo, $HOST_IF }" counter drop \
    comment '"api-server-only-from-loopback-and-the-link"'
}

# The chat agents the tests and the demo run (Clawdbot, OpenClaw) have tools that can
# fetch URLs, and a small model may call them. They run as AGENT_UID, whose packets may
# go to loopback and the test bed only: anything else is refused here, cluster up or not.
AGENT_UID=65534   # nobody
AGENT_TABLE=modeldeploy_agents
agent_rules() {
  cat <<EOF
table inet $AGENT_TABLE {
  chain output {
    type filter hook output priority filter; policy accept;
    meta skuid $AGENT_UID ip daddr != { 127.0.0.0/8, $POD_NET, $SERVICE_NET } counter reject comment "agents-reach-only-loopback-and-the-testbed"
    meta skuid $AGENT_UID meta nfproto ipv6 ip6 daddr != ::1 counter reject comment "agents-reach-no-ipv6-but-loopback"
  }
}
EOF
}

guard_agents() {
  nft delete table inet "$AGENT_TABLE" 2>/dev/null || true
  agent_rules | nft -f -
}

rules() {
  echo "# host"; nft list table inet "$NFT_TABLE"
  echo "# node namespace $NETNS"; in_node nft list table inet modeldeploy
}

# Exit 0 when the test bed's network is complete.
check() {
  ip netns list | grep -qw "^$NETNS" && ip link show "$HOST_IF" >/dev/null 2>&1 \
    && nft list table inet "$NFT_TABLE" >/dev/null 2>&1 \
    && [[ -n "$(ip route show type blackhole "$POD_NET")" ]]
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  rules) rules ;;
  check) check ;;
  guard-apiserver) guard_apiserver "$2" ;;
  guard-agents) guard_agents ;;
  *) echo "usage: $0 up|down|rules|check" >&2; exit 2 ;;
esac

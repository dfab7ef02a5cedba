#!/usr/bin/env bash
# Installs the Debian packages the e2e suite and demo need, only when missing.
set -euo pipefail
# iptables: the reference portmap plugin chained in our conflist needs it.
# iperf3: the throughput benchmark.
# nftables: `nft`, to look at the NAT table as a user would.
# containerd, runc, busybox-static: the kubelet cluster's nodes (busybox is
# the test workload's image).
# bird2: the baseline of the scale benchmark and test (BIRD, as Calico runs it).
pkgs=(frr iproute2 iputils-ping tcpdump iptables nftables iperf3 containerd runc busybox-static bird2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# So that `ip route` shows our routes as "proto nexthop".
install_proto_name() {
  local src dst=/etc/iproute2/rt_protos.d/nexthop.conf
  src="$(dirname "$0")/../deploy/iproute2/rt_protos.d/nexthop.conf"
  if [ "$(id -u)" = 0 ] && ! cmp -s "$src" "$dst"; then
    mkdir -p /etc/iproute2/rt_protos.d && cp "$src" "$dst" && echo "deps: installed $dst"
  fi
}
install_proto_name
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all present (${pkgs[*]})"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "deps: installing ${missing[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package starts FRR's own service; the tests run their own bgpd per namespace.
systemctl disable --now frr >/dev/null 2>&1 || service frr stop >/dev/null 2>&1 || true
# Likewise containerd: every node of the kubelet cluster runs its own.
systemctl disable --now containerd >/dev/null 2>&1 || true
# Likewise BIRD: the benchmark runs one per node namespace.
systemctl disable --now bird >/dev/null 2>&1 || true
echo "deps: installed ${missing[*]}"

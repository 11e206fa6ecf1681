#!/usr/bin/env bash
# Install what the chaos tests need on Debian: iproute2 (ip netns, veth,
# bridge, tc), nftables (partitions), baresip-core (the real phones of the SIP
# failover scenario) and iptables (iptables-legacy -j NFQUEUE: the userspace
# impairer used for loss + delay where the kernel has no sch_netem).
# Idempotent: installs only what is missing; prints what the kernel cannot do
# (tc netem, NFQUEUE). Run as root, e.g. from .ci/run:
#   ./chaos-tests/setup.sh
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

pkgs=()
{ have ip && have tc; } || pkgs+=(iproute2)
have nft || pkgs+=(nftables)
have baresip || pkgs+=(baresip-core)
have iptables-legacy || pkgs+=(iptables)

if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "chaos setup: need root to install ${pkgs[*]}" >&2
    exit 1
  fi
  echo "chaos setup: installing ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi

# What the kernel offers (information only: scenarios skip or degrade themselves).
if [ "$(id -u)" -eq 0 ]; then
  ns="tdmsetup$$"
  if ip netns add "$ns" 2>/dev/null; then
    if ip -n "$ns" link add p0 type veth peer name p1 2>/dev/null &&
       ip netns exec "$ns" tc qdisc add dev p0 root netem delay 1ms 2>/dev/null; then
      netem=yes
    else
      netem="no (kernel without sch_netem)"
    fi
    # NFQUEUE through iptables-legacy (nft's `queue` needs CONFIG_NFT_QUEUE,
    # which kernels without netem often lack too): the rule must load and the
    # namespace must have nfnetlink_queue.
    if have iptables-legacy &&
       ip netns exec "$ns" iptables-legacy -w -A OUTPUT -o lo -j NFQUEUE --queue-num 1 --queue-bypass 2>/dev/null &&
       ip netns exec "$ns" test -e /proc/net/netfilter/nfnetlink_queue; then
      nfqueue=yes
    else
      nfqueue="no (needs iptables-legacy and CONFIG_NETFILTER_XT_TARGET_NFQUEUE + CONFIG_NETFILTER_NETLINK_QUEUE)"
    fi
    ip netns del "$ns"
    if [ "$netem" = yes ]; then loss="tc netem"
    elif [ "$nfqueue" = yes ]; then loss="NFQUEUE impairer (chaos-tests impair)"
    else loss="degraded: nftables loss only, no delay"; fi
    echo "chaos setup: ok (ip netns: yes, nft: $(have nft && echo yes || echo no), tc netem: $netem, NFQUEUE: $nfqueue, baresip: $(have baresip && echo yes || echo no); loss scenario uses: $loss)"
  else
    echo "chaos setup: ip netns does not work here (container without CAP_SYS_ADMIN?): scenarios will skip" >&2
  fi
else
  echo "chaos setup: not root: scenarios will skip"
fi

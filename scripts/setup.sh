#!/usr/bin/env bash
# Install what tandem needs to build and test on a fresh Debian 12 machine.
# Idempotent: installs only what is missing. Run as root (or with sudo available).
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have cc || need_pkgs+=(build-essential)
have pkg-config || need_pkgs+=(pkg-config)
have curl || need_pkgs+=(curl)
have ip || need_pkgs+=(iproute2)        # ip netns, tc (failover + chaos tests)
have nft || need_pkgs+=(nftables)       # partitions in the chaos tests
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || need_pkgs+=(python3-aiosmtpd)  # SMTP server in the alarm mail tests
have baresip || need_pkgs+=(baresip-core)  # real SIP user agent in the media interop tests

if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi

"$(dirname "$0")/../iso-build/setup.sh" --ci   # tandem-iso CI tests (nft, systemd-analyze); full ISO tools: iso-build/setup.sh

if ! have cargo; then
  echo "setup: cargo not found. Install the Rust toolchain (rustup, stable >= 1.80) and re-run." >&2
  exit 1
fi
echo "setup: ok ($(cargo --version))"

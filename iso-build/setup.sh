#!/usr/bin/env bash
# Debian packages for building the tandem ISO and for its qemu tests.
# Idempotent: installs only what is missing. Run as root (or with sudo).
#   iso-build/setup.sh          everything (build + qemu boot tests)
#   iso-build/setup.sh --ci     only what CI's `cargo test -p tandem-iso` needs
set -euo pipefail
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have nft || need_pkgs+=(nftables)                       # firewall rules check
have systemd-analyze || need_pkgs+=(systemd)            # unit file check
if [ "${1:-}" != "--ci" ]; then
  have mmdebstrap || need_pkgs+=(mmdebstrap)
  have xorriso || need_pkgs+=(xorriso)
  have mksquashfs || need_pkgs+=(squashfs-tools)
  have mkfs.vfat || need_pkgs+=(dosfstools)
  have mcopy || need_pkgs+=(mtools)
  have grub-mkimage || need_pkgs+=(grub2-common)
  [ -d /usr/lib/grub/i386-pc ] || need_pkgs+=(grub-pc-bin)
  [ -d /usr/lib/grub/x86_64-efi ] || need_pkgs+=(grub-efi-amd64-bin)
  [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need_pkgs+=(ovmf)
  if ! have qemu-system-x86_64; then
    # qemu-utils from bookworm-backports (present on some machines) breaks
    # bookworm's qemu-system; take both from bookworm.
    need_pkgs+=(qemu-system-x86 qemu-utils/bookworm)
  fi
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "iso-build/setup: installing Debian packages: ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${need_pkgs[@]}"
fi
echo "iso-build/setup: ok"

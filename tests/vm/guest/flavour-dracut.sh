#!/bin/sh
# Runs in the dracut chroot (a copy of the rootfs). $@: packages-dracut.txt.
# Installing dracut removes initramfs-tools and zfs-initramfs (Debian: Conflicts).
set -eu
apt-get update -q
apt-get install -y -q --no-install-recommends "$@"
apt-get clean
dracut --force --regenerate-all

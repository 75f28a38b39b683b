#!/bin/sh
# Runs in each flavour chroot after guest/overlay is copied in. $1: the shared hostid.
set -eu
# Helper VM and guest must agree on the hostid, or the initrd refuses to import the pools.
zgenhostid -f "$1"
# No zpool.cache is shipped: the real root finds tank by scanning.
systemctl enable zkv-e2e-marker.service zfs-import-scan.service

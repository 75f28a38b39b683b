#!/bin/sh
# PID 1 of the helper VM for a derived image (disk_delta.py). /dev/vda: a qcow2 overlay of the
# base image's disk; /dev/vdc: a tar of what the payload changed in the root file system, with
# the paths it removed in /zkv-e2e-removed (NUL-separated); /dev/vdd: the new /boot file system.
# The root passphrase comes from the kernel command line (a test constant): zkv.rootpass=.
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

finish() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 60
}
trap 'echo "ZKV-HELPER-FAIL (line $LINENO)"; finish' EXIT

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /mnt
mount -t tmpfs tmpfs /run

rootpass=''
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case $arg in
	zkv.rootpass=*) rootpass=${arg#*=} ;;
	esac
done
[ -n "$rootpass" ]

# The whole partition, zeros included: stale journal blocks of the old /boot must not survive.
dd if=/dev/vdd of=/dev/vda1 bs=1M status=none

modprobe zfs
echo "helper: OpenZFS $(cat /sys/module/zfs/version), hostid $(hostid)"
zpool import -N -R /mnt/root rpool
printf '%s' "$rootpass" | zfs load-key rpool/ROOT/debian
zfs mount rpool/ROOT/debian

echo "helper: applying the payload's changes"
tar -x -f /dev/vdc -C /mnt/root --numeric-owner --preserve-permissions --xattrs --acls
cd /mnt/root
xargs -0 -r -a zkv-e2e-removed rm -rf --one-file-system --
rm -f zkv-e2e-removed
cd /

zpool export rpool
trap - EXIT
echo "ZKV-HELPER-OK"
finish

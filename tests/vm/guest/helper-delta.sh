#!/bin/sh
# PID 1 of the helper VM for a derived image (disk_delta.py). /dev/vda: a qcow2 overlay of the
# base image's disk; /dev/vdc: a tar of what the payload changed in the root file system, with
# the paths it removed in /zkv-e2e-removed (NUL-separated); /dev/vdd: the new /boot file system.
# The root's secret comes from the kernel command line (test constants): zkv.rootpass= (the
# ZFS layout: rpool/ROOT/debian's passphrase) or zkv.rootluks=UUID and zkv.rootkey= (the LUKS
# layout: rpool on a LUKS2 partition, tests/vm/luks_layout.py).
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

rootpass='' rootluks='' rootkey=''
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case $arg in
	zkv.rootpass=*) rootpass=${arg#*=} ;;
	zkv.rootluks=*) rootluks=${arg#*=} ;;
	zkv.rootkey=*) rootkey=${arg#*=} ;;
	esac
done
[ -n "$rootpass" ] || { [ -n "$rootluks" ] && [ -n "$rootkey" ]; }

# The whole partition, zeros included: stale journal blocks of the old /boot must not survive.
dd if=/dev/vdd of=/dev/vda1 bs=1M status=none

modprobe zfs
echo "helper: OpenZFS $(cat /sys/module/zfs/version), hostid $(hostid)"
if [ -n "$rootluks" ]; then
	modprobe dm_crypt
	printf '%s' "$rootkey" | cryptsetup open --key-file=- /dev/vda2 "luks-$rootluks"
	zpool import -N -R /mnt/root -d "/dev/mapper/luks-$rootluks" rpool
else
	zpool import -N -R /mnt/root rpool
	printf '%s' "$rootpass" | zfs load-key rpool/ROOT/debian
fi
zfs mount rpool/ROOT/debian

echo "helper: applying the payload's changes"
tar -x -f /dev/vdc -C /mnt/root --numeric-owner --preserve-permissions --xattrs --acls
cd /mnt/root
xargs -0 -r -a zkv-e2e-removed rm -rf --one-file-system --
rm -f zkv-e2e-removed
cd /

zpool export rpool
[ -z "$rootluks" ] || cryptsetup close "luks-$rootluks"
trap - EXIT
echo "ZKV-HELPER-OK"
finish

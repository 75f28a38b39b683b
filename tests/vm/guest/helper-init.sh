#!/bin/sh
# PID 1 of the helper VM. Its root is a read-only ext4 copy of the guest chroot; it creates
# rpool and tank on /dev/vda, copies itself into rpool/ROOT/debian and powers off.
# Secrets come from the kernel command line (test constants): zkv.rootpass=, zkv.datakey=.
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

rootpass='' datakey=''
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case $arg in
	zkv.rootpass=*) rootpass=${arg#*=} ;;
	zkv.datakey=*) datakey=${arg#*=} ;;
	esac
done
[ -n "$rootpass" ] && [ -n "$datakey" ]

modprobe zfs
echo "helper: OpenZFS $(cat /sys/module/zfs/version), hostid $(hostid)"

zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O acltype=posixacl \
	-O xattr=sa -O relatime=on -O mountpoint=none -R /mnt/root rpool /dev/vda2
zfs create -o canmount=off -o mountpoint=none rpool/ROOT
printf '%s' "$rootpass" | zfs create -o encryption=aes-256-gcm -o keyformat=passphrase \
	-o keylocation=prompt -o canmount=noauto -o mountpoint=/ rpool/ROOT/debian
zpool set bootfs=rpool/ROOT/debian rpool
zfs mount rpool/ROOT/debian

echo "helper: copying the root file system"
cp -ax /. /mnt/root/
rm -rf /mnt/root/zkv-e2e-helper /mnt/root/lost+found /mnt/root/boot/*

zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O mountpoint=none \
	-R /mnt/data tank /dev/vda3
printf '%s' "$datakey" | zfs create -o encryption=aes-256-gcm -o keyformat=hex \
	-o keylocation=prompt -o mountpoint=/srv/secure tank/secure
echo "zkv-e2e canary" >/mnt/data/srv/secure/canary

zfs list -o name,encryptionroot,keylocation,mountpoint
zpool export tank
zpool export rpool
trap - EXIT
echo "ZKV-HELPER-OK"
finish

#!/bin/sh
# PID 1 of the helper VM for the LUKS layout (tests/vm/luks_layout.py). Its root is a read-only
# ext4 copy of the guest chroot (cryptsetup installed); it writes /dev/vda:
#   p2: LUKS2 -> rpool (no native encryption) holding rpool/ROOT/debian, a copy of itself;
#   /srv/pools/files-0..N-1.img on that root: sparse LUKS2 files -> the RAID-Z2 pool "files";
#   p3: tank (tank/secure natively encrypted) with the zvol tank/vol: LUKS2 -> the pool "nest"
#       (nest/secure natively encrypted).
# No pool goes into a cache file: the boots import them by scan, as the rest of the test bed.
# Mappings are named as zkv names them (zkv/keyload/luks.py mapping_name), so the pools' labels
# carry the paths the guest opens at boot. Test constants on the kernel command line:
# zkv.luksuuid=, zkv.files=, zkv.filemib=, zkv.keyseed= (each key: sha256 of "SEED:NAME"),
# zkv.datakey= (tank/secure).
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

uuid='' files='' filemib='' seed='' datakey=''
read -r cmdline </proc/cmdline
for arg in $cmdline; do
	case $arg in
	zkv.luksuuid=*) uuid=${arg#*=} ;;
	zkv.files=*) files=${arg#*=} ;;
	zkv.filemib=*) filemib=${arg#*=} ;;
	zkv.keyseed=*) seed=${arg#*=} ;;
	zkv.datakey=*) datakey=${arg#*=} ;;
	esac
done
[ -n "$uuid" ] && [ -n "$files" ] && [ -n "$filemib" ] && [ -n "$seed" ] && [ -n "$datakey" ]

# No newline: cryptsetup --key-file=- takes every byte as the key.
key() { printf '%s' "$(printf '%s:%s' "$seed" "$1" | sha256sum | cut -c1-64)"; }
mapping() { printf 'zkv-%s' "$(printf '%s' "$1" | sha256sum | cut -c1-16)"; }
# LUKS2 with a cheap PBKDF: these keys are 256-bit random-looking strings, and TCG is slow.
format() { # DEVICE NAME [UUID]
	key "$2" | cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
		--pbkdf-force-iterations 1000 ${3:+--uuid "$3"} --key-file=- "$1"
}
luks_open() { # DEVICE NAME MAPPING
	key "$2" | cryptsetup open --key-file=- "$1" "$3"
}

modprobe dm_crypt
modprobe loop 2>/dev/null || true
modprobe zfs
echo "helper: OpenZFS $(cat /sys/module/zfs/version), hostid $(hostid)"

format /dev/vda2 root "$uuid"
luks_open /dev/vda2 root "luks-$uuid"
zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O acltype=posixacl \
	-O xattr=sa -O relatime=on -O mountpoint=none -R /mnt/root rpool "/dev/mapper/luks-$uuid"
zfs create -o canmount=off -o mountpoint=none rpool/ROOT
zfs create -o canmount=noauto -o mountpoint=/ rpool/ROOT/debian
zpool set bootfs=rpool/ROOT/debian rpool
zfs mount rpool/ROOT/debian

echo "helper: copying the root file system"
cp -ax /. /mnt/root/
rm -rf /mnt/root/zkv-e2e-helper /mnt/root/lost+found /mnt/root/boot/*

echo "helper: the file-backed pool"
install -d -m 0700 /mnt/root/srv/pools
vdevs=''
i=0
while [ "$i" -lt "$files" ]; do
	file=/srv/pools/files-$i.img
	truncate -s "${filemib}M" "/mnt/root$file"
	chmod 0600 "/mnt/root$file"
	format "/mnt/root$file" "files-$i"
	loop=$(losetup --find --show "/mnt/root$file")
	luks_open "$loop" "files-$i" "$(mapping "loopfile:$file")"
	vdevs="$vdevs /dev/mapper/$(mapping "loopfile:$file")"
	i=$((i + 1))
done
# shellcheck disable=SC2086 # one word per vdev
zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O mountpoint=none \
	-R /mnt/files files raidz2 $vdevs
zfs create -o mountpoint=/srv/files files/data
echo "zkv-e2e files canary" >/mnt/files/srv/files/canary

echo "helper: tank, its zvol and the pool on it"
zpool create -f -o ashift=12 -o cachefile=none -O compression=lz4 -O mountpoint=none \
	-R /mnt/data tank /dev/vda3
printf '%s' "$datakey" | zfs create -o encryption=aes-256-gcm -o keyformat=hex \
	-o keylocation=prompt -o mountpoint=/srv/secure tank/secure
echo "zkv-e2e canary" >/mnt/data/srv/secure/canary
zfs create -s -V 128M tank/vol
n=0
until [ -b /dev/zd0 ]; do # no udev here: the kernel's own node
	n=$((n + 1))
	[ "$n" -lt 100 ]
	sleep 0.1
done
format /dev/zd0 zvol
luks_open /dev/zd0 zvol "$(mapping luks:/dev/zvol/tank/vol)"
zpool create -f -o ashift=12 -o cachefile=none -O mountpoint=none -R /mnt/nest nest \
	"/dev/mapper/$(mapping luks:/dev/zvol/tank/vol)"
key nest | zfs create -o encryption=aes-256-gcm -o keyformat=hex -o keylocation=prompt \
	-o mountpoint=/srv/nest nest/secure
echo "zkv-e2e nest canary" >/mnt/nest/srv/nest/canary

zfs list -o name,encryptionroot,keylocation,mountpoint
zpool list -v -P
zpool export nest
cryptsetup close "$(mapping luks:/dev/zvol/tank/vol)"
zpool export files
i=0
while [ "$i" -lt "$files" ]; do
	cryptsetup close "$(mapping "loopfile:/srv/pools/files-$i.img")"
	i=$((i + 1))
done
losetup -D
zpool export tank
zpool export rpool
cryptsetup close "luks-$uuid"
trap - EXIT
echo "ZKV-HELPER-OK"
finish

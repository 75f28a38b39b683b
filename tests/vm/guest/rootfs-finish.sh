#!/bin/sh
# Runs in the fresh rootfs chroot: make sure dkms built OpenZFS for every guest kernel.
# dkms builds for the kernels under /lib/modules, not for the host's `uname -r`.
set -eu
found=0
for moddir in /lib/modules/*; do
	kver=${moddir##*/}
	[ -d "/usr/src/linux-headers-$kver" ] || continue
	found=1
	if ! ls "$moddir"/updates/dkms/zfs.ko* >/dev/null 2>&1; then
		echo "zfs.ko missing for $kver: running dkms autoinstall"
		dkms autoinstall -k "$kver"
	fi
	ls "$moddir"/updates/dkms/zfs.ko* >/dev/null
	echo "OpenZFS module for $kver: $(modinfo -F version -k "$kver" zfs)"
done
[ "$found" = 1 ] || { echo "no guest kernel with headers found" >&2; exit 1; }

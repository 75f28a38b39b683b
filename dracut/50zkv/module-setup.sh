#!/bin/bash
# zkv dracut module: load the ZFS keys with a key the zkv gateway releases once the owner
# approves, before 90zfs's own prompt. Anything missing aborts the image build (the previous
# image stays in place); nothing here can fail the boot.
# shellcheck disable=SC2154 # initdir, moddir and systemdsystemunitdir are set by dracut

# The paths (ZKV_CONF, ZKV_KEYSTORE, ZKV_PYZ, ...) and the helpers both flavours share.
zkv_lib_sh=${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh}
# shellcheck source=zkv_early/zkv-lib.sh
. "$zkv_lib_sh" 2>/dev/null || zkv_lib_sh=""

# dracut ignores install()'s status, so a fatal problem must end dracut itself (as inst_hook
# does); its EXIT trap removes the half-built image.
zkv_fatal() {
    dfatal "zkv: $*"
    exit 1
}

# The keystore's LUKS entries (header, in the clear) in $zkv_luks; empty when it has none.
zkv_luks_entries() {
    zkv_luks=$("$ZKV_INITRAMFS_FILES" luks "$ZKV_KEYSTORE") \
        || zkv_fatal "cannot read the entries of $ZKV_KEYSTORE"
}

check() {
    if [ -z "$zkv_lib_sh" ]; then
        derror "zkv: ${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh} is missing (reinstall zkv)"
        return 1
    fi
    # Only on hosts set up with `zkv init` and `zkv enroll`; an explicit add_dracutmodules+=zkv
    # on a host without them makes dracut fail, which is what the admin wants to see.
    zkv_set_up || return 1
    # From here on the host boots through zkv: a module dracut cannot include would leave it
    # out silently (exit status 0, an image without zkv), so a missing part ends the build.
    # check() runs in dracut's own shell, so exit stops dracut before it writes the image.
    require_binaries python3 zfs \
        || zkv_fatal "python3 or zfs is missing: apt install python3 zfsutils-linux"
    # network-legacy by name: dracut's "network" alone picks systemd-networkd where dbus is
    # installed (no ifup then) and cannot be installed at all without dbus.
    zkv_luks_entries
    if [ -n "$zkv_luks" ]; then
        require_binaries cryptsetup blkid \
            || zkv_fatal "the keystore has LUKS entries but cryptsetup is missing: apt install cryptsetup-bin"
    fi
    set -- "${dracutbasedir:-/usr/lib/dracut}"/modules.d/[0-9][0-9]network-legacy
    if ! { [ -d "$1" ] && require_binaries dhclient && require_any_binary arping arping2; }; then
        zkv_fatal "dracut's network-legacy module cannot be installed: apt install dracut-network"
    fi
    return 0
}

depends() {
    # network-legacy first, so that network's own choice of handler is network-legacy.
    echo zfs network-legacy network systemd
}

installkernel() {
    # A TPM-held host key signs through /dev/tpmrm0: the kernel's TPM drivers (udev loads the
    # one the firmware describes), or no new image.
    if zkv_hostkey_in_tpm; then
        instmods tpm_tis tpm_crb \
            || zkv_fatal "no TPM drivers (tpm_tis, tpm_crb): the TPM-held host key could not sign"
    fi
    # LUKS entries: the client opens them before the import, with dm-crypt and its ciphers.
    zkv_luks_entries
    if [ -n "$zkv_luks" ]; then
        instmods dm_crypt =crypto \
            || zkv_fatal "no dm_crypt module: the keystore's LUKS devices could not be opened"
    fi
}

# LUKS entries: cryptsetup, the list the hooks look for, and the unit holding the import (and
# any systemd-cryptsetup unit) until the client has opened them.
zkv_install_luks() {
    zkv_luks_entries
    [ -n "$zkv_luks" ] || return 0
    inst_multiple cryptsetup blkid || zkv_fatal "cryptsetup or blkid is missing: apt install cryptsetup-bin"
    mkdir -p "$initdir${ZKV_IMAGE_DEVICES%/*}"
    echo "$zkv_luks" >"$initdir$ZKV_IMAGE_DEVICES" || zkv_fatal "cannot write $ZKV_IMAGE_DEVICES"
    inst_script "$moddir/zkv-wait-devices.sh" "$ZKV_DRACUT_DEVICES_SH" \
        || zkv_fatal "cannot install zkv-wait-devices.sh"
    inst_simple "$moddir/zkv-wait-devices.service" "$systemdsystemunitdir/zkv-wait-devices.service" \
        || zkv_fatal "cannot install zkv-wait-devices.service"
    inst_simple "$ZKV_CRYPTSETUP_DROPIN" \
        "$systemdsystemunitdir/systemd-cryptsetup@.service.d/50-zkv.conf" \
        || zkv_fatal "cannot install $ZKV_CRYPTSETUP_DROPIN"
    systemctl -q --root "$initdir" add-wants sysinit.target zkv-wait-devices.service \
        || zkv_fatal "cannot enable zkv-wait-devices.service"
}

install() {
    local files ca src dst

    inst_multiple python3 systemd-ask-password ip \
        || zkv_fatal "python3, systemd-ask-password or ip is missing"
    inst_simple "$ZKV_PYZ" || zkv_fatal "$ZKV_PYZ is missing"
    inst_simple "$zkv_lib_sh" "$ZKV_LIB_SH" || zkv_fatal "cannot install $zkv_lib_sh"
    # The interpreter and exactly the modules the zipapp imports (as bytecode), not the stdlib.
    files=$("$ZKV_INITRAMFS_FILES" python "$ZKV_PYZ") \
        || zkv_fatal "cannot list the Python files the boot client needs"
    echo "$files" | while read -r src dst; do
        inst "$src" "$dst" || exit 1
    done || zkv_fatal "cannot install the Python runtime"

    inst_simple "$ZKV_CONF" || zkv_fatal "cannot install $ZKV_CONF"
    # The CA early.conf pins; nothing when it pins the gateway's key only (pin_sha256).
    ca=$("$ZKV_INITRAMFS_FILES" ca "$ZKV_CONF") || zkv_fatal "no usable gateway CA or pin in $ZKV_CONF"
    if [ -n "$ca" ]; then
        inst_simple "$ca" || zkv_fatal "cannot install $ca"
    fi
    # Secrets: the image is written with umask 077 by dracut; keep the files 0600 too.
    inst_simple "$ZKV_KEYSTORE" "$ZKV_IMAGE_KEYSTORE" || zkv_fatal "cannot install the keystore"
    inst_simple "$ZKV_HOSTKEY" "$ZKV_IMAGE_HOSTKEY" || zkv_fatal "cannot install the host key"
    chmod 0600 "$initdir$ZKV_IMAGE_KEYSTORE" "$initdir$ZKV_IMAGE_HOSTKEY"
    [ -f /etc/hostname ] && inst_simple /etc/hostname

    # The client runs from the start of the initrd (zkv-early.service, wanted by sysinit.target,
    # no ordering: it starts with the first transaction). pre-mount 50, after the pool import
    # and before 90zfs's zfs-load-key.sh (pre-mount 90), tells it to load the keys and waits;
    # 90zfs then finds the key loaded and does not prompt.
    inst_script "$moddir/zkv-early.sh" "$ZKV_DRACUT_CLIENT_SH" \
        || zkv_fatal "cannot install zkv-early.sh"
    inst_simple "$moddir/zkv-early.service" "$systemdsystemunitdir/zkv-early.service" \
        || zkv_fatal "cannot install zkv-early.service"
    systemctl -q --root "$initdir" add-wants sysinit.target zkv-early.service \
        || zkv_fatal "cannot enable zkv-early.service"
    inst_hook pre-mount 50 "$moddir/zkv-load-key.sh"
    zkv_install_luks
    inst_hook cleanup 50 "$moddir/zkv-cleanup.sh"

    # The network: zkv-early.sh brings it up itself with network-legacy's ifup, not through
    # rd.neednet=1, which makes dracut's initqueue (and so the whole boot, pre-mount included)
    # wait for a DHCP lease the root file system does not need. zkv_neednet="yes" in a
    # dracut.conf.d file sets rd.neednet=1 anyway (dracut then brings the network up).
    [ -e "$initdir/sbin/ifup" ] || [ -e "$initdir/usr/sbin/ifup" ] \
        || zkv_fatal "no ifup in the image (dracut's network-legacy module)"
    if [ "${zkv_neednet:-no}" = yes ]; then
        mkdir -p "$initdir/etc/cmdline.d"
        echo "rd.neednet=1" > "$initdir/etc/cmdline.d/50zkv.conf"
    fi
}

#!/bin/sh
# zkv, ExecStart of zkv-early.service (installed as /usr/lib/zkv/zkv-early.sh): the boot client
# from the moment the initrd's systemd runs, so Python's start, the network and the owner's
# approval overlap udev and the pool import. The client opens the keystore, then waits for
# /run/zkv/go, which the pre-mount hook creates once the pools are imported, and only then
# loads the keys. zkv=off (rd.zkv=0): nothing at all.

# shellcheck source=/dev/null
command -v getarg >/dev/null 2>&1 || . "${ZKV_DRACUT_LIB:-/lib/dracut-lib.sh}"
# shellcheck source=zkv_early/zkv-lib.sh
. "${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh}"

# The root= forms 90zfs accepts (a plain pool/ds with rootfstype=zfs too; `+` stands for a
# blank in dracut); AUTO or none: the client takes every imported entry.
zkv_root_of_cmdline() {
    zkv_spec=$(getarg root=)
    if [ -n "$zkv_spec" ] && [ "$(getarg rootfstype=)" = zfs ]; then
        case "$zkv_spec" in zfs:* | ZFS=*) ;; *) zkv_spec="ZFS=$zkv_spec" ;; esac
    fi
    zkv_root_dataset "$zkv_spec"
    case "$zkv_root" in
        *+*) zkv_root=$(echo "$zkv_root" | sed 's,+, ,g') ;;
    esac
}

if zkv_disabled "$(getcmdline)"; then
    echo "zkv: disabled on the kernel command line"
    exit 0
fi

# The network, unless dracut brings it up itself (rd.neednet=1, ip=, a network root): every
# Ethernet link gets network-legacy's ifup in manual mode (DHCP, or what ip= says), in the
# background: the client waits for an address and route (bounded) on its own, and nothing else
# in the initrd waits for the network. A link is taken only once udev is done with it (its
# database entry exists), so never under the kernel's name about to be renamed. Looks for 60 s
# (the client's default network limit) or until a link is set up. dracut's cleanup hooks stop
# dhclient; zkv's takes the links down. The loop runs while udev and the import want the CPU:
# shell builtins only, no process per look.
zkv_network() {
    getargbool 0 rd.neednet && return 0
    [ -n "$(getarg ip=)" ] || [ -n "$(getarg netroot=)" ] && return 0
    zkv_n=0
    while [ "$zkv_n" -lt 300 ]; do
        for zkv_dev in "${ZKV_SYS_NET:-/sys/class/net}"/*; do
            zkv_type="" zkv_index=""
            read -r zkv_type 2>/dev/null <"$zkv_dev/type"
            [ "$zkv_type" = 1 ] || continue
            [ -e "$zkv_dev/wireless" ] && continue
            read -r zkv_index 2>/dev/null <"$zkv_dev/ifindex"
            [ -e "${ZKV_UDEV_DATA:-/run/udev/data}/n$zkv_index" ] || continue
            [ -e "$ZKV_RUN/ifup.${zkv_dev##*/}" ] && continue
            : >"$ZKV_RUN/ifup.${zkv_dev##*/}"
            ifup "${zkv_dev##*/}" -m >/dev/null 2>&1 &
        done
        for zkv_f in "${ZKV_DRACUT_TMP:-/tmp}"/net.*.did-setup; do
            [ -e "$zkv_f" ] && return 0
        done
        zkv_n=$((zkv_n + 1))
        sleep 0.2
    done
}

# The pre-mount hook reads this shell's pid from $ZKV_RUN/started and the client's exit status
# from $ZKV_RUN/status (as the initramfs-tools hooks do): no systemctl call on the root's path.
mkdir -p "$ZKV_RUN" && chmod 0700 "$ZKV_RUN"
zkv_network &
zkv_root_of_cmdline
echo $$ >"$ZKV_RUN/started"
if [ -n "$zkv_root" ]; then
    python3 -I -S "$ZKV_PYZ" unlock --root "$zkv_root" --after "$ZKV_RUN/go"
else
    python3 -I -S "$ZKV_PYZ" unlock --after "$ZKV_RUN/go"
fi
zkv_rc=$?
# One write(2): a reader sees the file empty or whole (zkv_status waits for whole).
echo "$zkv_rc" >"$ZKV_RUN/status"
exit "$zkv_rc"

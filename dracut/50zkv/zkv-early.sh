#!/bin/sh
# zkv, ExecStart of zkv-early.service (installed as /usr/lib/zkv/zkv-early.sh): the boot client
# from the moment the initrd's systemd runs, so Python's start, the network and the owner's
# approval overlap udev and the pool import. The client opens the keystore, then waits for
# /run/zkv/go, which the pre-mount hook creates once the pools are imported, and only then
# loads the keys. zkv=off (rd.zkv=0): nothing at all.

# shellcheck source=/dev/null
command -v getarg >/dev/null 2>&1 || . "${ZKV_DRACUT_LIB:-/lib/dracut-lib.sh}"

# The root= forms 90zfs accepts; AUTO or none: the client takes every imported entry.
zkv_root_dataset() {
    zkv_root=$(getarg root=)
    case "$zkv_root" in
        zfs:AUTO | ZFS=AUTO | "") zkv_root="" ;;
        zfs:*) zkv_root=${zkv_root#zfs:} ;;
        ZFS=*) zkv_root=${zkv_root#ZFS=} ;;
        *) [ "$(getarg rootfstype=)" = zfs ] || zkv_root="" ;;
    esac
    zkv_root=$(echo "$zkv_root" | sed 's,+, ,g')
}

zkv_off=$(getarg rd.zkv=)
[ -n "$zkv_off" ] || zkv_off=$(getarg zkv=)
case "$zkv_off" in
    [Oo][Ff][Ff] | 0 | [Nn][Oo] | [Ff][Aa][Ll][Ss][Ee])
        echo "zkv: disabled on the kernel command line"
        exit 0
        ;;
esac

zkv_run=${ZKV_RUN:-/run/zkv}
mkdir -p "$zkv_run" && chmod 0700 "$zkv_run"
zkv_root_dataset
if [ -n "$zkv_root" ]; then
    exec python3 -I -S /usr/lib/zkv/zkv-early.pyz unlock --root "$zkv_root" --after "$zkv_run/go"
fi
exec python3 -I -S /usr/lib/zkv/zkv-early.pyz unlock --after "$zkv_run/go"

#!/bin/sh
# zkv, cleanup hook (just before switch_root): stop the boot client if it still runs, take
# down the network brought up for the gateway and wipe zkv's leftovers. /run/zkv/handover
# (data-pool keys on tmpfs) stays: the real root's zkv-load-keys.service loads and wipes it.
# Sourced: no exit, names prefixed.

zkv_cleanup() {
    [ -f /usr/lib/zkv/zkv-early.pyz ] || return 0
    # Normally long finished (the pre-mount hook waited for it): its status is there. Still
    # running (the root's key came from 90zfs's prompt): stopped before its files are wiped.
    zkv_pid=""
    read -r zkv_pid 2>/dev/null </run/zkv/started
    if [ -n "$zkv_pid" ] && [ ! -e /run/zkv/status ] && kill -0 "$zkv_pid" 2>/dev/null; then
        systemctl stop zkv-early.service
    fi
    for zkv_dev in /sys/class/net/*; do
        zkv_dev=${zkv_dev##*/}
        [ "$zkv_dev" = lo ] && continue
        ip addr flush dev "$zkv_dev" 2>/dev/null
        ip link set dev "$zkv_dev" down 2>/dev/null
    done
    # One rm (each process counts on the root's path); this is sourced: no `set --`.
    if [ -e /run/zkv/handover ]; then
        zkv_rm=""
        for zkv_f in /run/zkv/* /run/zkv/.[!.]*; do
            [ -e "$zkv_f" ] && [ "$zkv_f" != /run/zkv/handover ] && zkv_rm="$zkv_rm $zkv_f"
        done
        # shellcheck disable=SC2086 # zkv's own file names, no blanks
        [ -z "$zkv_rm" ] || rm -rf $zkv_rm
    else
        rm -rf /run/zkv
    fi
    unset zkv_dev zkv_f zkv_pid zkv_rm
}

zkv_cleanup

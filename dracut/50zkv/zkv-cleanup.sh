#!/bin/sh
# zkv, cleanup hook (just before switch_root): stop the boot client if it still runs, take
# down the network brought up for the gateway and wipe zkv's leftovers. /run/zkv/handover
# (data-pool keys on tmpfs) stays: the real root's zkv-load-keys.service loads and wipes it.
# Sourced: no exit, names prefixed.

zkv_cleanup() {
    [ -f /usr/lib/zkv/zkv-early.pyz ] || return 0
    # Normally long finished (the pre-mount hook waited for it); stopped by switch-root anyway.
    if systemctl -q is-active zkv-early.service 2>/dev/null; then
        systemctl stop zkv-early.service
    fi
    for zkv_dev in /sys/class/net/*; do
        zkv_dev=${zkv_dev##*/}
        [ "$zkv_dev" = lo ] && continue
        ip addr flush dev "$zkv_dev" 2>/dev/null
        ip link set dev "$zkv_dev" down 2>/dev/null
    done
    for zkv_f in /run/zkv/* /run/zkv/.[!.]*; do
        [ -e "$zkv_f" ] && [ "$zkv_f" != /run/zkv/handover ] && rm -rf "$zkv_f"
    done
    unset zkv_dev zkv_f
}

zkv_cleanup

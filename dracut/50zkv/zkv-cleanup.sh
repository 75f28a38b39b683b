#!/bin/sh
# zkv, cleanup hook (just before switch_root): stop the boot client if it still runs, take
# down the network brought up for the gateway and wipe zkv's leftovers. The handover (data-pool
# keys on tmpfs) stays: the real root's zkv-load-keys.service loads and wipes it.
# Sourced: no exit, names prefixed.

# shellcheck source=zkv_early/zkv-lib.sh
. "${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh}"

zkv_cleanup() {
    [ -f "$ZKV_PYZ" ] || return 0
    # Normally long finished (the pre-mount hook waited for it): its status is there. Still
    # running (the root's key came from 90zfs's prompt): stopped before its files are wiped.
    zkv_pid=""
    read -r zkv_pid 2>/dev/null <"$ZKV_RUN/started"
    if [ -n "$zkv_pid" ] && ! zkv_status && kill -0 "$zkv_pid" 2>/dev/null; then
        systemctl stop zkv-early.service
    fi
    zkv_links_down
    zkv_wipe_run
    unset zkv_dev zkv_f zkv_pid zkv_rc
}

zkv_cleanup

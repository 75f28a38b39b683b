#!/bin/sh
# zkv, pre-mount hook 50 (sourced by dracut-pre-mount.service, before 90zfs's prompt at 90).
# The boot client has been running in zkv-early.service since the initrd started (network,
# the gateway's approval racing the recovery passphrase of systemd-ask-password, the keystore
# opened). Here, once the pools are imported, it is told to load the keys and waited for
# (zkv_go_and_wait, shared with initramfs-tools). Whatever it returns, 90zfs prompts if the key
# is still not loaded, so this never stops the boot. Sourced: no exit, names prefixed.

# shellcheck source=zkv_early/zkv-lib.sh
. "${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh}"

ZKV_UNIT=zkv-early.service

# The client's exit status, once zkv-early.sh has written it: said on the console unless 0.
zkv_report() {
    zkv_status
    [ "${zkv_rc:-1}" = 0 ] || info "zkv: not unlocked (exit ${zkv_rc:-?}); OpenZFS will ask"
}

zkv_load_key() {
    # Only the systemd initrd prompts at pre-mount 90; without systemd there is nothing to beat.
    [ -n "$DRACUT_SYSTEMD" ] || return 0
    [ -f "$ZKV_PYZ" ] || return 0
    # Never started (zkv=off), or gone without a status: 90zfs asks.
    zkv_pid=""
    read -r zkv_pid 2>/dev/null <"$ZKV_RUN/started"
    case "$zkv_pid" in
        "" | *[!0-9]*) return 0 ;;
    esac
    # It already gave up (denied, timed out, failed): 90zfs asks.
    if zkv_status || ! kill -0 "$zkv_pid" 2>/dev/null; then
        zkv_report
        return 0
    fi

    # The generator orders pre-mount after zfs-import.target; wait anyway, bounded (60 s).
    zkv_n=0
    while [ "$(systemctl is-active zfs-import.target)" != active ]; do
        zkv_n=$((zkv_n + 1))
        if [ "$zkv_n" -gt 600 ]; then
            warn "zkv: pools not imported, stopping the boot client"
            systemctl --no-block stop "$ZKV_UNIT"
            return 0
        fi
        sleep 0.1
    done

    # Go: the client loads the keys of the root's pool(s) and hands the others over.
    zkv_go_and_wait "$zkv_pid"
    if [ $? -eq 1 ]; then
        warn "zkv: the boot client did not finish in time, stopping it"
        systemctl --no-block stop "$ZKV_UNIT"
        return 0
    fi
    zkv_report
}

zkv_load_key
unset zkv_n zkv_pid zkv_rc zkv_limit zkv_max

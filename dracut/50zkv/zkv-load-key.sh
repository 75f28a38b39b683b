#!/bin/sh
# zkv, pre-mount hook 50 (sourced by dracut-pre-mount.service, before 90zfs's prompt at 90).
# Runs the boot client, which waits for the gateway's approval while systemd-ask-password
# offers the recovery passphrase. Whatever it returns, 90zfs prompts if the key is still not
# loaded, so this never stops the boot. Sourced: no exit, names prefixed.

zkv_root_dataset() {
    # The root= forms 90zfs accepts; AUTO or none: let the client take every imported entry.
    zkv_root=$(getarg root=)
    case "$zkv_root" in
        zfs:AUTO | ZFS=AUTO | "") zkv_root="" ;;
        zfs:*) zkv_root=${zkv_root#zfs:} ;;
        ZFS=*) zkv_root=${zkv_root#ZFS=} ;;
        *) [ "$(getarg rootfstype=)" = zfs ] || zkv_root="" ;;
    esac
    zkv_root=$(echo "$zkv_root" | sed 's,+, ,g')
}

zkv_load_key() {
    # Only the systemd initrd prompts at pre-mount 90; without systemd there is nothing to beat.
    [ -n "$DRACUT_SYSTEMD" ] || return 0
    [ -f /usr/lib/zkv/zkv-early.pyz ] || return 0

    # The generator orders pre-mount after zfs-import.target; wait anyway, bounded (60 s).
    zkv_n=0
    while [ "$(systemctl is-active zfs-import.target)" != active ]; do
        zkv_n=$((zkv_n + 1))
        [ "$zkv_n" -le 600 ] || { warn "zkv: pools not imported, skipping"; return 0; }
        sleep 0.1
    done

    zkv_root_dataset
    if [ -n "$zkv_root" ]; then
        python3 -I /usr/lib/zkv/zkv-early.pyz unlock --root "$zkv_root"
    else
        python3 -I /usr/lib/zkv/zkv-early.pyz unlock
    fi
    zkv_rc=$?
    [ "$zkv_rc" -eq 0 ] || info "zkv: not unlocked (exit $zkv_rc); OpenZFS will ask"
    unset zkv_n zkv_root zkv_rc
}

zkv_load_key

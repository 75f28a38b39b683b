# shellcheck shell=sh
# zkv boot helpers shared by the dracut and the initramfs-tools scripts: sourced (POSIX sh:
# busybox, dash, bash) at image build time and at boot. `make install` writes it as
# /usr/lib/zkv/zkv-lib.sh with the paths of zkv/paths.py in front (ZKV_RUN, ZKV_PYZ, ...), and
# the hooks copy that file into the image: every location is written once. Builtins only where
# it runs on the root's path (under emulation each process costs some 50 ms). Names carry a
# zkv_ prefix: the shells that source this are dracut's and OpenZFS's.

# zkv_disabled CMDLINE: true when the kernel command line turns zkv off (zkv=off, rd.zkv=0, no,
# false; the last such word wins). The one place this is decided: the hooks then start nothing,
# not even the network, and OpenZFS's own prompt boots the host.
zkv_disabled() {
    zkv_off=1
    for zkv_word in $1; do
        case "$zkv_word" in
            zkv=* | rd.zkv=*)
                case "${zkv_word#*=}" in
                    [Oo][Ff][Ff] | 0 | [Nn][Oo] | [Ff][Aa][Ll][Ss][Ee]) zkv_off=0 ;;
                    *) zkv_off=1 ;;
                esac
                ;;
        esac
    done
    return "$zkv_off"
}

# zkv_set_up: true on a host where `zkv init` and `zkv enroll` have run (settings, keystore and
# host key in place). Only such a host gets zkv into its image; before that, installing zkv
# changes nothing about how it boots.
zkv_set_up() {
    [ -f "$ZKV_CONF" ] && [ -f "$ZKV_KEYSTORE" ] && [ -f "$ZKV_HOSTKEY" ]
}

# zkv_hostkey_in_tpm: true when the host key is held by the TPM (zkv/hostkey.py's
# zkv-host-key-tpm-v1 line): the image then needs the kernel's TPM drivers, and nothing else
# (the boot client sends its few TPM commands itself).
zkv_hostkey_in_tpm() {
    read -r zkv_magic _ <"$ZKV_HOSTKEY" 2>/dev/null && [ "$zkv_magic" = zkv-host-key-tpm-v1 ]
}

# zkv_root_dataset ROOT: the dataset of a root= value OpenZFS accepts (zfs:pool/ds, ZFS=pool/ds,
# zfs:ZFS=pool/ds) in $zkv_root; empty for AUTO and anything else (the client then takes every
# keystore entry whose pool is imported).
zkv_root_dataset() {
    zkv_root=${1#zfs:}
    zkv_root=${zkv_root#ZFS=}
    case "$1" in
        zfs:* | ZFS=*) ;;
        *) zkv_root="" ;;
    esac
    [ "$zkv_root" = AUTO ] && zkv_root=""
    return 0
}

# zkv_status: true once the client's exit status is in $ZKV_RUN/status (written whole), which
# it puts in $zkv_rc.
zkv_status() {
    zkv_rc=""
    read -r zkv_rc 2>/dev/null <"$ZKV_RUN/status"
    [ -n "$zkv_rc" ]
}

# zkv_go_and_wait [PID]: the pools are imported: tell the client to load the keys
# ($ZKV_RUN/go) and wait for its status (in $zkv_rc). Status 0: the client finished; 1: out of
# time (the caller stops it, its own way); 2: PID is gone without a status.
zkv_go_and_wait() {
    : >"$ZKV_RUN/go"
    zkv_wait_for "" "${1:-}"
}

# zkv_wait_devices [PID]: before the pool import, on an image with LUKS entries
# ($ZKV_IMAGE_DEVICES, written by the build): wait until the client has opened them
# ($ZKV_RUN/devices) or has given up (its status); the import then finds the pool, or cryptsetup
# and OpenZFS ask as without zkv. Status as zkv_go_and_wait's; 0 at once on other images.
zkv_wait_devices() {
    [ -f "$ZKV_IMAGE_DEVICES" ] || return 0
    zkv_wait_for "$ZKV_RUN/devices" "${1:-}"
}

# zkv_wait_for FILE [PID]: until FILE (none: "") or the client's status (in $zkv_rc) exists. The bound is the one the
# client wrote when it read its settings ($ZKV_RUN/wait-limit: its overall limit, zkv.timeout=
# included, plus the time to load the keys), 330 s until it has. 0: there; 1: out of time; 2:
# PID is gone without a status.
zkv_wait_for() {
    zkv_n=0
    zkv_limit=""
    until zkv_status || { [ -n "$1" ] && [ -e "$1" ]; }; do
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            zkv_status && return 0
            return 2
        fi
        [ -n "$zkv_limit" ] || read -r zkv_limit 2>/dev/null <"$ZKV_RUN/wait-limit"
        case "$zkv_limit" in
            "" | *[!0-9]*) zkv_max=3300 ;;
            *) zkv_max=$((zkv_limit * 10)) ;;
        esac
        zkv_n=$((zkv_n + 1))
        [ "$zkv_n" -gt "$zkv_max" ] && return 1
        sleep 0.1
    done
    return 0
}

# zkv_links_down: every link but lo loses its addresses (and with them its routes) and goes
# down, so the network zkv brought up for the gateway does not reach the real root.
zkv_links_down() {
    for zkv_dev in "${ZKV_SYS_NET:-/sys/class/net}"/*; do
        zkv_dev=${zkv_dev##*/}
        [ "$zkv_dev" = lo ] && continue
        ip addr flush dev "$zkv_dev" 2>/dev/null
        ip link set dev "$zkv_dev" down 2>/dev/null
    done
}

# zkv_wipe_run [FILE...]: remove $ZKV_RUN and the FILEs, in one rm, but keep the handover (the
# data pools' keys, tmpfs) for zkv-load-keys.service in the real root.
zkv_wipe_run() {
    [ -n "$ZKV_RUN" ] || return 1 # never "/*"
    if [ -e "$ZKV_RUN/handover" ]; then
        for zkv_f in "$ZKV_RUN"/* "$ZKV_RUN"/.[!.]*; do
            [ -e "$zkv_f" ] && [ "$zkv_f" != "$ZKV_RUN/handover" ] && set -- "$@" "$zkv_f"
        done
    else
        set -- "$@" "$ZKV_RUN"
    fi
    [ $# -eq 0 ] || rm -rf "$@"
}

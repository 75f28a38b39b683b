#!/bin/sh
# zkv, ExecStart of zkv-wait-devices.service (installed as /usr/lib/zkv/zkv-wait-devices.sh):
# before the pool import, wait for the boot client (zkv-early.service) to open the keystore's
# LUKS devices. Never fails: a device still closed is left to cryptsetup's and OpenZFS's prompts.

# shellcheck source=/dev/null
command -v getcmdline >/dev/null 2>&1 || . "${ZKV_DRACUT_LIB:-/lib/dracut-lib.sh}"
# shellcheck source=zkv_early/zkv-lib.sh
. "${ZKV_LIB_SH:-/usr/lib/zkv/zkv-lib.sh}"

zkv_disabled "$(getcmdline)" && exit 0

zkv_pid=""
# zkv-early.sh writes its pid first thing; zkv=off: never, and nothing to wait for.
zkv_n=0
while [ ! -e "$ZKV_RUN/started" ] && [ "$zkv_n" -lt 50 ]; do
    zkv_n=$((zkv_n + 1))
    sleep 0.1
done
read -r zkv_pid 2>/dev/null <"$ZKV_RUN/started"
case "$zkv_pid" in
    "" | *[!0-9]*) exit 0 ;;
esac
zkv_wait_devices "$zkv_pid"
case $? in
    0) [ -e "$ZKV_RUN/devices" ] || echo "zkv: LUKS devices not opened (exit ${zkv_rc:-?})" ;;
    1) echo "zkv: the boot client did not open the LUKS devices in time" ;;
    *) echo "zkv: the boot client ended before opening the LUKS devices" ;;
esac
exit 0

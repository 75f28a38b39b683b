# shellcheck shell=sh
# zkv boot helpers shared by the dracut and initramfs-tools scripts.

#!/bin/sh
# Runs in the initramfs-tools chroot: rebuild the initrd with the hostid and configuration.
set -eu
update-initramfs -u -k all

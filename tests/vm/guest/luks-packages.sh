#!/bin/sh
# Payload script of the LUKS layout (tests/vm/luks_layout.py): cryptsetup for the helper VM
# that formats the devices and for the guest (zkv's hooks copy it into the initrd; the real
# root opens the file-backed and zvol devices with it). No initrd rebuild here: the zkv layer
# rebuilds it with the keystore in place.
set -eu
apt-get update -q
apt-get install -y -q --no-install-recommends cryptsetup
apt-get clean

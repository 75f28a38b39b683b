"""zkv: human-approved unattended unlocking of ZFS native encryption at boot."""

import sys

__version__ = "0.1.0"

# The hooks start the boot client with python3 -I -S: site's work (3 ms on the host, a good
# part of a second under an emulated CPU) is skipped, and with it the path it adds for Debian's
# python3-cryptography, the one package from outside the standard library the client needs.
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
if "site" not in sys.modules and DIST_PACKAGES not in sys.path:
    sys.path.append(DIST_PACKAGES)

"""The zipapp's entry point (and ``python3 -m zkv_early``).

The hooks start the boot client with python3 -I -S: site's work (3 ms on the host, a good part
of a second under an emulated CPU) is skipped, and with it the path it adds for Debian's
python3-cryptography, the one package from outside the standard library the client needs.
"""

import sys

from zkv.paths import DIST_PACKAGES

if "site" not in sys.modules and DIST_PACKAGES not in sys.path:
    sys.path.append(DIST_PACKAGES)

from zkv_early.cli import main

sys.exit(main())

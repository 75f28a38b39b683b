"""``python3 -m zkv_early`` and the zipapp's entry point."""

import sys

from zkv_early.early import main

sys.exit(main())

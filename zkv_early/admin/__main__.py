"""``python3 -m zkv_early.admin`` runs the same CLI as the ``zkv`` console script."""

from .cli import main

raise SystemExit(main())

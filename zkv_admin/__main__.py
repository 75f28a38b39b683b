"""``python3 -m zkv_admin`` runs the same CLI as the ``zkv`` console script."""

from zkv_admin.cli import main

raise SystemExit(main())

"""The ``zkv`` admin CLI, run as root on the installed system (never packed into the zipapp)."""

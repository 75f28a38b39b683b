"""zkv: human-approved unattended unlocking of ZFS native encryption at boot."""

__version__ = "0.1.0"

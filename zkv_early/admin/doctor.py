"""``zkv doctor``: placeholder, filled in below."""

from __future__ import annotations

import argparse


def cmd_doctor(args: argparse.Namespace) -> int:
    return 0

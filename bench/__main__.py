"""Run every benchmark in this folder (or the ones named): ``python3 -m bench [NAME...]``.

Each module with a ``main()`` is one benchmark; it is called without arguments, so each one
uses its own defaults. A failing benchmark is reported and the others still run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    folder = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_"))


def main(names: list[str]) -> int:
    failed = []
    for name in names or discover():
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        saved, sys.argv = sys.argv, [f"bench.{name}"]  # argparse in main() must see no options
        try:
            status = entry()
        except (Exception, SystemExit) as exc:
            status = getattr(exc, "code", 1)
            if not isinstance(exc, SystemExit):
                traceback.print_exc()
        finally:
            sys.argv = saved
        print(f"=== bench.{name}: status {status or 0}, {time.monotonic() - started:.1f} s ===")
        if status:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

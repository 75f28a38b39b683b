"""Test helper around tests/fakes/zpool: the pools on each device, the calls it got."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fakes.fakezfs import encode

BINARY = Path(__file__).with_name("zpool")


class FakeZpool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls, folder: Path, devices: dict[str, dict[str, dict[str, Any]]]) -> FakeZpool:
        """devices: path -> the datasets of the pool on it, as FakeZfs.create takes them; an
        import from that path adds them to the fake zfs."""
        folder.mkdir(parents=True, exist_ok=True)
        encoded = {path: encode(datasets) for path, datasets in devices.items()}
        (folder / "state.json").write_text(json.dumps({"devices": encoded}))
        return cls(folder)

    def fail(self, message: str) -> None:
        """Every later call fails with ``message`` on stderr (exit 1)."""
        (self.folder / "fail").write_text(message + "\n")

    def calls(self) -> list[list[str]]:
        """Each call's argv, without the program name."""
        path = self.folder / "calls.jsonl"
        rows = path.read_text().splitlines() if path.exists() else []
        return [json.loads(row)["argv"][1:] for row in rows]

    def env(self) -> dict[str, str]:
        """Variables that make zkv.zpool use this fake (never through PATH)."""
        return {"ZKV_ZPOOL": str(BINARY), "ZKV_FAKE_ZPOOL_STATE": str(self.folder)}

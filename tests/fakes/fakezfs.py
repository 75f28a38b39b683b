"""Test helper around tests/fakes/zfs: build its state, read back what it was called with."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BINARY = Path(__file__).with_name("zfs")


def encode(datasets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Datasets as the fake stores them: keys in base64, each its own encryption root unless
    told otherwise (tests/fakes/zpool adds such datasets on an import)."""
    encoded = {}
    for name, ds in datasets.items():
        ds = dict(ds)
        if "key" in ds:
            ds["key"] = base64.b64encode(ds["key"]).decode()
        ds.setdefault("encryptionroot", name)
        encoded[name] = ds
    return encoded


@dataclass
class FakeZfs:
    state_dir: Path

    @classmethod
    def create(cls, state_dir: Path, datasets: dict[str, dict[str, Any]]) -> FakeZfs:
        """datasets: name -> {"encryptionroot", "keyformat", "key" (bytes), "keystatus"}."""
        state_dir.mkdir(parents=True, exist_ok=True)
        fake = cls(state_dir)
        fake.write({"datasets": encode(datasets)})
        return fake

    def write(self, state: dict[str, Any]) -> None:
        (self.state_dir / "state.json").write_text(json.dumps(state))

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def set(self, **options: Any) -> None:
        state = self.state()
        state.update(options)
        self.write(state)

    def keystatus(self, name: str) -> str:
        return str(self.state()["datasets"][name].get("keystatus", "unavailable"))

    def key(self, name: str) -> bytes:
        return base64.b64decode(self.state()["datasets"][name]["key"])

    def _rows(self) -> list[dict[str, Any]]:
        path = self.state_dir / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def calls(self) -> list[tuple[list[str], bytes]]:
        return [(row["argv"][1:], base64.b64decode(row["stdin"])) for row in self._rows()]

    def steps(self) -> list[str]:
        """Each call as "subcommand" ("load-key -n" for a dry run; "update-initramfs")."""
        out = []
        for row in self._rows():
            program, args = Path(row["argv"][0]).name, row["argv"][1:]
            if program != "zfs":
                out.append(program)
            else:
                out.append(args[0] + (" -n" if args[0] == "load-key" and "-n" in args else ""))
        return out

    def image_keystore(self) -> Path:
        """The keystore the fake update-initramfs last copied into "the boot image"."""
        return self.state_dir / "image" / "keystore"

    def reboot(self) -> None:
        """Every key unloaded, as after a power cut."""
        state = self.state()
        for ds in state["datasets"].values():
            if ds.get("keystatus") == "available":
                ds["keystatus"] = "unavailable"
        state.pop("crash", None)
        state.pop("calls_seen", None)
        self.write(state)

    def priorities(self) -> list[tuple[str, int]]:
        """(subcommand, nice value) of every call: which ones ran niced."""
        return [(row["argv"][1], row["nice"]) for row in self._rows()]

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should use this fake."""
        return {
            **os.environ,
            "ZKV_FAKE_ZFS_STATE": str(self.state_dir),
            "ZKV_ZFS": str(BINARY),
            "PATH": f"{BINARY.parent}:{os.environ.get('PATH', '')}",
        }

"""Test helper around tests/fakes/crypt/cryptsetup (also losetup, blkid): state, calls, env."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).with_name("crypt")
TOOLS = ("cryptsetup", "losetup", "blkid")


class FakeCrypt:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def create(cls, folder: Path, devices: dict[str, dict[str, Any]]) -> FakeCrypt:
        """devices: path -> {"uuid", "keys": [bytes...], "luks": bool}."""
        folder.mkdir(parents=True, exist_ok=True)
        encoded = {
            path: {**dev, "keys": [base64.b64encode(k).decode() for k in dev.get("keys", [])]}
            for path, dev in devices.items()
        }
        made = cls(folder)
        made.write({"devices": encoded, "mappings": {}, "loops": {}})
        return made

    def state(self) -> dict[str, Any]:
        return json.loads((self.folder / "state.json").read_text())  # type: ignore[no-any-return]

    def write(self, state: dict[str, Any]) -> None:
        (self.folder / "state.json").write_text(json.dumps(state))

    def set(self, **values: Any) -> None:
        self.write({**self.state(), **values})

    def keys(self, path: str) -> list[bytes]:
        return [base64.b64decode(k) for k in self.state()["devices"][path]["keys"]]

    def calls(self) -> list[dict[str, Any]]:
        path = self.folder / "calls.jsonl"
        rows = path.read_text().splitlines() if path.exists() else []
        return [json.loads(row) for row in rows]

    def argv_never_holds(self, *secrets: bytes) -> None:
        for call in self.calls():
            joined = "\0".join(call["argv"]).encode()
            assert not any(s in joined or s.hex().encode() in joined for s in secrets), call

    def reboot(self) -> None:
        """Mappings and loops gone, no crash pending: as after a power cut."""
        state = self.state()
        for name in ("crash", "calls_seen"):
            state.pop(name, None)
        state.update(mappings={}, loops={})
        self.write(state)

    def env(self) -> dict[str, str]:
        """Variables that make zkv.cryptsetup use this fake (never through PATH)."""
        tools = {f"ZKV_{tool.upper()}": str(FOLDER / tool) for tool in TOOLS}
        return {"ZKV_FAKE_CRYPT_STATE": str(self.folder), **tools}

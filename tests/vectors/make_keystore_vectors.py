"""Regenerate tests/vectors/keystore-v1-*.{keystore,json} (only when the format version changes).

The checked-in files are the contract: tests prove today's code opens what this wrote. Never
regenerate them to make a failing test pass; add a new version instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from zkv import keystore

HERE = Path(__file__).parent
WEAK = keystore.KdfParams(n=1 << 10, r=8, p=1)


def vector(
    name: str,
    entries: list[tuple[str, str, list[bytes]]],
    description: str,
    new_repository_key: bytes | None = None,
) -> None:
    """``new_repository_key``: a second, tagged repository slot (a repository key rotation in
    flight); the vector's "repository_keys" lists both keys, each of which opens it."""
    repository_key = bytes(range(32))
    passphrase = "correct horse battery staple"
    store = keystore.create(
        repository_key, passphrase.encode(), WEAK, host_id="0123456789abcdef" * 2
    )
    extra: dict[str, object] = {}
    if new_repository_key is not None:
        store.add_repository_key(new_repository_key)
        keys = [repository_key, new_repository_key]
        extra["repository_keys"] = [keystore.format_repository_key(k) for k in keys]
        extra["repository_key_ids"] = store.repository_key_ids()
    for target, keyformat, candidates in entries:
        store.put(keystore.Entry(target, keyformat), candidates[0])
        if len(candidates) > 1:
            store.stage(target, candidates[1], "raw" if len(candidates[1]) == 32 else None)
    (HERE / f"keystore-v1-{name}.keystore").write_bytes(store.serialize())
    expected = {
        "description": description,
        "keystore_file": f"keystore-v1-{name}.keystore",
        "repository_key": keystore.format_repository_key(repository_key),
        "recovery_passphrase": passphrase,
        "host_id": store.host_id,
        "entries": [
            {
                "target": target,
                "keyformat": keyformat,
                "candidates_b64": [base64.b64encode(c).decode() for c in candidates],
            }
            for target, keyformat, candidates in sorted(entries)
        ],
        **extra,
    }
    (HERE / f"keystore-v1-{name}.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    vector("empty", [], "a fresh keystore: no entries, one repository and one recovery slot")
    vector(
        "basic",
        [
            ("rpool/ROOT", "raw", [bytes(range(64, 96))]),
            ("tank/home", "hex", [b"0123456789abcdef" * 4]),
            ("tank/media:2024 archive", "passphrase", [b"a dataset passphrase"]),
        ],
        "one entry per keyformat; a dataset name with ':' and a space",
    )
    vector(
        "rotation",
        [("tank/data", "passphrase", [b"the old passphrase", bytes(range(200, 232))])],
        "interrupted 'zkv add --generate': current passphrase, then a staged raw key",
    )
    vector(
        "two-repository-slots",
        [("tank/data", "raw", [bytes(range(100, 132))])],
        "interrupted 'zkv rotate --repository-key': two repository slots tagged with key ids",
        new_repository_key=bytes(range(32, 64)),
    )

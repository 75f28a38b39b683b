"""Write tests/vectors/keystore-v<N>-*.{keystore,json}: ``python3 -m
tests.vectors.make_keystore_vectors NAME...`` writes the named ones (all without arguments).

The checked-in files are the contract: tests prove today's code opens what this wrote. Never
regenerate them to make a failing test pass; add a new version instead. Version 1 holds zfs
entries only; ``block`` is version 2 (LUKS and loop-file entries).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from zkv import keystore

HERE = Path(__file__).parent
WEAK = keystore.KdfParams(n=1 << 10, r=8, p=1)


Entries = list[tuple[str, str, list[bytes]]]


def vector(
    name: str, entries: Entries, description: str, new_repository_key: bytes | None = None
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
        store.put(keystore.Entry(target, keyformat, keystore.kind_of(target)), candidates[0])
        if len(candidates) > 1:
            staged = "raw" if len(candidates[1]) == 32 else None
            store.stage(target, candidates[1], staged if ":" not in target else "keyfile")
    stem = f"keystore-v{store.version()}-{name}"
    (HERE / f"{stem}.keystore").write_bytes(store.serialize())
    expected = {
        "description": description,
        "keystore_file": f"{stem}.keystore",
        "repository_key": keystore.format_repository_key(repository_key),
        "recovery_passphrase": passphrase,
        "host_id": store.host_id,
        "entries": [
            {
                "target": target,
                "keyformat": keyformat,
                "candidates_b64": [base64.b64encode(c).decode() for c in candidates],
                **({"kind": keystore.kind_of(target)} if store.version() > 1 else {}),
            }
            for target, keyformat, candidates in sorted(entries)
        ],
        **extra,
    }
    (HERE / f"{stem}.json").write_text(json.dumps(expected, indent=2) + "\n")


VECTORS: dict[str, tuple[Entries, str]] = {
    "empty": ([], "a fresh keystore: no entries, one repository and one recovery slot"),
    "basic": (
        [
            ("rpool/ROOT", "raw", [bytes(range(64, 96))]),
            ("tank/home", "hex", [b"0123456789abcdef" * 4]),
            ("tank/media:2024 archive", "passphrase", [b"a dataset passphrase"]),
        ],
        "one entry per keyformat; a dataset name with ':' and a space",
    ),
    "rotation": (
        [("tank/data", "passphrase", [b"the old passphrase", bytes(range(200, 232))])],
        "interrupted 'zkv add --generate': current passphrase, then a staged raw key",
    ),
    "block": (
        [
            ("luks:UUID=0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "passphrase", [b"luks passphrase"]),
            ("luks:PARTUUID=1234abcd-02", "keyfile", [bytes(range(256)) + b"\n"]),
            (
                "luks:/dev/zvol/rpool/keys vol",
                "passphrase",
                [b"the old luks passphrase", bytes(range(100, 132))],
            ),
            ("loopfile:/srv/vdevs/vdev-0.img", "keyfile", [bytes(range(32))]),
            ("tank/data", "raw", [bytes(range(1, 33))]),
        ],
        "version 2: each block locator, a keyfile with a newline, a LUKS rotation in flight",
    ),
}
TWO_REPOSITORY_SLOTS = (
    [("tank/data", "raw", [bytes(range(100, 132))])],
    "interrupted 'zkv rotate --repository-key': two repository slots tagged with key ids",
)

if __name__ == "__main__":
    for wanted in sys.argv[1:] or [*VECTORS, "two-repository-slots"]:
        if wanted == "two-repository-slots":
            vector(wanted, *TWO_REPOSITORY_SLOTS, new_repository_key=bytes(range(32, 64)))
        else:
            vector(wanted, *VECTORS[wanted])

"""``zkv rotate --repository-key``: a new repository key, safe at every crash point.

The keystore carries the old and the new repository slot until the gateway confirms that it
holds the new key, and only then drops the old one (docs/rotation.md):

1. prepare: a new random key; the keystore gets a second repository slot for it (each slot is
   tagged with its key's id), is written, and every boot image is rebuilt from it;
2. a signed rotation request: the owner approves it as they approve a boot (the console shows
   the PIN); denied, expired or failed, the new slot goes again;
3. approved: the new key, signed, to the gateway, which writes it as the host's secret (a new
   Key Vault version) and answers the id of the key it now holds;
4. that answer names the new key: the old slot goes; images rebuilt again.

Whatever key the gateway holds at any moment, the keystore and every image have a slot for it.
An answer lost on the way (a crash, the network) is settled by asking the gateway which key it
holds (a signed query), in the next rotation or ``zkv reconcile`` (``settle``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from zkv import hostkey, keystore, protocol
from zkv.errors import (
    GatewayError,
    InputError,
    RepositoryKeyNotRotated,
    UsageError,
    ZkvError,
)
from zkv_admin import bootimage
from zkv_admin.common import open_store, path_of, save, say
from zkv_early import config
from zkv_early.gateway_client import GatewayClient

POLL = 25  # seconds per long-poll, as the boot client's
CRASH_ENV = "ZKV_TESTONLY_CRASH_AT"  # tests cut the power at a named step (SIGKILL)
CRASH_MARKER = "zkv: test-only crash point"  # the VM test powers the guest off when it sees it


class Host:
    """What talks to the gateway for this host: its key, its name, the boot client's client."""

    def __init__(self, args: argparse.Namespace, path: Path) -> None:
        settings = config.load(args.config)
        self.private = hostkey.load(hostkey.default_path(path))
        self.hostname = socket.gethostname()
        if not protocol.is_hostname(self.hostname):
            raise InputError("this host's name is not a valid host name")
        self.gateway = GatewayClient(
            settings.gateway_url, settings.ca_file, settings.request_timeout, settings.pins
        )

    def fresh(self) -> str:
        return self.gateway.challenge().challenge

    def held(self) -> str:
        """The id of the repository key the gateway holds for this host."""
        query = protocol.RepositoryKeyQuery.create(self.private, self.fresh())
        return self.gateway.key_status(query).key_id


def cmd_rotate_repository_key(args: argparse.Namespace) -> int:
    from zkv_admin.rotation import exclusive  # one keystore writer; rotation imports us

    if args.dataset is not None:  # never echoed: it may be a key pasted after the option
        raise UsageError("--repository-key takes no dataset (and no key: it makes one)")
    path = path_of(args)
    with exclusive(path):
        store = open_store(args, keystore.read(path))
        host = Host(args, path)
        try:
            key_id = rotate(host, path, store)
        finally:
            host.gateway.close()
    say(f"the gateway holds the new repository key {key_id}; the keystore and the rebuilt")
    say("boot images hold only it")
    return 0


def rotate(host: Host, path: Path, store: keystore.OpenKeystore) -> str:
    if len(store.repository_key_ids()) > 1:
        say("settling the repository key rotation a crash interrupted first")
        settle(host, path, store)
    new = keystore.new_repository_key()
    new_id = store.add_repository_key(new)
    _write(path, store)
    crash_point("prepared")
    try:
        created, state = _approval(host)
    except (ZkvError, KeyboardInterrupt):  # the new key never left this host: forget it
        _forget(path, store, new_id)
        raise
    if state != protocol.STATE_APPROVED:
        _forget(path, store, new_id)
        raise RepositoryKeyNotRotated(detail=f"the request was {state}; the old key stays")
    crash_point("approved")
    try:
        delivery = protocol.RepositoryKeyDelivery.create(
            host.private, created.request_id, new, host.fresh()
        )
        confirmed = host.gateway.deliver(delivery).key_id
    except GatewayError as exc:  # it may have stored the key all the same: ask, never guess
        if settle(host, path, store) != new_id:
            raise RepositoryKeyNotRotated(detail=f"{exc.message}; the old key stays") from None
        return new_id
    crash_point("confirmed")
    if confirmed != new_id:
        raise RepositoryKeyNotRotated(detail="the gateway confirmed another key; both kept")
    store.keep_repository_key(new_id)
    _write(path, store)
    return new_id


def settle(host: Host, path: Path, store: keystore.OpenKeystore) -> str:
    """Keep the slot of the key the gateway holds, drop the other one; the held key's id."""
    held = host.held()
    if len(store.repository_key_ids()) > 1:
        if not store.keep_repository_key(held):
            raise RepositoryKeyNotRotated(
                detail=f"the gateway holds key {held}, which no slot is for; both kept"
            )
        _write(path, store)
        say(f"repository key rotation settled: the keystore keeps the slot of key {held}")
    return held


def reconcile(args: argparse.Namespace, path: Path, store: keystore.OpenKeystore) -> None:
    """``zkv reconcile``'s part: finish a half-done repository key rotation, if any."""
    ids = store.repository_key_ids()
    if len(ids) < 2:
        return
    host = Host(args, path)
    try:
        held = settle(host, path, store)
    finally:
        host.gateway.close()
    print(f"repository key: {held}", flush=True)


def _approval(host: Host) -> tuple[protocol.UnlockCreated, str]:
    """Ask, then long-poll until the owner decided or the request's lifetime (and some slack)
    is over: the request and its final state."""
    challenge = host.gateway.challenge()
    request = protocol.RotationRequest.create(host.private, host.hostname, challenge.challenge)
    created = host.gateway.rotation(request)
    say(f"PIN {created.pin}: waiting for the owner to approve the repository key rotation")
    crash_point("requested")
    deadline = time.monotonic() + max(0, created.expires_at - challenge.now) + 2 * POLL
    while time.monotonic() < deadline:
        state = host.gateway.poll_rotation(created.request_id, POLL).state
        if state != protocol.STATE_PENDING:
            return created, state
    return created, protocol.STATE_EXPIRED


def _forget(path: Path, store: keystore.OpenKeystore, key_id: str) -> None:
    store.drop_repository_key(key_id)
    _write(path, store)


def _write(path: Path, store: keystore.OpenKeystore) -> None:
    bootimage.mark_stale(path)  # a slot the images hold may be about to go
    save(path, store, remind=False)
    bootimage.refresh(path)


def crash_point(step: str) -> None:
    """Stop dead at ``step`` if the test asked to (also rotation.py's steps). The marker line
    first, so that the VM test can cut the power right there (tests/e2e/test_rotation_boot.py)."""
    if os.environ.get(CRASH_ENV) == step:
        print(f"{CRASH_MARKER} {step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

"""``zkv-early.pyz unlock``: sealed keystore to loaded ZFS keys, gateway racing the console.

keystore -> which encryption roots matter -> already loaded? done
         -> race(gateway approval, recovery passphrase) -> open keystore
         -> load the keys of the root's pool -> hand the others on via /run -> exit status

With ``--after FILE`` the client starts before the pools are imported (Python's start, the
network and the owner's approval then overlap the import) and looks at the pools only once the
hook, after the import, creates FILE. Before that, once the keystore is open, it opens the
LUKS devices (a root pool may sit on them) and says so in ``devices`` beside FILE: the hooks
hold the import until then when the image has LUKS entries (docs/luks.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from zkv import keystore, paths
from zkv.errors import (
    EntryNotFound,
    HandoverError,
    KeysNotLoaded,
    PoolsNotImported,
    PromptUnavailable,
    ZkvError,
)
from zkv.fsutil import atomic_write
from zkv.keyload import Outcome, load_entries
from zkv.keystore import KIND_LUKS, OpenKeystore, SealedKeystore
from zkv.zfs import KeyInfo, Zfs, root_status
from zkv_early import config as configmod
from zkv_early import handover, passphrase_contender, passphrase_prompt
from zkv_early.config import Config
from zkv_early.console import Console, countdown
from zkv_early.gateway_client import GatewayClient
from zkv_early.gateway_contender import GatewayUnlock
from zkv_early.race import Contender, Deadline, SystemClock, race

FRESH_LISTING = 5.0  # seconds: a zfs listing older than this is taken again before loading
AFTER_POLL = 0.1  # seconds between looks for the --after file
AHEAD_NICE = 10  # the client's priority until the go (see _set_priority)
LOAD_MARGIN = 30  # seconds the hooks allow for loading the keys after the client's own limit
DEVICE_WAIT = 10.0  # seconds a missing LUKS device may take to appear (udev) once the store is open
DEVICE_POLL = 0.5


class Options(NamedTuple):
    roots: Sequence[str] = ()
    prompt: str = "auto"
    tty: str = "/dev/console"
    handover: str = handover.DEFAULT_PATH
    after: str | None = None  # started before the import: load once this file exists


def unlock(config: Config, options: Options, console: Console, zfs: Zfs | None = None) -> None:
    if options.after is not None:
        _write_wait_limit(config, options.after, console)
    sealed = keystore.read(config.keystore)
    zfs = zfs or Zfs(timeout=config.zfs_timeout)
    if options.after is not None:
        _unlock_ahead(config, options, console, sealed, zfs)
        return
    listing = zfs.key_infos()
    status = root_status(listing)
    required = _required(options.roots, sealed, zfs, listing)
    if not required:
        console.say("no keystore entry belongs to an imported pool: nothing to unlock")
        return
    if all(status.get(root) == "available" for root in required):
        console.say(f"keys already loaded: {', '.join(sorted(required))}")
        return
    _say_plan(config, options, console, required)
    started = time.monotonic()
    store = _open(config, options, console, sealed)
    if time.monotonic() - started > FRESH_LISTING:
        listing = zfs.key_infos()  # pools may have been imported, keys loaded meanwhile
    _load(store, zfs, listing, required, options, console)


def _write_wait_limit(config: Config, after: str, console: Console) -> None:
    """The hooks' bound on their wait after the go, beside the go file: this client's overall
    limit (zkv.timeout= included), counted from the go, plus the time to load the keys. The
    hooks read it instead of working it out from early.conf and the kernel command line."""
    seconds = int(config.total_timeout) + LOAD_MARGIN
    path = os.path.join(os.path.dirname(after) or ".", paths.WAIT_LIMIT_NAME)
    try:
        atomic_write(path, f"{seconds}\n".encode())
    except ZkvError as exc:  # the hooks then wait their default: not a reason to give up
        console.debug(exc.message)


def _unlock_ahead(
    config: Config,
    options: Options,
    console: Console,
    sealed: SealedKeystore,
    zfs: Zfs,
) -> None:
    """No pool to look at yet: open the keystore first, then wait for the hook's go."""
    after = options.after or ""
    if not sealed.targets():
        console.say("the keystore has no entry: nothing to unlock")
        return
    _say_plan(config, options, console, set(options.roots))
    deadline = Deadline(SystemClock(), config.total_timeout)
    _set_priority(AHEAD_NICE)
    store = _open(config, options, console, sealed)
    opened = _open_devices(store, zfs, after, console)
    if not os.path.exists(after):
        console.say("keystore open; waiting for the pools to be imported")
    while not os.path.exists(after):
        if deadline.expired():
            raise PoolsNotImported(seconds=f"{config.total_timeout:g}")
        time.sleep(min(AFTER_POLL, deadline.remaining()))
    _set_priority(0)
    listing = zfs.key_infos()
    required = _required(options.roots, sealed, zfs, listing)
    _load(store, zfs, listing, required, options, console, opened)


def _open_devices(store: OpenKeystore, zfs: Zfs, after: str, console: Console) -> set[str]:
    """The LUKS devices first: the pool the import is held for may sit on them. A device not
    there yet gets DEVICE_WAIT (udev may still be at it); one still missing, and every loop
    file and zvol (on file systems and pools imported later), is the real root's, through the
    handover. ``devices`` beside the --after file then lets the hooks import. The entries
    opened are returned."""
    early = [e.target for e in store.entries() if e.kind == KIND_LUKS and not e.on_zvol]
    opened: set[str] = set()
    give_up = time.monotonic() + DEVICE_WAIT
    held = bool(early)
    if held:
        _set_priority(0)  # the import waits for these: the root's critical path
    while early:
        report = load_entries(store, zfs, only=early)
        opened |= {r.target for r in report.results if r.ok}
        for failed in report.failed:
            console.say(f"{failed.target}: {failed.detail}")
        early = [r.target for r in report.results if r.outcome is Outcome.ABSENT]
        if early and time.monotonic() >= give_up:
            console.say(f"not found, left to the real root: {', '.join(early)}")
            break
        if early:
            time.sleep(DEVICE_POLL)
    if held:
        _set_priority(AHEAD_NICE)  # until the go, the import and udev come first again
    if opened:
        console.say(f"LUKS devices opened: {', '.join(sorted(opened))}")
    try:
        atomic_write(os.path.join(os.path.dirname(after) or ".", paths.DEVICES_NAME), b"0\n")
    except ZkvError as exc:  # the hooks then wait for the status instead
        console.say(exc.message)
    return opened


def _set_priority(nice: int) -> None:
    """Started ahead, the client's network, gateway and prompt yield the CPU (AHEAD_NICE) to
    udev and the pool import, which the root waits for; after the go the client itself is what
    the root waits for (0). Set on this thread before it starts the others (they inherit it),
    and so on the zfs processes it runs."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass  # not allowed (no CAP_SYS_NICE to go back to 0): slower, not wrong


def _say_plan(config: Config, options: Options, console: Console, required: set[str]) -> None:
    console.debug(
        f"need keys for {', '.join(sorted(required)) or 'every imported entry'}; keystore "
        f"{config.keystore}; gateway {config.gateway_url}; prompt {options.prompt}; "
        f"limits: network {config.network_timeout:g} s, total {config.total_timeout:g} s"
    )


def _load(
    store: OpenKeystore,
    zfs: Zfs,
    listing: dict[str, KeyInfo],
    required: set[str],
    options: Options,
    console: Console,
    opened: set[str] | None = None,
) -> None:
    """Load the keys the root needs here; every other key goes to the real root's unit.

    With --root, only the entries in the root's pools are loaded in the initramfs (the data
    pools' keys are handed over, to load before zfs-mount.service, even where the initramfs
    imported those pools too, as dracut does): the root mounts sooner. Without --root, every
    entry of an imported pool is loaded here. ``opened``: block devices already open.
    """
    opened = opened or set()
    targets = [e.target for e in store.entries() if e.target not in opened]
    pools = {_pool(root) for root in required}
    here = [t for t in targets if _pool(t) in pools] if options.roots else targets
    # No read-back after each load: OpenZFS's boot scripts look at the root's keystatus next
    # and prompt if it is not loaded, and zfs-load-keys.service (real root) checks the rest.
    report = load_entries(store, zfs, only=here, listing=listing, confirm=False)
    if report.loaded:
        console.say(f"keys loaded: {', '.join(r.target for r in report.loaded)}")
    for failed in report.failed:
        console.say(f"{failed.target}: {failed.detail}")
    absent = {r.target for r in report.results if r.outcome is Outcome.ABSENT}
    pending = [t for t in targets if t in absent or t not in here]
    if pending:
        _hand_over(options.handover, store, pending, console)
    good = {r.target for r in report.results if r.ok}
    missing = sorted(required - good)
    if missing:
        raise KeysNotLoaded(datasets=", ".join(missing))


def _pool(dataset: str) -> str:
    return dataset.split("/", 1)[0]


def _required(
    roots: Sequence[str], sealed: SealedKeystore, zfs: Zfs, listing: dict[str, KeyInfo]
) -> set[str]:
    """The encryption roots that must end up loaded for the exit status to be 0."""
    if not roots:
        status = root_status(listing)
        return {target for target in sealed.datasets() if target in status}
    required = set()
    for dataset in roots:
        # Not listed (no such dataset, a snapshot): zfs get says why.
        info = listing.get(dataset)
        root = info.encryption_root if info is not None else zfs.encryption_root(dataset)
        if root is None:
            continue  # not encrypted: nothing to load
        if root not in sealed.datasets():
            raise EntryNotFound(target=root)
        required.add(root)
    return required


def _open(
    config: Config, options: Options, console: Console, sealed: SealedKeystore
) -> OpenKeystore:
    t0 = time.monotonic()
    deadline = Deadline(SystemClock(), config.total_timeout)
    client = GatewayClient(config.gateway_url, config.ca_file, config.request_timeout, config.pins)
    gateway = GatewayUnlock(config, console, client, deadline, configmod.hostname(config))
    asker: passphrase_prompt.Prompt | None = None
    contenders: list[Contender[OpenKeystore]] = [
        Contender("gateway", lambda cancel: gateway.run(sealed, cancel), gateway.stop)
    ]
    try:
        asker = passphrase_prompt.choose(options.prompt, options.tty, console, config.total_timeout)
        if isinstance(asker, passphrase_prompt.AskPasswordPrompt):
            console.tty = False  # its console agent's prompt is the line a CR would overwrite
    except PromptUnavailable as exc:
        console.say(f"{exc.message}; waiting for the gateway only")
    if asker is not None:
        ask = asker
        # The gateway gave up (denied, expired, a release that does not open the keystore...):
        # say so at once and keep the prompt for a shorter while, not the whole overall limit.
        contenders[0].grace = config.fallback_timeout
        contenders[0].on_failure = lambda error, left: console.say(_fallback_message(error, left))

        def passphrase(cancel: threading.Event) -> OpenKeystore:
            return passphrase_contender.unlock_with_passphrase(
                sealed, ask, console, config.attempts, cancel, typed.busy
            )

        # No stop hook: both prompts notice the cancel event within a tick; closing the
        # terminal under a thread still in select() would be a race.
        typed = Contender("passphrase", passphrase)
        contenders.append(typed)
    try:
        outcome = race(contenders, config.total_timeout)
    finally:
        if asker is not None:
            asker.close()  # terminal echo back on, whatever happened
        client.close()
    console.debug(f"keystore opened by the {outcome.winner} after {time.monotonic() - t0:.2f} s")
    return outcome.value


def _fallback_message(error: BaseException, left: float) -> str:
    reason = error.message if isinstance(error, ZkvError) else "the gateway client failed"
    return f"{reason}; type the recovery passphrase ({countdown(left)} left, then OpenZFS asks)"


def _hand_over(path: str, store: OpenKeystore, targets: list[str], console: Console) -> None:
    try:
        handover.write(path, store, targets)
    except HandoverError as exc:
        console.say(f"{exc.message}; load those keys later with 'zkv unlock'")
        return
    console.say(f"keys handed over to the real root (data pools): {', '.join(targets)}")

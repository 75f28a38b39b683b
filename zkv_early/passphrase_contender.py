"""The console side of the race: the recovery passphrase opens the keystore's recovery slot."""

from __future__ import annotations

import threading

from zkv.errors import KeystoreLocked, PassphraseRetriesExceeded
from zkv.keystore import OpenKeystore, SealedKeystore
from zkv_early.console import Console
from zkv_early.passphrase_prompt import Prompt
from zkv_early.race import Cancelled


def unlock_with_passphrase(
    sealed: SealedKeystore,
    prompt: Prompt,
    console: Console,
    attempts: int,
    cancel: threading.Event,
    checking: threading.Event | None = None,
) -> OpenKeystore:
    """``checking`` is set while a typed passphrase is checked (race.Contender.busy): the
    check finishes even when the gateway's fallback time runs out meanwhile."""
    checking = checking or threading.Event()
    for attempt in range(attempts):
        left = attempts - attempt
        suffix = "" if left == attempts else f" ({left} attempts left)"
        passphrase = prompt.ask(f"Recovery passphrase{suffix}: ", cancel)
        if passphrase is None or cancel.is_set():
            raise Cancelled
        if passphrase:
            checking.set()  # cleared only once it is known wrong: a success ends the race
            try:
                store = sealed.open_with_passphrase(passphrase)
            except KeystoreLocked:
                checking.clear()
            else:
                console.say("recovery passphrase accepted")
                return store
        if cancel.is_set():  # the gateway won while scrypt ran: do not ask again
            raise Cancelled
        console.say("wrong recovery passphrase")
    error = PassphraseRetriesExceeded()
    console.say(f"{error.message}; no more questions on this console")  # the gateway may go on
    raise error

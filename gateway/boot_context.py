"""What the gateway makes of a boot's reported context (pure): the policy's refusal, and the
words the owners read in the notification, on the page and in the audit log.

The flags and the digest are signed with the host key, so nobody between the host and the
gateway can hide or change them; a thief who edits the kernel command line of a stolen disk
(rd.break, init=/bin/sh) shows up as flags and as a command line unlike the last approved one.
A thief who also replaces the boot client can report anything: the digest comparison and the
flags are the owner's evidence, not a proof (docs/threat-model.md).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from zkv.protocol import BootContext

DIGEST_SHOWN = 12  # hex characters of the command line's digest on the page


@dataclass(frozen=True)
class BootView:
    boot: BootContext | None  # None: the client did not report it (protocol version 1)
    last_approved: str | None = None  # the host's last approved command line digest

    @property
    def flags(self) -> str:
        if self.boot is None:
            return "not reported"
        return ", ".join(self.boot.flags) or "none"

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.boot.warnings if self.boot is not None else ()

    @property
    def same_as_last(self) -> bool | None:
        """Whether the command line is the last approved boot's; None: nothing to compare."""
        if self.boot is None or self.last_approved is None:
            return None
        return self.boot.cmdline_sha256 == self.last_approved

    @property
    def compared(self) -> str:
        same = self.same_as_last
        if self.boot is None:
            return "not reported"
        if same is None:
            return "no approved boot to compare with"
        return "yes" if same else "no"

    @property
    def digest(self) -> str:
        return self.boot.cmdline_sha256[:DIGEST_SHOWN] if self.boot is not None else ""

    def message(self) -> str:
        """The notification's sentence (bounded: at most every flag name once)."""
        text = f"Boot flags: {self.flags}"
        if self.warnings:
            text += " (a shell or another init at boot)"
        if self.same_as_last is False:
            text += "; command line changed since the last approved boot"
        return text + "."


def refusal(boot: BootContext | None, refused: Set[str]) -> str | None:
    """Why the policy refuses this boot (for the audit only), or None."""
    if not refused:
        return None
    if boot is None:
        return "boot flags not reported, and REFUSE_BOOT_FLAGS is set"
    hit = sorted(refused & set(boot.flags))
    return f"boot flags refused by policy: {','.join(hit)}" if hit else None


def audit_note(boot: BootContext | None) -> str:
    if boot is None:
        return "boot=unreported"
    return f"boot_flags={','.join(boot.flags) or 'none'} cmdline_sha256={boot.cmdline_sha256}"

"""Booting a zkv image against the real gateway: TLS in front of it, enrolment, the console loop.

Used by tests/e2e/test_zkv_boot.py, tests/vm/demo.py, tests/vm/trace.py and bench/boot_time.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from tests.harness import browser as browsers
from tests.harness import protocol_client as client
from tests.harness import tpm_enrol
from tests.harness.gateway import RunningGateway, free_port, running_gateway
from tests.harness.gateway import tls_front as harness_tls_front
from tests.harness.swtpm import Swtpm
from tests.vm import driver, testbed
from tests.vm.driver import Guest
from tests.vm.zkv_image import HOSTNAME, RECOVERY_PASSPHRASE, ZkvImage, test_ca

# The client's countdown line (zkv_early/console.py waiting_text), rewritten in place:
# "zkv: request code 482913 - approve at <where> - waiting, 4:58 left" (PIN under sms-pin).
# The " - " after the code: pexpect matches on what has arrived so far, and a console line can
# arrive in pieces ("PIN 3501" of 350178 was once taken for the whole PIN).
PIN = re.compile(r"zkv: (request code|PIN) (\d{4,12}) - ")
# "zkv: unlock request sent to HOST; boot flags: none" (the flags the request reported)
BOOT_FLAGS = re.compile(r"; boot flags: ([a-z., -]+?)\r*\n")
# The approval link in the owner's message (APPROVAL_URL is http://localhost:PORT).
PAGE_LINK = re.compile(r"http://localhost:\d+/o/r/[A-Za-z0-9_-]+")
# initramfs-tools: "Recovery passphrase: "; dracut's console agent: "... (press TAB for no echo)".
RECOVERY_PROMPT = re.compile(r"Recovery passphrase(?: \(press TAB for no echo\)|[^\r\n:]*:)")
# A status line of the client that ends the gateway's part: denied, expired, wrong key, down.
# After a failure with its prompt still open the client says "<reason>; type the recovery
# passphrase (m:ss left, then OpenZFS asks)"; without a prompt, the reason alone.
GATEWAY_GAVE_UP = re.compile(
    r"zkv: ([^\r\n]*?; type the recovery passphrase \([^\r\n]*|the owner denied[^\r\n]*"
    r"|the unlock request expired[^\r\n]*|the released key does not open[^\r\n]*"
    r"|the keystore could not be opened[^\r\n]*|cannot reach the gateway[^\r\n]*)\r*\n"
)
RECOVERY_OK = re.compile(r"zkv: recovery passphrase accepted")
RECOVERY_WRONG = re.compile(r"zkv: wrong recovery passphrase")


@contextlib.contextmanager
def tls_front(upstream_port: int) -> Iterator[int]:
    """HTTPS on a free 127.0.0.1 port, with a certificate for 10.0.2.100 from the test CA,
    forwarding to the gateway's plain HTTP port (the guest only trusts the test CA)."""
    import trustme

    ca_files = test_ca()
    ca = trustme.CA.from_pem(ca_files.cert.read_bytes(), ca_files.key.read_bytes())
    leaf = ca.issue_cert("10.0.2.100", "localhost")
    with tempfile.TemporaryDirectory(prefix="zkv-tls-") as tmp:
        pem = Path(tmp) / "server.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
        with harness_tls_front(upstream_port, pem) as port:
            yield port


@dataclass
class Gateway:
    gw: RunningGateway
    guest_port: int  # what QEMU's guestfwd connects to (the TLS front)
    approver: str = "twilio"
    browser: browsers.Browser | None = None  # policy "page": the owner's, passkey enrolled
    page: dict[str, str] = field(default_factory=dict)  # what approve_on_page read there

    def requests(self) -> list[list[str]]:
        """`zkv-gateway requests`: one row per request, ``[id, kind, state, ...]``."""
        return [line.split() for line in self.gw.cli("requests").stdout.splitlines()]

    def pending_request(self, timeout: float = 60) -> str:
        """The id of the newest pending unlock request."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fields in reversed(self.requests()):
                if len(fields) >= 3 and fields[1] == "unlock" and fields[2] == "pending":
                    return fields[0]
            time.sleep(0.5)
        raise AssertionError("no pending unlock request at the gateway")

    def last_unlock_state(self) -> str:
        """State of the newest unlock request (`zkv-gateway requests`)."""
        rows = [r for r in self.requests() if len(r) >= 3 and r[1] == "unlock"]
        return rows[-1][2] if rows else ""

    def _message_with(self, code: str) -> str:
        """The text the gateway sent the owner (Twilio's API stand-in recorded it) for ``code``."""
        deadline = time.monotonic() + 10
        while True:
            texts = [text for text in self.gw.notifications() if code in text]
            if texts:
                return texts[-1]
            assert time.monotonic() < deadline, f"no message to the owner with code {code}"
            time.sleep(0.1)

    def approve_on_page(self, code: str) -> None:
        """As the owner under the page policy: open the link of the message for ``code`` in the
        browser, note what the page shows (``page``: a boot's flags and command line, whether its
        key is held by a TPM, or a planned reboot's window), approve with the passkey."""
        assert self.browser is not None, "gateway(policy='page') enrols the owner's passkey"
        link = PAGE_LINK.search(self._message_with(code))
        assert link, "the message carries no approval link"
        self.browser.open(link[0])
        self.page = {"code": self.browser.text("code")}
        for name in ("boot-flags", "cmdline", "within", "key-in-tpm"):
            if self.browser.exists(name):
                self.page[name.replace("-", "_")] = self.browser.text(name)
        self.browser.click("approve")
        self.page["status"] = self.browser.status(lambda s: "Approved" in s or "Not done" in s)

    def _reply(self, pin: str, body: str) -> None:
        """As the owner: reply ``body`` by SMS to the text that carried ``pin``. The webhook is
        signed exactly as Twilio signs it (X-Twilio-Signature over URL and form) and comes from
        the owner's number; Twilio's API stand-in recorded the text the gateway sent. Returns at
        once (no CLI round trips: the client's fallback window is short); check the outcome
        with last_unlock_state() after the boot."""
        self._message_with(pin)
        status = self.gw.sms(body)
        assert status == 200, f"webhook answered {status}"

    def approve_pin(self, pin: str) -> None:
        if self.approver == "twilio":
            self._reply(pin, pin)
        else:
            self.gw.approve(self.pending_request(), pin)

    def deny_pin(self, pin: str) -> None:
        if self.approver == "twilio":
            self._reply(pin, f"NO {pin}")
        else:
            self.gw.deny(self.pending_request())


@contextlib.contextmanager
def gateway(
    zimg: ZkvImage,
    tmp: Path,
    approver: str = "twilio",
    secret: str | None = None,
    policy: str = "sms-pin",
    tpm: Swtpm | None = None,
) -> Iterator[Gateway]:
    """The real gateway releasing ``secret`` (default: the image's repository key), the
    image's host invited by the owner and enrolled (its own secret, zkv-HOSTNAME-...), and the TLS
    front the guest talks to.

    ``approver="twilio"`` (default): the real twilio SDK texts the owner through the local
    Twilio API stand-in, and approve_pin/deny_pin answer through the signed SMS webhook.
    ``"console"``: the owner's CLI (`zkv-gateway approve ID PIN`), as in `make demo`.
    ``policy="page"`` (twilio): the owner "alice" enrols a passkey in headless chromium first,
    and approve_on_page approves through the link in her message.
    ``tpm``: enrol the key this TPM holds, with its evidence (the gateway trusts its EK
    certificate's CA), in place of the image's file key (guest_tpm.serving)."""
    released = (secret or zimg.repository_key).encode()
    page = policy == "page"
    settings: dict[str, object] = {"APPROVAL_POLICY": policy} if approver == "twilio" else {}
    if tpm is not None:
        bundle = tmp / "tpm-cas.pem"
        bundle.write_bytes(tpm.ca_bundle)
        settings["TPM_CA_BUNDLE"] = str(bundle)
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(
            running_gateway(
                tmp, approver=approver, secret=released, settings=settings, approval_page=page
            )
        )
        browser = None
        if page:
            browser = stack.enter_context(browsers.chromium())
            browsers.enrol_owner(gw, browser, "alice")
        if tpm is None:
            gw.admit(client.Host(hostname=HOSTNAME, private_key=zimg.host_private_key))
        else:
            tpm_enrol.admit(gw, HOSTNAME, tpm)
        port = int(gw.url.rsplit(":", 1)[1])
        front = stack.enter_context(tls_front(port))
        yield Gateway(gw, front, approver, browser)


@contextlib.contextmanager
def unreachable_port() -> Iterator[int]:
    """A loopback port where nothing listens: guestfwd's socat fails, the guest sees a reset."""
    yield free_port()


@dataclass
class Outcome:
    root: str = ""
    data_mounted: bool = False
    pin: str | None = None  # the code the console showed
    code_kind: str | None = None  # what the console called it: "request code" or "PIN"
    boot_flags: str | None = None  # what the console said the request reported
    kernel: float | None = None
    root_at: float | None = None  # the real root's marker line (after zfs-mount.service)
    switched_at: float | None = None  # the real root's systemd took over (root mounted)
    stock_prompts: list[float] = field(default_factory=list)
    recovery_prompts_answered: list[float] = field(default_factory=list)
    gateway_gave_up: str | None = None
    events: list[str] = field(default_factory=list)

    @property
    def kernel_to_root(self) -> float | None:
        if self.kernel is None or self.root_at is None:
            return None
        return self.root_at - self.kernel

    @property
    def kernel_to_switched(self) -> float | None:
        if self.kernel is None or self.switched_at is None:
            return None
        return self.switched_at - self.kernel


def run_boot(
    guest: Guest,
    *,
    on_pin: Callable[[str], object] | None = None,
    recovery: str | None = None,
    stock: str | None = None,
    answer_after_gateway_gave_up: bool = True,
    timeout: float = 600,
    echo: Callable[[str], None] | None = None,
) -> Outcome:
    """Drive one boot until the real root's marker.

    ``on_pin``: called once with the code the client shows (a request code, or a PIN).
    ``recovery`` / ``stock``: what to type at zkv's recovery prompt / OpenZFS's prompt (None: a
    stock prompt fails the test, a recovery prompt is left waiting, as the racing prompt of an
    approved boot is). With
    ``answer_after_gateway_gave_up``, the recovery prompt is answered only after the client said
    the gateway part failed (denied, expired, wrong key, unreachable): that is the fallback
    (the client keeps its prompt open for ``[timeouts] fallback`` seconds after saying so).
    """
    out = Outcome()
    deadline = time.monotonic() + timeout
    armed_recovery = True
    armed_stock = True
    recovery_prompt_open = False
    patterns = [
        driver.KERNEL_START,
        PIN,
        RECOVERY_PROMPT,
        driver.PROMPT,
        driver.KEY_REJECTED,
        driver.MARKER,
        driver.BOOT_FAILED,
        GATEWAY_GAVE_UP,
        RECOVERY_WRONG,
        RECOVERY_OK,
        driver.SWITCHED_ROOT,
        BOOT_FLAGS,
    ]

    def note(text: str) -> None:
        out.events.append(f"{guest.elapsed():6.1f}s {text}")
        if echo:
            echo(text)

    while True:
        index = guest._expect(patterns, deadline, "the zkv boot to reach the real root")
        match = guest.child.match
        if index == 0:
            out.kernel = out.kernel or guest.elapsed()
        elif index == 1 and out.pin is None:
            out.code_kind, out.pin = match.group(1), match.group(2)
            note(f"client shows {out.code_kind} {out.pin}")
            if on_pin is not None:
                on_pin(out.pin)
        elif index == 2:
            recovery_prompt_open = True
            ready = out.gateway_gave_up is not None or not answer_after_gateway_gave_up
            if recovery is not None and armed_recovery and ready:
                note("typing the recovery passphrase")
                out.recovery_prompts_answered.append(guest.elapsed())
                guest.child.send(recovery + "\r")
                armed_recovery = False
        elif index == 3 and armed_stock:
            out.stock_prompts.append(guest.elapsed())
            if stock is None:
                raise guest.fail("OpenZFS prompted for the root key, but zkv should have loaded it")
            note("OpenZFS prompt: typing the root passphrase")
            guest.child.send(stock + "\r")
            armed_stock = False
        elif index == 4:
            armed_stock = True
        elif index == 5:
            out.root_at = guest.elapsed()
            out.root, out.data_mounted = match.group(1), match.group(2) == "yes"
            note(f"real root up: root={out.root} data_mounted={out.data_mounted}")
            return out
        elif index == 6:
            raise guest.fail(f"boot failed: {guest.child.after!r}")
        elif index == 7 and out.gateway_gave_up is None:
            out.gateway_gave_up = match.group(1).strip()
            note(f"client: {out.gateway_gave_up}")
            # systemd-ask-password's prompt (dracut) is not redrawn: type at the open prompt.
            if recovery is not None and armed_recovery and recovery_prompt_open:
                note("typing the recovery passphrase at the prompt still open")
                out.recovery_prompts_answered.append(guest.elapsed())
                guest.child.send(recovery + "\r")
                armed_recovery = False
        elif index == 8:
            armed_recovery = True
            recovery_prompt_open = True
        elif index == 9:
            note("client: recovery passphrase accepted")
        elif index == 10 and out.switched_at is None:
            out.switched_at = guest.elapsed()
            note("switched to the real root")
        elif index == 11 and out.boot_flags is None:
            out.boot_flags = match.group(1)
            note(f"client reports boot flags: {out.boot_flags}")


def keep_tank_in_the_cache_file(guest: Guest) -> None:
    """In the booted guest (logged in): tank into the cache file, as a host's data pools are,
    and written out. The test bed ships no cache file; once the first boot left one (rpool
    only), Debian's zfs-import-scan stands down for zfs-import-cache, and the next boot of the
    same disk would not import tank."""
    guest.check("zpool set cachefile=/etc/zfs/zpool.cache tank && sync", timeout=180)


def no_leftovers(guest: Guest, zimg: ZkvImage, more_secrets: Sequence[str] = ()) -> dict[str, str]:
    """After boot: what is under /run/zkv, which key material /run holds (the test bed's
    secrets and ``more_secrets``), the boot network."""
    guest.login()
    secrets = (
        testbed.ROOT_PASSPHRASE,
        zimg.image.data_key(),
        zimg.repository_key,
        RECOVERY_PASSPHRASE,
        *more_secrets,
    )
    patterns = " ".join(f"-e {s}" for s in secrets)
    return {
        "run_zkv": _last_output(guest, "ls -A /run/zkv 2>/dev/null | wc -l"),
        "secrets_in_run": _last_output(
            guest, f"grep -rlsF {patterns} /run /tmp /dev/shm 2>/dev/null | wc -l"
        ),
        "global_addresses": _last_output(guest, "ip -o -4 addr show scope global | wc -l"),
        "net_conf": _last_output(guest, "ls /run/net-*.conf 2>/dev/null | wc -l"),
        "dhclient": _last_output(guest, "pgrep -c dhclient || true"),
        "handover_unit": _last_output(
            guest, "systemctl show -p ActiveState,Result zkv-load-keys.service | tr '\\n' ' '"
        ),
        # milliseconds from the unit leaving "inactive" to its main process's exit
        "load_keys_ms": _last_output(
            guest,
            "u=zkv-load-keys.service; echo $(( ($(systemctl show -P ExecMainExitTimestampMonotonic"
            " $u) - $(systemctl show -P InactiveExitTimestampMonotonic $u)) / 1000 ))",
        ),
    }


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FACT = re.compile(r"^ZKV-FACT (\w+)=(.*)$", re.M)


def facts(guest: Guest, commands: Mapping[str, str], timeout: float = 180) -> dict[str, str]:
    """In the logged-in guest: the output of each shell command (one line, newlines turned to
    spaces) under its name, all in one round trip over the console."""
    script = "; ".join(
        f"printf 'ZKV-FACT {name}=%s\\n' \"$( ({command}) 2>&1 | tr '\\n' ' ')\""
        for name, command in commands.items()
    )
    output = _ANSI.sub("", guest.check(script, timeout)).replace("\r", "")
    found = {m.group(1): m.group(2).strip() for m in _FACT.finditer(output)}
    missing = set(commands) - set(found)
    if missing:
        raise guest.fail(f"no answer for {sorted(missing)}")
    return found


def _last_output(guest: Guest, command: str) -> str:
    output = _ANSI.sub("", guest.check(command))
    lines = [ln.strip() for ln in output.replace("\r", "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def have_tools() -> bool:
    return all(shutil.which(tool) for tool in ("socat", "qemu-system-x86_64"))


__all__ = [
    "Gateway",
    "Outcome",
    "facts",
    "gateway",
    "no_leftovers",
    "pexpect",
    "run_boot",
    "tls_front",
]

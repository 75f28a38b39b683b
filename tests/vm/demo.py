"""`make demo`: one unattended-but-approved boot of a zkv guest, live on your terminal.

    python3 -m tests.vm.demo [--flavour initramfs-tools|dracut] [--auto-approve]

Builds (or finds in the cache) the zkv guest image, starts the real gateway on 127.0.0.1
(sqlite, file secret backend, console approver), boots the guest under QEMU and shows its
serial console. When the guest shows a PIN, approve it from another terminal with the
`zkv-gateway approve ID PIN` command printed here (or pass --auto-approve for CI smoke runs).
Needs root and the e2e prerequisites (tests/vm/README.md); the first build takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.vm import testbed, zkv_image
from tests.vm.driver import Guest
from tests.vm.zkv_boot import Gateway, gateway, no_leftovers, run_boot

BOLD, RESET = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def step(message: str) -> None:
    print(f"\n{BOLD}==> {message}{RESET}", flush=True)


class _Tee:
    """pexpect logfile: the driver's console log, and the terminal."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets

    def write(self, data: str) -> None:
        for target in self.targets:
            target.write(data)

    def flush(self) -> None:
        for target in self.targets:
            target.flush()


def _approve_command(gw: Gateway, request_id: str, pin: str) -> str:
    """The owner's command, exactly as it can be pasted into another root shell: the installed
    `zkv-gateway` when it is on PATH, else this checkout's module with this interpreter."""
    env = f"CONFIG_FILE={shlex.quote(str(gw.gw.config_file))}"
    if shutil.which("zkv-gateway"):
        return f"{env} zkv-gateway approve {request_id} {pin}"
    repo = shlex.quote(str(zkv_image.REPO))
    python = shlex.quote(sys.executable)
    return f"cd {repo} && {env} {python} -m gateway.cli approve {request_id} {pin}"


def _print_notifications(gw: Gateway, stop: threading.Event) -> None:
    """What the owner would get by SMS (the console approver prints it to the gateway's log)."""
    seen = 0
    while not stop.wait(0.5):
        texts = gw.gw.notifications()
        for text in texts[seen:]:
            step(f"gateway -> owner (would be an SMS): {text}")
        seen = len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flavour",
        choices=testbed.FLAVOURS,
        default="initramfs-tools",
        help="initrd generator of the guest (default: %(default)s, the faster)",
    )
    parser.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve the PIN at once (CI smoke test; no human needed)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the whole boot")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (image builder: chroot, mounts)", file=sys.stderr)
        return 1

    channel = testbed.default_channel()
    step(
        f"building or finding the zkv guest image ({args.flavour}, OpenZFS channel {channel}); "
        "the first build takes several minutes"
    )
    started = time.monotonic()
    zimg = zkv_image.build(args.flavour, channel)
    print(f"    image: {zimg.image.directory} ({time.monotonic() - started:.0f} s)")
    print(
        f"    root {testbed.ROOT_DATASET} (passphrase) and {testbed.DATA_DATASET} (raw key) "
        "are both in the keystore inside the initramfs, sealed by the repository key"
    )

    with tempfile.TemporaryDirectory(prefix="zkv-demo-") as tmp:
        step(
            "starting the gateway on 127.0.0.1 (gunicorn, sqlite, file secret, console approver)"
            " and enrolling the guest's host key"
        )
        with gateway(zimg, Path(tmp), approver="console") as gw:
            print(
                f"    gateway {gw.gw.url}; the guest reaches it as {zkv_image.GATEWAY_URL} "
                f"(QEMU guestfwd -> TLS on 127.0.0.1:{gw.guest_port})"
            )
            stop = threading.Event()
            watcher = threading.Thread(target=_print_notifications, args=(gw, stop), daemon=True)
            watcher.start()

            def on_pin(pin: str) -> None:
                request_id = gw.pending_request()
                command = _approve_command(gw, request_id, pin)
                if args.auto_approve:
                    # Runs the very command a person would be shown, so the demo checks it.
                    step(f"--auto-approve: {command}")
                    subprocess.run(["sh", "-c", command], check=True, timeout=60)
                else:
                    step("the guest waits for the owner. In another terminal, run:")
                    print(f"\n    {command}\n", flush=True)

            step("booting the guest (QEMU, TCG: about a minute); its console follows")
            guest = Guest(zimg.image, host_port=gw.guest_port)
            try:
                guest.start()
                guest.child.logfile_read = _Tee(guest._log, sys.stdout)
                out = run_boot(
                    guest,
                    on_pin=on_pin,
                    timeout=args.timeout,
                    echo=lambda text: step(f"[test driver] {text}"),
                )
                step(
                    f"real root mounted {out.kernel_to_root or 0:.1f} s after the kernel "
                    f"started; {testbed.DATA_DATASET} mounted: {out.data_mounted}; "
                    f"OpenZFS prompts shown: {len(out.stock_prompts)}"
                )
                step("checking what the initramfs left behind")
                left = no_leftovers(guest, zimg)
                guest.check("zfs list -o name,keystatus,mounted")
            finally:
                stop.set()
                guest.close()
    step("summary")
    for name, value in left.items():
        print(f"    {name:18} {value}")
    ok = out.data_mounted and not out.stock_prompts and left["secrets_in_run"] == "0"
    print(f"\n{BOLD}demo {'passed' if ok else 'FAILED'}{RESET}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The zkv guest image: the test bed's image with zkv installed, enrolled and holding a keystore.

Two layers on top of tests/vm/builder.py:

1. the test bed's *payload* (cached chroot + disk): what the real root needs from
   ``make install-files`` (the zipapp, zkv-load-keys.service, the CLI), /etc/zkv/early.conf
   pointing at https://10.0.2.100/ and the test CA. Its initrd is the flavour's own: the
   "without zkv" reference of the benchmark;
2. ``zkv-initrd`` (here): ``make install-files`` again (all of it, so a change to a hook only
   rebuilds this layer), the keystore (root passphrase + tank's key, which is only known once
   the disk exists) and the host key in /boot/zkv, all in an overlayfs view of the payload
   chroot, and the initrd rebuilt there. Kernel and disk are the payload image's (symlinks);
   only the initrd differs.

Test secrets only: they protect throw-away disk images.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.vm import builder, cache, chroot_run, luks_layout, testbed
from tests.vm.chroot_layers import Payload
from tests.vm.disk import only_file
from tests.vm.testbed import Channel, Flavour, Image
from zkv import crypto, hostkey, keystore, protocol

REPO = Path(__file__).resolve().parents[2]
Layout = Literal["zfs", "luks"]
RECOVERY_PASSPHRASE = "zkv-e2e-recovery-passphrase"
# QEMU's guestfwd forwards port 80 only, so TLS runs on port 80.
GATEWAY_URL = "https://10.0.2.100:80/"
GUEST_CA = "/etc/zkv/gateway-ca.pem"
HOSTNAME = "zkv-e2e"

# Inside the chroot: rebuild the initrd with whatever generator the flavour has.
_REGENERATE = """\
set -eu
if command -v update-initramfs >/dev/null; then
    update-initramfs -u -k all
else
    dracut --force --regenerate-all
fi
"""
_EARLY_CONF_TEMPLATE = """\
# zkv e2e: the gateway is the host's loopback, reached through QEMU's guestfwd.
[gateway]
url = {url}
ca_file = {ca}
request_timeout = 15

[timeouts]
network = 180
total = 420
zfs = 120
{fallback}"""
# Generous waits: under TCG on a loaded host the link and a passphrase's PBKDF2 can take
# minutes; no scenario waits for them to expire. A short fallback: after a denial or a bad
# release zkv's prompt stays up 10 s (not 120 s), then OpenZFS's own prompt appears (the
# wrong-key scenario types the passphrase there).
_EARLY_CONF = _EARLY_CONF_TEMPLATE.format(url=GATEWAY_URL, ca=GUEST_CA, fallback="fallback = 10\n")


@dataclass(frozen=True)
class ZkvImage:
    image: Image  # bootable with tests.vm.driver.Guest
    base: Image  # the same disk with the payload's initrd (zkv installed, not set up)
    repository_key: str  # 64 hex: what the gateway must release
    host_key: Path
    # With a TPM-held host key: the swtpm state that holds it (tests/vm/guest_tpm.py); the
    # EK certificate's CA beside it.
    tpm_state: Path | None = None

    @property
    def host_private_key(self) -> bytes:
        return hostkey.load(self.host_key)

    @property
    def host_id(self) -> str:
        return protocol.host_id_of(crypto.ed25519_public(self.host_private_key))


@dataclass(frozen=True)
class TestCa:
    cert: Path
    key: Path


def test_ca() -> TestCa:
    """One CA per cache: its certificate is baked into the cached images."""
    import trustme

    directory = testbed.cache_dir() / "zkv-ca"
    cert, key = directory / "ca.pem", directory / "ca.key"
    if not (cert.is_file() and key.is_file()):
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="zkv e2e test CA")
        ca.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        ca.cert_pem.write_to_path(str(cert))
    return TestCa(cert, key)


def _sources_digest() -> str:
    """What `make install-files` copies, so that a change rebuilds the images."""
    parts = [
        cache.tree_digest(REPO / name)
        for name in ("dracut", "initramfs-tools", "systemd", "zkv", "zkv_admin", "zkv_early")
    ]
    parts.append(cache.file_digest(REPO / "mk" / "install.mk"))
    return cache.key_of({"sources": parts})


PYTHON_PACKAGES = ("zkv", "zkv_admin", "zkv_early")  # what `make install-files` copies


def build_pyz(target: Path) -> Path:
    subprocess.run(
        ["python3", "-m", "zkv_early.build_pyz", "--output", str(target)],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return target


# Installed by the zkv-initrd layer only: the initrd generators' parts.
_INITRD_PARTS = (
    "usr/lib/dracut",
    "usr/share/initramfs-tools",
    "etc/zfs",
    "usr/lib/zkv/initramfs-files",
)


def install_files(
    destdir: Path, pyz: Path, python_src: Path = REPO, early_conf: str = _EARLY_CONF
) -> None:
    subprocess.run(
        [
            "make",
            "-s",
            "-f",
            "mk/install.mk",
            "install-files",
            f"DESTDIR={destdir}",
            "PREFIX=/usr",
            f"ZKV_PYZ={pyz}",
            f"ZKV_PYTHON_SRC={python_src}",
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (destdir / "etc/zkv/early.conf").write_text(early_conf)
    shutil.copyfile(test_ca().cert, destdir / GUEST_CA.lstrip("/"))


def _stage_payload(work: Path, layout: Layout = "zfs") -> Payload:
    overlay = work / "overlay"
    # The real root runs the code under test too (zkv heartbeat, zkv reboot, handover-load): a
    # payload image is cheap since it is derived from the base image (disk_delta.py).
    install_files(overlay, build_pyz(work / "zkv-early.pyz"))
    for part in _INITRD_PARTS:
        target = overlay / part
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    script = luks_layout.PACKAGES_SCRIPT if layout == "luks" else None
    return Payload(overlay=overlay, script=script)


def build(
    flavour: Flavour,
    channel: Channel,
    *,
    tpm: bool = False,
    layout: Layout = "zfs",
    faulty: bool = False,
) -> ZkvImage:
    """The cached zkv image for this flavour and channel, built as needed (minutes).

    ``tpm``: the host key is made in a software TPM (the image's hooks then add the kernel's
    TPM drivers); boot it with that TPM attached (guest_tpm.attached(image.tpm_state)).
    ``layout="luks"``: the pools on LUKS (tests/vm/luks_layout.py); ``faulty`` gives that
    keystore a wrong key for the zvol and a loop file that does not exist."""
    with tempfile.TemporaryDirectory(prefix="zkv-payload-") as tmp:
        payload = _stage_payload(Path(tmp), layout)
        if layout == "luks":
            base = luks_layout.build(flavour, channel, payload)
            chroot_dir = luks_layout.payload_chroot(flavour, channel, payload).root
        else:
            base = builder.build(flavour, channel, payload)
            chroot_dir = _payload_chroot(flavour, channel, payload)
    inputs = {
        "layer": "zkv-initrd",
        "image": base.directory.name,
        "sources": _sources_digest(),
        "recovery": RECOVERY_PASSPHRASE,
        "early_conf": _EARLY_CONF,
        "ca": cache.file_digest(test_ca().cert),
    }
    if tpm:
        inputs["host_key"] = "tpm"
    if layout == "luks":
        inputs["layout"] = "luks-faulty" if faulty else "luks"
    store_entries = _entries(base, layout, faulty)

    def make(work: Path) -> None:
        _make(base, chroot_dir, work, tpm, store_entries)

    name = f"zkv-{flavour}-{channel}" + ("-tpm" if tpm else "")
    name += {"zfs": "", "luks": "-luks-faulty" if faulty else "-luks"}[layout]
    directory = cache.entry(name, inputs, make)
    image = Image(flavour, channel, directory)
    return ZkvImage(
        image=image,
        base=base,
        repository_key=(directory / "repository.key").read_text().strip(),
        host_key=directory / "host.key",
        tpm_state=directory / "tpm" / "state" if tpm else None,
    )


def _payload_chroot(flavour: Flavour, channel: Channel, payload: Payload) -> Path:
    from tests.vm import chroot_layers

    base = chroot_layers.flavour(flavour, channel)
    return chroot_layers.with_payload(base, payload, f"{flavour}-{channel}-payload").root


def _entries(base: Image, layout: Layout, faulty: bool) -> list[tuple[keystore.Entry, bytes]]:
    if layout == "luks":
        return luks_layout.entries(base.data_key(), faulty=faulty)
    return [
        (keystore.Entry(testbed.ROOT_DATASET, "passphrase"), testbed.ROOT_PASSPHRASE.encode()),
        (keystore.Entry(testbed.DATA_DATASET, "hex"), base.data_key().encode()),
    ]


def _make(
    base: Image,
    chroot_root: Path,
    work: Path,
    tpm: bool,
    store_entries: list[tuple[keystore.Entry, bytes]],
) -> None:
    repository_key = keystore.new_repository_key()
    (work / "repository.key").write_text(keystore.format_repository_key(repository_key) + "\n")
    host_key = work / "host.key"
    if tpm:
        from tests.vm import guest_tpm

        held = guest_tpm.make_host_key(work / "tpm" / "state", work / "tpm" / "ca")
        hostkey.save_tpm(host_key, held)
    else:
        hostkey.generate(host_key)
    store = keystore.create(repository_key, RECOVERY_PASSPHRASE.encode())
    for entry, material in store_entries:
        store.put(entry, material)
    with overlay_view(chroot_root, work / "overlay") as root:
        install_files(root, build_pyz(work / "zkv-early.pyz"))
        boot_zkv = root / "boot" / "zkv"
        boot_zkv.mkdir(mode=0o700, parents=True, exist_ok=True)
        keystore.write(boot_zkv / "keystore", store)
        shutil.copyfile(host_key, boot_zkv / "host.key")
        (boot_zkv / "host.key").chmod(0o600)
        script = work / "regenerate.sh"
        script.write_text(_REGENERATE)
        chroot_run.run(root, script)
        shutil.copyfile(only_file(root / "boot", "initrd.img-*"), work / "initrd.img")
    (work / "initrd.img").chmod(0o600)
    (work / "vmlinuz").symlink_to(base.kernel)
    (work / base.disk.name).symlink_to(base.disk)
    shutil.copyfile(base.data_key_file, work / "tank-secure.key")
    shutil.rmtree(work / "overlay")


@contextlib.contextmanager
def overlay_view(lower: Path, work: Path) -> Iterator[Path]:
    """A writable view of a cached chroot that leaves the chroot itself untouched."""
    upper, scratch, merged = work / "upper", work / "work", work / "merged"
    for path in (upper, scratch, merged):
        path.mkdir(parents=True)
    subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={scratch}",
            str(merged),
        ],
        check=True,
    )
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)

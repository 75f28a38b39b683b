"""The gateway's container image: built from a local base, started, /healthz answered, and one
invite + enrol + unlock flow driven through it (`zkv-gateway` inside the container)."""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.harness import protocol_client as client
from tests.harness.gateway import free_port
from tests.vm import container

pytestmark = pytest.mark.e2e
HOST_SECRET = "zkv-e2e-host"  # the invite's secret: a file beside SECRET_FILE


@pytest.fixture(scope="module")
def image(prerequisites: None) -> str:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail("podman and runc are needed: apt install podman runc")
    return container.build_image()


@pytest.fixture
def gateway(image: str, tmp_path: Path) -> Iterator[tuple[str, str, bytes]]:
    secret = secrets.token_hex(32).encode()
    for file in ("key", HOST_SECRET):  # test secrets; the image's user must read them
        (tmp_path / file).write_bytes(secret)
        (tmp_path / file).chmod(0o644)
    tmp_path.chmod(0o755)  # pytest makes it 0700: the image's user could not reach the key
    port = free_port()
    name = f"zkv-gateway-e2e-{port}"
    started = container.podman(
        "run", "-d", "--name", name, "--network=host", *container.RUN_OPTIONS,
        "-v", f"{tmp_path}:/run/zkv-test:ro",
        "-e", "ZKV_SECRET_SOURCE=file", "-e", "ZKV_SECRET_FILE=/run/zkv-test/key",
        "-e", "ZKV_APPROVER=console",
        image, "zkv-gateway", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--threads", "8",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield name, f"http://127.0.0.1:{port}", secret
    finally:
        container.podman("rm", "-f", "-t", "2", name)


def _cli(name: str, *args: str) -> str:
    done = container.podman("exec", name, "zkv-gateway", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _healthz(name: str, url: str) -> requests.Response:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            return requests.get(url + "/healthz", timeout=5)
        except requests.ConnectionError:
            time.sleep(0.5)
    raise AssertionError(f"no /healthz: {container.podman('logs', name).stderr}")


def test_image_serves_and_releases_once(gateway: tuple[str, str, bytes]) -> None:
    name, url, secret = gateway
    assert _healthz(name, url).status_code == 200
    host = client.Host()
    token = _cli(name, "hosts", "invite", host.hostname, "--secret", HOST_SECRET).strip()
    assert client.enroll(url, host, token).status_code == 202
    boot = client.unlock(url, host)
    assert boot.response.status_code == 201, boot.response.text
    created = boot.created
    _cli(name, "approve", created.request_id, created.pin)
    assert client.opened(boot, client.poll(url, created.request_id, wait=5)) == secret
    again = client.poll(url, created.request_id)
    assert (again.status_code, again.json()) == (401, {"error": "unauthorized"})


def test_image_holds_only_what_the_gateway_imports(image: str) -> None:
    site = "/opt/zkv-gateway/lib/python3.11/site-packages"
    inside = container.podman("run", "--rm", *container.RUN_OPTIONS, image, "ls", site)
    assert inside.returncode == 0, inside.stderr
    packages = inside.stdout.split()
    assert "gateway" in packages and "zkv" in packages
    assert "zkv_admin" not in packages and "zkv_early" not in packages

"""Run the REAL gateway (gunicorn, gthread workers) on a free 127.0.0.1 port, for tests.

Stable interface, also used by the boot-client integration tests::

    from tests.harness.gateway import running_gateway

    with running_gateway(tmp_path, approver="console") as gw:   # or approver="auto" / "twilio"
        gw.url                        # "http://127.0.0.1:<port>"
        gw.secret                     # the bytes released on approval (file secret backend)
        gw.invite("db01")             # `zkv-gateway hosts invite db01`: the one-time token;
                                      # its secret (zkv-db01-...) is made to hold gw.secret
        gw.admit(host)                # invite + enrol over the wire (a protocol_client.Host)
        gw.approve(request_id, pin)   # as the owner, through the CLI (console approver) ...
        gw.deny(request_id)
        gw.sms("123456")              # ... or a signed Twilio webhook (approver="twilio" only)
        gw.notifications()            # owner notification texts so far (console/auto approver)
        gw.audit()                    # `zkv-gateway audit` lines
        gw.cli("hosts", "list")       # any zkv-gateway command -> CompletedProcess

    with tls_front(port, pem) as tls_port:  # HTTPS (key + chain in pem) -> the gateway's port
        ...

Arguments of ``running_gateway``:
    tmp_path   a private directory: database, secret file, config file and log go there.
    approver   "console" (default; nobody approves until you call approve()), "auto" (every
               request and enrolment approved at once; tests only), "twilio" (real twilio SDK
               against the local stand-in of tests/harness/cloud_standins.py; use gw.sms()).
    secret_source  "file" (default) or "azure" (real Azure SDKs against the local stand-ins).
    secret     the secret to release (default: 64 random hex characters, like a repository key).
    settings   more gateway settings (names as in gateway/config.py, e.g. REQUEST_TTL=30).
    env        extra environment for the gunicorn process.
    workers, threads   gunicorn sizing (default 1 worker, 16 threads).

Rate limits are raised well above what tests need unless ``settings`` says otherwise.
Everything listens on 127.0.0.1 only; the process is stopped by its own PID on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OWNER = "+15550000001"
TWILIO_NUMBER = "+15550000002"
TWILIO_ACCOUNT = "AC" + "0" * 32
TWILIO_TOKEN = "test-twilio-auth-token"

STOP_GRACE = 2.0  # seconds for gunicorn's quick shutdown before the process group is killed

TEST_LIMITS = {
    "RATE_PER_SECOND": 1000,
    "RATE_HOST_PER_HOUR": 100000,
    "SMS_PER_HOUR": 1000000,
    "AUTH_FAILURES_PER_HOUR": 1000000,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    secret: bytes
    directory: Path
    config_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(repr=False)
    standins: Any = None  # tests.harness.cloud_standins.Standins when approver="twilio"

    # --- the owner ----------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"zkv-gateway {' '.join(args)}: {result.stderr.strip()}")
        return result

    def invite(self, hostname: str, *options: str, secret: bytes | None = None) -> str:
        """`zkv-gateway hosts invite HOSTNAME [options]` -> the token. The invite's secret
        (named on stderr) is created holding ``secret`` (default gw.secret), as the operator
        would in Key Vault (or, with the file source, as a file beside SECRET_FILE)."""
        result = self.cli("hosts", "invite", hostname, *options)
        name = re.search(r"released from secret (\S+);", result.stderr)
        assert name is not None, result.stderr
        self.put_secret(name[1], secret if secret is not None else self.secret)
        return result.stdout.strip()

    def put_secret(self, name: str, value: bytes) -> None:
        if self.standins is not None:  # the Key Vault stand-in (harmless when unused)
            self.standins.vault_secrets[name] = value.decode()
        path = self.directory / name
        path.write_bytes(value)
        path.chmod(0o600)

    def admit(self, host: Any, *options: str) -> str:
        """Invite ``host`` (a tests.harness.protocol_client.Host) and enrol it: its host id."""
        from tests.harness import protocol_client as client

        response = client.enroll(self.url, host, self.invite(host.hostname, *options))
        assert response.status_code == 202, response.text
        assert response.json() == {"host_id": host.host_id, "status": "approved"}
        return str(host.host_id)

    def revoke_host(self, host_id: str) -> None:
        self.cli("hosts", "revoke", host_id)

    def approve(self, request_id: str, pin: str) -> None:
        self.cli("approve", request_id, pin)

    def deny(self, request_id: str) -> None:
        self.cli("deny", request_id)

    def sms(self, body: str, sender: str = OWNER, sid: str | None = None) -> int:
        """Send an inbound SMS as Twilio would (signed); returns the HTTP status."""
        from tests.harness.cloud_standins import post_signed_sms

        return post_signed_sms(self.url, body, sender, sid).status_code

    # --- what happened ------------------------------------------------------------------------

    def output(self) -> str:
        return self.log_file.read_text(errors="replace")

    def notifications(self) -> list[str]:
        if self.standins is not None:
            return [m["Body"] for m in self.standins.sms_sent]
        return [
            line.split("NOTIFY ", 1)[1]
            for line in self.output().splitlines()
            if line.startswith("NOTIFY ")
        ]

    def audit(self, request_id: str | None = None) -> list[str]:
        args = ["audit", "--limit", "10000", *(["--request", request_id] if request_id else [])]
        return self.cli(*args).stdout.splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # gunicorn: quick shutdown
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                # A worker thread still holds a long-poll a client dropped (up to MAX_WAIT s):
                # end the server's own process group (master and workers), not only the master.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def write_config(path: Path, settings: Mapping[str, Any]) -> None:
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    path.chmod(0o600)


def base_config(directory: Path, secret: bytes, approver: str) -> dict[str, Any]:
    """Database, file secret (written here) and approver in ``directory``; test rate limits."""
    secret_file = directory / "repository-key"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    config: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{directory / 'gateway.sqlite'}",
        "SECRET_SOURCE": "file",
        "SECRET_FILE": str(secret_file),
        "APPROVER": approver,
        "POLL_INTERVAL": 0.1,
        **TEST_LIMITS,
    }
    if approver == "auto":
        config["ALLOW_AUTO_APPROVER"] = True
    return config


def refused_start(directory: Path, settings: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
    """`zkv-gateway serve` with settings that must stop it at start: the finished process. One
    that serves instead is stopped (its whole process group) and raises TimeoutExpired."""
    config_file = directory / "gateway.conf.py"
    write_config(config_file, {**base_config(directory, b"k" * 64, "console"), **settings})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKV_")}
    env.update({"PYTHONPATH": str(REPO), "CONFIG_FILE": str(config_file)})
    command = [sys.executable, "-m", "gateway.cli", "serve", "--bind", f"127.0.0.1:{free_port()}"]
    with subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@contextmanager
def running_gateway(
    tmp_path: Path,
    approver: str = "console",
    secret: bytes | None = None,
    secret_source: str = "file",  # or "azure" (service principal), "azure-managed-identity"
    settings: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    threads: int = 16,
    approval_page: bool = False,
) -> Iterator[RunningGateway]:
    """``approval_page``: APPROVAL_URL is http://localhost:PORT, the address a browser on this
    machine opens (WebAuthn needs a secure context: https, or localhost)."""
    directory = Path(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    secret = secret if secret is not None else secrets.token_hex(32).encode()
    config = base_config(directory, secret, approver)
    port = free_port()
    if approval_page:
        config["APPROVAL_URL"] = f"http://localhost:{port}"
    with ExitStack() as stack:
        proc_env = {k: v for k, v in os.environ.items() if not k.startswith("ZKV_")}
        proc_env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        standins = None
        if approver == "twilio" or secret_source.startswith("azure"):
            from tests.harness import cloud_standins as fakes

            standins = stack.enter_context(fakes.running_standins(directory))
            proc_env.update(standins.process_env())
            if approver == "twilio":
                config.update(fakes.twilio_settings())
            if secret_source.startswith("azure"):
                managed = secret_source == "azure-managed-identity"
                config.update(fakes.azure_settings(managed_identity=managed))
                if managed:
                    proc_env.update(standins.managed_identity_env())
                standins.vault_secrets[fakes.SECRET_NAME] = secret.decode()
        config.update(settings or {})
        config_file = directory / "gateway.conf.py"
        write_config(config_file, config)
        proc_env["CONFIG_FILE"] = str(config_file)
        proc_env.update(env or {})
        url = f"http://127.0.0.1:{port}"
        config_file.with_suffix(".url").write_text(url)
        log_file = directory / "gateway.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway.cli",
                    "serve",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(workers),
                    "--threads",
                    str(threads),
                ],
                env=proc_env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can end the workers too
            )
        gw = RunningGateway(
            url, secret, directory, config_file, log_file, process, proc_env, standins
        )
        stack.callback(gw.stop)
        _wait_healthy(gw)
        yield gw


@contextmanager
def tls_front(upstream_port: int, pem: Path) -> Iterator[int]:
    """HTTPS on a free 127.0.0.1 port (socat) with the key and certificate chain in ``pem``,
    forwarding to the gateway's plain HTTP port: the TLS a reverse proxy adds in production."""
    port = free_port()
    process = subprocess.Popen(
        [
            "socat",
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={pem},verify=0",
            f"TCP:127.0.0.1:{upstream_port}",
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _wait_healthy(gw: RunningGateway, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.process.poll() is not None:
            raise RuntimeError(f"gateway exited ({gw.process.returncode}):\n{gw.output()[-3000:]}")
        try:
            with urllib.request.urlopen(gw.url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gateway did not become healthy:\n{gw.output()[-3000:]}")

"""gateway/openapi.yaml checked against the running gunicorn server with generated inputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from gateway import challenges
from tests.harness.gateway import REPO, running_gateway
from zkv import crypto, protocol

SPEC = REPO / "gateway" / "openapi.yaml"


def test_the_server_serves_its_description(tmp_path: Path) -> None:
    with running_gateway(tmp_path) as gw:
        served = requests.get(gw.url + "/openapi.yaml", timeout=10).text
    assert yaml.safe_load(served) == yaml.safe_load(SPEC.read_text())


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw", approver="twilio", workers=2) as gw:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                str(SPEC),
                "--url",
                gw.url,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance",
                "--max-examples",
                "60",
                "--seed",
                "1",
                # One worker: with two, hypothesis describes the path parameters' filter
                # lambdas in two threads at once (ast.parse), and CPython 3.11 fails that
                # ("AST constructor recursion depth mismatch") now that three operations
                # have a path parameter.
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--request-timeout",
                "40",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=400,
        )
        log = gw.output()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Traceback" not in log and "internal error" not in log


def test_the_heartbeat_is_described_as_zkv_protocol_builds_it() -> None:
    import jsonschema_rs  # schemathesis's validator

    spec = yaml.safe_load(SPEC.read_text())
    assert "post" in spec["paths"][protocol.PATH_HEARTBEAT]

    def check(name: str, document: object) -> None:
        schema = {**spec["components"]["schemas"][name], "components": spec["components"]}
        jsonschema_rs.Draft7Validator(schema).validate(document)

    issued = challenges.issue(bytes(32), 1_800_000_000)
    beat = protocol.Heartbeat.create(crypto.ed25519_generate()[0], issued).to_json()
    check("Heartbeat", beat)
    assert protocol.Heartbeat.from_json(beat).to_json() == beat
    for action in (protocol.ACTION_NONE, protocol.ACTION_WIPE):
        check("HeartbeatAnswer", protocol.HeartbeatAnswer(action).to_json())
    with pytest.raises(jsonschema_rs.ValidationError):
        check("HeartbeatAnswer", {"action": "format-disks"})
    with pytest.raises(protocol.ProtocolViolation):
        protocol.HeartbeatAnswer.from_json({"action": "format-disks"})


def test_the_signed_messages_are_described_field_for_field() -> None:
    schemas = yaml.safe_load(SPEC.read_text())["components"]["schemas"]
    private = crypto.ed25519_generate()[0]
    issued = challenges.issue(bytes(32), 1_800_000_000)
    messages = {
        "Challenge": protocol.Challenge(issued, 1_800_000_000),
        "EnrollRequest": protocol.EnrollRequest.create(
            "db01", private, protocol.new_invite_token(), issued
        ),
        "UnlockRequestV1": protocol.UnlockRequest.create(
            private, "db01", ["tank"], crypto.x25519_generate()[1], issued
        ),
        "UnlockRequestV2": protocol.UnlockRequest.create(
            private,
            "db01",
            ["tank"],
            crypto.x25519_generate()[1],
            issued,
            protocol.BootContext(("rd.break",), "ab" * 32),
        ),
        "Heartbeat": protocol.Heartbeat.create(private, issued),
        "RepositoryKeyQuery": protocol.RepositoryKeyQuery.create(private, issued),
        "RotationRequest": protocol.RotationRequest.create(private, "db01", issued),
        "RepositoryKeyDelivery": protocol.RepositoryKeyDelivery.create(
            private, "0" * 32, bytes(32), issued
        ),
        "RepositoryKeyStatus": protocol.RepositoryKeyStatus("0123456789abcdef"),
    }
    # A TPM-held key's enrolment adds its two optional fields (docs/tpm.md).
    held = messages["EnrollRequest"]._replace(tpm=protocol.TpmEvidence(*[b"x"] * 6)).to_json()
    for name, message in messages.items():
        assert set(schemas[name]["required"]) == set(message.to_json()), name
        optional = set(held) if name == "EnrollRequest" else set()
        assert set(schemas[name]["properties"]) == set(message.to_json()) | optional, name
    assert set(schemas["TpmEvidence"]["properties"]) == set(held["tpm"])
    refs = {one["$ref"].rsplit("/", 1)[1] for one in schemas["UnlockRequest"]["oneOf"]}
    assert refs == {"UnlockRequestV1", "UnlockRequestV2"}
    v2 = schemas["UnlockRequestV2"]["properties"]
    assert v2["boot_flags"]["items"]["enum"] == list(protocol.BOOT_FLAGS)
    assert v2["v"]["enum"] == [protocol.VERSION_BOOT]
    pattern = schemas["ChallengeValue"]["pattern"].removeprefix("^").removesuffix("$")
    assert re.fullmatch(pattern, issued)

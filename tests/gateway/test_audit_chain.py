"""The audit hash chain on the real server and the real CLI: a flow of real requests verifies;
a row changed, removed, reordered or inserted straight in the database is named by
`zkv-gateway audit --verify`; the JSON-lines export re-verifies; concurrent writers (two
gateway processes on one database) keep one linear chain."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway import audit
from tests.gateway.postgres import DATABASES, url_for
from tests.harness import protocol_client as client
from tests.harness.gateway import RunningGateway, running_gateway

BROKEN = 7  # gateway.errors.AuditBroken


@pytest.fixture(scope="module")
def flowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway after enrol, approve host, an approved and released unlock, a denied one."""
    with running_gateway(tmp_path_factory.mktemp("gw")) as gw:
        host = client.Host()
        gw.admit(host)
        released = client.unlock(gw.url, host).created
        gw.approve(released.request_id, released.pin)
        assert client.poll(gw.url, released.request_id, wait=5).status_code == 200
        gw.deny(client.unlock(gw.url, host).created.request_id)
        yield gw


@pytest.fixture
def copy(flowed: RunningGateway, tmp_path: Path) -> tuple[RunningGateway, sqlite3.Connection]:
    """The CLI on a private copy of the flow's database, and a connection to tamper with it."""
    database = tmp_path / "copy.sqlite"
    with sqlite3.connect(flowed.directory / "gateway.sqlite") as source:
        tamper = sqlite3.connect(database, isolation_level=None)
        source.backup(tamper)
    config = tmp_path / "copy.conf.py"
    text = flowed.config_file.read_text()
    config.write_text(text.replace(str(flowed.directory / "gateway.sqlite"), str(database)))
    return dataclasses.replace(flowed, env={**flowed.env, "CONFIG_FILE": str(config)}), tamper


def verify(gw: RunningGateway) -> tuple[int, str]:
    result = gw.cli("audit", "--verify", check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def broken_at(gw: RunningGateway, entry: int, problem: str) -> bool:
    """--verify fails naming this entry first; the problem is the message's start."""
    code, out = verify(gw)
    return code == BROKEN and out.startswith(
        f"zkv-gateway: audit log broken at entry {entry}: {problem}"
    )


def test_the_flow_verifies(flowed: RunningGateway) -> None:
    code, out = verify(flowed)
    events = " ".join(flowed.audit())
    assert code == 0, out
    assert out.startswith(f"audit log intact: {len(flowed.audit())} entries, head ")
    assert all(
        e in events for e in ("invite_issued", "host_enrolled", "approved", "released", "denied")
    )


@pytest.mark.parametrize("change", ["detail = 'nothing to see'", "event = 'denied'", "at = 1.0"])
def test_a_changed_entry_is_named(
    copy: tuple[RunningGateway, sqlite3.Connection], change: str
) -> None:
    gw, db = copy
    db.execute(f"UPDATE audit SET {change} WHERE id = 3")
    assert broken_at(gw, 3, "its contents were changed"), verify(gw)


def test_a_removed_entry_is_named(copy: tuple[RunningGateway, sqlite3.Connection]) -> None:
    gw, db = copy
    db.execute("DELETE FROM audit WHERE id = 3")
    assert broken_at(gw, 4, "does not follow entry 2 ("), verify(gw)


def test_reordered_entries_are_named(copy: tuple[RunningGateway, sqlite3.Connection]) -> None:
    gw, db = copy
    columns = "at, event, request_id, host_id, source_ip, detail, prev_hash, hash"
    rows = {
        i: db.execute(f"SELECT {columns} FROM audit WHERE id = ?", (i,)).fetchone() for i in (3, 4)
    }
    assignments = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
    for target, source in ((3, 4), (4, 3)):
        db.execute(f"UPDATE audit SET {assignments} WHERE id = ?", (*rows[source], target))
    assert broken_at(gw, 3, "does not follow entry 2 ("), verify(gw)


def test_an_inserted_entry_is_named(copy: tuple[RunningGateway, sqlite3.Connection]) -> None:
    """Even an entry forged with the right hash: the next real entry does not follow it."""
    gw, db = copy
    db.execute("UPDATE audit SET id = id + 100 WHERE id > 3")
    db.row_factory = sqlite3.Row
    third = dict(db.execute("SELECT * FROM audit WHERE id = 3").fetchone())
    forged = {**third, "id": 4, "detail": "forged", "prev_hash": third["hash"]}
    forged["hash"] = audit.digest(forged, third["hash"])
    db.execute(
        f"INSERT INTO audit ({', '.join(forged)}) VALUES ({', '.join('?' * len(forged))})",
        tuple(forged.values()),
    )
    assert broken_at(gw, 104, "does not follow entry 4 ("), verify(gw)


def test_the_export_is_json_lines_that_reverify(flowed: RunningGateway) -> None:
    lines = flowed.cli("audit", "--json").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert {"id", "event", "prev_hash", "hash"} <= set(rows[0]) and rows[0][
        "prev_hash"
    ] == audit.GENESIS
    count, head = audit.check(rows)
    assert verify(flowed) == (0, f"audit log intact: {count} entries, head {head}")
    assert count == len(lines) and flowed.secret.decode() not in "\n".join(lines)


def test_a_database_from_before_the_chain_is_upgraded(
    copy: tuple[RunningGateway, sqlite3.Connection],
) -> None:
    gw, db = copy
    (entries,) = db.execute("SELECT count(*) FROM audit").fetchone()
    db.execute("ALTER TABLE audit DROP COLUMN hash")
    db.execute("ALTER TABLE audit DROP COLUMN prev_hash")
    code, out = verify(gw)
    assert (code, out.split(", head")[0]) == (0, f"audit log intact: {entries} entries")


@pytest.mark.parametrize("kind", DATABASES)
def test_two_gateways_on_one_database_keep_one_chain(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = {"SQLALCHEMY_DATABASE_URI": url_for(kind, tmp_path, request)}
    with (
        running_gateway(tmp_path / "a", settings=settings) as a,
        running_gateway(tmp_path / "b", settings=settings) as b,
    ):
        hosts = [client.Host(hostname="a"), client.Host(hostname="b")]
        a.admit(hosts[0]), b.admit(hosts[1])
        calls = [(a.url, hosts[0]), (b.url, hosts[1])] * 20
        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(lambda call: client.unlock(*call).response.status_code, calls)
            codes = list(answers)
        assert codes == [201] * len(calls)
        code, out = verify(a)
        assert code == 0 and out.startswith("audit log intact: "), out
        assert int(out.split()[3]) == len(a.cli("audit", "--json").stdout.splitlines()) >= 40

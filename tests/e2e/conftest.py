"""Fixtures of the VM test bed: prerequisites, cached images, guests with console logs."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm import builder, packages, testbed
from tests.vm.driver import BootResult, Guest, Timings
from tests.vm.testbed import Channel, Flavour, Image
from tests.vm.zkv_boot import Outcome

REQUIRED_TOOLS = (
    "qemu-system-x86_64",
    "qemu-img",
    "mmdebstrap",
    "sgdisk",
    "mke2fs",
    "debugfs",
    "socat",
)
# Boot timings of this run, for the terminal summary: a file, because under pytest-xdist the
# boots happen in worker processes and the summary is printed by the controller.
_TIMINGS_ENV = "ZKV_E2E_TIMINGS"


# `make e2e` runs two workers (pytest-xdist, --dist loadscope): every test is a unit of its
# own, except these modules, whose tests share a module-scoped chroot or container
# that each worker would otherwise set up again. (xdist's loadgroup would say this with marks,
# but with pytest 9 it ignores them.)
_ONE_WORKER_MODULES = frozenset(
    {"test_container.py", "test_deb_gateway.py", "test_dracut_stock.py"}
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in _ONE_WORKER_MODULES else nodeid

    return Scheduler(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots QEMU guests with real OpenZFS (slow)")
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        handle, path = tempfile.mkstemp(prefix="zkv-e2e-timings-", suffix=".tsv")
        os.close(handle)
        os.environ[_TIMINGS_ENV] = path  # the workers, started after this, inherit it


def _missing_prerequisites() -> list[str]:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap --mode=root, chroot, mounts)")
    return missing


@pytest.fixture(scope="session")
def prerequisites() -> None:
    """Skip locally without the tools; under CI a missing tool is a failure, never a skip."""
    missing = _missing_prerequisites()
    if not missing:
        return
    message = (
        f"e2e prerequisites missing: {', '.join(missing)} "
        "(install tests/vm/apt-packages.txt, run as root)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def images(prerequisites: None) -> Callable[[Flavour, Channel], Image]:
    """Cached image lookup/build; the first call per image may take several minutes."""
    built: dict[tuple[Flavour, Channel], Image] = {}

    def get(flavour: Flavour, channel: Channel) -> Image:
        if (flavour, channel) not in built:
            built[(flavour, channel)] = builder.build(flavour, channel)
        return built[(flavour, channel)]

    return get


@pytest.fixture
def guest_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Guest]]:
    """Start guests whose console goes to <cache>/logs/<test>.log; all are killed afterwards."""
    guests: list[Guest] = []
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def start(image: Image, host_port: int | None = None) -> Guest:
        log = testbed.cache_dir() / "logs" / f"{name}-{len(guests)}.log"
        guest = Guest(image, host_port=host_port, console_log=log)
        guests.append(guest)
        guest.start()
        return guest

    yield start
    for guest in guests:
        guest.close()


def record_boot(image: Image, scenario: str, result: BootResult) -> None:
    """Remember boot timings for the terminal summary and <cache>/logs/timings.tsv."""
    line = f"{image.flavour}\t{image.channel}\t{scenario}\t{result.timings.summary()}"
    this_run = os.environ.get(_TIMINGS_ENV)
    if this_run:
        with open(this_run, "a") as handle:  # one short append per line: no interleaving
            handle.write(line + "\n")
    path = testbed.cache_dir() / "logs" / "timings.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\t{line}\n")


def record_outcome(image: Image, scenario: str, out: Outcome) -> None:
    """record_boot for a zkv boot driven by zkv_boot.run_boot."""
    timings = Timings(
        kernel=out.kernel, prompts=out.stock_prompts, root=out.root_at, switched=out.switched_at
    )
    record_boot(image, scenario, BootResult(out.root, out.data_mounted, timings))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    this_run = os.environ.get(_TIMINGS_ENV)
    if not this_run or hasattr(terminalreporter.config, "workerinput"):
        return
    path = Path(this_run)
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    if lines:
        terminalreporter.section("zkv e2e boot timings (seconds since QEMU start)")
        for line in lines:
            terminalreporter.write_line(line)


def console_logs() -> Path:
    return testbed.cache_dir() / "logs"


@pytest.fixture(scope="session")
def debs(prerequisites: None) -> packages.Debs:
    """`make deb` (PyPI for the gateway's venv), once for all workers: cached by its inputs."""
    return packages.cached_build()

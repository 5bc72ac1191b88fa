"""Fixtures for the system tests: real systemd test hosts (see docs/testhost.md).

`testhost` is one host shared by the whole session (booting is cheap, ~1 s, but the first
import of torch in a fresh guest is not); `fresh_testhost` makes hosts of a test's own.

Without root (or another capability the hosts need) the system tests are skipped, unless the
CI environment variable is set: in CI a machine that cannot boot test hosts is a failure.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# tests/system has no __init__.py, so make `tests.support` importable however pytest is run.
_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from tests.support import deployment  # noqa: E402
from tests.support import testhost as th  # noqa: E402

_SYSTEM_DIR = Path(__file__).resolve().parent
_host_numbers = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the whole system suite up front (one clear reason) where hosts cannot boot."""
    ok, reason = th.is_supported()
    if ok or deployment.in_ci():
        return  # in CI the fixtures fail instead
    skip = pytest.mark.skip(reason=f"system tests need a test host: {reason}")
    for item in items:
        if _SYSTEM_DIR in Path(item.path).parents:
            item.add_marker(skip)


def _up_or_fail(name: str, login: str = th.DEFAULT_LOGIN) -> th.TestHostInfo:
    try:
        return th.up(name, login=login)
    except th.TestHostError as exc:  # `up` has already cleaned up after itself
        pytest.fail(f"could not boot test host {name}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def testhost() -> Iterator[th.TestHostInfo]:
    """A running test host shared by the session; powered off and removed at the end."""
    deployment.require_test_hosts()
    name = f"sdt-{os.getpid()}"
    info = _up_or_fail(name)
    try:
        yield info
    finally:
        th.down(name)


@pytest.fixture
def fresh_testhost() -> Iterator[Callable[..., th.TestHostInfo]]:
    """A factory: each call boots a new host of this test's own (with a cloud's login, GCP's
    by default); all go down afterwards."""
    deployment.require_test_hosts()
    names: list[str] = []

    def make(login: str = th.DEFAULT_LOGIN) -> th.TestHostInfo:
        name = f"sdt-{os.getpid()}-{next(_host_numbers)}"
        names.append(name)
        return _up_or_fail(name, login)

    yield make
    errors = []
    for name in names:
        try:
            th.down(name)
        except th.TestHostError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def deployed_host(
    unity_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[deployment.Deployment]:
    """A host deployed once, shared by test_exposure, test_faults and test_overload.

    Each test leaves it serving `unity_checkpoint`; the host goes down at the end.
    """
    deployment.require_test_hosts()
    name = f"sdh-{os.getpid()}"
    info = _up_or_fail(name)
    try:
        known_hosts = tmp_path_factory.mktemp("deployed-host") / "known_hosts"
        deployed = deployment.deploy_to(info, unity_checkpoint, known_hosts)
        print(f"deployed_host: first deploy {deployed.deploy_s:.1f} s")
        yield deployed
        if deployed.timings:
            timings = ", ".join(f"{key} {value:.1f} s" for key, value in deployed.timings.items())
            print(f"deployed_host timings: {timings}")
    finally:
        th.down(name)

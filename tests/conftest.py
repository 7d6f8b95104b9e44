"""Shared fixtures: the standard test PKI at the fixed moment the engine tests use;
and the check that every test carries the markers for what it starts
(tests/support/activity.py)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import activity, systemd
from tests.support.pki import TestPki, build_pki
from tests.support.postfix import PostfixFactory
from tests.support.verdicts import NOW


def pytest_configure(config: pytest.Config) -> None:
    activity.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> object:
    activity.take()  # whatever happened between tests is nobody's
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    result = yield
    missing = activity.missing_markers(activity.take(), {m.name for m in item.iter_markers()})
    if missing:
        pytest.fail(f"{item.nodeid} started what only tests marked {missing} may start "
                    "(setup.cfg [tool:pytest] markers)", pytrace=False)
    return result


@pytest.fixture(scope="session")
def pki() -> TestPki:
    """The standard PKI minted around :data:`tests.support.verdicts.NOW`."""
    return build_pki(NOW)


@pytest.fixture(scope="session")
def pki_files(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return pki.write(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def ca_files(pki_files: dict[str, Path]) -> list[Path]:
    """root + intermediate PEMs: the CAfile for openssl cross-checks."""
    return [pki_files["root.pem"], pki_files["intermediate.pem"]]


@pytest.fixture(scope="session")
def live_pki() -> TestPki:
    """The test PKI minted around today, for tests of the running daemon, which
    validates at the wall clock."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return build_pki(today)


@pytest.fixture(scope="session")
def anchors(live_pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live PKI's root as a trust anchor file."""
    path = tmp_path_factory.mktemp("anchors") / "root.pem"
    path.write_bytes(live_pki.root.cert_pem)
    return path


@pytest.fixture
def postfix(tmp_path: Path) -> Iterator[PostfixFactory]:
    """Starts throw-away Postfix instances below ``tmp_path/postfix`` (call it with the
    instance's options); stops them all after the test.  Mark the test ``postfix``."""
    with PostfixFactory(tmp_path / "postfix") as factory:
        yield factory


@pytest.fixture
def analyze_works(tmp_path: Path) -> None:
    """Skip unless systemd-analyze verify accepts a trivially good unit here."""
    if systemd.SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    probe = tmp_path / "probe" / "smime-milter-probe.service"
    probe.parent.mkdir()
    true = shutil.which("true") or "/bin/true"
    probe.write_text(f"[Unit]\nDescription=probe\n[Service]\nExecStart={true}\n")
    try:
        done = systemd.analyze_verify(probe)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"systemd-analyze cannot run here: {exc}")
    if done.returncode != 0 or systemd.complaints(done, probe):
        pytest.skip("systemd-analyze verify does not work in this environment: "
                    f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")

"""Shared fixtures: the standard test PKI at the fixed moment the engine tests use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.pki import TestPki, build_pki
from tests.support.verdicts import NOW


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

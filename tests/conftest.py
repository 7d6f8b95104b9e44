"""Shared fixtures: the standard test PKI at the fixed moment the engine tests use."""

from __future__ import annotations

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

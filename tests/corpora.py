"""Where the shared test corpora live (../shared/corpora beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPORA = Path(os.environ.get("SMIME_MILTER_CORPORA", _DEFAULT))


def corpus(name: str) -> Path:
    """The corpus folder; skipped when absent unless CI demands it."""
    path = CORPORA / name
    if not path.is_dir():
        if os.environ.get("SMIME_MILTER_REQUIRE_CORPORA"):
            pytest.fail(f"corpus {path} is missing")
        pytest.skip(f"corpus {path} is missing")
    return path

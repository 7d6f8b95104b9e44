"""The marker check in tests/conftest.py: what a test started against its markers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import activity


def test_a_subprocess_is_noted_by_the_audit_hook() -> None:
    activity.take()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert activity.take() == {"process"}


@pytest.mark.parametrize(("seen", "markers", "missing"), [
    (set(), set(), []),
    ({"process"}, set(), ["process"]),
    ({"process"}, {"process"}, []),
    ({"process"}, {"postfix"}, []),  # a Postfix test spawns processes anyway
    ({"postfix", "process"}, {"process"}, ["postfix"]),
    ({"daemon", "miltertest"}, {"daemon"}, ["miltertest"]),
])
def test_missing_markers(seen: set[str], markers: set[str], missing: list[str]) -> None:
    assert activity.missing_markers(seen, markers) == missing


def test_an_unknown_kind_is_a_bug_in_the_harness() -> None:
    with pytest.raises(ValueError, match="unknown activity"):
        activity.note("network")

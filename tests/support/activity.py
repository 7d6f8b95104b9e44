"""What a test really started, so its markers can be checked against it.

The markers registered in setup.cfg say which tests are slow or need outside
programs (``-m "not postfix and not miltertest and not daemon"`` is the fast
loop).  A marker that is forgotten puts a Postfix start into the fast loop
unnoticed; so the harnesses :func:`note` what they start, an audit hook notes
every subprocess, and tests/conftest.py fails the teardown of a test whose
markers do not cover what happened during it.
"""

from __future__ import annotations

import sys
import threading

#: Markers for things a test starts.  Each of the first three also spawns a
#: process, so any of them covers a subprocess as well as ``process`` does.
LONG_LIVED = ("postfix", "miltertest", "daemon")
PROCESS = "process"
KINDS = (*LONG_LIVED, PROCESS)

_lock = threading.Lock()
_seen: set[str] = set()
_installed = False
_SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec"})


def note(kind: str) -> None:
    """Record that the running test started something of *kind* (one of KINDS)."""
    if kind not in KINDS:
        raise ValueError(f"unknown activity {kind!r}")
    with _lock:
        _seen.add(kind)


def take() -> set[str]:
    """What was noted since the last call; forget it."""
    with _lock:
        seen = set(_seen)
        _seen.clear()
        return seen


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in _SPAWN_EVENTS:
        note(PROCESS)


def install() -> None:
    """Note every subprocess from now on (audit hooks cannot be removed: once is enough)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def missing_markers(seen: set[str], markers: set[str]) -> list[str]:
    """The markers a test with *markers* lacks for what it did (*seen*)."""
    missing = [kind for kind in LONG_LIVED if kind in seen and kind not in markers]
    if PROCESS in seen and not markers & set(KINDS):
        missing.append(PROCESS)
    return missing

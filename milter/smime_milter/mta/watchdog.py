"""Bounding a verification that does not end, inside one milter process.

Verification runs in the connection's own thread, so a pathological message
(deeply nested MIME, a CMS structure built to make a parser loop) would hold
that connection for ever. The watchdog thread raises :class:`TimeLimit` in
the thread whose message ran past its deadline, through CPython's
``PyThreadState_SetAsyncExc``: the exception surfaces at the next bytecode of
that thread, the message tempfails and every other connection goes on.

Code that never returns to the interpreter (a C call that holds the GIL)
cannot be interrupted this way; for that, the watchdog also stamps a
heartbeat the parent process reads, and the parent replaces a process whose
heartbeat stopped (mta/prefork.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["TimeLimit", "Watchdog"]

#: Seconds between the watchdog's looks at deadlines (and heartbeats).
TICK = 0.25


class TimeLimit(BaseException):
    """Raised inside a thread whose verification passed its deadline.

    A BaseException, like KeyboardInterrupt: the parsers turn ``Exception``
    into a status for the admin ("malformed ..."), and a deadline must not
    become a verdict."""


@dataclass(slots=True)
class _Entry:
    started: float
    deadline: float
    fired: bool = False
    slow: bool = False


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> int:
    """Schedule ``exc`` in ``thread_id`` (None cancels a scheduled one)."""
    target = ctypes.py_object(exc) if exc is not None else None
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target))


class Watchdog:
    """Deadlines of the verifications running in this process."""

    def __init__(self, heartbeat: Callable[[], object] | None = None, tick: float = TICK,
                 slow_after: float | None = None,
                 on_slow: Callable[[str], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, _Entry] = {}
        self._heartbeat = heartbeat
        self._tick = tick
        #: A verification running this long is reported once to ``on_slow``
        #: (the milter process then stops taking new connections).
        self._slow_after = slow_after
        self._on_slow = on_slow
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        """Run the block with a deadline; :class:`TimeLimit` when it passes.

        The exception is raised only inside the block: leaving it cancels one
        that was scheduled but not yet delivered, under the same lock the
        watchdog fires with, so it can never surface in the caller's code.
        """
        ident = threading.get_ident()
        now = time.monotonic()
        with self._lock:
            self._running[ident] = _Entry(now, now + seconds)
        try:
            yield
        finally:
            with self._lock:
                entry = self._running.pop(ident, None)
                if entry is not None and entry.fired:
                    _raise_in(ident, None)

    def _watch(self) -> None:
        while not self._stopped.wait(self._tick):
            if self._heartbeat is not None:
                self._heartbeat()
            now = time.monotonic()
            slow = None
            with self._lock:
                for ident, entry in self._running.items():
                    if not entry.fired and now >= entry.deadline:
                        entry.fired = True
                        _raise_in(ident, TimeLimit)
                    elif (self._slow_after is not None and not entry.slow
                          and now - entry.started >= self._slow_after):
                        entry.slow = True
                        slow = now - entry.started
            if slow is not None and self._on_slow is not None:
                self._on_slow(f"a verification has run for {slow:.0f}s")

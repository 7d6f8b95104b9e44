"""Verification in the connection's thread, bounded in time.

Each milter process verifies its own messages (mta/prefork.py forks one per
CPU): on a machine where the MTA keeps every core busy, a pool of worker
processes only added pickling, pipes and hand-offs (about 0.6 ms per message)
without buying parallelism the pre-forked processes do not already have.

Within one process, verifications run one at a time. The GIL would
serialise them anyway, and the parsers are not thread-safe: asn1crypto
parses lazily, filling in shared objects (trust anchors, cached
certificates) as they are read, and two threads reading one object at once
saw half-filled structures ("No field numbered 2 is present").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from smime_milter.errors import SmimeMilterError
from smime_milter.model import Verdict
from smime_milter.mta.watchdog import TimeLimit, Watchdog

__all__ = ["InProcessVerifier", "Job", "VerifyFailure"]


class VerifyFailure(SmimeMilterError, RuntimeError):
    """The verification machinery failed (not the message): the MTA should retry."""


@dataclass(frozen=True, slots=True)
class Job:
    """One message to verify: its bytes, or the path of the spool file holding them
    (a 50 MB message is verified from the file, never held twice in memory)."""

    at: datetime
    message: bytes | None = None
    path: str | None = None


class _Verifies(Protocol):
    def verify(self, message: bytes, at: datetime | None = None) -> Verdict: ...


#: One verification at a time in this process (see the module's docstring);
#: process-wide because parsed certificates are cached across reloads too.
_ONE_AT_A_TIME = threading.Lock()


class InProcessVerifier:
    """A Verifier behind the watchdog: a message that takes longer than
    ``timeout`` seconds fails with VerifyFailure (the error action, tempfail
    by default) and the connection's thread is free again; ``on_time_limit``
    then learns why (the milter process retires)."""

    def __init__(self, verifier: _Verifies, watchdog: Watchdog | None = None,
                 on_time_limit: Callable[[str], object] | None = None) -> None:
        self.verifier = verifier
        self.watchdog = watchdog
        self.on_time_limit = on_time_limit

    def verify(self, job: Job, timeout: float) -> Verdict:
        with _ONE_AT_A_TIME:
            if self.watchdog is None:
                return self._verify(job)
            return self._limited(job, timeout, self.watchdog)

    def _limited(self, job: Job, timeout: float, watchdog: Watchdog) -> Verdict:
        # The deadline covers the verification, not the wait for the lock: a
        # message queued behind a slow one gets its full time.
        try:
            with watchdog.limit(timeout):
                return self._verify(job)
        except TimeLimit:
            reason = f"verification took longer than {timeout:g}s"
            if self.on_time_limit is not None:
                self.on_time_limit(reason)
            raise VerifyFailure(reason) from None

    def _verify(self, job: Job) -> Verdict:
        if job.message is not None:
            return self.verifier.verify(job.message, at=job.at)
        path = job.path or ""
        verify_file = getattr(self.verifier, "verify_file", None)
        try:
            if verify_file is not None:
                verdict: Verdict = verify_file(path, at=job.at)
                return verdict
            message = Path(path).read_bytes()
        except OSError as exc:
            raise VerifyFailure(f"cannot read spooled message: {exc.strerror or exc}") from exc
        return self.verifier.verify(message, at=job.at)

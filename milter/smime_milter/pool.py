"""Verification in worker processes.

libmilter runs one thread per connection, and CPython's GIL would serialise
their CMS parsing, hashing and path validation on one core. A process pool
uses every core; each worker builds its own Verifier (and chain cache) once.
Workers are started with ``forkserver`` so they never inherit the daemon's
threads or its LMDB environment.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import Config
from .engine import Verifier
from .model import Verdict
from .wiring import build_verifier

log = logging.getLogger(__name__)


class VerifyFailure(RuntimeError):
    """The verification machinery failed (not the message): the MTA should retry."""


class PoolClosed(VerifyFailure):
    """This pool was replaced by a reload; use the current one."""


@dataclass(frozen=True, slots=True)
class Job:
    """One message to verify: its bytes, or the path of the spool file holding them
    (so a 50 MB message is not pickled through a pipe)."""

    at: datetime
    message: bytes | None = None
    path: str | None = None


_worker_verifier: Verifier | None = None


def _init_worker(config: Config) -> None:
    global _worker_verifier
    # Stop requests go to the daemon, which shuts the pool down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_verifier = build_verifier(config)


def _verify_in_worker(job: Job) -> Verdict:
    assert _worker_verifier is not None, "worker not initialised"
    message = job.message if job.message is not None else Path(job.path or "").read_bytes()
    return _worker_verifier.verify(message, at=job.at)


def _verifier_part(config: Config) -> Config:
    """Only what a worker needs (the policy is the daemon's business)."""
    return Config(source=config.source, trust=config.trust, verify=config.verify,
                  decrypt_keys=config.decrypt_keys)


def _ready() -> int:
    return os.getpid()


class VerifierPool:
    """A process pool that verifies Jobs and survives crashed workers."""

    def __init__(self, config: Config, workers: int = 0) -> None:
        self.config = config
        self.workers = workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_init_worker,
            initargs=(_verifier_part(self.config),),
        )

    def check(self, timeout: float = 120.0) -> None:
        """Fail now (bad anchors, unreadable keys) rather than on the first message."""
        try:
            self._executor.submit(_ready).result(timeout)
        except BrokenExecutor as exc:
            # The initializer raised; reproduce its error here, where it can be reported.
            build_verifier(self.config)
            raise VerifyFailure(f"verification workers did not start: {exc}") from exc

    def verify(self, job: Job, timeout: float) -> Verdict:
        executor = self._executor
        try:
            future = executor.submit(_verify_in_worker, job)
        except RuntimeError as exc:  # shut down by a reload after the caller picked it
            raise PoolClosed(str(exc)) from exc
        try:
            return future.result(timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise VerifyFailure(f"verification took longer than {timeout:g}s") from exc
        except BrokenExecutor as exc:
            self._replace(executor)
            raise VerifyFailure(f"verification worker died: {exc}") from exc
        except OSError as exc:
            raise VerifyFailure(f"cannot read spooled message: {exc}") from exc

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                log.error("verification worker pool broken; starting a new one")
                self._executor = self._start()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)

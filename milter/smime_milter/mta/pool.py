"""Verification in worker processes.

libmilter runs one thread per connection, and CPython's GIL would serialise
their CMS parsing, hashing and path validation on one core. Worker processes
use every core; each builds its own Verifier (and chain cache) once.

Each worker has its own pipe. A connection thread borrows an idle worker,
sends the job, waits for the answer and gives the worker back: no manager or
feeder threads in the daemon (``ProcessPoolExecutor`` spent about 0.75 ms of
daemon CPU per message on those), and a worker that hangs or dies is killed
and replaced without touching the others. Workers are started with
``forkserver`` so they never inherit the daemon's threads or its LMDB
environment.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Protocol

from smime_milter.errors import SmimeMilterError
from smime_milter.model import Verdict

log = logging.getLogger(__name__)


class VerifyFailure(SmimeMilterError, RuntimeError):
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


class _Verifies(Protocol):
    def verify(self, message: bytes, at: datetime | None = None) -> Verdict: ...


#: What a worker process calls once to build its verifier. It crosses into the
#: worker by pickling, so it must be a module-level function or a picklable
#: object (the composition root passes one holding the verifier's settings).
VerifierFactory = Callable[[], _Verifies]


def _worker_main(conn: Connection, build: VerifierFactory) -> None:
    """A worker: announce readiness (or the reason it cannot start), then answer
    jobs until the pipe closes or a None job arrives."""
    # Stop requests go to the daemon, which stops its workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        verifier = build()
    except Exception as exc:
        conn.send(("error", f"cannot build the verifier: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            message = job.message if job.message is not None else Path(job.path).read_bytes()
            conn.send(("ok", verifier.verify(message, at=job.at)))
        except OSError as exc:
            conn.send(("error", f"cannot read spooled message: {exc}"))


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False


class VerifierPool:
    """Worker processes that verify Jobs; a dead or hung worker is replaced."""

    def __init__(self, build: VerifierFactory, workers: int = 0) -> None:
        self._build = build
        self.workers = workers or os.cpu_count() or 1
        self._context = multiprocessing.get_context("forkserver")
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        #: Every worker process not yet stopped, busy or idle (for :meth:`alive`).
        self._processes: dict[int, BaseProcess] = {}
        #: Called after a dead or hung worker was replaced (the daemon's metrics).
        self.on_replace: Callable[[], object] | None = None
        for _ in range(self.workers):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self._build),
            name="smime-milter-verify", daemon=True,
        )
        process.start()
        child.close()
        self._processes[id(process)] = process
        return _Worker(process, parent)

    def alive(self) -> int:
        """How many worker processes are running now (busy or idle)."""
        return sum(process.is_alive() for process in list(self._processes.values()))

    def check(self, timeout: float = 120.0) -> None:
        """Wait until every worker is ready; fail now (bad anchors, unreadable keys)
        rather than on the first message."""
        workers = [self._borrow(timeout) for _ in range(self.workers)]
        try:
            for worker in workers:
                self._await_ready(worker, timeout)
        finally:
            for worker in workers:
                self._idle.put(worker)

    @staticmethod
    def _await_ready(worker: _Worker, timeout: float) -> None:
        if worker.ready:
            return
        if not worker.conn.poll(timeout):
            raise VerifyFailure(f"verification worker not ready after {timeout:g}s")
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            raise VerifyFailure("verification worker exited while starting "
                                "(its error, if any, is logged above)") from None
        if kind != "ready":
            raise VerifyFailure(f"verification worker did not start: {value}")
        worker.ready = True

    def _borrow(self, timeout: float) -> _Worker:
        if self._closed:
            raise PoolClosed("verification pool closed")
        try:
            worker = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise VerifyFailure(f"no verification worker free within {timeout:g}s") from None
        if worker is None:  # close()'s wake-up marker: pass it on to the next waiter
            self._idle.put(None)
            raise PoolClosed("verification pool closed")
        return worker

    def verify(self, job: Job, timeout: float) -> Verdict:
        worker = self._borrow(timeout)
        healthy = False
        try:
            self._await_ready(worker, timeout)
            worker.conn.send(job)
            if not worker.conn.poll(timeout):
                raise VerifyFailure(f"verification took longer than {timeout:g}s")
            kind, value = worker.conn.recv()
            healthy = True
        except (EOFError, OSError) as exc:
            raise VerifyFailure(f"verification worker died: {exc!r}") from exc
        finally:
            self._give_back(worker, healthy)
        if kind != "ok":
            raise VerifyFailure(str(value))
        verdict: Verdict = value
        return verdict

    def _give_back(self, worker: _Worker, healthy: bool) -> None:
        with self._lock:  # never put a worker back after close() has drained the queue
            if healthy and not self._closed:
                self._idle.put(worker)
                return
        self._stop(worker, graceful=healthy)
        if not healthy:
            log.error("verification worker %s replaced", worker.process.pid)
            with self._lock:
                if not self._closed:
                    self._idle.put(self._spawn())
            if self.on_replace is not None:
                self.on_replace()

    def _stop(self, worker: _Worker, graceful: bool) -> None:
        self._processes.pop(id(worker.process), None)
        if graceful:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
            worker.process.join(5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        worker.conn.close()

    def close(self) -> None:
        """Stop idle workers now; busy ones stop when they hand their answer back.
        Connections waiting for a worker get PoolClosed at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            if worker is not None:
                self._stop(worker, graceful=True)
        # A connection waiting for a worker of a replaced pool is woken at once (and
        # retries on the new pool) instead of timing out into a tempfail.
        self._idle.put(None)

"""One pre-forked milter process: libmilter's loop on the shared listening
socket, verification in the connection threads, its own store handle.

The supervisor (mta/prefork.py) forks it with the socket already open and
the signals blocked. It opens the store only now (an LMDB environment must
never cross a fork), builds its Runtime and tells the supervisor over a pipe
that it is ready, or why it cannot start. Afterwards it answers reload
requests (SIGUSR1, sent by the supervisor) with the result.

It retires when the supervisor asks (SIGUSR2, at the daemon's stop) or on
its own after a verification ran past its time limit (the thread was
interrupted wherever it was; a process that may hold a half-updated cache or
a lock is better replaced than trusted): it stops accepting, lets its open
connections finish, and exits, while the supervisor starts its successor.
Retiring never removes the shared socket: libmilter's stop unlinks a unix
socket in a process that is not root, so the listening descriptor is first
replaced by /dev/null in this process (the others keep the socket).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import milter as libmilter
from smime_milter.config import Config, configure_logging
from smime_milter.mta.app import RuntimeHolder, SmimeMilter, connections
from smime_milter.mta.metrics import MilterMetrics, instrument
from smime_milter.mta.pipeline import Runtime
from smime_milter.mta.verifying import InProcessVerifier
from smime_milter.mta.watchdog import Watchdog
from smime_milter.store import Store

__all__ = ["HEARTBEAT", "RELOAD_SIGNAL", "MakeRuntime", "Slot", "serve"]

log = logging.getLogger("smime_milter")

RELOAD_SIGNAL = signal.SIGUSR1
RETIRE_SIGNAL = signal.SIGUSR2
#: How a heartbeat is stored in the shared page: CLOCK_MONOTONIC seconds.
HEARTBEAT = struct.Struct("d")
#: Seconds the open MTA connections get to finish when a process retires.
DRAIN_SECONDS = 30.0
#: Seconds of one verification after which the process retires: the messages
#: of its other connections wait behind it (verifications in one process run
#: one at a time, see mta/verifying.py). A 50 MB message takes about 1 s.
SLOW_SECONDS = 10.0

#: Builds a complete Runtime for a configuration over the open store; the
#: composition root supplies it.
MakeRuntime = Callable[[Config, Store], Runtime]


@dataclass(frozen=True, slots=True)
class Slot:
    """What the supervisor gives one milter process: its number, the pipe it
    reports on and the shared page its heartbeat goes to."""

    index: int
    report_fd: int
    heartbeats: mmap.mmap
    #: This process's place in ``heartbeats``.
    beat: int
    #: Whether the metrics endpoint is on (then this process counts).
    metrics: bool
    #: libmilter's listening descriptor (None: not found, see mta/daemon.py).
    listen_fd: int | None


def describe(runtime: Runtime) -> dict[str, object]:
    """What the supervisor's start-up and reload lines say this process serves."""
    anchors = runtime.trust_anchors
    return {"anchors": anchors.total if anchors is not None else None,
            "sources": anchors.describe() if anchors is not None else None}


def serve(config: Config, load: Callable[[], Config], make_runtime: MakeRuntime,
          slot: Slot) -> int:
    """The milter process's life; returns its exit status."""
    report = _Reporter(slot.report_fd)
    retirement = _Retirement(slot.listen_fd, report)
    supervisor = os.getppid()
    # A verification that takes SLOW_SECONDS makes the process stop taking new
    # connections (a successor takes them), since the ones behind it wait.
    watchdog = Watchdog(heartbeat=lambda: _beat(slot, supervisor, retirement),
                        slow_after=SLOW_SECONDS, on_slow=retirement.retire).start()
    metrics = MilterMetrics() if slot.metrics else None
    make = _guarded(make_runtime, watchdog, metrics, retirement.retire)
    try:
        store = Store.open(config.store.path, map_size=config.store.map_size,
                           max_map_size=config.store.max_map_size, sync=config.store.sync)
    except Exception as exc:
        report.send("error", error=str(exc))
        return 1
    try:
        try:
            holder = RuntimeHolder(make(config, store))
        except Exception as exc:
            report.send("error", error=str(exc))
            return 1
        SmimeMilter.holder = holder
        SmimeMilter.metrics = metrics
        threading.Thread(target=_signals, args=(holder, load, store, make, report, retirement),
                         name="signals", daemon=True).start()
        report.send("ready", **describe(holder.current))
        libmilter.main()
        if not connections.wait_idle(DRAIN_SECONDS):
            log.warning("milter process %d exits with MTA connections still open after %.0fs",
                        os.getpid(), DRAIN_SECONDS)
    finally:
        watchdog.stop()
        store.close()
    return 0


def _guarded(make_runtime: MakeRuntime, watchdog: Watchdog, metrics: MilterMetrics | None,
             retire: Callable[[str], None]) -> MakeRuntime:
    """``make_runtime`` whose verification is bounded by this process's
    watchdog (retiring the process when it fires) and, with the endpoint on,
    whose commits are timed."""
    def make(config: Config, store: Store) -> Runtime:
        runtime = make_runtime(config, store)
        verifier = runtime.verifier
        if isinstance(verifier, InProcessVerifier):
            guarded = InProcessVerifier(verifier.verifier, watchdog, on_time_limit=retire)
            runtime = replace(runtime, verifier=guarded)
        return instrument(runtime, metrics) if metrics is not None else runtime
    return make


def _beat(slot: Slot, supervisor: int, retirement: _Retirement) -> None:
    """Tell the supervisor this process is alive; an orphan (the supervisor
    was killed) retires instead of serving on with nobody to replace it."""
    HEARTBEAT.pack_into(slot.heartbeats, slot.beat * HEARTBEAT.size, time.monotonic())
    if os.getppid() != supervisor and not retirement.retired:
        log.warning("milter process %d retires: the supervisor is gone", os.getpid())
        retirement.retire("the supervisor is gone")


class _Retirement:
    """Stop accepting (once), without removing the shared socket."""

    def __init__(self, listen_fd: int | None, report: _Reporter) -> None:
        self._listen_fd = listen_fd
        self._report = report
        self._lock = threading.Lock()
        self._done = False

    @property
    def retired(self) -> bool:
        return self._done

    def retire(self, reason: str) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._report.send("retiring", reason=reason)
        if self._listen_fd is not None:
            # smfi_stop closes the listening descriptor at once and unlinks the
            # socket's path if the descriptor is a socket; /dev/null is not.
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, self._listen_fd)
            os.close(null)
        libmilter.stop()


def _signals(holder: RuntimeHolder, load: Callable[[], Config], store: Store,
             make: MakeRuntime, report: _Reporter, retirement: _Retirement) -> None:
    """SIGUSR2: retire. SIGUSR1: reload, answered with a complete new Runtime
    swapped in, or with the reason the running one stays (the supervisor logs
    either once)."""
    while True:
        if signal.sigwait({RELOAD_SIGNAL, RETIRE_SIGNAL}) == RETIRE_SIGNAL:
            retirement.retire("asked to by the supervisor")
            continue
        try:
            config = load()
            runtime = make(config, store)
        except Exception as exc:
            report.send("reload-failed", error=str(exc))
            continue
        holder.current = runtime
        configure_logging(config.milter)
        report.send("reloaded", **describe(runtime))


class _Reporter:
    """One JSON line per event to the supervisor (a line is written whole:
    pipe writes under PIPE_BUF bytes are atomic; longer ones are trimmed)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, event: str, **facts: object) -> None:
        line = json.dumps({"event": event, "pid": os.getpid(), **facts}).encode() + b"\n"
        if len(line) > 4000:
            line = json.dumps({"event": event, "pid": os.getpid(),
                               "error": str(facts.get("error", ""))[:3000]}).encode() + b"\n"
        # OSError: the supervisor is gone and will not read us again.
        with self._lock, contextlib.suppress(OSError):
            os.write(self._fd, line)

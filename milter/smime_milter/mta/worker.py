"""One pre-forked milter process: libmilter's loop on the shared listening
socket, verification in the connection threads, its own store handle.

The supervisor (mta/prefork.py) forks it with the socket already open and
the signals blocked. It opens the store only now (an LMDB environment must
never cross a fork), builds its Runtime and tells the supervisor over a pipe
that it is ready, or why it cannot start. Afterwards it answers reload
requests (SIGUSR1, sent by the supervisor) with the result, and stops like
any libmilter program: SIGTERM makes libmilter stop accepting, and the
messages already at end of data are finished before the process exits.
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
from smime_milter.mta.app import RuntimeHolder, SmimeMilter, in_flight
from smime_milter.mta.metrics import MilterMetrics, instrument
from smime_milter.mta.pipeline import Runtime
from smime_milter.mta.verifying import InProcessVerifier
from smime_milter.mta.watchdog import Watchdog
from smime_milter.store import Store

__all__ = ["HEARTBEAT", "RELOAD_SIGNAL", "MakeRuntime", "Slot", "serve"]

log = logging.getLogger("smime_milter")

RELOAD_SIGNAL = signal.SIGUSR1
#: How a heartbeat is stored in the shared page: CLOCK_MONOTONIC seconds.
HEARTBEAT = struct.Struct("d")
#: Seconds the messages already at end of data get to finish at stop.
DRAIN_SECONDS = 30.0

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
    #: Whether the metrics endpoint is on (then this process counts).
    metrics: bool


def describe(runtime: Runtime) -> dict[str, object]:
    """What the supervisor's start-up and reload lines say this process serves."""
    anchors = runtime.trust_anchors
    return {"anchors": anchors.total if anchors is not None else None,
            "sources": anchors.describe() if anchors is not None else None}


def serve(config: Config, load: Callable[[], Config], make_runtime: MakeRuntime,
          slot: Slot) -> int:
    """The milter process's life; returns its exit status."""
    report = _Reporter(slot.report_fd)
    watchdog = Watchdog(heartbeat=lambda: _beat(slot)).start()
    metrics = MilterMetrics() if slot.metrics else None
    make = _guarded(make_runtime, watchdog, metrics)
    try:
        store = Store.open(config.store.path, map_size=config.store.map_size,
                           max_map_size=config.store.max_map_size)
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
        threading.Thread(target=_reloads, args=(holder, load, store, make, report),
                         name="reload", daemon=True).start()
        report.send("ready", **describe(holder.current))
        libmilter.main()
        if not in_flight.wait_idle(DRAIN_SECONDS):
            log.warning("stopping with messages still at end of data after %.0fs",
                        DRAIN_SECONDS)
    finally:
        watchdog.stop()
        store.close()
    return 0


def _guarded(make_runtime: MakeRuntime, watchdog: Watchdog,
             metrics: MilterMetrics | None) -> MakeRuntime:
    """``make_runtime`` whose verification is bounded by this process's
    watchdog and (with the endpoint on) whose commits are timed."""
    def make(config: Config, store: Store) -> Runtime:
        runtime = make_runtime(config, store)
        verifier = runtime.verifier
        if isinstance(verifier, InProcessVerifier):
            runtime = replace(runtime, verifier=InProcessVerifier(verifier.verifier, watchdog))
        return instrument(runtime, metrics) if metrics is not None else runtime
    return make


def _beat(slot: Slot) -> None:
    HEARTBEAT.pack_into(slot.heartbeats, slot.index * HEARTBEAT.size, time.monotonic())


def _reloads(holder: RuntimeHolder, load: Callable[[], Config], store: Store,
             make: MakeRuntime, report: _Reporter) -> None:
    """Answer each SIGUSR1 with a complete new Runtime swapped in, or with the
    reason the running one stays (the supervisor logs either once)."""
    while True:
        signal.sigwait({RELOAD_SIGNAL})
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

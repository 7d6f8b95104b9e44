"""The supervisor: N milter processes on one listening socket.

The daemon opens libmilter's socket once and forks ``workers`` processes
(one per CPU by default) that each run libmilter's loop on it and verify in
their own connection threads (mta/worker.py). The kernel hands each new MTA
connection to one of them; a process that loses the race for a connection
gets EAGAIN (the socket is non-blocking) and goes back to waiting, so a stop
request is never stuck behind ``accept()``.

The supervisor itself serves no mail. It

* replaces a process that died (a crash, the OOM killer, kill -9) while the
  others serve, and one whose heartbeat stopped: its watchdog thread cannot
  run, so a verification is stuck in code that holds the interpreter (a
  message stuck in Python code is failed by the process's own watchdog);
* starts a successor at once for a process that retires (after one of its
  verifications ran past the time limit, see mta/worker.py);
* at stop, asks every process to retire and waits for their MTA
  connections to finish;
* drives reload: it re-reads the configuration (a broken one is refused
  before any process sees it), asks every process to reload, and logs the
  outcome once; the trust files are watched here too;
* owns the socket: if the unix socket's file disappears, the MTA can no
  longer reach the milter, so the supervisor stops with an error and the
  service manager (``Restart=on-failure``) starts it afresh.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smime_milter.config import Config, configure_logging
from smime_milter.mta import worker
from smime_milter.mta.metrics import SupervisorMetrics
from smime_milter.mta.privileges import StartupError
from smime_milter.mta.worker import HEARTBEAT, RELOAD_SIGNAL, RETIRE_SIGNAL, MakeRuntime, Slot
from smime_milter.trust import trust_files

__all__ = ["RELOAD_SIGNAL", "STOP_SIGNALS", "TRUST_CHECK_INTERVAL", "Supervisor",
           "log_trust_anchors", "serving"]

log = logging.getLogger("smime_milter")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
#: Seconds between the supervisor's looks at its processes.
TICK = 0.5
#: Seconds between looks at the trust files' modification times.
TRUST_CHECK_INTERVAL = 5.0
#: Seconds a process may take to start (anchors, keys, store).
START_TIMEOUT = 120.0
#: Seconds of silence, beyond the verification time limit, after which a
#: process's watchdog is considered stuck and the process replaced.
HEARTBEAT_GRACE = 10.0
#: Seconds the processes get to stop: libmilter's accept loop looks at its
#: stop flag every 5 s, then the open connections finish.
STOP_TIMEOUT = 5.0 + worker.DRAIN_SECONDS + 10.0
#: Longest pause between attempts to replace a process that keeps failing.
MAX_BACKOFF = 30.0


@dataclass(slots=True)
class _Process:
    index: int
    pid: int
    report: int
    #: Its place in the heartbeat page.
    beat: int
    ready: bool = False
    #: Stopped accepting; its successor is (being) started.
    retiring: bool = False
    pending: bytes = b""
    #: The reload this process has not answered yet (None: none pending).
    reload: int | None = None


@dataclass(slots=True)
class _Reload:
    number: int
    config: Config
    answers: dict[int, dict[str, object]] = field(default_factory=dict)


class Supervisor:
    """The parent of the milter processes (see the module's docstring)."""

    def __init__(self, config: Config, load: Callable[[], Config], make_runtime: MakeRuntime,
                 socket_path: Path | None, listen_fd: int | None,
                 metrics: SupervisorMetrics | None, fork_lock: threading.Lock) -> None:
        self.config = config
        self._load = load
        self._make_runtime = make_runtime
        self._socket_path = socket_path
        self._socket_inode = _inode(socket_path)
        self._listen_fd = listen_fd
        self._metrics = metrics
        #: Held while forking, so a scrape thread never has the store open then.
        self._fork_lock = fork_lock
        self.workers = config.milter.workers or os.cpu_count() or 1
        #: Room for every process and as many retiring ones.
        self._beats = 2 * self.workers
        self._heartbeats = mmap.mmap(-1, max(mmap.PAGESIZE, HEARTBEAT.size * self._beats))
        self._processes: dict[int, _Process] = {}
        self._failures = 0
        self._next_attempt = 0.0
        self._reload: _Reload | None = None
        self._reloads = 0
        self._stopping = False
        self.restarts = 0

    def alive(self) -> int:
        """Milter processes serving now (started or ready, not retiring)."""
        return sum(not process.retiring for process in self._processes.values())

    # -- start -----------------------------------------------------------------

    def start(self) -> dict[str, object]:
        """Fork every process and wait until all are ready; StartupError (after
        stopping the others) with the first one's reason when one cannot start.
        Returns what the first process described (for the start-up line)."""
        for index in range(self.workers):
            self._fork(index)
        deadline = time.monotonic() + START_TIMEOUT
        description: dict[str, object] = {}
        while not all(process.ready for process in self._processes.values()):
            if time.monotonic() > deadline:
                self._kill_all()
                raise StartupError(f"milter processes not ready after {START_TIMEOUT:g}s")
            for event in self._read_reports(TICK):
                if event["event"] == "error":
                    self._kill_all()
                    raise StartupError(str(event.get("error", "")))
                if event["event"] == "ready" and not description:
                    description = event
            for process, status in self._reap():
                self._kill_all()
                raise StartupError(f"milter process {process.pid} exited while starting "
                                   f"({_exit_text(status)})")
        return description

    def _fork(self, index: int) -> bool:
        """Start the process for ``index``; False when every heartbeat place is
        taken (too many retiring processes: try again at the next tick)."""
        taken = {process.beat for process in self._processes.values()}
        free = [beat for beat in range(self._beats) if beat not in taken]
        if not free:
            return False
        beat = free[0]
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        slot = Slot(index, write_end, self._heartbeats, beat, self._metrics is not None,
                    self._listen_fd)
        HEARTBEAT.pack_into(self._heartbeats, beat * HEARTBEAT.size, time.monotonic())
        with self._fork_lock:
            pid = os.fork()
        if pid == 0:  # the milter process; it never returns from here
            status = 1
            try:
                os.close(read_end)
                for other in self._processes.values():
                    os.close(other.report)
                status = worker.serve(self.config, self._load, self._make_runtime, slot)
            except BaseException:
                log.exception("milter process failed")
            finally:
                logging.shutdown()
                os._exit(status)
        os.close(write_end)
        self._processes[pid] = _Process(index, pid, read_end, beat)
        return True

    # -- serve -----------------------------------------------------------------

    def serve(self) -> int:
        """Supervise until a stop signal (0) or a lost socket (1)."""
        watched = trust_files(self.config.trust)
        next_trust_check = time.monotonic() + TRUST_CHECK_INTERVAL
        while True:
            info = signal.sigtimedwait(STOP_SIGNALS | {RELOAD_SIGNAL}, TICK)
            if info is not None and info.si_signo in STOP_SIGNALS:
                log.info("%s received, stopping the milter processes after their connections",
                         signal.Signals(info.si_signo).name)
                return 0
            if info is not None:
                self.reload()
                watched = trust_files(self.config.trust)
            for event in self._read_reports(0):
                self._on_report(event)
            for process, status in self._reap():
                self._on_exit(process, status)
            self._check_heartbeats()
            self._replace_missing()
            if not self._socket_present():
                log.error("socket %s was removed: the MTA cannot reach the milter; stopping "
                          "so that the service manager starts it again", self._socket_path)
                return 1
            if time.monotonic() >= next_trust_check:
                next_trust_check = time.monotonic() + TRUST_CHECK_INTERVAL
                current = trust_files(self.config.trust)
                if current != watched:
                    watched = current
                    log.info("trust anchor, intermediate or CRL files changed: reloading")
                    self.reload()

    def _socket_present(self) -> bool:
        """Whether our unix socket is still where the MTA looks for it."""
        if self._socket_path is None:
            return True
        return _inode(self._socket_path) in (self._socket_inode, _UNKNOWN)

    # -- reload ----------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration and ask every process to reload; the
        outcome is logged once every process answered (_on_report)."""
        old = self.config
        try:
            config = self._load()
        except Exception as exc:
            self._reload_failed(str(exc))
            return
        if config.store != old.store or config.milter.socket != old.milter.socket:
            log.warning("reload: store and socket changes take effect after a restart")
        if config.milter.workers != old.milter.workers:
            log.warning("reload: a change of milter.workers takes effect after a restart")
        if config.metrics != old.metrics:
            log.warning("reload: [metrics] changes take effect after a restart")
        self._reloads += 1
        self._reload = _Reload(self._reloads, config)
        for process in self._processes.values():
            if process.ready:
                process.reload = self._reloads
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, RELOAD_SIGNAL)
        self._finish_reload()

    def _reload_failed(self, text: str) -> None:
        # One record per problem of a bad configuration, each complete.
        for line in text.splitlines() or [""]:
            log.error("reload failed, keeping the running configuration: %s", line)
        self._count_reload("failed")

    def _finish_reload(self) -> None:
        current = self._reload
        if current is None or any(p.reload == current.number for p in self._processes.values()):
            return
        self._reload = None
        failed = [a for a in current.answers.values() if a["event"] == "reload-failed"]
        if failed:
            self._reload_failed(str(failed[0].get("error", "")))
            return
        self.config = current.config
        configure_logging(self.config.milter)
        self._count_reload("ok")
        answer = next(iter(current.answers.values()), {})
        log.info("reloaded: %s", serving(self.config, self.workers, answer))
        log_trust_anchors(answer)

    def _count_reload(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.reloads.labels(result).inc()

    # -- processes ------------------------------------------------------------

    def _read_reports(self, timeout: float) -> list[dict[str, object]]:
        """Every complete report line the processes wrote, waiting up to ``timeout``."""
        if timeout:
            with contextlib.suppress(InterruptedError):
                select.select([p.report for p in self._processes.values()], [], [], timeout)
        events: list[dict[str, object]] = []
        for process in list(self._processes.values()):
            while True:
                try:
                    chunk = os.read(process.report, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                process.pending += chunk
            *lines, process.pending = process.pending.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        event["_pid"] = process.pid
                        events.append(event)
                        if event.get("event") == "ready":
                            process.ready = True
        return events

    def _on_report(self, event: dict[str, object]) -> None:
        kind = event.get("event")
        pid = event.get("_pid")
        process = self._processes.get(pid) if isinstance(pid, int) else None
        if kind == "ready":
            self._failures = 0
            if process is not None and self._reload is not None:
                # Started from the configuration before the pending reload.
                process.reload = self._reload.number
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, RELOAD_SIGNAL)
        elif kind == "error":
            log.error("milter process %s cannot start: %s", pid, event.get("error"))
        elif kind == "retiring" and process is not None:
            process.retiring = True
            if self._stopping:
                return
            log.warning("milter process %s retires (%s); starting a new one", pid,
                        event.get("reason"))
            self.restarts += 1
            if self._metrics is not None:
                self._metrics.worker_restarts.inc()
            if process.reload is not None:  # its answer will not come
                process.reload = None
                self._finish_reload()
        elif (kind in ("reloaded", "reload-failed") and process is not None
              and self._reload is not None and process.reload == self._reload.number):
            self._reload.answers[process.pid] = event
            process.reload = None
            self._finish_reload()

    def _reap(self) -> list[tuple[_Process, int]]:
        exited = []
        while self._processes:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            process = self._processes.pop(pid, None)
            if process is not None:
                with contextlib.suppress(OSError):
                    os.close(process.report)
                exited.append((process, status))
        return exited

    def _on_exit(self, process: _Process, status: int) -> None:
        if process.retiring and os.WIFEXITED(status) and not os.WEXITSTATUS(status):
            log.info("milter process %s finished its connections and exited", process.pid)
            return
        if process.retiring:
            log.warning("milter process %s exited while retiring (%s)", process.pid,
                        _exit_text(status))
            return
        log.error("milter process %s exited (%s); starting a new one", process.pid,
                  _exit_text(status))
        self._failures += 1
        self.restarts += 1
        if self._metrics is not None:
            self._metrics.worker_restarts.inc()
        backoff = min(MAX_BACKOFF, 0.5 * 2 ** (self._failures - 1)) if self._failures > 1 else 0
        self._next_attempt = time.monotonic() + backoff
        self._finish_reload()

    def _replace_missing(self) -> None:
        if time.monotonic() < self._next_attempt:
            return
        running = {p.index for p in self._processes.values() if not p.retiring}
        for index in range(self.workers):
            if index not in running and not self._fork(index):
                return

    def _check_heartbeats(self) -> None:
        """Kill a ready process whose watchdog has not run for longer than a
        verification may take (the next tick replaces it)."""
        limit = self.config.milter.verify_timeout + HEARTBEAT_GRACE
        now = time.monotonic()
        for process in list(self._processes.values()):
            (beat,) = HEARTBEAT.unpack_from(self._heartbeats, process.beat * HEARTBEAT.size)
            if process.ready and now - beat > limit:
                log.error("milter process %s unresponsive for %.0fs (a verification stuck "
                          "outside the interpreter?): killing it", process.pid, now - beat)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                HEARTBEAT.pack_into(self._heartbeats, process.beat * HEARTBEAT.size, now)

    # -- stop ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every process to retire, wait for them, kill what is left."""
        self._stopping = True
        self._signal_all(RETIRE_SIGNAL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._processes and time.monotonic() < deadline:
            self._reap()
            self._read_reports(0)
            time.sleep(0.05)
        if self._processes:
            log.warning("killing %d milter processes that did not stop within %.0fs",
                        len(self._processes), STOP_TIMEOUT)
            self._kill_all()

    def _signal_all(self, signo: int) -> None:
        for pid in list(self._processes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)
        for pid in list(self._processes):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            process = self._processes.pop(pid)
            with contextlib.suppress(OSError):
                os.close(process.report)


def serving(config: Config, workers: int, described: dict[str, object]) -> str:
    """What the start-up and reload lines say the daemon serves with."""
    source = config.source if config.source is not None else "built-in defaults"
    anchors = described.get("anchors")
    count = f", {anchors} trust anchors" if anchors is not None else ""
    return f"config {source}, store {config.store.path}, {workers} workers{count}"


def log_trust_anchors(described: dict[str, object]) -> None:
    """One line saying how many anchors came from where, so an admin sees
    which roots the milter trusts for e-mail after every start and reload."""
    if described.get("sources") is not None:
        log.info("trust anchors: %s", described["sources"])



#: The inode of a path that could not be looked at (not the same as a missing one).
_UNKNOWN = (-1, -1)


def _inode(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of ``path``; None when it does not exist."""
    if path is None:
        return None
    try:
        info = path.lstat()
    except OSError as exc:
        return None if exc.errno in (errno.ENOENT, errno.ENOTDIR) else _UNKNOWN
    return info.st_dev, info.st_ino


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"

"""The pre-forked process model: a verification that does not end fails its
own message and nobody else's; a milter process that dies or stops
answering is replaced while the others serve; a removed socket stops the
daemon with an error (the service manager restarts it)."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import Milter
import pytest

from smime_milter.config.reader import Config
from smime_milter.model import Verdict
from smime_milter.mta import InProcessVerifier, Runtime, VerifyFailure
from smime_milter.mta.app import RuntimeHolder, SmimeMilter
from smime_milter.mta.verifying import Job
from smime_milter.mta.watchdog import Watchdog
from tests.support import processes
from tests.support.daemon import MilterProcess
from tests.support.milterapp import Connection, FakeStore
from tests.support.miltertest import (
    CONTINUE,
    MILTERTEST,
    MILTERTEST_MISSING,
    message,
    run_session,
)
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity
from tests.support.verdicts import NOW, make_verifier

HANG = b"X-Test-Hang"


class _HangsOnMarker:
    """The real engine, except that a message carrying HANG loops for ever in
    Python code, as a parser fed a pathological structure would."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.hanging = threading.Event()

    def verify(self, message: bytes, at: datetime | None = None) -> Verdict:
        if HANG in message:
            self.hanging.set()
            while True:
                pass
        verdict: Verdict = self.engine.verify(message, at=at)  # type: ignore[attr-defined]
        return verdict


def test_a_hung_verification_fails_its_message_and_the_next_one_verifies(
    pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The looping message tempfails at verify_timeout and the process is told
    to retire; a message that arrived meanwhile on another connection of the
    same process waited (one verification at a time) and then verifies with
    its own full time. Other processes are not involved at all."""
    retired: list[str] = []
    slow: list[str] = []
    watchdog = Watchdog(tick=0.05, slow_after=1.0, on_slow=slow.append).start()
    try:
        verifier = _HangsOnMarker(make_verifier(pki))
        config = Config()
        config = replace(config, milter=replace(config.milter, verify_timeout=3.0))
        store = FakeStore()
        guarded = InProcessVerifier(verifier, watchdog, on_time_limit=retired.append)
        runtime = Runtime(config=config, verifier=guarded, store=store, hostname="h")
        monkeypatch.setattr(SmimeMilter, "holder", RuntimeHolder(runtime), raising=False)
        monkeypatch.setattr(SmimeMilter, "clock", staticmethod(lambda: NOW))
        signed = multipart_signed(text_entity("Hello\n"), pki.rsa, to="bob@example.org")
        hung = signed.replace(b"\r\n\r\n", b"\r\n" + HANG + b": 1\r\n\r\n", 1)
        results: dict[str, int] = {}

        def send(name: str, data: bytes) -> None:
            connection = Connection({"j": "mx.example.org", "i": name}, {})
            connection.connect()
            results[name] = connection.send(data)

        stuck = threading.Thread(target=send, args=("HUNG1", hung))
        stuck.start()
        assert verifier.hanging.wait(30)
        behind = threading.Thread(target=send, args=("OK1", signed))
        behind.start()
        stuck.join(60)
        behind.join(60)
        assert not stuck.is_alive() and not behind.is_alive()
        assert results == {"HUNG1": Milter.TEMPFAIL, "OK1": Milter.CONTINUE}
        assert retired == ["verification took longer than 3s"]
        assert slow and slow[0].startswith("a verification has run for ")
        assert len(store.records) == 1  # the verified message's record only
        send("OK2", signed)  # the thread that hung serves again afterwards
        assert results["OK2"] == Milter.CONTINUE
    finally:
        watchdog.stop()


# Interrupting the engine anywhere may leave library objects half-built (an
# asyncio loop of the path validator, say): Python reports them when collected.
# That is why a milter process retires after its watchdog fired.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_deadline_never_fires_outside_its_block(pki: TestPki) -> None:
    """A verification that ends just as its deadline passes returns normally or
    raises VerifyFailure; the exception never surfaces in the caller after it."""
    watchdog = Watchdog(tick=0.001).start()
    engine = make_verifier(pki)
    verifier = InProcessVerifier(engine, watchdog)
    data = multipart_signed(text_entity("Hello\n"), pki.rsa, to="bob@example.org")
    outcomes = {"ok": 0, "late": 0}
    try:
        for _ in range(200):
            try:
                verifier.verify(Job(at=NOW, message=data), timeout=0.002)
                outcomes["ok"] += 1
            except VerifyFailure:
                outcomes["late"] += 1
            for _ in range(2000):  # code after the block: a stray exception lands here
                pass
    finally:
        watchdog.stop()
        # Collect what the interruptions left half-built now, under this
        # test's warning filter, not at the end of the session.
        del verifier, engine
        gc.collect()
    assert sum(outcomes.values()) == 200


# -- the real daemon -------------------------------------------------------------------

def _with_miltertest(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of a test that starts the daemon and talks to it with miltertest."""
    for mark in (pytest.mark.skipif(MILTERTEST is None, reason=MILTERTEST_MISSING),
                 pytest.mark.miltertest, pytest.mark.process, pytest.mark.daemon):
        test = mark(test)
    return test


def _wait(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _verifies(daemon: MilterProcess, pki: TestPki, workdir: Path, count: int = 4) -> None:
    """``count`` signed messages, each on its own connection, all verified."""
    data = multipart_signed(text_entity("Hello Bob\n"), pki.rsa, to="bob@example.org")
    for n in range(count):
        [result] = run_session(daemon.postfix_socket,
                               [message(data, "alice@example.com", ["bob@example.org"])],
                               workdir / str(n), probe_names=("Authentication-Results",))
        assert result.reply == CONTINUE
        assert "smime=pass" in result.value("Authentication-Results")


@_with_miltertest
def test_a_killed_process_is_replaced_while_the_other_serves(
    tmp_path: Path, anchors: Path, live_pki: TestPki
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with MilterProcess(directory, anchors) as daemon:
        assert daemon.process is not None
        supervisor = daemon.process.pid
        first = processes.children(supervisor)
        assert len(first) == daemon.workers
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        _verifies(daemon, live_pki, tmp_path / "during")
        _wait(lambda: len(processes.children(supervisor)) == daemon.workers and victim not in
              processes.children(supervisor), "no replacement for the killed process")
        _verifies(daemon, live_pki, tmp_path / "after")
        log = daemon.log_text()
        assert f"milter process {victim} exited (killed by SIGKILL)" in log
        assert "non-blocking" not in log, log  # the listening socket was found
    assert daemon.process.returncode == 0, daemon.log_text()


@_with_miltertest
def test_an_unresponsive_process_is_killed_and_replaced(
    tmp_path: Path, anchors: Path, live_pki: TestPki
) -> None:
    """A process that stops running Python code at all (SIGSTOP stands in for a
    verification stuck in a C call that holds the interpreter) loses its
    heartbeat; after verify_timeout and the grace period it is replaced."""
    directory = tmp_path / "d"
    directory.mkdir()
    daemon = MilterProcess(directory, anchors)
    text = daemon.config.read_text().replace("[milter]\n", "[milter]\nverify_timeout = 1\n")
    daemon.config.write_text(text)
    with daemon:
        assert daemon.process is not None
        supervisor = daemon.process.pid
        victim = min(processes.children(supervisor))
        os.kill(victim, signal.SIGSTOP)
        _verifies(daemon, live_pki, tmp_path / "during")  # the other process serves
        _wait(lambda: victim not in processes.children(supervisor),
              "the stopped process was not killed")
        _wait(lambda: len(processes.children(supervisor)) == daemon.workers, "no replacement")
        log = daemon.log_text()
        assert f"milter process {victim} unresponsive" in log, log
        _verifies(daemon, live_pki, tmp_path / "after")


@pytest.mark.daemon
@pytest.mark.process
def test_a_removed_socket_stops_the_daemon_with_an_error(tmp_path: Path, anchors: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    daemon = MilterProcess(directory, anchors)
    daemon.start()
    try:
        assert daemon.process is not None
        daemon.socket.unlink()
        daemon.process.wait(60)
    finally:
        daemon.stop()
    assert daemon.process.returncode == 1
    log = daemon.log_text()
    assert f"socket {daemon.socket} was removed" in log, log
    assert "Traceback" not in log
    assert not processes.children(daemon.process.pid)


def test_concurrent_connections_of_one_process_all_verify(live_pki: TestPki,
                                                         anchors: Path) -> None:
    """Threads of one process verifying at once through the daemon's verifier,
    from a cold start (trust anchors and certificates parsed lazily while
    others read them): every message verifies. Without one verification at a
    time, asn1crypto's lazily parsed shared objects broke ("No field numbered
    2 is present in this asn1crypto.x509.Extension")."""
    from smime_milter.bootstrap import build_runtime
    from smime_milter.trust import TrustConfig

    config = Config(trust=TrustConfig(anchors=(anchors,)))
    messages = [multipart_signed(text_entity(f"Hello {n}\n"), live_pki.rsa,
                                 to="bob@example.org") for n in range(8)]
    for attempt in range(3):
        runtime = build_runtime(config, FakeStore())  # type: ignore[arg-type]
        barrier = threading.Barrier(8)
        statuses: list[str] = []

        def verify(data: bytes, verifier: InProcessVerifier, barrier: threading.Barrier,
                   statuses: list[str]) -> None:
            barrier.wait(30)
            for _ in range(5):
                verdict = verifier.verify(Job(at=datetime.now(UTC), message=data), 60.0)
                statuses.append(verdict.status.value if verdict.status else "none")

        assert isinstance(runtime.verifier, InProcessVerifier)
        threads = [threading.Thread(target=verify,
                                    args=(data, runtime.verifier, barrier, statuses))
                   for data in messages]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert statuses == ["signed/verified"] * 40, (attempt, statuses)


@pytest.mark.daemon
@pytest.mark.process
def test_milter_processes_of_a_killed_supervisor_stop(tmp_path: Path, anchors: Path) -> None:
    """kill -9 of the supervisor alone (no service manager to clean up): its
    milter processes notice they are orphans and retire instead of serving
    on with nobody to replace them."""
    directory = tmp_path / "d"
    directory.mkdir()
    daemon = MilterProcess(directory, anchors)
    daemon.start()
    try:
        assert daemon.process is not None
        orphans = processes.children(daemon.process.pid)
        assert len(orphans) == daemon.workers
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait(10)
        _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in orphans),
              "the orphaned milter processes kept running")
        assert "the supervisor is gone" in daemon.log_text()
    finally:
        daemon.stop()

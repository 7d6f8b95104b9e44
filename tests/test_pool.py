"""Verification worker processes: answers, crashes, closing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smime_milter.bootstrap import verifier_factory
from smime_milter.config.reader import Config, TrustConfig
from smime_milter.model import Status
from smime_milter.mta.pool import Job, PoolClosed, VerifierPool, VerifyFailure
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity


@pytest.fixture
def pool(anchors: Path) -> Iterator[VerifierPool]:
    verifier_pool = VerifierPool(verifier_factory(Config(trust=TrustConfig(anchors=(anchors,)))),
                                 workers=1)
    verifier_pool.check()
    yield verifier_pool
    verifier_pool.close()


def _job(**where: object) -> Job:
    return Job(at=datetime.now(UTC), **where)  # type: ignore[arg-type]


def test_verifies_in_memory_and_spooled_messages(
    pool: VerifierPool, live_pki: TestPki, tmp_path: Path
) -> None:
    message = multipart_signed(text_entity("hi\n"), live_pki.rsa)
    assert pool.verify(_job(message=message), 30).status is Status.SIGNED_VERIFIED
    spooled = tmp_path / "spool"
    spooled.write_bytes(message)
    verdict = pool.verify(_job(path=str(spooled)), 30)
    assert verdict.status is Status.SIGNED_VERIFIED


def test_unreadable_spool_file_is_a_failure_not_a_crash(
    pool: VerifierPool, live_pki: TestPki, tmp_path: Path
) -> None:
    with pytest.raises(VerifyFailure, match="cannot read spooled message"):
        pool.verify(_job(path=str(tmp_path / "gone")), 30)
    assert pool.verify(_job(message=b"Subject: x\r\n\r\nhi\r\n"), 30).status is None


def test_a_killed_worker_fails_one_message_and_is_replaced(
    pool: VerifierPool, live_pki: TestPki
) -> None:
    [worker] = [pool._idle.get()]
    pool._idle.put(worker)
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.join(10)
    with pytest.raises(VerifyFailure, match="died"):
        pool.verify(_job(message=b"Subject: x\r\n\r\nhi\r\n"), 30)
    message = multipart_signed(text_entity("hi\n"), live_pki.rsa)
    assert pool.verify(_job(message=message), 30).status is Status.SIGNED_VERIFIED


def test_bad_trust_anchors_fail_the_check(tmp_path: Path) -> None:
    bad = VerifierPool(
        verifier_factory(Config(trust=TrustConfig(anchors=(tmp_path / "none.pem",)))), workers=1)
    try:
        with pytest.raises(VerifyFailure, match="did not start"):
            bad.check(30)
    finally:
        bad.close()


def test_closed_pool_refuses_new_jobs(pool: VerifierPool, live_pki: TestPki) -> None:
    pool.close()
    with pytest.raises(PoolClosed):
        pool.verify(_job(message=b"x"), 5)


def test_a_job_waiting_for_a_worker_is_told_at_once_when_the_pool_closes(
    pool: VerifierPool,
) -> None:
    """A reload closes the old pool while connections wait for its busy workers:
    they must learn PoolClosed (and retry on the new pool), not time out into a 451."""
    busy = pool._borrow(5)  # the only worker is busy with someone else's message
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.verify(_job(message=b"Subject: x\r\n\r\nhi\r\n"), 60)
        except BaseException as exc:
            outcome.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    pool.close()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - started < 5
    assert [type(exc) for exc in outcome] == [PoolClosed] * 3
    pool._give_back(busy, healthy=True)  # the busy worker is stopped, not reused
    assert not busy.process.is_alive()

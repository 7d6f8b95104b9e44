"""The milter's examine → decide → plan as plain functions: no libmilter, no
SmimeMilter object, a real Verifier where a verdict matters."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smime_milter.config import Config
from smime_milter.model import Status, Verdict
from smime_milter.mta import Envelope, Runtime, examine, plan
from smime_milter.mta.intake import MessageBuffer
from smime_milter.mta.verifying import Job, VerifyFailure
from smime_milter.policy import Action, Actions, Outcome, Policy
from smime_milter.release import ReleaseConfig, ReleaseRule
from smime_milter.stamp.fields import parse_status_header
from smime_milter.store import StoreError
from tests.support.milterapp import FakeStore
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity
from tests.support.verdicts import NOW, make_verifier

RECIPIENTS = ("bob@example.org", "carol@example.org")
ENVELOPE = Envelope(sender="alice@example.com", recipients=RECIPIENTS, daemon_name="smtpd",
                    daemon_port=25, queue_id="4QID")
HOLD_RULE = ReleaseRule(name="hq", releasers=("officer@example.com",),
                        divert_to="officers@example.org", senders=("example.com",))


def buffered(message: bytes, max_size: int = 64 << 20) -> MessageBuffer:
    """The message as the callbacks would have collected it."""
    head, _, body = message.partition(b"\r\n\r\n")
    buffer = MessageBuffer(1 << 20, max_size, None)
    for line in head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t").split(b"\r\n"):
        name, _, value = line.partition(b":")
        buffer.add_header(name.decode("ascii"), value.lstrip(b" "))
    buffer.end_of_headers()
    buffer.add_body(body)
    return buffer


def runtime(store: FakeStore, config: Config | None = None) -> Runtime:
    # The verifier slot is unused: examine() is given its verify callable.
    return Runtime(config=config or Config(), verifier=None, store=store,  # type: ignore[arg-type]
                   hostname="mx.example.org")


def real_verify(pki: TestPki) -> Callable[[Job], Verdict]:
    verifier = make_verifier(pki)

    def verify(job: Job) -> Verdict:
        assert job.message is not None
        return verifier.verify(job.message, at=job.at)
    return verify


def failing_verify(job: Job) -> Verdict:
    raise VerifyFailure("worker died")


@pytest.fixture
def message(pki: TestPki) -> bytes:
    return multipart_signed(text_entity("Hello.\n"), pki.rsa, to=RECIPIENTS[0])


def test_a_verified_message_is_recorded_and_stamped(pki: TestPki, message: bytes) -> None:
    store = FakeStore()
    buffer = buffered(message)
    result = examine(runtime(store), ENVELOPE, buffer, NOW, real_verify(pki))

    assert result.verdict is not None and result.verdict.status is Status.SIGNED_VERIFIED
    assert result.decision.action is Action.ACCEPT and result.problem is None
    [record] = store.records
    assert store.durable == [False]  # flushed within a second in "interval" mode
    assert record.record_id == result.record_id
    assert record.envelope_recipients == RECIPIENTS
    [message_id] = [value for name, value in buffer.headers if name.lower() == "message-id"]
    assert record.message_id == message_id.decode("ascii") and record.queue_id == "4QID"

    edits = plan(runtime(store), ENVELOPE, buffer.headers, result, "mx.example.org")
    added = dict(edits.add_headers)
    assert parse_status_header(added["SMIME-Status-At-Delivery"]) == (
        Status.SIGNED_VERIFIED, result.record_id)
    assert added["Authentication-Results"].startswith("mx.example.org;")
    assert "smime=pass" in added["Authentication-Results"]


def test_a_verification_failure_is_the_error_outcome_and_writes_nothing(
        message: bytes) -> None:
    store = FakeStore()
    result = examine(runtime(store), ENVELOPE, buffered(message), NOW, failing_verify)
    assert result.decision.outcome is Outcome.ERROR
    assert result.decision.action is Action.TEMPFAIL  # the shipped default
    assert result.problem == "worker died" and result.record_id is None
    assert store.records == []


def test_a_store_that_refuses_the_record_is_the_error_outcome(
        pki: TestPki, message: bytes) -> None:
    store = FakeStore(failure=StoreError("full", "the store is full"))
    result = examine(runtime(store), ENVELOPE, buffered(message), NOW, real_verify(pki))
    assert result.decision.outcome is Outcome.ERROR
    assert result.decision.action is Action.TEMPFAIL
    assert result.record_id is None and result.problem is not None
    assert result.problem.startswith("store:")


def test_an_oversize_message_is_not_verified(message: bytes) -> None:
    store = FakeStore()

    def never(job: Job) -> Verdict:
        raise AssertionError("an oversize message must not reach the verifier")

    result = examine(runtime(store), ENVELOPE, buffered(message, max_size=100), NOW, never)
    assert result.decision.outcome is Outcome.OVERSIZE and result.verdict is None
    assert result.problem == "larger than 100 bytes"


def test_release_fails_closed_when_verification_fails(message: bytes) -> None:
    """Whatever the error action, a covered message is tempfailed."""
    config = Config(policy=Policy(actions=Actions(error=Action.ACCEPT)),
                    release=ReleaseConfig(rules=(HOLD_RULE,)))
    result = examine(runtime(FakeStore(), config), ENVELOPE, buffered(message), NOW,
                     failing_verify)
    assert result.decision.action is Action.TEMPFAIL


def test_an_unauthorized_message_is_diverted_by_the_plan(pki: TestPki, message: bytes) -> None:
    store = FakeStore()
    config = Config(release=ReleaseConfig(rules=(HOLD_RULE,)))
    buffer = buffered(message)
    result = examine(runtime(store, config), ENVELOPE, buffer, NOW, real_verify(pki))
    assert result.diverted
    [record] = store.records
    assert record.diverted_to == "officers@example.org"
    assert store.durable == [True]  # on the disk before the milter answers

    edits = plan(runtime(store, config), ENVELOPE, buffer.headers, result, "mx.example.org")
    assert edits.delete_recipients == RECIPIENTS
    assert edits.add_recipients == ("officers@example.org",)

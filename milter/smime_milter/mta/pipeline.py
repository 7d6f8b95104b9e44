"""The milter's work on one message, as plain functions: examine, decide, plan.

``mta/app.py`` collects a message from libmilter's callbacks and applies the
plan; everything in between is here, so it runs (and is tested) without a
socket, a libmilter thread or a ``SmimeMilter`` object. ``examine`` verifies
(through the ``verify`` callable it is given), decides the policy action and,
for a message that continues, assesses draft-and-release and writes the
record; ``plan`` turns that examination into header edits, recipient changes
and a reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from smime_milter.advanced import Advanced
from smime_milter.config import Config
from smime_milter.mail import mime
from smime_milter.model import ReleaseDecision, Verdict, new_record_id
from smime_milter.mta.handling import Plan, plan_delivery
from smime_milter.mta.intake import MessageBuffer
from smime_milter.mta.verifying import Job, VerifyFailure
from smime_milter.policy import Action, Decision, Outcome, decide, outcome_of
from smime_milter.release import MessageContext, ReleaseRule, assess, divert, select_rule
from smime_milter.store import Record, StoreError
from smime_milter.trust import AnchorSources

log = logging.getLogger("smime_milter")


class VerifyBackend(Protocol):
    def verify(self, job: Job, timeout: float) -> Verdict: ...


class RecordSink(Protocol):
    def put_sync(self, record: Record, timeout: float | None = ..., *,
                 durable: bool = ...) -> int: ...


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a message needs from the daemon; immutable, swapped whole on reload."""

    config: Config
    verifier: VerifyBackend
    store: RecordSink
    hostname: str
    #: Server-side signing and encryption for submitters (None: not configured).
    advanced: Advanced | None = None
    #: Where the trust anchors came from, for the start-up and reload log line.
    trust_anchors: AnchorSources | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the MTA said about one message besides its bytes: the SMTP
    envelope and the macros the pipeline needs, fixed at end of data."""

    sender: str
    recipients: tuple[str, ...]
    #: Postfix ``{daemon_name}`` and ``{daemon_port}`` (release rules' ports).
    daemon_name: str | None = None
    daemon_port: int | None = None
    #: The MTA's queue id (``i``), kept in the record.
    queue_id: str | None = None


@dataclass(frozen=True, slots=True)
class Examination:
    """What end of data decided for one message (for the log line and the reply)."""

    verdict: Verdict | None
    decision: Decision
    record_id: str | None
    problem: str | None
    #: Draft-and-release: the rule that applied and its outcome.
    rule: ReleaseRule | None = None
    release: ReleaseDecision | None = None

    @property
    def diverted(self) -> bool:
        return self.rule is not None and self.release is not None and not self.release.released


def examine(
    runtime: Runtime,
    envelope: Envelope,
    buffer: MessageBuffer,
    received_at: datetime,
    verify: Callable[[Job], Verdict],
) -> Examination:
    """Verify, decide and (for a message that continues) record it.

    ``verify`` raises VerifyFailure when the machinery fails; that becomes the
    ``error`` outcome, as does a store that cannot take the record.
    """
    policy = runtime.config.policy
    rules = runtime.config.release.rules
    # Decoded once, only when draft-and-release is configured.
    headers = text_headers(buffer) if rules else []
    rule = select_rule(rules, release_context(envelope, headers)) if rules else None
    if buffer.oversize:
        decision = decide(policy, Outcome.OVERSIZE, envelope.recipients)
        problem = f"larger than {buffer.max_size} bytes"
        if rule is None or not decision.action.delivers:
            return Examination(None, decision, None, problem)
        # Too large to check an authorization: held back, never released.
        unexamined = Verdict(None, None, None, notes=(f"not examined: {problem}",))
        return _recorded(runtime, envelope, buffer, unexamined, decision, received_at, rule,
                         None, problem, headers)
    try:
        verdict = verify(job_of(buffer, received_at))
    except VerifyFailure as exc:
        return Examination(None, error_decision(runtime, envelope, rule), None, str(exc))
    decision = decide(policy, outcome_of(verdict.status), envelope.recipients)
    if not decision.action.delivers:
        return Examination(verdict, decision, None, None)
    return _recorded(runtime, envelope, buffer, verdict, decision, received_at, rule, verdict,
                     None, headers)


def plan(
    runtime: Runtime,
    envelope: Envelope,
    headers: Sequence[tuple[str, bytes]],
    examination: Examination,
    authserv_id: str,
) -> Plan:
    """The edits, recipient changes and reply that carry out ``examination``."""
    diversion = (divert(examination.rule, examination.release, envelope.recipients)
                 if examination.diverted and examination.rule and examination.release
                 else None)
    return plan_delivery(
        list(headers), examination.verdict, examination.decision, runtime.config.policy,
        authserv_id, examination.record_id, examination.release, diversion,
    )


def error_decision(runtime: Runtime, envelope: Envelope, rule: ReleaseRule | None) -> Decision:
    """The ``error`` action, except that draft-and-release fails closed: a
    covered message the machinery could not handle is tempfailed, whatever
    the policy says, so nothing unexamined leaves."""
    if rule is not None:
        return Decision(Action.TEMPFAIL, Outcome.ERROR, Action.TEMPFAIL)
    return decide(runtime.config.policy, Outcome.ERROR, envelope.recipients)


def text_headers(buffer: MessageBuffer) -> list[tuple[str, str]]:
    return [(name, value.decode("utf-8", "replace")) for name, value in buffer.headers]


def release_context(envelope: Envelope, headers: list[tuple[str, str]]) -> MessageContext:
    senders = [value for name, value in headers if name.lower() in ("from", "sender")]
    return MessageContext(
        envelope_sender=envelope.sender,
        header_senders=tuple(a.text for a in mime.mailbox_list(senders) if a is not None),
        recipients=envelope.recipients,
        daemon_name=envelope.daemon_name,
        daemon_port=envelope.daemon_port,
    )


def job_of(buffer: MessageBuffer, at: datetime) -> Job:
    """A spooled message is verified from its file, never read whole into memory."""
    path = buffer.spool_path
    if path is not None:
        return Job(at=at, path=path)
    return Job(at=at, message=buffer.message())


def _recorded(
    runtime: Runtime, envelope: Envelope, buffer: MessageBuffer, record_verdict: Verdict,
    decision: Decision, received_at: datetime, rule: ReleaseRule | None,
    verdict: Verdict | None, problem: str | None, headers: list[tuple[str, str]],
) -> Examination:
    """Decide release (when a rule applies), then store the record: the
    message only continues once its record, with the original recipients
    of a diverted message, is safely written."""
    release = None
    if rule is not None:
        release = assess(rule, headers, verdict,
                         casefold_local_part=runtime.config.verify.casefold_local_part)
    record_id = new_record_id()
    record = Record.from_verdict(
        record_verdict,
        record_id=record_id,
        received_at=received_at,
        envelope_sender=envelope.sender,
        envelope_recipients=envelope.recipients,
        message_id=_first_header(buffer, "message-id"),
        queue_id=envelope.queue_id,
    )
    if rule is not None:
        record = replace(
            record, release=release,
            diverted_to=rule.divert_to if release and not release.released else None,
        )
    try:
        runtime.store.put_sync(record, durable=record.diverted_to is not None)
    except (StoreError, TimeoutError) as exc:
        log.error("store failure reason=%s: %s; applying the error action",
                  getattr(exc, "reason", "timeout"), exc)
        return Examination(verdict, error_decision(runtime, envelope, rule), None,
                           f"store: {exc}")
    return Examination(verdict, decision, record_id, problem, rule, release)


def _first_header(buffer: MessageBuffer, name: str) -> str | None:
    for field_name, value in buffer.headers:
        if field_name.lower() == name:
            return " ".join(value.decode("utf-8", "replace").split()) or None
    return None

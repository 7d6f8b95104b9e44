"""pymilter glue: callbacks in, the pipeline (``mta/pipeline.py``) in the
middle, the Plan applied through libmilter.

One ``SmimeMilter`` per SMTP connection (libmilter gives each its own
thread); per-message state is reset in ``envfrom`` because one connection can
carry several messages. The daemon-wide objects live in a ``Runtime`` that a
reload replaces atomically: a message uses the Runtime that was current when
it reached end of data.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from smime_milter.advanced import (
    Advanced,
    AdvancedError,
    Composed,
    OuterField,
    ValidEncryptionKeyNotFound,
    sender_of,
    submission,
)
from smime_milter.mail import mime
from smime_milter.model import Status, Verdict
from smime_milter.mta import milterapi, pipeline
from smime_milter.mta.handling import Plan, forged_headers, reply_text
from smime_milter.mta.intake import MessageBuffer
from smime_milter.mta.metrics import MilterMetrics
from smime_milter.mta.pipeline import Examination, Runtime
from smime_milter.mta.verifying import Job
from smime_milter.policy import Action, Outcome

log = logging.getLogger("smime_milter")



#: Statuses that need no reason in the log line: a pass, or no S/MIME at all.
PASSING_STATUSES = frozenset({Status.SIGNED_VERIFIED.value,
                              Status.ENCRYPTED_SIGNED_VERIFIED.value, "none"})


def client_text(hostname: str, address: str | None) -> str:
    """The client as Postfix logs it, ``host[addr]``: Postfix sends an unknown
    client's name as ``[addr]``, which becomes ``unknown[addr]``, not
    ``[addr][addr]``."""
    if not hostname or (hostname.startswith("[") and hostname.endswith("]")):
        hostname = "unknown"
    return f"{hostname}[{address or ''}]"

class OpenConnections:
    """The MTA connections this process serves, so a retiring milter process
    can let them finish (libmilter does not wait for its threads)."""

    def __init__(self) -> None:
        self._open: set[int] = set()
        self._idle = threading.Condition()

    def opened(self, connection: object) -> None:
        with self._idle:
            self._open.add(id(connection))

    def closed(self, connection: object) -> None:
        with self._idle:
            self._open.discard(id(connection))
            if not self._open:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every connection closed within ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._open, timeout)


#: This process's open MTA connections.
connections = OpenConnections()


class RuntimeHolder:
    """The current Runtime (a plain attribute: reads and writes are atomic)."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Transformed:
    """A submitted message after smime-advanced signing/encryption: what the
    milter must turn the original into before the usual examination."""

    composed: Composed
    #: The original header fields (name, decoded value), as the MTA has them.
    original: tuple[tuple[str, str], ...]
    #: Index in ``original`` of each field the composer was given.
    origins: tuple[int, ...]
    request: submission.Request


#: RFC 3463 enhanced status codes for a refused smime-advanced request.
_REFUSAL_CODES = {
    "signedSenderNotAllowed": "5.7.1",
    "validEncryptionKeyNotFound": "5.7.5",
}


class SmimeMilter(milterapi.Base):
    """One SMTP connection."""

    #: Set by the daemon before libmilter starts.
    holder: RuntimeHolder
    #: The daemon's metrics (None: not counted, as in tests without a daemon).
    metrics: MilterMetrics | None = None
    clock: Callable[[], datetime] = staticmethod(_utcnow)

    def __init__(self) -> None:
        self.mta_hostname: str | None = None
        self.daemon_name: str | None = None
        self.daemon_port: int | None = None
        self.client = ""
        self.client_address: str | None = None
        self.sasl_user: str | None = None
        self.buffer: MessageBuffer | None = None
        self.sender = ""
        self.recipients: list[str] = []

    # -- callbacks ---------------------------------------------------------

    @milterapi.noreply
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        connections.opened(self)
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else None
        self.client_address = str(address) if address else None
        self.client = client_text(hostname, self.client_address)
        self.mta_hostname = self.getsymval("j")
        self.daemon_name = self.getsymval("{daemon_name}")
        port = self.getsymval("{daemon_port}") or ""
        self.daemon_port = int(port) if port.isdigit() else None
        return milterapi.CONTINUE

    @milterapi.noreply
    def envfrom(self, sender: str, *params: str) -> int:
        self._reset()
        milter = self.holder.current.config.milter
        self.buffer = MessageBuffer(
            milter.spool_threshold, milter.max_message_size, milter.spool_directory
        )
        self.sender = sender.strip("<>")
        self.sasl_user = self.getsymval("{auth_authen}") or None
        return milterapi.CONTINUE

    @milterapi.noreply
    def envrcpt(self, recipient: str, *params: str) -> int:
        self.recipients.append(recipient.strip("<>"))
        return milterapi.CONTINUE

    @milterapi.noreply
    @milterapi.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        if self.buffer is not None:
            self.buffer.add_header(name, value)
        return milterapi.CONTINUE

    @milterapi.noreply
    def eoh(self) -> int:
        if self.buffer is not None:
            self.buffer.end_of_headers()
        return milterapi.CONTINUE

    @milterapi.noreply
    def body(self, chunk: bytes) -> int:
        if self.buffer is not None:
            self.buffer.add_body(chunk)
        return milterapi.CONTINUE

    def eom(self) -> int:
        started = time.monotonic()
        runtime = self.holder.current
        queue_id = self.getsymval("i") or "NOQUEUE"
        try:
            if self.buffer is None:
                raise RuntimeError("end of message without a message")
            try:
                transformed = self._transform(runtime)
            except (AdvancedError, submission.RequestHeaderError) as exc:
                self._count("refused", Action.REJECT, started)
                return self._refuse(queue_id, exc)
            envelope = self._envelope()
            result = pipeline.examine(runtime, envelope, self.buffer, self.clock(),
                                      lambda job: self._verify(runtime, job))
            plan = pipeline.plan(runtime, envelope, self.buffer.headers, result,
                                 self._authserv_id(runtime))
            self._apply(plan, transformed)
        except Exception as exc:  # the MTA must retry, never lose or pass unchecked
            log.exception("queue_id=%s internal error at end of message: %s", queue_id, exc)
            self._count("error", Action.TEMPFAIL, started)
            self.setreply("451", "4.3.0",
                          _libmilter_text(reply_text(f"S/MIME milter internal error: {exc}")))
            self._reset()
            return milterapi.TEMPFAIL
        self._log(queue_id, result, plan, time.monotonic() - started, transformed)
        self._count(_metric_status(result), plan.action, started)
        self._reset()
        return _RETURN[plan.action]

    def abort(self) -> int:
        self._reset()
        return milterapi.CONTINUE

    def close(self) -> int:
        self._reset()
        connections.closed(self)
        return milterapi.CONTINUE

    # -- work --------------------------------------------------------------

    def _reset(self) -> None:
        if self.buffer is not None:
            self.buffer.discard()
        self.buffer = None
        self.sender = ""
        self.recipients = []

    def _transform(self, runtime: Runtime) -> Transformed | None:
        """Sign and/or encrypt a submitter's message as its request header or
        an automatic rule asks; then examine the result instead of the
        original. Raises AdvancedError/RequestHeaderError for a refusal."""
        assert self.buffer is not None
        config = runtime.config.advanced
        connection = submission.Connection(self.daemon_name, self.sasl_user, self.client_address)
        if runtime.advanced is None or not submission.is_submitter(config, connection):
            return None  # the request header, if any, is removed as a forged field
        # Decoded as the composer decodes them, so a field it keeps compares
        # equal even when it is not valid UTF-8 (and is then left untouched).
        original = tuple((n, v.decode("utf-8", "surrogateescape"))
                         for n, v in self.buffer.headers)
        name = submission.REQUEST_HEADER.lower()
        request = submission.parse_request([v for n, v in original if n.lower() == name])
        rule = submission.auto_rule(config, sender_of(original))
        request = submission.combined(request, rule)
        if request is None or not request.wanted:
            return None
        if self.buffer.oversize:  # only part of the body was kept: nothing to sign
            raise submission.RequestHeaderError(
                f"message larger than {self.buffer.max_size} bytes cannot be signed")
        skipped = {index for index, (n, _) in enumerate(original) if n.lower() == name}
        skipped |= _positions(original, forged_headers(self.buffer.headers,
                                                       self._authserv_id(runtime)))
        origins = tuple(i for i in range(len(original)) if i not in skipped)
        message = b"".join(
            self.buffer.headers[i][0].encode("ascii") + b": " + self.buffer.headers[i][1]
            + b"\r\n" for i in origins
        ) + b"\r\n" + self._body()
        composed = self._compose(runtime.advanced, message, request,
                                 submission.account_of(config, connection))
        if composed is None:
            return None
        self._replace_buffer(runtime, composed)
        return Transformed(composed, original, origins, request)

    def _compose(self, advanced: Advanced, message: bytes, request: submission.Request,
                 account: str | None) -> Composed | None:
        def compose(encrypt: bool) -> Composed:
            return advanced.compose(
                message, sign=request.sign, encrypt=encrypt,
                header_protect=request.header_protect, opaque=request.opaque,
                recipients=self.recipients, require_account=True, account=account,
            )
        if request.encrypt or not request.encrypt_if_possible:
            return compose(request.encrypt)
        try:
            return compose(True)
        except ValidEncryptionKeyNotFound:
            # An automatic "when-possible" rule: sent unencrypted instead.
            return compose(False) if request.sign else None

    def _body(self) -> bytes:
        assert self.buffer is not None
        path = self.buffer.spool_path
        whole = Path(path).read_bytes() if path is not None else self.buffer.message()
        return mime.parse_entity(whole).body

    def _replace_buffer(self, runtime: Runtime, composed: Composed) -> None:
        """The examination (and the record) are about the message as it leaves."""
        assert self.buffer is not None
        milter = runtime.config.milter
        buffer = MessageBuffer(milter.spool_threshold, milter.max_message_size,
                               milter.spool_directory)
        for field in composed.headers:
            buffer.add_header(field.name, field.value.encode("utf-8", "surrogateescape"))
        buffer.end_of_headers()
        buffer.add_body(composed.body)
        self.buffer.discard()
        self.buffer = buffer

    def _refuse(self, queue_id: str, exc: AdvancedError | submission.RequestHeaderError) -> int:
        """Draft §4 errors become 5.7.x replies whose text starts with the JMAP name."""
        code = _REFUSAL_CODES.get(exc.jmap_error, "5.7.0")
        text = reply_text(f"{exc.jmap_error}: {exc}")
        log.warning("queue_id=%s smime-advanced refused client=%s from=<%s> reason=%r",
                    queue_id, self.client, self.sender, text)
        self.setreply("550", code, _libmilter_text(text))
        self._reset()
        return milterapi.REJECT

    def _authserv_id(self, runtime: Runtime) -> str:
        return runtime.config.milter.authserv_id or self.mta_hostname or runtime.hostname

    def _envelope(self) -> pipeline.Envelope:
        return pipeline.Envelope(
            sender=self.sender, recipients=tuple(self.recipients),
            daemon_name=self.daemon_name, daemon_port=self.daemon_port,
            queue_id=self.getsymval("i"),
        )

    def _count(self, status: str, action: Action, started: float) -> None:
        if self.metrics is not None:
            self.metrics.message(status, action.value, time.monotonic() - started)

    def _verify(self, runtime: Runtime, job: Job) -> Verdict:
        started = time.monotonic()
        try:
            return runtime.verifier.verify(job, runtime.config.milter.verify_timeout)
        finally:
            if self.metrics is not None:
                self.metrics.verify_seconds.observe(time.monotonic() - started)

    def _apply(self, plan: Plan, transformed: Transformed | None = None) -> None:
        # Any failure here raises and eom tempfails: the MTA then discards every
        # edit already made, so a message is never half-diverted.
        for recipient in plan.delete_recipients:
            self.delrcpt(f"<{recipient}>")
        for recipient in plan.add_recipients:
            self.addrcpt(f"<{recipient}>")
        if transformed is not None:
            self._rewrite(plan, transformed)
            plan = replace(plan, delete_headers=(), subject=None)
        for name, index in plan.delete_headers:
            self.chgheader(name, index, "")
        for position, (name, value) in enumerate(plan.add_headers):
            self.addheader(name, value, position)
        if plan.subject is not None:
            index, value = plan.subject
            if index:
                self.chgheader("Subject", index, value)
            else:
                self.addheader("Subject", value)
        if plan.quarantine_reason is not None:
            self.quarantine(plan.quarantine_reason)
        if plan.reply is not None:
            self.setreply(plan.reply.code, plan.reply.xcode, _libmilter_text(plan.reply.text))

    def _rewrite(self, plan: Plan, transformed: Transformed) -> None:
        """Turn the original header and body into the composed message, with
        the plan's deletions and Subject tag (which refer to the composed
        fields) folded in; kept fields are never moved."""
        fields = list(transformed.composed.headers)
        drop = frozenset(_positions([(f.name, f.value) for f in fields], plan.delete_headers))
        if plan.subject is not None:
            index, value = plan.subject
            subjects = [i for i, f in enumerate(fields) if f.name.lower() == "subject"]
            if index:
                fields[subjects[index - 1]] = replace(fields[subjects[index - 1]], value=value)
            else:
                fields.append(OuterField("Subject", value))
        edits = submission.header_edits(
            transformed.original, replace(transformed.composed, headers=tuple(fields)),
            origins=transformed.origins, drop=drop,
        )
        for name, index, value in edits.change:
            self.chgheader(name, index, value)
        for name, index in edits.delete:
            self.chgheader(name, index, "")
        for name, value in edits.add:
            self.addheader(name, value)
        self.replacebody(transformed.composed.body)

    def _log(self, queue_id: str, result: Examination, plan: Plan, seconds: float,
             transformed: Transformed | None = None) -> None:
        verdict = result.verdict
        status = _status_label(result)
        signers = ",".join(
            (signer.emails or ("?",))[0] for signer in (verdict.signers if verdict else ())
        )
        action = "divert" if result.diverted else plan.action.value
        line = (
            f"queue_id={queue_id} record={result.record_id or '-'} status={status} "
            f"outcome={result.decision.outcome.value} action={action} "
            f"client={self.client} from=<{self.sender}> rcpts={len(self.recipients)} "
            f"signers={signers or '-'} removed={len(plan.delete_headers)} "
            f"size={self.buffer.size if self.buffer else 0} ms={seconds * 1000:.0f}"
        )
        if result.decision.monitored:
            line += f" would={result.decision.intended.value}"
        if transformed is not None:
            composed = transformed.composed
            done = "+".join(word for word, on in (("signed", composed.signer),
                                                   ("encrypted", composed.recipients)) if on)
            line += f" advanced={done}"
        if result.release is not None:
            state = "released" if result.release.released else "held"
            line += f" release={state} rule={result.release.rule}"
            if not result.release.released:
                log.warning("%s reason=%r", line, result.release.summary)
                return
        reason = result.problem or (verdict.errors[0] if verdict and verdict.errors else "")
        if plan.action is not Action.ACCEPT or result.problem:
            log.warning("%s reason=%r", line, reason)
        elif status not in PASSING_STATUSES:
            # Accepted, but not a pass: say why, so the line alone explains it.
            log.info("%s reason=%r", line, reason or status)
        else:
            log.info("%s", line)


def _status_label(result: Examination) -> str:
    """The RFC 9219 status of the summary line and the metrics; ``none`` for
    a message that is not S/MIME or was not examined."""
    verdict = result.verdict
    return verdict.status.value if verdict and verdict.status else "none"


def _metric_status(result: Examination) -> str:
    """The metrics' status label: ``error`` when the machinery failed (worker,
    store), so that an alert on it needs no knowledge of the policy."""
    if result.decision.outcome is Outcome.ERROR:
        return "error"
    return _status_label(result)


_RETURN = {
    Action.ACCEPT: milterapi.CONTINUE,
    Action.TAG: milterapi.CONTINUE,
    Action.QUARANTINE: milterapi.CONTINUE,
    Action.REJECT: milterapi.REJECT,
    Action.TEMPFAIL: milterapi.TEMPFAIL,
}


def _positions(headers: Sequence[tuple[str, object]], wanted: Sequence[tuple[str, int]]
               ) -> set[int]:
    """Indexes in ``headers`` of (name, 1-based occurrence) pairs."""
    seen: dict[str, int] = {}
    targets = {(name.lower(), index) for name, index in wanted}
    found: set[int] = set()
    for position, (name, _) in enumerate(headers):
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
        if (name.lower(), seen[name.lower()]) in targets:
            found.add(position)
    return found


def _libmilter_text(text: str) -> str:
    """libmilter formats reply text with printf: a lone '%' (legal in a mail
    address) would make setreply fail and turn a reject into a tempfail."""
    return text.replace("%", "%%")


def hostname() -> str:
    return socket.getfqdn() or socket.gethostname()

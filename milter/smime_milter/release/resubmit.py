"""``smime-milter release``: hand an authorized message back to the MTA.

The message goes to the envelope recipients the milter recorded when it
held the message back (the store is the authority, not a header someone
could edit), from the original envelope sender, and passes the milter
again: the milter, not this tool, decides that it is released. The tool
checks first anyway, so a release officer learns now, not from a second
diversion, that an authorization is missing.

Each release is recorded in the held message's record before the message
goes out (:func:`release`), and a record released before is refused unless
forced: releasing twice would deliver the message twice.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import mime
from smime_milter.model import ReleaseDecision, is_issued_record_id
from smime_milter.release.rules import (
    ORIGINAL_RECIPIENTS_HEADER,
    RELEASE_STATUS_HEADER,
    MessageContext,
    ReleaseRule,
    assess,
    select_rule,
)
from smime_milter.stamp import fields as stamp
from smime_milter.store import Record, Resubmitted, Store, StoreError, utc_date
from smime_milter.verify import Verifier

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: Fields of the held copy that must not travel again: delivery traces of the
#: release officer's mailbox and our own stamps (the milter strips those too).
DROPPED_FIELDS = frozenset({
    "return-path", "delivered-to", "x-original-to",
    ORIGINAL_RECIPIENTS_HEADER.lower(), RELEASE_STATUS_HEADER.lower(),
    stamp.STATUS_HEADER.lower(),
})


class ReleaseError(SmimeMilterError, RuntimeError):
    """The message cannot be released; the text says why."""


class AlreadyReleased(ReleaseError):
    """The record was released before; the text names that release."""

    def __init__(self, record_id: str, earlier: Resubmitted) -> None:
        queue_id = earlier.queue_id or "unknown"
        super().__init__(f"record {record_id} was already released by {earlier.by} at "
                         f"{utc_date(earlier.at)} (queue id {queue_id}); --force releases "
                         "it again")
        self.earlier = earlier


class PartlyRefused(ReleaseError):
    """The MTA took the message for some recipients only: it was submitted."""

    def __init__(self, message: str, queue_id: str | None) -> None:
        super().__init__(message)
        self.queue_id = queue_id


@dataclass(frozen=True, slots=True)
class Resubmission:
    """What to hand to the MTA."""

    record_id: str
    sender: str
    recipients: tuple[str, ...]
    message: bytes
    decision: ReleaseDecision


#: Whether a command-line target names a record rather than a file.
looks_like_record_id = is_issued_record_id


def record_id_of(message: bytes) -> str:
    """The record id in the held copy's single SMIME-Status-At-Delivery field
    (our milter removed every incoming copy before adding its own)."""
    values = _header_values(message, stamp.STATUS_HEADER)
    if len(values) != 1:
        raise ReleaseError(f"expected one {stamp.STATUS_HEADER} field, found {len(values)}: "
                           "give the record id explicitly")
    _, record_id = stamp.parse_status_header(values[0])
    if record_id is None:
        raise ReleaseError(f"{stamp.STATUS_HEADER} carries no record id")
    return record_id


def _header_values(message: bytes, name: str) -> list[str]:
    try:
        entity = mime.parse_entity(message)
    except mime.MimeError as exc:
        raise ReleaseError(f"not a MIME message: {exc}") from exc
    return entity.get_all(name.lower())


def prepare(message: bytes, record: Record | None, record_id: str,
            rules: Sequence[ReleaseRule], verifier: Verifier, *,
            casefold_local_part: bool, force: bool = False) -> Resubmission:
    """Check that the authorized ``message`` is released under the rule that
    held it (one of the configured ``rules``) and, unless ``force``, was not
    released before, and return what to submit, or raise ReleaseError with
    the reasons."""
    if record is None:
        raise ReleaseError(f"no record {record_id} in the store")
    if record.diverted_to is None or record.release is None:
        raise ReleaseError(f"record {record_id} was not held for release")
    if record.resubmissions and not force:
        raise AlreadyReleased(record_id, record.resubmissions[-1])
    if not record.envelope_recipients:
        raise ReleaseError(f"record {record_id} has no original recipients")
    rule = next((r for r in rules if r.name == record.release.rule), None)
    if rule is None:
        context = MessageContext(record.envelope_sender, (), record.envelope_recipients)
        rule = select_rule(rules, context)
    cleaned = strip_fields(message, DROPPED_FIELDS)
    if rule is None:
        raise ReleaseError(f"no release rule applies any more (rule {record.release.rule} "
                           "is gone): the message would pass without authorization checks; "
                           "submit it by hand if that is intended")
    headers = mime.parse_entity(cleaned).headers
    decision = assess(rule, headers, verifier.verify(cleaned),
                      casefold_local_part=casefold_local_part)
    if not decision.released:
        raise ReleaseError("not released: " + "; ".join(decision.reasons))
    return Resubmission(record_id, record.envelope_sender, record.envelope_recipients,
                        cleaned, decision)


def strip_fields(message: bytes, names: frozenset[str]) -> bytes:
    """``message`` without the header fields named (lower-case), folded lines
    included; the body and every other byte stay as they were."""
    end = re.search(rb"\r?\n\r?\n", message)
    head, body = (message[: end.start()], message[end.start():]) if end else (message, b"")
    kept: list[bytes] = []
    dropping = False
    for line in re.split(rb"(?<=\n)", head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        dropping = name in names
        if not dropping:
            kept.append(line)
    joined = b"".join(kept)
    if body and joined.endswith((b"\r\n", b"\n")):
        # The line break ending the last kept field is also the start of the
        # separator in ``body``: keep exactly one.
        joined = joined[: -2 if joined.endswith(b"\r\n") else -1]
    elif body and not joined:
        # Every field dropped: the line break that ended the last one goes too.
        body = body[2:] if body.startswith(b"\r\n") else body[1:]
    return joined + body


def release(store: Store, resubmission: Resubmission, how: str, *, by: str, now: datetime,
            force: bool = False, timeout: float = 120.0) -> Resubmitted:
    """Record the release in the store, then submit (:func:`submit`); returns
    what was recorded. Fails closed: when the release cannot be recorded
    nothing is sent, and a submission that fails withdraws the record. A
    ReleaseError says what happened, including what the store still holds."""
    record_id = resubmission.record_id
    claimed = Resubmitted(by=by, at=now)
    try:
        earlier = store.claim_resubmission(record_id, claimed, force=force).result(timeout)
    except StoreError as exc:
        raise ReleaseError(f"cannot record the release of record {record_id} in the store "
                           f"({exc}): nothing was sent") from exc
    if earlier is not None:
        raise AlreadyReleased(record_id, earlier)
    try:
        queue_id = submit(resubmission, how, timeout)
    except PartlyRefused as exc:
        _amend(store, record_id, claimed, replace(claimed, queue_id=exc.queue_id), exc, timeout)
        raise
    except ReleaseError as exc:
        _amend(store, record_id, claimed, None, exc, timeout)
        raise
    done = replace(claimed, queue_id=queue_id)
    if queue_id is not None:
        _amend(store, record_id, claimed, done, None, timeout)
    return done


def _amend(store: Store, record_id: str, claimed: Resubmitted, new: Resubmitted | None,
           failure: ReleaseError | None, timeout: float) -> None:
    """Settle a claimed release; when the store fails, say what it still holds."""
    try:
        store.amend_resubmission(record_id, claimed, new).result(timeout)
    except StoreError as exc:
        if new is None:
            what = ("; the store still records it as released (--force releases it "
                    f"again): {exc}")
        else:
            what = f"; recording the queue id {new.queue_id} in the store failed: {exc}"
        raise ReleaseError(f"{failure or 'submitted'}{what}") from exc


def submit(resubmission: Resubmission, how: str, timeout: float = 120.0) -> str | None:
    """Hand the message to the MTA: ``sendmail:/path`` or ``smtp:host:port``;
    returns the MTA's queue id when it says it (SMTP does, sendmail does not)."""
    kind, _, where = how.partition(":")
    if kind == "sendmail":
        _sendmail(where, resubmission, timeout)
        return None
    host, _, port = where.rpartition(":")
    return _smtp(host, int(port), resubmission, timeout)


def _sendmail(path: str, resubmission: Resubmission, timeout: float) -> None:
    command: Sequence[str] = [path, "-i", "-f", resubmission.sender or "<>", "--",
                              *resubmission.recipients]
    try:
        result = subprocess.run(command, input=resubmission.message, capture_output=True,
                                timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"{path}: {exc}") from exc
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ReleaseError(f"{path} exited with {result.returncode}: "
                           f"{detail[-1] if detail else 'no message'}")


#: The queue id in the reply to DATA: Postfix "queued as ID", Exim "id=ID".
_QUEUE_ID = re.compile(r"queued as ([0-9A-Za-z]+)|\bid=([0-9A-Za-z-]+)")


class _Smtp(smtplib.SMTP):
    """smtplib's client, keeping the reply to DATA (it carries the queue id)."""

    data_reply = b""

    def data(self, msg: Buffer | str) -> tuple[int, bytes]:
        code, reply = super().data(msg)
        self.data_reply = reply
        return code, reply


def _smtp(host: str, port: int, resubmission: Resubmission, timeout: float) -> str | None:
    data = re.sub(rb"\r?\n", b"\r\n", resubmission.message)
    try:
        with _Smtp(host, port, timeout=timeout) as smtp:
            smtp.ehlo_or_helo_if_needed()
            options = ["BODY=8BITMIME"] if any(b > 0x7F for b in data) else []
            refused = smtp.sendmail(resubmission.sender, list(resubmission.recipients), data,
                                    mail_options=options)
            found = _QUEUE_ID.search(smtp.data_reply.decode("ascii", "replace"))
    except (OSError, smtplib.SMTPException) as exc:
        raise ReleaseError(f"SMTP to {host}:{port} failed: {exc}") from exc
    queue_id = None if found is None else found.group(1) or found.group(2)
    if refused:
        listing = ", ".join(f"{rcpt} ({code})" for rcpt, (code, _) in refused.items())
        raise PartlyRefused(f"SMTP to {host}:{port} refused some recipients: {listing}",
                            queue_id)
    return queue_id

"""``smime-milter release``: hand an authorized message back to the MTA.

The message goes to the envelope recipients the milter recorded when it
held the message back (the store is the authority, not a header someone
could edit), from the original envelope sender, and passes the milter
again: the milter, not this tool, decides that it is released. The tool
checks first anyway, so a release officer learns now, not from a second
diversion, that an authorization is missing.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

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
from smime_milter.store import Record
from smime_milter.verify import Verifier

#: Fields of the held copy that must not travel again: delivery traces of the
#: release officer's mailbox and our own stamps (the milter strips those too).
DROPPED_FIELDS = frozenset({
    "return-path", "delivered-to", "x-original-to",
    ORIGINAL_RECIPIENTS_HEADER.lower(), RELEASE_STATUS_HEADER.lower(),
    stamp.STATUS_HEADER.lower(),
})


class ReleaseError(SmimeMilterError, RuntimeError):
    """The message cannot be released; the text says why."""


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
            casefold_local_part: bool) -> Resubmission:
    """Check that the authorized ``message`` is released under the rule that
    held it (one of the configured ``rules``) and return what to submit, or
    raise ReleaseError with the reasons."""
    if record is None:
        raise ReleaseError(f"no record {record_id} in the store")
    if record.diverted_to is None or record.release is None:
        raise ReleaseError(f"record {record_id} was not held for release")
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


def submit(resubmission: Resubmission, how: str, timeout: float = 120.0) -> None:
    """Hand the message to the MTA: ``sendmail:/path`` or ``smtp:host:port``."""
    kind, _, where = how.partition(":")
    if kind == "sendmail":
        _sendmail(where, resubmission, timeout)
    else:
        host, _, port = where.rpartition(":")
        _smtp(host, int(port), resubmission, timeout)


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


def _smtp(host: str, port: int, resubmission: Resubmission, timeout: float) -> None:
    data = re.sub(rb"\r?\n", b"\r\n", resubmission.message)
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.ehlo_or_helo_if_needed()
            options = ["BODY=8BITMIME"] if any(b > 0x7F for b in data) else []
            refused = smtp.sendmail(resubmission.sender, list(resubmission.recipients), data,
                                    mail_options=options)
    except (OSError, smtplib.SMTPException) as exc:
        raise ReleaseError(f"SMTP to {host}:{port} failed: {exc}") from exc
    if refused:
        listing = ", ".join(f"{rcpt} ({code})" for rcpt, (code, _) in refused.items())
        raise ReleaseError(f"SMTP to {host}:{port} refused some recipients: {listing}")

"""Fill the store from delivered messages that carry the milter's stamps.

Used to rebuild a lost store (or one of an older schema: ``store`` tells the
admin to rebuild it with ``smime-milter ingest``), and to fill a store on a
host other than the MTA's, e.g. next to a JMAP server, from the mail store.

What is trusted
---------------
The milter deletes every incoming ``SMIME-Status-At-Delivery`` field and every
``Authentication-Results`` field claiming its authserv-id, then inserts its own
two fields at the top of the header, directly above the ``Received`` field its
MTA added. In a mailbox fed only through that MTA, a stamp with the configured
authserv-id is therefore the milter's. A message is ingested only when:

* exactly one Authentication-Results field that claims the configured
  authserv-id (by the same lenient test the milter uses to delete forgeries)
  carries an ``smime`` result, and its authserv-id parses as exactly the
  configured one (compared case-insensitively: it is a host name). Fields
  with that id but without an ``smime`` result (OpenDKIM, OpenDMARC... often
  share the host name) are ignored. Two with ``smime`` results cannot come
  from one pass through the milter: ambiguous, skipped;
* exactly one ``SMIME-Status-At-Delivery`` field exists, it parses, and its
  record id has the form ``model.new_record_id`` issues (``is_issued_record_id``);
* the two agree (``smime=none`` for no S/MIME, ``neutral`` for ``unknown``
  and ``signed``, a ``pass`` for a verified status, neither ``pass`` nor
  ``none`` for a failed one), so a hand-edited half of a stamp is refused.

Anything else is *skipped* with a reason and never creates a record; no record
id is ever taken from an untrusted field. Malformed input (not MIME, binary
garbage, a header section beyond ``mime.MAX_HEADER_BYTES``) is skipped too.

This trust holds only for mail that came through the milter: run ingest over
mailboxes fed by the MTA that runs it. Mail that bypassed it (local submission
without ``non_smtpd_milters``, IMAP APPEND by the mailbox owner, restored
archives of other systems) can carry forged stamps. The damage is bounded: an
existing record's at-delivery status is never changed (below), record ids
are unguessable (125 random bits), so a forgery cannot name another
message's record without a copy of that message, and a new record is seen
only through the message that names it.

What a record gets
------------------
* ``smimeStatusAtDelivery`` is the stamp's status: it is what was decided at
  delivery, with the trust anchors, CRLs and keys of that moment. (The
  ``ingest`` command then applies ``trust add``'s rule to the records it
  created, ``revalidate.reassess_records``: a failure an anchor added since
  delivery resolves becomes verified, so a rebuilt store agrees with one
  that saw the ``trust add``.)
* ``receivedAt`` is the existing record's when there is one; otherwise the
  date of the ``Received`` field directly below our Authentication-Results
  (the one our MTA added while the milter ran); failing that, the topmost
  ``Received`` field with a date (a later hop of the same site, e.g. LMTP);
  failing that, the message is skipped: the status at delivery cannot be
  reproduced without the moment of delivery.
* The message is verified again as of receivedAt to recover what the stamp
  does not carry and a record needs to be re-validated later without the
  message: signers, certificates, CRLs, message errors, layer, From. When
  that status differs from the stamp's (other anchors or keys on this host,
  a message changed after delivery, a forgery), the stamp's status is kept,
  a warning is logged, and ``smimeErrorsAtDelivery`` is the engine's errors
  if it failed too, else one line saying that the stamp recorded a failure
  (with the reason the milter wrote in its Authentication-Results comment).
* ``smimeStatus`` is the engine's as of ``now`` (the at-receivedAt verdict
  when ``now`` is receivedAt); ``smimeVerifiedAt`` is ``now`` when that
  status can be re-validated, else null, as the milter does.
* Envelope: the MTA's delivery agent adds Return-Path, X-Original-To and
  Delivered-To above our stamps, so only fields *above* our
  Authentication-Results are used (ones below came from upstream hops).
  ``envelopeSender`` is the topmost Return-Path address ("" when absent, as
  for a null sender); ``envelopeRecipients`` the topmost X-Original-To (the
  RCPT TO address, which the milter records) else the topmost Delivered-To,
  else none. A message delivered to several mailboxes is one record whose
  copies each add their recipient. ``messageId`` is the first Message-ID
  field, whitespace-normalised as the milter does; ``queueId`` is null.

Existing records
----------------
A record with the stamp's id is refreshed, never replaced: its receivedAt,
envelope sender, queue id and at-delivery status and errors stay (a trust
anchor added later may have changed the latter legitimately). When its
Message-ID differs from the message's, the message is skipped (the id belongs
to another message). The facts derived from the message (signers,
certificates, CRLs, message errors, layer, signed part, From, notes) are
taken from the engine when its at-receivedAt status agrees with the record's
at-delivery status, or when the record has no signers and the engine found
some (e.g. only this host holds the decryption key); otherwise the record's
own stay, consistent with its at-delivery status. Missing Message-ID and
recipients are added. The current status stays (the ``Refresher`` owns it),
unless the record could not be re-validated before and now can. A refresh
that changes nothing writes nothing and reports ``unchanged``, so ingesting
the same mail again is idempotent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import mime
from smime_milter.model import Status, Verdict, is_issued_record_id
from smime_milter.stamp import (
    AR_HEADER,
    MAX_RESULTS,
    NEUTRAL,
    NONE,
    PASS,
    STATUS_HEADER,
    FieldSyntaxError,
    authserv_id_of,
    claims_authserv_id,
    parse_status_header,
    resinfos,
    unfold,
)
from smime_milter.store import Record, Store
from smime_milter.verify import Verifier

log = logging.getLogger(__name__)

Action = Literal["created", "refreshed", "unchanged", "skipped"]

_METHOD = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*(?:/\s*[0-9]+\s*)?=\s*([A-Za-z0-9_.-]+)")
_ANGLE = re.compile(r"<([^<>]*)>")
#: Longest piece of a message quoted in a reason.
_SHOW = 60


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingesting one message did. ``record_id`` is set exactly when a
    record for the message exists in the store afterwards."""

    record_id: str | None
    action: Action
    reason: str | None = None


class Untrusted(SmimeMilterError, ValueError):
    """The message carries no stamp ingest may trust; the text says why."""


@dataclass(frozen=True, slots=True)
class DeliveryStamp:
    """What the milter and the delivery agent wrote into one delivered message."""

    record_id: str
    status: Status | None
    #: The ``smime`` result codes of our Authentication-Results, in order.
    results: tuple[str, ...]
    #: The comment of the first non-pass ``smime`` result (the milter's reason).
    reason: str | None
    #: See the module docstring; None when no Received field has a usable date.
    received_at: datetime | None
    envelope_sender: str
    envelope_recipients: tuple[str, ...]
    message_id: str | None


# --------------------------------------------------------------------------- reading the stamp


def read_stamp(raw: bytes, authserv_id: str) -> DeliveryStamp:
    """The trusted stamp of a delivered message; :class:`Untrusted` when there
    is none (see the module docstring for the rules)."""
    if not raw or raw.isspace():  # isspace stops at the first other byte: no copy
        raise Untrusted("empty file")
    try:
        headers = mime.parse_entity(raw).headers
    except mime.MimeError as exc:
        raise Untrusted(f"not a mail message: {exc}") from None
    if not headers:
        raise Untrusted("not a mail message: no header fields")
    position, results, reason = _our_results(headers, authserv_id)
    status, record_id = _status_field(headers)
    if not _consistent(status, results):
        shown = " ".join(f"smime={result}" for result in results)
        raise Untrusted(f"{STATUS_HEADER} says {_token(status)} but the "
                        f"{AR_HEADER} from {authserv_id} says {shown}")
    above = headers[:position]
    return DeliveryStamp(
        record_id=record_id,
        status=status,
        results=results,
        reason=reason,
        received_at=_received_at(headers, position),
        envelope_sender=_envelope_sender(above),
        envelope_recipients=_envelope_recipients(above),
        message_id=_message_id(headers),
    )


def _our_results(headers: Sequence[tuple[str, str]], authserv_id: str
                 ) -> tuple[int, tuple[str, ...], str | None]:
    """(header index, smime results, first failure comment) of our A-R field."""
    claims = 0
    found: list[tuple[int, str, tuple[str, ...], str | None]] = []
    for index, (name, value) in enumerate(headers):
        if name.lower() != AR_HEADER.lower() or not claims_authserv_id(value, authserv_id):
            continue
        claims += 1
        results, reason = _smime_results(value)
        if results:
            found.append((index, value, results, reason))
    if not found:
        if claims:
            raise Untrusted(f"no smime result in the {AR_HEADER} from {authserv_id}")
        raise Untrusted(f"no {AR_HEADER} from {authserv_id}")
    if len(found) > 1:
        raise Untrusted(f"{len(found)} {AR_HEADER} fields from {authserv_id} carry smime "
                        "results; one pass through the milter leaves exactly one")
    index, value, results, reason = found[0]
    claimed = authserv_id_of(value)
    if claimed is None or claimed.lower() != authserv_id.lower():
        raise Untrusted(f"malformed {AR_HEADER} claiming {authserv_id}: {_show(value)}")
    return index, results, reason


def _smime_results(value: str) -> tuple[tuple[str, ...], str | None]:
    """The ``smime`` result codes of an A-R value and the first comment that
    follows a non-pass one. Lenient: an unterminated comment or quoted-string
    runs to the end of the value."""
    results: list[str] = []
    reason: str | None = None
    for text, comments in resinfos(value)[1:]:
        match = _METHOD.match(text)
        if match is None or match.group(1).lower() != "smime":
            continue
        result = match.group(2).lower()
        results.append(result)
        if reason is None and result != PASS and comments:
            reason = " ".join(comments[0].split()) or None
    return tuple(results), reason


def _status_field(headers: Sequence[tuple[str, str]]) -> tuple[Status | None, str]:
    values = [value for name, value in headers if name.lower() == STATUS_HEADER.lower()]
    if not values:
        raise Untrusted(f"no {STATUS_HEADER} field")
    if len(values) > 1:
        raise Untrusted(f"{len(values)} {STATUS_HEADER} fields; the milter leaves exactly one")
    try:
        status, record_id = parse_status_header(values[0])
    except FieldSyntaxError as exc:
        raise Untrusted(f"malformed {STATUS_HEADER}: {_show(str(exc))}") from None
    if record_id is None:
        raise Untrusted(f"{STATUS_HEADER} names no record")
    if not is_issued_record_id(record_id):
        raise Untrusted(f"{STATUS_HEADER} names {_show(record_id)}, not a record id "
                        "this milter issues")
    return status, record_id


def _consistent(status: Status | None, results: tuple[str, ...]) -> bool:
    """Whether the A-R results can belong to this status (see stamp.smime_result)."""
    if status is None:
        return all(result == NONE for result in results)
    if status in (Status.UNKNOWN, Status.SIGNED):
        return all(result == NEUTRAL for result in results)
    if NONE in results:
        return False
    if status.is_verified:
        # A-R shows at most MAX_RESULTS signers: the good one may be hidden.
        return PASS in results or len(results) >= MAX_RESULTS
    return PASS not in results


def _received_at(headers: Sequence[tuple[str, str]], position: int) -> datetime | None:
    below = [value for name, value in headers[position + 1:] if name.lower() == "received"]
    for value in below[:1]:
        moment = _received_date(value)
        if moment is not None:
            return moment
    for name, value in headers:
        if name.lower() == "received":
            moment = _received_date(value)
            if moment is not None:
                return moment
    return None


def _received_date(value: str) -> datetime | None:
    """RFC 5322 §3.6.7: the date-time after the last ';' of a Received field."""
    _, separator, date = unfold(value).rpartition(";")
    if not separator:
        return None
    try:
        moment = parsedate_to_datetime(date.strip())
        if moment.tzinfo is None:  # "-0000": UTC, zone unknown (RFC 5322 §3.3)
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _clean(value: str) -> str:
    """A header value as the milter records it: undecodable octets as U+FFFD,
    whitespace runs as one space."""
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _address(value: str) -> str:
    text = _clean(value)
    match = _ANGLE.search(text)
    return (match.group(1) if match else text).strip()


def _envelope_sender(above: Sequence[tuple[str, str]]) -> str:
    value = _first(above, "return-path")
    return "" if value is None else _address(value)


def _envelope_recipients(above: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    value = _first(above, "x-original-to") or _first(above, "delivered-to")
    address = _address(value) if value is not None else ""
    return (address,) if address else ()


def _message_id(headers: Sequence[tuple[str, str]]) -> str | None:
    value = _first(headers, "message-id")
    return (_clean(value) or None) if value is not None else None


def _show(text: str) -> str:
    """Untrusted text for a one-line reason: printable ASCII, bounded."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return repr(clean if len(clean) <= _SHOW else clean[: _SHOW - 3] + "...")


def _token(status: Status | None) -> str:
    return NONE if status is None else status.value


# --------------------------------------------------------------------------- ingesting


def ingest_message(raw: bytes, *, authserv_id: str, verifier: Verifier, store: Store,
                   now: datetime) -> IngestResult:
    """Create or refresh the record a delivered message's stamp names.

    Returns after the store committed the record. Untrusted or malformed
    messages are ``skipped`` results, never exceptions; store failures
    (``StoreError``) and resource exhaustion are raised.
    """
    if now.utcoffset() is None:
        raise ValueError(f"need a timezone-aware moment, got {now!r}")
    try:
        stamp = read_stamp(raw, authserv_id)
    except Untrusted as exc:
        return IngestResult(None, "skipped", str(exc))
    existing = store.get(stamp.record_id)
    if existing is not None:
        if existing.message_id and stamp.message_id and existing.message_id != stamp.message_id:
            return IngestResult(None, "skipped", (
                f"record {stamp.record_id} belongs to another message "
                f"(Message-ID {_show(existing.message_id)}, this one has "
                f"{_show(stamp.message_id)})"))
        received_at = existing.received_at
    elif stamp.received_at is not None:
        received_at = stamp.received_at
    else:
        return IngestResult(None, "skipped", (
            f"no Received field with a usable date: the moment of delivery of record "
            f"{stamp.record_id} is unknown"))
    at_delivery = verifier.verify(raw, at=received_at)
    current = at_delivery if now == received_at else verifier.verify(raw, at=now)
    if existing is None:
        record = _new_record(stamp, received_at, at_delivery, current, now, authserv_id)
        store.put_sync(record)
        return IngestResult(record.record_id, "created")
    record = _refreshed(existing, stamp, at_delivery, current, now)
    if record == existing:
        return IngestResult(record.record_id, "unchanged")
    store.put_sync(record)
    return IngestResult(record.record_id, "refreshed")


def _warn_if_different(record_id: str, recorded: Status | None, verdict: Verdict,
                       what: str) -> bool:
    """Logs when the engine disagrees with the status at delivery; True when it does."""
    if verdict.status == recorded:
        return False
    errors = f" ({'; '.join(verdict.errors)})" if verdict.errors else ""
    log.warning(
        "record %s: verified again as of its receivedAt the message is %s%s, but %s says "
        "%s; keeping %s as smimeStatusAtDelivery", record_id, _token(verdict.status), errors,
        what, _token(recorded), _token(recorded),
    )
    return True


def _errors_at_delivery(stamp: DeliveryStamp, verdict: Verdict, authserv_id: str
                        ) -> tuple[str, ...] | None:
    status = stamp.status
    if status is None or not status.is_failed:
        return None  # RFC 9219 §4.1: smimeErrors is null unless the status failed
    if verdict.status is not None and verdict.status.is_failed and verdict.errors:
        return verdict.errors
    line = f"the delivery stamp of {authserv_id} recorded a failure"
    return (f"{line}: {stamp.reason}" if stamp.reason else line,)


def _current(verdict: Verdict, now: datetime) -> dict[str, Any]:
    return {
        "status": verdict.status,
        "errors": verdict.errors,
        "verified_at": now if verdict.verified_at is not None else None,
    }


def _derived(verdict: Verdict) -> dict[str, Any]:
    """The record fields that are facts of the message itself."""
    return {
        "from_address": verdict.from_address,
        "signers": verdict.signers,
        "certificates": verdict.certificates,
        "crls": verdict.crls,
        "layer": verdict.layer,
        "signed_part": verdict.signed_part,
        "notes": verdict.notes,
        "message_errors": verdict.message_errors,
    }


def _new_record(stamp: DeliveryStamp, received_at: datetime, at_delivery: Verdict,
                current: Verdict, now: datetime, authserv_id: str) -> Record:
    _warn_if_different(stamp.record_id, stamp.status, at_delivery, "the delivery stamp")
    return Record(
        record_id=stamp.record_id,
        received_at=received_at,
        envelope_sender=stamp.envelope_sender,
        envelope_recipients=stamp.envelope_recipients,
        message_id=stamp.message_id,
        queue_id=None,
        status_at_delivery=stamp.status,
        errors_at_delivery=_errors_at_delivery(stamp, at_delivery, authserv_id),
        **_current(current, now),
        **_derived(at_delivery),
    )


def _refreshed(existing: Record, stamp: DeliveryStamp, at_delivery: Verdict,
               current: Verdict, now: datetime) -> Record:
    disagrees = _warn_if_different(existing.record_id, existing.status_at_delivery,
                                   at_delivery, "the stored record")
    record = existing
    if not disagrees or (not existing.signers and at_delivery.signers):
        record = replace(record, **_derived(at_delivery))
    known = {address.lower() for address in record.envelope_recipients}
    added = tuple(a for a in stamp.envelope_recipients if a.lower() not in known)
    record = replace(
        record,
        message_id=record.message_id or stamp.message_id,
        envelope_recipients=record.envelope_recipients + added,
    )
    if not existing.revalidatable and record.signers:
        candidate = replace(record, **_current(current, now))
        if candidate.revalidatable:
            record = candidate
    return record


# --------------------------------------------------------------------------- finding messages


def message_files(paths: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for every message file under ``paths``, or (path, why it
    cannot be read) for a path that is missing or unreadable.

    A file is a message whatever its name. A directory with ``cur`` or ``new``
    is a Maildir: the files of ``new`` and ``cur`` are messages (``tmp`` holds
    deliveries in progress, other files are the IMAP server's), and its other
    subdirectories are walked too (Maildir++ folders such as ``.Archive``).
    Any other directory holds message files and further directories. Inside
    a walked directory, hidden files and directories (but Maildir++ folders)
    are skipped and symbolic links to directories are not followed. Order is
    by name, so runs are reproducible.
    """
    for path in paths:
        try:
            is_dir = path.is_dir()
            exists = is_dir or path.exists()
        except OSError as exc:
            yield path, exc.strerror or str(exc)
            continue
        if is_dir:
            yield from _walk(path)
        elif exists:
            yield path, None
        else:
            yield path, "no such file or directory"


def _walk(directory: Path) -> Iterator[tuple[Path, str | None]]:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        yield directory, exc.strerror or str(exc)
        return
    names = {entry.name for entry in dirs}
    if names & {"cur", "new"}:  # a Maildir
        for sub in ("new", "cur"):
            if sub in names:
                yield from _files(directory / sub)
        for entry in dirs:
            if entry.name not in ("cur", "new", "tmp"):
                yield from _walk(Path(entry.path))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.name in names:
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path), None


def _files(directory: Path) -> Iterator[tuple[Path, str | None]]:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        yield directory, exc.strerror or str(exc)
        return
    for entry in entries:
        if not entry.name.startswith(".") and entry.is_file():
            yield Path(entry.path), None

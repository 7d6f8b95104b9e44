"""The LMDB store of verification results: the milter writes, a JMAP server reads.

The on-disk layout is a contract with readers written in other languages and is
specified in ``docs/store-schema.rst``; change it only together with
:data:`SCHEMA_VERSION`.

Concurrency model:

* one LMDB environment per process and path (LMDB forbids opening the same
  files twice in one process): :meth:`Store.open` keeps a registry keyed by
  realpath and hands out handles that share it;
* one writer thread per environment owns every write transaction. Callers
  queue work and get a :class:`~concurrent.futures.Future` that resolves only
  after the transaction holding their record committed, so the milter never
  acknowledges a message whose result could still be lost. The writer commits
  up to ``batch_limit`` queued operations per transaction, which amortises
  the fsync of each commit over many messages;
* reads use short read transactions from any thread. Growing the map (and
  closing) invalidates every transaction the process has open, so those take a
  process-wide exclusive lock that readers share.
"""

from __future__ import annotations

import base64
import enum
import errno
import hashlib
import json
import os
import queue
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb

from smime_milter.model import SignerResult, Status, Verdict
from smime_milter.release.rules import ReleaseDecision

SCHEMA_VERSION = 4
INDEXES = ("has_smime", "has_verified_smime", "has_verified_smime_at_delivery")

#: Every named sub-database of schema version 2.
_V2_DB_NAMES = (
    "meta", "records", "status", "certs", "crls", "changes", *INDEXES, "verify_due"
)
#: Version 3 adds ``learned``; a version 2 store is upgraded in place by the
#: writer (the new sub-database starts empty), and read as it is until then.
#: Version 4 adds the ``d`` (deleted) change-log kind and nothing else.
_DB_NAMES = (*_V2_DB_NAMES, "learned")
#: Distinct certificates ``learned`` keeps per address: a sender renews or
#: switches certificates a few times, never dozens; the oldest go first.
MAX_LEARNED_PER_ADDRESS = 8
#: LMDB's default maximum key size; a longer address is not learned.
_MAX_KEY = 511
#: The record members the ``status`` sub-database repeats, for cheap reads.
_STATUS_MEMBERS = (
    "receivedAt", "smimeStatusAtDelivery", "smimeErrorsAtDelivery", "smimeStatus",
    "smimeErrors", "smimeVerifiedAt",
)
_MAX_DBS = 16
#: Keys read per read transaction by the iterators, so none holds a snapshot
#: (and blocks map growth) for long.
_CHUNK = 1024
#: RFC 8620 §1.2 Id: 1-255 octets of the URL- and filename-safe base64 alphabet.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
_STATE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
_VERIFIED = frozenset(status.value for status in Status if status.is_verified)
#: Record properties whose change is an Email/changes "updated" (RFC 9219 §4.3).
_LOGGED = ("smimeStatusAtDelivery", "smimeErrorsAtDelivery", "smimeStatus", "smimeErrors")
_CREATED = b"c"
_UPDATED = b"u"
_DESTROYED = b"d"
_CORRUPT = (
    lmdb.CorruptedError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadRslotError,
    lmdb.PageNotFoundError,
    lmdb.IncompatibleError,
    lmdb.BadDbiError,
)


class _Unset(enum.Enum):
    UNSET = "UNSET"


#: "Leave this field alone" for :meth:`Store.update` (None means JSON null).
UNSET = _Unset.UNSET


class StoreError(Exception):
    """A store failure the caller can act on; ``reason`` says which kind.

    Reasons: ``map-full``, ``disk-full``, ``corrupt``, ``schema``, ``closed``,
    ``io``, ``missing`` (and ``cannot-calculate-changes``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CannotCalculateChanges(StoreError):
    """The JMAP ``cannotCalculateChanges`` error: the client must resync."""

    def __init__(self, message: str) -> None:
        super().__init__("cannot-calculate-changes", message)


def new_record_id() -> str:
    """A fresh opaque record id: ``r`` and 25 base32 characters (125 random bits).

    Random rather than derived from the message so ids leak nothing and never
    collide for resent messages; the letter prefix keeps it a valid JMAP Id
    that neither starts with a dash nor is all digits.
    """
    text = base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower()
    return "r" + text[:25]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Record:
    """What the store keeps about one delivered message.

    Dates are normalised to what the store can hold (UTC, whole seconds), so a
    record read back equals the one written.
    """

    record_id: str
    received_at: datetime
    envelope_sender: str
    envelope_recipients: tuple[str, ...]
    message_id: str | None
    from_address: str | None
    queue_id: str | None
    status_at_delivery: Status | None
    errors_at_delivery: tuple[str, ...] | None
    status: Status | None
    errors: tuple[str, ...] | None
    verified_at: datetime | None
    signers: tuple[SignerResult, ...] = ()
    certificates: tuple[bytes, ...] = ()
    layer: str | None = None
    signed_part: str | None = None
    notes: tuple[str, ...] = ()
    #: DER of the CRLs the SignedData carried.
    crls: tuple[bytes, ...] = ()
    #: Errors about the message rather than a signer (see Verdict).
    message_errors: tuple[str, ...] = ()
    #: MMHS draft-and-release outcome, when a release rule applied.
    release: ReleaseDecision | None = None
    #: Where an unreleased message went instead of ``envelope_recipients``
    #: (a release-officer address, or "hold"); None when it was not diverted.
    diverted_to: str | None = None

    @property
    def revalidatable(self) -> bool:
        """Whether the current status can be recomputed from what is stored:
        there is a signer certificate whose chain can be validated again."""
        return self.verified_at is not None and any(s.certificate for s in self.signers)

    def __post_init__(self) -> None:
        if not isinstance(self.record_id, str) or not _ID_RE.fullmatch(self.record_id):
            raise ValueError(f"not a valid record id: {self.record_id!r}")
        object.__setattr__(self, "received_at", _utc(self.received_at))
        object.__setattr__(self, "verified_at", _utc_or_none(self.verified_at))
        object.__setattr__(self, "signers", tuple(map(_normalized_signer, self.signers)))

    @classmethod
    def from_verdict(
        cls,
        verdict: Verdict,
        *,
        record_id: str,
        received_at: datetime,
        envelope_sender: str,
        envelope_recipients: Sequence[str],
        message_id: str | None,
        queue_id: str | None,
    ) -> Record:
        """The record of a verdict computed at delivery: current = at delivery."""
        return cls(
            record_id=record_id,
            received_at=received_at,
            envelope_sender=envelope_sender,
            envelope_recipients=tuple(envelope_recipients),
            message_id=message_id,
            from_address=verdict.from_address,
            queue_id=queue_id,
            status_at_delivery=verdict.status,
            errors_at_delivery=verdict.errors,
            status=verdict.status,
            errors=verdict.errors,
            verified_at=verdict.verified_at,
            signers=verdict.signers,
            certificates=verdict.certificates,
            layer=verdict.layer,
            signed_part=verdict.signed_part,
            notes=verdict.notes,
            crls=verdict.crls,
            message_errors=verdict.message_errors,
        )


@dataclass(frozen=True, slots=True)
class StatusView:
    """The RFC 9219 members of one record, read without its signers'
    certificates: what Email/get and Email/query need, cheaply."""

    record_id: str
    received_at: datetime
    status_at_delivery: Status | None
    errors_at_delivery: tuple[str, ...] | None
    status: Status | None
    errors: tuple[str, ...] | None
    verified_at: datetime | None
    #: See :attr:`Record.revalidatable`.
    revalidatable: bool


@dataclass(frozen=True, slots=True)
class TrustEpoch:
    """Which trust-anchor set current statuses were last computed with.

    A status verified before ``changed_at`` predates the current anchors and
    is stale whatever its age (RFC 9219: anchor changes affect smimeStatus).
    """

    generation: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class LearnedCertificate:
    """A certificate an address proved it holds by signing a message that
    verified at delivery: a candidate for encrypting mail to that address.

    Whether it may still be used (expiry, revocation, trust, key usage) is
    the reader's question to answer at the time of use; the store only
    remembers what it saw.
    """

    #: DER of the signer certificate.
    certificate: bytes
    #: When the newest message signed with it was received.
    received_at: datetime
    #: The record of that message.
    record_id: str
    #: Its signer's SMIMECapabilities (dotted OIDs, preferred first).
    capabilities: tuple[str, ...] = ()
    #: DER of the rest of the path validated at delivery (intermediates and
    #: the anchor), so the certificate can be validated again without the message.
    chain: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Changes:
    """The answer to Email/changes, restricted to what the store tracks."""

    old_state: str
    new_state: str
    created: tuple[str, ...]
    updated: tuple[str, ...]
    has_more_changes: bool
    #: Records deleted (:meth:`Store.delete`, retention) that existed at the
    #: old state.
    destroyed: tuple[str, ...] = ()


def _utc(moment: datetime) -> datetime:
    if isinstance(moment, datetime) and moment.tzinfo is UTC and not moment.microsecond:
        return moment  # already normalised: every read and most writes
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=0)


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)


def _normalized_signer(signer: SignerResult) -> SignerResult:
    countersignatures = tuple(map(_normalized_signer, signer.countersignatures))
    if signer.signing_time is None and all(
        a is b for a, b in zip(countersignatures, signer.countersignatures, strict=True)
    ):
        return signer
    signing_time = None if signer.signing_time is None else _utc(signer.signing_time)
    return replace(signer, signing_time=signing_time, countersignatures=countersignatures)


# --------------------------------------------------------------------------- JSON form


def utc_date(moment: datetime | None) -> str | None:
    """RFC 8620 UTCDate without fractional seconds: ``2020-07-07T14:15:18Z``."""
    if moment is None:
        return None
    return _utc(moment).replace(tzinfo=None).isoformat() + "Z"


def _date_value(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _text(value: str) -> str:
    """``value`` as UTF-8 JSON can carry it: lone surrogates (undecodable bytes
    of a header or an envelope address) become U+FFFD rather than failing the
    message at delivery."""
    if not isinstance(value, str):
        raise TypeError(f"need a str, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _text_or_none(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _texts(values: Iterable[str]) -> list[str]:
    if isinstance(values, str | bytes):
        raise TypeError(f"need a sequence of str, got {values!r}")
    return [_text(value) for value in values]


def _texts_or_none(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else _texts(values)


def _status_json(status: Status | None) -> str | None:
    return None if status is None else Status(status).value


def _status_value(token: str | None) -> Status | None:
    return None if token is None else Status(token)


def _tuple_or_none(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


_decode_json = json.JSONDecoder().decode


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _with_change_state(body: bytes, state: int) -> bytes:
    """Prepends ``changeState`` to an encoded object, so the caller's thread
    can encode the record and the writer only adds the state it assigns."""
    return b'{"changeState":%d,%s' % (state, body[1:])


class _CertRefs:
    """Collects the DER a record references, keyed by SHA-256 hex; a record
    names its leaf up to three times, so each DER is hashed once."""

    def __init__(self) -> None:
        self.der: dict[str, bytes] = {}
        self._digests: dict[bytes, str] = {}

    def ref(self, der: bytes) -> str:
        der = bytes(der)
        digest = self._digests.get(der)
        if digest is None:
            digest = self._digests[der] = hashlib.sha256(der).hexdigest()
            self.der[digest] = der
        return digest

    def ref_or_none(self, der: bytes | None) -> str | None:
        return None if der is None else self.ref(der)


def _signer_json(signer: SignerResult, certs: _CertRefs) -> dict[str, Any]:
    return {
        "emails": _texts(signer.emails),
        "subject": _text(signer.subject),
        "issuer": _text(signer.issuer),
        "serial": None if signer.serial is None else str(signer.serial),
        "digestAlgorithm": _text(signer.digest_algorithm),
        "signatureAlgorithm": _text(signer.signature_algorithm),
        "signatureOk": bool(signer.signature_ok),
        "chainOk": bool(signer.chain_ok),
        "fromMatch": bool(signer.from_match),
        "errors": _texts(signer.errors),
        "signingTime": utc_date(signer.signing_time),
        "certificate": certs.ref_or_none(signer.certificate),
        "path": [certs.ref(der) for der in signer.path],
        "chainErrors": _texts(signer.chain_errors),
        **({"countersignatures": [_signer_json(counter, certs)
                                  for counter in signer.countersignatures]}
           if signer.countersignatures else {}),
        **({"capabilities": _texts(signer.capabilities)} if signer.capabilities else {}),
    }


def _release_json(decision: ReleaseDecision) -> dict[str, Any]:
    return {
        "rule": _text(decision.rule),
        "released": decision.released,
        "required": decision.required,
        "authorized": _texts(decision.authorized),
        "reasons": _texts(decision.reasons),
    }


def _release_value(doc: dict[str, Any]) -> ReleaseDecision:
    return ReleaseDecision(
        rule=doc["rule"], released=doc["released"], required=doc["required"],
        authorized=tuple(doc["authorized"]), reasons=tuple(doc["reasons"]),
    )


def _record_json(record: Record, certs: _CertRefs, crls: _CertRefs) -> dict[str, Any]:
    """Every field but ``changeState``, which the writer assigns."""
    return {
        "id": record.record_id,
        "receivedAt": utc_date(record.received_at),
        "envelopeSender": _text(record.envelope_sender),
        "envelopeRecipients": _texts(record.envelope_recipients),
        "messageId": _text_or_none(record.message_id),
        "fromAddress": _text_or_none(record.from_address),
        "queueId": _text_or_none(record.queue_id),
        "smimeStatusAtDelivery": _status_json(record.status_at_delivery),
        "smimeErrorsAtDelivery": _texts_or_none(record.errors_at_delivery),
        "smimeStatus": _status_json(record.status),
        "smimeErrors": _texts_or_none(record.errors),
        "smimeVerifiedAt": utc_date(record.verified_at),
        "signers": [_signer_json(signer, certs) for signer in record.signers],
        "certificates": [certs.ref(der) for der in record.certificates],
        "layer": _text_or_none(record.layer),
        "signedPart": _text_or_none(record.signed_part),
        "notes": _texts(record.notes),
        "crls": [crls.ref(der) for der in record.crls],
        "messageErrors": _texts(record.message_errors),
        # Optional members (absent in records written before draft-and-release).
        **({"release": _release_json(record.release)} if record.release else {}),
        **({"divertedTo": _text(record.diverted_to)} if record.diverted_to else {}),
    }


def _signer_value(doc: dict[str, Any], cert: Callable[[str], bytes]) -> SignerResult:
    return SignerResult(
        emails=tuple(doc["emails"]),
        subject=doc["subject"],
        issuer=doc["issuer"],
        serial=None if doc["serial"] is None else int(doc["serial"]),
        digest_algorithm=doc["digestAlgorithm"],
        signature_algorithm=doc["signatureAlgorithm"],
        signature_ok=doc["signatureOk"],
        chain_ok=doc["chainOk"],
        from_match=doc["fromMatch"],
        errors=tuple(doc["errors"]),
        signing_time=_date_value(doc["signingTime"]),
        certificate=None if doc["certificate"] is None else cert(doc["certificate"]),
        path=tuple(map(cert, doc["path"])),
        chain_errors=tuple(doc["chainErrors"]),
        countersignatures=tuple(
            _signer_value(counter, cert) for counter in doc.get("countersignatures", ())
        ),
        capabilities=tuple(doc.get("capabilities", ())),
    )


def _record_value(
    doc: dict[str, Any], cert: Callable[[str], bytes], crl: Callable[[str], bytes]
) -> Record:
    return Record(
        record_id=doc["id"],
        received_at=datetime.fromisoformat(doc["receivedAt"]),
        envelope_sender=doc["envelopeSender"],
        envelope_recipients=tuple(doc["envelopeRecipients"]),
        message_id=doc["messageId"],
        from_address=doc["fromAddress"],
        queue_id=doc["queueId"],
        status_at_delivery=_status_value(doc["smimeStatusAtDelivery"]),
        errors_at_delivery=_tuple_or_none(doc["smimeErrorsAtDelivery"]),
        status=_status_value(doc["smimeStatus"]),
        errors=_tuple_or_none(doc["smimeErrors"]),
        verified_at=_date_value(doc["smimeVerifiedAt"]),
        signers=tuple(_signer_value(signer, cert) for signer in doc["signers"]),
        certificates=tuple(map(cert, doc["certificates"])),
        layer=doc["layer"],
        signed_part=doc["signedPart"],
        notes=tuple(doc["notes"]),
        crls=tuple(map(crl, doc["crls"])),
        message_errors=tuple(doc["messageErrors"]),
        release=_release_value(doc["release"]) if "release" in doc else None,
        diverted_to=doc.get("divertedTo"),
    )


def _status_entry(doc: dict[str, Any]) -> bytes:
    """The ``status`` sub-database value of a record document."""
    view = {name: doc[name] for name in _STATUS_MEMBERS}
    view["revalidatable"] = _due_key(doc) is not None
    return _json_bytes(view)


def _view_value(record_id: str, doc: dict[str, Any]) -> StatusView:
    return StatusView(
        record_id=record_id,
        received_at=datetime.fromisoformat(doc["receivedAt"]),
        status_at_delivery=_status_value(doc["smimeStatusAtDelivery"]),
        errors_at_delivery=_tuple_or_none(doc["smimeErrorsAtDelivery"]),
        status=_status_value(doc["smimeStatus"]),
        errors=_tuple_or_none(doc["smimeErrors"]),
        verified_at=_date_value(doc["smimeVerifiedAt"]),
        revalidatable=doc["revalidatable"],
    )


def _due_key(doc: dict[str, Any]) -> bytes | None:
    """The ``verify_due`` key of a record: its smimeVerifiedAt as 8-byte
    big-endian seconds, then its id; None when it cannot be re-validated."""
    verified_at = doc["smimeVerifiedAt"]
    if verified_at is None or not any(s["certificate"] for s in doc["signers"]):
        return None
    seconds = int(datetime.fromisoformat(verified_at).timestamp())
    return seconds.to_bytes(8, "big") + doc["id"].encode("ascii")


def _logged_view(doc: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(doc[name] for name in _LOGGED)


def _index_flags(doc: dict[str, Any]) -> dict[str, bool]:
    """Index membership of a record; RFC 9219 §4.2 bases hasSmime on smimeStatus."""
    return {
        "has_smime": doc["smimeStatus"] is not None,
        "has_verified_smime": doc["smimeStatus"] in _VERIFIED,
        "has_verified_smime_at_delivery": doc["smimeStatusAtDelivery"] in _VERIFIED,
    }


def _learned_prefix(address: str) -> bytes | None:
    """The ``learned`` key prefix of an address (lowercased UTF-8, then NUL),
    or None when no entry can exist for it."""
    if not isinstance(address, str) or "\0" in address:
        return None
    prefix = _text(address).lower().encode("utf-8") + b"\0"
    return prefix if len(prefix) + 64 <= _MAX_KEY else None


#: A ``learned`` entry ready to write: prefix, key, its (receivedAt, recordId), value.
_LearnedEntry = tuple[bytes, bytes, tuple[str, str], bytes]


def _learned_entries(record: Record, doc: dict[str, Any]) -> list[_LearnedEntry]:
    """The ``learned`` entries ``record`` makes: one per signer certificate
    that proved From when the message was delivered (signature, chain and
    From binding all held). Built from the record's JSON form ``doc``, whose
    certificate digests and dates are already computed: this runs for most
    messages, on the caller's thread."""
    if doc["smimeStatusAtDelivery"] not in _VERIFIED or doc["fromAddress"] is None:
        return []
    prefix = _learned_prefix(doc["fromAddress"])
    if prefix is None:
        return []
    order = (doc["receivedAt"], doc["id"])
    head = b'{"receivedAt":"%s","recordId":"%s","capabilities":' % (
        order[0].encode("ascii"), order[1].encode("ascii"))
    entries: dict[bytes, bytes] = {}
    for signer, signer_doc in zip(record.signers, doc["signers"], strict=True):
        if not signer.ok or signer_doc["certificate"] is None:
            continue
        key = prefix + signer_doc["certificate"].encode("ascii")
        if key not in entries:
            # Dates, record ids and digests are plain ASCII: only the
            # capabilities (any text a SignerResult holds) need JSON escaping.
            capabilities = signer_doc.get("capabilities")
            chain = ",".join(f'"{digest}"' for digest in signer_doc["path"][1:])
            entries[key] = b'%s%s,"chain":[%s]}' % (
                head, _json_bytes(capabilities) if capabilities else b"[]", chain.encode("ascii"))
    return [(prefix, key, order, value) for key, value in entries.items()]


def _learned_order(value: bytes) -> tuple[str, str]:
    """Newer sorts higher: received time, then record id for a stable order."""
    doc = _decode_json(value.decode("utf-8"))
    return doc["receivedAt"], doc["recordId"]


def _learn(txn: lmdb.Transaction, db: Any, entry: _LearnedEntry) -> None:
    """Writes one ``learned`` entry unless a newer message already holds it;
    a new certificate then trims the address to
    :data:`MAX_LEARNED_PER_ADDRESS` (the oldest go)."""
    prefix, key, order, value = entry
    old = txn.get(key, db=db)
    if old is not None:
        # The common case, a known sender's next message: the count is unchanged.
        if _learned_order(old) <= order:
            txn.put(key, value, db=db)
        return
    txn.put(key, value, db=db)
    cursor = txn.cursor(db=db)
    entries: list[tuple[tuple[str, str], bytes]] = []
    if cursor.set_range(prefix):
        for entry_key, entry_value in cursor.iternext():
            if not entry_key.startswith(prefix):
                break
            entries.append((_learned_order(entry_value), entry_key))
    if len(entries) > MAX_LEARNED_PER_ADDRESS:
        entries.sort()
        for _order, stale in entries[: len(entries) - MAX_LEARNED_PER_ADDRESS]:
            txn.delete(stale, db=db)


# --------------------------------------------------------------------------- errors


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, lmdb.DiskError):
        return True
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, lmdb.Error):
        code = exc.code
    else:
        return False
    return code in (errno.ENOSPC, errno.EDQUOT)


def _translate(exc: BaseException, where: str) -> StoreError:
    """The StoreError for an LMDB or OS failure, naming what was being done where."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, lmdb.MapFullError):
        return StoreError("map-full", f"{where}: the LMDB map is full ({exc})")
    if _is_disk_full(exc):
        return StoreError("disk-full", f"{where}: no space left on the device ({exc})")
    if isinstance(exc, _CORRUPT):
        return StoreError("corrupt", f"{where}: damaged or not an LMDB environment ({exc})")
    return StoreError("io", f"{where}: {exc}")


def _copy_error(exc: StoreError) -> StoreError:
    """One exception object per future: a shared one would collect the
    tracebacks of every thread that re-raises it."""
    copy = (
        CannotCalculateChanges(str(exc))
        if isinstance(exc, CannotCalculateChanges)
        else StoreError(exc.reason, str(exc))
    )
    copy.__cause__ = exc.__cause__
    return copy


# --------------------------------------------------------------------------- encoding helpers


def _state_key(state: int) -> bytes:
    return state.to_bytes(8, "big")


def _read_counter(txn: lmdb.Transaction, env: _Env, key: bytes) -> int:
    raw = txn.get(key, db=env.dbs["meta"])
    if raw is None or not _STATE_RE.fullmatch(raw.decode("ascii", "replace")):
        raise StoreError(
            "corrupt", f"{env.path}: meta {key.decode()} is {raw!r}, not a decimal number"
        )
    return int(raw)


def _parse_state(state: str) -> int:
    if not isinstance(state, str) or not _STATE_RE.fullmatch(state):
        raise CannotCalculateChanges(f"not a state of this store: {state!r}")
    return int(state)


def _id_key(record_id: str) -> bytes | None:
    """The LMDB key of an id, or None when no record can have it."""
    if isinstance(record_id, str) and _ID_RE.fullmatch(record_id):
        return record_id.encode("ascii")
    return None


def _key_chunk(cursor: lmdb.Cursor, after: bytes | None) -> list[bytes]:
    """Up to _CHUNK keys following ``after`` (from the start when None)."""
    found = cursor.first() if after is None else cursor.set_range(after)
    if found and cursor.key() == after:
        found = cursor.next()
    keys: list[bytes] = []
    while found and len(keys) < _CHUNK:
        keys.append(cursor.key())
        found = cursor.next()
    return keys


def _collect_changes(
    cursor: lmdb.Cursor, since: int, current: int, max_changes: int | None
) -> Changes:
    """Walks the change log from ``since``; stops before an entry that would
    add an id beyond ``max_changes`` so the new state is a real cut point.

    Each id is reported once, as RFC 8620 §5.2 asks: created (new since
    ``since``), updated (existed then and now), or destroyed (existed then,
    not now); an id created and destroyed in between is not reported."""
    created: dict[str, None] = {}
    updated: dict[str, None] = {}
    destroyed: dict[str, None] = {}

    def changes(new_state: int, more: bool) -> Changes:
        return Changes(str(since), str(new_state), tuple(created), tuple(updated), more,
                       tuple(destroyed))

    reached = since
    if cursor.set_range(_state_key(since + 1)):
        for key, value in cursor.iternext():
            record_id = value[1:].decode("ascii")
            seen = record_id in created or record_id in updated or record_id in destroyed
            reported = len(created) + len(updated) + len(destroyed)
            if not seen and max_changes is not None and reported >= max_changes:
                return changes(reached, True)
            kind = value[:1]
            if kind == _CREATED:
                if record_id in destroyed:  # deleted, then stored again
                    del destroyed[record_id]
                    updated[record_id] = None
                else:
                    created[record_id] = None
                    updated.pop(record_id, None)
            elif kind == _UPDATED:
                if record_id not in created:
                    updated[record_id] = None
            elif kind == _DESTROYED:
                updated.pop(record_id, None)
                if record_id in created:
                    del created[record_id]
                else:
                    destroyed[record_id] = None
            else:
                raise StoreError("corrupt", f"change entry {key.hex()} has kind {kind!r}")
            reached = int.from_bytes(key, "big")
    return changes(current, False)


# --------------------------------------------------------------------------- locking


class _SharedLock:
    """Many holders of ``shared`` or one of ``exclusive``; waiting exclusive
    holders go first so growing the map is not starved by a stream of reads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


# --------------------------------------------------------------------------- writer


class _Batch:
    """One write transaction: the state counter and the change entries it adds."""

    def __init__(self, txn: lmdb.Transaction, env: _Env) -> None:
        self.txn = txn
        self.dbs = env.dbs
        self.start = self.state = _read_counter(txn, env, b"state")

    def log(self, kind: bytes, record_id: str) -> int:
        self.state += 1
        value = kind + record_id.encode("ascii")
        self.txn.put(_state_key(self.state), value, db=self.dbs["changes"], append=True)
        return self.state

    def write_record(
        self, record_id: str, doc: dict[str, Any], body: bytes, old: dict[str, Any] | None
    ) -> None:
        key = record_id.encode("ascii")
        self.txn.put(key, body, db=self.dbs["records"])
        self.txn.put(key, _status_entry(doc), db=self.dbs["status"])
        for index, member in _index_flags(doc).items():
            if member:
                self.txn.put(key, b"", db=self.dbs[index], overwrite=False)
            else:
                self.txn.delete(key, db=self.dbs[index])
        due, old_due = _due_key(doc), None if old is None else _due_key(old)
        if due != old_due:
            if old_due is not None:
                self.txn.delete(old_due, db=self.dbs["verify_due"])
            if due is not None:
                self.txn.put(due, b"", db=self.dbs["verify_due"])

    def delete_record(self, record_id: str) -> bool:
        """Removes a record and its index entries; its certificates and CRLs
        stay (they are shared, and learned certificates refer to them)."""
        key = record_id.encode("ascii")
        old = self.txn.get(key, db=self.dbs["records"])
        if old is None:
            return False
        due = _due_key(json.loads(old))
        if due is not None:
            self.txn.delete(due, db=self.dbs["verify_due"])
        for db in ("records", "status", *INDEXES):
            self.txn.delete(key, db=self.dbs[db])
        self.log(_DESTROYED, record_id)
        return True

    def finish(self, changelog_limit: int) -> None:
        if self.state == self.start:
            return
        meta = self.dbs["meta"]
        self.txn.put(b"state", str(self.state).encode("ascii"), db=meta)
        excess = self.txn.stat(self.dbs["changes"])["entries"] - changelog_limit
        if excess > 0:
            self.txn.put(b"min_state", str(self._trim(excess)).encode("ascii"), db=meta)

    def _trim(self, count: int) -> int:
        """Deletes the ``count`` oldest entries; returns the newest deleted state,
        the oldest one the log can still answer from."""
        cursor = self.txn.cursor(db=self.dbs["changes"])
        cursor.first()
        last = 0
        for _ in range(count):
            last = int.from_bytes(cursor.key(), "big")
            cursor.delete()
        return last


class _Op:
    """Queued work for the writer; ``apply`` runs inside the batch transaction
    and may run again if the batch is retried after growing the map."""

    def __init__(self) -> None:
        self.future: Future[Any] = Future()

    def apply(self, batch: _Batch) -> Any:
        raise NotImplementedError

    def result(self, applied: Any, state: int) -> Any:
        return applied


class _Put(_Op):
    def __init__(self, record: Record) -> None:
        super().__init__()
        certs, crls = _CertRefs(), _CertRefs()
        self.record_id = record.record_id
        self.doc = _record_json(record, certs, crls)
        self.body = _json_bytes(self.doc)
        self.learned = _learned_entries(record, self.doc)
        self.blobs = [
            (db, digest.encode("ascii"), der)
            for db, refs in (("certs", certs), ("crls", crls))
            for digest, der in refs.der.items()
        ]

    def apply(self, batch: _Batch) -> None:
        old = batch.txn.get(self.record_id.encode("ascii"), db=batch.dbs["records"])
        old_doc = None if old is None else json.loads(old)
        if old_doc is None:
            state = batch.log(_CREATED, self.record_id)
        elif _logged_view(old_doc) != _logged_view(self.doc):
            state = batch.log(_UPDATED, self.record_id)
        else:
            state = old_doc["changeState"]
        for db, key, der in self.blobs:
            batch.txn.put(key, der, db=batch.dbs[db], overwrite=False)
        body = _with_change_state(self.body, state)
        batch.write_record(self.record_id, self.doc, body, old_doc)
        for entry in self.learned:
            _learn(batch.txn, batch.dbs["learned"], entry)

    def result(self, applied: Any, state: int) -> int:
        return state


class _Update(_Op):
    def __init__(self, record_id: str, patch: dict[str, Any]) -> None:
        super().__init__()
        self.record_id = record_id
        self.patch = patch

    def apply(self, batch: _Batch) -> bool:
        key = _id_key(self.record_id)
        old = None if key is None else batch.txn.get(key, db=batch.dbs["records"])
        if old is None:
            raise StoreError("missing", f"no record {self.record_id!r}")
        old_doc = json.loads(old)
        doc = {**old_doc, **self.patch}
        if doc == old_doc:
            return False
        logged = _logged_view(doc) != _logged_view(old_doc)
        if logged:
            doc["changeState"] = batch.log(_UPDATED, self.record_id)
        batch.write_record(self.record_id, doc, _json_bytes(doc), old_doc)
        return logged


class _Delete(_Op):
    def __init__(self, record_ids: list[str]) -> None:
        super().__init__()
        self.record_ids = record_ids

    def apply(self, batch: _Batch) -> tuple[str, ...]:
        return tuple(record_id for record_id in self.record_ids
                     if batch.delete_record(record_id))


class _SetTrust(_Op):
    """Records the trust-anchor generation; a new one restarts the epoch."""

    def __init__(self, generation: str, changed_at: datetime) -> None:
        super().__init__()
        self.generation = generation.encode("ascii")
        self.changed_at = str(int(_utc(changed_at).timestamp())).encode("ascii")

    def apply(self, batch: _Batch) -> bool:
        meta = batch.dbs["meta"]
        if batch.txn.get(b"trust_generation", db=meta) == self.generation:
            return False
        batch.txn.put(b"trust_generation", self.generation, db=meta)
        batch.txn.put(b"trust_changed_at", self.changed_at, db=meta)
        return True


class _Writer:
    """The thread that owns every write transaction of one environment."""

    def __init__(self, env: _Env, batch_limit: int, max_map_size: int, changelog_limit: int):
        self._env = env
        self._batch_limit = batch_limit
        self._max_map_size = max_map_size
        self._changelog_limit = changelog_limit
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready: Future[None] = Future()
        self.commits = 0
        self._thread = threading.Thread(
            target=self._run, name=f"store-writer {env.path}", daemon=True
        )
        self._thread.start()

    def submit(self, op: _Op) -> None:
        self._queue.put(op)

    def stop(self) -> None:
        """Finishes everything queued so far, then ends the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._env.dbs = self._setup()
        except BaseException as exc:  # the opener re-raises it
            self.ready.set_exception(_translate(exc, f"opening {self._env.path}"))
            return
        self.ready.set_result(None)
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if batch:
                self._run_batch(batch)

    def _setup(self) -> dict[str, Any]:
        env = self._env
        with env.lock.shared(), env.env.begin(write=True) as txn:
            _check_main_db(txn, env.path)
            dbs = {name: env.env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}
            version = _schema_version(txn, dbs["meta"], env.path)
            if version is None:
                _initialise(txn, dbs, env.path)
            elif version != SCHEMA_VERSION:
                _upgrade(txn, dbs, version)
        return dbs

    def _next_batch(self) -> tuple[list[_Op], bool]:
        """Blocks for one operation, then takes what else is queued."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._batch_limit:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is None:
                return batch, True
            batch.append(op)
        return batch, False

    def _run_batch(self, ops: list[_Op]) -> None:
        """Commits the batch, then settles its futures; a failure fails
        exactly these futures and leaves the writer running."""
        try:
            outcomes, state = self._commit_growing(ops)
        except Exception as exc:
            error = _translate(exc, f"writing to {self._env.path}")
            if error is not exc:
                error.__cause__ = exc
            for op in ops:
                op.future.set_exception(_copy_error(error))
            return
        for op, outcome in zip(ops, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                op.future.set_exception(outcome)
            else:
                op.future.set_result(op.result(outcome, state))

    def _commit_growing(self, ops: list[_Op]) -> tuple[list[Any], int]:
        while True:
            try:
                return self._commit(ops)
            except lmdb.MapFullError as exc:
                if not self._grow():
                    raise StoreError(
                        "map-full",
                        f"{self._env.path}: batch of {len(ops)} does not fit in the map "
                        f"at max_map_size {self._max_map_size} bytes",
                    ) from exc
            except lmdb.MapResizedError:
                self._env.adopt_map_size()

    def _commit(self, ops: list[_Op]) -> tuple[list[Any], int]:
        """One write transaction for ``ops``. A failed one is aborted under the
        exclusive lock: py-lmdb's abort of a write txn waits until no LMDB call
        is in flight on any thread, which a steady stream of reads can delay
        indefinitely."""
        env = self._env
        with env.lock.shared():
            txn = env.env.begin(write=True)
            try:
                batch = _Batch(txn, env)
                outcomes = [_apply(op, batch) for op in ops]
                batch.finish(self._changelog_limit)
                txn.commit()
            except BaseException as exc:
                failure = exc
            else:
                self.commits += 1
                return outcomes, batch.state
        with env.lock.exclusive():
            txn.abort()
        raise failure

    def _grow(self) -> bool:
        """Doubles the map up to max_map_size; False when already there."""
        env = self._env
        with env.lock.exclusive():
            current = env.env.info()["map_size"]
            if current >= self._max_map_size:
                return False
            env.env.set_mapsize(min(current * 2, self._max_map_size))
        return True


def _apply(op: _Op, batch: _Batch) -> Any:
    """Runs one operation; an unknown id (found before anything is written) is
    that operation's outcome and does not fail the rest of the batch."""
    try:
        return op.apply(batch)
    except StoreError as exc:
        if exc.reason != "missing":
            raise
        return exc


def _check_main_db(txn: lmdb.Transaction, path: str) -> None:
    """Refuses an LMDB environment that holds anything but our sub-databases."""
    for name in txn.cursor().iternext(values=False):
        if name.decode("utf-8", "replace") not in _DB_NAMES:
            raise StoreError("schema", f"{path}: not an smime-milter store (holds {name!r})")


#: Older schema versions this program reads, and upgrades when it writes.
_UPGRADABLE = (2, 3)


def _schema_version(txn: lmdb.Transaction, meta: Any, path: str) -> int | None:
    """The store's schema version (ours or one we upgrade from); None when it
    was never initialised; StoreError("schema") for any other version."""
    raw = txn.get(b"schema", db=meta)
    if raw is None:
        return None
    for version in (SCHEMA_VERSION, *_UPGRADABLE):
        if raw == str(version).encode("ascii"):
            return version
    raise StoreError(
        "schema",
        f"{path}: store schema version {raw!r}, this program uses {SCHEMA_VERSION}; "
        "move the directory aside and rebuild it with 'smime-milter ingest'",
    )


def _upgrade(txn: lmdb.Transaction, dbs: dict[str, Any], version: int) -> None:
    """Version 2 -> 3 only adds ``learned`` (already created by the caller's
    open_db); it starts empty and fills as verified mail arrives. Version
    3 -> 4 only allows ``d`` entries in ``changes``, which version 3 readers
    would not understand. Either upgrade costs one meta write however large
    the store."""
    assert version in _UPGRADABLE, version
    txn.put(b"schema", str(SCHEMA_VERSION).encode("ascii"), db=dbs["meta"])


def _initialise(txn: lmdb.Transaction, dbs: dict[str, Any], path: str) -> None:
    if any(txn.stat(dbs[name])["entries"] for name in _DB_NAMES):
        raise StoreError("schema", f"{path}: store has data but no schema version")
    meta = dbs["meta"]
    txn.put(b"schema", str(SCHEMA_VERSION).encode("ascii"), db=meta)
    txn.put(b"state", b"0", db=meta)
    txn.put(b"min_state", b"0", db=meta)


# --------------------------------------------------------------------------- environment


class _Env:
    """One open LMDB environment, shared by every Store handle on its path."""

    def __init__(self, path: str, env: lmdb.Environment, readonly: bool) -> None:
        self.path = path
        self.env = env
        self.readonly = readonly
        self.dbs: dict[str, Any] = {}
        self.lock = _SharedLock()
        self.writer: _Writer | None = None
        self.handles = 0
        self.closed = False
        self._submit_lock = threading.Lock()

    def submit(self, op: _Op) -> Future[Any]:
        with self._submit_lock:
            if self.closed or self.writer is None:
                raise StoreError("closed", f"{self.path}: store is closed")
            self.writer.submit(op)
        return op.future

    @contextmanager
    def reading(self, what: str) -> Iterator[lmdb.Transaction]:
        """A read transaction; adopts a map another process grew and retries."""
        while True:
            with self.lock.shared():
                if self.closed:
                    raise StoreError("closed", f"{self.path}: store is closed")
                try:
                    txn = self.env.begin()
                except lmdb.MapResizedError:
                    txn = None
                except lmdb.Error as exc:
                    raise _translate(exc, f"{what} in {self.path}") from exc
                if txn is not None:
                    try:
                        yield txn
                    except lmdb.Error as exc:
                        raise _translate(exc, f"{what} in {self.path}") from exc
                    finally:
                        txn.abort()
                    return
            self.adopt_map_size()

    def adopt_map_size(self) -> None:
        with self.lock.exclusive():
            self.env.set_mapsize(0)

    def shutdown(self) -> None:
        """Stops accepting work, lets the writer finish its queue, closes LMDB."""
        with self._submit_lock:
            self.closed = True
        if self.writer is not None:
            self.writer.stop()
        with self.lock.exclusive():
            self.env.close()


_REGISTRY: dict[str, _Env] = {}
_REGISTRY_LOCK = threading.Lock()


def _open_readonly(path: str) -> _Env:
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise StoreError("missing", f"no store at {path} (no data.mdb); the milter creates it")
    try:
        # map_size=0: adopt the size the writer gave the map.
        env = lmdb.open(path, readonly=True, lock=True, subdir=True, max_dbs=_MAX_DBS, map_size=0)
    except lmdb.Error as exc:
        raise _translate(exc, f"opening {path}") from exc
    shared = _Env(path, env, readonly=True)
    try:
        with env.begin() as txn:
            _check_main_db(txn, path)
        # Without a txn: py-lmdb then opens the handles in one it commits, the
        # only way they outlive it (LMDB closes handles of an aborted txn).
        meta = _open_existing_db(env, "meta", path)
        with env.begin() as txn:
            version = _schema_version(txn, meta, path)
        if version is None:
            raise StoreError("schema", f"{path}: store was never initialised")
        # A version 2 store (its writer not yet upgraded) has no ``learned``.
        names = _V2_DB_NAMES if version == 2 else _DB_NAMES
        shared.dbs = {name: _open_existing_db(env, name, path) for name in names}
    except lmdb.Error as exc:
        env.close()
        raise _translate(exc, f"opening {path}") from exc
    except BaseException:
        env.close()
        raise
    return shared


def _open_existing_db(env: lmdb.Environment, name: str, path: str) -> Any:
    try:
        return env.open_db(name.encode(), create=False)
    except lmdb.NotFoundError:
        raise StoreError("schema", f"{path}: not an smime-milter store (no {name!r})") from None


def _open_writable(
    path: str, map_size: int, max_map_size: int, changelog_limit: int, batch_limit: int
) -> _Env:
    data = os.path.join(path, "data.mdb")
    fresh = not os.path.exists(data)
    try:
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o750)
            os.chmod(path, 0o750)
        env = lmdb.open(
            path,
            map_size=map_size,
            subdir=True,
            max_dbs=_MAX_DBS,
            lock=True,
            mode=0o640,
            # A new store uses the LMDB 0.9 data format every binding can read.
            lib_version=0 if fresh else None,
        )
    except (lmdb.Error, OSError) as exc:
        raise _translate(exc, f"opening {path}") from exc
    if fresh:
        # Readers need write access to lock.mdb for their reader slot.
        os.chmod(data, 0o640)
        os.chmod(os.path.join(path, "lock.mdb"), 0o660)
    shared = _Env(path, env, readonly=False)
    shared.writer = _Writer(shared, batch_limit, max_map_size, changelog_limit)
    try:
        shared.writer.ready.result()
    except BaseException:
        shared.shutdown()
        raise
    return shared


# --------------------------------------------------------------------------- public API


class Store:
    """A handle on the store at one path; see the module docstring."""

    __slots__ = ("_closed", "_env", "_lock", "_readonly")

    def __init__(self, env: _Env, readonly: bool) -> None:
        """Use :meth:`open`."""
        self._env = env
        self._readonly = readonly
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        readonly: bool = False,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 36,
        changelog_limit: int = 1_000_000,
        batch_limit: int = 256,
    ) -> Store:
        """Opens (creating when writable) the store in directory ``path``.

        A path already open in this process reuses that environment; its
        first opener's sizes and limits apply. A read-only open ignores the
        sizes and uses the map size the writer chose.
        """
        if changelog_limit < 1 or batch_limit < 1 or max_map_size < map_size:
            raise ValueError(
                "need changelog_limit >= 1, batch_limit >= 1, max_map_size >= map_size"
            )
        key = os.path.realpath(path)
        with _REGISTRY_LOCK:
            env = _REGISTRY.get(key)
            if env is None:
                env = (
                    _open_readonly(key)
                    if readonly
                    else _open_writable(key, map_size, max_map_size, changelog_limit, batch_limit)
                )
                _REGISTRY[key] = env
            elif env.readonly and not readonly:
                raise StoreError("io", f"{key} is already open read-only in this process")
            env.handles += 1
        return cls(env, readonly)

    # ----------------------------------------------------------------- writes

    def put(self, record: Record) -> Future[int]:
        """Queues ``record`` (replacing one with its id); resolves to the state
        after the commit that holds it."""
        return self._submit(_Put(record))

    def put_sync(self, record: Record, timeout: float | None = 30.0) -> int:
        return self.put(record).result(timeout)

    def update(
        self,
        record_id: str,
        *,
        status: Status | _Unset | None = UNSET,
        errors: Sequence[str] | _Unset | None = UNSET,
        verified_at: datetime | _Unset | None = UNSET,
        status_at_delivery: Status | _Unset | None = UNSET,
        errors_at_delivery: Sequence[str] | _Unset | None = UNSET,
    ) -> Future[bool]:
        """Changes the given fields; resolves to True when that appended a
        change-log entry (never for smimeVerifiedAt alone, RFC 9219 §4.3)."""
        patch: dict[str, Any] = {}
        if status is not UNSET:
            patch["smimeStatus"] = _status_json(status)
        if errors is not UNSET:
            patch["smimeErrors"] = _texts_or_none(errors)
        if verified_at is not UNSET:
            patch["smimeVerifiedAt"] = utc_date(verified_at)
        if status_at_delivery is not UNSET:
            patch["smimeStatusAtDelivery"] = _status_json(status_at_delivery)
        if errors_at_delivery is not UNSET:
            patch["smimeErrorsAtDelivery"] = _texts_or_none(errors_at_delivery)
        return self._submit(_Update(record_id, patch))

    def delete(self, record_ids: Iterable[str]) -> Future[tuple[str, ...]]:
        """Queues the deletion of the records ``record_ids``; resolves to the
        ids that existed. Each is logged, so Email/changes reports it
        destroyed. Ids no record can have are ignored."""
        return self._submit(_Delete([rid for rid in dict.fromkeys(record_ids)
                                     if _id_key(rid) is not None]))

    def prune(self, received_before: datetime, *, batch: int = 1000) -> int:
        """Deletes every record received before ``received_before`` (the
        retention job), ``batch`` per commit; returns how many."""
        deleted = 0
        doomed: list[str] = []
        for record_id in self.received_before(received_before):
            doomed.append(record_id)
            if len(doomed) >= batch:
                deleted += len(self.delete(doomed).result())
                doomed = []
        if doomed:
            deleted += len(self.delete(doomed).result())
        return deleted

    def received_before(self, moment: datetime) -> Iterator[str]:
        """Ids of the records received before ``moment`` (a retention scan
        of the small ``status`` entries); later chunks may see newer commits."""
        limit = _utc(moment)
        batch: list[str] = []
        for record_id in self.record_ids():
            batch.append(record_id)
            if len(batch) >= _CHUNK:
                yield from self._received_before(batch, limit)
                batch = []
        yield from self._received_before(batch, limit)

    def _received_before(self, ids: list[str], limit: datetime) -> list[str]:
        views = self.views(ids)
        return [rid for rid in ids if rid in views and views[rid].received_at < limit]

    def record_trust(self, generation: str, changed_at: datetime) -> Future[bool]:
        """Notes that current statuses are now computed with the anchor set
        ``generation``; when that differs from the stored one, every status
        verified before ``changed_at`` becomes stale. Resolves to whether it
        differed."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", generation):
            raise ValueError(f"not a trust generation: {generation!r}")
        return self._submit(_SetTrust(generation, changed_at))

    def _submit(self, op: _Op) -> Future[Any]:
        self._check_open()
        if self._readonly:
            raise StoreError("io", f"{self._env.path}: store handle is read-only")
        return self._env.submit(op)

    # ----------------------------------------------------------------- reads

    def get(self, record_id: str) -> Record | None:
        return self.get_many((record_id,)).get(record_id)

    def get_many(self, ids: Iterable[str]) -> dict[str, Record]:
        """The records among ``ids`` that exist, read from one snapshot."""
        self._check_open()
        dbs = self._env.dbs
        found: dict[str, Record] = {}
        with self._env.reading("reading records") as txn:
            cert = self._blob_loader(txn, "certs")
            crl = self._blob_loader(txn, "crls")
            for record_id in ids:
                key = _id_key(record_id)
                raw = None if key is None else txn.get(key, db=dbs["records"])
                if raw is not None:
                    found[record_id] = self._decode(record_id, raw, cert, crl)
        return found

    def views(self, ids: Iterable[str]) -> dict[str, StatusView]:
        """The status members of the records among ``ids`` that exist, from
        one snapshot; several times cheaper than :meth:`get_many`."""
        return self.state_and_views(ids)[1]

    def state_and_views(self, ids: Iterable[str]) -> tuple[str, dict[str, StatusView]]:
        """The state and :meth:`views` from one snapshot, so that the state
        is exactly the one the values belong to (what JMAP's Email/get
        returns: a later change is after it, an earlier one is in them)."""
        self._check_open()
        db = self._env.dbs["status"]
        found: dict[str, StatusView] = {}
        with self._env.reading("reading statuses") as txn:
            state = str(_read_counter(txn, self._env, b"state"))
            for record_id in ids:
                key = _id_key(record_id)
                raw = None if key is None else txn.get(key, db=db)
                if raw is not None:
                    try:
                        found[record_id] = _view_value(record_id, _decode_json(raw.decode()))
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        raise StoreError(
                            "corrupt",
                            f"{self._env.path}: record {record_id} is unreadable ({exc!r})",
                        ) from exc
        return state, found

    def due(self, verified_before: datetime) -> Iterator[str]:
        """Ids of re-validatable records whose smimeVerifiedAt is before
        ``verified_before``, oldest first; later chunks may see newer commits."""
        self._check_open()
        limit = int(_utc(verified_before).timestamp()).to_bytes(8, "big")
        db = self._env.dbs["verify_due"]
        for key in self._keys_raw(db, "reading verify_due"):
            if key[:8] >= limit:
                return
            yield key[8:].decode("ascii")

    def trust_epoch(self) -> TrustEpoch | None:
        """The recorded trust-anchor generation, or None before the first."""
        self._check_open()
        meta = self._env.dbs["meta"]
        with self._env.reading("reading the trust epoch") as txn:
            generation = txn.get(b"trust_generation", db=meta)
            changed_at = txn.get(b"trust_changed_at", db=meta)
        if generation is None or changed_at is None:
            return None
        return TrustEpoch(
            generation.decode("ascii"), datetime.fromtimestamp(int(changed_at), UTC)
        )

    def learned_certificates(self, address: str) -> list[LearnedCertificate]:
        """The certificates ``address`` (compared lowercased) signed verified
        mail with, newest message first; at most
        :data:`MAX_LEARNED_PER_ADDRESS`. Empty on a version 2 store opened
        read-only, which has learned nothing yet (a handle opened before its
        writer upgraded it keeps answering that until it is reopened)."""
        self._check_open()
        db = self._env.dbs.get("learned")
        prefix = _learned_prefix(address)
        if db is None or prefix is None:
            return []
        found: list[tuple[tuple[str, str], LearnedCertificate]] = []
        with self._env.reading("reading learned certificates") as txn:
            cert = self._blob_loader(txn, "certs")
            cursor = txn.cursor(db=db)
            if cursor.set_range(prefix):
                for key, value in cursor.iternext():
                    if not key.startswith(prefix):
                        break
                    found.append(self._learned_value(key, value, cert))
        found.sort(key=lambda item: item[0], reverse=True)
        return [learned for _order, learned in found]

    def in_index(self, index: str, record_ids: Iterable[str]) -> set[str]:
        """Which of ``record_ids`` are in ``index``."""
        db = self._index_db(index)
        with self._env.reading(f"reading index {index}") as txn:
            return {
                record_id
                for record_id in record_ids
                if (key := _id_key(record_id)) is not None and txn.get(key, db=db) is not None
            }

    def index_members(self, index: str) -> Iterator[str]:
        """Ids in ``index``, in key order; later chunks may see newer commits."""
        return self._keys(self._index_db(index), f"reading index {index}")

    def record_ids(self) -> Iterator[str]:
        """Every record id, in key order; later chunks may see newer commits."""
        self._check_open()
        return self._keys(self._env.dbs["records"], "listing records")

    def state(self) -> str:
        self._check_open()
        with self._env.reading("reading the state") as txn:
            return str(_read_counter(txn, self._env, b"state"))

    def changes_since(self, state: str, max_changes: int | None = None) -> Changes:
        """Email/changes from ``state``: ids de-duplicated, creation wins over
        update; with ``max_changes`` the new state is an intermediate one."""
        self._check_open()
        since = _parse_state(state)
        if max_changes is not None and max_changes < 1:
            raise ValueError(f"max_changes must be positive, got {max_changes}")
        with self._env.reading("reading the change log") as txn:
            current = _read_counter(txn, self._env, b"state")
            oldest = _read_counter(txn, self._env, b"min_state")
            if since > current:
                raise CannotCalculateChanges(f"state {state} is newer than the store ({current})")
            if since < oldest:
                raise CannotCalculateChanges(
                    f"state {state} is older than the change log (oldest {oldest})"
                )
            cursor = txn.cursor(db=self._env.dbs["changes"])
            return _collect_changes(cursor, since, current, max_changes)

    def stats(self) -> dict[str, Any]:
        """Sizes for monitoring: entries per sub-database, map and used bytes."""
        self._check_open()
        dbs = self._env.dbs
        with self._env.reading("reading statistics") as txn:
            info = self._env.env.info()
            counts = {name: txn.stat(dbs[name])["entries"] for name in ("certs", "changes")}
            return {
                "path": self._env.path,
                "entries": txn.stat(dbs["records"])["entries"],
                **counts,
                "state": _read_counter(txn, self._env, b"state"),
                "min_state": _read_counter(txn, self._env, b"min_state"),
                "map_size": info["map_size"],
                "used_bytes": (info["last_pgno"] + 1) * self._env.env.stat()["psize"],
                "last_txnid": info["last_txnid"],
                "commits": self._env.writer.commits if self._env.writer else 0,
            }

    def close(self) -> None:
        """Closes this handle; the last one drains the writer and closes LMDB."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _REGISTRY_LOCK:
            env = self._env
            env.handles -= 1
            if env.handles:
                return
            del _REGISTRY[env.path]
            env.shutdown()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("closed", f"{self._env.path}: store is closed")

    def _index_db(self, index: str) -> Any:
        self._check_open()
        if index not in INDEXES:
            raise ValueError(f"unknown index {index!r}; known: {', '.join(INDEXES)}")
        return self._env.dbs[index]

    def _keys(self, db: Any, what: str) -> Iterator[str]:
        return (key.decode("ascii") for key in self._keys_raw(db, what))

    def _keys_raw(self, db: Any, what: str) -> Iterator[bytes]:
        after: bytes | None = None
        while True:
            with self._env.reading(what) as txn:
                chunk = _key_chunk(txn.cursor(db=db), after)
            yield from chunk
            if len(chunk) < _CHUNK:
                return
            after = chunk[-1]

    def _blob_loader(self, txn: lmdb.Transaction, name: str) -> Callable[[str], bytes]:
        """Loads DER from ``certs`` or ``crls`` by digest, once per digest."""
        db = self._env.dbs[name]
        path = self._env.path
        cache: dict[str, bytes] = {}

        def load(digest: str) -> bytes:
            der = cache.get(digest)
            if der is None:
                der = txn.get(digest.encode("ascii"), db=db)
                if der is None:
                    raise StoreError("corrupt", f"{path}: {name} entry {digest} is missing")
                cache[digest] = der
            return der

        return load

    def _learned_value(
        self, key: bytes, value: bytes, cert: Callable[[str], bytes]
    ) -> tuple[tuple[str, str], LearnedCertificate]:
        try:
            doc = _decode_json(value.decode("utf-8"))
            learned = LearnedCertificate(
                certificate=cert(key[key.rindex(b"\0") + 1 :].decode("ascii")),
                received_at=datetime.fromisoformat(doc["receivedAt"]),
                record_id=doc["recordId"],
                capabilities=tuple(doc["capabilities"]),
                chain=tuple(map(cert, doc["chain"])),
            )
            return (doc["receivedAt"], doc["recordId"]), learned
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                "corrupt", f"{self._env.path}: learned entry {key!r} is unreadable ({exc!r})"
            ) from exc

    def _decode(
        self,
        record_id: str,
        raw: bytes,
        cert: Callable[[str], bytes],
        crl: Callable[[str], bytes],
    ) -> Record:
        try:
            return _record_value(json.loads(raw), cert, crl)
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                "corrupt", f"{self._env.path}: record {record_id} is unreadable ({exc!r})"
            ) from exc

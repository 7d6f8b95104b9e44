"""The on-disk contract: the JSON form of records and the keys they are stored under.

``docs/store-schema.rst`` specifies this for readers written in other
languages; everything that decides which bytes land in LMDB is here, pure
functions over :mod:`.records` values, so the contract can be read (and
changed, together with ``SCHEMA_VERSION``) in one place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from smime_milter.model import ReleaseDecision, SignerResult, Status, is_record_id
from smime_milter.store.records import Record, Resubmitted, StatusView, utc

__all__ = [
    "INDEXES",
    "MAX_LEARNED_PER_ADDRESS",
    "CertRefs",
    "LearnedEntry",
    "decode_json",
    "due_key",
    "id_key",
    "index_flags",
    "json_bytes",
    "learned_entries",
    "learned_order",
    "learned_prefix",
    "record_json",
    "record_value",
    "resubmission_json",
    "resubmission_value",
    "status_entry",
    "status_json",
    "texts_or_none",
    "utc_date",
    "view_value",
    "with_change_state",
]

#: The index sub-databases: record ids as keys, empty values.
INDEXES = ("has_smime", "has_verified_smime", "has_verified_smime_at_delivery")
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
_VERIFIED = frozenset(status.value for status in Status if status.is_verified)


# --------------------------------------------------------------------------- JSON form


def utc_date(moment: datetime | None) -> str | None:
    """RFC 8620 UTCDate without fractional seconds: ``2020-07-07T14:15:18Z``."""
    if moment is None:
        return None
    return utc(moment).replace(tzinfo=None).isoformat() + "Z"


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


def texts_or_none(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else _texts(values)


def status_json(status: Status | None) -> str | None:
    return None if status is None else Status(status).value


def _status_value(token: str | None) -> Status | None:
    return None if token is None else Status(token)


def _tuple_or_none(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


decode_json = json.JSONDecoder().decode


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def with_change_state(body: bytes, state: int) -> bytes:
    """Prepends ``changeState`` to an encoded object, so the caller's thread
    can encode the record and the writer only adds the state it assigns."""
    return b'{"changeState":%d,%s' % (state, body[1:])


class CertRefs:
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


def _signer_json(signer: SignerResult, certs: CertRefs) -> dict[str, Any]:
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


def resubmission_json(entry: Resubmitted) -> dict[str, Any]:
    return {"by": _text(entry.by), "at": utc_date(entry.at),
            "queueId": _text_or_none(entry.queue_id)}


def resubmission_value(doc: dict[str, Any]) -> Resubmitted:
    return Resubmitted(by=doc["by"], at=datetime.fromisoformat(doc["at"]),
                       queue_id=doc["queueId"])


def record_json(record: Record, certs: CertRefs, crls: CertRefs) -> dict[str, Any]:
    """Every field but ``changeState``, which the writer assigns."""
    return {
        "id": record.record_id,
        "receivedAt": utc_date(record.received_at),
        "envelopeSender": _text(record.envelope_sender),
        "envelopeRecipients": _texts(record.envelope_recipients),
        "messageId": _text_or_none(record.message_id),
        "fromAddress": _text_or_none(record.from_address),
        "queueId": _text_or_none(record.queue_id),
        "smimeStatusAtDelivery": status_json(record.status_at_delivery),
        "smimeErrorsAtDelivery": texts_or_none(record.errors_at_delivery),
        "smimeStatus": status_json(record.status),
        "smimeErrors": texts_or_none(record.errors),
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
        **({"resubmissions": [resubmission_json(entry) for entry in record.resubmissions]}
           if record.resubmissions else {}),
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


def record_value(
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
        resubmissions=tuple(map(resubmission_value, doc.get("resubmissions", ()))),
    )


def status_entry(doc: dict[str, Any]) -> bytes:
    """The ``status`` sub-database value of a record document."""
    view = {name: doc[name] for name in _STATUS_MEMBERS}
    view["revalidatable"] = due_key(doc) is not None
    return json_bytes(view)


def view_value(record_id: str, doc: dict[str, Any]) -> StatusView:
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


def due_key(doc: dict[str, Any]) -> bytes | None:
    """The ``verify_due`` key of a record: its smimeVerifiedAt as 8-byte
    big-endian seconds, then its id; None when it cannot be re-validated."""
    verified_at = doc["smimeVerifiedAt"]
    if verified_at is None or not any(s["certificate"] for s in doc["signers"]):
        return None
    seconds = int(datetime.fromisoformat(verified_at).timestamp())
    record_id: str = doc["id"]
    return seconds.to_bytes(8, "big") + record_id.encode("ascii")


def index_flags(doc: dict[str, Any]) -> dict[str, bool]:
    """Index membership of a record; RFC 9219 §4.2 bases hasSmime on smimeStatus."""
    return {
        "has_smime": doc["smimeStatus"] is not None,
        "has_verified_smime": doc["smimeStatus"] in _VERIFIED,
        "has_verified_smime_at_delivery": doc["smimeStatusAtDelivery"] in _VERIFIED,
    }


def learned_prefix(address: str) -> bytes | None:
    """The ``learned`` key prefix of an address (lowercased UTF-8, then NUL),
    or None when no entry can exist for it."""
    if not isinstance(address, str) or "\0" in address:
        return None
    prefix = _text(address).lower().encode("utf-8") + b"\0"
    return prefix if len(prefix) + 64 <= _MAX_KEY else None


#: A ``learned`` entry ready to write: prefix, key, its (receivedAt, recordId), value.
LearnedEntry = tuple[bytes, bytes, tuple[str, str], bytes]


def learned_entries(record: Record, doc: dict[str, Any]) -> list[LearnedEntry]:
    """The ``learned`` entries ``record`` makes: one per signer certificate
    that proved From when the message was delivered (signature, chain and
    From binding all held). Built from the record's JSON form ``doc``, whose
    certificate digests and dates are already computed: this runs for most
    messages, on the caller's thread."""
    if doc["smimeStatusAtDelivery"] not in _VERIFIED or doc["fromAddress"] is None:
        return []
    prefix = learned_prefix(doc["fromAddress"])
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
                head, json_bytes(capabilities) if capabilities else b"[]", chain.encode("ascii"))
    return [(prefix, key, order, value) for key, value in entries.items()]


def learned_order(value: bytes) -> tuple[str, str]:
    """Newer sorts higher: received time, then record id for a stable order."""
    doc = decode_json(value.decode("utf-8"))
    return doc["receivedAt"], doc["recordId"]


def id_key(record_id: str) -> bytes | None:
    """The LMDB key of an id, or None when no record can have it."""
    return record_id.encode("ascii") if is_record_id(record_id) else None

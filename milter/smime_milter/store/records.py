"""The values the store hands out and takes in, and the errors it raises.

They are plain immutable data with no knowledge of LMDB or of the JSON form
(:mod:`.codec`), so every other module of the package can share them and
callers can build and compare them without opening a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from smime_milter.errors import SmimeMilterError
from smime_milter.model import ReleaseDecision, SignerResult, Status, Verdict, is_record_id

__all__ = [
    "CannotCalculateChanges",
    "Changes",
    "LearnedCertificate",
    "Record",
    "Resubmitted",
    "StatusView",
    "StoreError",
    "TrustEpoch",
    "utc",
]


class StoreError(SmimeMilterError):
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


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Resubmitted:
    """One ``smime-milter release`` of a held message: kept so that a second
    release is refused instead of delivering the message twice."""

    #: Who ran the release (login name).
    by: str
    #: When it was recorded (before the message was handed to the MTA).
    at: datetime
    #: The MTA's queue id of the resubmission, when the MTA told it.
    queue_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", utc(self.at))


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
    #: Releases of a held message (``smime-milter release``), oldest first.
    resubmissions: tuple[Resubmitted, ...] = ()

    @property
    def revalidatable(self) -> bool:
        """Whether the current status can be recomputed from what is stored:
        there is a signer certificate whose chain can be validated again."""
        return self.verified_at is not None and any(s.certificate for s in self.signers)

    def __post_init__(self) -> None:
        if not is_record_id(self.record_id):
            raise ValueError(f"not a valid record id: {self.record_id!r}")
        object.__setattr__(self, "received_at", utc(self.received_at))
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


def utc(moment: datetime) -> datetime:
    if isinstance(moment, datetime) and moment.tzinfo is UTC and not moment.microsecond:
        return moment  # already normalised: every read and most writes
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=0)


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def _normalized_signer(signer: SignerResult) -> SignerResult:
    countersignatures = tuple(map(_normalized_signer, signer.countersignatures))
    if signer.signing_time is None and all(
        a is b for a, b in zip(countersignatures, signer.countersignatures, strict=True)
    ):
        return signer
    signing_time = None if signer.signing_time is None else utc(signer.signing_time)
    return replace(signer, signing_time=signing_time, countersignatures=countersignatures)

"""Values that cross module boundaries: record ids, the RFC 9219 status model
and verdicts.

Everything here is immutable so a verdict can be cached, shared between
threads and stored without anyone changing it behind the caller's back.
"""

from __future__ import annotations

import base64
import enum
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime

# --------------------------------------------------------------------------- record ids
#
# One rule, two strengths: the store keys records by any RFC 8620 Id, and
# the milter issues ids of one narrower form, the only form trusted when an
# id comes from a message (a delivery stamp, a held copy).

#: RFC 8620 §1.2 Id: 1-255 octets of the URL- and filename-safe base64
#: alphabet. Any such string can name a record in the store.
RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
#: What :func:`new_record_id` issues: "r" and 25 lower-case base32 characters.
ISSUED_RECORD_ID = re.compile(r"r[a-z2-7]{25}")


def new_record_id() -> str:
    """A fresh opaque record id: ``r`` and 25 base32 characters (125 random bits).

    Random rather than derived from the message so ids leak nothing and never
    collide for resent messages; the letter prefix keeps it a valid JMAP Id
    that neither starts with a dash nor is all digits.
    """
    text = base64.b32encode(secrets.token_bytes(16)).decode("ascii").lower()
    return "r" + text[:25]


def is_record_id(value: object) -> bool:
    """Whether ``value`` can name a record in the store (a JMAP Id)."""
    return isinstance(value, str) and RECORD_ID.fullmatch(value) is not None


def is_issued_record_id(text: str) -> bool:
    """Whether ``text`` has the form :func:`new_record_id` issues."""
    return ISSUED_RECORD_ID.fullmatch(text) is not None


class Status(enum.StrEnum):
    """RFC 9219 ``smimeStatus`` tokens (``None`` stands for JSON null)."""

    UNKNOWN = "unknown"
    SIGNED = "signed"
    SIGNED_VERIFIED = "signed/verified"
    SIGNED_FAILED = "signed/failed"
    ENCRYPTED_SIGNED_VERIFIED = "encrypted+signed/verified"
    ENCRYPTED_SIGNED_FAILED = "encrypted+signed/failed"

    @property
    def is_verified(self) -> bool:
        """Counts for ``hasVerifiedSmime`` (RFC 9219 §4.1.1 treats the
        encrypted variant like ``signed/verified``)."""
        return self in (Status.SIGNED_VERIFIED, Status.ENCRYPTED_SIGNED_VERIFIED)

    @property
    def is_failed(self) -> bool:
        return self in (Status.SIGNED_FAILED, Status.ENCRYPTED_SIGNED_FAILED)


class RevocationMode(enum.StrEnum):
    """How missing revocation information is treated.

    ``soft``: a certificate proven revoked fails; no CRL for it is fine.
    ``hard``: every non-root certificate needs a current CRL.
    """

    OFF = "off"
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True, slots=True)
class ChainResult:
    """Outcome of validating one signer certificate at one moment."""

    ok: bool
    errors: tuple[str, ...] = ()
    #: DER of the validated path, end entity first, trust anchor last.
    path: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class SignerResult:
    """Everything known about one SignerInfo of the examined layer."""

    emails: tuple[str, ...]
    subject: str
    issuer: str
    serial: int | None
    digest_algorithm: str
    signature_algorithm: str
    signature_ok: bool
    chain_ok: bool
    from_match: bool
    errors: tuple[str, ...]
    signing_time: datetime | None = None
    #: DER of the signer certificate (None when it was not found).
    certificate: bytes | None = None
    #: DER of the validated path, end entity first (empty when it failed).
    path: tuple[bytes, ...] = ()
    #: The trailing entries of ``errors`` that came from path validation, so
    #: the chain can be re-validated at another moment without the message.
    chain_errors: tuple[str, ...] = ()
    #: Countersignatures on this SignerInfo (RFC 5652 §11.4), each checked over
    #: this signer's signature value and validated like a signer, but not bound
    #: to From (``from_match`` is False): MMHS authorizing users sign this way.
    countersignatures: tuple[SignerResult, ...] = ()
    #: Dotted OIDs of the signer's SMIMECapabilities signed attribute (RFC 8551
    #: §2.5.2), in the signer's order of preference: what its holder can
    #: decrypt, which server-side encryption to it honours. Empty when absent
    #: or malformed, and always for countersignatures.
    capabilities: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.signature_ok and self.chain_ok and self.from_match and not self.errors

    @property
    def proven(self) -> bool:
        """The signature holds and the certificate validated: the holder of
        ``emails`` signed, whatever the From field says."""
        return self.signature_ok and self.chain_ok

    def with_chain(self, chain: ChainResult) -> SignerResult:
        """This signer with its path validation replaced by ``chain`` (the
        signature and From binding are facts of the message and stay)."""
        kept = self.errors[: len(self.errors) - len(self.chain_errors)]
        return replace(
            self,
            chain_ok=chain.ok,
            errors=(*kept, *chain.errors),
            path=chain.path,
            chain_errors=chain.errors,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The RFC 9219 answer for one message at one moment.

    ``errors`` is None unless the status is a failed one, as RFC 9219 §4.1
    requires for ``smimeErrors``.
    """

    status: Status | None
    errors: tuple[str, ...] | None
    verified_at: datetime | None
    signers: tuple[SignerResult, ...] = ()
    #: What the outermost S/MIME layer was ("multipart/signed", "signed-data", ...).
    layer: str | None = None
    #: IMAP-style part number of the signed entity (RFC 7281 ``body.smime-part``).
    signed_part: str | None = None
    #: The From address the signers were compared against.
    from_address: str | None = None
    #: Notes that are not errors (e.g. why a layer was left unexamined).
    notes: tuple[str, ...] = field(default=())
    #: DER of every certificate the SignedData carried, so the chain can be
    #: re-validated later without the message.
    certificates: tuple[bytes, ...] = field(default=())
    #: DER of the CRLs the SignedData carried (used again on re-validation).
    crls: tuple[bytes, ...] = field(default=())
    #: Errors about the message rather than a signer (From missing, a
    #: signature covering only part of the message...): while there are any,
    #: no re-validation of the signers can make the message verified.
    message_errors: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ReleaseDecision:
    """The outcome for one message under one rule. Released means: exactly one
    well-formed MMHS-Authorizing-Users field, every user in it proven and an
    authorized releaser, at least ``required`` of them, and the originator's
    own signature (if any) still valid."""

    rule: str
    released: bool
    required: int
    #: Listed users whose authorization was proven and counted, in header order.
    authorized: tuple[str, ...]
    #: Why it is not released (empty when released), then notes on proofs that
    #: did not count.
    reasons: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line for logs, replies and the stamp."""
        counted = f"{len(self.authorized)} of {self.required} authorizations"
        if self.released:
            return f"released by {', '.join(self.authorized)} ({counted})"
        return f"not released ({counted}): {'; '.join(self.reasons) or 'no proof'}"

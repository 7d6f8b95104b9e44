"""The RFC 9219 status of a signed layer, from its signers and message errors.

One function decides, so the engine at delivery and the re-validation of a
stored record later (``revalidate``) cannot drift apart: the same signer
results give the same status and the same error lines, and an unchanged
re-validation is never reported as an Email/changes update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smime_milter.model import SignerResult, Status

#: The error line when a failed layer has no more specific reason.
NOT_VERIFIED = "signature not verified"


@dataclass(frozen=True, slots=True)
class SignedStatus:
    status: Status
    #: ``smimeErrors``: None exactly when the status is a verified one.
    errors: tuple[str, ...] | None
    #: Signer problems that did not prevent verification (another signer held).
    notes: tuple[str, ...] = ()


def signer_label(signer: SignerResult, number: int) -> str:
    return (signer.emails[0] if signer.emails else signer.subject) or f"#{number}"


def signed_status(
    signers: Sequence[SignerResult], message_errors: Sequence[str], *, encrypted: bool
) -> SignedStatus:
    """Verified when there is no message-level error and at least one signer
    is fully good (signature, chain, From binding); the other signers'
    problems are then notes rather than errors."""
    verified = not message_errors and any(signer.ok for signer in signers)
    lines: list[str] = []
    several = len(signers) > 1
    for number, signer in enumerate(signers, start=1):
        for error in signer.errors:
            lines.append(f"signer {signer_label(signer, number)}: {error}" if several else error)
    if verified:
        status = Status.ENCRYPTED_SIGNED_VERIFIED if encrypted else Status.SIGNED_VERIFIED
        return SignedStatus(status, None, tuple(lines))
    status = Status.ENCRYPTED_SIGNED_FAILED if encrypted else Status.SIGNED_FAILED
    errors = tuple(dict.fromkeys((*message_errors, *lines)))
    return SignedStatus(status, errors or (NOT_VERIFIED,))

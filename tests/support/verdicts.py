"""Helpers for the engine tests: a fixed clock, verifier factories, raw MIME surgery.

Everything is relative to :data:`NOW`, so the engine tests never depend on the wall
clock: the PKI is minted around it, SignerInfos carry it as signing-time and every
``verify`` gets it as ``at``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from asn1crypto import x509 as asn1_x509

from smime_milter.cms.envelope import DecryptionKey
from smime_milter.model import Status, Verdict
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier, VerifyPolicy

from .pki import Identity, TestPki
from .smime import CRLF, text_entity, wrap_message

#: The one moment every engine test lives at.
NOW = datetime(2026, 6, 1, tzinfo=UTC)

#: A plain body with more than one line, so line-ending handling matters.
BODY = "Hello Bob,\nthis message is signed.\n-- \nAlice\n"


def entity(text: str = BODY) -> bytes:
    return text_entity(text)


def anchor(identity: Identity) -> asn1_x509.Certificate:
    """The asn1crypto form TrustStore takes."""
    return asn1_x509.Certificate.load(identity.cert_der)


def make_verifier(
    pki: TestPki,
    policy: VerifyPolicy | None = None,
    keys: Sequence[DecryptionKey] = (),
    *,
    crls: Sequence[bytes] = (),
    intermediates: Sequence[Identity] = (),
    clock: datetime = NOW,
) -> Verifier:
    """A Verifier trusting only ``pki.root`` whose clock is frozen at ``clock``."""
    trust = TrustStore(
        anchors=(anchor(pki.root),),
        intermediates=tuple(anchor(i) for i in intermediates),
        crls=tuple(crls),
    )
    return Verifier(trust, policy or VerifyPolicy(), keys, clock=lambda: clock)


def errors_text(verdict: Verdict) -> str:
    return " | ".join(verdict.errors or ())


def assert_failed(
    verdict: Verdict, *fragments: str, status: Status = Status.SIGNED_FAILED
) -> None:
    """``status`` with a non-empty smimeErrors naming every fragment (case-insensitive)."""
    assert verdict.status is status, (verdict.status, verdict.errors, verdict.notes)
    assert verdict.errors, "a failed status needs smimeErrors"
    text = errors_text(verdict).lower()
    for fragment in fragments:
        assert fragment.lower() in text, f"{fragment!r} not in {verdict.errors}"


def assert_verified(
    verdict: Verdict, email: str, *, status: Status = Status.SIGNED_VERIFIED
) -> None:
    """``status`` with no smimeErrors and a signer bound to ``email`` that passed."""
    assert verdict.status is status, (verdict.status, verdict.errors, verdict.notes)
    assert verdict.errors is None
    good = [s for s in verdict.signers if s.ok]
    assert good, verdict.signers
    assert any(email in s.emails for s in good), [s.emails for s in good]
    assert all(s.signature_ok and s.chain_ok and s.from_match for s in good)


# --------------------------------------------------------------------------- raw MIME


def b64_lines(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"".join(text[i : i + 76] + CRLF for i in range(0, len(text), 76))


def multipart(mime_type: str, parts: Sequence[bytes], boundary: str = "b0undary",
              params: str = "") -> bytes:
    """A multipart entity from raw body parts (each kept byte for byte)."""
    head = f'Content-Type: {mime_type};{params} boundary="{boundary}"\r\n\r\n'.encode()
    body = b"".join(f"--{boundary}\r\n".encode() + part + CRLF for part in parts)
    return head + body + f"--{boundary}--\r\n".encode()


def signature_part(body: bytes, content_type: str = "application/pkcs7-signature",
                   encoding: str = "base64") -> bytes:
    return (
        f"Content-Type: {content_type}; name=smime.p7s\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body


def detached_message(inner: bytes, signature_body: bytes, *, from_addr: str = "alice@example.com",
                     extra_parts: Sequence[bytes] = (), params: str | None = None) -> bytes:
    """multipart/signed around ``inner`` with a hand-made signature part."""
    if params is None:
        params = ' protocol="application/pkcs7-signature"; micalg=sha-256;'
    parts = [inner, signature_part(signature_body), *extra_parts]
    return wrap_message(multipart("multipart/signed", parts, params=params), from_addr=from_addr)


def drop_header(message: bytes, name: str) -> bytes:
    """Remove the top-level header field ``name`` (unfolded fields only)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    prefix = name.lower().encode() + b":"
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(prefix)]
    return b"\r\n".join(lines) + sep + body

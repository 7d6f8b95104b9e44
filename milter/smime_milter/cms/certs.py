"""Facts about one certificate, parsed once per distinct DER encoding.

Mail from one signer carries the same certificate again and again; parsing
it with asn1crypto and loading its key dominate the cost of a warm
verification, so both are memoised by the exact DER bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from asn1crypto import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key


@dataclass(frozen=True, slots=True, eq=False)
class CertInfo:
    """A parsed certificate with the derived values the verifier needs."""

    der: bytes
    cert: x509.Certificate
    sha256: bytes
    serial: int
    issuer_der: bytes
    key_identifier: bytes | None
    subject: str
    issuer: str
    #: RFC 8550 §3 signer addresses: rfc822Name SANs, else subject emailAddress.
    emails: tuple[str, ...]
    #: cryptography public key, or None with ``key_error`` set.
    public_key: Any
    key_error: str | None


def _human(name: x509.Name) -> str:
    try:
        text: str = name.human_friendly
        return text
    except (ValueError, TypeError):
        return "unprintable name"


def signer_emails(cert: x509.Certificate) -> tuple[str, ...]:
    """RFC 8550 §3: rfc822Name SANs, else emailAddress in the subject DN."""
    emails: list[str] = []
    try:
        san = cert.subject_alt_name_value
    except (ValueError, TypeError):
        san = None
    if san is not None:
        for general_name in san:
            if general_name.name == "rfc822_name":
                emails.append(str(general_name.native))
    if emails:
        return tuple(emails)
    try:
        for rdn in cert.subject.chosen:
            for attribute in rdn:
                if attribute["type"].native == "email_address":
                    emails.append(str(attribute["value"].native))
    except (ValueError, TypeError):
        pass
    return tuple(emails)


@lru_cache(maxsize=8192)
def cert_info(der: bytes) -> CertInfo:
    """Parse ``der`` (raises ValueError when it is not a certificate)."""
    cert = x509.Certificate.load(der)
    tbs = cert["tbs_certificate"]
    serial = tbs["serial_number"].native
    issuer_der = tbs["issuer"].dump()
    try:
        public_key = load_der_public_key(tbs["subject_public_key_info"].dump())
        key_error = None
    except (ValueError, UnsupportedAlgorithm) as exc:
        public_key, key_error = None, f"signer public key unusable: {exc}"
    try:
        key_identifier = cert.key_identifier
    except (ValueError, TypeError):
        key_identifier = None
    return CertInfo(
        der=der,
        cert=cert,
        sha256=cert.sha256,
        serial=serial,
        issuer_der=issuer_der,
        key_identifier=key_identifier,
        subject=_human(cert.subject),
        issuer=_human(cert.issuer),
        emails=signer_emails(cert),
        public_key=public_key,
        key_error=key_error,
    )


def cert_info_of(cert: x509.Certificate) -> CertInfo:
    return cert_info(cert.dump())

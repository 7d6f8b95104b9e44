"""Read certificates and private keys from PEM, DER or PKCS#12 files, with
errors that name the file.

One place knows the file formats: which PEM blocks a file holds, when a key is
encrypted, how PKCS#12 is opened, whether a key belongs to a certificate. What
a caller accepts (key types, how many keys, which certificate) and how it words
a refusal stay with the caller: every failure here is a :class:`KeyFileError`
carrying the file, the kind of problem and the library's words, so a caller can
re-word it (:meth:`KeyFileError.worded`) or pass its text on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from smime_milter.errors import SmimeMilterError

__all__ = [
    "BAD_CERTIFICATE",
    "BAD_KEY",
    "ENCRYPTED",
    "NOT_PKCS12",
    "NO_CERTIFICATE",
    "NO_KEY",
    "UNREADABLE",
    "KeyFileError",
    "PemBlock",
    "certificate_der",
    "der_blobs",
    "key_matches",
    "parse_certificates",
    "parse_pkcs12",
    "parse_private_key",
    "pem_blocks",
    "private_key_blocks",
    "public_key_der",
    "read",
]

# The kinds of problem a KeyFileError reports (its ``problem``).
UNREADABLE = "unreadable"
ENCRYPTED = "encrypted"
BAD_KEY = "bad key"
NO_KEY = "no key"
BAD_CERTIFICATE = "bad certificate"
NO_CERTIFICATE = "no certificate"
NOT_PKCS12 = "not pkcs12"

#: The wording a KeyFileError has unless its caller re-words it.
_WORDING = {
    UNREADABLE: "cannot read {what} file {path}: {detail}",
    ENCRYPTED: "{what} file {path} is encrypted; an unencrypted key is needed",
    BAD_KEY: "{what} file {path} holds no usable private key",
    NO_KEY: "{what} file {path} holds no private key",
    BAD_CERTIFICATE: "{what} file {path} holds no usable certificate",
    NO_CERTIFICATE: "{what} file {path} holds no usable certificate",
    NOT_PKCS12: "{what} file {path} is not PKCS#12 or the password does not open it ({detail})",
}


class KeyFileError(SmimeMilterError, ValueError):
    """A certificate or key file cannot be used. ``problem`` is one of this
    module's problem constants, ``what`` the file's role ("key",
    "certificate", ...) and ``detail`` the underlying library's words.
    Also a ValueError, as it was before the root existed."""

    def __init__(self, path: Path, problem: str, *, what: str, detail: str = "") -> None:
        self.path = path
        self.problem = problem
        self.what = what
        self.detail = detail
        super().__init__(self.worded(_WORDING))

    def worded(self, wording: Mapping[str, str]) -> str:
        """The message in a caller's own ``wording`` (problem -> template with
        ``{path}``, ``{what}`` and ``{detail}``); this module's for the rest."""
        template = wording.get(self.problem, _WORDING[self.problem])
        return template.format(path=self.path, what=self.what, detail=self.detail)


@dataclass(frozen=True, slots=True)
class PemBlock:
    """One ``-----BEGIN label-----`` block: its label, RFC 1421 headers and DER."""

    label: str
    headers: Mapping[str, str]
    der: bytes

    @property
    def is_private_key(self) -> bool:
        return self.label.endswith("PRIVATE KEY")

    @property
    def is_encrypted(self) -> bool:
        """PKCS#8 ``ENCRYPTED PRIVATE KEY`` or a traditional key with a
        ``Proc-Type: 4,ENCRYPTED`` header."""
        return self.label.startswith("ENCRYPTED") or "ENCRYPTED" in self.headers.get(
            "Proc-Type", ""
        )


def read(path: Path, what: str) -> bytes:
    """The bytes of ``path``; KeyFileError(UNREADABLE) if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(path, UNREADABLE, what=what, detail=str(exc.strerror or exc)) from exc


def pem_blocks(data: bytes) -> list[PemBlock]:
    """Every PEM block in ``data``, in file order; [] when ``data`` is not PEM.
    Raises ValueError when it looks like PEM but the armour is broken."""
    if not pem.detect(data):
        return []
    return [
        PemBlock(label, headers, der)
        for label, headers, der in pem.unarmor(data, multiple=True)
    ]


def der_blobs(data: bytes) -> list[bytes]:
    """The DER of every PEM block, or ``data`` itself when it is not PEM
    (nothing for an empty file). Raises ValueError on broken PEM armour."""
    if pem.detect(data):
        return [block.der for block in pem_blocks(data)]
    return [data] if data else []


def private_key_blocks(data: bytes) -> list[PemBlock]:
    """The readable PEM private-key blocks (any of PKCS#8, encrypted PKCS#8,
    traditional RSA/EC/DSA) in ``data``."""
    try:
        return [block for block in pem_blocks(data) if block.is_private_key]
    except ValueError:
        return []


def parse_private_key(path: Path, data: bytes, what: str = "key") -> PrivateKeyTypes:
    """The unencrypted private key in ``data``: the first PEM private-key
    block, or a DER key (PKCS#8 or traditional). Raises KeyFileError:
    ENCRYPTED for a password-protected key, BAD_KEY for anything else."""
    is_pem = pem.detect(data)
    blocks = private_key_blocks(data) if is_pem else []
    if blocks and blocks[0].is_encrypted:
        raise KeyFileError(path, ENCRYPTED, what=what)
    try:
        if is_pem:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError as exc:  # cryptography's way of saying "needs a password"
        raise KeyFileError(path, ENCRYPTED, what=what, detail=str(exc)) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(path, BAD_KEY, what=what, detail=str(exc)) from exc


def parse_certificates(
    path: Path, data: bytes, what: str = "certificate"
) -> tuple[x509.Certificate, ...]:
    """Every certificate in ``data``: each PEM CERTIFICATE block (other blocks,
    a key say, are skipped), or one DER certificate. Raises KeyFileError:
    BAD_CERTIFICATE when one cannot be read, NO_CERTIFICATE when there is none."""
    try:
        if pem.detect(data):
            certificates = tuple(
                x509.load_der_x509_certificate(block.der)
                for block in pem_blocks(data)
                if block.label in ("CERTIFICATE", "X509 CERTIFICATE")
            )
        else:
            certificates = (x509.load_der_x509_certificate(data),)
    except ValueError as exc:
        raise KeyFileError(path, BAD_CERTIFICATE, what=what, detail=str(exc)) from exc
    if not certificates:
        raise KeyFileError(path, NO_CERTIFICATE, what=what)
    return certificates


def parse_pkcs12(
    path: Path, data: bytes, passwords: Sequence[bytes | None], what: str = "key"
) -> tuple[PrivateKeyTypes, tuple[x509.Certificate, ...]]:
    """The key of a PKCS#12 file and its certificates (the key's own first,
    when the file marks one), trying each of ``passwords`` in turn. Raises
    KeyFileError: NOT_PKCS12 when none opens it, NO_KEY when it holds no key."""
    failure: Exception | None = None
    for password in passwords:
        try:
            key, certificate, additional = pkcs12.load_key_and_certificates(data, password)
            break
        except (ValueError, TypeError) as exc:
            failure = exc
    else:
        raise KeyFileError(path, NOT_PKCS12, what=what, detail=str(failure))
    if key is None:
        raise KeyFileError(path, NO_KEY, what=what)
    return key, (*([certificate] if certificate is not None else []), *additional)


def certificate_der(cert: x509.Certificate) -> bytes:
    """DER of a certificate: what SignedData and RecipientInfos carry."""
    return cert.public_bytes(serialization.Encoding.DER)


def public_key_der(holder: PrivateKeyTypes | x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of a private key or of a certificate's key.
    A certificate whose key cannot be read raises ValueError or TypeError."""
    public = holder.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Is ``cert`` a certificate for ``key`` (same public key)? False also
    when the certificate's key cannot be read."""
    try:
        return public_key_der(cert) == public_key_der(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False

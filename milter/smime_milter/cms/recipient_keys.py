"""The recipient keys an administrator configures for decryption.

A key and the certificate that names it, with the RecipientInfo identifiers
(issuer and serial, subjectKeyIdentifier) precomputed so that matching a
message against many keys is cheap; loaded from the admin's files with
errors that name the file. :mod:`.envelope` decrypts with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from smime_milter.cms import files
from smime_milter.errors import SmimeMilterError

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class DecryptionKeyError(SmimeMilterError, ValueError):
    """A configured recipient key (or its certificate) cannot be loaded; the
    message names the file. Also a ValueError, the name load_decryption_key's
    callers caught before the root existed."""


@dataclass(frozen=True)
class DecryptionKey:
    """A configured recipient key and the certificate that names it.

    RecipientInfos identify the recipient by certificate (issuer and serial
    number, or subjectKeyIdentifier); those values are precomputed here so
    matching a message against many keys is cheap.
    """

    private_key: PrivateKey
    certificate: x509.Certificate
    issuer_der: bytes = field(init=False, repr=False, compare=False)
    serial_number: int = field(init=False, repr=False, compare=False)
    subject_key_identifier: bytes | None = field(init=False, repr=False, compare=False)
    _issuer_name: asn1_x509.Name = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"unsupported private key type {type(self.private_key).__name__}")
        if not files.key_matches(self.private_key, self.certificate):
            raise ValueError("the certificate does not belong to the private key")
        issuer_der = self.certificate.issuer.public_bytes()
        try:
            ski_ext = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            ski: bytes | None = ski_ext.value.digest
        except x509.ExtensionNotFound:
            ski = None
        object.__setattr__(self, "issuer_der", issuer_der)
        object.__setattr__(self, "serial_number", self.certificate.serial_number)
        object.__setattr__(self, "subject_key_identifier", ski)
        object.__setattr__(self, "_issuer_name", asn1_x509.Name.load(issuer_der))


#: How load_decryption_key words the problems :mod:`files` reports.
_WORDING = {
    files.UNREADABLE: "{path}: cannot read: {detail}",
    files.ENCRYPTED: "{path}: the private key is encrypted; an unencrypted key is needed",
    files.BAD_KEY: "{path}: cannot load the private key: {detail}",
    files.BAD_CERTIFICATE: "{path}: cannot load the certificate: {detail}",
    files.NO_CERTIFICATE: "{path}: no certificate found",
}


def load_decryption_key(path: Path, cert_path: Path | None = None) -> DecryptionKey:
    """Load a recipient key for :func:`decrypt` from the admin's configuration.

    ``path`` is a PEM file holding the unencrypted private key (PKCS#8 or
    traditional RSA/EC) and, unless ``cert_path`` is given, the certificate
    too. ``cert_path`` may be PEM or DER. When several certificates are
    present the one whose public key matches is used. Raises
    :class:`DecryptionKeyError` naming the offending file on any bad input
    (unreadable, no key, encrypted key, unsupported key type, no matching
    certificate).
    """
    path = Path(path)
    cert_file = path if cert_path is None else Path(cert_path)
    try:
        data = files.read(path, "key")
        key_blocks = files.private_key_blocks(data)
        if not key_blocks:
            raise DecryptionKeyError(f"{path}: no PEM private key found")
        if len(key_blocks) > 1:
            raise DecryptionKeyError(f"{path}: more than one private key")
        key = files.parse_private_key(path, data)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise DecryptionKeyError(f"{path}: unsupported private key type (RSA or EC needed)")
        cert_data = data if cert_path is None else files.read(cert_file, "certificate")
        certs = files.parse_certificates(cert_file, cert_data)
    except files.KeyFileError as exc:
        raise DecryptionKeyError(exc.worded(_WORDING)) from exc
    for cert in certs:
        if files.key_matches(key, cert):
            return DecryptionKey(key, cert)
    raise DecryptionKeyError(f"{cert_file}: no certificate matches the private key in {path}")

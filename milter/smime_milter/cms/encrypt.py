"""Build CMS EnvelopedData (RFC 5652 §6) for server-side S/MIME encryption.

The counterpart of ``envelope``, which decrypts. ``cryptography`` can only
envelope for RSA PKCS#1 v1.5 recipients, so, as on the decrypting side, the
structure is written with ``asn1crypto`` and only the primitives come from
``cryptography``.

Algorithms are fixed rather than negotiated, and chosen to be what deployed
clients read:

* content: AES-256-CBC in EnvelopedData (RFC 3565). AuthEnvelopedData with
  AES-GCM would be better cryptography, but too many clients still cannot
  open it;
* RSA recipients: key transport with PKCS#1 v1.5 (RFC 8551 §2.3 MUST), or
  RSAES-OAEP with SHA-256 (RFC 4055) when the recipient said it can decrypt it;
* EC recipients: ephemeral-static ECDH (RFC 5753 §3.1), the X9.63 KDF with a
  hash matched to the curve, and AES-256 key wrap (RFC 3394).

Every recipient is identified by issuerAndSerialNumber, the identifier every
client can look up, so the structure versions are the lowest RFC 5652 allows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from smime_milter.cms.envelope import ecc_cms_shared_info
from smime_milter.cms.files import certificate_der
from smime_milter.cms.signing import MIN_RSA_BITS, issuer_and_serial_number
from smime_milter.errors import SmimeMilterError

__all__ = ["EncryptionError", "EncryptionRecipient", "enveloped_data"]

_CEK_BYTES = 32  # AES-256
_IV_BYTES = 16  # the AES block

#: RFC 5753 §7.1.4 dhSinglePass-stdDH-sha*kdf-scheme per curve: the KDF hash
#: matches the curve's strength, as for ECDSA in ``signing``.
_KEY_AGREEMENT: dict[str, tuple[str, Callable[[], hashes.HashAlgorithm]]] = {
    "secp256r1": ("1.3.132.1.11.1", hashes.SHA256),
    "secp384r1": ("1.3.132.1.11.2", hashes.SHA384),
    "secp521r1": ("1.3.132.1.11.3", hashes.SHA512),
}

#: id-aes256-wrap with parameters absent (RFC 3565 §2.3.2). Its encoding is
#: both the KeyWrapAlgorithm parameter and ECC-CMS-SharedInfo.keyInfo, and
#: the two must be byte-identical for the recipient to derive the same KEK.
_KEY_WRAP_DER = cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"}).dump()

#: RSAES-OAEP-params with SHA-256 and MGF1(SHA-256), pSourceFunc left at its
#: DEFAULT (empty label). asn1crypto writes the hash identifiers with NULL
#: parameters, which is the form RFC 4055 §2.1 specifies for sha256Identifier.
_OAEP_ALGORITHM = cms.KeyEncryptionAlgorithm({
    "algorithm": "rsaes_oaep",
    "parameters": {
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
    },
})
_OAEP_PADDING = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


@dataclass(frozen=True, slots=True)
class EncryptionRecipient:
    """A certificate to encrypt for.

    ``oaep``: the recipient advertised RSAES-OAEP in its SMIMECapabilities, so
    its key is wrapped with OAEP instead of PKCS#1 v1.5. Ignored for EC keys.
    """

    certificate: x509.Certificate
    oaep: bool = False


class EncryptionError(SmimeMilterError, ValueError):
    """A recipient cannot be encrypted for; the text names its certificate."""


def enveloped_data(
    content: bytes,
    recipients: Sequence[EncryptionRecipient],
    *,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """DER ContentInfo(EnvelopedData) holding ``content`` for every recipient.

    ``random`` supplies the content-encryption key and the IV (tests pin it);
    the RSA padding and ephemeral EC keys always come from ``cryptography``.
    A certificate listed twice gets one RecipientInfo (the first entry's
    ``oaep`` wins). Raises :class:`EncryptionError` when there is no recipient
    or one of them has an unusable key, before anything is encrypted.
    """
    by_certificate: dict[bytes, EncryptionRecipient] = {}
    for recipient in recipients:
        by_certificate.setdefault(certificate_der(recipient.certificate), recipient)
    unique = list(by_certificate.values())
    if not unique:
        raise EncryptionError("no recipients to encrypt for")
    keys = [_public_key(recipient.certificate) for recipient in unique]

    cek = _draw(random, _CEK_BYTES)
    iv = _draw(random, _IV_BYTES)
    infos = [
        _key_trans(recipient, key, cek)
        if isinstance(key, rsa.RSAPublicKey)
        else _key_agree(recipient.certificate, key, cek)
        for recipient, key in zip(unique, keys, strict=True)
    ]
    # RFC 5652 §6.1: no originatorInfo, no unprotectedAttrs, no pwri/ori, so
    # 0 when every RecipientInfo is version 0 (ktri with issuerAndSerialNumber),
    # else 2 (kari is always version 3).
    version = "v0" if all(info.name == "ktri" for info in infos) else "v2"
    envelope = cms.EnvelopedData({
        "version": version,
        "recipient_infos": infos,  # a SET OF: asn1crypto sorts the encodings (DER)
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            "encrypted_content": _aes_cbc(cek, iv, content),
        },
    })
    encoded: bytes = cms.ContentInfo({"content_type": "enveloped_data", "content": envelope}).dump()
    return encoded


def _public_key(
    certificate: x509.Certificate,
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The recipient's key if this module can encrypt for it, else EncryptionError."""
    subject = certificate.subject.rfc4514_string() or f"serial {certificate.serial_number:x}"
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EncryptionError(f"recipient {subject}: unreadable public key") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise EncryptionError(
                f"recipient {subject}: RSA key of {key.key_size} bits is below "
                f"the minimum of {MIN_RSA_BITS}"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _KEY_AGREEMENT:
            raise EncryptionError(
                f"recipient {subject}: elliptic curve {key.curve.name} is not supported"
            )
        return key
    raise EncryptionError(
        f"recipient {subject}: {type(key).__name__.removeprefix('_')} keys cannot "
        "receive encrypted mail (RSA or NIST P-curve EC needed)"
    )


def _draw(random: Callable[[int], bytes], size: int) -> bytes:
    value = random(size)
    if len(value) != size:
        raise ValueError(f"random source returned {len(value)} bytes, not {size}")
    return value


def _aes_cbc(key: bytes, iv: bytes, content: bytes) -> bytes:
    padder = sym_padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _key_trans(
    recipient: EncryptionRecipient, key: rsa.RSAPublicKey, cek: bytes
) -> cms.RecipientInfo:
    """KeyTransRecipientInfo v0 (RFC 5652 §6.2.1); PKCS#1 v1.5 is rsaEncryption
    with NULL parameters (RFC 3370 §4.2.1), as asn1crypto forces it."""
    pad: padding.AsymmetricPadding
    if recipient.oaep:
        algorithm, pad = _OAEP_ALGORITHM, _OAEP_PADDING
    else:
        algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
        pad = padding.PKCS1v15()
    rid = cms.RecipientIdentifier(
        name="issuer_and_serial_number", value=issuer_and_serial_number(recipient.certificate)
    )
    return cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": rid,
        "key_encryption_algorithm": algorithm,
        "encrypted_key": key.encrypt(cek, pad),
    }))


def _key_agree(
    certificate: x509.Certificate, key: ec.EllipticCurvePublicKey, cek: bytes
) -> cms.RecipientInfo:
    """KeyAgreeRecipientInfo v3 with a fresh ephemeral key (RFC 5753 §3.1.1).

    No ukm: the ephemeral key already makes every KEK unique. The originator
    key's id-ecPublicKey parameters are absent, which RFC 5753 §3.1.1 prefers
    (the curve is the recipient's) and which is what OpenSSL writes.
    """
    scheme, kdf_hash = _KEY_AGREEMENT[key.curve.name]
    ephemeral = ec.generate_private_key(key.curve)
    kek = X963KDF(
        algorithm=kdf_hash(),
        length=_CEK_BYTES,
        sharedinfo=ecc_cms_shared_info(_KEY_WRAP_DER, None, _CEK_BYTES * 8),
    ).derive(ephemeral.exchange(ec.ECDH(), key))
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    originator = cms.OriginatorIdentifierOrKey(
        name="originator_key", value={"algorithm": {"algorithm": "ec"}, "public_key": point}
    )
    rid = cms.KeyAgreementRecipientIdentifier(
        name="issuer_and_serial_number", value=issuer_and_serial_number(certificate)
    )
    return cms.RecipientInfo(name="kari", value=cms.KeyAgreeRecipientInfo({
        "version": "v3",
        "originator": originator,
        "key_encryption_algorithm": {
            "algorithm": scheme,
            "parameters": core.Any.load(_KEY_WRAP_DER),
        },
        "recipient_encrypted_keys": [{"rid": rid, "encrypted_key": aes_key_wrap(kek, cek)}],
    }))

"""CMS SignerInfo and SignedData construction (RFC 5652 §5, §11.4).

The verifier side lives in ``cms``; this is its counterpart for producing
signatures: an authorizing user's countersignature today, server-side
signing later. Placing the SignedData into a message is the caller's
business (see ``authorize``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from smime_milter.cms import der, files
from smime_milter.cms.files import certificate_der, public_key_der
from smime_milter.cms.signed_data import (
    OID_COUNTERSIGNATURE,
    signature_octets,
    signed_attributes_der,
)
from smime_milter.errors import SmimeMilterError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

#: The verifier's default minimum (cms.AlgorithmPolicy): smaller keys would sign
#: messages our own milter rejects.
MIN_RSA_BITS = 2048
#: ECDSA hash per curve, matched to the curve's strength as RFC 5480 recommends.
_EC_DIGESTS = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
#: RFC 8551 §2.5.2: what the signer can decrypt, strongest first.
_CAPABILITIES = ("aes256_cbc", "aes192_cbc", "aes128_cbc")


class SigningError(SmimeMilterError, ValueError):
    """The signing key or certificate cannot be used; the text says which file and why."""


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    """A private key with its certificate and the CA certificates that chain it
    (issuer first, normally without the root): what goes into SignedData."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        problem = _key_problem(self.key, self.certificate)
        if problem is not None:
            raise SigningError(problem)

    @classmethod
    def load(cls, key: Path, cert: Path, chain: Path | None = None) -> SigningIdentity:
        """Read an unencrypted PEM/DER key, a PEM/DER certificate (further
        certificates in that file join the chain) and an optional PEM chain."""
        try:
            private_key = signing_key(files.parse_private_key(key, files.read(key, "key")), key)
            certificates = files.parse_certificates(cert, files.read(cert, "certificate"))
            chain_certs = (
                files.parse_certificates(chain, files.read(chain, "chain"), "chain")
                if chain is not None else ()
            )
        except files.KeyFileError as exc:
            raise SigningError(str(exc)) from exc
        leaf, extra = certificates[0], certificates[1:]
        problem = _key_problem(private_key, leaf)
        if problem is not None:
            raise SigningError(f"{problem} (key {key}, certificate {cert})")
        leaf_der = certificate_der(leaf)
        others = (*extra, *chain_certs)
        unique = {certificate_der(c): c for c in others if certificate_der(c) != leaf_der}
        return cls(private_key, leaf, tuple(unique.values()))

    @property
    def digest(self) -> str:
        """The hash this key signs with (asn1crypto name)."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return "sha512"  # RFC 8419 §3.1
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return _EC_DIGESTS[self.key.curve.name]
        return "sha256"

    @property
    def certificates_der(self) -> tuple[bytes, ...]:
        """The certificate and its chain, DER, for SignedData.certificates."""
        return tuple(certificate_der(c) for c in (self.certificate, *self.chain))


def signing_key(key: object, path: Path) -> PrivateKey:
    """``key`` (read from ``path``) if its type can sign S/MIME here."""
    if not isinstance(key, PrivateKey):
        raise SigningError(f"key file {path}: {type(key).__name__} keys cannot sign S/MIME here")
    return key


def _key_problem(key: PrivateKey, cert: x509.Certificate) -> str | None:
    """Why this key cannot sign for this certificate, or None."""
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        return f"RSA key of {key.key_size} bits is below the minimum of {MIN_RSA_BITS}"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _EC_DIGESTS:
        return f"elliptic curve {key.curve.name} is not supported for signing"
    if not isinstance(key, PrivateKey):
        return f"{type(key).__name__} keys are not supported for signing"
    mine = public_key_der(key)
    try:
        theirs = public_key_der(cert)
    except (ValueError, TypeError):
        return "the certificate's public key cannot be read"
    if mine != theirs:
        return "the private key does not match the certificate's public key"
    return None


# --- SignerInfo -------------------------------------------------------------------


def build_signer_info(
    identity: SigningIdentity,
    content: bytes,
    *,
    content_type: str | None,
    signing_time: datetime,
) -> asn1_cms.SignerInfo:
    """A SignerInfo (version 1, issuerAndSerialNumber) over ``content``.

    ``content_type`` (dotted OID or asn1crypto name) is the eContentType; None
    builds a countersignature, which RFC 5652 §11.4 forbids to carry a
    content-type attribute (and S/MIME capabilities mean nothing there).
    """
    digest = identity.digest
    attributes: list[asn1_cms.CMSAttribute] = []
    if content_type is not None:
        attributes.append(_attribute("content_type", content_type))
    attributes.append(_attribute("signing_time", _time(signing_time)))
    attributes.append(_attribute("message_digest", hashlib.new(digest, content).digest()))
    if content_type is not None:
        attributes.append(_attribute("smime_capabilities", _capabilities()))
    info = asn1_cms.SignerInfo({
        "version": "v1",
        "sid": _issuer_and_serial(identity.certificate),
        "digest_algorithm": _digest_algorithm(digest),
        "signed_attrs": asn1_cms.CMSAttributes(attributes),
        "signature_algorithm": _signature_algorithm(identity.key, digest),
        "signature": b"",
    })
    # RFC 5652 §5.4: the signature covers the attributes re-tagged as SET OF,
    # taken from the SignerInfo itself so signed and sent bytes cannot differ.
    info["signature"] = _sign(identity.key, signed_attributes_der(info), digest)
    return info


def countersignature(
    identity: SigningIdentity, parent: asn1_cms.SignerInfo, signing_time: datetime
) -> asn1_cms.SignerInfo:
    """RFC 5652 §11.4: a SignerInfo over the contents octets of ``parent``'s signature."""
    return build_signer_info(
        identity, signature_octets(parent), content_type=None, signing_time=signing_time
    )


def _digest_algorithm(name: str) -> algos.DigestAlgorithm:
    """Parameters absent (RFC 5754 §2 SHOULD); asn1crypto always adds NULL
    when building, so the parameter-less form is loaded from its encoding."""
    return algos.DigestAlgorithm.load(der.encode(0x30, algos.DigestAlgorithmId(name).dump()))


def _attribute(name: str, value: object) -> asn1_cms.CMSAttribute:
    return asn1_cms.CMSAttribute({"type": name, "values": [value]})


def _time(when: datetime) -> asn1_cms.Time:
    """RFC 5652 §11.3: UTCTime for 1950-2049, GeneralizedTime otherwise."""
    if when.tzinfo is None:
        raise ValueError("signing_time must be timezone-aware")
    when = when.astimezone(UTC).replace(microsecond=0)
    name = "utc_time" if 1950 <= when.year < 2050 else "generalized_time"
    return asn1_cms.Time(name=name, value=when)


def _capabilities() -> asn1_cms.SMIMECapabilites:
    return asn1_cms.SMIMECapabilites([{"capability_id": name} for name in _CAPABILITIES])


def issuer_and_serial_number(cert: x509.Certificate) -> asn1_cms.IssuerAndSerialNumber:
    """``cert``'s IssuerAndSerialNumber, the issuer copied as encoded in the
    certificate so that byte-comparing peers (signer or recipient lookup) match."""
    return asn1_cms.IssuerAndSerialNumber.load(_issuer_and_serial_der(certificate_der(cert)))


@lru_cache(maxsize=1024)
def _issuer_and_serial_der(cert_der: bytes) -> bytes:
    """Encoded once per certificate: building it through asn1crypto copies
    the whole issuer Name, which was most of the cost of a signature."""
    tbs = asn1_x509.Certificate.load(cert_der)["tbs_certificate"]
    return der.encode(0x30, tbs["issuer"].dump() + tbs["serial_number"].dump())


def _issuer_and_serial(cert: x509.Certificate) -> asn1_cms.SignerIdentifier:
    return asn1_cms.SignerIdentifier(
        name="issuer_and_serial_number", value=issuer_and_serial_number(cert)
    )


def _signature_algorithm(key: PrivateKey, digest: str) -> algos.SignedDigestAlgorithm:
    if isinstance(key, rsa.RSAPrivateKey):
        # rsaEncryption + NULL, as openssl, Thunderbird and Outlook write it.
        return algos.SignedDigestAlgorithm(
            {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})
    return algos.SignedDigestAlgorithm({"algorithm": "ed25519"})


def _sign(key: PrivateKey, data: bytes, digest: str) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)  # PureEdDSA over the attributes (RFC 8419 §3.2)
    hash_algorithm = _HASHES[digest]()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hash_algorithm)
    return key.sign(data, ec.ECDSA(hash_algorithm))


# --- SignedData assembly ------------------------------------------------------------
#
# Existing SignedData is amended from the encodings of its fields as received,
# never re-encoded through asn1crypto: that would re-sort SET OFs (moving
# signers and so their indexes) and normalise BER, and a signer's signed
# attributes and signature must stay byte-identical.

#: SignerInfo fields up to and including the signature (RFC 5652 §5.3).
_SIGNED_FIELDS = (
    "version", "sid", "digest_algorithm", "signed_attrs", "signature_algorithm", "signature",
)


def detached_signed_data(info: asn1_cms.SignerInfo, certificates: Sequence[bytes]) -> bytes:
    """ContentInfo(SignedData) v1 over id-data without eContent (RFC 8551 §3.5):
    the application/pkcs7-signature part of multipart/signed."""
    return _single_signer_signed_data(info, certificates, None)


def encapsulated_signed_data(
    info: asn1_cms.SignerInfo, content: bytes, certificates: Sequence[bytes]
) -> bytes:
    """ContentInfo(SignedData) v1 over id-data carrying ``content`` as eContent:
    application/pkcs7-mime; smime-type=signed-data (RFC 8551 §3.5.2), for
    recipients that would mangle a clear-signed entity in transit. ``info``
    must have been built over exactly ``content``."""
    return _single_signer_signed_data(info, certificates, content)


def _single_signer_signed_data(
    info: asn1_cms.SignerInfo, certificates: Sequence[bytes], content: bytes | None
) -> bytes:
    """One issuerAndSerialNumber signer over id-data, so version 1 (RFC 5652 §5.1);
    ``content`` None leaves eContent out (detached)."""
    encap = asn1_cms.EncapsulatedContentInfo({"content_type": "data"})
    if content is not None:
        encap["content"] = content
    return _signed_data_der(
        version=asn1_cms.CMSVersion("v1").dump(),
        digest_algorithms=[info["digest_algorithm"].dump()],
        encap_content_info=encap.dump(),
        certificates=list(dict.fromkeys(certificates)),
        crls=b"",
        signer_infos=[info.dump()],
    )


def amend_signed_data(
    signed: asn1_cms.SignedData,
    signer_infos: Sequence[bytes],
    *,
    digest_algorithms: Sequence[bytes] = (),
    certificates: Sequence[bytes] = (),
) -> bytes:
    """A ContentInfo around ``signed`` with ``signer_infos`` (encoded) in place
    of its own, adding the digest algorithms and certificates it lacks; every
    other field is copied as encoded."""
    digests = [algorithm.dump() for algorithm in signed["digest_algorithms"]]
    known = {algorithm["algorithm"].dotted for algorithm in signed["digest_algorithms"]}
    for encoded in digest_algorithms:
        oid = algos.DigestAlgorithm.load(encoded)["algorithm"].dotted
        if oid not in known:
            known.add(oid)
            digests.append(encoded)
    return _signed_data_der(
        version=signed["version"].dump(),
        digest_algorithms=digests,
        encap_content_info=signed["encap_content_info"].dump(),
        certificates=_certificate_choices(signed["certificates"], certificates),
        crls=signed["crls"].dump(),
        signer_infos=signer_infos,
    )


def with_countersignature(parent: asn1_cms.SignerInfo, counter: asn1_cms.SignerInfo) -> bytes:
    """``parent`` re-assembled from its own field encodings, with ``counter``
    added to its countersignature attribute (created if absent); other
    unsigned attributes are kept."""
    head = b"".join(
        parent[name].dump() for name in _SIGNED_FIELDS
        if not isinstance(parent[name], core.Void)
    )
    unsigned = parent["unsigned_attrs"]
    attributes = [] if isinstance(unsigned, core.Void) else list(unsigned)
    encoded: list[bytes] = []
    added = False
    for attribute in attributes:
        if not added and attribute["type"].dotted == OID_COUNTERSIGNATURE:
            values = attribute["values"].contents + counter.dump()
            encoded.append(der.encode(0x30, attribute["type"].dump() + der.encode(0x31, values)))
            added = True
        else:
            encoded.append(attribute.dump())
    if not added:
        encoded.append(_attribute("counter_signature", counter).dump())
    return der.encode(0x30, head + der.encode(0xA1, b"".join(encoded)))


def _certificate_choices(existing: core.Asn1Value, added: Sequence[bytes]) -> list[bytes]:
    """The certificate set's entries as encoded, plus ``added`` ones not yet there."""
    choices = [] if isinstance(existing, core.Void) else list(existing)
    encoded = [choice.dump() for choice in choices]
    present = {choice.chosen.dump() for choice in choices if choice.name == "certificate"}
    for certificate in added:
        if certificate not in present:
            present.add(certificate)
            encoded.append(certificate)
    return encoded


def _signed_data_der(
    *,
    version: bytes,
    digest_algorithms: Sequence[bytes],
    encap_content_info: bytes,
    certificates: Sequence[bytes],
    crls: bytes,
    signer_infos: Sequence[bytes],
) -> bytes:
    """ContentInfo(SignedData) from encoded fields (RFC 5652 §5.1), definite lengths."""
    content = b"".join((
        version,
        der.encode(0x31, b"".join(digest_algorithms)),
        encap_content_info,
        der.encode(0xA0, b"".join(certificates)) if certificates else b"",
        crls,
        der.encode(0x31, b"".join(signer_infos)),
    ))
    signed_data_oid = asn1_cms.ContentType("signed_data").dump()
    return der.encode(0x30, signed_data_oid + der.encode(0xA0, der.encode(0x30, content)))

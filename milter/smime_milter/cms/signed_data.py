"""CMS SignedData (RFC 5652) parsing and signature checking.

cryptography has no public CMS verify API, so SignedData is parsed with
asn1crypto and each SignerInfo is checked with cryptography primitives.
This module knows nothing about time, trust or mail: it answers "does this
SignerInfo sign these bytes with this certificate's key?".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Protocol

from asn1crypto import algos, core, x509
from asn1crypto import cms as asn1_cms
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

from smime_milter.cms import der
from smime_milter.cms.certs import CertInfo, cert_info
from smime_milter.errors import SmimeMilterError

OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
OID_COUNTERSIGNATURE = "1.2.840.113549.1.9.6"
OID_DATA = "1.2.840.113549.1.7.1"
OID_SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}
_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MAX_SIGNER_INFOS = 16
MAX_CERTIFICATES = 64
#: Countersignatures examined on one SignerInfo (RFC 5652 §11.4 allows any number).
MAX_COUNTERSIGNATURES = 16
#: SMIMECapabilities kept per signer: real clients list a dozen at most, and
#: the list is stored with every record.
MAX_CAPABILITIES = 32


class ContentChunks(Protocol):
    """Signed content too large to copy, handed over in pieces to hash."""

    def chunks(self) -> Iterator[bytes | memoryview]: ...


#: What a signature covers: bytes, a zero-copy view, or pieces to hash.
Content = bytes | memoryview | ContentChunks


def content_digest(hash_name: str, content: Content) -> bytes:
    """The digest of ``content`` without joining its pieces."""
    digest = hashlib.new(hash_name)
    if isinstance(content, bytes | memoryview):
        digest.update(content)
    else:
        for chunk in content.chunks():
            digest.update(chunk)
    return digest.digest()


def _content_bytes(content: Content) -> bytes:
    """The content as one bytes object (signatures without signed attributes,
    which are reported as failures anyway, and countersignatures)."""
    if isinstance(content, bytes):
        return content
    if isinstance(content, memoryview):
        return content.tobytes()
    return b"".join(content.chunks())


class CmsError(SmimeMilterError, ValueError):
    """The blob is not a usable CMS structure; the text is the user-facing reason."""


@dataclass(frozen=True, slots=True)
class AlgorithmPolicy:
    """Which algorithms a signature may use. Defaults follow RFC 8551 §2."""

    allow_sha1: bool = False
    min_rsa_bits: int = 2048


@dataclass(frozen=True, slots=True)
class SignedData:
    """The parts of a SignedData the verifier needs, already split out."""

    econtent_type: str
    econtent: bytes | None
    certificates: tuple[CertInfo, ...]
    crls: tuple[bytes, ...]
    signer_infos: tuple[asn1_cms.SignerInfo, ...]


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Cryptographic outcome for one SignerInfo (no trust, no time)."""

    certificate: CertInfo | None
    digest_algorithm: str
    signature_algorithm: str
    ok: bool
    errors: tuple[str, ...]
    signing_time: datetime | None


def parse_signed_data(der: bytes) -> SignedData:
    """Parse a ContentInfo holding SignedData, forcing every field we use now
    so that malformed input fails here with CmsError, not later."""
    try:
        info = asn1_cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise CmsError(f"CMS content is {info['content_type'].native}, not signed-data")
        signed = info["content"]
        encap = signed["encap_content_info"]
        econtent_type = encap["content_type"].dotted
        econtent_value = encap["content"]
        econtent = None if econtent_value.native is None else _octets(econtent_value)
        certificates = _certificates(signed["certificates"])
        if len(certificates) > MAX_CERTIFICATES:
            raise CmsError(f"more than {MAX_CERTIFICATES} certificates in SignedData")
        crls = tuple(
            choice.chosen.dump()
            for choice in signed["crls"] or ()
            if isinstance(choice.chosen, asn1_cms.CertificateList)
        )
        signer_infos = tuple(signed["signer_infos"])
        if len(signer_infos) > MAX_SIGNER_INFOS:
            raise CmsError(f"more than {MAX_SIGNER_INFOS} SignerInfos")
        for signer_info in signer_infos:
            sid = signer_info["sid"].chosen
            _ = sid.contents, signer_info["signature"].native, digest_name(signer_info)
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise CmsError(f"malformed CMS SignedData: {_short(exc)}") from exc
    return SignedData(econtent_type, econtent, certificates, crls, signer_infos)


def countersignatures(signer_info: asn1_cms.SignerInfo) -> tuple[asn1_cms.SignerInfo, ...]:
    """The SignerInfos of the countersignature unsigned attributes (RFC 5652
    §11.4), each of which signs ``signature_octets(signer_info)``.

    Raises CmsError when the attributes cannot be parsed.
    """
    try:
        attributes = signer_info["unsigned_attrs"]
        if isinstance(attributes, core.Void):
            return ()
        found: list[asn1_cms.SignerInfo] = []
        for attribute in attributes:
            if attribute["type"].dotted != OID_COUNTERSIGNATURE:
                continue
            for value in attribute["values"]:
                _ = value["sid"].chosen.contents, value["signature"].native, digest_name(value)
                found.append(value)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise CmsError(f"malformed countersignature attribute: {_short(exc)}") from exc
    if len(found) > MAX_COUNTERSIGNATURES:
        raise CmsError(f"more than {MAX_COUNTERSIGNATURES} countersignatures on one signer")
    return tuple(found)


def signature_octets(signer_info: asn1_cms.SignerInfo) -> bytes:
    """The contents octets of ``signature``: what a countersignature's
    message-digest covers (RFC 5652 §11.4), without tag and length."""
    value: bytes = signer_info["signature"].native
    return value


def _certificates(choices: core.Asn1Value) -> tuple[CertInfo, ...]:
    """The certificate set; plain certificates are sliced out of the DER so
    a known certificate costs a cache lookup, not an asn1crypto parse."""
    if isinstance(choices, core.Void):
        return ()
    contents = choices.contents
    try:
        return tuple(
            cert_info(contents[element.start : element.end])
            for element in der.children(contents, 0, len(contents))
            if element.tag == 0x30
        )
    except ValueError:
        pass  # BER inside the set: let asn1crypto handle it
    return tuple(
        cert_info(choice.chosen.dump()) for choice in choices if choice.name == "certificate"
    )


def _octets(value: core.Asn1Value) -> bytes:
    """Content octets of a (possibly constructed, BER) OCTET STRING."""
    native = value.native
    if isinstance(native, bytes):
        return native
    return bytes(value)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def find_certificate(
    signer_info: asn1_cms.SignerInfo, candidates: Iterable[CertInfo]
) -> CertInfo | None:
    """The certificate a SignerInfo names by issuer+serial or subjectKeyIdentifier."""
    sid = signer_info["sid"]
    if sid.name == "issuer_and_serial_number":
        issuer = sid.chosen["issuer"]
        return certificate_by_issuer(issuer.dump(), sid.chosen["serial_number"].native,
                                     candidates, issuer)
    return certificate_by_key_id(sid.chosen.native, candidates)


def certificate_by_issuer(
    issuer_der: bytes, serial: int, candidates: Iterable[CertInfo],
    issuer: x509.Name | None = None,
) -> CertInfo | None:
    """The candidate with this issuer and serial number."""
    same_serial = [info for info in candidates if info.serial == serial]
    # Byte equality first: RFC 5280 name matching (stringprep) is costly.
    for info in same_serial:
        if info.issuer_der == issuer_der:
            return info
    try:
        name = issuer if issuer is not None else x509.Name.load(issuer_der)
        for info in same_serial:
            if info.cert.issuer == name:
                return info
    except (ValueError, TypeError):
        return None  # an unparsable issuer name matches nothing
    return None


def certificate_by_key_id(key_id: bytes, candidates: Iterable[CertInfo]) -> CertInfo | None:
    """The candidate with this subjectKeyIdentifier."""
    for info in candidates:
        if info.key_identifier == key_id:
            return info
    return None


_WANTED_ATTRIBUTES = {
    core.ObjectIdentifier(oid).contents: oid
    for oid in (OID_CONTENT_TYPE, OID_MESSAGE_DIGEST, OID_SIGNING_TIME)
}


def signed_attribute_values(
    data: bytes, capability_sets: list[der.Tlv] | None = None
) -> dict[str, list[bytes]]:
    """The attribute values we check, as raw TLVs keyed by dotted OID, from
    the contents octets of the signed attributes.

    Walked one attribute at a time with the DER reader: some real messages
    carry attributes asn1crypto cannot render, and this is the hot path.
    Raises ValueError when an attribute is not type + SET of values. The
    value SETs of SMIMECapabilities attributes are appended to
    ``capability_sets`` when given (see :func:`capabilities_in`).
    """
    found: dict[str, list[bytes]] = {}
    for attribute in der.children(data, 0, len(data)):
        if attribute.tag != 0x30:
            raise ValueError("signed attribute is not a SEQUENCE")
        oid_element, *rest = der.children(data, attribute.content_start, attribute.end)
        if oid_element.tag != 0x06 or len(rest) != 1 or rest[0].tag != 0x31:
            raise ValueError("signed attribute is not type + SET of values")
        oid_contents = data[oid_element.content_start : oid_element.end]
        if capability_sets is not None and oid_contents == _CAPABILITIES_OID:
            capability_sets.append(rest[0])
        oid = _WANTED_ATTRIBUTES.get(oid_contents)
        if oid is not None:
            values = rest[0]
            found.setdefault(oid, []).extend(
                data[value.start : value.end]
                for value in der.children(data, values.content_start, values.end)
            )
    return found


_CAPABILITIES_OID = core.ObjectIdentifier(OID_SMIME_CAPABILITIES).contents


def smime_capabilities(signer_info: asn1_cms.SignerInfo) -> tuple[str, ...]:
    """Dotted OIDs of the SMIMECapabilities signed attribute (RFC 8551
    §2.5.2), in the signer's order, at most :data:`MAX_CAPABILITIES`.

    Only a hint for encrypting to the signer later, so anything malformed
    (a repeated attribute, several values, a bad element) gives ``()``
    rather than an error: it must never affect the signature's verdict.
    """
    try:
        attributes = signer_info["signed_attrs"]
        if isinstance(attributes, core.Void):
            return ()
        data = attributes.contents
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return ()
    return capabilities_of(data)


def capabilities_of(data: bytes) -> tuple[str, ...]:
    """:func:`smime_capabilities` from the contents octets of the signed
    attributes; ``()`` for anything malformed."""
    try:
        found: tuple[str, ...] | None = None
        for attribute in der.children(data, 0, len(data)):
            oid_element, values = der.children(data, attribute.content_start, attribute.end)
            if data[oid_element.content_start : oid_element.end] != _CAPABILITIES_OID:
                continue
            if found is not None or values.tag != 0x31:
                return ()  # repeated (RFC 8551 allows one) or not a SET of values
            (value,) = der.children(data, values.content_start, values.end)
            found = _capability_oids(data[value.start : value.end])
        return found or ()
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return ()


def capabilities_in(data: bytes, capability_sets: list[der.Tlv]) -> tuple[str, ...]:
    """:func:`capabilities_of` from the value SETs :func:`signed_attribute_values`
    collected, for well-formed attributes (saves a second walk)."""
    if len(capability_sets) != 1:
        return ()  # none, or repeated (RFC 8551 allows one)
    try:
        (value,) = der.children(data, capability_sets[0].content_start, capability_sets[0].end)
        return _capability_oids(data[value.start : value.end])
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return ()


@lru_cache(maxsize=256)
def _capability_oids(data: bytes) -> tuple[str, ...]:
    """SMIMECapabilities ::= SEQUENCE OF SEQUENCE { capabilityID OID, parameters ANY OPTIONAL }.
    Memoised by encoding: each mail client sends the same list every time."""
    sequence = der.read(data, 0)
    if sequence.end != len(data):
        raise ValueError("SMIMECapabilities followed by other data")
    if sequence.tag != 0x30:
        raise ValueError("SMIMECapabilities is not a SEQUENCE")
    oids: list[str] = []
    for capability in der.children(data, sequence.content_start, sequence.end):
        if capability.tag != 0x30:
            raise ValueError("SMIMECapability is not a SEQUENCE")
        oid = der.read(data, capability.content_start, capability.end)
        if oid.tag != 0x06:
            raise ValueError("SMIMECapability does not start with an OID")
        oids.append(oid_dotted(data[oid.start : oid.end]))
        if len(oids) == MAX_CAPABILITIES:
            break
    return tuple(oids)


@lru_cache(maxsize=256)
def oid_dotted(tlv: bytes) -> str:
    dotted: str = core.ObjectIdentifier.load(tlv).dotted
    return dotted


@lru_cache(maxsize=64)
def _oid_tlv(dotted: str) -> bytes:
    tlv: bytes = core.ObjectIdentifier(dotted).dump()
    return tlv


def signed_attributes_der(signer_info: asn1_cms.SignerInfo) -> bytes:
    """The signed attributes as a DER SET OF (tag 0x31), the bytes actually
    signed (RFC 5652 §5.4), built from the octets as received."""
    contents = signer_info["signed_attrs"].contents
    return der.encode(0x31, contents)


def digest_name(signer_info: asn1_cms.SignerInfo) -> str:
    name: str = signer_info["digest_algorithm"]["algorithm"].native
    return name


def signature_name(signer_info: asn1_cms.SignerInfo) -> str:
    return algorithm_name(signer_info["signature_algorithm"])


def algorithm_name(algorithm: algos.SignedDigestAlgorithm) -> str:
    """The signature algorithm's name (its dotted OID when asn1crypto has none)."""
    name: str
    try:
        name = algorithm.signature_algo
    except ValueError:
        name = algorithm["algorithm"].dotted
    return name


def check_signature(
    signer_info: asn1_cms.SignerInfo,
    content: Content,
    certificates: Iterable[CertInfo],
    policy: AlgorithmPolicy,
    *,
    expected_content_type: str | None = OID_DATA,
) -> SignatureCheck:
    """Check one SignerInfo over ``content``.

    ``expected_content_type`` is the eContentType the content-type attribute
    must name; None for countersignatures, which must not carry one.
    """
    try:
        return _check_signature(signer_info, content, certificates, policy,
                                expected_content_type)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        # asn1crypto parses lazily: a malformed field surfaces on first use.
        return SignatureCheck(None, "unknown", "unknown", False,
                              (f"malformed SignerInfo: {_short(exc)}",), None)


def _check_signature(
    signer_info: asn1_cms.SignerInfo,
    content: Content,
    certificates: Iterable[CertInfo],
    policy: AlgorithmPolicy,
    expected_content_type: str | None,
) -> SignatureCheck:
    certificate = find_certificate(signer_info, certificates)
    digest = digest_name(signer_info)
    sig_name = signature_name(signer_info)
    signed_attrs = signer_info["signed_attrs"]
    attributes_present = not isinstance(signed_attrs, core.Void) and bool(signed_attrs.contents)
    attributes = signed_attrs.contents if attributes_present else None

    def verify_value(signed_bytes: bytes, hash_cls: type[hashes.HashAlgorithm]) -> list[str]:
        assert certificate is not None
        return _verify_value(signer_info, certificate, signed_bytes, hash_cls, policy)

    return judge_signature(
        certificate, digest, sig_name, attributes,
        None if attributes is None else der.encode(0x31, attributes),
        content, policy, expected_content_type, verify_value,
    )


def judge_signature(
    certificate: CertInfo | None,
    digest: str,
    sig_name: str,
    attributes: bytes | None,
    signed_attributes: bytes | None,
    content: Content,
    policy: AlgorithmPolicy,
    expected_content_type: str | None,
    verify_value: Callable[[bytes, type[hashes.HashAlgorithm]], list[str]],
    values: dict[str, list[bytes]] | None = None,
) -> SignatureCheck:
    """The checks every SignerInfo gets, whichever parser read it:
    algorithms, the signer certificate, the signed attributes and the value.

    ``attributes`` are the contents octets of the signed attributes (None
    when absent), ``signed_attributes`` their DER SET OF encoding, the bytes
    the signature covers (RFC 5652 §5.4); ``values`` what
    :func:`signed_attribute_values` found in them, when already known.
    """
    errors: list[str] = []
    signing_time: datetime | None = None
    hash_cls = _HASHES.get(digest)
    if hash_cls is None:
        errors.append(f"digest algorithm {digest} is not accepted")
    elif digest == "sha1" and not policy.allow_sha1:
        errors.append("SHA-1 digest algorithm is not accepted by policy")
    if certificate is None:
        errors.append("signer certificate not included in the message")

    signed_bytes: bytes | None = None
    if attributes is None or signed_attributes is None:
        errors.append("signed attributes missing (content-type and message-digest required)")
    else:
        try:
            if values is None:
                values = signed_attribute_values(attributes)
            signing_time, attr_errors = _check_attributes(
                values, content, hash_cls, expected_content_type
            )
        except (ValueError, TypeError, KeyError) as exc:
            attr_errors = [f"malformed signed attributes: {_short(exc)}"]
        errors.extend(attr_errors)
        signed_bytes = signed_attributes

    if certificate is not None and hash_cls is not None:
        errors.extend(verify_value(
            signed_bytes if signed_bytes is not None else _content_bytes(content), hash_cls
        ))
    return SignatureCheck(
        certificate=certificate,
        digest_algorithm=digest,
        signature_algorithm=sig_name,
        ok=not errors,
        errors=tuple(errors),
        signing_time=signing_time,
    )


def _check_attributes(
    values: dict[str, list[bytes]],
    content: Content,
    hash_cls: type[hashes.HashAlgorithm] | None,
    expected_content_type: str | None,
) -> tuple[datetime | None, list[str]]:
    errors: list[str] = []
    content_types = values.get(OID_CONTENT_TYPE, [])
    if expected_content_type is None:
        if content_types:
            errors.append("countersignature carries a content-type attribute")
    elif len(content_types) != 1:
        errors.append("content-type attribute missing" if not content_types
                      else "content-type attribute repeated")
    elif content_types[0] != _oid_tlv(expected_content_type):
        errors.append("content-type attribute does not match the signed content type")

    digests = values.get(OID_MESSAGE_DIGEST, [])
    if len(digests) != 1:
        errors.append("message-digest attribute missing" if not digests
                      else "message-digest attribute repeated")
    elif hash_cls is not None:
        expected = _octet_string(digests[0])
        actual = content_digest(hash_cls().name.replace("-", "_"), content)
        if expected != actual:
            errors.append("message digest mismatch: the signed content was altered")

    signing_time = None
    times = values.get(OID_SIGNING_TIME, [])
    if times:
        try:
            signing_time = _time(times[0])
        except (ValueError, TypeError):
            errors.append("signing-time attribute is malformed")
    return signing_time, errors


def _octet_string(tlv: bytes) -> bytes:
    """The contents of a DER OCTET STRING (asn1crypto for anything else)."""
    element = der.read(tlv, 0) if tlv[:1] == b"\x04" else None
    if element is not None and element.end == len(tlv):
        return tlv[element.content_start :]
    value: bytes = core.OctetString.load(tlv).native
    return value


def _time(tlv: bytes) -> datetime:
    """A UTCTime or GeneralizedTime as asn1crypto reads it; the usual
    ``...SSZ`` forms (RFC 5652 §11.3) are read directly."""
    digits = tlv[2:-1]
    if tlv[-1:] == b"Z" and digits.isdigit() and len(tlv) == tlv[1] + 2:
        try:
            if tlv[0] == 0x17 and len(digits) == 12:
                year = int(digits[:2])
                year += 2000 if year < 50 else 1900  # RFC 5280 §4.1.2.5.1
                rest = digits[2:]
            elif tlv[0] == 0x18 and len(digits) == 14:
                year, rest = int(digits[:4]), digits[4:]
            else:
                raise ValueError("not a plain time")
            return datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]),
                            int(rest[6:8]), int(rest[8:10]), tzinfo=UTC)
        except ValueError:
            pass
    value: datetime = asn1_cms.Time.load(tlv).native
    return value


def _verify_value(
    signer_info: asn1_cms.SignerInfo,
    certificate: CertInfo,
    signed_bytes: bytes,
    hash_cls: type[hashes.HashAlgorithm],
    policy: AlgorithmPolicy,
) -> list[str]:
    """Check the signature value; returns the problems found."""
    if certificate.public_key is None:
        return [certificate.key_error or "signer public key unusable"]
    algorithm = signer_info["signature_algorithm"]
    signature = signer_info["signature"].native
    return verify_value(certificate, signed_bytes, signature, signature_name(signer_info),
                        hash_cls, policy, algorithm)


def verify_value(
    certificate: CertInfo,
    signed_bytes: bytes,
    signature: bytes,
    sig_name: str,
    hash_cls: type[hashes.HashAlgorithm],
    policy: AlgorithmPolicy,
    algorithm: algos.SignedDigestAlgorithm | None = None,
) -> list[str]:
    """Check ``signature`` over ``signed_bytes`` with the certificate's key;
    returns the problems found. ``algorithm`` carries the RSA-PSS parameters."""
    public_key = certificate.public_key
    if public_key is None:
        return [certificate.key_error or "signer public key unusable"]
    hash_algorithm = hash_cls()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < policy.min_rsa_bits:
                return [
                    f"RSA key of {public_key.key_size} bits is below the policy minimum "
                    f"of {policy.min_rsa_bits}"
                ]
            if sig_name == "rsassa_pss":
                if algorithm is None:
                    return ["RSA-PSS parameters missing"]
                pad = _pss_padding(algorithm, policy)
                if isinstance(pad, str):
                    return [pad]
                pss_hash = _HASHES[algorithm["parameters"]["hash_algorithm"]["algorithm"].native]
                public_key.verify(signature, signed_bytes, pad, pss_hash())
            elif sig_name == "rsassa_pkcs1v15":
                public_key.verify(signature, signed_bytes, padding.PKCS1v15(), hash_algorithm)
            else:
                return [f"signature algorithm {sig_name} does not fit an RSA key"]
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in _CURVES:
                return [f"elliptic curve {public_key.curve.name} is not accepted"]
            if sig_name != "ecdsa":
                return [f"signature algorithm {sig_name} does not fit an EC key"]
            public_key.verify(signature, signed_bytes, ec.ECDSA(hash_algorithm))
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if sig_name not in ("ed25519", "ed448"):
                return [f"signature algorithm {sig_name} does not fit an EdDSA key"]
            public_key.verify(signature, signed_bytes)
        elif isinstance(public_key, dsa.DSAPublicKey):
            public_key.verify(signature, signed_bytes, hash_algorithm)
        else:
            return ["signer key type is not supported"]
    except InvalidSignature:
        return ["signature value does not verify with the signer's public key"]
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
        return [f"signature could not be checked: {_short(exc)}"]
    return []


def _pss_padding(algorithm: core.Asn1Value, policy: AlgorithmPolicy) -> padding.PSS | str:
    params = algorithm["parameters"]
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native
    if mgf["algorithm"].native != "mgf1" or mgf_hash not in _HASHES:
        return "RSA-PSS mask generation function is not supported"
    if hash_name not in _HASHES:
        return f"RSA-PSS hash {hash_name} is not accepted"
    if "sha1" in (hash_name, mgf_hash) and not policy.allow_sha1:
        return "SHA-1 in RSA-PSS parameters is not accepted by policy"
    return padding.PSS(
        mgf=padding.MGF1(_HASHES[mgf_hash]()), salt_length=params["salt_length"].native
    )

"""SignedData walked with the DER reader: the common case without asn1crypto.

Parsing a SignedData with asn1crypto builds an object per element and costs
more than the RSA verification itself. Real S/MIME signatures are nearly
always the same shape, so this module slices that shape directly out of the
bytes and answers None for anything else (CRLs, unsigned attributes and
so countersignatures, unknown versions, RSA-PSS, unknown algorithms; BER is
followed only in the outer layers, where NSS writes it): the
caller then takes the asn1crypto path of :mod:`signed_data`, which stays the
reference. The checks themselves are shared (:func:`signed_data.judge_signature`),
so both paths reach the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from asn1crypto import algos, core
from cryptography.hazmat.primitives import hashes

from smime_milter.cms import der
from smime_milter.cms.certs import CertInfo, cert_info
from smime_milter.cms.signed_data import (
    MAX_CERTIFICATES,
    MAX_SIGNER_INFOS,
    AlgorithmPolicy,
    Content,
    SignatureCheck,
    capabilities_in,
    certificate_by_issuer,
    certificate_by_key_id,
    judge_signature,
    oid_dotted,
    signed_attribute_values,
    verify_value,
)

Buffer = bytes | memoryview

_SIGNED_DATA = core.ObjectIdentifier("1.2.840.113549.1.7.2").dump()
#: Signature algorithms whose check needs no parameters.
_PLAIN_SIGNATURES = frozenset({"rsassa_pkcs1v15", "ecdsa", "ed25519", "ed448", "dsa"})
_SIGNED_DATA_VERSIONS = frozenset({1, 3})
_SIGNER_INFO_VERSIONS = frozenset({1, 3})


@dataclass(frozen=True, slots=True)
class RawSignerInfo:
    """One SignerInfo as sliced from the DER (small fields copied out)."""

    issuer: bytes | None  # DER of the issuer Name (issuerAndSerialNumber)
    serial: int | None
    key_id: bytes | None  # subjectKeyIdentifier
    digest_algorithm: str
    signature_algorithm: str
    attributes: bytes  # contents octets of the signed attributes
    signed_attributes: bytes  # the same re-tagged as SET OF: what is signed
    signature: bytes
    #: The checked attributes' values (:func:`signed_data.signed_attribute_values`).
    values: dict[str, list[bytes]]
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RawSignedData:
    """What :class:`signed_data.SignedData` holds, for the common shape.

    ``econtent`` is a view into the input (a copy only when BER splits it
    into pieces), so a large encapsulated content is hashed without a copy.
    """

    econtent_type: str
    econtent: Buffer | None
    certificates: tuple[CertInfo, ...]
    crls: tuple[bytes, ...]
    signer_infos: tuple[RawSignerInfo, ...]


class _Unusual(Exception):
    """Not the common shape: use the asn1crypto path."""


def parse_signed_data_fast(blob: Buffer) -> RawSignedData | None:
    """The SignedData in ``blob`` when it has the common DER shape, else None
    (including for anything malformed: the asn1crypto path words the error)."""
    try:
        return _parse(blob)
    except (_Unusual, ValueError, IndexError, OverflowError):
        return None


def _expect(element: der.Tlv, tag: int) -> der.Tlv:
    if element.tag != tag:
        raise _Unusual
    return element


#: Indefinite-length elements nested inside each other that are followed.
MAX_INDEFINITE_DEPTH = 16


def _read(blob: Buffer, offset: int, limit: int, depth: int = 0) -> der.Tlv:
    """:func:`der.read`, also for a constructed element of indefinite length
    (BER, as NSS writes the outer layers): its ``end`` is then after the
    end-of-contents octets."""
    if offset + 2 > limit or blob[offset + 1] != 0x80:
        return der.read(blob, offset, limit)
    tag = blob[offset]
    if not tag & 0x20 or depth >= MAX_INDEFINITE_DEPTH:
        raise _Unusual
    position = offset + 2
    while blob[position : position + 2] != b"\0\0":
        position = _read(blob, position, limit, depth + 1).end
    return der.Tlv(tag, offset, offset + 2, position + 2)


def _inside(blob: Buffer, element: der.Tlv) -> list[der.Tlv]:
    """The elements a constructed element contains (either length form)."""
    end = element.end - 2 if blob[element.start + 1] == 0x80 else element.end
    found: list[der.Tlv] = []
    position = element.content_start
    while position < end:
        child = _read(blob, position, end)
        found.append(child)
        position = child.end
    return found


def _parse(blob: Buffer) -> RawSignedData:
    info = _expect(_read(blob, 0, len(blob)), 0x30)
    if info.end != len(blob):
        raise _Unusual
    content_type, explicit = _inside(blob, info)
    if bytes(blob[content_type.start : content_type.end]) != _SIGNED_DATA:
        raise _Unusual
    (signed,) = _inside(blob, _expect(explicit, 0xA0))
    fields = _inside(blob, _expect(signed, 0x30))
    if len(fields) < 4:
        raise _Unusual
    version, _digests, encap, *optional, signer_set = fields
    if _integer(blob, version) not in _SIGNED_DATA_VERSIONS:
        raise _Unusual
    certificates: tuple[CertInfo, ...] = ()
    if optional:
        certificate_set = optional.pop(0)
        if optional or certificate_set.tag != 0xA0:
            raise _Unusual  # CRLs, or something else: rare
        certificates = tuple(
            cert_info(bytes(blob[element.start : element.end]))
            for element in _inside(blob, certificate_set)
            if element.tag == 0x30 and blob[element.start + 1] != 0x80
        )
        if len(certificates) > MAX_CERTIFICATES:
            raise _Unusual
    econtent_type, econtent = _encapsulated(blob, _expect(encap, 0x30))
    signer_infos = tuple(
        _signer_info(blob, element) for element in _inside(blob, _expect(signer_set, 0x31))
    )
    if not signer_infos or len(signer_infos) > MAX_SIGNER_INFOS:
        raise _Unusual
    return RawSignedData(econtent_type, econtent, certificates, (), signer_infos)


def _encapsulated(blob: Buffer, encap: der.Tlv) -> tuple[str, Buffer | None]:
    """eContentType and the eContent octets (None when detached)."""
    parts = _inside(blob, encap)
    oid = _expect(parts[0], 0x06)
    econtent_type = oid_dotted(bytes(blob[oid.start : oid.end]))
    if len(parts) == 1:
        return econtent_type, None
    if len(parts) != 2:
        raise _Unusual
    (octets,) = _inside(blob, _expect(parts[1], 0xA0))
    if octets.tag == 0x04:  # a view: a large content is hashed, never copied
        return econtent_type, memoryview(blob)[octets.content_start : octets.end]
    # BER: a constructed OCTET STRING, its content in primitive pieces.
    pieces = [_expect(piece, 0x04) for piece in _inside(blob, _expect(octets, 0x24))]
    return econtent_type, b"".join(blob[piece.content_start : piece.end] for piece in pieces)


def _signer_info(blob: Buffer, element: der.Tlv) -> RawSignerInfo:
    if blob[element.start + 1] == 0x80:
        raise _Unusual
    fields = list(der.children(blob, _expect(element, 0x30).content_start, element.end))
    if len(fields) != 6:
        raise _Unusual  # no signed attributes, or unsigned ones (countersignatures)
    version, sid, digest, attributes, signature_algorithm, signature = fields
    if _integer(blob, version) not in _SIGNER_INFO_VERSIONS:
        raise _Unusual
    issuer = serial = key_id = None
    if sid.tag == 0x30:
        name, number = der.children(blob, sid.content_start, sid.end)
        issuer = bytes(blob[_expect(name, 0x30).start : name.end])
        serial = _integer(blob, number)
    elif sid.tag == 0x80:
        key_id = bytes(blob[sid.content_start : sid.end])
    else:
        raise _Unusual
    digest_name = _digest_name(bytes(blob[_expect(digest, 0x30).start : digest.end]))
    sig_name = _signature_name(
        bytes(blob[_expect(signature_algorithm, 0x30).start : signature_algorithm.end])
    )
    _expect(attributes, 0xA0)
    header = bytes(blob[attributes.start : attributes.content_start])
    contents = bytes(blob[attributes.content_start : attributes.end])
    if len(header) != _header_length(len(contents)):
        raise _Unusual  # a non-minimal length: let the reference path re-encode
    # The signature covers the attributes as a DER SET OF: same octets, tag 0x31.
    signed_attributes = b"\x31" + header[1:] + contents
    capability_sets: list[der.Tlv] = []
    values = signed_attribute_values(contents, capability_sets)  # ValueError when malformed
    return RawSignerInfo(
        issuer=issuer, serial=serial, key_id=key_id,
        digest_algorithm=digest_name, signature_algorithm=sig_name,
        attributes=contents, signed_attributes=signed_attributes,
        signature=bytes(blob[_expect(signature, 0x04).content_start : signature.end]),
        values=values, capabilities=capabilities_in(contents, capability_sets),
    )


def _header_length(length: int) -> int:
    """Octets of a minimal DER tag + length for ``length`` content octets."""
    return 2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8


def _integer(blob: Buffer, element: der.Tlv) -> int:
    if element.tag != 0x02 or element.end == element.content_start:
        raise _Unusual
    return int.from_bytes(blob[element.content_start : element.end], "big", signed=True)


@lru_cache(maxsize=64)
def _digest_name(tlv: bytes) -> str:
    """The digest algorithm's name as asn1crypto gives it (unknown: _Unusual)."""
    try:
        name = algos.DigestAlgorithm.load(tlv)["algorithm"].native
    except (ValueError, TypeError, KeyError):
        raise _Unusual from None
    if not isinstance(name, str) or "." in name:
        raise _Unusual
    return name


@lru_cache(maxsize=64)
def _signature_name(tlv: bytes) -> str:
    """The signature algorithm's name when its check needs no parameters."""
    try:
        name = algos.SignedDigestAlgorithm.load(tlv).signature_algo
    except (ValueError, TypeError, KeyError):
        raise _Unusual from None
    if name not in _PLAIN_SIGNATURES:
        raise _Unusual
    return str(name)


def check_raw_signature(
    signer: RawSignerInfo,
    content: Content,
    certificates: tuple[CertInfo, ...],
    policy: AlgorithmPolicy,
    *,
    expected_content_type: str | None,
) -> SignatureCheck:
    """:func:`signed_data.check_signature` for a SignerInfo of the common shape."""
    if signer.issuer is not None and signer.serial is not None:
        certificate = certificate_by_issuer(signer.issuer, signer.serial, certificates)
    else:
        certificate = certificate_by_key_id(signer.key_id or b"", certificates)

    def verify(signed_bytes: bytes, hash_cls: type[hashes.HashAlgorithm]) -> list[str]:
        assert certificate is not None
        return verify_value(certificate, signed_bytes, signer.signature,
                            signer.signature_algorithm, hash_cls, policy)

    return judge_signature(
        certificate, signer.digest_algorithm, signer.signature_algorithm,
        signer.attributes, signer.signed_attributes, content, policy,
        expected_content_type, verify, signer.values,
    )

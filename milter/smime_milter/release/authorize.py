"""MMHS draft and release (draft-melnikov-mmhs-authorizing-users, RFC 7912):
the message edits an authorizing user's agent makes.

An authorizing user countersigns the originator's signature, or signs the
message when the originator did not, and records the release in the
MMHS-Authorizing-Users header field. Every edit works on the raw bytes:
what a signature covers (the first part of multipart/signed, the eContent,
each existing SignerInfo's signed attributes and signature value) is copied,
never re-encoded. Only the SignedData blob is rebuilt, from the encodings of
its unchanged fields plus the new ones.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization

from smime_milter.cms import (
    OID_DATA,
    CmsError,
    SignedData,
    SigningIdentity,
    amend_signed_data,
    build_signer_info,
    cert_info,
    countersignature,
    detached_signed_data,
    parse_signed_data,
    signed_attributes_der,
    with_countersignature,
)
from smime_milter.errors import SmimeMilterError
from smime_milter.mail import LINE_WIDTH, folded, mime
from smime_milter.model import Verdict
from smime_milter.release.rules import AUTHORIZING_USERS_HEADER, drafter, proven_users
from smime_milter.verify import Verifier

#: RFC 8551 §3.5.3 micalg names of the digests signing.py uses.
MICALG = {"sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}

_BASE64_LINE = 76
_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


class AuthorizeError(SmimeMilterError, ValueError):
    """The message cannot be authorized as asked; the text is for the user."""


@dataclass(frozen=True, slots=True)
class _CmsSlot:
    """Where the SignedData of the top-level signed layer sits:
    the message is ``prefix + base64(der) + suffix``."""

    der: bytes
    prefix: bytes
    suffix: bytes
    newline: bytes
    final_newline: bool
    #: detached: the signed bytes (canonical first part); opaque: None (eContent).
    detached_content: bytes | None

    def with_der(self, blob: bytes) -> bytes:
        """The message with this slot's SignedData replaced by ``blob``."""
        ending = self.newline if self.final_newline else b""
        return self.prefix + _base64_lines(blob, self.newline) + ending + self.suffix


def _base64_lines(blob: bytes, newline: bytes) -> bytes:
    """RFC 2045 §6.8 base64 in 76-character lines, without a final line break."""
    text = base64.b64encode(blob)
    return newline.join(text[i : i + _BASE64_LINE] for i in range(0, len(text), _BASE64_LINE))


# --- public API -----------------------------------------------------------------


def signer_infos(message: bytes) -> tuple[asn1_cms.SignerInfo, ...]:
    """The top-level signed layer's SignerInfos, in encoded order: the order the
    engine reports signers in and the indexes add_countersignatures takes.
    Empty when the message is not S/MIME signed."""
    slot = _signed_slot(message, _top(message))
    return () if slot is None else _parse(slot.der).signer_infos


def add_countersignatures(
    message: bytes,
    identity: SigningIdentity,
    signer_indexes: Sequence[int],
    signing_time: datetime,
) -> bytes:
    """Countersign (RFC 5652 §11.4) the listed SignerInfos of the top-level
    signed layer; everything outside the SignedData blob stays byte-identical."""
    slot = _signed_slot(message, _top(message))
    if slot is None:
        raise AuthorizeError("message is not S/MIME signed: nothing to countersign")
    wanted = _checked_indexes(signer_indexes, len(_parse(slot.der).signer_infos))
    signed = _asn1_signed_data(slot.der)
    try:
        infos = list(signed["signer_infos"])
        encoded = [info.dump() for info in infos]
        for index in wanted:
            counter = countersignature(identity, infos[index], signing_time)
            encoded[index] = with_countersignature(infos[index], counter)
        blob = amend_signed_data(signed, encoded, certificates=identity.certificates_der)
    except _ASN1_ERRORS as exc:
        raise AuthorizeError(f"malformed CMS SignedData: {_short(exc)}") from exc
    _check_preserved(slot.der, blob)
    return slot.with_der(blob)


def add_signer(message: bytes, identity: SigningIdentity, signing_time: datetime) -> bytes:
    """Sign the message as ``identity``: a parallel SignerInfo when the
    top-level layer is S/MIME signed, otherwise a new multipart/signed."""
    top = _top(message)
    slot = _signed_slot(message, top)
    if slot is None:
        return _wrap_signed(message, top, identity, signing_time)
    parsed = _parse(slot.der)
    content = slot.detached_content if slot.detached_content is not None else parsed.econtent
    if content is None:
        raise AuthorizeError("signed-data carries no content to sign")
    info = build_signer_info(
        identity, content, content_type=parsed.econtent_type, signing_time=signing_time
    )
    signed = _asn1_signed_data(slot.der)
    try:
        encoded = [existing.dump() for existing in signed["signer_infos"]]
        blob = amend_signed_data(
            signed, [*encoded, info.dump()],
            digest_algorithms=[info["digest_algorithm"].dump()],
            certificates=identity.certificates_der,
        )
    except _ASN1_ERRORS as exc:
        raise AuthorizeError(f"malformed CMS SignedData: {_short(exc)}") from exc
    _check_preserved(slot.der, blob)
    return slot.with_der(blob)


def set_authorizing_users(message: bytes, addresses: Sequence[str]) -> bytes:
    """Replace every MMHS-Authorizing-Users field by one listing ``addresses``
    (none: just remove them), placed before Content-Type/MIME-Version."""
    top = _top(message)
    fields, separator, newline = _header_fields(message, top)
    kept = [field for field in fields if _field_name(field) != AUTHORIZING_USERS_HEADER.lower()]
    if addresses:
        position = next(
            (i for i, field in enumerate(kept)
             if _field_name(field) in ("content-type", "mime-version")),
            len(kept),
        )
        field = _folded(AUTHORIZING_USERS_HEADER, _checked_addresses(addresses), newline)
        kept.insert(position, field)
    return b"".join(kept) + separator + top.body


# --- locating the signed layer -----------------------------------------------------


def _top(message: bytes) -> mime.Entity:
    try:
        return mime.parse_entity(message)
    except mime.MimeError as exc:
        raise AuthorizeError(f"not a MIME message: {exc}") from exc


def _signed_slot(message: bytes, top: mime.Entity) -> _CmsSlot | None:
    """The top-level S/MIME signed layer, None when there is none; encrypted
    and broken layers raise (signing around them would hide the problem)."""
    mime_type = top.content_type.mime_type
    if mime_type == "multipart/signed":
        return _detached_slot(message, top)
    if mime_type in mime.PKCS7_MIME_TYPES:
        return _opaque_slot(message, top)
    return None


def _detached_slot(message: bytes, top: mime.Entity) -> _CmsSlot | None:
    content_type = top.content_type
    protocol = (content_type.param("protocol") or "").lower()
    if protocol and protocol not in mime.SIGNATURE_PROTOCOLS:
        return None  # e.g. PGP/MIME: not ours to countersign
    boundary = content_type.param("boundary") or ""
    try:
        parts = mime.split_multipart(top.body, boundary)
        if len(parts) != 2:
            raise AuthorizeError(f"multipart/signed has {len(parts)} body parts instead of 2")
        signature = mime.parse_entity(parts[1])
        if not protocol and signature.content_type.mime_type not in mime.SIGNATURE_PROTOCOLS:
            return None
        blob = _base64_blob(signature)
    except mime.MimeError as exc:
        raise AuthorizeError(f"multipart/signed structure broken: {exc}") from exc
    marker = b"--" + boundary.encode("utf-8", "surrogateescape")
    first = _part_offset(top.body, parts[0], marker, 0)
    second = _part_offset(top.body, parts[1], marker, first + len(parts[0]))
    part_end = len(message) - len(top.body) + second + len(parts[1])
    return _CmsSlot(
        der=blob,
        prefix=message[: part_end - len(signature.body)],
        suffix=message[part_end:],
        newline=_newline(parts[1]),
        final_newline=signature.body.endswith(b"\n"),
        detached_content=mime.canonicalize(parts[0]),
    )


def _opaque_slot(message: bytes, top: mime.Entity) -> _CmsSlot:
    smime_type = (top.content_type.param("smime-type") or "").lower()
    try:
        blob = _base64_blob(top)
    except mime.MimeError as exc:
        raise AuthorizeError(str(exc)) from exc
    kind = _cms_kind(blob)
    if kind in ("enveloped_data", "authenticated_enveloped_data") or (
        kind is None and "enveloped" in smime_type
    ):
        raise AuthorizeError("encrypted message: cannot countersign or sign its content")
    if smime_type == "certs-only":
        raise AuthorizeError("certs-only message carries no signature")
    if kind != "signed_data":
        raise AuthorizeError("application/pkcs7-mime content is not CMS signed-data")
    head = message[: len(message) - len(top.body)]
    return _CmsSlot(
        der=blob,
        prefix=head,
        suffix=b"",
        newline=_newline(head),
        final_newline=top.body.endswith(b"\n"),
        detached_content=None,
    )


def _base64_blob(entity: mime.Entity) -> bytes:
    """The CMS blob of a part we will write back as base64 under the same headers."""
    if entity.transfer_encoding != "base64":
        raise AuthorizeError(
            f"{entity.content_type.mime_type} part is {entity.transfer_encoding}, not base64"
        )
    return mime.decode_transfer_encoding(entity)


def _cms_kind(blob: bytes) -> str | None:
    try:
        return str(asn1_cms.ContentInfo.load(blob)["content_type"].native)
    except _ASN1_ERRORS:
        return None


def _part_offset(body: bytes, part: bytes, marker: bytes, start: int) -> int:
    """Where ``part`` (from split_multipart) starts in ``body``: the first
    occurrence that sits between two delimiter lines, which can only be a
    real body part since a delimiter line cannot occur inside one."""
    position = start
    while (found := body.find(part, position)) >= 0:
        end = found + len(part)
        follows = body.startswith(b"\r\n" + marker, end) or body.startswith(b"\n" + marker, end)
        if follows and _after_delimiter_line(body, found, marker):
            return found
        position = found + 1
    raise AuthorizeError("multipart/signed body parts could not be located")


def _after_delimiter_line(body: bytes, offset: int, marker: bytes) -> bool:
    if offset == 0 or body[offset - 1] != 0x0A:
        return False
    line_start = body.rfind(b"\n", 0, offset - 1) + 1
    return body[line_start:offset].rstrip(b"\r\n").rstrip(b" \t") == marker


def _newline(data: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in data else b"\n"


# --- SignedData surgery --------------------------------------------------------------


def _parse(blob: bytes) -> SignedData:
    try:
        return parse_signed_data(blob)
    except CmsError as exc:
        raise AuthorizeError(str(exc)) from exc


def _asn1_signed_data(blob: bytes) -> asn1_cms.SignedData:
    """The asn1crypto SignedData, for copying its fields' encodings (call
    after _parse, which already rejected malformed blobs)."""
    return asn1_cms.ContentInfo.load(blob)["content"]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _checked_indexes(indexes: Sequence[int], count: int) -> list[int]:
    if not indexes:
        raise AuthorizeError("no signer chosen to countersign")
    for index in indexes:
        if not 0 <= index < count:
            raise AuthorizeError(f"signer index {index} out of range (message has {count})")
    return list(dict.fromkeys(indexes))


def _check_preserved(before: bytes, after: bytes) -> None:
    """Refuse output in which any existing signature would read differently."""
    old, new = _parse(before), _parse(after)
    count = len(old.signer_infos)
    same = (
        (old.econtent_type, old.econtent) == (new.econtent_type, new.econtent)
        and len(new.signer_infos) >= count
        and all(
            _signed_parts(a) == _signed_parts(b)
            for a, b in zip(old.signer_infos, new.signer_infos[:count], strict=True)
        )
    )
    if not same:
        raise AuthorizeError("the SignedData cannot be rebuilt without altering its signatures")


def _signed_parts(info: asn1_cms.SignerInfo) -> tuple[bytes, ...]:
    return (
        info["sid"].dump(), info["digest_algorithm"].dump(), signed_attributes_der(info),
        info["signature_algorithm"].dump(), info["signature"].native,
    )


# --- signing an unsigned message -----------------------------------------------------


def _wrap_signed(
    message: bytes, top: mime.Entity, identity: SigningIdentity, signing_time: datetime
) -> bytes:
    """A new multipart/signed: the Content-* fields and body become its first
    part (canonical CRLF, exactly as signed); the other fields stay on top.
    The whole result uses CRLF, the form the first part must have."""
    fields, _, _ = _header_fields(message, top)
    is_content = [_field_name(field).startswith("content-") for field in fields]
    inner = mime.canonicalize(
        b"".join(f for f, c in zip(fields, is_content, strict=True) if c) + b"\r\n" + top.body
    )
    outer = [mime.canonicalize(f) for f, c in zip(fields, is_content, strict=True) if not c]
    if not any(_field_name(field) == "mime-version" for field in outer):
        outer.append(b"MIME-Version: 1.0\r\n")
    info = build_signer_info(identity, inner, content_type=OID_DATA, signing_time=signing_time)
    blob = detached_signed_data(info, identity.certificates_der)
    boundary = _boundary(inner)
    outer.append(
        f'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
        f' micalg={MICALG[identity.digest]}; boundary="{boundary}"\r\n'.encode("ascii")
    )
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    return b"".join((
        *outer,
        b"\r\nThis is an S/MIME signed message.\r\n",
        delimiter,
        inner,
        delimiter,
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n',
        _base64_lines(blob, b"\r\n"),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ))


def _boundary(content: bytes) -> str:
    """A boundary that does not occur in ``content`` (RFC 2046 §5.1.1)."""
    while True:
        boundary = f"----=_smime_{secrets.token_hex(12)}"
        if boundary.encode("ascii") not in content:
            return boundary


# --- header fields -----------------------------------------------------------------


def _header_fields(message: bytes, top: mime.Entity) -> tuple[list[bytes], bytes, bytes]:
    """The top-level header fields as raw bytes (folded lines included, each
    ending in a line break), the blank line ending them (empty when the
    message has no body) and the line break the header uses."""
    head = message[: len(message) - len(top.body)]
    lines = _LINE.findall(head)
    newline = b"\n" if lines and not lines[0].endswith(b"\r\n") else b"\r\n"
    separator = b""
    if lines and lines[-1] in (b"\r\n", b"\n"):
        separator = lines.pop()
    fields: list[bytes] = []
    for line in lines:
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    if fields and not fields[-1].endswith(b"\n"):
        fields[-1] += newline  # a header-only message without a final line break
    return fields, separator, newline


def _field_name(field: bytes) -> str:
    parsed = mime.parse_header_block(field)
    return parsed[0][0].lower() if parsed else ""


def _checked_addresses(addresses: Sequence[str]) -> list[str]:
    """One mailbox per entry, no line breaks (header injection), no repeats."""
    unique: dict[str, str] = {}
    for address in addresses:
        text = address.strip()
        try:
            if not text.isprintable() or len(mime.address_list(text)) != 1:
                raise mime.MimeError("not one mailbox")
        except mime.MimeError as exc:
            raise AuthorizeError(f"not a mail address: {address!r}") from exc
        unique.setdefault(text.casefold(), text)
    return list(unique.values())


def _folded(name: str, items: Sequence[str], newline: bytes) -> bytes:
    """``name: a, b, c`` folded before an item that would pass the width."""
    value = folded(", ".join(items), LINE_WIDTH - len(name) - 2)
    return f"{name}: {value}".replace("\n", newline.decode()).encode("utf-8") + newline


# --------------------------------------------------------------------------- the procedure


@dataclass(frozen=True, slots=True)
class Authorization:
    """What ``authorize`` did to a message."""

    message: bytes
    #: "countersigned", "signed" or "already authorized".
    action: str
    address: str
    #: The MMHS-Authorizing-Users list after the edit.
    authorizing_users: tuple[str, ...]


def authorize(
    message: bytes,
    identity: SigningIdentity,
    verifier: Verifier,
    *,
    address: str | None = None,
    signing_time: datetime | None = None,
    casefold_local_part: bool = False,
) -> Authorization:
    """Steps 1 to 4 of the draft's procedure for one authorizing user.

    1. The message must be authentic: an originator signature, if there is
       one, must verify (a countersignature on a broken signature proves
       nothing, and the milter would not release it).
    2. If the user is already listed with a valid proof, nothing changes.
       Listed users without a valid proof are dropped from the field (the
       draft strips the whole field; keeping the proven users loses nothing).
    3. Countersign the originator's SignerInfos, or, when the originator did
       not sign, add the user's own SignerInfo over the content.
    4. List the user in MMHS-Authorizing-Users.

    The result is verified again, so a user whose certificate the milter will
    not accept learns it now, not from a second diversion.
    """
    signing_time = signing_time or verifier.clock()
    mine = _identity_address(identity, address)
    verdict = verifier.verify(message)
    originators = [i for i, signer in enumerate(verdict.signers) if signer.from_match]
    broken = [verdict.signers[i] for i in originators if not verdict.signers[i].ok]
    if broken:
        raise AuthorizeError("the originator's signature is not valid: "
                             f"{(broken[0].errors or ('unknown error',))[0]}")
    headers = _top(message).headers
    composer = drafter(headers)
    if composer is not None and composer.matches(mine, casefold_local=casefold_local_part):
        raise AuthorizeError(f"{mine.text} drafted this message (it is the Sender, or the "
                             "From without a Sender): someone else must authorize it")
    proven = proven_users(headers, verdict, casefold_local_part=casefold_local_part)
    if any(_same(user, mine, casefold_local_part) for user in proven):
        return Authorization(message, "already authorized", mine.text, proven)
    if originators:
        signed = add_countersignatures(message, identity, originators, signing_time)
        action = "countersigned"
    else:
        signed = add_signer(message, identity, signing_time)
        action = "signed"
    users = (*proven, mine.text)
    result = set_authorizing_users(signed, users)
    after = verifier.verify(result)
    now_proven = proven_users(_top(result).headers, after,
                              casefold_local_part=casefold_local_part)
    if not any(_same(user, mine, casefold_local_part) for user in now_proven):
        problem = _own_problem(after, mine, casefold_local_part)
        raise AuthorizeError(f"the authorization by {mine.text} would not count: {problem}")
    return Authorization(result, action, mine.text, users)


def _identity_address(identity: SigningIdentity, wanted: str | None) -> mime.Address:
    """The address the user authorizes as: ``wanted`` if the certificate
    carries it, else the certificate's only (or first) email address."""
    emails = [a for a in map(mime.parse_address, cert_info(_cert_der(identity)).emails) if a]
    if not emails:
        raise AuthorizeError("the certificate carries no email address to list in "
                             "MMHS-Authorizing-Users")
    if wanted is None:
        return emails[0]
    chosen = mime.parse_address(wanted)
    for email in emails:
        if chosen is not None and email.matches(chosen, casefold_local=True):
            return email
    raise AuthorizeError(f"the certificate does not carry {wanted} "
                         f"(it carries {', '.join(e.text for e in emails)})")


def _cert_der(identity: SigningIdentity) -> bytes:
    return identity.certificate.public_bytes(serialization.Encoding.DER)


def _same(text: str, address: mime.Address, casefold_local_part: bool) -> bool:
    parsed = mime.parse_address(text)
    return parsed is not None and parsed.matches(address, casefold_local=casefold_local_part)


def _own_problem(verdict: Verdict, mine: mime.Address, casefold_local_part: bool) -> str:
    """The first error of the user's own signature or countersignature."""
    stack = list(verdict.signers)
    while stack:
        signer = stack.pop(0)
        stack.extend(signer.countersignatures)
        if any(_same(email, mine, casefold_local_part) for email in signer.emails):
            return (signer.errors or ("not valid",))[0]
    return verdict.notes[0] if verdict.notes else "no signature of this user found"

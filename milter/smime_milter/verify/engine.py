"""The verification engine: raw message + moment + trust -> RFC 9219 Verdict.

It combines ``mime`` (where is the S/MIME layer, what bytes are signed),
``cms`` (do the signatures hold), ``chain`` (is the signer trusted at T) and
``envelope`` (can we open an encrypted layer) and decides the status. Only
the outermost S/MIME layer of the whole message counts: a signature on a
part, or inside an attachment, never makes the message ``signed/verified``.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache

from asn1crypto import cms as asn1_cms
from asn1crypto import core

from smime_milter.cms import (
    AlgorithmPolicy,
    CmsError,
    Content,
    DecryptionKey,
    RawSignedData,
    RawSignerInfo,
    SignatureCheck,
    SignedData,
    cert_info_of,
    check_raw_signature,
    check_signature,
    countersignatures,
    decrypt,
    parse_signed_data,
    parse_signed_data_fast,
    signature_octets,
    smime_capabilities,
)
from smime_milter.cms import read as read_der
from smime_milter.mail import mime
from smime_milter.model import ChainResult, RevocationMode, SignerResult, Status, Verdict
from smime_milter.trust import ChainValidator, TrustStore
from smime_milter.verify.status import signed_status

log = logging.getLogger(__name__)

HP_PARAMS = ("hp", "protected-headers")
#: Countersignatures of countersignatures examined (RFC 5652 allows any depth).
MAX_COUNTERSIGNATURE_DEPTH = 4


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """Policy switches of the engine (all default to the strict choice)."""

    algorithms: AlgorithmPolicy = field(default_factory=AlgorithmPolicy)
    revocation: RevocationMode = RevocationMode.SOFT
    #: RFC 5321 treats the local part as case-sensitive; many agents do not.
    casefold_local_part: bool = False


@dataclass(frozen=True, slots=True)
class _Layer:
    """Where the S/MIME content of one entity is."""

    kind: str  # "detached", "opaque", "enveloped", "certs-only", "foreign-signed", "none"
    entity: mime.Part
    der: bytes | memoryview | None = None
    signed_content: Content | None = None
    inner: mime.Part | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _SignedOutcome:
    """What a signed layer yields before its status is decided."""

    signers: tuple[SignerResult, ...]
    message_errors: tuple[str, ...]
    from_address: str | None = None
    certificates: tuple[bytes, ...] = ()
    crls: tuple[bytes, ...] = ()


def _layer_of(entity: mime.Part) -> _Layer:
    """Classify one entity; structural problems become ``problem``, not exceptions."""
    content_type = entity.content_type
    if content_type.mime_type == "multipart/signed":
        return _detached_layer(entity, content_type)
    if content_type.mime_type in mime.PKCS7_MIME_TYPES:
        return _pkcs7_mime_layer(entity, content_type)
    return _Layer("none", entity)


def _detached_layer(entity: mime.Part, content_type: mime.ContentType) -> _Layer:
    protocol = (content_type.param("protocol") or "").lower()
    try:
        parts = mime.split_multipart(entity.body, content_type.param("boundary") or "")
    except mime.MimeError as exc:
        if protocol and protocol not in mime.SIGNATURE_PROTOCOLS:
            return _Layer("foreign-signed", entity)
        return _Layer("detached", entity, problem=f"multipart/signed structure broken: {exc}")
    signature_part = mime.try_parse_part(parts[1]) if len(parts) > 1 else None
    if not protocol and signature_part is not None:
        protocol = signature_part.content_type.mime_type
    if protocol not in mime.SIGNATURE_PROTOCOLS:
        return _Layer("foreign-signed", entity)
    if len(parts) != 2 or signature_part is None:
        return _Layer(
            "detached", entity,
            problem=f"multipart/signed has {len(parts)} body parts instead of 2",
        )
    try:
        der = mime.decode_transfer_encoding(signature_part)
    except mime.MimeError as exc:
        return _Layer("detached", entity, problem=str(exc))
    return _Layer(
        "detached", entity, der=der,
        signed_content=mime.canonical(parts[0]), inner=mime.try_parse_part(parts[0]),
    )


def _pkcs7_mime_layer(entity: mime.Part, content_type: mime.ContentType) -> _Layer:
    smime_type = (content_type.param("smime-type") or "").lower()
    try:
        der = mime.decode_transfer_encoding(entity)
    except mime.MimeError as exc:
        kind = "opaque" if smime_type == "signed-data" else "enveloped"
        return _Layer(kind, entity, problem=str(exc))
    cms_type = _cms_content_type(der)
    # certs-only is a degenerate SignedData (RFC 8551 §3.6): test it before signed-data.
    if smime_type == "certs-only":
        return _Layer("certs-only", entity, der=der)
    if cms_type == "signed_data" or (cms_type is None and smime_type == "signed-data"):
        return _Layer("opaque", entity, der=der)
    if cms_type in ("enveloped_data", "authenticated_enveloped_data") or (
        cms_type is None and smime_type in ("enveloped-data", "authenveloped-data")
    ):
        return _Layer("enveloped", entity, der=der)
    return _Layer("enveloped", entity, der=der,
                  problem="application/pkcs7-mime content is not signed or enveloped data")


_CMS_TYPES = {
    core.ObjectIdentifier(oid).dump(): name
    for oid, name in (
        ("1.2.840.113549.1.7.2", "signed_data"),
        ("1.2.840.113549.1.7.3", "enveloped_data"),
        ("1.2.840.113549.1.9.16.1.23", "authenticated_enveloped_data"),
    )
}


def _cms_content_type(blob: bytes | memoryview) -> str | None:
    """The ContentInfo's content type, read from the leading bytes only (the
    SignedData is parsed once, later); None when it is none of ours."""
    try:
        if blob[:1] != b"\x30":
            return None
        first = blob[1]
        # The outer SEQUENCE may be BER with an indefinite length (NSS writes that).
        offset = 2 if first <= 0x80 else 2 + (first & 0x7F)
        element = read_der(blob, offset)
    except (ValueError, IndexError):
        return None
    return _CMS_TYPES.get(bytes(blob[element.start : element.end]))


def _listing(numbers: list[str], limit: int = 10) -> str:
    """Part numbers for an error line, bounded so hostile mail cannot bloat it."""
    shown = ", ".join(numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


class _Scan:
    """Walks multiparts (not attached messages) looking for S/MIME parts,
    within a depth and part budget so hostile nesting costs little."""

    def __init__(self) -> None:
        self.signed: list[tuple[str, _Layer]] = []
        self.other_smime: list[str] = []
        self.leaves: list[str] = []
        self.notes: list[str] = []
        self.budget = mime.MAX_PARTS

    def walk(self, entity: mime.Part, number: str, depth: int) -> None:
        if depth > 0:
            layer = _layer_of(entity)
            if layer.kind in ("detached", "opaque"):
                self.signed.append((number, layer))
                self.leaves.append(number)
                return
            if layer.kind in ("enveloped", "certs-only"):
                self.other_smime.append(number)
                self.leaves.append(number)
                return
        content_type = entity.content_type
        if not content_type.mime_type.startswith("multipart/"):
            self.leaves.append(number or "1")
            return
        if depth >= mime.MAX_DEPTH:
            self.notes.append(f"MIME structure below part {number} nested too deeply; not examined")
            self.leaves.append(number)
            return
        try:
            parts = mime.split_multipart(
                entity.body, content_type.param("boundary") or "", strict=False
            )
        except mime.MimeError:
            self.leaves.append(number or "1")
            return
        for index, raw in enumerate(parts, start=1):
            child = f"{number}.{index}" if number else str(index)
            self.budget -= 1
            if self.budget < 0:
                if self.budget == -1:
                    self.notes.append(
                        f"more than {mime.MAX_PARTS} MIME parts; the rest not examined"
                    )
                return
            parsed = mime.try_parse_part(raw)
            if parsed is None:
                self.leaves.append(child)
                continue
            self.walk(parsed, child, depth + 1)


class Verifier:
    """Answers "what is the S/MIME status of this message as of T?".

    One instance holds the trust store, policy, decryption keys and the
    chain cache; it is safe to share between threads.
    """

    def __init__(
        self,
        trust: TrustStore,
        policy: VerifyPolicy | None = None,
        decryption_keys: Sequence[DecryptionKey] = (),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        chain_validator: ChainValidator | None = None,
        der_fast_path: bool = True,
    ) -> None:
        #: False forces the asn1crypto reference parser (tests compare both).
        self.der_fast_path = der_fast_path
        self.policy = policy or VerifyPolicy()
        self.decryption_keys = tuple(decryption_keys)
        self.clock = clock
        self.chains = chain_validator or ChainValidator(
            trust,
            revocation=self.policy.revocation,
            allow_sha1=self.policy.algorithms.allow_sha1,
            min_rsa_bits=self.policy.algorithms.min_rsa_bits,
        )
        self._local_certs = tuple(cert_info_of(c) for c in self.chains.trust.intermediates)

    def verify(self, message: bytes, at: datetime | None = None) -> Verdict:
        """The RFC 9219 verdict for ``message`` with trust evaluated at ``at``
        (default: now). Never raises for malformed input."""
        with memoryview(message) as view:
            return self._verify_view(view, at)

    def verify_file(self, path: str | os.PathLike[str], at: datetime | None = None) -> Verdict:
        """:meth:`verify` for a spooled message, mapped read-only rather than
        read: a large message costs its mapped pages, not copies of its body.
        Raises OSError when the file cannot be opened or mapped."""
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return self.verify(b"", at)
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            with memoryview(mapped) as view:
                return self._verify_view(view, at)
        finally:
            _unmap(mapped, path)

    def _verify_view(self, message: memoryview, at: datetime | None) -> Verdict:
        verified_at = self.clock()
        moment = at or verified_at
        try:
            return self._verify(message, moment, verified_at)
        except (MemoryError, OSError):
            raise  # resource trouble: let the caller tempfail
        except RecursionError:
            return Verdict(Status.UNKNOWN, None, None, notes=("MIME structure nested too deeply",))
        except Exception as exc:  # a parser bug must not lose a message
            log.exception("unexpected error while examining message")
            return Verdict(
                Status.SIGNED_FAILED, (f"message could not be examined: {type(exc).__name__}",),
                verified_at,
            )

    def _verify(self, message: memoryview, at: datetime, verified_at: datetime) -> Verdict:
        try:
            top = mime.parse_part(message)
        except mime.MimeError as exc:
            return Verdict(None, None, None, notes=(f"not a MIME message: {exc}",))
        layer = _layer_of(top)
        if layer.kind in ("detached", "opaque"):
            outcome = self._evaluate_signed(layer, top, at)
            return self._verdict(outcome, layer, verified_at, "1", encrypted=False)
        if layer.kind == "enveloped":
            return self._evaluate_enveloped(layer, top, at, verified_at)
        if layer.kind == "foreign-signed":
            return Verdict(Status.UNKNOWN, None, None, layer="multipart/signed",
                           notes=("multipart/signed with a non-S/MIME protocol",))
        if layer.kind == "certs-only":
            return Verdict(Status.UNKNOWN, None, None, layer="certs-only")
        return self._evaluate_nested(top, at, verified_at)

    def _verdict(
        self, outcome: _SignedOutcome, layer: _Layer, verified_at: datetime, part: str,
        *, encrypted: bool,
    ) -> Verdict:
        decided = signed_status(outcome.signers, outcome.message_errors, encrypted=encrypted)
        return Verdict(
            status=decided.status,
            errors=decided.errors,
            verified_at=verified_at,
            signers=outcome.signers,
            layer="multipart/signed" if layer.kind == "detached" else "signed-data",
            signed_part=part,
            from_address=outcome.from_address,
            notes=decided.notes,
            certificates=outcome.certificates,
            crls=outcome.crls,
            message_errors=outcome.message_errors,
        )

    # -- encrypted ---------------------------------------------------------

    def _evaluate_enveloped(
        self, layer: _Layer, top: mime.Part, at: datetime, verified_at: datetime
    ) -> Verdict:
        if layer.problem or layer.der is None:
            return Verdict(Status.UNKNOWN, None, None, layer="enveloped-data",
                           notes=(layer.problem or "no encrypted content",))
        if not self.decryption_keys:
            return Verdict(Status.UNKNOWN, None, None, layer="enveloped-data",
                           notes=("encrypted; no decryption key configured",))
        result = decrypt(bytes(layer.der), self.decryption_keys)
        if result.content is None:
            return Verdict(Status.UNKNOWN, None, None, layer="enveloped-data",
                           notes=(f"encrypted; not decrypted: {result.error}",))
        inner = mime.try_parse_part(memoryview(result.content))
        inner_layer = _layer_of(inner) if inner is not None else None
        if inner_layer is None or inner_layer.kind not in ("detached", "opaque"):
            return Verdict(Status.UNKNOWN, None, None, layer="enveloped-data",
                           notes=("decrypted content is not signed",))
        outcome = self._evaluate_signed(inner_layer, top, at)
        verdict = self._verdict(outcome, inner_layer, verified_at, "1", encrypted=True)
        return replace(verdict, layer=f"enveloped-data/{verdict.layer}")

    # -- S/MIME only below the top level ------------------------------------

    def _evaluate_nested(self, top: mime.Part, at: datetime, verified_at: datetime) -> Verdict:
        scan = _Scan()
        scan.walk(top, "", 0)
        signed, other_smime, leaves = scan.signed, scan.other_smime, scan.leaves
        if not signed:
            if other_smime:
                return Verdict(Status.UNKNOWN, None, None, layer="nested",
                               notes=(f"S/MIME only in part(s) {_listing(other_smime)}",
                                      *scan.notes))
            return Verdict(None, None, None, notes=tuple(scan.notes))
        number, layer = signed[0]
        outcome = self._evaluate_signed(layer, top, at)
        covered = number + "."
        unsigned = [leaf for leaf in leaves if leaf != number and not leaf.startswith(covered)]
        partial = (
            f"signature covers only MIME part {number}; "
            f"part(s) {_listing(unsigned) or 'around it'} not signed"
        )
        return self._verdict(
            replace(outcome, message_errors=(partial, *outcome.message_errors)),
            layer, verified_at, f"{number}.1" if layer.kind == "detached" else number,
            encrypted=False,
        )

    # -- signed layers -------------------------------------------------------

    def _evaluate_signed(self, layer: _Layer, header_source: mime.Part, at: datetime
                         ) -> _SignedOutcome:
        """Check every SignerInfo of a signed layer and bind it to From."""
        if layer.problem or layer.der is None:
            return _SignedOutcome((), (layer.problem or "signature missing",))
        signed_data: SignedData | RawSignedData | None = None
        if self.der_fast_path:
            signed_data = parse_signed_data_fast(layer.der)
        if signed_data is None:
            try:
                signed_data = parse_signed_data(bytes(layer.der))
            except CmsError as exc:
                return _SignedOutcome((), (str(exc),))
        content: Content
        if layer.kind == "detached":
            content = layer.signed_content or b""
            inner = layer.inner
        else:
            if signed_data.econtent is None:
                return _SignedOutcome((), ("signed-data carries no content",))
            content = signed_data.econtent
            inner = mime.try_parse_part(memoryview(content))
        if not signed_data.signer_infos:
            return _SignedOutcome((), ("signed-data carries no signature",))

        from_address, message_errors = self._signer_address_source(header_source, inner)
        signers = tuple(
            self._check_signer(signer_info, signed_data, content, from_address, at)
            for signer_info in signed_data.signer_infos
        )
        return _SignedOutcome(
            signers, tuple(message_errors),
            from_address.text if from_address else None,
            tuple(cert.der for cert in signed_data.certificates),
            tuple(signed_data.crls),
        )

    def _signer_address_source(
        self, top: mime.Part, inner: mime.Part | None
    ) -> tuple[mime.Address | None, list[str]]:
        """The From address signers must match, honouring RFC 9788 header
        protection (the protected inner From wins and must equal the outer)."""
        errors: list[str] = []
        outer_from = top.get_all("from")
        protected = inner is not None and any(
            inner.content_type.param(name) for name in HP_PARAMS
        ) and bool(inner.get_all("from"))
        source = inner.get_all("from") if protected and inner is not None else outer_from
        address = _single_address(source, errors)
        if protected and address is not None:
            outer_errors: list[str] = []
            outer = _single_address(outer_from, outer_errors)
            casefold = self.policy.casefold_local_part
            if outer is None or not outer.matches(address, casefold_local=casefold):
                errors.append("outer From differs from the protected (signed) From")
        return address, errors

    def _check_signer(
        self,
        signer_info: asn1_cms.SignerInfo | RawSignerInfo,
        signed_data: SignedData | RawSignedData,
        content: Content,
        from_address: mime.Address | None,
        at: datetime,
    ) -> SignerResult:
        certificates = (*signed_data.certificates, *self._local_certs)
        if isinstance(signer_info, RawSignerInfo):
            check = check_raw_signature(
                signer_info, content, certificates, self.policy.algorithms,
                expected_content_type=signed_data.econtent_type,
            )
            countersigners: tuple[SignerResult, ...] = ()  # none on the fast path
            capabilities = signer_info.capabilities
        else:
            assert isinstance(signed_data, SignedData)
            check = check_signature(
                signer_info, content, certificates, self.policy.algorithms,
                expected_content_type=signed_data.econtent_type,
            )
            countersigners = self._countersigners(signer_info, signed_data, at, 1)
            capabilities = smime_capabilities(signer_info)
        info = check.certificate
        errors = list(check.errors)
        from_match = False
        if info is not None and from_address is not None:
            addresses = _certificate_addresses(info.emails)
            from_match = any(
                a is not None and a.matches(from_address,
                                            casefold_local=self.policy.casefold_local_part)
                for a in addresses
            )
            if not info.emails:
                errors.append("signer certificate carries no email address")
            elif not from_match:
                errors.append(
                    f"From address {from_address.text} does not match the certificate "
                    f"({', '.join(info.emails)})"
                )
        return self._signer_result(check, errors, signed_data, at, from_match,
                                   countersigners, capabilities)

    def _countersigners(
        self, parent: asn1_cms.SignerInfo, signed_data: SignedData, at: datetime, depth: int
    ) -> tuple[SignerResult, ...]:
        """Each countersignature checked over the parent's signature value
        (RFC 5652 §11.4), and its own countersignatures below it."""
        try:
            counters = countersignatures(parent)
        except CmsError as exc:
            return (_broken_countersignature(str(exc)),)
        if counters and depth > MAX_COUNTERSIGNATURE_DEPTH:
            return (_broken_countersignature("countersignatures nested too deeply"),)
        results = []
        for counter in counters:
            check = check_signature(
                counter, signature_octets(parent),
                [*signed_data.certificates, *self._local_certs],
                self.policy.algorithms, expected_content_type=None,
            )
            results.append(self._signer_result(
                check, list(check.errors), signed_data, at, False,
                self._countersigners(counter, signed_data, at, depth + 1),
            ))
        return tuple(results)

    def _signer_result(
        self, check: SignatureCheck, errors: list[str], signed_data: SignedData | RawSignedData,
        at: datetime,
        from_match: bool, countersigners: tuple[SignerResult, ...],
        capabilities: tuple[str, ...] = (),
    ) -> SignerResult:
        info = check.certificate
        chain = ChainResult(False)
        if info is not None:
            others = [c.cert for c in signed_data.certificates if c.sha256 != info.sha256]
            chain = self.chains.validate(info.cert, others, signed_data.crls, at)
        # Chain errors last: SignerResult.with_chain replaces exactly them.
        return SignerResult(
            emails=info.emails if info else (),
            subject=info.subject if info else "",
            issuer=info.issuer if info else "",
            serial=info.serial if info else None,
            digest_algorithm=check.digest_algorithm,
            signature_algorithm=check.signature_algorithm,
            signature_ok=check.ok,
            chain_ok=chain.ok,
            from_match=from_match,
            errors=(*errors, *chain.errors),
            signing_time=check.signing_time,
            certificate=info.der if info else None,
            path=chain.path,
            chain_errors=chain.errors,
            countersignatures=countersigners,
            capabilities=capabilities,
        )


def _unmap(mapped: mmap.mmap, path: str | os.PathLike[str]) -> None:
    """Close the mapping of a verified message. A view of it may outlive the
    call in a reference cycle (a caught exception's traceback keeps every
    frame of the stack alive, e.g. in chain validation): collect those once,
    otherwise the mapping goes when the last view does."""
    try:
        mapped.close()
        return
    except BufferError:
        gc.collect()
    try:
        mapped.close()
    except BufferError:
        log.debug("mapped message %s still referenced after verification", path)


@lru_cache(maxsize=8192)
def _certificate_addresses(emails: tuple[str, ...]) -> tuple[mime.Address | None, ...]:
    """A certificate's addresses parsed for comparison, once per certificate."""
    return tuple(mime.parse_address(email) for email in emails)


def _broken_countersignature(reason: str) -> SignerResult:
    """A countersignature attribute that could not be read: it proves nothing."""
    return SignerResult(
        emails=(), subject="", issuer="", serial=None, digest_algorithm="unknown",
        signature_algorithm="unknown", signature_ok=False, chain_ok=False, from_match=False,
        errors=(reason,),
    )


def _single_address(values: list[str], errors: list[str]) -> mime.Address | None:
    """The one From mailbox; anything else is an error (RFC 8550 binding)."""
    if not values:
        errors.append("message has no From address")
        return None
    if len(values) > 1:
        errors.append(f"message has {len(values)} From header fields")
        return None
    addresses = mime.mailbox_list(values)
    if len(addresses) != 1:
        errors.append(f"From holds {len(addresses)} addresses instead of one")
        return None
    if addresses[0] is None:
        errors.append("From address is not a valid mailbox")
    return addresses[0]

"""Engine: what a CMS signature covers and which algorithms count (rule 2), with the
system openssl as an independent referee for every algorithm verdict.
"""

from __future__ import annotations

import base64
import quopri
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from asn1crypto import core

from smime_milter.cms import der
from smime_milter.cms.signed_data import (
    MAX_CAPABILITIES,
    OID_SIGNING_TIME,
    OID_SMIME_CAPABILITIES,
    AlgorithmPolicy,
    smime_capabilities,
)
from smime_milter.model import Status, Verdict
from smime_milter.verify.engine import Verifier, VerifyPolicy
from tests.support import smime
from tests.support.pki import Identity, TestPki
from tests.support.verdicts import (
    NOW,
    assert_failed,
    assert_verified,
    b64_lines,
    detached_message,
    entity,
    make_verifier,
)

#: openssl checks certificate validity at NOW too, not at the wall clock.
OPENSSL_AT = ["-attime", str(int(NOW.timestamp()))]

SIGNERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # leaf name -> (SAN email, signatureAlgorithm the engine reports, sign_cms knobs)
    "rsa": ("alice@example.com", "rsassa_pkcs1v15", {}),
    "rsa_pss": ("pss@example.com", "rsassa_pss", {"pss": True}),
    "ec256": ("ec256@example.com", "ecdsa", {}),
    "ec384": ("ec384@example.com", "ecdsa", {}),
    "ec521": ("ec521@example.com", "ecdsa", {}),
    "ed25519": ("ed@example.com", "ed25519", {}),
}


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


def _check(verifier: Verifier, message: bytes) -> Verdict:
    return verifier.verify(message, at=NOW)


def _signed(signer: Identity, inner: bytes | None = None, *, opaque: bool = False,
            from_addr: str = "alice@example.com", **kwargs: Any) -> bytes:
    build = smime.opaque_signed if opaque else smime.multipart_signed
    kwargs.setdefault("signing_time", NOW)
    return build(entity() if inner is None else inner, signer, from_addr=from_addr, **kwargs)


def _openssl_accepts(message: bytes, ca_files: list[Path]) -> bool:
    return smime.openssl_verify(message, ca_files, extra_args=OPENSSL_AT)


def _tamper(message: bytes) -> bytes:
    """Change one word of the signed text, inside the base64 CMS blob for opaque."""
    old, new = b"this message is signed", b"this message is forged"
    if old in message:
        return message.replace(old, new, 1)
    head, sep, body = message.partition(b"\r\n\r\n")
    assert b"smime-type=signed-data" in head
    der = base64.b64decode(body)
    assert old in der
    return head + sep + b64_lines(der.replace(old, new, 1))


# --------------------------------------------------------------------------- coverage


@pytest.mark.process
def test_bare_lf_transport_of_a_crlf_signature_verifies(
    pki: TestPki, verifier: Verifier, ca_files: list[Path]
) -> None:
    """Signed over CRLF, delivered with bare LF (a local mailbox): canonicalised back."""
    message = _signed(pki.rsa).replace(b"\r\n", b"\n")
    assert b"\r" not in message
    assert_verified(_check(verifier, message), "alice@example.com")
    assert _openssl_accepts(message, ca_files)


def test_only_the_signed_part_in_bare_lf_verifies(pki: TestPki, verifier: Verifier) -> None:
    inner = entity()
    message = _signed(pki.rsa, inner).replace(inner, inner.replace(b"\r\n", b"\n"), 1)
    assert inner not in message
    assert_verified(_check(verifier, message), "alice@example.com")


@pytest.mark.process
@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
def test_altered_body_fails_with_digest_mismatch(
    pki: TestPki, verifier: Verifier, ca_files: list[Path], opaque: bool
) -> None:
    message = _tamper(_signed(pki.rsa, opaque=opaque))
    verdict = _check(verifier, message)
    assert_failed(verdict, "digest mismatch")
    (signer,) = verdict.signers
    assert not signer.signature_ok
    assert signer.chain_ok and signer.from_match  # only the content is wrong
    assert not _openssl_accepts(message, ca_files)


def test_added_trailing_line_breaks_the_signature(pki: TestPki, verifier: Verifier) -> None:
    inner = entity()
    message = _signed(pki.rsa, inner).replace(inner, inner + b"\r\n", 1)
    assert_failed(_check(verifier, message), "digest mismatch")


def test_quoted_printable_reencoding_breaks_8bit_signature(
    pki: TestPki, verifier: Verifier
) -> None:
    """A relay that downgrades 8bit to quoted-printable changes the signed bytes; the
    engine must not undo it (it never decodes or re-encodes the signed entity)."""
    text = "Grüße aus Köln\nÄrger über Umlaute\n"
    inner = smime.text_entity(text)
    assert b"Content-Transfer-Encoding: 8bit" in inner
    original = _signed(pki.rsa, inner)
    assert_verified(_check(verifier, original), "alice@example.com")

    qp_body = smime.crlf(quopri.encodestring(text.encode("utf-8")))
    reencoded_inner = inner.replace(b"8bit", b"quoted-printable", 1).replace(
        smime.crlf(text.encode("utf-8")), qp_body, 1
    )
    assert b"=C3=BC" in reencoded_inner
    message = original.replace(inner, reencoded_inner, 1)
    assert_failed(_check(verifier, message), "digest mismatch")


def test_detached_signature_ignores_a_carried_econtent(pki: TestPki, verifier: Verifier) -> None:
    """multipart/signed: the first MIME part is what is signed, whatever eContent says."""
    inner, decoy = entity(), entity("Something else entirely.\n")
    info = smime.signer_info(inner, pki.rsa, signing_time=NOW)
    der = smime.signed_data(decoy, [info], detached=False, certs=[pki.rsa, pki.intermediate])
    assert_verified(_check(verifier, detached_message(inner, b64_lines(der))),
                    "alice@example.com")


def test_detached_signature_over_the_econtent_only_fails(
    pki: TestPki, verifier: Verifier
) -> None:
    """The converse: a signature valid for the embedded eContent does not cover the part."""
    inner, decoy = entity(), entity("Something else entirely.\n")
    info = smime.signer_info(decoy, pki.rsa, signing_time=NOW)
    der = smime.signed_data(decoy, [info], detached=False, certs=[pki.rsa, pki.intermediate])
    assert_failed(_check(verifier, detached_message(inner, b64_lines(der))), "digest mismatch")


def test_opaque_uses_the_econtent(pki: TestPki, verifier: Verifier) -> None:
    inner = entity("Opaque body.\n")
    verdict = _check(verifier, _signed(pki.rsa, inner, opaque=True))
    assert_verified(verdict, "alice@example.com")
    assert verdict.layer == "signed-data"


def test_opaque_without_econtent_fails(pki: TestPki, verifier: Verifier) -> None:
    der = smime.sign_cms(entity(), pki.rsa, detached=True, signing_time=NOW)
    message = smime.wrap_message(smime.pkcs7_mime_entity(der, "signed-data"))
    assert_failed(_check(verifier, message), "carries no content")


# --------------------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    ("omit", "fragment"),
    [
        ("content_type", "content-type attribute missing"),
        ("message_digest", "message-digest attribute missing"),
        ("all", "signed attributes missing"),
    ],
)
def test_missing_signed_attributes_fail(
    pki: TestPki, verifier: Verifier, omit: str, fragment: str
) -> None:
    verdict = _check(verifier, _signed(pki.rsa, omit_attrs=[omit]))
    assert_failed(verdict, fragment)
    assert not verdict.signers[0].signature_ok


def test_missing_signing_time_is_fine(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa, omit_attrs=["signing_time"]))
    assert_verified(verdict, "alice@example.com")
    assert verdict.signers[0].signing_time is None


def test_tampered_message_digest_attribute_fails(pki: TestPki, verifier: Verifier) -> None:
    """The signature over the attributes is valid; only the digest comparison catches it."""
    assert_failed(_check(verifier, _signed(pki.rsa, tamper_digest=True)), "digest mismatch")


def test_signature_value_from_another_key_fails(pki: TestPki, verifier: Verifier) -> None:
    """alice's certificate named as signer, but the value made by another RSA key."""
    impostor = Identity(key=pki.rsa_pss.key, cert=pki.rsa.cert, chain=pki.rsa.chain)
    assert_failed(_check(verifier, _signed(impostor)), "signature value does not verify")


# --------------------------------------------------------------------------- algorithms


@pytest.mark.process
@pytest.mark.parametrize("opaque", [False, True], ids=["detached", "opaque"])
@pytest.mark.parametrize("name", list(SIGNERS))
def test_signature_algorithms_verify(
    pki: TestPki, verifier: Verifier, ca_files: list[Path], name: str, opaque: bool
) -> None:
    email, algorithm, knobs = SIGNERS[name]
    signer = pki.leaves[name]
    message = _signed(signer, opaque=opaque, from_addr=email, **knobs)
    verdict = _check(verifier, message)
    assert_verified(verdict, email)
    (result,) = verdict.signers
    assert result.signature_algorithm == algorithm
    assert result.digest_algorithm == smime.default_digest(signer)
    assert result.certificate == signer.cert_der
    tampered = _check(verifier, _tamper(message))
    assert_failed(tampered, "digest mismatch")
    if name != "ed25519":  # OpenSSL 3 CMS cannot verify Ed25519 (see tests.support.smime)
        assert _openssl_accepts(message, ca_files)
        assert not _openssl_accepts(_tamper(message), ca_files)


@pytest.mark.process
@pytest.mark.parametrize("digest", ["sha224", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("name", ["rsa", "rsa_pss", "ec384"])
def test_sha2_digests_verify(
    pki: TestPki, verifier: Verifier, ca_files: list[Path], name: str, digest: str
) -> None:
    email, _, knobs = SIGNERS[name]
    message = _signed(pki.leaves[name], from_addr=email, digest=digest, **knobs)
    verdict = _check(verifier, message)
    assert_verified(verdict, email)
    assert verdict.signers[0].digest_algorithm == digest
    assert _openssl_accepts(message, ca_files)


@pytest.mark.parametrize("null_params", [False, True], ids=["absent", "null"])
def test_digest_parameters_absent_or_null(
    pki: TestPki, verifier: Verifier, null_params: bool
) -> None:
    message = _signed(pki.rsa, null_digest_params=null_params)
    assert_verified(_check(verifier, message), "alice@example.com")


def test_sha1_rejected_by_default(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa, digest="sha1"))
    assert_failed(verdict, "SHA-1")
    assert verdict.signers[0].digest_algorithm == "sha1"


@pytest.mark.process
def test_sha1_accepted_when_allowed(pki: TestPki, ca_files: list[Path]) -> None:
    verifier = make_verifier(pki, VerifyPolicy(algorithms=AlgorithmPolicy(allow_sha1=True)))
    message = _signed(pki.rsa, digest="sha1")
    assert_verified(_check(verifier, message), "alice@example.com")
    assert _openssl_accepts(message, ca_files)
    assert_failed(_check(verifier, _tamper(message)), "digest mismatch")
    assert not _openssl_accepts(_tamper(message), ca_files)


def test_sha1_in_pss_parameters_rejected_by_default(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa_pss, from_addr="pss@example.com", pss=True, digest="sha1")
    assert_failed(_check(verifier, message), "SHA-1")


def test_rsa_1024_rejected_by_default(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.weak_rsa, from_addr="weak@example.com"))
    assert_failed(verdict, "1024 bits", "2048")


@pytest.mark.process
def test_rsa_1024_accepted_with_lower_minimum(pki: TestPki, ca_files: list[Path]) -> None:
    verifier = make_verifier(pki, VerifyPolicy(algorithms=AlgorithmPolicy(min_rsa_bits=1024)))
    message = _signed(pki.weak_rsa, from_addr="weak@example.com")
    assert_verified(_check(verifier, message), "weak@example.com")
    assert _openssl_accepts(message, ca_files)


def test_signature_oid_not_matching_the_key_fails(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, sig_oid_override="sha256_ecdsa")
    assert_failed(_check(verifier, message), "does not fit an RSA key")


# --------------------------------------------------------------------------- signers


@pytest.mark.process
def test_signer_identified_by_subject_key_identifier(
    pki: TestPki, verifier: Verifier, ca_files: list[Path]
) -> None:
    message = _signed(pki.rsa, sid="ski")
    verdict = _check(verifier, message)
    assert_verified(verdict, "alice@example.com")
    assert verdict.signers[0].serial == pki.rsa.cert.serial_number
    assert _openssl_accepts(message, ca_files)


def _two_signer_message(pki: TestPki, *, alice_broken: bool) -> bytes:
    inner = entity()
    alice = smime.signer_info(inner, pki.rsa, signing_time=NOW, tamper_digest=alice_broken)
    other = smime.signer_info(inner, pki.ec256, signing_time=NOW, tamper_digest=True)
    der = smime.signed_data(inner, [other, alice], certs=[pki.rsa, pki.ec256, pki.intermediate])
    return detached_message(inner, b64_lines(der))


def test_one_good_signer_bound_to_from_is_enough(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _two_signer_message(pki, alice_broken=False))
    assert_verified(verdict, "alice@example.com")
    broken, good = verdict.signers
    assert good.ok and good.emails == ("alice@example.com",)
    assert not broken.ok and broken.emails == ("ec256@example.com",)
    assert any("digest mismatch" in e for e in broken.errors)
    assert any(note.startswith("signer ec256@example.com:") and "digest mismatch" in note
               for note in verdict.notes), verdict.notes


def test_all_signers_broken_fails_listing_each(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _two_signer_message(pki, alice_broken=True))
    assert_failed(verdict, "signer ec256@example.com:", "signer alice@example.com:")
    assert all(not s.ok for s in verdict.signers)
    assert all(any("digest mismatch" in e for e in s.errors) for s in verdict.signers)


def test_valid_signer_not_bound_to_from_does_not_count(pki: TestPki, verifier: Verifier) -> None:
    """Two cryptographically valid signers, neither of them the From address."""
    message = _signed(pki.ec256, from_addr="carol@example.com", extra_signers=[pki.ec384])
    verdict = _check(verifier, message)
    assert_failed(verdict, "carol@example.com")
    assert all(s.signature_ok and s.chain_ok and not s.from_match for s in verdict.signers)


def test_signer_certificate_missing_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa, certs=[pki.intermediate]))
    assert_failed(verdict, "signer certificate not included")
    (signer,) = verdict.signers
    assert signer.certificate is None and not signer.signature_ok


def test_no_signer_infos_in_signed_data_fails(pki: TestPki, verifier: Verifier) -> None:
    der = smime.signed_data(entity(), [], certs=[pki.rsa])
    verdict = _check(verifier, detached_message(entity(), b64_lines(der)))
    assert verdict.status is Status.SIGNED_FAILED
    assert_failed(verdict, "no signature")


# --------------------------------------------------------------------------- SMIMECapabilities

AES_CBC = ("2.16.840.1.101.3.4.1.42", "2.16.840.1.101.3.4.1.22", "2.16.840.1.101.3.4.1.2")


def test_signer_capabilities_are_reported(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa))
    assert_verified(verdict, "alice@example.com")
    assert verdict.signers[0].capabilities == AES_CBC


def test_no_capabilities_attribute_reports_none(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa, omit_attrs=("smime_capabilities",)))
    assert_verified(verdict, "alice@example.com")
    assert verdict.signers[0].capabilities == ()


class _FakeSignerInfo:
    """Just the signed attributes, as raw contents (the SET OF without its tag)."""

    def __init__(self, contents: bytes) -> None:
        self._attrs = SimpleNamespace(contents=contents)

    def __getitem__(self, name: str) -> object:
        assert name == "signed_attrs"
        return self._attrs


def _attribute(oid: str, *values: bytes) -> bytes:
    return der.encode(0x30, core.ObjectIdentifier(oid).dump() + der.encode(0x31, b"".join(values)))


def _capabilities(*elements: bytes) -> bytes:
    return der.encode(0x30, b"".join(elements))


def _capability(oid: str, parameters: bytes = b"") -> bytes:
    return der.encode(0x30, core.ObjectIdentifier(oid).dump() + parameters)


def test_capabilities_keep_order_parameters_and_a_limit() -> None:
    many = [_capability(f"1.2.3.{n}", core.Integer(n).dump()) for n in range(40)]
    info = _FakeSignerInfo(
        _attribute(OID_SIGNING_TIME, core.UTCTime(NOW).dump())
        + _attribute(OID_SMIME_CAPABILITIES, _capabilities(*many))
    )
    assert smime_capabilities(info) == tuple(f"1.2.3.{n}" for n in range(MAX_CAPABILITIES))  # type: ignore[arg-type]


@pytest.mark.parametrize("contents", [
    _attribute(OID_SMIME_CAPABILITIES, core.Integer(5).dump()),                  # not a SEQUENCE
    _attribute(OID_SMIME_CAPABILITIES, _capabilities(core.Integer(5).dump())),   # bad element
    _attribute(OID_SMIME_CAPABILITIES, _capabilities(der.encode(0x30, core.Integer(1).dump()))),
    _attribute(OID_SMIME_CAPABILITIES, _capabilities(_capability("1.2")),
               _capabilities(_capability("1.3"))),                               # two values
    _attribute(OID_SMIME_CAPABILITIES, _capabilities(_capability("1.2")))
    + _attribute(OID_SMIME_CAPABILITIES, _capabilities(_capability("1.3"))),     # repeated
    _attribute(OID_SMIME_CAPABILITIES, _capabilities(_capability("1.2")))[:-1],  # truncated
    _attribute(OID_SMIME_CAPABILITIES),                                          # no value
    b"\x30\x03\x06\x01",                                                         # garbage
])
def test_malformed_capabilities_give_none(contents: bytes) -> None:
    assert smime_capabilities(_FakeSignerInfo(contents)) == ()  # type: ignore[arg-type]
    good = _attribute(OID_SMIME_CAPABILITIES, _capabilities(_capability("1.2")))
    assert smime_capabilities(_FakeSignerInfo(good)) == ("1.2",)  # type: ignore[arg-type]

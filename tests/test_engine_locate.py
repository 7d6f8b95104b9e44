"""Engine: where the S/MIME layer is, what each kind of layer yields, the status model,
and malformed input (rules 1, 5 and 6 of the verification issue).

Every verify runs at the fixed moment NOW; the PKI is minted around it.
"""

from __future__ import annotations

import base64
import random
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smime_milter.cms.envelope import DecryptionKey, load_decryption_key
from smime_milter.model import Status, Verdict
from smime_milter.verify.engine import Verifier
from tests.support import smime
from tests.support.pki import TestPki
from tests.support.verdicts import (
    NOW,
    assert_failed,
    assert_verified,
    b64_lines,
    detached_message,
    entity,
    make_verifier,
    multipart,
    signature_part,
)

SIGNED_STATUSES = {
    Status.SIGNED_VERIFIED,
    Status.SIGNED_FAILED,
    Status.ENCRYPTED_SIGNED_VERIFIED,
    Status.ENCRYPTED_SIGNED_FAILED,
}


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


@pytest.fixture(scope="module")
def keys(pki_files: dict[str, Path]) -> list[DecryptionKey]:
    """Recipient keys for alice (RSA) and ec256 (ECDH), as an admin configures them."""
    return [load_decryption_key(pki_files["rsa.pem"]), load_decryption_key(pki_files["ec256.pem"])]


@pytest.fixture(scope="module")
def key_verifier(pki: TestPki, keys: list[DecryptionKey]) -> Verifier:
    return make_verifier(pki, keys=keys)


@pytest.fixture(scope="module")
def signed_entity(pki: TestPki) -> bytes:
    """alice's multipart/signed entity without message headers (for nesting)."""
    return smime.multipart_signed_entity(entity(), pki.rsa, signing_time=NOW)


def _check(verifier: Verifier, message: bytes) -> Verdict:
    return verifier.verify(message, at=NOW)


def _assert_no_smime_result(verdict: Verdict, status: Status | None) -> None:
    """null/unknown: no smimeErrors, no verification time, no signers."""
    assert verdict.status is status, (verdict.status, verdict.errors, verdict.notes)
    assert verdict.errors is None
    assert verdict.verified_at is None
    assert verdict.signers == ()


# --------------------------------------------------------------------------- rule 1


@pytest.mark.parametrize(
    "protocol", ["application/pkcs7-signature", "application/x-pkcs7-signature"]
)
def test_multipart_signed_protocols(pki: TestPki, verifier: Verifier, protocol: str) -> None:
    message = smime.multipart_signed(entity(), pki.rsa, protocol=protocol, signing_time=NOW)
    verdict = _check(verifier, message)
    assert_verified(verdict, "alice@example.com")
    assert verdict.layer == "multipart/signed"
    assert verdict.signed_part == "1"
    assert verdict.from_address == "alice@example.com"
    (signer,) = verdict.signers
    assert signer.emails == ("alice@example.com",)
    assert "alice@example.com" in signer.subject
    assert "Test Intermediate CA" in signer.issuer
    assert signer.serial == pki.rsa.cert.serial_number
    assert signer.certificate == pki.rsa.cert_der
    assert signer.path[0] == pki.rsa.cert_der
    assert signer.path[-1] == pki.root.cert_der
    assert signer.digest_algorithm == "sha256"
    assert signer.signature_algorithm == "rsassa_pkcs1v15"
    assert signer.signing_time == NOW


@pytest.mark.parametrize("mime_type", ["application/pkcs7-mime", "application/x-pkcs7-mime"])
def test_opaque_signed_data(pki: TestPki, verifier: Verifier, mime_type: str) -> None:
    message = smime.opaque_signed(entity(), pki.ec256, from_addr="ec256@example.com",
                                  signing_time=NOW)
    message = message.replace(b"application/pkcs7-mime", mime_type.encode(), 1)
    assert mime_type.encode() + b"; smime-type=signed-data" in message
    verdict = _check(verifier, message)
    assert_verified(verdict, "ec256@example.com")
    assert verdict.layer == "signed-data"
    assert verdict.signed_part == "1"
    assert verdict.signers[0].signature_algorithm == "ecdsa"


@pytest.mark.process
@pytest.mark.parametrize("cipher", ["aes256", "aes-256-gcm"])
def test_encrypted_without_key_is_unknown(
    pki: TestPki, verifier: Verifier, signed_entity: bytes, cipher: str
) -> None:
    message = smime.enveloped(signed_entity, [pki.rsa], cipher=cipher)
    expected_type = b"authEnveloped-data" if "gcm" in cipher else b"enveloped-data"
    assert b"smime-type=" + expected_type in message
    verdict = _check(verifier, message)
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert verdict.layer == "enveloped-data"
    assert any("no decryption key" in note for note in verdict.notes)


@pytest.mark.process
def test_encrypted_for_someone_else_is_unknown(
    pki: TestPki, key_verifier: Verifier, signed_entity: bytes
) -> None:
    verdict = _check(key_verifier, smime.enveloped(signed_entity, [pki.ec384]))
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert any("no RecipientInfo for a configured key" in note for note in verdict.notes)


def test_certs_only_is_unknown(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, smime.certs_only([pki.rsa, pki.intermediate]))
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert verdict.layer == "certs-only"


def test_certs_only_attachment_is_not_a_partial_signature(
    pki: TestPki, verifier: Verifier
) -> None:
    """A .p7c next to plain text is S/MIME below the top level, not a signed part."""
    p7c = smime.pkcs7_mime_entity(smime.certs_only_cms([pki.rsa]), "certs-only", "smime.p7c")
    message = smime.wrap_message(multipart("multipart/mixed", [entity(), p7c]))
    verdict = _check(verifier, message)
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert any("part(s) 2" in note for note in verdict.notes)


def test_pgp_multipart_signed_is_unknown(verifier: Verifier) -> None:
    pgp = (
        b"Content-Type: application/pgp-signature; name=signature.asc\r\n\r\n"
        b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQEzBAEBCAAdFiEE\r\n=abcd\r\n"
        b"-----END PGP SIGNATURE-----\r\n"
    )
    params = ' protocol="application/pgp-signature"; micalg=pgp-sha256;'
    message = smime.wrap_message(multipart("multipart/signed", [entity(), pgp], params=params))
    verdict = _check(verifier, message)
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert verdict.layer == "multipart/signed"


def test_plain_text_is_null(verifier: Verifier) -> None:
    _assert_no_smime_result(_check(verifier, smime.wrap_message(entity())), None)


def test_multipart_mixed_without_smime_is_null(verifier: Verifier) -> None:
    html = smime.text_entity("<p>Hello</p>", "text/html")
    alternative = multipart("multipart/alternative", [entity(), html], boundary="alt")
    message = smime.wrap_message(
        multipart("multipart/mixed", [alternative, smime.text_entity("attachment")])
    )
    _assert_no_smime_result(_check(verifier, message), None)


def test_signed_part_with_unsigned_footer_fails(
    verifier: Verifier, signed_entity: bytes
) -> None:
    footer = smime.text_entity("-- \nSent through the list; unsubscribe at ...")
    message = smime.wrap_message(multipart("multipart/mixed", [signed_entity, footer]))
    verdict = _check(verifier, message)
    assert_failed(verdict, "part(s) 2 not signed", "covers only MIME part 1")
    assert verdict.signed_part == "1.1"
    # The signature itself is fine: what fails is that it does not cover the message.
    (signer,) = verdict.signers
    assert signer.ok


def test_signed_part_between_unsigned_header_and_footer_fails(
    verifier: Verifier, signed_entity: bytes
) -> None:
    header = smime.text_entity("[external sender]")
    footer = smime.text_entity("footer")
    message = smime.wrap_message(multipart("multipart/mixed", [header, signed_entity, footer]))
    verdict = _check(verifier, message)
    assert_failed(verdict, "part(s) 1, 3 not signed", "covers only MIME part 2")
    assert verdict.signed_part == "2.1"


def test_opaque_signed_part_with_footer_fails(pki: TestPki, verifier: Verifier) -> None:
    der = smime.sign_cms(entity(), pki.rsa, detached=False, signing_time=NOW)
    opaque = smime.pkcs7_mime_entity(der, "signed-data")
    message = smime.wrap_message(multipart("multipart/mixed", [opaque, entity("footer")]))
    assert_failed(_check(verifier, message), "part(s) 2 not signed")


@pytest.mark.process
def test_encrypted_and_signed_with_key_verifies(
    pki: TestPki, key_verifier: Verifier, signed_entity: bytes
) -> None:
    verdict = _check(key_verifier, smime.enveloped(signed_entity, [pki.rsa]))
    assert_verified(verdict, "alice@example.com", status=Status.ENCRYPTED_SIGNED_VERIFIED)
    assert verdict.layer == "enveloped-data/multipart/signed"
    assert verdict.verified_at == NOW


@pytest.mark.process
def test_auth_enveloped_to_ec_key_verifies(
    pki: TestPki, key_verifier: Verifier, signed_entity: bytes
) -> None:
    message = smime.enveloped(signed_entity, [pki.ec256], cipher="aes-256-gcm")
    assert_verified(
        _check(key_verifier, message), "alice@example.com",
        status=Status.ENCRYPTED_SIGNED_VERIFIED,
    )


@pytest.mark.process
def test_encrypted_opaque_signed_verifies(pki: TestPki, key_verifier: Verifier) -> None:
    der = smime.sign_cms(entity(), pki.rsa, detached=False, signing_time=NOW)
    message = smime.enveloped(smime.pkcs7_mime_entity(der, "signed-data"), [pki.rsa])
    verdict = _check(key_verifier, message)
    assert_verified(verdict, "alice@example.com", status=Status.ENCRYPTED_SIGNED_VERIFIED)
    assert verdict.layer == "enveloped-data/signed-data"


@pytest.mark.process
def test_encrypted_with_tampered_inner_signature_fails(
    pki: TestPki, key_verifier: Verifier, signed_entity: bytes
) -> None:
    tampered = signed_entity.replace(b"Hello Bob", b"Hello Eve", 1)
    assert tampered != signed_entity
    verdict = _check(key_verifier, smime.enveloped(tampered, [pki.rsa]))
    assert_failed(verdict, "digest mismatch", status=Status.ENCRYPTED_SIGNED_FAILED)


@pytest.mark.process
def test_encrypted_with_from_mismatch_fails(
    pki: TestPki, key_verifier: Verifier, signed_entity: bytes
) -> None:
    message = smime.enveloped(signed_entity, [pki.rsa], from_addr="mallory@example.com")
    verdict = _check(key_verifier, message)
    assert_failed(verdict, "mallory@example.com", status=Status.ENCRYPTED_SIGNED_FAILED)


@pytest.mark.process
def test_encrypted_unsigned_is_unknown(pki: TestPki, key_verifier: Verifier) -> None:
    verdict = _check(key_verifier, smime.enveloped(entity(), [pki.rsa]))
    _assert_no_smime_result(verdict, Status.UNKNOWN)
    assert any("not signed" in note for note in verdict.notes)


# --------------------------------------------------------------------------- rule 5


@pytest.mark.process
def test_status_model_for_every_kind_of_verdict(pki: TestPki, signed_entity: bytes) -> None:
    """smimeErrors only for failed; verified_at (the injected clock, not ``at``) only
    for signed statuses."""
    clock = NOW + timedelta(hours=2)
    verifier = make_verifier(pki, clock=clock)
    good = smime.multipart_signed(entity(), pki.rsa, signing_time=NOW)
    bad = smime.multipart_signed(entity(), pki.rsa, from_addr="bob@example.com")

    verified = verifier.verify(good, at=NOW)
    assert verified.status is Status.SIGNED_VERIFIED
    assert verified.errors is None
    assert verified.verified_at == clock
    assert verified.signed_part == "1"

    failed = verifier.verify(bad, at=NOW)
    assert failed.status is Status.SIGNED_FAILED
    assert isinstance(failed.errors, tuple) and failed.errors
    assert all(isinstance(e, str) and e for e in failed.errors)
    assert failed.verified_at == clock
    assert failed.signed_part == "1"

    for message, status in [
        (smime.wrap_message(entity()), None),
        (smime.enveloped(signed_entity, [pki.rsa]), Status.UNKNOWN),
        (smime.certs_only([pki.rsa]), Status.UNKNOWN),
    ]:
        _assert_no_smime_result(verifier.verify(message, at=NOW), status)


def test_at_defaults_to_the_clock(pki: TestPki) -> None:
    """Without ``at`` the trust decision is made at the clock's moment."""
    message = smime.multipart_signed(entity(), pki.rsa, signing_time=NOW)
    assert make_verifier(pki).verify(message).status is Status.SIGNED_VERIFIED
    late = make_verifier(pki, clock=NOW + timedelta(days=400)).verify(message)
    assert_failed(late, "expired")


# --------------------------------------------------------------------------- rule 6


@pytest.fixture(scope="module")
def good_der(pki: TestPki) -> bytes:
    return smime.sign_cms(entity(), pki.rsa, signing_time=NOW)


def test_garbage_cms_in_multipart_signed(verifier: Verifier) -> None:
    junk = random.Random(7).randbytes(300)
    verdict = _check(verifier, detached_message(entity(), b64_lines(junk)))
    assert_failed(verdict, "malformed")
    assert verdict.signed_part == "1"


def test_truncated_der_in_signature_part(verifier: Verifier, good_der: bytes) -> None:
    truncated = b64_lines(good_der[: len(good_der) // 2])
    verdict = _check(verifier, detached_message(entity(), truncated))
    assert_failed(verdict, "malformed")


def test_truncated_base64_in_signature_part(verifier: Verifier, good_der: bytes) -> None:
    text = base64.b64encode(good_der)
    cut = len(text) // 2
    cut -= cut % 4 - 2  # two characters into a quantum: not decodable
    verdict = _check(verifier, detached_message(entity(), text[:cut] + b"\r\n"))
    assert_failed(verdict, "base64")


def test_truncated_opaque_signed_data(pki: TestPki, verifier: Verifier) -> None:
    der = smime.sign_cms(entity(), pki.rsa, detached=False, signing_time=NOW)
    message = smime.wrap_message(smime.pkcs7_mime_entity(der[:200], "signed-data"))
    assert_failed(_check(verifier, message), "malformed")


def test_multipart_signed_without_boundary(verifier: Verifier, good_der: bytes) -> None:
    message = detached_message(entity(), b64_lines(good_der))
    message = message.replace(b' boundary="b0undary"', b"", 1)
    assert_failed(_check(verifier, message), "boundary")


def test_multipart_signed_without_close_delimiter(verifier: Verifier, good_der: bytes) -> None:
    message = detached_message(entity(), b64_lines(good_der))
    message = message.replace(b"--b0undary--\r\n", b"", 1)
    assert_failed(_check(verifier, message), "close delimiter")


def test_multipart_signed_with_three_parts(verifier: Verifier, good_der: bytes) -> None:
    message = detached_message(entity(), b64_lines(good_der), extra_parts=[entity("extra")])
    assert_failed(_check(verifier, message), "3 body parts")


def test_multipart_signed_with_one_part(verifier: Verifier) -> None:
    params = ' protocol="application/pkcs7-signature"; micalg=sha-256;'
    message = smime.wrap_message(multipart("multipart/signed", [entity()], params=params))
    assert_failed(_check(verifier, message), "1 body parts")


def test_signature_part_with_unknown_transfer_encoding(
    verifier: Verifier, good_der: bytes
) -> None:
    part = signature_part(b64_lines(good_der), encoding="x-uuencode")
    params = ' protocol="application/pkcs7-signature"; micalg=sha-256;'
    message = smime.wrap_message(multipart("multipart/signed", [entity(), part], params=params))
    assert_failed(_check(verifier, message), "Content-Transfer-Encoding")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\r\n",
        b"From: alice@example.com\r\nSubject: headers only\r\n",
        bytes(range(256)) * 16,
        random.Random(1).randbytes(4096),
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\nno delimiter at all\r\n",
    ],
    ids=["empty", "blank-line", "headers-only", "byte-table", "random", "mixed-no-delimiter"],
)
def test_junk_is_null(verifier: Verifier, message: bytes) -> None:
    _assert_no_smime_result(_check(verifier, message), None)


@pytest.fixture(scope="module")
def fuzz_bases(pki: TestPki) -> list[bytes]:
    """Built once: ECDSA signatures vary in length, and hypothesis needs stable inputs."""
    return [
        smime.multipart_signed(entity(), pki.rsa, signing_time=NOW),
        smime.opaque_signed(entity(), pki.ec256, from_addr="ec256@example.com",
                            signing_time=NOW),
    ]


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_mutated_messages_never_raise(
    verifier: Verifier, fuzz_bases: list[bytes], data: st.DataObject
) -> None:
    """Byte-level damage anywhere gives a status, never an exception or an internal error."""
    base = data.draw(st.sampled_from(fuzz_bases))
    message = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(message) - 1))
        message[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(message) // 2, len(message)))
    verdict = _check(verifier, bytes(message[:cut]))
    assert verdict.status is None or isinstance(verdict.status, Status)
    if verdict.status in SIGNED_STATUSES and not verdict.status.is_verified:
        assert verdict.errors
        assert not any("could not be examined" in e for e in verdict.errors), verdict.errors

"""Engine: binding the signer certificate to the From address, including RFC 9788
header protection (rule 4)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from smime_milter.model import Verdict
from smime_milter.verify.engine import Verifier, VerifyPolicy
from tests.support import smime
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.verdicts import (
    NOW,
    assert_failed,
    assert_verified,
    drop_header,
    entity,
    make_verifier,
)


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


def _signed(signer: Identity, from_addr: str, inner: bytes | None = None,
            **kwargs: Any) -> bytes:
    kwargs.setdefault("signing_time", NOW)
    return smime.multipart_signed(entity() if inner is None else inner, signer,
                                  from_addr=from_addr, **kwargs)


def _check(verifier: Verifier, message: bytes) -> Verdict:
    return verifier.verify(message, at=NOW)


def test_from_mismatch_fails_naming_the_address(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.rsa, "mallory@example.com"))
    assert_failed(verdict, "mallory@example.com", "does not match", "alice@example.com")
    (signer,) = verdict.signers
    assert signer.signature_ok and signer.chain_ok and not signer.from_match
    assert verdict.from_address == "mallory@example.com"


def test_same_local_part_other_domain_fails(pki: TestPki, verifier: Verifier) -> None:
    assert_failed(_check(verifier, _signed(pki.rsa, "alice@example.org")), "alice@example.org")


def test_email_only_in_subject_dn_verifies(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.dn_only, "dn@example.com"))
    assert_verified(verdict, "dn@example.com")
    assert verdict.signers[0].emails == ("dn@example.com",)


@pytest.fixture(scope="module")
def san_and_dn(pki: TestPki) -> Identity:
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "SAN and DN differ"),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "dn-other@example.com"),
    ])
    return make_leaf(pki.intermediate, "san@example.com", now=NOW, subject=subject,
                     key_label="engine:san-dn")


def test_san_wins_over_a_different_dn_email(san_and_dn: Identity, verifier: Verifier) -> None:
    assert_verified(_check(verifier, _signed(san_and_dn, "san@example.com")), "san@example.com")
    verdict = _check(verifier, _signed(san_and_dn, "dn-other@example.com"))
    assert_failed(verdict, "dn-other@example.com")
    assert verdict.signers[0].emails == ("san@example.com",)


def test_any_of_several_san_addresses_binds(pki: TestPki, verifier: Verifier) -> None:
    leaf = make_leaf(pki.intermediate, None, now=NOW,
                     emails=["carol@example.com", "carol.work@example.net"],
                     common_name="Carol", key_label="engine:two-san")
    assert_verified(_check(verifier, _signed(leaf, "carol.work@example.net")),
                    "carol.work@example.net")


def test_domain_compared_case_insensitively(pki: TestPki, verifier: Verifier) -> None:
    assert_verified(_check(verifier, _signed(pki.rsa, "alice@EXAMPLE.com")), "alice@example.com")


def test_certificate_domain_case_does_not_matter(pki: TestPki, verifier: Verifier) -> None:
    leaf = make_leaf(pki.intermediate, "dave@Example.COM", now=NOW, key_label="engine:dave")
    assert_verified(_check(verifier, _signed(leaf, "dave@example.com")), "dave@Example.COM")


def test_local_part_case_sensitive_by_default(pki: TestPki, verifier: Verifier) -> None:
    assert_failed(_check(verifier, _signed(pki.rsa, "Alice@example.com")), "Alice@example.com")


def test_local_part_casefolded_when_configured(pki: TestPki) -> None:
    verifier = make_verifier(pki, VerifyPolicy(casefold_local_part=True))
    assert_verified(_check(verifier, _signed(pki.rsa, "Alice@example.com")), "alice@example.com")
    assert_failed(_check(verifier, _signed(pki.rsa, "alicia@example.com")), "alicia@example.com")


@pytest.mark.parametrize(
    "from_addr",
    [
        "<alice@example.com>",
        "Alice Example <alice@example.com>",
        '"Example, Alice" <alice@example.com>',
        "=?utf-8?q?Alice_B=C3=B6hm?= <alice@example.com>",
        "alice@example.com (Alice)",
    ],
)
def test_display_names_and_angle_brackets(
    pki: TestPki, verifier: Verifier, from_addr: str
) -> None:
    verdict = _check(verifier, _signed(pki.rsa, from_addr))
    assert_verified(verdict, "alice@example.com")
    assert verdict.from_address == "alice@example.com"


def test_display_name_looking_like_an_address_does_not_bind(
    pki: TestPki, verifier: Verifier
) -> None:
    message = _signed(pki.rsa, '"alice@example.com" <mallory@example.com>')
    assert_failed(_check(verifier, message), "mallory@example.com")


def test_two_from_fields_fail(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, "alice@example.com", extra_headers=[("From", "alice@example.com")])
    verdict = _check(verifier, message)
    assert_failed(verdict, "2 From header fields")
    assert verdict.from_address is None


def test_from_with_two_addresses_fails(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, "alice@example.com, bob@example.com")
    assert_failed(_check(verifier, message), "2 addresses")


def test_no_from_fails(pki: TestPki, verifier: Verifier) -> None:
    message = drop_header(_signed(pki.rsa, "alice@example.com"), "From")
    assert b"From:" not in message.partition(b"\r\n\r\n")[0]
    assert_failed(_check(verifier, message), "no From address")


@pytest.mark.parametrize(
    ("from_addr", "fragment"),
    [
        ("Alice Example", "not a valid mailbox"),
        ("undisclosed-recipients:;", "0 addresses"),
        ("", "0 addresses"),
    ],
)
def test_from_without_a_mailbox_fails(
    pki: TestPki, verifier: Verifier, from_addr: str, fragment: str
) -> None:
    assert_failed(_check(verifier, _signed(pki.rsa, from_addr)), fragment)


def test_leaf_without_any_email_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.no_email, "alice@example.com"))
    assert_failed(verdict, "no email address")
    assert verdict.signers[0].emails == ()


# --------------------------------------------------------------------------- RFC 9788


def _protected_entity(inner_from: str, *, hp: str = 'hp="clear"') -> bytes:
    return (
        f"Content-Type: text/plain; charset=us-ascii; {hp}\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        f"From: {inner_from}\r\n"
        "To: bob@example.com\r\n"
        "Subject: protected subject\r\n"
        "\r\n"
        "The headers above are covered by the signature.\r\n"
    ).encode()


def test_header_protection_with_matching_outer_from(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, "Alice <alice@example.com>", _protected_entity("alice@example.com"))
    verdict = _check(verifier, message)
    assert_verified(verdict, "alice@example.com")
    assert verdict.from_address == "alice@example.com"


def test_header_protection_outer_from_changed_fails(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, "mallory@example.com", _protected_entity("alice@example.com"))
    verdict = _check(verifier, message)
    assert_failed(verdict, "outer From differs")
    # The signer is bound to the protected From; the outer one is what was forged.
    assert verdict.signers[0].from_match
    assert verdict.from_address == "alice@example.com"


def test_header_protection_outer_from_missing_fails(pki: TestPki, verifier: Verifier) -> None:
    message = drop_header(
        _signed(pki.rsa, "alice@example.com", _protected_entity("alice@example.com")), "From"
    )
    assert_failed(_check(verifier, message), "outer From differs")


def test_header_protection_inner_from_is_what_binds(pki: TestPki, verifier: Verifier) -> None:
    """Protected From of someone else, signed by alice: no binding, even though the
    outer From names alice."""
    message = _signed(pki.rsa, "alice@example.com", _protected_entity("bob@example.com"))
    assert_failed(_check(verifier, message), "bob@example.com")


def test_legacy_protected_headers_parameter(pki: TestPki, verifier: Verifier) -> None:
    inner = _protected_entity("alice@example.com", hp='protected-headers="v1"')
    assert_failed(_check(verifier, _signed(pki.rsa, "mallory@example.com", inner)),
                  "outer From differs")


def test_from_inside_an_unprotected_part_is_ignored(pki: TestPki, verifier: Verifier) -> None:
    """Without hp=, a From field inside the signed part is just part of the content."""
    inner = _protected_entity("mallory@example.com", hp="format=flowed")
    assert_verified(_check(verifier, _signed(pki.rsa, "alice@example.com", inner)),
                    "alice@example.com")


def test_header_protection_outer_from_case_follows_local_part_policy(pki: TestPki) -> None:
    """The outer/protected From comparison uses the same local-part rule as binding."""
    message = _signed(pki.rsa, "Alice@example.com", _protected_entity("alice@example.com"))
    assert_failed(_check(make_verifier(pki), message), "outer From differs")
    relaxed = make_verifier(pki, policy=VerifyPolicy(casefold_local_part=True))
    assert_verified(_check(relaxed, message), "alice@example.com")

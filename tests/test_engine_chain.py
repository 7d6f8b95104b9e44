"""Engine: certificate path validation at a moment T, revocation, usage, name
constraints and the chain cache (rule 3)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509

from smime_milter.model import RevocationMode, Verdict
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier, VerifyPolicy
from tests.support import smime
from tests.support.pki import Identity, TestPki, make_ca, make_crl, make_leaf
from tests.support.verdicts import (
    NOW,
    anchor,
    assert_failed,
    assert_verified,
    entity,
    make_verifier,
)

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


def _signed(signer: Identity, from_addr: str, **kwargs: Any) -> bytes:
    kwargs.setdefault("signing_time", NOW)
    return smime.multipart_signed(entity(), signer, from_addr=from_addr, **kwargs)


def _check(verifier: Verifier, message: bytes, at: Any = NOW) -> Verdict:
    return verifier.verify(message, at=at)


# --------------------------------------------------------------------------- trust, time


def test_untrusted_root_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.untrusted, "untrusted@example.com"))
    assert_failed(verdict, "untrusted")
    (signer,) = verdict.signers
    assert signer.signature_ok and not signer.chain_ok and signer.path == ()


def test_other_root_trusted_only_when_configured(pki: TestPki) -> None:
    """The same message is fine for a verifier that trusts its root."""

    verifier = Verifier(TrustStore(anchors=(anchor(pki.other_root),)), clock=lambda: NOW)
    message = _signed(pki.untrusted, "untrusted@example.com")
    assert_verified(_check(verifier, message), "untrusted@example.com")


def test_expired_leaf_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.expired, "expired@example.com"))
    assert_failed(verdict, "expired", "2026-05-22")


def test_not_yet_valid_leaf_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.not_yet_valid, "future@example.com"))
    assert_failed(verdict, "not valid before", "2026-06-11")


def test_expired_leaf_verifies_at_a_moment_inside_its_validity(
    pki: TestPki, verifier: Verifier
) -> None:
    """At-delivery status: the same bytes, judged at the time they arrived."""
    message = _signed(pki.expired, "expired@example.com", signing_time=NOW - 100 * DAY)
    assert_verified(_check(verifier, message, at=NOW - 100 * DAY), "expired@example.com")
    assert_failed(_check(verifier, message, at=NOW), "expired")


def test_not_yet_valid_leaf_verifies_later(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.not_yet_valid, "future@example.com")
    assert_verified(_check(verifier, message, at=NOW + 20 * DAY), "future@example.com")


# --------------------------------------------------------------------------- revocation


@pytest.fixture(scope="module")
def revoked_message(pki: TestPki) -> bytes:
    return _signed(pki.revoked, "revoked@example.com")


def test_revoked_leaf_with_crl_in_trust_store_fails(
    pki: TestPki, revoked_message: bytes
) -> None:
    verifier = make_verifier(pki, crls=[pki.crl])
    verdict = _check(verifier, revoked_message)
    assert_failed(verdict, "revoked")
    assert not verdict.signers[0].chain_ok


def test_revoked_leaf_with_crl_inside_signed_data_fails(
    pki: TestPki, verifier: Verifier
) -> None:
    message = _signed(pki.revoked, "revoked@example.com", crls=[pki.crl])
    assert_failed(_check(verifier, message), "revoked")


def test_revoked_leaf_without_any_crl_passes_in_soft_mode(
    verifier: Verifier, revoked_message: bytes
) -> None:
    assert_verified(_check(verifier, revoked_message), "revoked@example.com")


def test_revoked_leaf_before_its_revocation_date_verifies(
    pki: TestPki, revoked_message: bytes
) -> None:
    """Revoked at NOW-5d (CRL issued NOW-1d): a message judged at NOW-10d was fine."""
    verifier = make_verifier(pki, crls=[pki.crl])
    assert_verified(_check(verifier, revoked_message, at=NOW - 10 * DAY), "revoked@example.com")
    assert_failed(_check(verifier, revoked_message, at=NOW - 3 * DAY), "revoked")


def test_stale_crl_still_proves_revocation_in_soft_mode(
    pki: TestPki, revoked_message: bytes
) -> None:
    """The CRL's nextUpdate is NOW+30d. Revocation is permanent: a CRL past its
    nextUpdate that lists the certificate must not let it verify again."""
    later = NOW + 60 * DAY
    for crls in ([pki.crl], [pki.crl, pki.root_crl]):
        verifier = make_verifier(pki, crls=crls)
        assert_failed(_check(verifier, revoked_message, at=later), "revoked")
    embedded = _signed(pki.revoked, "revoked@example.com", crls=[pki.crl])
    assert_failed(_check(make_verifier(pki), embedded, at=later), "revoked")


def test_stale_crl_not_listing_the_leaf_passes_in_soft_mode(pki: TestPki) -> None:
    verifier = make_verifier(pki, crls=[pki.crl, pki.root_crl])
    message = _signed(pki.rsa, "alice@example.com")
    assert_verified(_check(verifier, message, at=NOW + 60 * DAY), "alice@example.com")


def test_revocation_off_ignores_the_crl(pki: TestPki, revoked_message: bytes) -> None:
    verifier = make_verifier(pki, VerifyPolicy(revocation=RevocationMode.OFF), crls=[pki.crl])
    assert_verified(_check(verifier, revoked_message), "revoked@example.com")
    embedded = _signed(pki.revoked, "revoked@example.com", crls=[pki.crl])
    assert_verified(_check(verifier, embedded), "revoked@example.com")


def test_hard_revocation_needs_a_crl_for_every_certificate(pki: TestPki) -> None:
    hard = VerifyPolicy(revocation=RevocationMode.HARD)
    message = _signed(pki.rsa, "alice@example.com")
    assert_failed(_check(make_verifier(pki, hard), message), "no current revocation information")
    # The leaf's CRL alone is not enough: the intermediate needs the root's CRL.
    only_leaf_crl = _check(make_verifier(pki, hard, crls=[pki.crl]), message)
    assert_failed(only_leaf_crl, "no current revocation information")
    complete = make_verifier(pki, hard, crls=[pki.crl, pki.root_crl])
    assert_verified(_check(complete, message), "alice@example.com")


def test_hard_revocation_with_complete_crls_still_rejects_revoked(
    pki: TestPki, revoked_message: bytes
) -> None:
    verifier = make_verifier(pki, VerifyPolicy(revocation=RevocationMode.HARD),
                             crls=[pki.crl, pki.root_crl])
    assert_failed(_check(verifier, revoked_message), "revoked")


def test_hard_revocation_rejects_crls_past_next_update(pki: TestPki) -> None:
    verifier = make_verifier(pki, VerifyPolicy(revocation=RevocationMode.HARD),
                             crls=[pki.crl, pki.root_crl])
    message = _signed(pki.rsa, "alice@example.com")
    assert_failed(_check(verifier, message, at=NOW + 60 * DAY), "revocation information")


def test_revoked_intermediate_fails(pki: TestPki) -> None:
    root_crl = make_crl(pki.root, [(pki.intermediate.cert, NOW - 2 * DAY)],
                        this_update=NOW - DAY, next_update=NOW + 30 * DAY, number=7)
    verifier = make_verifier(pki, crls=[pki.crl_empty, root_crl])
    assert_failed(_check(verifier, _signed(pki.rsa, "alice@example.com")), "revoked")


# --------------------------------------------------------------------------- usage


def test_server_auth_only_eku_fails(pki: TestPki, verifier: Verifier) -> None:
    verdict = _check(verifier, _signed(pki.wrong_eku, "wrongeku@example.com"))
    assert_failed(verdict, "emailProtection")
    assert verdict.signers[0].signature_ok


def test_no_eku_verifies(pki: TestPki, verifier: Verifier) -> None:
    assert_verified(_check(verifier, _signed(pki.no_eku, "noeku@example.com")),
                    "noeku@example.com")


def test_key_encipherment_only_key_usage_fails(pki: TestPki, verifier: Verifier) -> None:
    assert_failed(_check(verifier, _signed(pki.bad_ku, "badku@example.com")),
                  "digitalSignature")


def test_non_repudiation_only_key_usage_verifies(pki: TestPki, verifier: Verifier) -> None:
    leaf = make_leaf(pki.intermediate, "nr@example.com", now=NOW,
                     key_usage={"non_repudiation"}, key_label="engine:nr")
    assert_verified(_check(verifier, _signed(leaf, "nr@example.com")), "nr@example.com")


# --------------------------------------------------------------------------- paths


def test_intermediate_from_the_trust_store(pki: TestPki, verifier: Verifier) -> None:
    message = _signed(pki.rsa, "alice@example.com", certs=[pki.rsa])  # no intermediate sent
    assert_failed(_check(verifier, message), "untrusted")
    local = make_verifier(pki, intermediates=[pki.intermediate])
    verdict = _check(local, message)
    assert_verified(verdict, "alice@example.com")
    assert verdict.signers[0].path == (
        pki.rsa.cert_der, pki.intermediate.cert_der, pki.root.cert_der
    )


@pytest.fixture(scope="module")
def constrained_ca(pki: TestPki) -> Identity:
    """An intermediate that may only issue for example.org mailboxes."""
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.RFC822Name("example.org")], excluded_subtrees=None
    )
    return make_ca("Constrained CA", pki.root, now=NOW, path_length=0,
                   extensions=[(constraints, True)], key_label="engine:constrained")


def test_name_constraints_allow_a_permitted_domain(
    constrained_ca: Identity, verifier: Verifier
) -> None:
    leaf = make_leaf(constrained_ca, "bob@example.org", now=NOW, key_label="engine:nc-in")
    assert_verified(_check(verifier, _signed(leaf, "bob@example.org")), "bob@example.org")


def test_name_constraints_reject_a_leaf_outside(
    constrained_ca: Identity, verifier: Verifier
) -> None:
    leaf = make_leaf(constrained_ca, "mallory@example.com", now=NOW, key_label="engine:nc-out")
    verdict = _check(verifier, _signed(leaf, "mallory@example.com"))
    assert_failed(verdict, "permitted namespace")
    assert not verdict.signers[0].chain_ok


def test_name_constraints_cover_email_in_the_subject_dn(
    constrained_ca: Identity, verifier: Verifier
) -> None:
    leaf = make_leaf(constrained_ca, "mallory@example.com", now=NOW, emails=[],
                     email_in_dn=True, key_label="engine:nc-dn")
    assert_failed(_check(verifier, _signed(leaf, "mallory@example.com")), "certificate chain")


# --------------------------------------------------------------------------- cache


def test_second_verification_is_a_cache_hit(pki: TestPki) -> None:
    verifier = make_verifier(pki)
    message = _signed(pki.rsa, "alice@example.com")
    assert_verified(_check(verifier, message), "alice@example.com")
    hits, misses = verifier.chains.hits, verifier.chains.misses
    other = _signed(pki.rsa, "alice@example.com", signing_time=NOW - DAY)  # same signer
    assert_verified(_check(verifier, other), "alice@example.com")
    assert (verifier.chains.hits, verifier.chains.misses) == (hits + 1, misses)


def test_cached_result_is_not_reused_after_not_after(pki: TestPki) -> None:
    verifier = make_verifier(pki)
    message = _signed(pki.rsa, "alice@example.com")
    assert_verified(_check(verifier, message), "alice@example.com")
    not_after = pki.rsa.cert.not_valid_after_utc
    assert_failed(_check(verifier, message, at=not_after + DAY), "expired")


def test_cached_result_is_not_reused_after_not_after_within_one_bucket(pki: TestPki) -> None:
    """Cache keys use one-minute buckets; the validity window still applies inside one."""
    not_after = NOW + 3 * DAY + timedelta(seconds=30)  # mid-minute
    leaf = make_leaf(pki.intermediate, "short@example.com", now=NOW, not_after=not_after,
                     key_label="engine:short")
    verifier = make_verifier(pki)
    message = _signed(leaf, "short@example.com")
    before, after = not_after - timedelta(seconds=10), not_after + timedelta(seconds=10)
    assert int(before.timestamp()) // 60 == int(after.timestamp()) // 60
    assert_verified(_check(verifier, message, at=before), "short@example.com")
    assert_failed(_check(verifier, message, at=after), "expired")
    assert verifier.chains.hits == 0


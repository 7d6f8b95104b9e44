"""MMHS draft and release (draft-melnikov-mmhs-authorizing-users, RFC 7912):
which rule a message falls under, whether it is released, what authorizing
does to it and how an unreleased one is diverted.

Every message is real: signed by the test PKI, countersigned or signed by the
project's own authorize code, verified by the real engine. The RFC 4134 §4.4
countersignature vector checks the same path against foreign data.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms

from smime_milter.cms.signed_data import (
    AlgorithmPolicy,
    countersignatures,
    parse_signed_data,
    signature_octets,
)
from smime_milter.cms.signing import (
    SigningIdentity,
    amend_signed_data,
    countersignature,
    with_countersignature,
)
from smime_milter.mail import mime
from smime_milter.model import RevocationMode, Status
from smime_milter.release.authorize import (
    AuthorizeError,
    add_countersignatures,
    add_signer,
    authorize,
    set_authorizing_users,
    signer_infos,
)
from smime_milter.release.rules import (
    AUTHORIZING_USERS_HEADER,
    HOLD,
    ORIGINAL_RECIPIENTS_HEADER,
    RELEASE_STATUS_HEADER,
    MessageContext,
    ReleaseDecision,
    ReleaseRule,
    assess,
    divert,
    proven_users,
    recipients_field,
    select_rule,
    status_stamp,
)
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier, VerifyPolicy
from tests.corpora import corpus
from tests.support import smime
from tests.support.pki import Identity, TestPki, make_crl, make_leaf
from tests.support.verdicts import NOW, make_verifier

OFFICER1 = "officer1@example.com"
OFFICER2 = "officer2@example.com"
CLERK = "clerk@example.com"
OFFICERS = "release-officers@example.org"
RULE = ReleaseRule("hq", (OFFICER1, OFFICER2), OFFICERS)
TWO_MAN = ReleaseRule("two-man", (OFFICER1, OFFICER2), OFFICERS, required=2)
BODY = "Release this report, please.\n"
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Staff:
    officer1: Identity
    officer2: Identity
    clerk: Identity


@pytest.fixture(scope="module")
def staff(pki: TestPki) -> Staff:
    def leaf(email: str) -> Identity:
        return make_leaf(pki.intermediate, email, now=NOW, key_label=f"release:{email}")
    return Staff(leaf(OFFICER1), leaf(OFFICER2), leaf(CLERK))


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


def signing(ident: Identity) -> SigningIdentity:
    return SigningIdentity(key=ident.key, certificate=ident.cert, chain=ident.chain)


def detached(pki: TestPki, text: str = BODY) -> bytes:
    return smime.multipart_signed(smime.text_entity(text), pki.rsa, signing_time=NOW)


def opaque(pki: TestPki, text: str = BODY) -> bytes:
    return smime.opaque_signed(smime.text_entity(text), pki.rsa, signing_time=NOW)


def unsigned(text: str = BODY) -> bytes:
    return smime.wrap_message(smime.text_entity(text), from_addr="alice@example.com")


def headers(message: bytes) -> list[tuple[str, str]]:
    return mime.parse_entity(message).headers


def decide(message: bytes, verifier: Verifier, rule: ReleaseRule = RULE) -> ReleaseDecision:
    return assess(rule, headers(message), verifier.verify(message))


def authorized_by(message: bytes, verifier: Verifier, *people: Identity) -> bytes:
    for person in people:
        message = authorize(message, signing(person), verifier).message
    return message


def countersigned_as(message: bytes, person: Identity, listed: list[str]) -> bytes:
    """Countersigned by ``person`` with ``listed`` in the field, bypassing the
    checks authorize() makes (for certificates it would refuse)."""
    signed = add_countersignatures(message, signing(person), [0], NOW)
    return set_authorizing_users(signed, listed)


def with_raw_field(message: bytes, value: str) -> bytes:
    """One more MMHS-Authorizing-Users field, written as given."""
    return f"{AUTHORIZING_USERS_HEADER}: {value}\r\n".encode() + message


def _cms_entity(message: bytes) -> mime.Entity:
    top = mime.parse_entity(message)
    if top.content_type.mime_type != "multipart/signed":
        return top
    parts = mime.split_multipart(top.body, top.content_type.param("boundary") or "")
    return mime.parse_entity(parts[1])


def cms_blob(message: bytes) -> bytes:
    return mime.decode_transfer_encoding(_cms_entity(message))


def with_cms(message: bytes, blob: bytes) -> bytes:
    """``message`` with the base64 of its top-level SignedData replaced."""
    old = _cms_entity(message).body.rstrip(b"\r\n")
    assert message.count(old) == 1
    return message.replace(old, base64.encodebytes(blob).replace(b"\n", b"\r\n").rstrip())


def flip_last_byte(blob: bytes, value: bytes) -> bytes:
    assert blob.count(value) == 1
    at = blob.index(value) + len(value) - 1
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def first_countersignature(message: bytes) -> asn1_cms.SignerInfo:
    return countersignatures(signer_infos(message)[0])[0]


# --------------------------------------------------------------------------- rule selection


def context(
    sender: str = "nobody@elsewhere.org",
    from_: tuple[str, ...] = (),
    recipients: tuple[str, ...] = ("bob@example.org",),
    daemon: str | None = None,
    port: int | None = None,
) -> MessageContext:
    return MessageContext(sender, from_, recipients, daemon_name=daemon, daemon_port=port)


def rule(name: str = "r", **selectors: object) -> ReleaseRule:
    return ReleaseRule(name, (OFFICER1,), OFFICERS, **selectors)  # type: ignore[arg-type]


@pytest.mark.parametrize(("selectors", "ctx", "applies"), [
    ({"senders": ("alice@example.com",)}, context("alice@example.com"), True),
    ({"senders": ("alice@example.com",)}, context("<Alice@Example.COM>"), True),
    # A protected user cannot slip out under another envelope sender ...
    ({"senders": ("alice@example.com",)},
     context("bounces@lists.example.net", ("alice@example.com",)), True),
    # ... nor under another From.
    ({"senders": ("alice@example.com",)},
     context("alice@example.com", ("someone@example.net",)), True),
    ({"senders": ("alice@example.com",)}, context("bob@example.com", ("carol@example.com",)),
     False),
    ({"senders": ("alice@example.com",)}, context("", ()), False),
    ({"senders": ("example.com",)}, context("x@example.com"), True),
    ({"senders": ("example.com",)}, context("x@mail.hq.example.com"), True),
    ({"senders": ("example.com",)}, context("x@badexample.com"), False),
    ({"senders": ("example.com",)}, context("x@example.com.evil.org"), False),
    ({"recipient_domains": ("example.mil",)}, context(recipients=("a@hq.example.mil",)), True),
    ({"recipient_domains": ("example.mil",)},
     context(recipients=("a@example.org", "b@Example.MIL")), True),
    ({"recipient_domains": ("example.mil",)}, context(recipients=("a@notexample.mil",)), False),
    ({"daemons": ("submission",)}, context(daemon="submission"), True),
    ({"daemons": ("submission",)}, context(daemon="smtpd"), False),
    ({"daemons": ("submission",)}, context(daemon=None), False),
    ({"ports": (587, 465)}, context(port=465), True),
    ({"ports": (587,)}, context(port=25), False),
    # The {daemon_port} macro was not sent: fail closed, the rule applies.
    ({"ports": (587,)}, context(port=None), True),
    ({"all": True}, context(), True),
    # Several selectors: all must match.
    ({"senders": ("example.com",), "ports": (587,)}, context("a@example.com", port=587), True),
    ({"senders": ("example.com",), "ports": (587,)}, context("a@example.com", port=25), False),
    ({"senders": ("example.com",), "daemons": ("submission",)},
     context("a@example.org", daemon="submission"), False),
    # No selector and not all: a rule that selects nothing.
    ({}, context("alice@example.com"), False),
])
def test_rule_selection(selectors: dict[str, object], ctx: MessageContext, applies: bool) -> None:
    chosen = rule(**selectors)
    assert select_rule([chosen], ctx) == (chosen if applies else None)


def test_first_matching_rule_wins() -> None:
    vault = rule("vault", senders=("vault.example.com",))
    hq = rule("hq", senders=("example.com",))
    catch_all = rule("rest", all=True)
    rules = [vault, hq, catch_all]

    assert select_rule(rules, context("a@vault.example.com")) is vault
    assert select_rule(rules, context("a@example.com")) is hq
    assert select_rule(rules, context("a@example.org")) is catch_all
    assert select_rule([hq, vault], context("a@vault.example.com")) is hq


def test_no_rule_applies() -> None:
    assert select_rule([rule(senders=("example.com",))], context("a@example.org")) is None
    assert select_rule([], context("a@example.com")) is None


# --------------------------------------------------------------------------- released


@pytest.mark.parametrize("build", [detached, opaque], ids=["multipart-signed", "signed-data"])
def test_countersigned_message_is_released(build, pki: TestPki, staff: Staff,
                                           verifier: Verifier) -> None:
    message = authorized_by(build(pki), verifier, staff.officer1)

    decision = decide(message, verifier)
    assert decision.released
    assert decision.authorized == (OFFICER1,)
    assert decision.reasons == ()
    assert decision.summary == f"released by {OFFICER1} (1 of 1 authorizations)"
    counter = verifier.verify(message).signers[0].countersignatures[0]
    assert counter.emails == (OFFICER1,)
    assert counter.proven


def test_unsigned_original_signed_by_officer_is_released(staff: Staff, verifier: Verifier) -> None:
    done = authorize(unsigned(), signing(staff.officer1), verifier)
    assert done.action == "signed"
    assert done.authorizing_users == (OFFICER1,)

    decision = decide(done.message, verifier)
    assert decision.released, decision.reasons
    assert decision.authorized == (OFFICER1,)


def test_unsigned_original_with_forged_field_is_not_released(verifier: Verifier) -> None:
    decision = decide(with_raw_field(unsigned(), OFFICER1), verifier)
    assert not decision.released
    assert decision.reasons == (
        "message carries no S/MIME signature that can prove an authorization (not signed)",
    )


# --------------------------------------------------------------------------- the field


def test_no_field_is_not_released(pki: TestPki, verifier: Verifier) -> None:
    decision = decide(detached(pki), verifier)
    assert not decision.released
    assert decision.authorized == ()
    assert decision.reasons == ("no MMHS-Authorizing-Users header field",)
    assert decision.summary == (
        "not released (0 of 1 authorizations): no MMHS-Authorizing-Users header field"
    )


def test_field_twice_is_not_released(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    assert decide(message, verifier).released

    decision = decide(with_raw_field(message, OFFICER1), verifier)
    assert not decision.released
    assert decision.reasons == (
        "MMHS-Authorizing-Users appears 2 times (at most once is allowed)",
    )


@pytest.mark.parametrize(("value", "problem"), [
    (f"{OFFICER1} {OFFICER2}", "not an address list"),
    ("<<bad>>", "not an address list"),
    ("Release officers: ;", "the address list names no mailbox"),
])
def test_malformed_field_is_not_released(value: str, problem: str, pki: TestPki, staff: Staff,
                                         verifier: Verifier) -> None:
    # Both officers really countersigned: only the field is wrong.
    message = authorized_by(detached(pki), verifier, staff.officer1, staff.officer2)
    decision = decide(with_raw_field(set_authorizing_users(message, []), value), verifier)
    assert not decision.released
    assert decision.authorized == ()
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith("MMHS-Authorizing-Users is malformed: ")
    assert problem in decision.reasons[0]


@pytest.mark.parametrize("value", [
    "Release officers: officer1@example.com;",
    "Officer One <officer1@example.com>",
    "officer1@example.com, Officer1@EXAMPLE.com",
    "officer1@example.com (first officer)",
])
def test_well_formed_field_variants(value: str, pki: TestPki, staff: Staff,
                                    verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    decision = decide(with_raw_field(set_authorizing_users(message, []), value), verifier)
    assert decision.released, decision.reasons
    assert decision.authorized == (OFFICER1,)


def test_listed_user_without_countersignature(pki: TestPki, verifier: Verifier) -> None:
    message = set_authorizing_users(detached(pki), [OFFICER1])
    decision = decide(message, verifier)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: listed but no countersignature or signature by this user",
    )
    assert proven_users(headers(message), verifier.verify(message)) == ()


def test_countersignature_of_unlisted_user(pki: TestPki, staff: Staff,
                                           verifier: Verifier) -> None:
    message = countersigned_as(detached(pki), staff.officer1, [OFFICER2])
    decision = decide(message, verifier)
    assert not decision.released
    assert decision.authorized == ()
    assert decision.reasons == (
        f"{OFFICER2}: listed but no countersignature or signature by this user",
        f"countersignature by {OFFICER1}, who is not listed in MMHS-Authorizing-Users, "
        "does not count",
    )


def test_listed_user_who_is_no_releaser(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    done = authorize(detached(pki), signing(staff.clerk), verifier)
    assert done.authorizing_users == (CLERK,)

    decision = decide(done.message, verifier)
    assert not decision.released
    assert decision.reasons == (f"{CLERK}: not an authorized releaser under rule hq",)
    # The clerk's countersignature itself is fine; only the policy refuses it.
    assert proven_users(headers(done.message), verifier.verify(done.message)) == (CLERK,)


def test_unauthorized_user_beside_a_releaser_still_blocks(pki: TestPki, staff: Staff,
                                                         verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1, staff.clerk)
    decision = decide(message, verifier)
    assert not decision.released
    assert decision.authorized == (OFFICER1,)
    assert decision.reasons == (f"{CLERK}: not an authorized releaser under rule hq",)


# --------------------------------------------------------------------------- certificates


def test_revoked_releaser_certificate(pki: TestPki, staff: Staff) -> None:
    message = countersigned_as(detached(pki), staff.officer1, [OFFICER1])
    revoking = make_crl(pki.intermediate, [(staff.officer1.cert, NOW - 2 * DAY)],
                        this_update=NOW - DAY, next_update=NOW + 30 * DAY, number=7)

    assert decide(message, make_verifier(pki, crls=[pki.crl])).released
    decision = decide(message, make_verifier(pki, crls=[revoking]))
    assert not decision.released
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith(f"{OFFICER1}: signer certificate chain revoked at ")
    assert "revoked at 00:00:00 on 2026-05-30" in decision.reasons[0]


def test_expired_releaser_certificate(pki: TestPki, verifier: Verifier) -> None:
    expired = make_leaf(pki.intermediate, OFFICER1, now=NOW, not_before=NOW - 400 * DAY,
                        not_after=NOW - DAY, key_label="release:expired-officer1")
    message = countersigned_as(detached(pki), expired, [OFFICER1])

    decision = decide(message, verifier)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: certificate expired at 2026-05-31T00:00:00Z "
        "(checked at 2026-06-01T00:00:00Z)",
    )


def test_releaser_ca_that_issued_the_certificate(pki: TestPki, staff: Staff,
                                                 verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    ours = ReleaseRule("ca", (OFFICER1,), OFFICERS,
                       releaser_cas=(hashlib.sha256(pki.intermediate.cert_der).digest(),))
    decision = decide(message, verifier, ours)
    assert decision.released, decision.reasons
    assert decision.authorized == (OFFICER1,)


def test_releaser_ca_that_did_not_issue_the_certificate(pki: TestPki, staff: Staff,
                                                        verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    foreign = ReleaseRule("ca", (OFFICER1,), OFFICERS,
                          releaser_cas=(hashlib.sha256(pki.other_root.cert_der).digest(),))
    decision = decide(message, verifier, foreign)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: certificate not issued by a releasing CA of rule ca",
    )


# --------------------------------------------------------------------------- tampering


def test_tampered_countersignature(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    value = first_countersignature(message)["signature"].native
    tampered = with_cms(message, flip_last_byte(cms_blob(message), value))

    verdict = verifier.verify(tampered)
    assert verdict.signers[0].ok  # the originator's signature is untouched
    counter = verdict.signers[0].countersignatures[0]
    assert counter.emails == (OFFICER1,)
    assert not counter.signature_ok
    decision = assess(RULE, headers(tampered), verdict)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: signature value does not verify with the signer's public key",
    )


def test_content_altered_after_countersigning(pki: TestPki, staff: Staff,
                                              verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    altered = message.replace(b"Release this report", b"Release that report")
    assert altered != message

    decision = decide(altered, verifier)
    assert not decision.released
    assert decision.authorized == ()
    assert decision.reasons == (
        "the originator's signature is not valid: "
        "message digest mismatch: the signed content was altered",
    )


def test_signature_on_one_part_only(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    signed_entity = smime.multipart_signed_entity(smime.text_entity(BODY), pki.rsa,
                                                  signing_time=NOW)
    alone = smime.wrap_message(signed_entity)
    countersigned = add_countersignatures(alone, signing(staff.officer1), [0], NOW)
    part = countersigned[len(alone) - len(signed_entity):]
    mixed = (
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\n" + part + b"\r\n--outer\r\n"
        + smime.text_entity("Also: attack at dawn.\n") + b"\r\n--outer--\r\n"
    )
    message = smime.wrap_message(mixed, extra_headers=[(AUTHORIZING_USERS_HEADER, OFFICER1)])

    verdict = verifier.verify(message)
    assert verdict.signers[0].countersignatures[0].proven  # the proof exists, in part 1
    decision = assess(RULE, headers(message), verdict)
    assert not decision.released
    assert decision.reasons == (
        "the signature does not stand for the message: "
        "signature covers only MIME part 1; part(s) 2 not signed",
    )


# --------------------------------------------------------------------------- two releasers


def test_two_required_one_present(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    decision = decide(message, verifier, TWO_MAN)
    assert not decision.released
    assert decision.authorized == (OFFICER1,)
    assert decision.reasons == ("1 of 2 required authorizations",)
    assert decision.summary == (
        "not released (1 of 2 authorizations): 1 of 2 required authorizations"
    )


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["officer1-first", "officer2-first"])
def test_two_required_both_present(order: tuple[int, int], pki: TestPki, staff: Staff,
                                   verifier: Verifier) -> None:
    people = (staff.officer1, staff.officer2)
    names = (OFFICER1, OFFICER2)
    message = authorized_by(detached(pki), verifier, *(people[i] for i in order))

    decision = decide(message, verifier, TWO_MAN)
    assert decision.released, decision.reasons
    assert decision.authorized == tuple(names[i] for i in order)
    assert decision.summary == (
        f"released by {names[order[0]]}, {names[order[1]]} (2 of 2 authorizations)"
    )


def nested(message: bytes, first: Identity, second: Identity) -> bytes:
    """``first`` countersigns the originator, ``second`` countersigns ``first``."""
    blob = cms_blob(message)
    signed = asn1_cms.ContentInfo.load(blob)["content"]
    parent = signed["signer_infos"][0]
    inner = countersignature(signing(first), parent, NOW)
    inner = asn1_cms.SignerInfo.load(
        with_countersignature(inner, countersignature(signing(second), inner, NOW)))
    certificates = (*signing(first).certificates_der, *signing(second).certificates_der)
    rebuilt = amend_signed_data(signed, [with_countersignature(parent, inner)],
                                certificates=certificates)
    return set_authorizing_users(with_cms(message, rebuilt), [OFFICER1, OFFICER2])


def test_nested_countersignature_counts(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    message = nested(detached(pki), staff.officer1, staff.officer2)

    verdict = verifier.verify(message)
    (first,) = verdict.signers[0].countersignatures
    (second,) = first.countersignatures
    assert (first.emails, first.proven) == ((OFFICER1,), True)
    assert (second.emails, second.proven) == ((OFFICER2,), True)
    decision = assess(TWO_MAN, headers(message), verdict)
    assert decision.released, decision.reasons
    assert decision.authorized == (OFFICER1, OFFICER2)


def test_nested_countersignature_on_a_broken_one_counts_for_nothing(
    pki: TestPki, staff: Staff, verifier: Verifier
) -> None:
    message = nested(detached(pki), staff.officer1, staff.officer2)
    value = first_countersignature(message)["signature"].native
    broken = with_cms(message, flip_last_byte(cms_blob(message), value))

    verdict = verifier.verify(broken)
    first = verdict.signers[0].countersignatures[0]
    assert not first.signature_ok
    decision = assess(TWO_MAN, headers(broken), verdict)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: {first.errors[0]}",
        f"{OFFICER2}: listed but no countersignature or signature by this user",
    )


# --------------------------------------------------------------------------- authorize()


def test_already_authorized_leaves_the_message_alone(pki: TestPki, staff: Staff,
                                                     verifier: Verifier) -> None:
    message = authorized_by(detached(pki), verifier, staff.officer1)
    again = authorize(message, signing(staff.officer1), verifier)
    assert again.action == "already authorized"
    assert again.message == message
    assert again.authorizing_users == (OFFICER1,)


def test_second_authorizer_keeps_the_first(pki: TestPki, staff: Staff,
                                           verifier: Verifier) -> None:
    first = authorize(detached(pki), signing(staff.officer1), verifier)
    second = authorize(first.message, signing(staff.officer2), verifier)
    assert (first.action, second.action) == ("countersigned", "countersigned")
    assert second.authorizing_users == (OFFICER1, OFFICER2)
    assert mime.parse_entity(second.message).get_all(AUTHORIZING_USERS_HEADER.lower()) == [
        f"{OFFICER1}, {OFFICER2}"
    ]
    verdict = verifier.verify(second.message)
    assert proven_users(headers(second.message), verdict) == (OFFICER1, OFFICER2)
    assert [c.emails for c in verdict.signers[0].countersignatures] == [(OFFICER1,), (OFFICER2,)]


def test_unproven_listed_user_is_dropped(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    forged = set_authorizing_users(detached(pki), [OFFICER2])
    done = authorize(forged, signing(staff.officer1), verifier)
    assert done.authorizing_users == (OFFICER1,)
    assert mime.parse_entity(done.message).get_all(AUTHORIZING_USERS_HEADER.lower()) == [
        OFFICER1
    ]
    assert decide(done.message, verifier).released


def test_broken_originator_signature_is_refused(pki: TestPki, staff: Staff,
                                                verifier: Verifier) -> None:
    altered = detached(pki).replace(b"Release this report", b"Release that report")
    with pytest.raises(AuthorizeError) as caught:
        authorize(altered, signing(staff.officer1), verifier)
    assert str(caught.value) == ("the originator's signature is not valid: "
                                 "message digest mismatch: the signed content was altered")


def test_untrusted_authorizer_is_refused(pki: TestPki, verifier: Verifier) -> None:
    with pytest.raises(AuthorizeError) as caught:
        authorize(detached(pki), signing(pki.untrusted), verifier)
    text = str(caught.value)
    assert text.startswith("the authorization by untrusted@example.com would not count: ")
    assert "trust anchor" in text


def test_address_not_in_certificate_is_refused(pki: TestPki, staff: Staff,
                                               verifier: Verifier) -> None:
    with pytest.raises(AuthorizeError) as caught:
        authorize(detached(pki), signing(staff.officer1), verifier, address=OFFICER2)
    assert str(caught.value) == (
        f"the certificate does not carry {OFFICER2} (it carries {OFFICER1})"
    )


def test_address_choice_among_the_certificate_addresses(pki: TestPki,
                                                        verifier: Verifier) -> None:
    two = make_leaf(pki.intermediate, None, now=NOW, emails=["duty@example.com", OFFICER2],
                    key_label="release:two-addresses")
    done = authorize(detached(pki), signing(two), verifier, address=OFFICER2)
    assert done.authorizing_users == (OFFICER2,)
    assert decide(done.message, verifier).released


# --------------------------------------------------------------------------- diversion


RECIPIENTS = ("bob@example.com", "carol@example.org")


def test_diversion_to_the_officers(pki: TestPki, verifier: Verifier) -> None:
    decision = decide(detached(pki), verifier)
    diversion = divert(RULE, decision, RECIPIENTS)

    assert diversion.delete_recipients == RECIPIENTS
    assert diversion.add_recipients == (OFFICERS,)
    assert diversion.quarantine_reason is None
    added = tuple((name, value.replace("\n ", " ")) for name, value in diversion.add_headers)
    assert added == (
        (ORIGINAL_RECIPIENTS_HEADER, "<bob@example.com>, <carol@example.org>"),
        (RELEASE_STATUS_HEADER,
         f"held; rule=hq; divert-to={OFFICERS}; reason=\"not released (0 of 1 "
         "authorizations): no MMHS-Authorizing-Users header field\""),
    )


def test_hold_rule_quarantines_and_keeps_recipients(pki: TestPki, verifier: Verifier) -> None:
    vault = ReleaseRule("vault", (OFFICER1,), HOLD)
    decision = decide(set_authorizing_users(detached(pki), [OFFICER1]), verifier, vault)
    diversion = divert(vault, decision, RECIPIENTS)

    assert vault.holds
    assert diversion.delete_recipients == ()
    assert diversion.add_recipients == ()
    assert diversion.quarantine_reason == f"MMHS release: {decision.summary}"
    assert OFFICER1 in diversion.quarantine_reason
    assert dict(diversion.add_headers)[ORIGINAL_RECIPIENTS_HEADER] == (
        "<bob@example.com>, <carol@example.org>"
    )
    assert dict(diversion.add_headers)[RELEASE_STATUS_HEADER].replace("\n ", " ").startswith(
        "held; rule=vault; divert-to=hold; reason=\"not released (0 of 1 authorizations): "
    )


def test_released_stamp(pki: TestPki, staff: Staff, verifier: Verifier) -> None:
    decision = decide(authorized_by(detached(pki), verifier, staff.officer1), verifier)
    assert status_stamp(decision, None) == f'released; rule=hq; authorized="{OFFICER1}"'


@pytest.mark.parametrize("recipients", [
    tuple(f"r{i:02}@example.org" for i in range(20)),
    tuple(f"recipient-number-{i:02}@division.example.org" for i in range(12)),
    ("a@example.org", "x" * 40 + "@example.org", "b" * 60 + "@example.org", "c@example.org"),
], ids=["short", "long", "mixed"])
def test_long_recipient_list_folds(recipients: tuple[str, ...]) -> None:
    value = recipients_field(recipients)

    lines = f"{ORIGINAL_RECIPIENTS_HEADER}: {value}".split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line.startswith("\t") for line in lines[1:])
    assert "\r" not in value
    assert tuple(a.text for a in mime.address_list(value)) == recipients


def test_single_recipient_is_one_line() -> None:
    assert recipients_field(["bob@example.com"]) == "<bob@example.com>"


def test_stamp_is_safe_whatever_the_reasons_say() -> None:
    hostile = ReleaseDecision(
        "hq", False, 1, (),
        ('"quoted" \\back\\slash\r\nInjected: header\x00\x1b[31m\tend', "caf\u00e9 " * 100),
    )
    folded = status_stamp(hostile, OFFICERS)
    assert all(len(line) <= 78 for line in
               f"{RELEASE_STATUS_HEADER}: {folded}".split("\n")), folded
    stamp = folded.replace("\n ", " ")  # unfolded
    reason = stamp.split("reason=", 1)[1]

    assert reason.startswith('"') and reason.endswith('"')
    inner = reason[1:-1]
    assert '"' not in inner and "\\" not in inner
    assert all(" " <= c <= "~" for c in stamp), stamp
    assert len(inner) <= 300 and inner.endswith("...")
    assert "Injected: header" in inner  # kept as text, not as a new field
    released = ReleaseDecision("hq", True, 1, ('"evil"\\@example.com',), ())
    assert all(" " <= c <= "~" and c not in '\\' for c in status_stamp(released, None))
    assert status_stamp(released, None).count('"') == 2


# --------------------------------------------------------------------------- RFC 4134 §4.4


VECTOR_AT = datetime(2003, 5, 14, 16, tzinfo=UTC)
LEGACY = AlgorithmPolicy(allow_sha1=True, min_rsa_bits=1024)
COUNTER_DIGEST = "025f494e39985085b366d38a1f7b9e69aafbd833"


@pytest.fixture(scope="module")
def vector() -> Path:
    return corpus("countersignature")


@pytest.fixture(scope="module")
def vector_message(vector: Path) -> bytes:
    entity = smime.pkcs7_mime_entity((vector / "4.4.bin").read_bytes(), "signed-data")
    return smime.wrap_message(entity, from_addr="AliceDSS@example.com",
                              extra_headers=[(AUTHORIZING_USERS_HEADER, "AliceRSA@example.com")])


def vector_verifier(vector: Path, policy: VerifyPolicy) -> Verifier:
    trust = TrustStore.load([vector / "CarlDSSSelf.cer", vector / "CarlRSASelf.cer"])
    return Verifier(trust, policy, clock=lambda: VECTOR_AT)


ALICE_RSA_RULE = ReleaseRule("rfc4134", ("AliceRSA@example.com",), OFFICERS)


def test_vector_countersignature_digest_covers_the_parent_signature(vector: Path) -> None:
    signed = parse_signed_data((vector / "4.4.bin").read_bytes())
    (parent,) = signed.signer_infos
    (counter,) = countersignatures(parent)
    digest = next(a["values"][0].native for a in counter["signed_attrs"]
                  if a["type"].native == "message_digest")
    assert digest.hex() == COUNTER_DIGEST
    assert hashlib.sha1(signature_octets(parent)).hexdigest() == COUNTER_DIGEST


def test_vector_countersignature_is_proven_and_released(vector: Path,
                                                        vector_message: bytes) -> None:
    verifier = vector_verifier(vector, VerifyPolicy(algorithms=LEGACY,
                                                    revocation=RevocationMode.OFF))
    verdict = verifier.verify(vector_message, at=VECTOR_AT)

    assert verdict.status is Status.SIGNED_VERIFIED, verdict.errors
    (originator,) = verdict.signers
    assert originator.emails == ("AliceDSS@example.com",)
    (counter,) = originator.countersignatures
    assert counter.emails == ("AliceRSA@example.com",)
    assert counter.signature_ok and counter.chain_ok and counter.proven
    assert counter.errors == ()
    assert counter.digest_algorithm == "sha1"
    assert counter.signing_time == datetime(2003, 5, 14, 15, 39, tzinfo=UTC)
    assert not counter.from_match
    decision = assess(ALICE_RSA_RULE, headers(vector_message), verdict)
    assert decision.released, decision.reasons
    assert decision.authorized == ("AliceRSA@example.com",)


def test_vector_originator_revoked_by_embedded_crl(vector: Path, vector_message: bytes) -> None:
    verifier = vector_verifier(vector, VerifyPolicy(algorithms=LEGACY,
                                                    revocation=RevocationMode.SOFT))
    verdict = verifier.verify(vector_message, at=VECTOR_AT)

    assert verdict.status is Status.SIGNED_FAILED
    assert verdict.signers[0].serial == 200
    assert "revoked" in (verdict.errors or ("",))[0]
    decision = assess(ALICE_RSA_RULE, headers(vector_message), verdict)
    assert not decision.released
    assert decision.reasons[0].startswith("the originator's signature is not valid: ")
    assert "revoked" in decision.reasons[0]


def test_vector_weak_algorithms_under_default_policy(vector: Path,
                                                     vector_message: bytes) -> None:
    verdict = vector_verifier(vector, VerifyPolicy()).verify(vector_message, at=VECTOR_AT)

    counter = verdict.signers[0].countersignatures[0]
    assert counter.emails == ("AliceRSA@example.com",)
    assert not counter.proven
    text = " | ".join(counter.errors)
    assert "SHA-1" in text
    assert "RSA key of 1024 bits" in text
    assert not assess(ALICE_RSA_RULE, headers(vector_message), verdict).released


# --------------------------------------------------------------------------- separation of duties


def test_the_drafter_cannot_authorize_their_own_message(staff: Staff,
                                                        verifier: Verifier) -> None:
    own = smime.wrap_message(smime.text_entity(BODY), from_addr=OFFICER1)
    with pytest.raises(AuthorizeError, match="drafted this message"):
        authorized_by(own, verifier, staff.officer1)
    # Made by hand anyway, the milter does not count it.
    message = set_authorizing_users(add_signer(own, signing(staff.officer1), NOW), [OFFICER1])

    decision = decide(message, verifier)
    assert not decision.released
    assert decision.reasons == (
        f"{OFFICER1}: the originator cannot authorize their own message",
    )
    # A second, independent releaser is still needed.
    decision = decide(authorized_by(message, verifier, staff.officer2), verifier)
    assert not decision.released
    assert decision.authorized == (OFFICER2,)


def test_with_a_sender_the_from_address_may_authorize(staff: Staff,
                                                      verifier: Verifier) -> None:
    """Sender drafted on behalf of From: From is an authorizing user in the
    MIXER mapping (§5.1), so From's own authorization counts."""
    drafted = smime.wrap_message(smime.text_entity(BODY), from_addr=OFFICER1,
                                 extra_headers=[("Sender", CLERK)])
    decision = decide(authorized_by(drafted, verifier, staff.officer1), verifier)
    assert decision.released, decision.reasons
    assert decision.authorized == (OFFICER1,)

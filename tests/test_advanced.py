"""smime-advanced round trips: every combination of the draft's four arguments
builds a message that our engine verifies (after decrypting where encrypted)
and that ``openssl cms -verify`` / ``-decrypt`` accept; each error case gives
its JMAP error name; RFC 9788 header protection survives the trip.

The stores are the real ones (``keystore.SigningKeys`` over a private
directory, ``addressbook.AddressBook`` over a directory of certificates)."""

from __future__ import annotations

import email
import email.policy
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms

from smime_milter import bootstrap
from smime_milter.advanced import compose as advanced
from smime_milter.advanced.addressbook import AddressBook
from smime_milter.advanced.compose import (
    Advanced,
    InvalidEmail,
    SignedSenderNotAllowed,
    ValidEncryptionKeyNotFound,
)
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.cms.envelope import DecryptionKey
from smime_milter.config.reader import AdvancedConfig
from smime_milter.jmap import methods as jmap
from smime_milter.mail import mime
from smime_milter.model import Status
from smime_milter.trust.chain import ChainValidator, TrustStore
from tests.support.pki import Identity, TestPki, build_pki, make_leaf
from tests.support.smime import openssl, openssl_decrypt, openssl_verify_result
from tests.support.verdicts import NOW, anchor, assert_verified, make_verifier

BOTH = frozenset({"digital_signature", "key_encipherment"})
AGREEMENT = frozenset({"digital_signature", "key_agreement"})
ENCRYPT_ONLY = frozenset({"key_encipherment"})
SIGN_ONLY = frozenset({"digital_signature"})

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>, carol@example.net\r\n"
    b"Cc: dave@example.org\r\n"
    b"Bcc: erin@example.org\r\n"
    b"Subject: World domination\r\n"
    b"Keywords: plans\r\n"
    b"Date: Sat, 10 Jul 2021 11:03:11 +1000\r\n"
    b"Message-ID: <k192@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Language: en\r\n"
    b"\r\n"
    b"I have the most brilliant plan.\r\nLet me tell you all about it.\r\n"
)
BODY = b"I have the most brilliant plan.\r\nLet me tell you all about it.\r\n"


@dataclass(frozen=True)
class World:
    pki: TestPki
    alice: Identity
    people: dict[str, Identity]
    ca_files: list[Path]
    engine: Advanced


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _chain_pem(identity: Identity) -> bytes:
    return b"".join(Identity(identity.key, c).cert_pem for c in identity.chain)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pki = build_pki(NOW)
    issuer = pki.intermediate
    alice = make_leaf(issuer, "alice@example.com", now=NOW, key_usage=BOTH, key_label="adv:alice")
    people = {
        "alice@example.com": alice,
        "bob@example.org": make_leaf(issuer, "bob@example.org", now=NOW,
                                     key_usage=ENCRYPT_ONLY, key_label="adv:bob"),
        "carol@example.net": make_leaf(issuer, "carol@example.net", "ec256", now=NOW,
                                       key_usage=AGREEMENT, key_label="adv:carol"),
        "dave@example.org": make_leaf(issuer, "dave@example.org", "ec384", now=NOW,
                                      key_usage=AGREEMENT, key_label="adv:dave"),
        "erin@example.org": make_leaf(issuer, "erin@example.org", now=NOW,
                                      key_usage=BOTH, key_label="adv:erin"),
    }
    base = tmp_path_factory.mktemp("advanced")
    keys = _private(base / "keys")
    _write(keys / "alice.pem", alice.key_pem + alice.cert_pem + _chain_pem(alice), 0o600)
    book = base / "addressbook"
    book.mkdir()
    for address, person in people.items():
        if address != "alice@example.com":
            _write(book / f"{address}.pem", person.cert_pem + _chain_pem(person))
    ca_files = [base / "root.pem", base / "intermediate.pem"]
    _write(ca_files[0], pki.root.cert_pem)
    _write(ca_files[1], pki.intermediate.cert_pem)
    signing_keys = SigningKeys.load(keys)
    validator = ChainValidator(TrustStore(anchors=(anchor(pki.root),)))
    accounts = AdvancedConfig(accounts=(("alice", ("alice@example.com",)),
                                        ("ops", ("example.org",))))
    engine = Advanced(signing_keys, AddressBook(book, signing_keys, None, validator),
                      accounts.may_sign_as, clock=lambda: NOW)
    return World(pki, alice, people, ca_files, engine)


def _decryption_key(identity: Identity) -> DecryptionKey:
    return DecryptionKey(identity.key, identity.cert)


def _inner(message: bytes, recipient: Identity) -> bytes:
    """openssl's decryption of ``message``: the entity that was encrypted."""
    return mime.canonicalize(openssl_decrypt(message, recipient))


COMBINATIONS = list(itertools.product([False, True], repeat=4))


@pytest.mark.process
@pytest.mark.parametrize(("sign", "encrypt", "protect", "opaque"), COMBINATIONS)
def test_every_combination_round_trips_through_our_engine_and_openssl(
        world: World, sign: bool, encrypt: bool, protect: bool, opaque: bool):
    result = world.engine.apply(MESSAGE, sign, encrypt, protect, opaque, account="alice")
    parsed = mime.parse_entity(result)
    content_type = parsed.content_type
    if not sign and not encrypt:
        assert mime.canonicalize(result) == MESSAGE  # nothing asked, nothing changed
        return
    bob = world.people["bob@example.org"]
    verifier = make_verifier(world.pki, keys=[_decryption_key(bob)])
    verdict = verifier.verify(result)
    if encrypt:
        assert content_type.mime_type == "application/pkcs7-mime"
        assert content_type.param("smime-type") == "enveloped-data"
        inner = _inner(result, bob)
        if sign:
            assert_verified(verdict, "alice@example.com",
                            status=Status.ENCRYPTED_SIGNED_VERIFIED)
            # openssl verifies the decrypted signed entity too.
            checked = openssl_verify_result(inner, world.ca_files)
            assert checked.returncode == 0, checked.stderr
            content = mime.canonicalize(checked.stdout)
        else:
            # Our engine opened the envelope: an unsigned inner entity is "unknown".
            assert verdict.status is Status.UNKNOWN, verdict
            assert "decrypted content is not signed" in verdict.notes
            content = inner
    else:
        assert_verified(verdict, "alice@example.com")
        if opaque:
            assert content_type.mime_type == "application/pkcs7-mime"
            assert content_type.param("smime-type") == "signed-data"
        else:
            assert content_type.mime_type == "multipart/signed"
            assert content_type.param("protocol") == "application/pkcs7-signature"
            assert content_type.param("micalg") == "sha-256"
        checked = openssl_verify_result(result, world.ca_files)
        assert checked.returncode == 0, checked.stderr
        content = mime.canonicalize(checked.stdout)
    if sign and encrypt:
        inner_type = mime.parse_entity(inner).content_type
        expected = ("application/pkcs7-mime" if opaque else "multipart/signed")
        assert inner_type.mime_type == expected  # signed first, then encrypted
    payload = mime.parse_entity(content)
    assert payload.body == BODY
    assert payload.content_type.mime_type == "text/plain"
    assert ("Content-Language", "en") in payload.headers
    hp = payload.content_type.param("hp")
    if protect:
        assert hp == ("cipher" if encrypt else "clear")
        assert ("Subject", "World domination") in payload.headers
        assert ("From", "Alice <alice@example.com>") in payload.headers
        assert not any(name.lower() == "bcc" for name, _ in payload.headers)
    else:
        assert hp is None
        assert not any(name.lower() == "subject" for name, _ in payload.headers)
    outer = dict((name.lower(), value) for name, value in parsed.headers)
    if encrypt and protect:
        assert outer["subject"] == "[...]" and "keywords" not in outer
        hp_outer = [v for n, v in payload.headers if n == "HP-Outer"]
        assert "Subject: [...]" in hp_outer and "From: Alice <alice@example.com>" in hp_outer
    else:
        assert outer["subject"] == "World domination"
    assert outer["from"] == "Alice <alice@example.com>"
    assert outer["mime-version"] == "1.0"


@pytest.mark.process
def test_every_recipient_including_bcc_and_the_sender_can_decrypt(world: World):
    result = world.engine.apply(MESSAGE, smimeEncrypt=True, account="alice")
    for address, person in world.people.items():
        inner = _inner(result, person)
        assert mime.parse_entity(inner).body == BODY, address
        verdict = make_verifier(world.pki, keys=[_decryption_key(person)]).verify(result)
        assert "decrypted content is not signed" in verdict.notes, (address, verdict)
    outsider = make_leaf(world.pki.intermediate, "mallory@example.org", now=NOW,
                         key_usage=BOTH, key_label="adv:mallory")
    with pytest.raises(RuntimeError, match="decrypt"):
        openssl_decrypt(result, outsider)


def test_the_envelope_is_aes_256_with_oaep_only_where_advertised(world: World):
    result = world.engine.apply(MESSAGE, smimeEncrypt=True, account="alice")
    envelope = _envelope(result)
    algorithm = envelope["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == "aes256_cbc"
    kinds = sorted(info.name for info in envelope["recipient_infos"])
    assert kinds == ["kari", "kari", "ktri", "ktri", "ktri"]  # 2 EC + 3 RSA (alice, bob, erin)
    transports = {info.chosen["key_encryption_algorithm"]["algorithm"].native
                  for info in envelope["recipient_infos"] if info.name == "ktri"}
    assert transports == {"rsaes_pkcs1v15"}  # nobody advertised OAEP


def _envelope(message: bytes) -> asn1_cms.EnvelopedData:
    der = mime.decode_transfer_encoding(mime.parse_entity(message))
    return asn1_cms.ContentInfo.load(der)["content"]


class _Advertising:
    """An address book whose entries advertise RSAES-OAEP (as learned ones can)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def lookup(self, address, at):  # a test double: the AddressBook.lookup shape
        from smime_milter.advanced.addressbook import RecipientCertificate
        person = self.world.people.get(address)
        if person is None:
            return None
        return RecipientCertificate(address, person.cert,
                                    (advanced.OID_RSAES_OAEP,), "learned")


@pytest.mark.process
def test_rsa_oaep_is_used_for_recipients_that_advertise_it_and_openssl_decrypts(world: World):
    engine = Advanced(None, _Advertising(world), lambda *_: True, clock=lambda: NOW)
    result = engine.apply(MESSAGE, smimeEncrypt=True)
    transports = {info.chosen["key_encryption_algorithm"]["algorithm"].native
                  for info in _envelope(result)["recipient_infos"] if info.name == "ktri"}
    assert transports == {"rsaes_oaep"}
    for address in ("bob@example.org", "alice@example.com"):
        assert mime.parse_entity(_inner(result, world.people[address])).body == BODY


# --- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "reason"), [
    (MESSAGE.replace(b"From: Alice <alice@example.com>\r\n",
                     b"From: alice@example.com, bob@example.org\r\n"), "2 addresses"),
    (MESSAGE.replace(b"From: Alice", b"From: alice@example.com\r\nFrom: Alice"), "2 From"),
    (MESSAGE.replace(b"From: Alice <alice@example.com>\r\n", b""), "neither Sender nor From"),
    (b"From: alice@example.com\r\nSender: a@example.com, b@example.com\r\n\r\nx",
     "Sender holds 2"),
    (b"From: <<<\r\n\r\nx", "From is not an address"),
    (b"", "no header fields"),
])
def test_a_message_without_one_clear_sender_is_invalid_email(world: World, message, reason):
    with pytest.raises(InvalidEmail, match=reason) as caught:
        world.engine.apply(message, smimeSign=True, account="alice")
    assert caught.value.jmap_error == "invalidEmail"


def test_the_last_sender_field_names_the_signer_and_from_may_then_list_several(world: World):
    message = (b"From: bob@example.org, carol@example.net\r\nSender: alice@example.com\r\n"
               b"To: bob@example.org\r\nSubject: s\r\n\r\nbody\r\n")
    result = world.engine.apply(message, smimeSign=True, account="alice")
    verdict = make_verifier(world.pki).verify(result)
    assert any("alice@example.com" in s.emails and s.signature_ok for s in verdict.signers)


def test_an_account_signs_only_as_its_own_senders(world: World):
    with pytest.raises(SignedSenderNotAllowed) as caught:
        world.engine.apply(MESSAGE, smimeSign=True, account="ops")
    assert caught.value.jmap_error == "signedSenderNotAllowed"
    with pytest.raises(SignedSenderNotAllowed):
        world.engine.apply(MESSAGE, smimeSign=True, account="nobody")


def test_a_sender_without_a_signing_key_is_signed_sender_not_allowed(world: World):
    message = MESSAGE.replace(b"Alice <alice@example.com>", b"<bob@example.org>")
    with pytest.raises(SignedSenderNotAllowed, match="no valid signing key"):
        world.engine.apply(message, smimeSign=True, account="ops")


def test_a_recipient_without_a_valid_certificate_is_named(world: World):
    message = MESSAGE.replace(b"Cc: dave@example.org", b"Cc: dave@example.org, x@example.org")
    with pytest.raises(ValidEncryptionKeyNotFound) as caught:
        world.engine.apply(message, smimeEncrypt=True, account="alice")
    assert caught.value.jmap_error == "validEncryptionKeyNotFound"
    assert caught.value.recipients == ("x@example.org",)
    assert "x@example.org" in str(caught.value)


def test_expired_and_signing_only_certificates_are_never_used(world: World, tmp_path: Path):
    issuer = world.pki.intermediate
    expired = make_leaf(issuer, "old@example.org", now=NOW, key_usage=BOTH,
                        not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(days=1),
                        key_label="adv:old")
    signing = make_leaf(issuer, "signer@example.org", now=NOW, key_usage=SIGN_ONLY,
                        key_label="adv:signer")
    (tmp_path / "old.pem").write_bytes(expired.cert_pem)
    (tmp_path / "signer.pem").write_bytes(signing.cert_pem)
    book = AddressBook(tmp_path, None, None,
                       ChainValidator(TrustStore(anchors=(anchor(world.pki.root),),
                                                 intermediates=(anchor(issuer),))))
    engine = Advanced(None, book, lambda *_: True, clock=lambda: NOW)
    for address in ("old@example.org", "signer@example.org"):
        message = f"From: {address}\r\nTo: {address}\r\n\r\nx\r\n".encode()
        with pytest.raises(ValidEncryptionKeyNotFound, match=address):
            engine.apply(message, smimeEncrypt=True)


@pytest.mark.process
def test_the_envelope_recipients_replace_the_header_ones(world: World):
    composed = world.engine.compose(MESSAGE, sign=False, encrypt=True, account="alice",
                                    recipients=["erin@example.org"])
    assert composed.recipients == ("alice@example.com", "erin@example.org")
    result = composed.to_bytes()
    assert mime.parse_entity(_inner(result, world.people["erin@example.org"])).body == BODY
    with pytest.raises(RuntimeError):
        openssl_decrypt(result, world.people["bob@example.org"])


@pytest.mark.process
def test_an_eight_bit_body_is_base64_encoded_before_signing(world: World):
    message = (b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: s\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n")
    result = world.engine.apply(message, smimeSign=True, smimeSignOpaque=False, account="alice")
    assert result.isascii()
    assert_verified(make_verifier(world.pki).verify(result), "alice@example.com")
    checked = openssl_verify_result(result, world.ca_files)
    assert checked.returncode == 0, checked.stderr
    part = email.message_from_bytes(checked.stdout, policy=email.policy.default)
    assert part.get_content() == "Grüße\r\n"  # canonical CRLF inside the base64


@pytest.mark.process
def test_the_signature_carries_the_chain_signing_time_and_capabilities(world: World):
    result = world.engine.apply(MESSAGE, smimeSign=True, account="alice")
    der = mime.decode_transfer_encoding(mime.parse_entity(result))
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", stdin=der).stdout.decode()
    assert "object: signingTime" in printed and "object: S/MIME Capabilities" in printed
    assert "algorithm: sha256" in printed
    signed = asn1_cms.ContentInfo.load(der)["content"]
    subjects = {c.chosen.subject.native.get("common_name") for c in signed["certificates"]}
    assert len(subjects) >= 2  # the signer and its intermediate
    signed_attrs = signed["signer_infos"][0]["signed_attrs"]
    attributes = {a["type"].native: a["values"][0] for a in signed_attrs}
    assert attributes["signing_time"].native == NOW


def test_the_capability_object_is_offered_on_request():
    offered = jmap.capabilities(advanced=True)
    assert offered["capabilities"]["urn:ietf:params:jmap:smime-advanced"] == {}
    assert offered["accountCapabilities"]["urn:ietf:params:jmap:smime-advanced"] == {}
    assert "urn:ietf:params:jmap:smime-advanced" not in jmap.capabilities()["capabilities"]


def test_the_module_level_apply_uses_the_configured_instance(world: World):
    advanced.configure(world.engine)
    try:
        result = advanced.apply(MESSAGE, smimeSign=True, account="alice")
    finally:
        advanced.configure(None)
    assert_verified(make_verifier(world.pki).verify(result), "alice@example.com")
    assert os.environ.get("SMIME_MILTER_NEVER_SET") is None


def test_the_module_level_apply_without_an_instance_names_the_fix():
    """The advanced package reads no configuration file: that is the
    composition root's job (bootstrap.default_advanced)."""
    advanced.configure(None)
    with pytest.raises(advanced.AdvancedNotConfigured, match=r"bootstrap\.default_advanced\(\)"):
        advanced.apply(MESSAGE, smimeSign=True, account="alice")


def test_bootstrap_builds_the_default_instance_once_from_the_configuration_file(
        world: World, monkeypatch: pytest.MonkeyPatch):
    built = []

    def from_file():
        built.append(True)
        return world.engine

    monkeypatch.setattr(bootstrap, "build_advanced_from_file", from_file)
    try:
        assert bootstrap.default_advanced() is world.engine
        first = advanced.apply(MESSAGE, smimeSign=True, account="alice")
        assert bootstrap.default_advanced() is world.engine
    finally:
        advanced.configure(None)
    assert built == [True]
    assert_verified(make_verifier(world.pki).verify(first), "alice@example.com")

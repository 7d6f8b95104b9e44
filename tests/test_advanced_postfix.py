"""smime-advanced end to end: a real Postfix with a submission service, the
milter daemon, and real key and certificate stores.

A message carrying ``SMIME-Advanced`` through the submission service (whose
``{daemon_name}`` is "submission") arrives signed and encrypted in the
recipient's Maildir: openssl decrypts it with the recipient's key and
verifies the signature inside. The same header through the public smtpd is
removed and does nothing; a sender the account may not sign as is refused
with a 5.7.1 reply naming the JMAP error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest

from smime_milter.mail import mime
from tests.support.daemon import MilterProcess
from tests.support.mailflow import POSTFIX, milter_and_postfix
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.postfix import PostfixInstance
from tests.support.smime import (
    multipart_signed,
    openssl_decrypt,
    openssl_verify_result,
    text_entity,
)

pytestmark = [*POSTFIX, pytest.mark.process]

BOTH = frozenset({"digital_signature", "key_encipherment"})
ALICE = "alice@example.com"
BOB = "bob@example.org"
CAROL = "carol@example.org"  # the Bcc recipient: only in the envelope
DAVE = "dave@example.com"  # in no address book: known only from mail he signed


@dataclass(frozen=True)
class World:
    milter: MilterProcess
    mta: PostfixInstance
    people: dict[str, Identity]
    ca_files: list[Path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, anchors: Path, live_pki: TestPki
          ) -> Iterator[World]:
    people = {
        address: make_leaf(live_pki.intermediate, address, now=live_pki.now, key_usage=BOTH,
                           key_label=f"advanced-e2e:{address}")
        for address in (ALICE, BOB, CAROL, DAVE)
    }
    base = tmp_path_factory.mktemp("advanced-e2e")
    keys = base / "keys"
    keys.mkdir(mode=0o700)
    alice = people[ALICE]
    chain = b"".join(Identity(alice.key, c).cert_pem for c in alice.chain)
    (keys / "alice.pem").write_bytes(alice.key_pem + alice.cert_pem + chain)
    (keys / "alice.pem").chmod(0o600)
    book = base / "addressbook"
    book.mkdir()
    for address in (BOB, CAROL):
        (book / f"{address}.pem").write_bytes(people[address].cert_pem + chain)
    ca_files = [base / "root.pem", base / "intermediate.pem"]
    ca_files[0].write_bytes(live_pki.root.cert_pem)
    ca_files[1].write_bytes(live_pki.intermediate.cert_pem)
    settings = f"""
[advanced]
keys = "{keys}"
addressbook = "{book}"
submission_daemons = ["submission"]
submission_sasl = false
client_account = "jmap"

[advanced.accounts]
jmap = ["example.com"]
"""
    with milter_and_postfix(tmp_path_factory, anchors, "advanced", extra_toml=settings,
                            mailboxes=[ALICE, BOB, CAROL, DAVE], submission=True) as (milter, mta):
        yield World(milter, mta, people, ca_files)


_serial = iter(range(10**6))


def _message(subject: str, request: str | None, sender: str = ALICE) -> bytes:
    header = f"SMIME-Advanced: {request}\r\n" if request else ""
    return (
        f"From: <{sender}>\r\nTo: <{BOB}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>\r\n"
        f"{header}Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "The plan, in full.\r\n"
    ).encode()


def _wait_for(mta: PostfixInstance, address: str, message_id: str, timeout: float = 30.0
              ) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        for raw in mta.delivered(address):
            if message_id in (message_from_bytes(raw)["Message-ID"] or ""):
                return raw
        if time.monotonic() > deadline:
            raise AssertionError(f"{message_id} not delivered to {address}; "
                                 f"log:\n{mta.log_text()[-3000:]}")
        time.sleep(0.05)


def test_a_submitted_request_arrives_signed_and_encrypted_and_every_recipient_decrypts(
        world: World) -> None:
    subject = f"plan {next(_serial)} {time.monotonic_ns()}"
    message = _message(subject, "smimeSign=true; smimeEncrypt=true")
    reply = world.mta.send(message, ALICE, [BOB, CAROL], port=world.mta.submission_port)
    assert reply.ok, reply
    message_id = subject.replace(" ", ".")
    for address in (BOB, CAROL):
        delivered = _wait_for(world.mta, address, message_id)
        parsed = message_from_bytes(delivered)
        assert parsed["SMIME-Advanced"] is None
        assert parsed.get_content_type() == "application/pkcs7-mime"
        assert parsed.get_param("smime-type") == "enveloped-data"
        assert parsed["Subject"] == "[...]"  # RFC 9788: obscured outside
        inner = openssl_decrypt(delivered, world.people[address])
        checked = openssl_verify_result(inner, world.ca_files)
        assert checked.returncode == 0, checked.stderr.decode()
        payload = mime.parse_entity(mime.canonicalize(checked.stdout))
        assert payload.body == b"The plan, in full.\r\n"
        assert ("Subject", subject) in payload.headers  # protected inside
        assert payload.content_type.param("hp") == "cipher"
    log = world.milter.log_text()
    assert "advanced=signed+encrypted" in log


def test_the_same_request_through_the_public_smtpd_is_removed_and_ignored(world: World) -> None:
    subject = f"plain {next(_serial)} {time.monotonic_ns()}"
    message = _message(subject, "smimeSign=true; smimeEncrypt=true")
    reply = world.mta.send(message, ALICE, [BOB])
    assert reply.ok, reply
    delivered = _wait_for(world.mta, BOB, subject.replace(" ", "."))
    parsed = message_from_bytes(delivered)
    assert parsed["SMIME-Advanced"] is None
    assert parsed.get_content_type() == "text/plain"
    assert parsed["Subject"] == subject
    assert mime.parse_entity(mime.canonicalize(delivered)).body == b"The plan, in full.\r\n"


def test_signing_as_a_sender_the_account_may_not_use_is_refused_with_the_jmap_name(
        world: World) -> None:
    subject = f"forged {next(_serial)} {time.monotonic_ns()}"
    message = _message(subject, "smimeSign=true", sender="ceo@example.net")
    reply = world.mta.send(message, "ceo@example.net", [BOB], port=world.mta.submission_port)
    assert reply.code == 550, reply
    assert reply.text.startswith("5.7.1 signedSenderNotAllowed:"), reply.text


def test_a_recipient_without_a_certificate_refuses_encryption_with_5_7_5(world: World) -> None:
    subject = f"nokey {next(_serial)} {time.monotonic_ns()}"
    message = _message(subject, "smimeEncrypt=true")
    reply = world.mta.send(message, ALICE, [BOB, "nokey@example.org"],
                           port=world.mta.submission_port)
    assert reply.code == 550, reply
    assert reply.text.startswith("5.7.5 validEncryptionKeyNotFound:"), reply.text
    assert "nokey@example.org" in reply.text


def test_a_certificate_learned_from_inbound_signed_mail_is_encrypted_to(world: World) -> None:
    subject = f"to dave {next(_serial)} {time.monotonic_ns()}"
    message = _message(subject, "smimeEncrypt=true").replace(
        f"To: <{BOB}>".encode(), f"To: <{DAVE}>".encode())
    refused = world.mta.send(message, ALICE, [DAVE], port=world.mta.submission_port)
    assert refused.stage == "DATA" and refused.code == 550, refused  # not known yet
    assert refused.text.startswith("5.7.5 validEncryptionKeyNotFound:") and DAVE in refused.text
    inbound = multipart_signed(text_entity("Hello Alice, here is my key."),
                               world.people[DAVE], from_addr=DAVE, to=ALICE,
                               subject=f"hello {subject}")
    assert world.mta.send(inbound, DAVE, [ALICE]).ok
    deadline = time.monotonic() + 30
    while True:  # learned once the inbound record is written
        reply = world.mta.send(message, ALICE, [DAVE], port=world.mta.submission_port)
        if reply.ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply.ok, reply
    encrypted = _wait_for(world.mta, DAVE, subject.replace(" ", "."))
    inner = mime.parse_entity(mime.canonicalize(openssl_decrypt(encrypted, world.people[DAVE])))
    assert inner.body == b"The plan, in full.\r\n"

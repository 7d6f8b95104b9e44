"""Submission mode in the milter glue: SmimeMilter driven callback by callback
with recorders in place of libmilter (including ``replacebody``), the real
``Advanced`` over real stores, and the real engine as the worker pool.

Every accepted message is rebuilt from the original header section with the
recorded header edits applied the way the MTA applies them, plus the
replaced body, and that rebuilt message is what the assertions (and
``openssl cms``) look at."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_network
from pathlib import Path

import Milter
import pytest

from smime_milter.advanced import AutoRule
from smime_milter.advanced.addressbook import AddressBook
from smime_milter.advanced.compose import Advanced
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.cms.envelope import DecryptionKey
from smime_milter.config.reader import AdvancedConfig, Config, MilterConfig
from smime_milter.mail import mime
from smime_milter.model import Status
from smime_milter.mta import Runtime
from smime_milter.mta.app import RuntimeHolder, SmimeMilter
from smime_milter.stamp.fields import parse_status_header
from smime_milter.trust.chain import ChainValidator, TrustStore
from tests.support.milterapp import Connection as _ReleaseConnection
from tests.support.milterapp import FakeStore, FakeVerifier, split_message
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.smime import openssl_decrypt, openssl_verify_result
from tests.support.verdicts import NOW, anchor, assert_verified, make_verifier

BOTH = frozenset({"digital_signature", "key_encipherment"})

ALICE = "alice@example.com"
BOB = "bob@example.org"
ERIN = "erin@example.org"  # has a certificate; only ever a Bcc (envelope) recipient
NOCERT = "nocert@example.net"  # has no certificate anywhere
OUTSIDE_IP = "198.51.100.9"
JMAP_IP = "192.0.2.25"

BODY = b"I have the most brilliant plan.\r\nLet me tell you all about it.\r\n"


def message(request: str | None = "smimeSign=true",
            extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """A submitted message with folded trace fields above the author's ones."""
    fields = [
        ("Received", "from client.example (client.example [198.51.100.9])\r\n"
                     "\tby mx.example.org (Postfix) with ESMTPSA id 4ABCD;\r\n"
                     "\tMon, 1 Jun 2026 00:00:00 +0000"),
        ("Received", "from laptop by client.example; Mon, 1 Jun 2026 00:00:00 +0000"),
        ("From", f"Alice <{ALICE}>"),
        ("To", f"Bob <{BOB}>"),
        ("Subject", "World domination"),
        ("Keywords", "plans"),
        ("Date", "Mon, 1 Jun 2026 00:00:00 +0000"),
        ("Message-ID", "<k192@example.com>"),
        *extra,
    ]
    if request is not None:
        fields.append(("SMIME-Advanced", request))
    fields += [("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=us-ascii")]
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in fields)
    return head + b"\r\n" + BODY


# --------------------------------------------------------------------------- world


@dataclass(frozen=True)
class People:
    alice: Identity
    bob: Identity
    erin: Identity
    mallory: Identity
    advanced: Advanced
    ca_files: list[Path]


def _chain_pem(identity: Identity) -> bytes:
    return b"".join(Identity(identity.key, c).cert_pem for c in identity.chain)


ACCOUNTS = (("alice", (ALICE,)), ("jmap", ("example.com",)))


@pytest.fixture(scope="module")
def people(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> People:
    """Real stores: alice's key in a private key directory, bob's and erin's
    certificates in an address book, chains validated to the test root."""
    issuer = pki.intermediate
    alice = make_leaf(issuer, ALICE, now=NOW, key_usage=BOTH, key_label="advapp:alice")
    bob = make_leaf(issuer, BOB, now=NOW, key_usage=BOTH, key_label="advapp:bob")
    erin = make_leaf(issuer, ERIN, now=NOW, key_usage=BOTH, key_label="advapp:erin")
    mallory = make_leaf(issuer, "mallory@example.org", now=NOW, key_usage=BOTH,
                        key_label="advapp:mallory")
    base = tmp_path_factory.mktemp("advanced-app")
    keys = base / "keys"
    keys.mkdir(mode=0o700)
    keys.chmod(0o700)
    pem = keys / "alice.pem"
    pem.write_bytes(alice.key_pem + alice.cert_pem + _chain_pem(alice))
    pem.chmod(0o600)
    book = base / "addressbook"
    book.mkdir()
    for address, person in ((BOB, bob), (ERIN, erin)):
        (book / f"{address}.pem").write_bytes(person.cert_pem + _chain_pem(person))
    ca_files = [base / "root.pem", base / "intermediate.pem"]
    ca_files[0].write_bytes(pki.root.cert_pem)
    ca_files[1].write_bytes(pki.intermediate.cert_pem)
    signing_keys = SigningKeys.load(keys)
    validator = ChainValidator(TrustStore(anchors=(anchor(pki.root),)))
    engine = Advanced(signing_keys, AddressBook(book, signing_keys, None, validator),
                      AdvancedConfig(accounts=ACCOUNTS).may_sign_as, clock=lambda: NOW)
    return People(alice, bob, erin, mallory, engine, ca_files)


class Submission(_ReleaseConnection):
    """The release tests' recording connection, also recording ``replacebody``
    and connecting from a chosen client address."""

    def __init__(self, macros: Mapping[str, str | None], address: str) -> None:
        super().__init__(macros, {})
        self.address = address
        self.milter.replacebody = self._recorder("replacebody", None)  # type: ignore[method-assign]

    def connect(self) -> int:
        return self.milter.connect("client.example", socket.AF_INET, (self.address, 40000))

    @property
    def bodies(self) -> list[bytes]:
        return [bytes(args[0]) for args in self.of("replacebody")]  # type: ignore[arg-type]

    def reply(self) -> tuple[str, str, str]:
        [(code, xcode, text)] = self.of("setreply")
        return str(code), str(xcode), str(text)


BASE = AdvancedConfig(
    accounts=ACCOUNTS,
    submission_daemons=("submission",),
    submission_clients=(ip_network("192.0.2.0/24"),),
)
MACROS: dict[str, str | None] = {
    "j": "mx.example.org", "i": "4ABCD", "{daemon_name}": "smtpd", "{daemon_port}": "25",
}
SASL = {**MACROS, "{auth_authen}": "alice"}


@dataclass
class World:
    people: People
    pki: TestPki
    verifier: FakeVerifier
    store: FakeStore
    monkeypatch: pytest.MonkeyPatch

    def connect(self, advanced: AdvancedConfig = BASE,
                macros: Mapping[str, str | None] = SASL, address: str = OUTSIDE_IP,
                feature: bool = True) -> Submission:
        config = Config(advanced=advanced)
        runtime = Runtime(config=config, verifier=self.verifier, store=self.store,
                          hostname="h",
                          advanced=self.people.advanced if feature else None)
        self.monkeypatch.setattr(SmimeMilter, "holder", RuntimeHolder(runtime), raising=False)
        connection = Submission(macros, address)
        assert connection.connect() == Milter.CONTINUE
        return connection


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, pki: TestPki, people: People) -> Iterator[World]:
    # The pool can open mail encrypted to bob, so stamps reflect the signed content.
    engine = make_verifier(pki, keys=[DecryptionKey(people.bob.key, people.bob.cert)])
    monkeypatch.setattr(SmimeMilter, "clock", staticmethod(lambda: NOW))
    yield World(people, pki, FakeVerifier(engine=engine), FakeStore(), monkeypatch)


# --------------------------------------------------------------------------- the MTA's side


Fields = list[tuple[str, str]]


def original_fields(raw: bytes) -> Fields:
    """The header section as libmilter hands it over (bare-LF folding)."""
    return [(name, value.decode("utf-8")) for name, value in split_message(raw)[0]]


def _nth(fields: Fields, name: str, index: int) -> int:
    positions = [i for i, (n, _) in enumerate(fields) if n.lower() == name.lower()]
    assert 1 <= index <= len(positions), f"no {name} #{index} among {fields}"
    return positions[index - 1]


def edited(raw: bytes, connection: Submission) -> Fields:
    """The header section after the recorded edits, applied in order as the
    MTA does: chgheader by 1-based index among same-named fields ("" deletes),
    addheader appends or, with an index, inserts there."""
    fields = original_fields(raw)
    for call in connection.calls:
        kind, args = call[0], call[1:]
        if kind == "chgheader":
            name, index, value = str(args[0]), int(args[1]), str(args[2])  # type: ignore[call-overload]
            position = _nth(fields, name, index)
            if value:
                fields[position] = (fields[position][0], value)
            else:
                del fields[position]
        elif kind == "addheader":
            name, value = str(args[0]), str(args[1])
            if len(args) > 2 and int(args[2]) >= 0:  # type: ignore[call-overload]
                fields.insert(int(args[2]), (name, value))  # type: ignore[call-overload]
            else:
                fields.append((name, value))
    return fields


def delivered(raw: bytes, connection: Submission) -> bytes:
    """The message as it leaves the MTA: edited header, replaced body."""
    bodies = connection.bodies
    assert len(bodies) <= 1
    body = bodies[0] if bodies else split_message(raw)[1]
    head = b"".join(
        name.encode() + b": " + value.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        + b"\r\n" for name, value in edited(raw, connection)
    )
    return head + b"\r\n" + body


def names(fields: Fields) -> list[str]:
    return [name.lower() for name, _ in fields]


def values(fields: Fields, name: str) -> list[str]:
    return [value for n, value in fields if n.lower() == name.lower()]


def unfolded(text: str) -> str:
    return " ".join(text.split())


OURS = ("authentication-results", "smime-status-at-delivery")


def author_fields(fields: Fields) -> list[tuple[str, str]]:
    """Everything but MIME structure, the request and our stamps, unfolded."""
    return [(n.lower(), unfolded(v)) for n, v in fields
            if not mime_structural(n) and n.lower() not in ("smime-advanced", *OURS)]


def mime_structural(name: str) -> bool:
    return name.lower() == "mime-version" or name.lower().startswith("content-")


def stamp_of(fields: Fields) -> tuple[Status | None, str | None]:
    [value] = values(fields, "SMIME-Status-At-Delivery")
    return parse_status_header(value)


def send(connection: Submission, raw: bytes, recipients: Sequence[str] = (BOB,)) -> int:
    return connection.send(raw, sender=ALICE, recipients=recipients)


def assert_refused(connection: Submission, rc: int, xcode: str, jmap_error: str) -> str:
    assert rc == Milter.REJECT
    code, extended, text = connection.reply()
    assert (code, extended) == ("550", xcode)
    assert text.startswith(f"{jmap_error}: "), text
    assert connection.bodies == []
    assert connection.of("addheader") == [] and connection.of("chgheader") == []
    assert connection.milter.buffer is None
    return text


# --------------------------------------------------------------------------- signing


@pytest.mark.process
def test_sasl_submitter_request_is_signed_in_place_and_stamped(world: World) -> None:
    raw = message("smimeSign=true")
    connection = world.connect(macros=SASL)
    assert send(connection, raw) == Milter.CONTINUE
    assert len(connection.bodies) == 1 and connection.of("setreply") == []

    out = delivered(raw, connection)
    final = edited(raw, connection)
    assert_verified(make_verifier(world.pki).verify(out, at=NOW), ALICE)
    checked = openssl_verify_result(out, world.people.ca_files)
    assert checked.returncode == 0, checked.stderr
    payload = mime.parse_entity(mime.canonicalize(checked.stdout))
    assert payload.body == BODY
    assert payload.content_type.param("hp") == "clear"
    assert not any(n.lower() == "smime-advanced" for n, _ in payload.headers)

    # The request is gone; the author's and trace fields stay where they were.
    assert "smime-advanced" not in names(final)
    original = original_fields(raw)
    assert author_fields(final) == author_fields(original)
    kept = [n for n in names(final) if n in ("received", "from", "to")]
    assert kept == ["received", "received", "from", "to"]
    assert values(final, "Received") == values(original, "Received")  # never rewritten
    assert values(final, "MIME-Version") == ["1.0"]
    [content_type] = values(final, "Content-Type")
    assert "application/pkcs7-mime" in content_type and "signed-data" in content_type

    # Stamped as what leaves: our own A-R on top, for the signed message.
    assert names(final)[:2] == ["authentication-results", "smime-status-at-delivery"]
    [results] = values(final, "Authentication-Results")
    assert results.startswith("mx.example.org;") and "smime=pass" in results
    status, record_id = stamp_of(final)
    assert status is Status.SIGNED_VERIFIED
    [record] = world.store.records
    assert record.record_id == record_id and record.status is Status.SIGNED_VERIFIED
    [job] = world.verifier.jobs
    assert job.message is not None and b"SMIME-Advanced" not in job.message


def test_kept_folded_fields_are_not_rewritten_unfolded(world: World) -> None:
    """A long thread's References unfolded would be one line over 998 octets."""
    references = "\r\n\t".join(f"<id{i:04d}.{'x' * 30}@example.com>" for i in range(40))
    raw = message("smimeSign=true", extra=[("References", references),
                                           ("Subject", "  spaced  ")])
    connection = world.connect()
    assert send(connection, raw) == Milter.CONTINUE
    touched = {str(call[0]).lower() for call in connection.of("chgheader")}
    assert touched == {"smime-advanced", "mime-version", "content-type"}
    out = delivered(raw, connection)
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert_verified(make_verifier(world.pki).verify(out, at=NOW), ALICE)


@pytest.mark.parametrize(("advanced", "macros", "feature"), [
    (BASE, MACROS, True),
    (replace(BASE, submission_sasl=False), SASL, True),
    (BASE, SASL, False),
], ids=["untrusted", "sasl-not-trusted", "feature-off"])
def test_a_request_that_is_not_honoured_is_removed_and_nothing_else_changes(
    world: World, advanced: AdvancedConfig, macros: Mapping[str, str | None],
    feature: bool,
) -> None:
    raw = message("smimeSign=true; smimeEncrypt=true")
    connection = world.connect(advanced=advanced, macros=macros, feature=feature)
    assert send(connection, raw) == Milter.CONTINUE
    assert connection.bodies == []
    assert connection.of("chgheader") == [("SMIME-Advanced", 1, "")]
    final = edited(raw, connection)
    original = original_fields(raw)
    unstamped = [f for f in final if f[0].lower() not in OURS]
    assert unstamped == [f for f in original if f[0] != "SMIME-Advanced"]
    assert delivered(raw, connection).endswith(b"\r\n\r\n" + BODY)
    assert stamp_of(final)[0] is None  # examined as the unsigned message it is
    assert "smime=none" in values(final, "Authentication-Results")[0]


@pytest.mark.parametrize("client_account", [None, "jmap"])
def test_a_trusted_client_address_signs_only_with_a_client_account(
    world: World, client_account: str | None
) -> None:
    raw = message("smimeSign=true")
    advanced = replace(BASE, client_account=client_account)
    connection = world.connect(advanced=advanced, macros=MACROS, address=JMAP_IP)
    rc = send(connection, raw)
    if client_account is None:
        text = assert_refused(connection, rc, "5.7.1", "signedSenderNotAllowed")
        assert ALICE in text
        assert world.store.records == [] and world.verifier.jobs == []
        return
    assert rc == Milter.CONTINUE
    out = delivered(raw, connection)
    assert_verified(make_verifier(world.pki).verify(out, at=NOW), ALICE)
    assert stamp_of(edited(raw, connection))[0] is Status.SIGNED_VERIFIED


def test_a_client_account_signs_only_as_its_own_senders(world: World) -> None:
    raw = message("smimeSign=true").replace(b"example.com>", b"example.net>")
    advanced = replace(BASE, client_account="jmap")
    connection = world.connect(advanced=advanced, macros=MACROS, address=JMAP_IP)
    text = assert_refused(connection, send(connection, raw), "5.7.1", "signedSenderNotAllowed")
    assert "jmap" in text


@pytest.mark.parametrize(("daemon", "signed"), [("submission", True), ("smtpd", False)])
def test_the_daemon_name_macro_marks_a_submission_service(
    world: World, daemon: str, signed: bool
) -> None:
    raw = message("smimeSign=true")
    advanced = replace(BASE, client_account="jmap")
    connection = world.connect(advanced=advanced, macros={**MACROS, "{daemon_name}": daemon})
    assert send(connection, raw) == Milter.CONTINUE
    final = edited(raw, connection)
    assert "smime-advanced" not in names(final)
    assert bool(connection.bodies) is signed
    status = make_verifier(world.pki).verify(delivered(raw, connection), at=NOW).status
    assert status is (Status.SIGNED_VERIFIED if signed else None)
    assert stamp_of(final)[0] is status


# --------------------------------------------------------------------------- encryption


@pytest.mark.process
def test_encryption_goes_to_the_envelope_recipients_including_bcc(world: World) -> None:
    raw = message("smimeSign=true; smimeEncrypt=true")
    connection = world.connect()
    assert send(connection, raw, recipients=(BOB, ERIN)) == Milter.CONTINUE
    out = delivered(raw, connection)
    assert ERIN.encode() not in out  # a Bcc recipient, named nowhere in the header
    people = world.people
    for person in (people.erin, people.bob, people.alice):
        verdict = make_verifier(world.pki, keys=[DecryptionKey(person.key, person.cert)]
                                ).verify(out, at=NOW)
        assert_verified(verdict, ALICE, status=Status.ENCRYPTED_SIGNED_VERIFIED)
    inner = mime.canonicalize(openssl_decrypt(out, people.erin))
    checked = openssl_verify_result(inner, people.ca_files)
    assert checked.returncode == 0, checked.stderr
    assert mime.parse_entity(mime.canonicalize(checked.stdout)).body == BODY
    with pytest.raises(RuntimeError, match="decrypt"):
        openssl_decrypt(out, people.mallory)
    assert stamp_of(edited(raw, connection))[0] is Status.ENCRYPTED_SIGNED_VERIFIED


def test_a_recipient_without_a_certificate_refuses_encryption(world: World) -> None:
    connection = world.connect()
    rc = send(connection, message("smimeEncrypt=true"), recipients=(BOB, NOCERT))
    text = assert_refused(connection, rc, "5.7.5", "validEncryptionKeyNotFound")
    assert NOCERT in text and BOB not in text
    assert world.store.records == [] and world.verifier.jobs == []


@pytest.mark.parametrize(("request_value", "reason"), [
    ("smimeSign=yes", "must be true or false"),
    ("smimeSign=true; sign=true", "unknown SMIME-Advanced argument"),
    ("smimeSign=true; smimeSign=false", "given twice"),
])
def test_a_malformed_request_is_invalid_arguments(
    world: World, request_value: str, reason: str
) -> None:
    connection = world.connect()
    text = assert_refused(connection, send(connection, message(request_value)), "5.7.0",
                          "invalidArguments")
    assert reason in text


def test_two_request_fields_are_invalid_arguments(world: World) -> None:
    raw = message("smimeSign=true", extra=[("SMIME-Advanced", "smimeEncrypt=true")])
    connection = world.connect()
    text = assert_refused(connection, send(connection, raw), "5.7.0", "invalidArguments")
    assert "2 SMIME-Advanced fields" in text


# --------------------------------------------------------------------------- automatic rules


def _auto(encrypt: str, sign: bool = True) -> AdvancedConfig:
    return replace(BASE, auto=(AutoRule(senders=(ALICE,), sign=sign, encrypt=encrypt),))


def _top_type(raw: bytes, connection: Submission) -> tuple[str, str | None]:
    parsed = mime.parse_entity(delivered(raw, connection))
    return parsed.content_type.mime_type, parsed.content_type.param("smime-type")


@pytest.mark.process
def test_when_possible_encrypts_when_every_recipient_has_a_certificate(world: World) -> None:
    raw = message(None)
    connection = world.connect(advanced=_auto("when-possible"))
    assert send(connection, raw, recipients=(BOB, ERIN)) == Milter.CONTINUE
    assert _top_type(raw, connection) == ("application/pkcs7-mime", "enveloped-data")
    out = delivered(raw, connection)
    assert mime.parse_entity(mime.canonicalize(openssl_decrypt(out, world.people.erin)))
    assert stamp_of(edited(raw, connection))[0] is Status.ENCRYPTED_SIGNED_VERIFIED


@pytest.mark.process
def test_when_possible_signs_only_when_a_recipient_has_no_certificate(world: World) -> None:
    raw = message(None)
    connection = world.connect(advanced=_auto("when-possible"))
    assert send(connection, raw, recipients=(BOB, NOCERT)) == Milter.CONTINUE
    assert connection.of("setreply") == []
    assert _top_type(raw, connection) == ("application/pkcs7-mime", "signed-data")
    out = delivered(raw, connection)
    assert_verified(make_verifier(world.pki).verify(out, at=NOW), ALICE)
    assert openssl_verify_result(out, world.people.ca_files).returncode == 0
    assert stamp_of(edited(raw, connection))[0] is Status.SIGNED_VERIFIED


def test_when_possible_without_signing_leaves_the_message_alone(world: World) -> None:
    raw = message(None)
    connection = world.connect(advanced=_auto("when-possible", sign=False))
    assert send(connection, raw, recipients=(BOB, NOCERT)) == Milter.CONTINUE
    assert connection.bodies == [] and connection.of("chgheader") == []
    assert [f for f in edited(raw, connection) if f[0].lower() not in OURS] == \
        original_fields(raw)


def test_always_encrypt_refuses_a_recipient_without_a_certificate(world: World) -> None:
    connection = world.connect(advanced=_auto("always"))
    rc = send(connection, message(None), recipients=(BOB, NOCERT))
    text = assert_refused(connection, rc, "5.7.5", "validEncryptionKeyNotFound")
    assert NOCERT in text


def test_a_rule_for_other_senders_does_nothing(world: World) -> None:
    advanced = replace(BASE, auto=(AutoRule(senders=("example.net",), sign=True),))
    connection = world.connect(advanced=advanced)
    raw = message(None)
    assert send(connection, raw) == Milter.CONTINUE
    assert connection.bodies == [] and connection.of("chgheader") == []


# --------------------------------------------------------------------------- header protection


@pytest.mark.process
@pytest.mark.parametrize("protect", [True, False])
def test_header_protection_obscures_the_outer_subject_and_drops_keywords(
    world: World, protect: bool
) -> None:
    request = f"smimeEncrypt=true; smimeSign=true; headerProtect={str(protect).lower()}"
    raw = message(request)
    connection = world.connect()
    assert send(connection, raw) == Milter.CONTINUE
    changes = connection.of("chgheader")
    final = edited(raw, connection)
    inner = mime.canonicalize(openssl_decrypt(delivered(raw, connection), world.people.bob))
    checked = openssl_verify_result(inner, world.people.ca_files)
    assert checked.returncode == 0, checked.stderr
    payload = mime.parse_entity(mime.canonicalize(checked.stdout))
    assert payload.body == BODY
    if protect:
        assert ("Subject", 1, "[...]") in changes and ("Keywords", 1, "") in changes
        assert values(final, "Subject") == ["[...]"] and "keywords" not in names(final)
        assert ("Subject", "World domination") in payload.headers
        assert ("Keywords", "plans") in payload.headers
        assert payload.content_type.param("hp") == "cipher"
    else:
        assert not any(call[0] in ("Subject", "Keywords") for call in changes)
        assert values(final, "Subject") == ["World domination"]
        assert values(final, "Keywords") == ["plans"]
        assert payload.content_type.param("hp") is None
    # Whatever is obscured, the trace fields are untouched and in place.
    assert values(final, "Received") == values(original_fields(raw), "Received")
    assert names(final)[2:4] == ["received", "received"]


# --------------------------------------------------------------------------- forgeries


FORGED = [
    ("SMIME-Status-At-Delivery", "signed/verified; record=rforged"),
    ("Authentication-Results", "mx.example.org; smime=pass header.smime=forged@example.com"),
    ("Authentication-Results", "relay.example.net; spf=pass smtp.mailfrom=example.com"),
]


@pytest.mark.process
@pytest.mark.parametrize("encrypt", [False, True])
def test_forged_stamps_are_neither_protected_nor_kept(world: World, encrypt: bool) -> None:
    request = "smimeSign=true; headerProtect=true" + ("; smimeEncrypt=true" if encrypt else "")
    raw = message(request, extra=FORGED)
    connection = world.connect()
    assert send(connection, raw) == Milter.CONTINUE
    out = delivered(raw, connection)
    entity = mime.canonicalize(openssl_decrypt(out, world.people.bob)) if encrypt else out
    checked = openssl_verify_result(entity, world.people.ca_files)
    assert checked.returncode == 0, checked.stderr
    payload = mime.parse_entity(mime.canonicalize(checked.stdout))
    assert ("Subject", "World domination") in payload.headers  # protection did happen
    inside = " ".join(f"{n}: {v}" for n, v in payload.headers)
    assert "rforged" not in inside and "forged@example.com" not in inside
    assert "SMIME-Status-At-Delivery" not in inside

    final = edited(raw, connection)
    [status] = values(final, "SMIME-Status-At-Delivery")
    assert "rforged" not in status
    assert parse_status_header(status)[1] == world.store.records[0].record_id
    results = values(final, "Authentication-Results")
    ours = [r for r in results if r.startswith("mx.example.org;")]
    assert len(ours) == 1 and "forged@example.com" not in ours[0]
    assert [r for r in results if r.startswith("relay.example.net;")] == [FORGED[2][1]]


# --------------------------------------------------------------------------- failures


def test_a_failure_inside_compose_tempfails(world: World) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("key store exploded")

    world.monkeypatch.setattr(Advanced, "compose", broken)
    connection = world.connect()
    rc = send(connection, message("smimeSign=true"))
    assert rc == Milter.TEMPFAIL
    code, extended, text = connection.reply()
    assert (code, extended) == ("451", "4.3.0")
    assert "key store exploded" in text
    assert connection.bodies == []
    assert connection.of("addheader") == [] and connection.of("chgheader") == []
    assert world.store.records == [] and world.verifier.jobs == []


def test_a_failed_replacebody_tempfails(world: World) -> None:
    connection = world.connect()
    connection.milter.replacebody = connection._recorder("replacebody", 1)  # type: ignore[method-assign]
    assert send(connection, message("smimeSign=true")) == Milter.TEMPFAIL
    assert connection.reply()[:2] == ("451", "4.3.0")


def test_the_next_message_on_the_connection_is_judged_on_its_own(world: World) -> None:
    connection = world.connect()
    refused = message("smimeSign=true; smimeEncrypt=true")
    assert send(connection, refused, recipients=(NOCERT,)) == Milter.REJECT
    connection.calls.clear()
    raw = message("smimeSign=true")
    assert send(connection, raw) == Milter.CONTINUE
    assert_verified(make_verifier(world.pki).verify(delivered(raw, connection), at=NOW), ALICE)
    [record] = world.store.records
    assert record.envelope_recipients == (BOB,)


# --------------------------------------------------------------------------- size limit


def _small(world: World) -> Submission:
    connection = world.connect()
    runtime = SmimeMilter.holder.current
    config = replace(runtime.config, milter=MilterConfig(max_message_size=200))
    SmimeMilter.holder.current = replace(runtime, config=config)
    return connection


def test_an_oversize_message_with_a_request_is_refused_not_sent_unsigned(world: World) -> None:
    raw = message("smimeSign=true")
    assert len(raw) > 200
    connection = _small(world)
    assert_refused(connection, send(connection, raw), "5.7.0", "invalidArguments")


def test_an_oversize_message_without_a_request_gets_the_usual_oversize_action(
        world: World) -> None:
    raw = message(None)
    connection = _small(world)
    assert send(connection, raw) == Milter.CONTINUE
    assert connection.bodies == [] and connection.of("setreply") == []

"""``smime-milter authorize`` and ``smime-milter release`` as a release officer
runs them, against a real LMDB store, a fake sendmail and a tiny SMTP server;
and resubmit.strip_fields byte for byte."""

from __future__ import annotations

import io
import os
import pwd
import re
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pytest

from smime_milter.bootstrap import build_verifier
from smime_milter.cli.main import main
from smime_milter.cms.signing import SigningIdentity
from smime_milter.config.reader import Config, load_config
from smime_milter.mail import mime
from smime_milter.model import Status, new_record_id
from smime_milter.release.authorize import authorize
from smime_milter.release.resubmit import DROPPED_FIELDS, strip_fields
from smime_milter.release.rules import ReleaseDecision, assess
from smime_milter.stamp.fields import status_header
from smime_milter.store import Record, Store, StoreError
from tests.support.daemon import SMIME_MILTER
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.smime import multipart_signed, text_entity
from tests.support.verdicts import make_verifier

OFFICERS = "officers@example.org"
RELEASER = "officer@example.com"
CLERK = "clerk@example.com"
SENDER = "alice@example.com"
RECIPIENTS = ("rel1@example.org", "rel2@example.org")
OWN_AND_TRACE = ("Return-Path", "Delivered-To", "X-Original-To", "MMHS-Original-Recipients",
                 "SMIME-Release-Status", "SMIME-Status-At-Delivery")


# --------------------------------------------------------------------------- the world


def write_config(directory: Path, anchors: Path, store: Path,
                 submit: str = "sendmail:/nonexistent/sendmail") -> Path:
    path = directory / f"release-{abs(hash((str(store), submit)))}.toml"
    path.write_text(f"""\
[trust]
anchors = ["{anchors}"]
anchor_directory = "no-such-anchor-directory"

[store]
path = "{store}"

[release]
submit = "{submit}"

[[release.rules]]
name = "hq"
senders = ["example.com"]
releasers = ["{RELEASER}"]
divert_to = "{OFFICERS}"
""")
    return path


def write_identity(directory: Path, name: str, identity: Identity,
                   chain: Sequence[bytes] | None = None) -> tuple[Path, Path, Path]:
    key, cert, chain_file = (directory / f"{name}.key", directory / f"{name}.pem",
                             directory / f"{name}-chain.pem")
    key.write_bytes(identity.key_pem)
    cert.write_bytes(identity.cert_pem)
    chain_file.write_bytes(b"".join(chain) if chain is not None else
                           b"".join(Identity(identity.key, c).cert_pem for c in identity.chain))
    return key, cert, chain_file


def held_copy(live_pki: TestPki, record_id: str, text: str = "Move at dawn.\n") -> bytes:
    """What the release officers' mailbox holds: the original with the MTA's
    delivery trace and the milter's stamps on top."""
    original = multipart_signed(text_entity(text), live_pki.rsa, to=RECIPIENTS[0],
                                subject="Orders")
    trace = (
        f"Return-Path: <{SENDER}>\r\n"
        f"Delivered-To: {OFFICERS}\r\n"
        f"X-Original-To: {OFFICERS}\r\n"
        "Received: from client.example (client.example [192.0.2.7])\r\n"
        "\tby mx.example.org (Postfix) with ESMTP id 4ABCD\r\n"
        "Authentication-Results: mx.example.org; smime=pass\r\n"
        f"SMIME-Status-At-Delivery: {status_header(Status.SIGNED_VERIFIED, record_id)}\r\n"
        "MMHS-Original-Recipients: <rel1@example.org>,\r\n\t<rel2@example.org>\r\n"
        f"SMIME-Release-Status: held; rule=hq; divert-to={OFFICERS};\r\n"
        '\treason="not released (0 of 1 authorizations)"\r\n'
    ).encode()
    return trace + original


def held_record(record_id: str, *, held: bool = True) -> Record:
    now = datetime.now(UTC)
    decision = ReleaseDecision(rule="hq", released=False, required=1, authorized=(),
                               reasons=("no MMHS-Authorizing-Users header field",))
    return Record(
        record_id=record_id, received_at=now, envelope_sender=SENDER,
        envelope_recipients=RECIPIENTS, message_id=None, from_address=SENDER,
        queue_id="4ABCD", status_at_delivery=Status.SIGNED_VERIFIED, errors_at_delivery=None,
        status=Status.SIGNED_VERIFIED, errors=None, verified_at=now,
        release=decision if held else None, diverted_to=OFFICERS if held else None,
    )


@dataclass
class World:
    directory: Path
    anchors: Path
    store: Path
    config_path: Path
    config: Config
    officer: tuple[Path, Path, Path]
    clerk: tuple[Path, Path, Path]
    outsider: tuple[Path, Path, Path]
    #: Held in the store: the copy the officers got, and that copy authorized.
    record_id: str
    held: bytes
    authorized: bytes
    clerk_authorized: bytes
    #: In the store, but delivered normally (no rule applied).
    plain_record_id: str

    def config_with(self, submit: str) -> Path:
        return write_config(self.directory, self.anchors, self.store, submit)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, anchors: Path, live_pki: TestPki) -> World:
    directory = tmp_path_factory.mktemp("release-cli")
    store_path = directory / "store"
    config_path = write_config(directory, anchors, store_path)
    config = load_config(config_path)
    officer = make_leaf(live_pki.intermediate, RELEASER, now=live_pki.now,
                        key_label="release-cli:officer")
    clerk = make_leaf(live_pki.intermediate, CLERK, now=live_pki.now,
                      key_label="release-cli:clerk")
    outsider = make_leaf(live_pki.other_root, RELEASER, now=live_pki.now,
                         key_label="release-cli:outsider")
    record_id, plain_record_id = new_record_id(), new_record_id()
    store = Store.open(store_path)
    try:
        store.put_sync(held_record(record_id))
        store.put_sync(held_record(plain_record_id, held=False))
    finally:
        store.close()
    held = held_copy(live_pki, record_id)
    verifier = build_verifier(config)
    return World(
        directory=directory, anchors=anchors, store=store_path, config_path=config_path,
        config=config,
        officer=write_identity(directory, "officer", officer),
        clerk=write_identity(directory, "clerk", clerk),
        outsider=write_identity(directory, "outsider", outsider,
                                chain=[live_pki.other_root.cert_pem]),
        record_id=record_id, held=held,
        authorized=authorize(held, SigningIdentity(officer.key, officer.cert, officer.chain),
                             verifier).message,
        clerk_authorized=authorize(held, SigningIdentity(clerk.key, clerk.cert, clerk.chain),
                                   verifier).message,
        plain_record_id=plain_record_id,
    )


@dataclass(frozen=True)
class Held:
    """A record of its own, held in the store, and the authorized copy naming it:
    every test that really releases gets one, as a record is released once."""

    record_id: str
    authorized: bytes


@pytest.fixture
def fresh(world: World) -> Held:
    record_id = new_record_id()
    with Store.open(world.store) as store:
        store.put_sync(held_record(record_id))
    # The stamp is outside the signed content: renaming the record keeps the
    # signatures valid.
    return Held(record_id, world.authorized.replace(world.record_id.encode(),
                                                    record_id.encode()))


def stored(world: World, record_id: str) -> Record:
    with Store.open(world.store, readonly=True) as store:
        record = store.get(record_id)
    assert record is not None
    return record


@dataclass
class Run:
    rc: int
    out: bytes
    err: str


class Cli(Protocol):
    def __call__(self, *args: str | Path, stdin: bytes = ...) -> Run: ...


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> Cli:
    """``cli(*args, stdin=b"")``: smime_milter.cli.main in this process."""
    def run(*args: str | Path, stdin: bytes = b"") -> Run:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        rc = main([str(arg) for arg in args])
        out, err = capsysbinary.readouterr()
        return Run(rc, out, err.decode())
    return run


def body_of(message: bytes) -> bytes:
    return mime.parse_entity(message).body


def field_names(message: bytes) -> list[str]:
    return [name.lower() for name, _ in mime.parse_entity(message).headers]


# --------------------------------------------------------------------------- authorize


def test_authorize_countersigns_and_the_result_verifies(
    world: World, live_pki: TestPki, cli: Cli
) -> None:
    key, cert, chain = world.officer
    result = cli("authorize", "--key", key, "--cert", cert, "--chain", chain,
                 "--config", world.config_path, stdin=world.held)
    assert result.rc == 0, result.err
    assert result.err.strip() == (f"smime-milter authorize: countersigned as {RELEASER}; "
                                   f"MMHS-Authorizing-Users: {RELEASER}")
    message = result.out
    assert f"\r\nMMHS-Authorizing-Users: {RELEASER}\r\n".encode() in message
    verdict = make_verifier(live_pki, clock=datetime.now(UTC)).verify(message)
    assert verdict.status is Status.SIGNED_VERIFIED, verdict.errors
    [originator] = verdict.signers
    assert originator.ok and originator.emails == (SENDER,)
    [counter] = originator.countersignatures
    assert counter.proven and counter.emails == (RELEASER,)
    [rule] = world.config.release.rules
    decision = assess(rule, mime.parse_entity(message).headers, verdict)
    assert decision.released and decision.authorized == (RELEASER,)
    # Only the SignedData changed: the signed first part is byte-identical.
    assert body_of(message).split(b"\r\n--")[1] == body_of(world.held).split(b"\r\n--")[1]


def test_authorize_missing_key_file(world: World, cli: Cli) -> None:
    _, cert, chain = world.officer
    missing = world.directory / "no-such.key"
    result = cli("authorize", "--key", missing, "--cert", cert, "--chain", chain,
                 "--config", world.config_path, stdin=world.held)
    assert result.rc == 1
    assert result.out == b""
    [line] = result.err.strip().splitlines()
    assert line.startswith("smime-milter authorize: ")
    assert str(missing) in line


def test_authorize_with_a_certificate_the_anchors_do_not_trust(
    world: World, cli: Cli
) -> None:
    key, cert, chain = world.outsider
    result = cli("authorize", "--key", key, "--cert", cert, "--chain", chain,
                 "--config", world.config_path, stdin=world.held)
    assert result.rc == 1
    assert result.out == b""
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"smime-milter authorize: the authorization by {RELEASER} "
                           "would not count: ")


# --------------------------------------------------------------------------- release --dry-run


def test_dry_run_of_an_authorized_message(
    world: World, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "authorized.eml"
    path.write_bytes(world.authorized)
    result = cli("release", path, "--dry-run", "--config", world.config_path)
    assert result.rc == 0, result.err
    assert result.out.decode() == (f"would release record {world.record_id} from <{SENDER}> "
                                   "to <rel1@example.org>, <rel2@example.org>\n")


def test_dry_run_with_the_record_id_and_the_message_on_stdin(
    world: World, cli: Cli
) -> None:
    # Without the stamp: the record id on the command line is what counts.
    message = strip_fields(world.authorized, frozenset({"smime-status-at-delivery"}))
    result = cli("release", world.record_id, "--dry-run", "--config", world.config_path,
                 stdin=message)
    assert result.rc == 0, result.err
    assert f"would release record {world.record_id} " in result.out.decode()


@pytest.mark.parametrize(("which", "reason"), [
    ("held", "not released: no MMHS-Authorizing-Users header field"),
    ("clerk_authorized", f"not released: {CLERK}: not an authorized releaser under rule hq"),
])
def test_dry_run_of_a_message_that_is_not_released(
    world: World, tmp_path: Path, cli: Cli, which: str, reason: str
) -> None:
    path = tmp_path / "message.eml"
    path.write_bytes(getattr(world, which))
    result = cli("release", path, "--dry-run", "--config", world.config_path)
    assert result.rc == 1
    assert result.out == b""
    assert result.err.startswith(f"smime-milter release: {reason}"), result.err


def test_release_of_an_unknown_record(
    world: World, tmp_path: Path, live_pki: TestPki, cli: Cli
) -> None:
    unknown = new_record_id()
    path = tmp_path / "unknown.eml"
    path.write_bytes(held_copy(live_pki, unknown))
    result = cli("release", path, "--dry-run", "--config", world.config_path)
    assert (result.rc, result.out) == (1, b"")
    assert result.err.strip() == f"smime-milter release: no record {unknown} in the store"
    # The same with the id given explicitly.
    result = cli("release", unknown, "--dry-run", "--config", world.config_path,
                 stdin=world.authorized)
    assert result.rc == 1
    assert result.err.strip() == f"smime-milter release: no record {unknown} in the store"


def test_release_of_a_record_that_was_not_held(
    world: World, cli: Cli
) -> None:
    result = cli("release", world.plain_record_id, "--dry-run", "--config", world.config_path,
                 stdin=world.authorized)
    assert (result.rc, result.out) == (1, b"")
    assert result.err.strip() == (f"smime-milter release: record {world.plain_record_id} "
                                  "was not held for release")


def test_release_of_a_file_without_a_record_stamp(
    world: World, tmp_path: Path, cli: Cli
) -> None:
    path = tmp_path / "nostamp.eml"
    path.write_bytes(strip_fields(world.authorized, frozenset({"smime-status-at-delivery"})))
    result = cli("release", path, "--dry-run", "--config", world.config_path)
    assert result.rc == 1
    assert "expected one SMIME-Status-At-Delivery field, found 0" in result.err


def test_release_of_a_missing_file(world: World, tmp_path: Path, cli: Cli) -> None:
    missing = tmp_path / "gone.eml"
    result = cli("release", missing, "--dry-run", "--config", world.config_path)
    assert result.rc == 1
    assert result.err.strip() == f"smime-milter release: {missing}: No such file or directory"


def test_release_rejects_a_bad_submit_option(world: World, cli: Cli) -> None:
    with pytest.raises(SystemExit) as info:
        cli("release", world.record_id, "--submit", "smtp:localhost", "--config",
            world.config_path)
    assert info.value.code == 2


# --------------------------------------------------------------------------- release over SMTP


@dataclass
class Transaction:
    sender: str
    recipients: list[str]
    data: bytes


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough of an SMTP server for smtplib: records every transaction;
    recipients in ``refuse`` get a 550."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.refuse = set(refuse)
        self.transactions: list[Transaction] = []
        self.commands: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


_PATH = re.compile(r"<([^>]*)>")


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: SmtpSink

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("ascii") + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink.example ESMTP")
        sender: str | None = None
        recipients: list[str] = []
        while line := self.rfile.readline():
            command = line.decode("ascii", "replace").rstrip("\r\n")
            self.server.commands.append(command)
            verb = command[:4].upper()
            found = _PATH.search(command)
            if verb == "EHLO":
                self.reply("250-sink.example\r\n250-8BITMIME\r\n250 SIZE 10240000")
            elif verb == "HELO":
                self.reply("250 sink.example")
            elif verb == "MAIL" and found:
                sender, recipients = found.group(1), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT" and found and sender is not None:
                if found.group(1) in self.server.refuse:
                    self.reply("550 5.1.1 No such user")
                else:
                    recipients.append(found.group(1))
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA" and recipients and sender is not None:
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines: list[bytes] = []
                while (data_line := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                self.server.transactions.append(Transaction(sender, recipients, b"".join(lines)))
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok: queued as 4SINK")
            elif verb in ("RSET", "NOOP"):
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    server = SmtpSink()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def assert_clean_resubmission(world: World, sent: bytes) -> None:
    """Trace and our stamps gone, every other byte as the officer authorized it
    (the stamp, which names the record, is among what is gone)."""
    names = field_names(sent)
    for name in OWN_AND_TRACE:
        assert name.lower() not in names, name
    assert "mmhs-authorizing-users" in names
    assert "received" in names and "authentication-results" in names
    assert sent == strip_fields(world.authorized, DROPPED_FIELDS)
    assert body_of(sent) == body_of(world.authorized)
    # The signature part in particular travels untouched.
    signature = body_of(world.authorized).rsplit(b"Content-Type: application/pkcs7-signature",
                                                 1)[1]
    assert signature in sent


def test_release_over_smtp(
    world: World, fresh: Held, tmp_path: Path, smtp_sink: SmtpSink, cli: Cli
) -> None:
    path = tmp_path / "authorized.eml"
    path.write_bytes(fresh.authorized)
    result = cli("release", path, "--config", world.config_path,
                 "--submit", f"smtp:127.0.0.1:{smtp_sink.port}")
    assert result.rc == 0, result.err
    assert result.out.decode() == (
        f"released record {fresh.record_id} (released by {RELEASER} (1 of 1 authorizations))"
        " to <rel1@example.org>, <rel2@example.org>; queue id 4SINK\n")
    [transaction] = smtp_sink.transactions
    assert transaction.sender == SENDER
    assert transaction.recipients == list(RECIPIENTS)
    assert_clean_resubmission(world, transaction.data)
    mail = [c for c in smtp_sink.commands if c.upper().startswith("MAIL FROM")]
    [command] = mail
    assert command.lower().startswith(f"mail from:<{SENDER}>")
    assert "body=" not in command.lower()  # 7-bit message: no BODY=8BITMIME


def test_release_over_smtp_reports_refused_recipients(
    world: World, fresh: Held, smtp_sink: SmtpSink, cli: Cli
) -> None:
    smtp_sink.refuse.add(RECIPIENTS[1])
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"smtp:127.0.0.1:{smtp_sink.port}", stdin=fresh.authorized)
    assert result.rc == 1
    assert f"refused some recipients: {RECIPIENTS[1]} (550)" in result.err
    # The first recipient got it: the release stands, with its queue id.
    [entry] = stored(world, fresh.record_id).resubmissions
    assert entry.queue_id == "4SINK"


def test_release_over_smtp_without_a_server(
    world: World, fresh: Held, smtp_sink: SmtpSink, cli: Cli
) -> None:
    port = smtp_sink.port
    smtp_sink.shutdown()
    smtp_sink.server_close()
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"smtp:127.0.0.1:{port}", stdin=fresh.authorized)
    assert result.rc == 1
    assert result.err.startswith(f"smime-milter release: SMTP to 127.0.0.1:{port} failed: ")
    # Nothing went out: the release recorded before sending is withdrawn.
    assert stored(world, fresh.record_id).resubmissions == ()


def test_not_released_message_is_never_submitted(
    world: World, fresh: Held, smtp_sink: SmtpSink, cli: Cli
) -> None:
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"smtp:127.0.0.1:{smtp_sink.port}", stdin=world.held)
    assert result.rc == 1
    assert smtp_sink.transactions == [] and smtp_sink.commands == []
    assert stored(world, fresh.record_id).resubmissions == ()


# --------------------------------------------------------------------------- releasing once


def test_a_second_release_is_refused_naming_the_first(
    world: World, fresh: Held, smtp_sink: SmtpSink, cli: Cli
) -> None:
    submit = f"smtp:127.0.0.1:{smtp_sink.port}"
    before = datetime.now(UTC).replace(microsecond=0)
    first = cli("release", fresh.record_id, "--config", world.config_path, "--submit", submit,
                stdin=fresh.authorized)
    assert first.rc == 0, first.err
    [entry] = stored(world, fresh.record_id).resubmissions
    assert entry.queue_id == "4SINK"
    assert before <= entry.at <= datetime.now(UTC)
    assert entry.by == pwd.getpwuid(os.getuid()).pw_name or entry.by.startswith(
        f"{os.environ.get('SUDO_USER')} (as ")
    when = entry.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    refusal = (f"smime-milter release: record {fresh.record_id} was already released by "
               f"{entry.by} at {when} (queue id 4SINK); --force releases it again")

    second = cli("release", fresh.record_id, "--config", world.config_path, "--submit", submit,
                 stdin=fresh.authorized)
    assert (second.rc, second.out, second.err) == (1, b"", refusal + "\n")
    dry = cli("release", fresh.record_id, "--dry-run", "--config", world.config_path,
              stdin=fresh.authorized)
    assert (dry.rc, dry.err) == (1, refusal + "\n")
    assert len(smtp_sink.transactions) == 1

    forced = cli("release", fresh.record_id, "--force", "--config", world.config_path,
                 "--submit", submit, stdin=fresh.authorized)
    assert forced.rc == 0, forced.err
    assert len(smtp_sink.transactions) == 2
    assert [e.queue_id for e in stored(world, fresh.record_id).resubmissions] == ["4SINK"] * 2


def test_a_release_that_cannot_be_recorded_sends_nothing(
    world: World, fresh: Held, smtp_sink: SmtpSink, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> Future[None]:
        raise StoreError("disk-full", f"{world.store}: no space left")
    monkeypatch.setattr(Store, "claim_resubmission", broken)
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"smtp:127.0.0.1:{smtp_sink.port}", stdin=fresh.authorized)
    assert (result.rc, result.out) == (1, b"")
    assert result.err == (f"smime-milter release: cannot record the release of record "
                          f"{fresh.record_id} in the store ({world.store}: no space left): "
                          "nothing was sent\n")
    assert smtp_sink.transactions == []


def test_a_release_of_a_missing_store_sends_nothing(
    world: World, tmp_path: Path, smtp_sink: SmtpSink, cli: Cli
) -> None:
    config = write_config(tmp_path, world.anchors, tmp_path / "nostore",
                          f"smtp:127.0.0.1:{smtp_sink.port}")
    result = cli("release", world.record_id, "--config", config, stdin=world.authorized)
    assert result.rc == 1
    assert result.err == (f"smime-milter release: no store at {tmp_path / 'nostore'}: "
                          "nothing was sent\n")
    assert not (tmp_path / "nostore").exists() and smtp_sink.commands == []


# --------------------------------------------------------------------------- release via sendmail


def fake_sendmail(directory: Path, exit_code: int = 0) -> Path:
    script = directory / "fake-sendmail"
    script.write_text(
        "#!/bin/sh\n"
        'dir=$(dirname "$0")\n'
        'for arg in "$@"; do printf \'%s\\n\' "$arg"; done > "$dir/argv"\n'
        'cat > "$dir/stdin"\n'
        + (f'echo "sendmail: fatal: queue file write error" >&2\nexit {exit_code}\n'
           if exit_code else "exit 0\n")
    )
    script.chmod(0o755)
    return script


@pytest.mark.process
def test_release_via_sendmail(
    world: World, fresh: Held, tmp_path: Path, cli: Cli
) -> None:
    script = fake_sendmail(tmp_path)
    path = tmp_path / "authorized.eml"
    path.write_bytes(fresh.authorized)
    result = cli("release", path, "--config", world.config_path, "--submit", f"sendmail:{script}")
    assert result.rc == 0, result.err
    assert result.out.decode().endswith("; queue id unknown\n")
    assert (tmp_path / "argv").read_text().splitlines() == ["-i", "-f", SENDER, "--",
                                                            *RECIPIENTS]
    assert_clean_resubmission(world, (tmp_path / "stdin").read_bytes())
    [entry] = stored(world, fresh.record_id).resubmissions
    assert entry.queue_id is None


@pytest.mark.process
def test_release_via_the_configured_sendmail_as_a_process(
    world: World, fresh: Held, tmp_path: Path
) -> None:
    """The installed entry point, with ``[release] submit`` from the file."""
    script = fake_sendmail(tmp_path)
    config = world.config_with(f"sendmail:{script}")
    result = subprocess.run([str(SMIME_MILTER), "release", fresh.record_id, "--config",
                             str(config)], input=fresh.authorized, capture_output=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith(f"released record {fresh.record_id} ")
    assert (tmp_path / "argv").read_text().splitlines() == ["-i", "-f", SENDER, "--",
                                                            *RECIPIENTS]
    assert_clean_resubmission(world, (tmp_path / "stdin").read_bytes())


@pytest.mark.process
def test_release_via_a_failing_sendmail(
    world: World, fresh: Held, tmp_path: Path, cli: Cli
) -> None:
    script = fake_sendmail(tmp_path, exit_code=75)
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"sendmail:{script}", stdin=fresh.authorized)
    assert result.rc == 1
    assert result.err.strip() == (f"smime-milter release: {script} exited with 75: "
                                  "sendmail: fatal: queue file write error")
    assert stored(world, fresh.record_id).resubmissions == ()


@pytest.mark.process
def test_release_via_a_missing_sendmail(
    world: World, fresh: Held, tmp_path: Path, cli: Cli
) -> None:
    result = cli("release", fresh.record_id, "--config", world.config_path,
                 "--submit", f"sendmail:{tmp_path}/nope", stdin=fresh.authorized)
    assert result.rc == 1
    assert result.err.startswith(f"smime-milter release: {tmp_path}/nope: ")


# --------------------------------------------------------------------------- strip_fields

DROP = frozenset({"return-path", "delivered-to", "x-drop"})


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_strip_fields_drops_folded_fields_and_keeps_every_other_byte(newline: bytes) -> None:
    lines = [
        b"Return-Path: <a@example.com>",
        b"Received: from a",
        b"\tby b; Mon, 1 Jun 2026 00:00:00 +0000",
        b"X-Drop: first line",
        b"\tsecond line",
        b"  third line",
        b"Subject: kept",
        b"   folded too",
        b"DELIVERED-TO: upper@example.com",
        b"X-Dropped-Not: similar name stays",
        b"",
        b"Return-Path: in the body stays",
        b"X-Drop: so does this",
        b"",
    ]
    message = newline.join(lines)
    expected = newline.join([lines[1], lines[2], lines[6], lines[7], *lines[9:]])
    assert strip_fields(message, DROP) == expected


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_strip_fields_field_at_the_end_of_the_header(newline: bytes) -> None:
    message = newline.join([b"From: a@example.com", b"Delivered-To: x@example.org",
                            b"\tfolded", b"", b"body", b""])
    assert strip_fields(message, DROP) == newline.join(
        [b"From: a@example.com", b"", b"body", b""])


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_strip_fields_every_field_dropped(newline: bytes) -> None:
    message = newline.join([b"Return-Path: <a@example.com>", b"", b"body", b""])
    assert strip_fields(message, DROP) == newline.join([b"", b"body", b""])


def test_strip_fields_without_a_body_and_with_nothing_to_drop() -> None:
    assert strip_fields(b"From: a\r\nX-Drop: 1\r\n", DROP) == b"From: a\r\n"
    untouched = b"From: a\r\nSubject: b\r\n\r\n\r\nbody with blank line above\r\n"
    assert strip_fields(untouched, DROP) == untouched
    assert strip_fields(untouched, frozenset()) == untouched


def test_strip_fields_leaves_a_signed_body_byte_identical(live_pki: TestPki) -> None:
    held = held_copy(live_pki, new_record_id())
    stripped = strip_fields(held, DROPPED_FIELDS)
    assert body_of(stripped) == body_of(held)
    assert stripped.endswith(body_of(held))
    verdict = make_verifier(live_pki, clock=datetime.now(UTC)).verify(stripped)
    assert verdict.status is Status.SIGNED_VERIFIED


"""Draft-and-release end to end: a real Postfix, the milter daemon, and the
``authorize`` and ``release`` commands as a release officer would run them."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from smime_milter.stamp.fields import parse_status_header
from tests.support.daemon import SMIME_MILTER, MilterProcess
from tests.support.mailflow import POSTFIX, milter_and_postfix
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.postfix import PostfixInstance
from tests.support.smime import multipart_signed, text_entity

pytestmark = [*POSTFIX, pytest.mark.process]

OFFICERS = "release-officers@example.org"
RELEASER = "officer@example.com"
CLERK = "clerk@example.com"
RULE = f"""
[[release.rules]]
name = "vault"
senders = ["vault.example.net"]
releasers = ["{RELEASER}"]
divert_to = "hold"

[[release.rules]]
name = "hq"
senders = ["example.com"]
releasers = ["{RELEASER}"]
divert_to = "{OFFICERS}"
"""


@dataclass(frozen=True)
class World:
    milter: MilterProcess
    mta: PostfixInstance
    officer_files: tuple[Path, Path, Path]
    clerk_files: tuple[Path, Path, Path]


def _write_identity(directory: Path, name: str, identity: Identity) -> tuple[Path, Path, Path]:
    key, cert, chain = (directory / f"{name}.key", directory / f"{name}.pem",
                        directory / f"{name}-chain.pem")
    key.write_bytes(identity.key_pem)
    cert.write_bytes(identity.cert_pem)
    chain.write_bytes(b"".join(Identity(identity.key, c).cert_pem for c in identity.chain))
    return key, cert, chain


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, anchors: Path, live_pki: TestPki
          ) -> Iterator[World]:
    files = tmp_path_factory.mktemp("officer")
    officer = make_leaf(live_pki.intermediate, RELEASER, now=live_pki.now,
                        key_label="release:officer")
    clerk = make_leaf(live_pki.intermediate, CLERK, now=live_pki.now, key_label="release:clerk")
    boxes = [OFFICERS, *(f"rel{n}@example.org" for n in range(10))]
    with milter_and_postfix(tmp_path_factory, anchors, "release", extra_toml=RULE,
                            mailboxes=boxes) as (milter, mta):
        yield World(milter, mta, _write_identity(files, "officer", officer),
                    _write_identity(files, "clerk", clerk))


_serial = iter(range(10**6))


def _subject(text: str) -> str:
    return f"{text} #{next(_serial)} {time.monotonic_ns()}"


def _wait_for(mta: PostfixInstance, address: str, subject: str, timeout: float = 30.0
              ) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        found = [raw for raw in mta.delivered(address)
                 if subject in (message_from_bytes(raw)["Subject"] or "")]
        if found:
            assert len(found) == 1, f"{len(found)} copies of {subject!r} for {address}"
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r} not delivered to {address}; "
                                 f"log:\n{mta.log_text()[-3000:]}")
        time.sleep(0.05)


def _has(mta: PostfixInstance, address: str, subject: str) -> bool:
    return any(subject in (message_from_bytes(raw)["Subject"] or "")
               for raw in mta.delivered(address))


def _cli(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(SMIME_MILTER), *map(str, args)], input=stdin,
                          capture_output=True, timeout=120, check=False)


def _authorize(world: World, message: bytes, who: tuple[Path, Path, Path]) -> bytes:
    key, cert, chain = who
    result = _cli("authorize", "--key", key, "--cert", cert, "--chain", chain,
                  "--config", world.milter.config, stdin=message)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def _record(world: World, message: Message):  # type: ignore[no-untyped-def]
    [value] = message.get_all("SMIME-Status-At-Delivery")
    _, record_id = parse_status_header(str(value))
    store = world.milter.open_store()
    try:
        return store.get(record_id or "")
    finally:
        store.close()


def test_unauthorized_message_is_diverted_then_authorized_and_released(
    world: World, live_pki: TestPki, tmp_path: Path
) -> None:
    subject = _subject("draft")
    recipients = [f"rel{n}@example.org" for n in (1, 2, 6, 7, 8)]  # folds the header
    message = multipart_signed(text_entity("Move at dawn.\n"), live_pki.rsa, to=recipients[0],
                               subject=subject)
    assert world.mta.send(message, "alice@example.com", recipients).code == 250

    held_raw = _wait_for(world.mta, OFFICERS, subject)
    held = message_from_bytes(held_raw)
    assert " ".join(str(held["MMHS-Original-Recipients"]).split()) == \
        ", ".join(f"<{r}>" for r in recipients)
    field = re.search(rb"^MMHS-Original-Recipients:.*?\n(?![ \t])", held_raw, re.M | re.S)
    assert field is not None and field.group().count(b"\n") > 1  # really folded
    assert all(len(line) <= 78 for line in field.group().splitlines())
    assert str(held["SMIME-Release-Status"]).startswith("held; rule=hq;")
    assert "no MMHS-Authorizing-Users" in str(held["SMIME-Release-Status"])
    record = _record(world, held)
    assert record.envelope_recipients == tuple(recipients)
    assert record.diverted_to == OFFICERS
    assert record.release is not None and not record.release.released
    assert not any(_has(world.mta, r, subject) for r in recipients)

    authorized = _authorize(world, held_raw, world.officer_files)
    assert b"MMHS-Authorizing-Users: officer@example.com" in authorized
    path = tmp_path / "authorized.eml"
    path.write_bytes(authorized)
    result = _cli("release", path, "--config", world.milter.config,
                  "--submit", f"smtp:127.0.0.1:{world.mta.smtp_port}")
    assert result.returncode == 0, result.stderr.decode()
    assert f"released record {record.record_id}" in result.stdout.decode()

    for address in recipients:
        delivered = message_from_bytes(_wait_for(world.mta, address, subject))
        assert str(delivered["SMIME-Release-Status"]) == \
            'released; rule=hq; authorized="officer@example.com"'
        assert delivered["MMHS-Original-Recipients"] is None
        [status] = delivered.get_all("SMIME-Status-At-Delivery")
        assert parse_status_header(str(status))[0].value == "signed/verified"
        assert str(delivered["MMHS-Authorizing-Users"]) == RELEASER
    assert len([raw for raw in world.mta.delivered(OFFICERS)
                if subject in (message_from_bytes(raw)["Subject"] or "")]) == 1


def test_a_forged_authorizing_users_field_alone_never_releases(
    world: World, live_pki: TestPki
) -> None:
    subject = _subject("forged")
    message = multipart_signed(
        text_entity("Open the gate.\n"), live_pki.rsa, to="rel3@example.org", subject=subject,
        extra_headers=[("MMHS-Authorizing-Users", RELEASER),
                       ("SMIME-Release-Status", 'released; rule=hq; authorized="x@y"'),
                       ("MMHS-Original-Recipients", "<attacker@example.org>")],
    )
    assert world.mta.send(message, "alice@example.com", ["rel3@example.org"]).code == 250
    held = message_from_bytes(_wait_for(world.mta, OFFICERS, subject))
    [status] = held.get_all("SMIME-Release-Status")
    assert status.startswith("held; rule=hq;")
    assert "officer@example.com: listed but no countersignature" in " ".join(status.split())
    assert held.get_all("MMHS-Original-Recipients") == ["<rel3@example.org>"]
    assert not _has(world.mta, "rel3@example.org", subject)


def test_release_refuses_an_authorization_by_someone_who_may_not_release(
    world: World, live_pki: TestPki, tmp_path: Path
) -> None:
    subject = _subject("clerk")
    message = multipart_signed(text_entity("Lunch?\n"), live_pki.rsa, to="rel4@example.org",
                               subject=subject)
    assert world.mta.send(message, "alice@example.com", ["rel4@example.org"]).code == 250
    held_raw = _wait_for(world.mta, OFFICERS, subject)
    authorized = _authorize(world, held_raw, world.clerk_files)
    path = tmp_path / "clerk.eml"
    path.write_bytes(authorized)
    result = _cli("release", path, "--config", world.milter.config,
                  "--submit", f"smtp:127.0.0.1:{world.mta.smtp_port}")
    assert result.returncode == 1
    assert "clerk@example.com: not an authorized releaser under rule hq" in \
        result.stderr.decode()
    # Submitted anyway, the milter holds it back again: the milter decides, not the tool.
    assert world.mta.send(authorized, "alice@example.com", ["rel4@example.org"]).code == 250
    time.sleep(1)
    assert not _has(world.mta, "rel4@example.org", subject)
    assert _wait_for_count(world.mta, OFFICERS, subject, 2)


def test_hold_rule_puts_the_unreleased_message_on_the_hold_queue(
    world: World, live_pki: TestPki
) -> None:
    subject = _subject("vault")
    message = multipart_signed(text_entity("Ledger.\n"), live_pki.rsa, to="rel5@example.org",
                               subject=subject)
    assert world.mta.send(message, "keeper@vault.example.net", ["rel5@example.org"]).code == 250
    world.mta.wait_until_idle(20)
    held = [entry for entry in world.mta.queue() if entry.get("queue_name") == "hold"
            and entry.get("sender") == "keeper@vault.example.net"]
    assert len(held) == 1
    # The recipients stay as they were: releasing from hold needs no re-addressing.
    assert [r["address"] for r in held[0]["recipients"]] == ["rel5@example.org"]
    assert not _has(world.mta, "rel5@example.org", subject)
    assert "release=held rule=vault" in world.milter.log_text()


def _wait_for_count(mta: PostfixInstance, address: str, subject: str, count: int) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len([raw for raw in mta.delivered(address)
                if subject in (message_from_bytes(raw)["Subject"] or "")]) == count:
            return True
        time.sleep(0.05)
    return False

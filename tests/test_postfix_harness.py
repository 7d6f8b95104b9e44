"""The throw-away Postfix harness really delivers, really calls milters, and cleans up."""

from __future__ import annotations

import contextlib
import smtplib
import socket
from pathlib import Path

import pytest

from tests.support.nullmilter import null_milter
from tests.support.postfix import (
    POSTFIX_MISSING,
    PostfixFactory,
    PostfixInstance,
    PostfixStartError,
    postfix_available,
    process_group,
)

pytestmark = [pytest.mark.postfix,
              pytest.mark.skipif(not postfix_available(), reason=POSTFIX_MISSING)]

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.com"

# Date/Message-ID present so Postfix adds no header of its own; a leading dot, trailing
# blanks, a tab and 8-bit text must all survive the trip unchanged.
MESSAGE = b"\n".join(
    [
        b"From: Alice <alice@example.org>",
        b"To: Bob <bob@example.org>",
        b"Subject: harness check",
        b"Date: Sat, 22 Nov 2025 10:00:00 +0000",
        b"Message-ID: <harness-check@example.org>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b"First line.",
        b".a line that starts with a dot",
        b"trailing blanks   ",
        b"\ttabbed",
        "Grüße".encode(),
        b"",
    ]
)
# What virtual(8) prepends to each delivered copy.
DELIVERY_HEADERS = [b"Return-Path", b"X-Original-To", b"Delivered-To", b"Received"]


def prepended_header_names(copy: bytes) -> list[bytes]:
    """Names of the header fields in front of MESSAGE in a delivered copy."""
    assert copy.endswith(MESSAGE)
    prefix = copy[: -len(MESSAGE)]
    return [line.split(b":")[0] for line in prefix.splitlines() if not line[:1].isspace()]


def test_message_is_delivered_to_its_own_maildir_unchanged(postfix: PostfixFactory) -> None:
    mta = postfix()
    reply = mta.send(MESSAGE, ALICE, [BOB])
    assert (reply.code, reply.stage) == (250, "DATA"), reply

    [copy] = mta.wait_for_delivery(BOB, 1)
    assert prepended_header_names(copy) == DELIVERY_HEADERS
    assert b"Delivered-To: bob@example.org\n" in copy
    assert [path.parent.name for path in mta.mailbox(BOB).glob("*/*")] == ["new"]
    assert mta.delivered(ALICE) == []


def test_each_recipient_gets_one_copy(postfix: PostfixFactory) -> None:
    mta = postfix()
    assert mta.send(MESSAGE, ALICE, [BOB, CAROL]).ok

    mta.wait_for_delivery(BOB, 1)
    mta.wait_for_delivery(CAROL, 1)
    mta.wait_until_idle()
    assert mta.queue() == []
    for address in (BOB, CAROL):
        [copy] = mta.delivered(address)
        assert f"Delivered-To: {address}\n".encode() in copy


@pytest.mark.daemon
def test_null_milter_is_consulted_and_changes_nothing(
    postfix: PostfixFactory, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as milter:
        socket_spec = milter.enter_context(null_milter(f"unix:{tmp_path}/null.sock"))
        mta = postfix(milter=socket_spec)  # milter_default_action = tempfail
        assert mta.send(MESSAGE, ALICE, [BOB]).ok
        [copy] = mta.wait_for_delivery(BOB, 1)
        assert prepended_header_names(copy) == DELIVERY_HEADERS  # nothing added

    # The same instance cannot accept mail once its milter is gone: it was in the path.
    reply = mta.send(MESSAGE, ALICE, [BOB])
    assert reply.code // 100 == 4, reply
    mta.wait_for_log(f"connect to Milter service {socket_spec}")


def test_unreachable_milter_defers_and_delivers_nothing(
    postfix: PostfixFactory, tmp_path: Path
) -> None:
    dead_socket = f"unix:{tmp_path}/nobody-listens.sock"
    mta = postfix(milter=dead_socket, milter_default_action="tempfail")

    reply = mta.send(MESSAGE, ALICE, [BOB])

    # smtpd connects to its milters when the SMTP client connects, so the verdict comes
    # as soon as a command can be refused: MAIL FROM, not the end of DATA.
    assert (reply.code, reply.stage) == (451, "MAIL"), reply
    assert reply.text.startswith("4.7.1")
    mta.wait_until_idle()
    assert mta.queue() == []
    assert mta.delivered(BOB) == []
    mta.wait_for_log("milter-reject: MAIL")


@pytest.mark.daemon
def test_milter_dying_mid_message_gives_4xx_at_end_of_data(
    postfix: PostfixFactory, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as milter:
        mta = postfix(milter=milter.enter_context(null_milter(f"unix:{tmp_path}/null.sock")))
        mta.add_mailboxes(BOB)
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as smtp:
            smtp.ehlo("client.test.invalid")
            assert smtp.mail(ALICE)[0] == 250
            assert smtp.rcpt(BOB)[0] == 250
            milter.close()  # the milter is killed between RCPT and DATA
            code, text = smtp.data(MESSAGE.replace(b"\n", b"\r\n"))

    assert code // 100 == 4, text
    mta.wait_for_log("milter-reject: END-OF-MESSAGE")
    mta.wait_until_idle()
    assert mta.queue() == []
    assert mta.delivered(BOB) == []


def test_held_message_shows_in_queue(postfix: PostfixFactory) -> None:
    mta = postfix(settings={"smtpd_end_of_data_restrictions": "check_sender_access static:HOLD"})
    assert mta.send(MESSAGE, ALICE, [BOB]).ok
    mta.wait_until_idle()

    [entry] = mta.queue()
    assert entry["queue_name"] == "hold"
    assert entry["sender"] == ALICE
    assert [rcpt["address"] for rcpt in entry["recipients"]] == [BOB]
    mta.flush()  # held mail stays held
    assert mta.delivered(BOB) == []


def test_two_instances_run_side_by_side(postfix: PostfixFactory) -> None:
    first, second = postfix(), postfix()
    assert first.smtp_port != second.smtp_port
    assert first.syslog_name != second.syslog_name

    assert first.send(MESSAGE, ALICE, [BOB]).ok
    assert second.send(MESSAGE, ALICE, [CAROL]).ok
    first.wait_for_delivery(BOB, 1)
    second.wait_for_delivery(CAROL, 1)
    first.wait_until_idle()
    second.wait_until_idle()
    assert first.delivered(CAROL) == [] and second.delivered(BOB) == []

    first.stop()
    assert second.send(MESSAGE, ALICE, [BOB]).ok
    second.wait_for_delivery(BOB, 1)


def test_stop_kills_every_daemon(postfix: PostfixFactory) -> None:
    mta = postfix()
    assert mta.send(MESSAGE, ALICE, [BOB]).ok
    mta.wait_for_delivery(BOB, 1)
    group = mta.master_pid
    assert len(process_group(group)) > 3  # master, qmgr, postlogd, smtpd, virtual, ...

    mta.stop()

    assert process_group(group) == set()  # none left, not even as zombies
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", mta.smtp_port), timeout=5).close()


def test_start_failure_quotes_postfix(tmp_path: Path) -> None:
    broken = PostfixInstance(tmp_path, settings={"queue_directory": str(tmp_path / "missing")})
    with pytest.raises(PostfixStartError, match=r"chdir .*missing"):
        broken.start()
    assert not broken.running

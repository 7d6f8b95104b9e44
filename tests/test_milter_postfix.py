"""The milter in a real Postfix: SMTP in, Maildir and LMDB store out.

Every test here runs the ``smime-milter run`` daemon as a subprocess and a
throw-away Postfix (tests/support/postfix.py) whose smtpd talks to it over a
unix socket, then inspects what Postfix delivered and what the store holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

import pytest

from smime_milter.model import Status
from smime_milter.stamp.fields import parse_status_header
from tests.support.daemon import MilterProcess
from tests.support.mailflow import (
    AUTHSERV_ID,
    POSTFIX,
    delivered_with,
    milter_and_postfix,
    milter_process,
    record_of,
    signed_message,
    stamps,
    tampered,
    unique,
    wait_for_log,
)
from tests.support.milterproxy import MilterRelay
from tests.support.pki import TestPki
from tests.support.postfix import PostfixFactory, PostfixInstance
from tests.support.smime import opaque_signed, text_entity, wrap_message

pytestmark = POSTFIX


#: Mailboxes known to Postfix from the start: updating its table while mail flows
#: makes virtual(8) restart and defer, so every test draws a fresh one from here.
MAILBOXES = [f"box{n}@example.org" for n in range(40)]
_next_mailbox = iter(MAILBOXES)


@pytest.fixture
def rcpt() -> str:
    """A mailbox of this test's own, so each test reads only its own deliveries."""
    return next(_next_mailbox)


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, anchors: Path
         ) -> Iterator[tuple[MilterProcess, PostfixInstance]]:
    settings = {"message_size_limit": 80 << 20, "virtual_mailbox_limit": 0,
                "default_process_limit": 250,
                "smtpd_client_connection_count_limit": 0}
    with milter_and_postfix(tmp_path_factory, anchors, "shared", mailboxes=MAILBOXES,
                            settings=settings) as both:
        yield both


@pytest.fixture(scope="module")
def milter(flow: tuple[MilterProcess, PostfixInstance]) -> MilterProcess:
    return flow[0]


@pytest.fixture(scope="module")
def mta(flow: tuple[MilterProcess, PostfixInstance]) -> PostfixInstance:
    return flow[1]


def test_signed_message_is_stamped_and_recorded(
    mta: PostfixInstance, milter: MilterProcess, live_pki: TestPki, rcpt: str
) -> None:
    subject = unique("signed")
    reply = mta.send(signed_message(live_pki, subject, rcpt), "alice@example.com", [rcpt])
    assert reply.ok, reply
    message = delivered_with(mta, rcpt, subject)
    results, statuses = stamps(message)
    assert len(results) == 1 and results[0].startswith(f"{AUTHSERV_ID}; smime=pass")
    assert "body.smime-identifier=alice@example.com" in results[0]
    assert parse_status_header(statuses[0])[0] is Status.SIGNED_VERIFIED
    # Stamps go on top, above Postfix's own Received line (the delivery agent adds
    # Return-Path and Delivered-To above them later).
    names = list(message.keys())
    received = names.index("Received")
    assert names[received - 2:received] == ["Authentication-Results", "SMIME-Status-At-Delivery"]
    record = record_of(milter, message)
    assert record.status_at_delivery is Status.SIGNED_VERIFIED
    assert record.status is Status.SIGNED_VERIFIED and record.errors is None
    assert record.envelope_sender == "alice@example.com"
    assert record.envelope_recipients == (rcpt,)
    assert record.message_id == message["Message-ID"]
    assert record.from_address == "alice@example.com"
    assert record.queue_id and record.queue_id in mta.log_text()
    assert record.signers[0].certificate == live_pki.rsa.cert_der
    # Enough to re-validate without the message: the intermediate came along.
    assert live_pki.intermediate.cert_der in record.certificates
    assert abs((record.received_at - datetime.now(UTC)).total_seconds()) < 120


def test_tampered_message_is_delivered_as_failed(
    mta: PostfixInstance, milter: MilterProcess, live_pki: TestPki, rcpt: str
) -> None:
    subject = unique("tampered")
    message_bytes = tampered(signed_message(live_pki, subject, rcpt))
    reply = mta.send(message_bytes, "alice@example.com", [rcpt])
    assert reply.ok, reply
    message = delivered_with(mta, rcpt, subject)
    results, statuses = stamps(message)
    assert results[0].startswith(f"{AUTHSERV_ID}; smime=fail")
    assert parse_status_header(statuses[0])[0] is Status.SIGNED_FAILED
    assert "Hello Eve" in message.as_string()
    record = record_of(milter, message)
    assert record.status_at_delivery is Status.SIGNED_FAILED
    assert record.errors and any("digest" in e or "signature" in e for e in record.errors)


def test_opaque_signed_message_is_verified(
    mta: PostfixInstance, milter: MilterProcess, live_pki: TestPki, rcpt: str
) -> None:
    subject = unique("opaque")
    message_bytes = opaque_signed(text_entity("Hello Bob\n"), live_pki.rsa, to=rcpt,
                                  subject=subject)
    assert mta.send(message_bytes, "alice@example.com", [rcpt]).ok
    message = delivered_with(mta, rcpt, subject)
    assert record_of(milter, message).status_at_delivery is Status.SIGNED_VERIFIED


def test_unsigned_message_gets_none(mta: PostfixInstance, milter: MilterProcess, rcpt: str
                                   ) -> None:
    subject = unique("plain")
    message_bytes = wrap_message(text_entity("just text\n"), to=rcpt, subject=subject)
    assert mta.send(message_bytes, "carol@example.net", [rcpt]).ok
    message = delivered_with(mta, rcpt, subject)
    results, statuses = stamps(message)
    assert results == [f"{AUTHSERV_ID}; smime=none"]
    record = record_of(milter, message)
    assert record.status_at_delivery is None and record.status is None
    assert parse_status_header(statuses[0])[0] is None


def test_forged_stamps_are_removed_and_others_kept(
    mta: PostfixInstance, milter: MilterProcess, live_pki: TestPki, rcpt: str
) -> None:
    subject = unique("forged")
    forged = (
        ("Authentication-Results", f"{AUTHSERV_ID}; smime=pass body.smime-identifier=x@y"),
        ("SMIME-Status-At-Delivery", "signed/verified; record=rforgedforgedforgedforged0"),
        ("Authentication-Results", "other.example; dkim=pass"),
        ("Authentication-Results", f"(sneaky) {AUTHSERV_ID.upper()} 1; smime=pass"),
        ("smime-status-at-delivery", "signed/verified"),
    )
    message_bytes = tampered(signed_message(live_pki, subject, rcpt, extra_headers=forged))
    assert mta.send(message_bytes, "alice@example.com", [rcpt]).ok
    message = delivered_with(mta, rcpt, subject)
    results, statuses = stamps(message)
    assert len(results) == 1 and "smime=fail" in results[0]
    assert len(statuses) == 1 and parse_status_header(statuses[0])[0] is Status.SIGNED_FAILED
    all_results = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results")]
    assert "other.example; dkim=pass" in all_results
    assert not any("sneaky" in r or "x@y" in r for r in all_results)


def test_several_messages_on_one_connection_each_get_their_own_record(
    mta: PostfixInstance, milter: MilterProcess, live_pki: TestPki, rcpt: str
) -> None:
    import smtplib

    subjects = [unique("same-connection") for _ in range(3)]
    messages = [signed_message(live_pki, subjects[0], rcpt),
                wrap_message(text_entity("plain\n"), to=rcpt, subject=subjects[1]),
                tampered(signed_message(live_pki, subjects[2], rcpt))]
    mta.add_mailboxes(rcpt)
    with smtplib.SMTP("127.0.0.1", mta.smtp_port) as smtp:
        for data in messages:
            smtp.sendmail("alice@example.com", [rcpt], data)
    delivered = [delivered_with(mta, rcpt, s) for s in subjects]
    records = [record_of(milter, m) for m in delivered]
    assert [r.status_at_delivery for r in records] == [
        Status.SIGNED_VERIFIED, None, Status.SIGNED_FAILED]
    assert len({r.record_id for r in records}) == 3


def test_fifty_megabyte_message(mta: PostfixInstance, milter: MilterProcess,
                                live_pki: TestPki, rcpt: str) -> None:
    subject = unique("big")
    line = "0123456789abcdef" * 4 + "\n"
    body = "Hello Bob\n" + line * ((50 << 20) // len(line))
    reply = mta.send(signed_message(live_pki, subject, rcpt, body), "alice@example.com", [rcpt],
                     timeout=300)
    assert reply.ok, reply
    message = delivered_with(mta, rcpt, subject, timeout=120)
    assert record_of(milter, message).status_at_delivery is Status.SIGNED_VERIFIED
    assert len(message.as_bytes()) > 50 << 20
    # The spool file is gone once the message is done.
    assert not list(Path("/tmp").glob("smime-milter-*"))


def test_two_hundred_parallel_sessions(mta: PostfixInstance, milter: MilterProcess,
                                       live_pki: TestPki, rcpt: str) -> None:
    base = unique("parallel")
    subjects = [f"{base} n{n}." for n in range(200)]
    messages = [(subject, signed_message(live_pki, subject, rcpt)) for subject in subjects]
    mta.add_mailboxes(rcpt)
    barrier = threading.Barrier(200)

    def send(item: tuple[str, bytes]) -> int:
        barrier.wait(60)
        return mta.send(item[1], "alice@example.com", [rcpt], timeout=300).code

    with ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(send, messages))
    assert codes == [250] * 200
    delivered = [message_from_bytes(m) for m in mta.wait_for_delivery(rcpt, 200, timeout=120)]
    assert sorted(str(m["Subject"]) for m in delivered) == sorted(s for s, _ in messages)
    record_ids = set()
    for message in delivered:
        status, record_id = parse_status_header(stamps(message)[1][0])
        assert status is Status.SIGNED_VERIFIED
        record_ids.add(record_id)
    assert len(record_ids) == 200


def test_policy_reject_and_quarantine(tmp_path: Path, anchors: Path, live_pki: TestPki,
                                      rcpt: str, postfix: PostfixFactory) -> None:
    policy = ('[policy]\nfailed = "quarantine"\nnone = "tag"\n'
              '[policy.domains."example.com"]\nfailed = "reject"\n')
    with milter_process(tmp_path / "milter", anchors, policy) as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[rcpt, "carol@example.com"])
        bad = tampered(signed_message(live_pki, unique("r"), rcpt))
        rejected = mta.send(bad, "a@example.com", ["carol@example.com"])
        assert rejected.code == 550, rejected
        assert "5.7.1" in rejected.text and "signed/failed" in rejected.text
        held_subject = unique("held")
        held = mta.send(tampered(signed_message(live_pki, held_subject, rcpt)), "a@example.com",
                        [rcpt])
        assert held.ok
        mta.wait_until_idle(20)
        assert any(entry.get("queue_name") == "hold" for entry in mta.queue())
        assert mta.delivered(rcpt) == []
        tagged = unique("tagged")
        mta.send(wrap_message(text_entity("x\n"), to=rcpt, subject=tagged), "a@example.com",
                 [rcpt])
        message = delivered_with(mta, rcpt, tagged)
        assert message["Subject"].startswith("[S/MIME none] ")
        assert "action=reject" in daemon.log_text() and "action=quarantine" in daemon.log_text()


def _send_until_accepted(mta: PostfixInstance, message: bytes, rcpt: str, deadline: float,
                         give_up: threading.Event) -> list[int]:
    """Send like an SMTP client would: retry after a 4xx; returns every reply code."""
    codes: list[int] = []
    while time.monotonic() < deadline and not give_up.is_set():
        code = mta.send(message, "alice@example.com", [rcpt], timeout=60).code
        codes.append(code)
        if code == 250 or code >= 500:
            return codes
        time.sleep(0.25)
    return codes


def test_kill_9_during_sends_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, anchors: Path, live_pki: TestPki, rcpt: str, postfix: PostfixFactory
) -> None:
    """kill -9 of the milter while it answers a message's end of data (a relay in
    front of it holds the answer back and kills it, so the moment is exact every run):
    Postfix must tempfail that message, and every message sent meanwhile, rather than
    pass it unstamped or lose it; once the milter is back each is delivered once."""
    daemon = milter_process(tmp_path / "milter", anchors)
    daemon.start()
    try:
        with MilterRelay(tmp_path / "relay" / "relay.sock", daemon.socket, kill=daemon.kill,
                         kill_at=10) as relay:
            mta = postfix(milter=relay.postfix_socket, mailboxes=[rcpt])
            base = unique("kill")
            subjects = [f"{base} n{n}." for n in range(60)]
            replies: dict[str, list[int]] = {}
            deadline, give_up = time.monotonic() + 240, threading.Event()

            def send(subject: str) -> None:
                replies[subject] = _send_until_accepted(
                    mta, signed_message(live_pki, subject, rcpt), rcpt, deadline, give_up)

            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(send, subject) for subject in subjects]
                try:
                    assert relay.killed.wait(120), "the tenth message never reached end of data"
                    daemon.start()
                except BaseException:
                    give_up.set()  # fail now, not after every sender's patience
                    raise
                for future in futures:
                    future.result()
        assert all(codes[-1] == 250 for codes in replies.values()), replies
        # The message the milter died on was deferred, not passed or lost.
        assert relay.killed_subject in subjects, relay.killed_subject
        assert 450 <= replies[relay.killed_subject][0] < 500, replies[relay.killed_subject]
        mta.wait_for_delivery(rcpt, len(subjects), timeout=60)
        mta.wait_until_idle(20)
        delivered = [message_from_bytes(m) for m in mta.delivered(rcpt)]
        assert sorted(str(m["Subject"]) for m in delivered) == sorted(subjects)
        store = daemon.open_store()
        for message in delivered:
            status, record_id = parse_status_header(stamps(message)[1][0])
            assert status is Status.SIGNED_VERIFIED
            assert record_id is not None and store.get(record_id) is not None
    finally:
        daemon.stop()


def test_reload_under_load_drops_nothing_and_applies_the_new_policy(
    tmp_path: Path, anchors: Path, live_pki: TestPki, rcpt: str
, postfix: PostfixFactory) -> None:
    with milter_process(tmp_path / "milter", anchors) as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[rcpt])
        base = unique("reload")
        reloads_done = threading.Event()
        sent: list[tuple[str, int]] = []
        counter = iter(range(10**6))

        def sender() -> None:
            # Keep mail flowing until every reload has happened, and a little after.
            while not reloads_done.is_set() or len(sent) < 40:
                subject = f"{base} n{next(counter)}."
                code = mta.send(signed_message(live_pki, subject, rcpt), "alice@example.com",
                                [rcpt]).code
                sent.append((subject, code))

        senders = [threading.Thread(target=sender) for _ in range(4)]
        for thread in senders:
            thread.start()
        for round_number in range(1, 5):
            time.sleep(0.3)
            daemon.write_config('[policy]\nnone = "tag"\n' if round_number % 2 else "")
            daemon.reload()
            wait_for_log(daemon, "reloaded: config", round_number)
        reloads_done.set()
        for thread in senders:
            thread.join()
        assert [code for _, code in sent] == [250] * len(sent)
        delivered = [message_from_bytes(m)
                     for m in mta.wait_for_delivery(rcpt, len(sent), timeout=60)]
        assert sorted(str(m["Subject"]) for m in delivered) == sorted(s for s, _ in sent)
        for message in delivered:
            assert parse_status_header(stamps(message)[1][0])[0] is Status.SIGNED_VERIFIED
        # Round 4 removed the tag policy again; one more reload brings it back.
        daemon.write_config('[policy]\nnone = "tag"\n')
        daemon.reload()
        wait_for_log(daemon, "reloaded: config", 5)
        plain = unique("after-reload")
        mta.send(wrap_message(text_entity("x\n"), to=rcpt, subject=plain), "a@example.com",
                 [rcpt])
        assert delivered_with(mta, rcpt, plain)["Subject"] == f"[S/MIME none] {plain}"


def test_bad_config_on_reload_keeps_the_running_one(
    tmp_path: Path, anchors: Path, live_pki: TestPki, rcpt: str
, postfix: PostfixFactory) -> None:
    with milter_process(tmp_path / "milter", anchors) as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[rcpt])
        daemon.write_config('[policy]\nfailed = "explode"\n')
        daemon.reload()
        wait_for_log(daemon, "reload failed")
        assert "policy.failed: invalid value 'explode'" in daemon.log_text()
        subject = unique("still-running")
        assert mta.send(signed_message(live_pki, subject, rcpt), "a@example.com", [rcpt]).ok
        assert delivered_with(mta, rcpt, subject)


def test_full_store_tempfails_instead_of_losing_or_passing_mail(
    tmp_path: Path, anchors: Path, live_pki: TestPki, rcpt: str
, postfix: PostfixFactory) -> None:
    """A full store must not lose or pass mail: the MTA gets 451 and retries later."""
    with milter_process(tmp_path / "milter", anchors, map_size="1M", max_map_size="1M") as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[rcpt],
                      settings={"message_size_limit": 80 << 20, "virtual_mailbox_limit": 0})
        codes = []
        for n in range(400):
            codes.append(mta.send(signed_message(live_pki, unique(f"fill {n}"), rcpt),
                                  "a@example.com", [rcpt]).code)
            if codes[-1] != 250:
                break
        assert codes[-1] == 451, codes[-5:]
        assert "store failure reason=map-full" in daemon.log_text()
        accepted = len(codes) - 1
        mta.wait_for_delivery(rcpt, accepted, timeout=60)
        mta.wait_until_idle(20)
        assert len(mta.delivered(rcpt)) == accepted

"""``smime-milter ingest``: rebuilding store records from delivered, stamped mail.

Unit tests stamp messages signed with the standard test PKI exactly as the milter
does (the real ``stamp`` functions over a verdict of the real engine at
:data:`NOW`) and prepend what Postfix and its delivery agent add (Received,
Return-Path, X-Original-To, Delivered-To), with the LF line endings of a
Maildir file. The last test runs the real milter daemon in a real Postfix,
then rebuilds a new store from the delivered Maildir and compares it with the
milter's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smime_milter.cli.main import main
from smime_milter.config.reader import load_config
from smime_milter.ingest import (
    IngestResult,
    Untrusted,
    ingest_message,
    message_files,
    read_stamp,
)
from smime_milter.model import Status, Verdict, is_issued_record_id, new_record_id
from smime_milter.stamp import fields as stamp
from smime_milter.store import Record, Store
from smime_milter.verify.engine import Verifier
from tests.support import mailflow
from tests.support.clockedcli import fixed
from tests.support.pki import TestPki
from tests.support.postfix import POSTFIX_MISSING, PostfixFactory, postfix_available
from tests.support.smime import multipart_signed, opaque_signed, text_entity, wrap_message
from tests.support.verdicts import BODY, NOW, make_verifier

AUTHSERV = "mx.example.org"
RCPT = "bob@example.org"
SENDER = "alice@example.com"

Fields = Sequence[tuple[str, str]]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store") as opened:
        yield opened


@pytest.fixture(scope="module")
def signed(pki: TestPki) -> bytes:
    return multipart_signed(text_entity(BODY), pki.rsa, signing_time=NOW)


def tampered(message: bytes) -> bytes:
    return message.replace(b"this message is signed", b"this message is forged", 1)


def received(when: datetime = NOW, by: str = AUTHSERV) -> tuple[str, str]:
    return ("Received", f"from client.example.net (client.example.net [192.0.2.7])\n"
                        f"\tby {by} (Postfix) with ESMTPS id 4Xyz12AbCd\n"
                        f"\tfor <{RCPT}>; {format_datetime(when)}")


def delivery_fields(rcpt: str = RCPT) -> list[tuple[str, str]]:
    """What Postfix virtual(8) prepends at delivery, above the milter's fields."""
    return [("Return-Path", f"<{SENDER}>"), ("X-Original-To", rcpt), ("Delivered-To", rcpt)]


def milter_fields(verdict: Verdict, record_id: str, authserv_id: str = AUTHSERV) -> Fields:
    """The two fields the milter inserts, made by the real stamp functions."""
    return [(stamp.AR_HEADER, stamp.authentication_results(authserv_id, verdict)),
            (stamp.STATUS_HEADER, stamp.status_header(verdict.status, record_id))]


def delivered(message: bytes, *fields: tuple[str, str]) -> bytes:
    """``fields`` prepended to ``message``, as stored in a Maildir (LF line endings)."""
    head = "".join(f"{name}: {value}\n" for name, value in fields).encode()
    return (head + message).replace(b"\r\n", b"\n")


def as_milter_delivers(message: bytes, verifier: Verifier, record_id: str | None = None,
                       *, rcpt: str = RCPT) -> tuple[bytes, Verdict, str]:
    """(delivered copy, the milter's verdict, record id) for a message received at NOW."""
    record_id = record_id or new_record_id()
    verdict = verifier.verify(message, at=NOW)
    copy = delivered(message, *delivery_fields(rcpt), *milter_fields(verdict, record_id),
                     received())
    return copy, verdict, record_id


def milter_record(message: bytes, verdict: Verdict, record_id: str, **changes: object
                  ) -> Record:
    """The record the milter stores for a message delivered at NOW."""
    record = Record.from_verdict(
        verdict, record_id=record_id, received_at=NOW, envelope_sender=SENDER,
        envelope_recipients=(RCPT,), message_id=message_id(message), queue_id="4Xyz12AbCd",
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def message_id(message: bytes) -> str:
    for line in message.splitlines():
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


def ingest(raw: bytes, verifier: Verifier, store: Store, now: datetime = NOW,
           authserv_id: str = AUTHSERV) -> IngestResult:
    return ingest_message(raw, authserv_id=authserv_id, verifier=verifier, store=store, now=now)


def assert_skipped(result: IngestResult, store: Store, *fragments: str) -> None:
    assert result.action == "skipped" and result.record_id is None, result
    assert result.reason and "\n" not in result.reason
    for fragment in fragments:
        assert fragment in result.reason, result.reason
    assert list(store.record_ids()) == []


# --------------------------------------------------------------------------- new records


def test_verified_message_rebuilds_the_milters_record(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, verdict, record_id = as_milter_delivers(signed, verifier)
    assert verdict.status is Status.SIGNED_VERIFIED
    result = ingest(copy, verifier, store)
    assert result == IngestResult(record_id, "created")
    # Exactly the milter's record, but for the queue id, which the copy does not carry.
    assert store.get(record_id) == milter_record(signed, verdict, record_id, queue_id=None)


def test_failed_message_keeps_the_engines_errors(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    message = tampered(signed)
    copy, verdict, record_id = as_milter_delivers(message, verifier)
    assert verdict.status is Status.SIGNED_FAILED and verdict.errors
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record == milter_record(message, verdict, record_id, queue_id=None)
    assert record is not None and record.errors_at_delivery == verdict.errors


def test_opaque_signed_message(pki: TestPki, verifier: Verifier, store: Store) -> None:
    message = opaque_signed(text_entity(BODY), pki.ec256, from_addr="ec256@example.com",
                            signing_time=NOW)
    copy, _, record_id = as_milter_delivers(message, verifier)
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None and record.status_at_delivery is Status.SIGNED_VERIFIED
    assert record.signers[0].certificate == pki.ec256.cert_der and record.revalidatable


def test_unsigned_message_gets_a_record_with_no_status(verifier: Verifier, store: Store
                                                      ) -> None:
    message = wrap_message(text_entity("plain\n"))
    copy, verdict, record_id = as_milter_delivers(message, verifier)
    assert "smime=none" in copy.decode()
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record == milter_record(message, verdict, record_id, queue_id=None)
    assert record is not None and record.status_at_delivery is None and record.status is None
    assert record.verified_at is None and not record.revalidatable


def test_current_status_is_verified_again_as_of_now(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, _, record_id = as_milter_delivers(signed, verifier)
    later = NOW + timedelta(days=3650)  # the signer's certificate has long expired
    assert ingest(copy, verifier, store, now=later).action == "created"
    record = store.get(record_id)
    assert record is not None
    assert record.status_at_delivery is Status.SIGNED_VERIFIED
    assert record.errors_at_delivery is None
    assert record.status is Status.SIGNED_FAILED and record.errors
    assert record.verified_at == later
    # The signers are those of the moment of delivery, as in the milter's record.
    assert record.signers[0].chain_ok


class CountingVerifier:
    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.moments: list[datetime | None] = []

    def verify(self, message: bytes, at: datetime | None = None) -> Verdict:
        self.moments.append(at)
        return self.verifier.verify(message, at=at)


def test_one_verification_when_now_is_the_moment_of_delivery(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, _, _ = as_milter_delivers(signed, verifier)
    counting = CountingVerifier(verifier)
    ingest_message(copy, authserv_id=AUTHSERV, verifier=counting,  # type: ignore[arg-type]
                   store=store, now=NOW)
    assert counting.moments == [NOW]


def test_envelope_comes_from_the_delivery_agents_fields_only(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = delivered(
        signed,
        ("Return-Path", "<>"),  # a bounce: null sender
        ("Delivered-To", "final@example.org"),
        *milter_fields(verdict, record_id),
        received(),
        # Left by an upstream hop: below our stamp, so not ours.
        ("X-Original-To", "someone-else@example.net"),
        ("Return-Path", "<upstream@example.net>"),
    )
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None
    assert record.envelope_sender == ""
    assert record.envelope_recipients == ("final@example.org",)
    assert record.queue_id is None


def test_received_at_is_the_received_field_below_the_stamp(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    ours = NOW - timedelta(minutes=3)
    copy = delivered(
        signed,
        received(NOW + timedelta(seconds=2), by="imap.example.org"),  # LMTP, after the milter
        *delivery_fields(),
        *milter_fields(verdict, record_id),
        received(ours),
        received(NOW - timedelta(hours=1), by="upstream.example.net"),
    )
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None and record.received_at == ours


def test_received_at_falls_back_to_the_topmost_received(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = delivered(signed, received(NOW - timedelta(seconds=5)),
                     *milter_fields(verdict, record_id), ("Received", "no date here"))
    assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None and record.received_at == NOW - timedelta(seconds=5)


def test_no_received_date_and_no_record_is_skipped(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = delivered(signed, *milter_fields(verdict, record_id),
                     ("Received", "by mx.example.org; not a date"))
    assert_skipped(ingest(copy, verifier, store), store, "no Received field", record_id)
    # With a record the moment of delivery is known: nothing is missing.
    store.put_sync(milter_record(signed, verdict, record_id))
    assert ingest(copy, verifier, store).action == "unchanged"


def test_stamp_says_failed_but_the_message_verifies(
    signed: bytes, verifier: Verifier, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. the anchor was missing at the MTA but is configured here: the stamp
    decides the status at delivery, and its reason stands in for the errors."""
    record_id = new_record_id()
    copy = delivered(
        signed, *delivery_fields(),
        (stamp.AR_HEADER, f"{AUTHSERV}; smime=fail (certificate is not trusted) "
                          "body.smime-identifier=alice@example.com"),
        (stamp.STATUS_HEADER, stamp.status_header(Status.SIGNED_FAILED, record_id)),
        received(),
    )
    with caplog.at_level(logging.WARNING, "smime_milter.ingest"):
        assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None
    assert record.status_at_delivery is Status.SIGNED_FAILED
    assert record.errors_at_delivery == (
        f"the delivery stamp of {AUTHSERV} recorded a failure: certificate is not trusted",)
    assert record.status is Status.SIGNED_VERIFIED  # as of now, here
    assert record.signers and record.signers[0].ok
    assert record_id in caplog.text and "keeping signed/failed" in caplog.text


def test_stamp_says_verified_but_the_message_was_changed_since(
    signed: bytes, verifier: Verifier, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = tampered(delivered(signed, *delivery_fields(), *milter_fields(verdict, record_id),
                              received()))
    with caplog.at_level(logging.WARNING, "smime_milter.ingest"):
        assert ingest(copy, verifier, store).action == "created"
    record = store.get(record_id)
    assert record is not None
    assert record.status_at_delivery is Status.SIGNED_VERIFIED
    assert record.errors_at_delivery is None
    assert record.status is Status.SIGNED_FAILED and record.errors
    assert "keeping signed/verified" in caplog.text


# --------------------------------------------------------------------------- trust


def test_authserv_id_is_compared_case_insensitively(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, _, record_id = as_milter_delivers(signed, verifier)
    result = ingest(copy, verifier, store, authserv_id=AUTHSERV.upper())
    assert result == IngestResult(record_id, "created")


def test_stamp_of_another_authserv_id_is_not_trusted(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, _, _ = as_milter_delivers(signed, verifier)
    assert_skipped(ingest(copy, verifier, store, authserv_id="mx.other.example"), store,
                   "no Authentication-Results from mx.other.example")


@pytest.mark.parametrize("forged", [
    "evil.example; smime=pass body.smime-identifier=alice@example.com",
    f"{AUTHSERV}.evil.example; smime=pass",
    f"evil.example (see {AUTHSERV}); smime=pass",
    f"x{AUTHSERV}; smime=pass",
])
def test_forged_stamp_with_another_authserv_id(
    forged: str, signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy = delivered(signed, *delivery_fields(), (stamp.AR_HEADER, forged),
                     (stamp.STATUS_HEADER, stamp.status_header(Status.SIGNED_VERIFIED,
                                                              new_record_id())),
                     received())
    assert_skipped(ingest(copy, verifier, store), store, f"no Authentication-Results from "
                                                         f"{AUTHSERV}")


def test_other_filters_results_with_our_authserv_id_are_ignored(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    """OpenDKIM and OpenDMARC often use the host name too."""
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = delivered(signed, *delivery_fields(),
                     (stamp.AR_HEADER, f"{AUTHSERV}; dmarc=pass header.from=example.com"),
                     *milter_fields(verdict, record_id),
                     (stamp.AR_HEADER, f"{AUTHSERV};\n\tdkim=pass (2048-bit key) "
                                       "header.d=example.com"),
                     received())
    assert ingest(copy, verifier, store) == IngestResult(record_id, "created")
    # Only results of other methods, though, is no stamp.
    only_dkim = delivered(signed, (stamp.AR_HEADER, f"{AUTHSERV}; dkim=pass"),
                          (stamp.STATUS_HEADER, stamp.status_header(None, new_record_id())),
                          received())
    result = ingest(only_dkim, verifier, store)
    assert result.action == "skipped" and result.reason == (
        f"no smime result in the Authentication-Results from {AUTHSERV}")


def test_two_smime_results_with_our_authserv_id_are_ambiguous(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    record_id = new_record_id()
    copy = delivered(signed, *milter_fields(verdict, record_id),
                     (stamp.AR_HEADER, f"(forged upstream) {AUTHSERV.upper()} 1; smime=pass"),
                     received())
    assert_skipped(ingest(copy, verifier, store), store, "2 Authentication-Results fields")


def test_two_status_fields_are_not_trusted(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    verdict = verifier.verify(signed, at=NOW)
    copy = delivered(signed, *milter_fields(verdict, new_record_id()),
                     (stamp.STATUS_HEADER.lower(),
                      stamp.status_header(Status.SIGNED_VERIFIED, new_record_id())),
                     received())
    assert_skipped(ingest(copy, verifier, store), store,
                   "2 SMIME-Status-At-Delivery fields")


def test_results_without_a_status_field(signed: bytes, verifier: Verifier, store: Store
                                        ) -> None:
    """What the milter writes for a message it did not examine (too large)."""
    copy = delivered(signed, (stamp.AR_HEADER, stamp.unexamined_results(
        AUTHSERV, "neutral", "not examined: message too large to examine")), received())
    assert_skipped(ingest(copy, verifier, store), store, "no SMIME-Status-At-Delivery")


@pytest.mark.parametrize(("value", "fragment"), [
    ("signed/verified", "names no record"),
    ("signed/verified; record=", "malformed"),
    ("signed/superb; record=rabcdefghijklmnopqrstuvwxy", "malformed"),
    ('signed/verified; record="../../etc/passwd"', "not a record id"),
    ("signed/verified; record=RABCDEFGHIJKLMNOPQRSTUVWXY", "not a record id"),
    ("signed/verified; record=r1", "not a record id"),
    ("signed/verified; record=rabcdefghijklmnopqrstuvwxy; record=rabcdefghijklmnopqrstuvwxz",
     "malformed"),
])
def test_bad_status_fields(value: str, fragment: str, signed: bytes, verifier: Verifier,
                           store: Store) -> None:
    verdict = verifier.verify(signed, at=NOW)
    copy = delivered(signed, (stamp.AR_HEADER, stamp.authentication_results(AUTHSERV, verdict)),
                     (stamp.STATUS_HEADER, value), received())
    assert_skipped(ingest(copy, verifier, store), store, fragment)


@pytest.mark.parametrize(("status", "results"), [
    (Status.SIGNED_VERIFIED, "smime=fail (bad)"),
    (Status.SIGNED_VERIFIED, "smime=none"),
    (None, "smime=pass"),
    (Status.SIGNED_FAILED, "smime=pass"),
    (Status.UNKNOWN, "smime=pass"),
])
def test_status_field_must_agree_with_the_results(
    status: Status | None, results: str, signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy = delivered(signed, (stamp.AR_HEADER, f"{AUTHSERV}; {results}"),
                     (stamp.STATUS_HEADER, stamp.status_header(status, new_record_id())),
                     received())
    assert_skipped(ingest(copy, verifier, store), store, "SMIME-Status-At-Delivery says")


def test_record_id_is_what_the_store_issues() -> None:
    assert all(is_issued_record_id(new_record_id()) for _ in range(200))


def test_read_stamp_reports_what_the_delivery_wrote(signed: bytes, verifier: Verifier) -> None:
    copy, _, record_id = as_milter_delivers(signed, verifier)
    read = read_stamp(copy, AUTHSERV)
    assert read.record_id == record_id and read.status is Status.SIGNED_VERIFIED
    assert read.results == ("pass",) and read.reason is None
    assert read.received_at == NOW
    assert read.envelope_sender == SENDER and read.envelope_recipients == (RCPT,)
    assert read.message_id == message_id(signed)
    with pytest.raises(Untrusted, match=r"no Authentication-Results from other\.example"):
        read_stamp(copy, "other.example")


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"", "empty file"),
    (b"\n\n   \n", "empty file"),
    (bytes(range(256)) * 64, "no header fields"),
    (b"\x00\xff\xfe" * 10_000, "no header fields"),
    (b"\n\nonly a body\n", "no header fields"),
    (b"X-Big: " + b"a" * (300 * 1024) + b"\n\nbody\n", "header section larger"),
    (b"".join(b"X-F%d: v\n" % n for n in range(1500)) + b"\nbody\n", "more than 1000 header"),
    (b"From alice@example.com Mon Jun  1 00:00:00 2026\nSubject: x\n\nmbox\n",
     "no Authentication-Results"),
])
def test_malformed_input_is_skipped(raw: bytes, fragment: str, verifier: Verifier,
                                    store: Store) -> None:
    assert_skipped(ingest(raw, verifier, store), store, fragment)


def test_huge_stamped_header_section_is_skipped(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, _, _ = as_milter_delivers(signed, verifier)
    padded = copy.replace(b"\nFrom:", b"\nX-Pad: " + b"x" * (300 * 1024) + b"\nFrom:", 1)
    assert_skipped(ingest(padded, verifier, store), store, "header section larger")


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_stamps_never_raise(data: st.DataObject, signed: bytes, verifier: Verifier,
                                    tmp_path: Path) -> None:
    copy, _, _ = as_milter_delivers(signed, verifier, "rmutatedmutatedmutatedmuta")
    head_end = copy.index(b"\nFrom:")
    start = data.draw(st.integers(0, head_end), label="start")
    length = data.draw(st.integers(0, 40), label="length")
    insert = data.draw(st.binary(max_size=20) | st.sampled_from(
        [b";", b"(", b")", b'"', b"\\", b"\n", b"\n\t", b"=", b"smime=pass;", b"\x00"]),
        label="insert")
    mutated = copy[:start] + insert + copy[start + length:]
    with Store.open(tmp_path / "fuzz-store") as fuzz_store:
        result = ingest(mutated, verifier, fuzz_store)
    assert result.action in ("created", "refreshed", "unchanged", "skipped")
    assert (result.record_id is None) == (result.action == "skipped")
    if result.reason is not None:
        assert "\n" not in result.reason and len(result.reason) < 400


# --------------------------------------------------------------------------- existing records


def test_reingest_is_unchanged(signed: bytes, verifier: Verifier, store: Store) -> None:
    copy, _, record_id = as_milter_delivers(signed, verifier)
    assert ingest(copy, verifier, store).action == "created"
    state = store.state()
    again = ingest(copy, verifier, store, now=NOW + timedelta(days=1))
    assert again == IngestResult(record_id, "unchanged")
    assert store.state() == state


def test_the_milters_own_record_is_unchanged(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, verdict, record_id = as_milter_delivers(signed, verifier)
    original = milter_record(signed, verdict, record_id)
    store.put_sync(original)
    assert ingest(copy, verifier, store, now=NOW + timedelta(hours=5)).action == "unchanged"
    assert store.get(record_id) == original


def test_refresh_restores_derived_facts_and_leaves_at_delivery_alone(
    pki: TestPki, signed: bytes, verifier: Verifier, store: Store
) -> None:
    copy, verdict, record_id = as_milter_delivers(signed, verifier)
    complete = milter_record(signed, verdict, record_id)
    earlier = NOW - timedelta(minutes=1)
    # Written by an older version: no certificates, CRLs, notes or Message-ID.
    stored = replace(complete, certificates=(), crls=(), notes=(), message_id=None,
                     received_at=earlier, envelope_sender="bounce@example.org",
                     envelope_recipients=("bob+tag@example.org",), queue_id="Q1")
    store.put_sync(stored)
    assert ingest(copy, verifier, store) == IngestResult(record_id, "refreshed")
    record = store.get(record_id)
    assert record == replace(
        stored, certificates=complete.certificates, message_id=complete.message_id,
        envelope_recipients=("bob+tag@example.org", RCPT),
    )
    assert pki.intermediate.cert_der in record.certificates  # type: ignore[union-attr]


def test_refresh_never_changes_the_status_at_delivery(
    signed: bytes, verifier: Verifier, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A record whose at-delivery status a later trust-anchor change revised
    (or that simply disagrees with this host): at-delivery fields and the
    message facts consistent with them stay."""
    message = tampered(signed)
    copy, verdict, record_id = as_milter_delivers(message, verifier)
    revised = milter_record(message, verdict, record_id,
                            status_at_delivery=Status.SIGNED_VERIFIED, errors_at_delivery=None,
                            notes=("as stored",))
    store.put_sync(revised)
    with caplog.at_level(logging.WARNING, "smime_milter.ingest"):
        assert ingest(copy, verifier, store).action == "unchanged"
    assert store.get(record_id) == revised
    assert "the stored record says signed/verified" in caplog.text


def test_refresh_fills_a_record_without_signers(
    signed: bytes, verifier: Verifier, store: Store
) -> None:
    """E.g. the MTA had no decryption key and this host has: the record gains
    signers and becomes re-validatable; its at-delivery status stays."""
    copy, verdict, record_id = as_milter_delivers(signed, verifier)
    bare = milter_record(signed, verdict, record_id, status_at_delivery=Status.UNKNOWN,
                         errors_at_delivery=None, status=Status.UNKNOWN, errors=None,
                         verified_at=None, signers=(), certificates=(), crls=(),
                         layer="enveloped-data", signed_part=None, from_address=None,
                         notes=("encrypted; no decryption key configured",))
    store.put_sync(bare)
    later = NOW + timedelta(hours=2)
    assert ingest(copy, verifier, store, now=later).action == "refreshed"
    record = store.get(record_id)
    assert record is not None
    assert record.status_at_delivery is Status.UNKNOWN
    assert record.signers == verdict.signers and record.revalidatable
    assert record.from_address == SENDER
    assert (record.status, record.errors, record.verified_at) == (
        Status.SIGNED_VERIFIED, None, later)


def test_second_copy_adds_its_recipient(signed: bytes, verifier: Verifier, store: Store
                                        ) -> None:
    first, _, record_id = as_milter_delivers(signed, verifier)
    second, _, _ = as_milter_delivers(signed, verifier, record_id, rcpt="carol@example.org")
    assert ingest(first, verifier, store).action == "created"
    assert ingest(second, verifier, store).action == "refreshed"
    record = store.get(record_id)
    assert record is not None and record.envelope_recipients == (RCPT, "carol@example.org")
    assert ingest(second, verifier, store).action == "unchanged"


def test_record_id_of_another_message_is_skipped(
    pki: TestPki, signed: bytes, verifier: Verifier, store: Store
) -> None:
    _, verdict, record_id = as_milter_delivers(signed, verifier)
    store.put_sync(milter_record(signed, verdict, record_id))
    other = multipart_signed(text_entity("Something else\n"), pki.rsa, signing_time=NOW)
    forged, _, _ = as_milter_delivers(other, verifier, record_id)
    result = ingest(forged, verifier, store)
    assert result.action == "skipped" and result.record_id is None
    assert f"record {record_id} belongs to another message" in (result.reason or "")
    assert store.get(record_id) == milter_record(signed, verdict, record_id)


# --------------------------------------------------------------------------- finding files


def test_message_files_walks_maildirs_and_directories(tmp_path: Path) -> None:
    maildir = tmp_path / "mail" / "example.org" / "bob"
    for sub in ("new", "cur", "tmp", ".Archive/cur", ".Archive/new", ".Archive/tmp"):
        (maildir / sub).mkdir(parents=True)
    files = ["new/2.host", "cur/1.host:2,S", ".Archive/cur/3.host:2,", "tmp/4.partial",
             "dovecot-uidlist", "dovecot.index.log", "new/.hidden"]
    for name in files:
        (maildir / name).write_bytes(b"x")
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / ".git").mkdir()
    for name in ("b.eml", "a.eml", ".DS_Store", "sub/c.eml", ".git/config"):
        (plain / name).write_bytes(b"x")
    single = tmp_path / "single.eml"
    single.write_bytes(b"x")
    found = list(message_files([tmp_path / "mail", plain, single, tmp_path / "missing"]))
    assert found == [
        (maildir / "new/2.host", None),
        (maildir / "cur/1.host:2,S", None),
        (maildir / ".Archive/cur/3.host:2,", None),  # a Maildir++ folder
        (plain / "a.eml", None),
        (plain / "b.eml", None),
        (plain / "sub/c.eml", None),
        (single, None),
        (tmp_path / "missing", "no such file or directory"),
    ]


# --------------------------------------------------------------------------- command line


@pytest.fixture
def config_file(tmp_path: Path, pki_files: dict[str, Path]) -> Path:
    path = tmp_path / "smime-milter.toml"
    path.write_text(
        f'[trust]\nanchors = ["{pki_files["root.pem"]}"]\n'
        f'anchor_directory = "{tmp_path / "anchors"}"\n'
        f'[milter]\nauthserv_id = "{AUTHSERV}"\n'
        f'[store]\npath = "{tmp_path / "configured-store"}"\n'
    )
    return path


def test_command_ingests_a_maildir(
    signed: bytes, verifier: Verifier, tmp_path: Path, config_file: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    good, _, record_id = as_milter_delivers(signed, verifier)
    (maildir / "new" / "1.a").write_bytes(good)
    (maildir / "cur" / "2.b:2,S").write_bytes(wrap_message(text_entity("sent by bob\n")))
    args = ["ingest", "--config", str(config_file), "--store", str(tmp_path / "rebuilt"),
            str(maildir)]
    assert main(args, clock=fixed(NOW)) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{maildir / 'new' / '1.a'}: created {record_id}",
        f"{maildir / 'cur' / '2.b:2,S'}: skipped: no Authentication-Results from {AUTHSERV}",
    ]
    assert "2 file(s): 1 created, 0 refreshed, 0 unchanged, 1 skipped, 0 unreadable" in err
    with Store.open(tmp_path / "rebuilt", readonly=True) as rebuilt:
        assert list(rebuilt.record_ids()) == [record_id]
    assert not (tmp_path / "configured-store").exists()

    assert main([*args[:-1], "--json", str(maildir / "new"), str(tmp_path / "gone")],
                clock=fixed(NOW)) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"file": str(maildir / "new" / "1.a"), "action": "unchanged", "record": record_id,
         "reason": None},
        {"file": str(tmp_path / "gone"), "action": "unreadable", "record": None,
         "reason": "no such file or directory"},
    ]
    assert "1 unchanged" in err and "1 unreadable" in err


def test_command_takes_authserv_id_from_the_command_line(
    signed: bytes, verifier: Verifier, tmp_path: Path, pki_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "no-id.toml"
    config.write_text(f'[trust]\nanchors = ["{pki_files["root.pem"]}"]\n'
                      f'anchor_directory = "{tmp_path / "anchors"}"\n')
    copy, _, record_id = as_milter_delivers(signed, verifier, rcpt=RCPT)
    message = tmp_path / "message.eml"
    message.write_bytes(copy)
    base = ["ingest", "--config", str(config), "--store", str(tmp_path / "s")]
    assert main([*base, str(message)], clock=fixed(NOW)) == 1
    assert "give --authserv-id or set milter.authserv_id" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main([*base, "--authserv-id", AUTHSERV, str(message)], clock=fixed(NOW)) == 0
    assert capsys.readouterr().out == f"{message}: created {record_id}\n"
    with pytest.raises(SystemExit):
        main([*base, "--authserv-id", "two words", str(message)])


# --------------------------------------------------------------------------- end to end


@pytest.mark.postfix
@pytest.mark.daemon
@pytest.mark.skipif(not postfix_available(), reason=POSTFIX_MISSING)
def test_store_rebuilt_from_a_real_maildir_equals_the_milters(
    tmp_path: Path, anchors: Path, live_pki: TestPki, postfix: PostfixFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real Postfix, real milter daemon: deliver, then rebuild a new store from
    the Maildir with ``smime-milter ingest`` and compare it with the milter's."""
    rcpt = "ingest@example.org"
    subjects = {kind: mailflow.unique(f"ingest {kind}")
                for kind in ("signed", "tampered", "plain")}
    messages = {
        "signed": mailflow.signed_message(live_pki, subjects["signed"], rcpt),
        "tampered": mailflow.tampered(
            mailflow.signed_message(live_pki, subjects["tampered"], rcpt)),
        "plain": wrap_message(text_entity("just text\n"), to=rcpt, subject=subjects["plain"]),
    }
    with mailflow.milter_process(tmp_path / "milter", anchors) as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[rcpt])
        for message in messages.values():
            assert mta.send(message, SENDER, [rcpt]).ok
        originals = {
            kind: mailflow.record_of(daemon, mailflow.delivered_with(mta, rcpt, subject))
            for kind, subject in subjects.items()
        }
        maildir = mta.mailbox(rcpt)
        rebuilt_path = tmp_path / "rebuilt"
        args = ["ingest", "--config", str(daemon.config), "--store", str(rebuilt_path),
                str(maildir)]
        assert main(args) == 0
        out, err = capsys.readouterr()
        assert "3 file(s): 3 created" in err, (out, err)
        assert main(args) == 0  # idempotent
        assert "3 file(s): 0 created, 0 refreshed, 3 unchanged" in capsys.readouterr().err
    # The command took the authserv-id from the daemon's configuration file.
    assert load_config(daemon.config).milter.authserv_id == mailflow.AUTHSERV_ID

    assert [originals[k].status_at_delivery for k in ("signed", "tampered", "plain")] == [
        Status.SIGNED_VERIFIED, Status.SIGNED_FAILED, None]
    with Store.open(rebuilt_path, readonly=True) as rebuilt:
        assert sorted(rebuilt.record_ids()) == sorted(r.record_id for r in originals.values())
        for kind, original in originals.items():
            record = rebuilt.get(original.record_id)
            assert record is not None, kind
            same = ("record_id", "status_at_delivery", "errors_at_delivery", "status",
                    "errors", "from_address", "message_id", "envelope_sender",
                    "envelope_recipients", "signers", "certificates", "crls", "layer",
                    "signed_part", "notes", "message_errors", "revalidatable")
            for name in same:
                assert getattr(record, name) == getattr(original, name), (kind, name)
            assert [s.certificate for s in record.signers] == [
                s.certificate for s in original.signers]
            # The Received date, written as the milter ran: whole seconds, a little earlier.
            assert timedelta(0) <= original.received_at - record.received_at < timedelta(
                seconds=10), kind
            assert record.queue_id is None and original.queue_id

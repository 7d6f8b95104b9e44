"""From a decision to header edits and replies, without libmilter."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smime_milter.model import SignerResult, Status, Verdict
from smime_milter.mta.handling import forged_headers, plan_delivery, reply_text
from smime_milter.policy import Action, Decision, Outcome, Policy
from smime_milter.stamp.fields import parse_status_header

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ID = "mx.example.org"

SIGNER = SignerResult(
    emails=("alice@example.org",), subject="CN=Alice", issuer="CN=CA", serial=7,
    digest_algorithm="sha256", signature_algorithm="rsa", signature_ok=True, chain_ok=True,
    from_match=True, errors=(),
)
VERIFIED = Verdict(Status.SIGNED_VERIFIED, None, NOW, (SIGNER,), "multipart/signed", "1",
                   "alice@example.org")
FAILED = Verdict(Status.SIGNED_FAILED, ("signature does not match\r\nX-Evil: 1",), NOW,
                 (SIGNER,), "multipart/signed", "1", "alice@example.org")

HEADERS = [
    ("Received", b"from x"),
    ("Authentication-Results", b"other.example; spf=pass"),
    ("SMIME-Status-At-Delivery", b"signed/verified; record=rforged"),
    ("authentication-results", b" MX.Example.Org; smime=pass"),
    ("Subject", b"hello"),
    ("Authentication-Results", b"(c) mx.example.org 1; dkim=pass"),
    ("smime-status-at-delivery", b"none"),
]


def _decision(action: Action, outcome: Outcome = Outcome.VERIFIED) -> Decision:
    return Decision(action, outcome, action)


def test_forged_header_indexes_count_per_name_case_insensitively() -> None:
    deletions = forged_headers(HEADERS, ID)
    by_name: dict[str, list[int]] = {}
    for name, index in deletions:
        by_name.setdefault(name.lower(), []).append(index)
    # A-R #1 belongs to other.example and stays; #2 and #3 claim our id.
    assert by_name == {"authentication-results": [3, 2], "smime-status-at-delivery": [2, 1]}


def test_accept_stamps_results_and_record() -> None:
    plan = plan_delivery(HEADERS, VERIFIED, _decision(Action.ACCEPT), Policy(), ID, "rabc")
    assert plan.action is Action.ACCEPT and plan.reply is None and plan.subject is None
    (ar_name, ar_value), (st_name, st_value) = plan.add_headers
    assert ar_name == "Authentication-Results"
    assert " ".join(ar_value.split()).startswith(f"{ID}; smime=pass")
    assert st_name == "SMIME-Status-At-Delivery"
    assert parse_status_header(st_value) == (Status.SIGNED_VERIFIED, "rabc")
    assert len(plan.delete_headers) == 4


def test_unsigned_mail_gets_none_and_a_record() -> None:
    plain = Verdict(None, None, None)
    plan = plan_delivery(HEADERS, plain, _decision(Action.ACCEPT, Outcome.NONE), Policy(), ID, "r1")
    assert plan.add_headers[0][1] == f"{ID}; smime=none"
    assert parse_status_header(plan.add_headers[1][1]) == (None, "r1")


def test_tag_prefixes_the_subject_with_the_status() -> None:
    plan = plan_delivery(HEADERS, FAILED, _decision(Action.TAG, Outcome.FAILED), Policy(), ID, "r")
    assert plan.subject == (1, "[S/MIME signed/failed] hello")
    no_subject = [h for h in HEADERS if h[0] != "Subject"]
    plan = plan_delivery(no_subject, FAILED, _decision(Action.TAG, Outcome.FAILED),
                         Policy(tag_subject="**{status}** "), ID, "r")
    assert plan.subject == (0, "**signed/failed**")


def test_quarantine_keeps_stamps_and_gives_a_reason() -> None:
    plan = plan_delivery(HEADERS, FAILED, _decision(Action.QUARANTINE, Outcome.FAILED),
                         Policy(), ID, "r")
    assert len(plan.add_headers) == 2
    assert plan.quarantine_reason is not None
    assert plan.quarantine_reason.startswith("S/MIME status signed/failed: signature")
    assert "\r" not in plan.quarantine_reason and "\n" not in plan.quarantine_reason


@pytest.mark.parametrize(("action", "code"), [(Action.REJECT, "550"), (Action.TEMPFAIL, "451")])
def test_reject_and_tempfail_reply_without_edits(action: Action, code: str) -> None:
    plan = plan_delivery(HEADERS, FAILED, _decision(action, Outcome.FAILED), Policy(), ID, None)
    assert plan.reply is not None and plan.reply.code == code
    assert plan.reply.xcode == ("5.7.1" if code == "550" else "4.7.1")
    assert "\n" not in plan.reply.text
    assert plan.add_headers == () and plan.delete_headers == ()


def test_unexamined_messages_say_so_in_authentication_results() -> None:
    oversize = plan_delivery(HEADERS, None, _decision(Action.ACCEPT, Outcome.OVERSIZE),
                             Policy(), ID, None)
    assert oversize.add_headers == (
        ("Authentication-Results",
         f"{ID}; smime=neutral (not examined: message too large to examine)"),
    )
    error = plan_delivery(HEADERS, None, _decision(Action.ACCEPT, Outcome.ERROR), Policy(), ID,
                          None)
    assert "smime=temperror" in error.add_headers[0][1]
    assert len(error.delete_headers) == 4


def test_reply_text_is_one_bounded_printable_line() -> None:
    assert reply_text("a\r\nb\x00c") == "a b c"
    assert len(reply_text("x" * 1000)) == 200

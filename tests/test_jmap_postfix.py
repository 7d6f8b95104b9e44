"""The JMAP read API end to end: a real Postfix delivers through the running
milter, and a separate ``smime-milter jmap`` process answers RFC 9219 calls
for the record ids the delivered messages carry, while the milter keeps
writing to the same LMDB store.

Then ``smime-milter trust add`` (another process) trusts a CA after
delivery: the at-delivery status of the message it issued flips from
signed/failed to signed/verified (RFC 9219 §4.1), Email/changes reports that
record and nothing else, and the running milter verifies the next message
from that CA without being told.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from smime_milter.stamp.fields import parse_status_header
from tests.support.daemon import SMIME_MILTER
from tests.support.mailflow import (
    POSTFIX,
    delivered_with,
    milter_process,
    stamps,
    tampered,
    unique,
    wait_for_log,
)
from tests.support.pki import TestPki
from tests.support.postfix import PostfixFactory, PostfixInstance
from tests.support.smime import multipart_signed, text_entity, wrap_message

pytestmark = [*POSTFIX, pytest.mark.process]

RCPT = "jmap@example.org"
SENDER = "alice@example.com"
NEWCOMER = "untrusted@example.com"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
         "urn:ietf:params:jmap:smimeverify"]
ACCOUNT = "u1"
ALL = ["smimeStatus", "smimeStatusAtDelivery", "smimeErrors", "smimeVerifiedAt", "receivedAt"]


def _jmap(config: Path, calls: list[list[Any]]) -> list[list[Any]]:
    """The methodResponses of ``smime-milter jmap`` run as its own process."""
    done = subprocess.run(
        [str(SMIME_MILTER), "jmap", "--config", str(config)],
        input=json.dumps({"using": USING, "methodCalls": calls}).encode(),
        capture_output=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)["methodResponses"]


def _get(config: Path, ids: list[str]) -> tuple[str, dict[str, dict[str, Any]]]:
    [[name, result, _]] = _jmap(config, [["Email/get", {
        "accountId": ACCOUNT, "ids": ids, "properties": ALL}, "g"]])
    assert name == "Email/get", result
    assert result["notFound"] == []
    return result["state"], {item["id"]: item for item in result["list"]}


def _record_id(message: Message) -> tuple[str, str]:
    """(status token, record id) of the delivered SMIME-Status-At-Delivery field."""
    [value] = stamps(message)[1]
    status, record_id = parse_status_header(value)
    assert record_id is not None
    return ("none" if status is None else status.value), record_id


def _date(text: str | None) -> datetime:
    assert text is not None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _send(mta: PostfixInstance, kind: str, message: bytes) -> None:
    reply = mta.send(message, SENDER, [RCPT])
    assert reply.ok, (kind, reply)


def _signed(identity: Any, subject: str, from_addr: str = SENDER) -> bytes:
    return multipart_signed(text_entity("Hello Bob\n"), identity, to=RCPT, subject=subject,
                            from_addr=from_addr)


def _messages(pki: TestPki, subjects: dict[str, str]) -> dict[str, bytes]:
    return {
        "verified": _signed(pki.rsa, subjects["verified"]),
        "tampered": tampered(_signed(pki.rsa, subjects["tampered"])),
        "plain": wrap_message(text_entity("just text\n"), to=RCPT, subject=subjects["plain"]),
        # Issued by other_root, which the milter does not trust at delivery.
        "newcomer": _signed(pki.untrusted, subjects["newcomer"], NEWCOMER),
    }


def test_delivered_records_through_jmap_and_an_anchor_added_after_delivery(
    tmp_path: Path, anchors: Path, live_pki: TestPki, postfix: PostfixFactory
) -> None:
    kinds = ("verified", "tampered", "plain", "newcomer")
    subjects = {kind: unique(f"jmap {kind}") for kind in kinds}
    with milter_process(tmp_path / "milter", anchors) as daemon:
        mta = postfix(milter=daemon.postfix_socket, mailboxes=[RCPT])
        before = datetime.now(UTC).replace(microsecond=0)
        for kind, message in _messages(live_pki, subjects).items():
            _send(mta, kind, message)
        stamped = {kind: _record_id(delivered_with(mta, RCPT, subjects[kind])) for kind in kinds}
        ids = {kind: record_id for kind, (_, record_id) in stamped.items()}
        assert {kind: token for kind, (token, _) in stamped.items()} == {
            "verified": "signed/verified", "tampered": "signed/failed", "plain": "none",
            "newcomer": "signed/failed"}

        # Email/get: what the delivered header says, now and at delivery.
        state, got = _get(daemon.config, list(ids.values()))
        after = datetime.now(UTC) + timedelta(seconds=1)
        for kind in kinds:
            item, token = got[ids[kind]], stamped[kind][0]
            expected = None if token == "none" else token
            assert item["smimeStatusAtDelivery"] == item["smimeStatus"] == expected, kind
            assert before <= _date(item["receivedAt"]) <= after, kind
            if expected is None:
                assert item["smimeErrors"] is None and item["smimeVerifiedAt"] is None
            else:
                assert before <= _date(item["smimeVerifiedAt"]) <= after, kind
        assert got[ids["verified"]]["smimeErrors"] is None
        assert any("digest" in e or "signature" in e
                   for e in got[ids["tampered"]]["smimeErrors"])
        assert any("untrusted root" in e for e in got[ids["newcomer"]]["smimeErrors"])

        # Email/query: the three filters and an operator, over the delivered ids.
        candidates = list(ids.values())
        filters = {
            "hasSmime": {"hasSmime": True},
            "verified": {"hasVerifiedSmime": True},
            "verifiedAtDelivery": {"hasVerifiedSmimeAtDelivery": True},
            "signedNotVerified": {"operator": "AND", "conditions": [
                {"hasSmime": True}, {"operator": "NOT", "conditions": [
                    {"hasVerifiedSmime": True}]}]},
        }
        responses = _jmap(daemon.config, [
            ["Email/query", {"accountId": ACCOUNT, "filter": condition,
                             "candidateIds": candidates}, name]
            for name, condition in filters.items()])
        matched = {call_id: [kind for kind in kinds if ids[kind] in result["ids"]]
                   for _, result, call_id in responses}
        assert matched == {
            "hasSmime": ["verified", "tampered", "newcomer"],
            "verified": ["verified"],
            "verifiedAtDelivery": ["verified"],
            "signedNotVerified": ["tampered", "newcomer"],
        }

        # The admin trusts the newcomer's CA after delivery.
        root = tmp_path / "other-root.pem"
        root.write_bytes(live_pki.other_root.cert_pem)
        added = subprocess.run([str(SMIME_MILTER), "trust", "add", "--config",
                                str(daemon.config), str(root)],
                               capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr

        new_state, got = _get(daemon.config, list(ids.values()))
        newcomer = got[ids["newcomer"]]
        assert newcomer["smimeStatusAtDelivery"] == newcomer["smimeStatus"] == "signed/verified"
        assert newcomer["smimeErrors"] is None
        for kind in ("verified", "tampered", "plain"):
            assert got[ids[kind]]["smimeStatusAtDelivery"] == (
                None if stamped[kind][0] == "none" else stamped[kind][0]), kind
        [[_, changes, _]] = _jmap(daemon.config, [["Email/changes", {
            "accountId": ACCOUNT, "sinceState": state}, "c"]])
        assert changes["oldState"] == state and changes["newState"] == new_state
        assert changes["created"] == [] and changes["destroyed"] == []
        assert changes["updated"] == [ids["newcomer"]]

        # The running milter notices the new anchor file by itself.
        wait_for_log(daemon, "trust anchor, intermediate or CRL files changed: reloading")
        wait_for_log(daemon, "reloaded: config")
        subject = unique("jmap newcomer again")
        _send(mta, "newcomer again", _signed(live_pki.untrusted, subject, NEWCOMER))
        token, again = _record_id(delivered_with(mta, RCPT, subject))
        assert token == "signed/verified"
        _, got = _get(daemon.config, [again])
        assert got[again]["smimeStatusAtDelivery"] == "signed/verified"
        [[_, changes, _]] = _jmap(daemon.config, [["Email/changes", {
            "accountId": ACCOUNT, "sinceState": new_state}, "c"]])
        assert changes["created"] == [again] and changes["updated"] == []

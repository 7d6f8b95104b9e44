"""Golden header edits: what the milter does to the header of a handful of
representative messages, compared with files under tests/vectors/stamp/.

Each case is a real message (signed with the test PKI, verified by the real
engine frozen at :data:`NOW`), run through the policy and
:func:`smime_milter.mta.handling.plan_delivery` exactly as end of data does,
with a fixed authserv-id and an injected record id, so the edits are the same
every run.  A golden file lists them one a line: the action, then every field
deleted (name, index among fields of that name, the value it had) and every
field added, in order.

A change to the stamps shows up as a diff of these files.  When it is meant,
rewrite them with ``SMIME_MILTER_UPDATE_GOLDEN=1 pytest tests/test_golden_stamp.py``
and review the diff like code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smime_milter.mta.handling import Plan, plan_delivery
from smime_milter.policy import Action, Actions, Policy, decide, outcome_of
from smime_milter.verify.engine import Verifier
from tests.support.milterapp import split_message
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.smime import crlf, multipart_signed, opaque_signed, text_entity, wrap_message
from tests.support.verdicts import NOW, make_verifier

GOLDEN = Path(__file__).parent / "vectors" / "stamp"
UPDATE = os.environ.get("SMIME_MILTER_UPDATE_GOLDEN") == "1"
AUTHSERV_ID = "mx.example.org"
RECIPIENT = "bob@example.org"
#: Fields a sender forged: copies of ours under any spelling, and another
#: server's Authentication-Results, which must stay.
FORGED = (
    ("Authentication-Results", f"{AUTHSERV_ID}; smime=pass body.smime-identifier=x@y"),
    ("SMIME-Status-At-Delivery", "signed/verified; record=rforgedforgedforgedforged0"),
    ("Authentication-Results", "other.example; dkim=pass header.d=example.com"),
    ("Authentication-Results", f"(sneaky) {AUTHSERV_ID.upper()} 1; smime=pass"),
    ("smime-status-at-delivery", "signed/verified"),
)


@dataclass(frozen=True)
class Case:
    build: Callable[[Identity], bytes]
    policy: Policy = field(default_factory=Policy)


def _signed(alice: Identity, **headers: object) -> bytes:
    return multipart_signed(text_entity("Hello Bob\n"), alice, to=RECIPIENT,
                            subject="Quarterly figures", signing_time=NOW, **headers)


def _tampered(alice: Identity, **headers: object) -> bytes:
    return _signed(alice, **headers).replace(b"Hello Bob", b"Hello Eve", 1)


CASES: dict[str, Case] = {
    "signed-verified": Case(_signed),
    "opaque-signed-verified": Case(lambda alice: opaque_signed(
        text_entity("Hello Bob\n"), alice, to=RECIPIENT, subject="Opaque", signing_time=NOW)),
    "signed-failed": Case(_tampered),
    "unsigned": Case(lambda alice: wrap_message(text_entity("just text\n"), to=RECIPIENT,
                                                subject="Lunch?")),
    "forged-stamps-removed-signed-verified": Case(lambda alice: _signed(
        alice, extra_headers=FORGED)),
    "forged-stamps-removed-signed-failed": Case(lambda alice: _tampered(
        alice, extra_headers=FORGED)),
    "signed-failed-tagged": Case(_tampered, Policy(Actions(failed=Action.TAG))),
    "signed-failed-rejected": Case(lambda alice: _tampered(alice, extra_headers=FORGED),
                                   Policy(Actions(failed=Action.REJECT))),
}


@pytest.fixture(scope="module")
def alice(pki: TestPki) -> Identity:
    """pki.rsa, but with a fixed serial number: the stamp names it."""
    return make_leaf(pki.intermediate, "alice@example.com", now=NOW, serial=0x5EED_0A11CE,
                     key_label="golden:alice")


@pytest.fixture(scope="module")
def verifier(pki: TestPki) -> Verifier:
    return make_verifier(pki)


def _value(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text.replace("\r\n", "\n")


def render(plan: Plan, headers: list[tuple[str, bytes]]) -> str:
    """The edits of *plan* to a message with *headers*, one a line."""
    lines = [f"action: {plan.action.value}"]
    if plan.reply is not None:
        lines.append(f"reply: {plan.reply.code} {plan.reply.xcode} {plan.reply.text}")
    if plan.quarantine_reason is not None:
        lines.append(f"quarantine: {plan.quarantine_reason}")
    for name, index in plan.delete_headers:
        same_name = [value for field, value in headers if field.lower() == name.lower()]
        lines.append(f"delete: {name} #{index}: {_value(same_name[index - 1]).strip()}")
    for name, value in plan.add_headers:
        lines.append(f"add: {name}: {_value(value)}")
    if plan.subject is not None:
        index, value = plan.subject
        lines.append(f"subject: #{index}: {value}")
    return "\n".join(lines) + "\n"


def edits(case: Case, message: bytes, verifier: Verifier, record_id: str) -> str:
    headers, _ = split_message(crlf(message))
    verdict = verifier.verify(crlf(message), at=NOW)
    decision = decide(case.policy, outcome_of(verdict.status), [RECIPIENT])
    plan = plan_delivery(headers, verdict, decision, case.policy, AUTHSERV_ID, record_id)
    return render(plan, headers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_edits_match_the_golden_file(name: str, alice: Identity, verifier: Verifier
                                            ) -> None:
    case = CASES[name]
    record_id = "r" + name.replace("-", "")[:25].ljust(25, "0")
    got = edits(case, case.build(alice), verifier, record_id)
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.write_text(got)
    assert path.exists(), f"{path} is missing: run with SMIME_MILTER_UPDATE_GOLDEN=1 to write it"
    assert got == path.read_text(), (
        f"header edits for {name!r} differ from {path}; if that is meant, rewrite it with "
        "SMIME_MILTER_UPDATE_GOLDEN=1 and review the diff")


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(CASES)

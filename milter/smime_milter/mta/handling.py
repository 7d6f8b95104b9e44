"""Turning a decision into the exact header edits and reply for the MTA.

Pure functions over plain values, so the milter glue only applies a Plan and
every rule (which forged headers go, what is added, what the reply says) is
testable without libmilter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from smime_milter.advanced import REQUEST_HEADER
from smime_milter.model import ReleaseDecision, Verdict
from smime_milter.policy import Action, Decision, Outcome, Policy
from smime_milter.release import (
    ORIGINAL_RECIPIENTS_HEADER,
    RELEASE_STATUS_HEADER,
    Diversion,
    status_stamp,
)
from smime_milter.stamp import fields as stamp

#: Fields only this milter writes: every incoming copy is a forgery.
_OWN_FIELDS = frozenset(
    name.lower() for name in (stamp.STATUS_HEADER, ORIGINAL_RECIPIENTS_HEADER,
                              RELEASE_STATUS_HEADER, REQUEST_HEADER)
)


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply for reject and tempfail."""

    code: str
    xcode: str
    text: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything to do to one message at end of data, in order."""

    action: Action
    #: (field name, 1-based index among fields of that name), highest index first.
    delete_headers: tuple[tuple[str, int], ...] = ()
    #: Fields to insert at the top of the header, in this order.
    add_headers: tuple[tuple[str, str], ...] = ()
    #: (1-based index of the Subject field or 0 to add one, new value) for ``tag``.
    subject: tuple[int, str] | None = None
    quarantine_reason: str | None = None
    reply: Reply | None = None
    #: Envelope recipients to remove, then to add (draft-and-release diversion).
    delete_recipients: tuple[str, ...] = ()
    add_recipients: tuple[str, ...] = ()


def forged_headers(headers: Sequence[tuple[str, bytes]], authserv_id: str
                   ) -> tuple[tuple[str, int], ...]:
    """Incoming copies of our own fields: every SMIME-Status-At-Delivery,
    MMHS-Original-Recipients and SMIME-Release-Status, and every
    Authentication-Results claiming our authserv-id.

    Returned highest index first, because Postfix renumbers the remaining
    fields after each deletion.
    """
    counts: dict[str, int] = {}
    found: list[tuple[str, int]] = []
    for name, value in headers:
        key = name.lower()
        if key not in _OWN_FIELDS and key != stamp.AR_HEADER.lower():
            continue
        counts[key] = counts.get(key, 0) + 1
        if key in _OWN_FIELDS or stamp.claims_authserv_id(value, authserv_id):
            found.append((name, counts[key]))
    return tuple(sorted(found, key=lambda item: (item[0].lower(), -item[1])))


_UNSAFE = re.compile(r"[^\x20-\x7e]+")


def reply_text(text: str, limit: int = 200) -> str:
    """One printable ASCII line for an SMTP reply (no CR/LF smuggling)."""
    clean = _UNSAFE.sub(" ", text).strip()
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _reason(verdict: Verdict | None, decision: Decision) -> str:
    if decision.outcome is Outcome.OVERSIZE:
        return "message too large to examine"
    if decision.outcome is Outcome.ERROR or verdict is None:
        return "S/MIME verification temporarily unavailable"
    status = verdict.status.value if verdict.status else "none"
    first_error = (verdict.errors or ("",))[0]
    return f"S/MIME status {status}" + (f": {first_error}" if first_error else "")


def plan_delivery(
    headers: Sequence[tuple[str, bytes]],
    verdict: Verdict | None,
    decision: Decision,
    policy: Policy,
    authserv_id: str,
    record_id: str | None,
    release: ReleaseDecision | None = None,
    diversion: Diversion | None = None,
) -> Plan:
    """The edits for one message. Forged copies of our fields are always
    removed, even when nothing else is added, so they never reach a mailbox.
    ``release`` is the draft-and-release outcome when a rule applied, and
    ``diversion`` the edits that hold an unreleased message back."""
    deletions = forged_headers(headers, authserv_id)
    action = decision.action
    reason = _reason(verdict, decision)
    if action is Action.REJECT:
        return Plan(action, reply=Reply("550", "5.7.1", reply_text(reason)))
    if action is Action.TEMPFAIL:
        return Plan(action, reply=Reply("451", "4.7.1", reply_text(reason)))

    additions: list[tuple[str, str]] = []
    if verdict is not None:
        additions.append((stamp.AR_HEADER, stamp.authentication_results(authserv_id, verdict)))
        if record_id is not None:
            additions.append((stamp.STATUS_HEADER, stamp.status_header(verdict.status, record_id)))
    else:
        result = "temperror" if decision.outcome is Outcome.ERROR else "neutral"
        additions.append(
            (stamp.AR_HEADER, stamp.unexamined_results(authserv_id, result,
                                                       f"not examined: {reason}"))
        )

    subject = None
    if action is Action.TAG and verdict is not None:
        subject = _tagged_subject(headers, policy, verdict)
    quarantine = reply_text(reason) if action is Action.QUARANTINE else None
    if diversion is not None:
        additions.extend(diversion.add_headers)
        if diversion.quarantine_reason is not None:
            held = reply_text(diversion.quarantine_reason)
            quarantine = f"{quarantine}; {held}" if quarantine else held
        return Plan(action, deletions, tuple(additions), subject, quarantine,
                    delete_recipients=diversion.delete_recipients,
                    add_recipients=diversion.add_recipients)
    if release is not None:
        additions.append((RELEASE_STATUS_HEADER, status_stamp(release, None)))
    return Plan(action, deletions, tuple(additions), subject, quarantine)


def _tagged_subject(headers: Sequence[tuple[str, bytes]], policy: Policy, verdict: Verdict
                    ) -> tuple[int, str]:
    prefix = policy.tag_subject.replace(
        "{status}", verdict.status.value if verdict.status else "none"
    )
    for name, value in headers:
        if name.lower() == "subject":
            text = value.decode("utf-8", "replace").lstrip()
            return 1, prefix + text
    return 0, prefix.rstrip()

"""What the milter does with a message once its status is known.

The engine answers "what is the S/MIME status"; this module answers "so
what do we do": accept, tag, quarantine, reject or tempfail, per outcome,
with per-recipient-domain overrides and a monitor mode. It is pure: no I/O,
no milter, so every rule is testable without a socket. It also reads its own
``[policy]`` section (``read_policy_section``), so the actions and the keys
naming them are defined in one place.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from smime_milter.model import Status
from smime_milter.settings import Problems, Reader


class Action(enum.StrEnum):
    """What happens to the message (all but reject and tempfail deliver or hold it
    with our stamps)."""

    ACCEPT = "accept"
    TAG = "tag"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        """Order used when recipients' domains disagree: the strictest wins."""
        return _SEVERITY[self]

    @property
    def delivers(self) -> bool:
        """True when the message continues (and so needs a record and stamps)."""
        return self in (Action.ACCEPT, Action.TAG, Action.QUARANTINE)


_SEVERITY = {
    Action.ACCEPT: 0, Action.TAG: 1, Action.QUARANTINE: 2, Action.TEMPFAIL: 3, Action.REJECT: 4,
}


class Outcome(enum.StrEnum):
    """The policy-relevant classes of a delivery-time result."""

    VERIFIED = "verified"  # signed/verified, encrypted+signed/verified
    FAILED = "failed"  # signed/failed, encrypted+signed/failed
    UNKNOWN = "unknown"  # S/MIME we cannot check (encrypted without key, certs-only, ...)
    NONE = "none"  # no S/MIME at all
    OVERSIZE = "oversize"  # larger than max_message_size: not examined
    ERROR = "error"  # our machinery failed (worker crash, store full, ...)


def outcome_of(status: Status | None) -> Outcome:
    if status is None:
        return Outcome.NONE
    if status.is_verified:
        return Outcome.VERIFIED
    if status.is_failed:
        return Outcome.FAILED
    return Outcome.UNKNOWN


#: Actions that make sense when nothing could be examined or stored.
MACHINERY_ACTIONS = frozenset({Action.ACCEPT, Action.TEMPFAIL, Action.REJECT})


@dataclass(frozen=True, slots=True)
class Actions:
    """One action per outcome. Defaults: deliver every verdict with its stamp
    (a bad signature is a status, not a crime) and tempfail on internal errors
    so nothing unverified slips through."""

    verified: Action = Action.ACCEPT
    failed: Action = Action.ACCEPT
    unknown: Action = Action.ACCEPT
    none: Action = Action.ACCEPT
    oversize: Action = Action.ACCEPT
    error: Action = Action.TEMPFAIL

    def for_outcome(self, outcome: Outcome) -> Action:
        action: Action = getattr(self, outcome.value)
        return action

    @staticmethod
    def outcome_names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(Actions))


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole decision policy, immutable so a reload swaps it atomically."""

    actions: Actions = field(default_factory=Actions)
    #: (lower-cased recipient domain, its actions already merged with the defaults).
    domains: tuple[tuple[str, Actions], ...] = ()
    #: Monitor mode: verdict actions other than accept become tag (logged as "would").
    monitor: bool = False
    #: Subject prefix added by the tag action; ``{status}`` is replaced by the token.
    tag_subject: str = "[S/MIME {status}] "
    _by_domain: Mapping[str, Actions] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_domain", dict(self.domains))

    def __getstate__(self) -> tuple[object, ...]:
        return (self.actions, self.domains, self.monitor, self.tag_subject)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(("actions", "domains", "monitor", "tag_subject"), state,
                               strict=True):
            object.__setattr__(self, name, value)
        self.__post_init__()

    def actions_for(self, recipient: str) -> Actions:
        domain = recipient.rpartition("@")[2].strip("<> ").lower().rstrip(".")
        while domain:
            found = self._by_domain.get(domain)
            if found is not None:
                return found
            # "example.com" also covers "mail.example.com".
            _, _, domain = domain.partition(".")
        return self.actions


@dataclass(frozen=True, slots=True)
class Decision:
    """The action to take, and what it would have been outside monitor mode."""

    action: Action
    outcome: Outcome
    intended: Action

    @property
    def monitored(self) -> bool:
        return self.action != self.intended


def decide(policy: Policy, outcome: Outcome, recipients: Iterable[str]) -> Decision:
    """The strictest action any recipient's domain asks for (one message, one
    reply: a milter cannot accept for one recipient and reject for another
    without deleting recipients, which would silently lose mail)."""
    candidates = [policy.actions_for(r).for_outcome(outcome) for r in recipients]
    intended = max(candidates or [policy.actions.for_outcome(outcome)], key=lambda a: a.severity)
    action = intended
    if policy.monitor and outcome is not Outcome.ERROR and intended is not Action.ACCEPT:
        # Monitor mode never disturbs the mail flow because of a verdict; an
        # internal error keeps its action (tempfail loses nothing, and delivering
        # unexamined mail is not what "monitor" promises).
        action = Action.ACCEPT if outcome is Outcome.OVERSIZE else Action.TAG
    return Decision(action=action, outcome=outcome, intended=intended)


def merged(base: Actions, overrides: Mapping[str, Action]) -> Actions:
    """``base`` with some outcomes replaced (used for per-domain tables)."""
    return replace(base, **overrides)


def _actions(reader: Reader) -> dict[str, Action]:
    """The outcome -> action keys present in one table."""
    found: dict[str, Action] = {}
    for name in Actions.outcome_names():
        action = reader.choice(name, Action, None)
        if action is None:
            continue
        if name in ("oversize", "error") and action not in _MACHINERY_CHOICES[name]:
            allowed = ", ".join(sorted(_MACHINERY_CHOICES[name]))
            reader.report(name, f"{action.value!r} is not possible here (use {allowed})")
            continue
        found[name] = action
    return found


_MACHINERY_CHOICES = {
    # An oversized message was not examined, so it cannot be tagged with a status.
    "oversize": MACHINERY_ACTIONS | {Action.QUARANTINE},
    "error": MACHINERY_ACTIONS,
}


def read_policy_section(problems: Problems, path: Path | None, text: str,
                        data: Mapping[str, Any]) -> Policy:
    """``[policy]`` and its ``[policy.domains."example.com"]`` overrides;
    problems go to ``problems``."""
    reader = Reader(problems, path, text, "policy", data)
    defaults = Policy()
    domains_data = reader.take("domains", dict, {})
    base = merged(Actions(), _actions(reader))
    monitor = reader.take("monitor", bool, defaults.monitor)
    tag_subject = reader.take("tag_subject", str, defaults.tag_subject)
    if "\n" in tag_subject or "\r" in tag_subject:
        reader.report("tag_subject", "must be one line")
        tag_subject = defaults.tag_subject
    reader.finish()
    domains: dict[str, Actions] = {}
    for domain, table in domains_data.items():
        name = f'policy.domains."{domain}"'
        if not isinstance(table, dict):
            Reader(problems, path, text, "policy.domains", {}).report(domain, "expected a table")
            continue
        domain_reader = Reader(problems, path, text, name, table)
        if not re.fullmatch(r"[A-Za-z0-9.-]+", domain) or domain.startswith("."):
            domain_reader.report("", f"not a domain name: {domain!r}")
            continue
        domains[domain.lower().rstrip(".")] = merged(base, _actions(domain_reader))
        domain_reader.finish()
    return Policy(actions=base, domains=tuple(domains.items()), monitor=monitor,
                  tag_subject=tag_subject)

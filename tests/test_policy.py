"""Policy decisions: outcome -> action, domain overrides, monitor mode."""

from __future__ import annotations

import pytest

from smime_milter.model import Status
from smime_milter.policy import Action, Actions, Outcome, Policy, decide, outcome_of


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, Outcome.NONE),
        (Status.SIGNED_VERIFIED, Outcome.VERIFIED),
        (Status.ENCRYPTED_SIGNED_VERIFIED, Outcome.VERIFIED),
        (Status.SIGNED_FAILED, Outcome.FAILED),
        (Status.ENCRYPTED_SIGNED_FAILED, Outcome.FAILED),
        (Status.UNKNOWN, Outcome.UNKNOWN),
        (Status.SIGNED, Outcome.UNKNOWN),
    ],
)
def test_outcome_of_status(status: Status | None, outcome: Outcome) -> None:
    assert outcome_of(status) is outcome


def test_defaults_deliver_every_verdict_and_tempfail_internal_errors() -> None:
    policy = Policy()
    for outcome in Outcome:
        expected = Action.TEMPFAIL if outcome is Outcome.ERROR else Action.ACCEPT
        assert decide(policy, outcome, ["a@example.org"]).action is expected


def _policy(**domains: Actions) -> Policy:
    return Policy(
        actions=Actions(failed=Action.TAG),
        domains=tuple((d.replace("_", "."), a) for d, a in domains.items()),
    )


def test_domain_override_applies_to_its_recipients_and_subdomains() -> None:
    policy = _policy(strict_example=Actions(failed=Action.REJECT))
    assert decide(policy, Outcome.FAILED, ["x@other.example"]).action is Action.TAG
    assert decide(policy, Outcome.FAILED, ["x@STRICT.example"]).action is Action.REJECT
    assert decide(policy, Outcome.FAILED, ["<x@mx.strict.example>"]).action is Action.REJECT
    assert decide(policy, Outcome.FAILED, ["x@notstrict.example"]).action is Action.TAG


def test_strictest_recipient_wins() -> None:
    policy = _policy(
        q_example=Actions(failed=Action.QUARANTINE), t_example=Actions(failed=Action.TEMPFAIL)
    )
    rcpts = ["a@other.example", "b@q.example"]
    assert decide(policy, Outcome.FAILED, rcpts).action is Action.QUARANTINE
    assert decide(policy, Outcome.FAILED, [*rcpts, "c@t.example"]).action is Action.TEMPFAIL


def test_monitor_mode_only_tags_but_remembers_the_intent() -> None:
    policy = Policy(actions=Actions(failed=Action.REJECT, oversize=Action.REJECT), monitor=True)
    decision = decide(policy, Outcome.FAILED, ["a@example.org"])
    assert (decision.action, decision.intended, decision.monitored) == (
        Action.TAG, Action.REJECT, True)
    assert decide(policy, Outcome.OVERSIZE, ["a@example.org"]).action is Action.ACCEPT
    verified = decide(policy, Outcome.VERIFIED, ["a@example.org"])
    assert verified.action is Action.ACCEPT and not verified.monitored
    # Internal errors keep their action: monitoring must not deliver unexamined mail.
    assert decide(policy, Outcome.ERROR, ["a@example.org"]).action is Action.TEMPFAIL


def test_no_recipients_uses_the_default_actions() -> None:
    assert decide(Policy(actions=Actions(none=Action.TAG)), Outcome.NONE, []).action is Action.TAG


def test_policy_survives_pickling_for_the_worker_processes() -> None:
    import pickle

    policy = _policy(strict_example=Actions(failed=Action.REJECT))
    copy = pickle.loads(pickle.dumps(policy))
    assert copy == policy
    assert decide(copy, Outcome.FAILED, ["x@strict.example"]).action is Action.REJECT

"""Draft-and-release in the milter glue: SmimeMilter driven callback by callback
with recorders in place of libmilter, a fake worker pool and a fake store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import Milter
import pytest

from smime_milter.cms.signing import SigningIdentity
from smime_milter.config.reader import Config, MilterConfig, ReleaseConfig
from smime_milter.model import Status
from smime_milter.mta import Runtime
from smime_milter.mta.app import RuntimeHolder, SmimeMilter
from smime_milter.mta.verifying import VerifyFailure
from smime_milter.policy import Action, Actions, Policy
from smime_milter.release.authorize import authorize
from smime_milter.release.rules import ReleaseRule
from smime_milter.stamp.fields import parse_status_header
from smime_milter.store import StoreError
from tests.support.milterapp import RECIPIENTS, Connection, FakeStore, FakeVerifier
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.smime import multipart_signed, text_entity, wrap_message
from tests.support.verdicts import NOW, make_verifier

OFFICERS = "officers@example.org"
RELEASER = "officer@example.com"

HQ = ReleaseRule(name="hq", releasers=(RELEASER,), divert_to=OFFICERS, senders=("example.com",))
VAULT = ReleaseRule(name="vault", releasers=(RELEASER,), divert_to="hold",
                    senders=("example.com",))
SUBMISSION = ReleaseRule(name="submission", releasers=(RELEASER,), divert_to=OFFICERS,
                         ports=(587,))
ELSEWHERE = ReleaseRule(name="elsewhere", releasers=(RELEASER,), divert_to=OFFICERS,
                        senders=("elsewhere.example",))

ACCEPT_ERRORS = Policy(actions=Actions(error=Action.ACCEPT))
OWN_FIELDS = ("MMHS-Original-Recipients", "SMIME-Release-Status", "SMIME-Status-At-Delivery")


# --------------------------------------------------------------------------- world


@dataclass
class World:
    verifier: FakeVerifier
    store: FakeStore
    connect: Callable[..., Connection]


MACROS = {"j": "mx.example.org", "i": "4ABCD", "{daemon_name}": "smtpd", "{daemon_port}": "25"}


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, pki: TestPki) -> Iterator[World]:
    """``world.connect(rules=..., policy=..., macros=..., fail=...)`` builds the
    Runtime and a connection; SmimeMilter's class attributes are restored after."""
    verifier = FakeVerifier(engine=make_verifier(pki))
    store = FakeStore()
    monkeypatch.setattr(SmimeMilter, "clock", staticmethod(lambda: NOW))

    def connect(rules: Sequence[ReleaseRule] = (HQ,), policy: Policy | None = None,
                milter: MilterConfig | None = None,
                macros: Mapping[str, str | None] = MACROS,
                fail: Mapping[str, int] | None = None) -> Connection:
        config = Config(policy=policy or Policy(), milter=milter or MilterConfig(),
                        release=ReleaseConfig(rules=tuple(rules)))
        runtime = Runtime(config=config, verifier=verifier, store=store, hostname="h")
        monkeypatch.setattr(SmimeMilter, "holder", RuntimeHolder(runtime), raising=False)
        connection = Connection(macros, fail or {})
        assert connection.connect() == Milter.CONTINUE
        return connection

    yield World(verifier, store, connect)


@pytest.fixture(scope="module")
def officer(pki: TestPki) -> Identity:
    return make_leaf(pki.intermediate, RELEASER, now=pki.now, key_label="release-app:officer")


def signed(pki: TestPki, text: str = "Move at dawn.\n",
           extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    return multipart_signed(text_entity(text), pki.rsa, to=RECIPIENTS[0],
                            extra_headers=extra_headers)


def authorized(pki: TestPki, officer: Identity, message: bytes) -> bytes:
    identity = SigningIdentity(officer.key, officer.cert, officer.chain)
    return authorize(message, identity, make_verifier(pki)).message


def _record_id(connection: Connection) -> str | None:
    return parse_status_header(connection.added["SMIME-Status-At-Delivery"])[1]


# --------------------------------------------------------------------------- diversion


def test_unauthorized_message_is_diverted_to_the_release_officers(
    world: World, pki: TestPki
) -> None:
    connection = world.connect()
    assert connection.send(signed(pki)) == Milter.CONTINUE

    assert connection.of("delrcpt") == [(f"<{r}>",) for r in RECIPIENTS]
    assert connection.of("addrcpt") == [(f"<{OFFICERS}>",)]
    assert connection.of("quarantine") == [] and connection.of("setreply") == []
    # Recipients are replaced before any header is touched.
    kinds = [call[0] for call in connection.calls]
    assert kinds[:3] == ["delrcpt", "delrcpt", "addrcpt"]
    added = connection.added
    assert " ".join(added["MMHS-Original-Recipients"].split()) == \
        "<rel1@example.org>, <rel2@example.org>"
    status = " ".join(added["SMIME-Release-Status"].split())
    assert status.startswith(f"held; rule=hq; divert-to={OFFICERS}; reason=")
    assert "no MMHS-Authorizing-Users" in status
    assert parse_status_header(added["SMIME-Status-At-Delivery"])[0] is Status.SIGNED_VERIFIED
    assert added["Authentication-Results"].startswith("mx.example.org;")

    [record] = world.store.records
    assert record.record_id == _record_id(connection)
    assert record.release is not None and record.release.rule == "hq"
    assert not record.release.released
    assert record.diverted_to == OFFICERS
    assert record.envelope_sender == "alice@example.com"
    assert record.envelope_recipients == RECIPIENTS
    assert record.queue_id == "4ABCD"


def test_authorized_message_is_released_to_its_recipients(
    world: World, pki: TestPki, officer: Identity
) -> None:
    connection = world.connect()
    assert connection.send(authorized(pki, officer, signed(pki))) == Milter.CONTINUE
    assert connection.of("delrcpt") == [] and connection.of("addrcpt") == []
    assert connection.of("quarantine") == []
    assert connection.added["SMIME-Release-Status"] == \
        f'released; rule=hq; authorized="{RELEASER}"'
    assert "MMHS-Original-Recipients" not in connection.added
    [record] = world.store.records
    assert record.release is not None and record.release.released
    assert record.release.authorized == (RELEASER,)
    assert record.diverted_to is None
    assert record.envelope_recipients == RECIPIENTS


def test_hold_rule_quarantines_and_keeps_the_recipients(world: World, pki: TestPki) -> None:
    connection = world.connect(rules=(VAULT,))
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.of("delrcpt") == [] and connection.of("addrcpt") == []
    [(reason,)] = connection.of("quarantine")
    assert str(reason).startswith("MMHS release: not released")
    assert connection.added["SMIME-Release-Status"].startswith("held; rule=vault; divert-to=hold")
    assert "MMHS-Original-Recipients" in connection.added
    [record] = world.store.records
    assert record.diverted_to == "hold"
    assert record.release is not None and not record.release.released


def test_no_rule_applies_no_release_edits(world: World, pki: TestPki) -> None:
    connection = world.connect(rules=(ELSEWHERE,))
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.of("delrcpt") == [] and connection.of("addrcpt") == []
    assert connection.of("quarantine") == []
    assert set(connection.added) == {"Authentication-Results", "SMIME-Status-At-Delivery"}
    [record] = world.store.records
    assert record.release is None and record.diverted_to is None


def test_first_matching_rule_wins(world: World, pki: TestPki) -> None:
    connection = world.connect(rules=(ELSEWHERE, VAULT, HQ))
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.added["SMIME-Release-Status"].startswith("held; rule=vault;")
    assert connection.of("addrcpt") == []


FORGED = (
    ("MMHS-Original-Recipients", "<attacker@example.net>"),
    ("SMIME-Release-Status", 'released; rule=hq; authorized="x@example.com"'),
    ("SMIME-Status-At-Delivery", "signed/verified; record=rforged"),
    ("smime-status-at-delivery", "none"),
)


@pytest.mark.parametrize("rules", [(), (ELSEWHERE,), (HQ,), (VAULT,)],
                         ids=["no-rules", "no-match", "diverted", "held"])
def test_incoming_copies_of_our_fields_are_always_deleted(
    world: World, pki: TestPki, rules: tuple[ReleaseRule, ...]
) -> None:
    connection = world.connect(rules=rules)
    assert connection.send(signed(pki, extra_headers=FORGED)) == Milter.CONTINUE
    deleted = connection.of("chgheader")
    assert sorted((str(n).lower(), i, v) for n, i, v in deleted) == [
        ("mmhs-original-recipients", 1, ""),
        ("smime-release-status", 1, ""),
        ("smime-status-at-delivery", 1, ""),
        ("smime-status-at-delivery", 2, ""),
    ]
    # Deleted before ours are added, so ours are never the ones removed.
    kinds = [call[0] for call in connection.calls]
    assert max(i for i, k in enumerate(kinds) if k == "chgheader") < kinds.index("addheader")
    assert _record_id(connection) == world.store.records[0].record_id
    if rules in ((HQ,), (VAULT,)):
        assert " ".join(connection.added["MMHS-Original-Recipients"].split()) == \
            "<rel1@example.org>, <rel2@example.org>"


def test_forged_copies_deleted_when_verification_fails_but_delivery_goes_on(
    world: World, pki: TestPki
) -> None:
    world.verifier.failure = VerifyFailure("worker died")
    connection = world.connect(rules=(), policy=ACCEPT_ERRORS)
    assert connection.send(signed(pki, extra_headers=FORGED)) == Milter.CONTINUE
    assert len(connection.of("chgheader")) == 4


# --------------------------------------------------------------------------- failures


def _assert_tempfailed(connection: Connection, rc: int, xcode: str = "4.7.1") -> None:
    assert rc == Milter.TEMPFAIL
    [(code, extended, _text)] = connection.of("setreply")
    assert (code, extended) == ("451", xcode)


def test_verifier_failure_with_a_rule_tempfails_even_when_errors_are_accepted(
    world: World, pki: TestPki
) -> None:
    world.verifier.failure = VerifyFailure("worker died")
    connection = world.connect(policy=ACCEPT_ERRORS)
    rc = connection.send(signed(pki))
    _assert_tempfailed(connection, rc)
    assert connection.of("addheader") == [] and connection.of("delrcpt") == []
    assert world.store.records == []


@pytest.mark.parametrize(("error", "expected", "reply"), [
    (Action.ACCEPT, Milter.CONTINUE, None),
    (Action.TEMPFAIL, Milter.TEMPFAIL, ("451", "4.7.1")),
    (Action.REJECT, Milter.REJECT, ("550", "5.7.1")),
])
def test_verifier_failure_without_a_rule_applies_the_error_action(
    world: World, pki: TestPki, error: Action, expected: int, reply: tuple[str, str] | None
) -> None:
    world.verifier.failure = VerifyFailure("worker died")
    connection = world.connect(rules=(ELSEWHERE,), policy=Policy(actions=Actions(error=error)))
    assert connection.send(signed(pki)) == expected
    assert [call[:2] for call in connection.of("setreply")] == ([reply] if reply else [])
    if error is Action.ACCEPT:
        assert "temperror" in connection.added["Authentication-Results"]
        assert "SMIME-Release-Status" not in connection.added
    assert connection.of("delrcpt") == []


@pytest.mark.parametrize("failure", [StoreError("io", "disk full"), TimeoutError()],
                         ids=["store-error", "timeout"])
def test_store_failure_with_a_rule_tempfails_even_when_errors_are_accepted(
    world: World, pki: TestPki, failure: Exception
) -> None:
    world.store.failure = failure
    connection = world.connect(policy=ACCEPT_ERRORS)
    rc = connection.send(signed(pki))
    _assert_tempfailed(connection, rc)
    assert connection.of("delrcpt") == [] and connection.of("addrcpt") == []
    assert connection.of("addheader") == []


def test_store_failure_without_a_rule_applies_the_error_action(
    world: World, pki: TestPki
) -> None:
    world.store.failure = StoreError("io", "disk full")
    connection = world.connect(rules=(ELSEWHERE,), policy=ACCEPT_ERRORS)
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.of("setreply") == []
    assert "SMIME-Status-At-Delivery" not in connection.added  # no record, no record id


@pytest.mark.parametrize(("method", "at"), [
    ("delrcpt", 1), ("delrcpt", 2), ("addrcpt", 1), ("addheader", 1), ("addheader", 4),
    ("chgheader", 1),
])
def test_a_failed_edit_mid_diversion_tempfails(
    world: World, pki: TestPki, method: str, at: int
) -> None:
    """The MTA discards every edit of a tempfailed message: never half-diverted."""
    connection = world.connect(policy=ACCEPT_ERRORS, fail={method: at})
    message = signed(pki, extra_headers=FORGED[:1])
    rc = connection.send(message)
    _assert_tempfailed(connection, rc, xcode="4.3.0")
    [(_, _, text)] = connection.of("setreply")
    assert "internal error" in str(text)
    assert connection.count(method) == at
    assert connection.milter.buffer is None and connection.milter.recipients == []


def test_a_failed_quarantine_of_a_held_message_tempfails(world: World, pki: TestPki) -> None:
    connection = world.connect(rules=(VAULT,), fail={"quarantine": 1})
    _assert_tempfailed(connection, connection.send(signed(pki)), xcode="4.3.0")


# --------------------------------------------------------------------------- oversize


def test_oversize_message_with_a_rule_is_diverted_unexamined(world: World, pki: TestPki) -> None:
    connection = world.connect(milter=MilterConfig(max_message_size=2000))
    message = signed(pki, text="x" * 3000 + "\n")
    assert connection.send(message) == Milter.CONTINUE
    assert world.verifier.jobs == []
    assert connection.of("delrcpt") == [(f"<{r}>",) for r in RECIPIENTS]
    assert connection.of("addrcpt") == [(f"<{OFFICERS}>",)]
    status = " ".join(connection.added["SMIME-Release-Status"].split())
    assert status.startswith("held; rule=hq;")
    assert "not examined" in connection.added["Authentication-Results"]
    [record] = world.store.records
    assert record.release is not None and not record.release.released
    assert record.diverted_to == OFFICERS
    assert record.envelope_recipients == RECIPIENTS
    assert record.status is None
    assert record.notes == ("not examined: larger than 2000 bytes",)


def test_oversize_message_with_a_rule_is_never_released(
    world: World, pki: TestPki, officer: Identity
) -> None:
    connection = world.connect(milter=MilterConfig(max_message_size=4000))
    message = authorized(pki, officer, signed(pki, text="x" * 3000 + "\n"))
    assert connection.send(message) == Milter.CONTINUE
    assert world.verifier.jobs == []
    assert connection.of("addrcpt") == [(f"<{OFFICERS}>",)]
    [record] = world.store.records
    assert record.release is not None and not record.release.released


def test_oversize_message_without_a_rule_is_not_recorded(world: World, pki: TestPki) -> None:
    connection = world.connect(rules=(ELSEWHERE,), milter=MilterConfig(max_message_size=2000))
    assert connection.send(signed(pki, text="x" * 3000 + "\n")) == Milter.CONTINUE
    assert world.store.records == [] and world.verifier.jobs == []
    assert connection.of("delrcpt") == [] and "SMIME-Release-Status" not in connection.added


def test_oversize_reject_wins_over_diversion(world: World, pki: TestPki) -> None:
    policy = Policy(actions=Actions(oversize=Action.REJECT))
    connection = world.connect(policy=policy, milter=MilterConfig(max_message_size=2000))
    assert connection.send(signed(pki, text="x" * 3000 + "\n")) == Milter.REJECT
    assert world.store.records == [] and connection.of("delrcpt") == []


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(("port", "expected", "applies"), [
    ("587", 587, True),
    ("25", 25, False),
    ("abc", None, True),
    ("", None, True),
    (None, None, True),
])
def test_daemon_port_macro_selects_a_ports_rule(
    world: World, pki: TestPki, port: str | None, expected: int | None, applies: bool
) -> None:
    macros = {**MACROS, "{daemon_port}": port}
    connection = world.connect(rules=(SUBMISSION,), macros=macros)
    assert connection.milter.daemon_port == expected
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert bool(connection.of("addrcpt")) is applies
    assert ("SMIME-Release-Status" in connection.added) is applies


def test_missing_daemon_port_macro(world: World, pki: TestPki) -> None:
    macros = {key: value for key, value in MACROS.items() if key != "{daemon_port}"}
    connection = world.connect(rules=(SUBMISSION,), macros=macros)
    assert connection.milter.daemon_port is None
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.of("addrcpt") == [(f"<{OFFICERS}>",)]


@pytest.mark.parametrize(("daemon", "applies"), [("submission", True), ("smtpd", False)])
def test_daemon_name_macro_selects_a_daemons_rule(
    world: World, pki: TestPki, daemon: str, applies: bool
) -> None:
    rule = ReleaseRule(name="sub", releasers=(RELEASER,), divert_to=OFFICERS,
                       daemons=("submission",))
    connection = world.connect(rules=(rule,), macros={**MACROS, "{daemon_name}": daemon})
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert bool(connection.of("addrcpt")) is applies


def test_header_sender_selects_a_rule_whatever_the_envelope_says(
    world: World, pki: TestPki
) -> None:
    connection = world.connect()
    assert connection.send(signed(pki), sender="bounce@other.example") == Milter.CONTINUE
    assert connection.of("addrcpt") == [(f"<{OFFICERS}>",)]


def test_each_message_of_a_connection_is_judged_on_its_own(world: World, pki: TestPki) -> None:
    connection = world.connect()
    assert connection.send(signed(pki)) == Milter.CONTINUE
    assert connection.count("delrcpt") == 2
    unsigned = wrap_message(text_entity("Hi.\n"), from_addr="bob@elsewhere.example")
    connection.calls.clear()
    rc = connection.send(unsigned, sender="bob@elsewhere.example",
                         recipients=["carol@example.org"])
    assert rc == Milter.CONTINUE
    assert connection.of("delrcpt") == [] and connection.of("addrcpt") == []
    first, second = world.store.records
    assert first.envelope_recipients == RECIPIENTS and first.diverted_to == OFFICERS
    assert second.envelope_recipients == ("carol@example.org",) and second.release is None

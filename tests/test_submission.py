"""The milter's submission-mode decisions (``submission``) and RFC 9788 helpers (``protect``)."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from smime_milter.advanced import AdvancedConfig, AutoRule, submission
from smime_milter.advanced.compose import Composed, OuterField
from smime_milter.advanced.submission import Connection, Request, RequestHeaderError
from smime_milter.config.reader import parse_config
from smime_milter.mail import protect

# --- request header ------------------------------------------------------------------

REQUESTS = [
    ("smimeSign=true", Request(sign=True)),
    ("smimeSign=true; smimeEncrypt=true", Request(sign=True, encrypt=True)),
    ("smimeEncrypt=true; headerProtect=false", Request(encrypt=True, header_protect=False)),
    ("smimesign=TRUE; SMIMESIGNOPAQUE=false", Request(sign=True, opaque=False)),
    ("smimeSign=false;", Request()),
    (" smimeSign = true ; smimeEncrypt = false ", Request(sign=True)),
]


@pytest.mark.parametrize(("value", "expected"), REQUESTS)
def test_the_request_header_gives_the_drafts_arguments_with_its_defaults(value, expected):
    assert submission.parse_request([value]) == expected


@pytest.mark.parametrize("value", [
    "smimeSign=yes", "smimeSign", "sign=true", "smimeSign=true; smimeSign=false",
    "smimeEncrypt=1",
])
def test_a_malformed_request_is_invalid_arguments(value):
    with pytest.raises(RequestHeaderError) as caught:
        submission.parse_request([value])
    assert caught.value.jmap_error == "invalidArguments"


def test_two_request_fields_are_refused_and_none_means_no_request():
    with pytest.raises(RequestHeaderError, match="2 SMIME-Advanced fields"):
        submission.parse_request(["smimeSign=true", "smimeEncrypt=true"])
    assert submission.parse_request([]) is None
    assert not Request().wanted and Request(encrypt_if_possible=True).wanted


# --- who is a submitter ----------------------------------------------------------------

CONFIG = AdvancedConfig(
    submission_daemons=("submission",),
    submission_clients=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")),
    client_account="jmap",
    accounts=(("alice", ("alice@example.org",)), ("jmap", ("example.org",))),
)


@pytest.mark.parametrize(("connection", "trusted"), [
    (Connection(sasl_user="alice"), True),
    (Connection(daemon_name="submission"), True),
    (Connection(daemon_name="smtpd"), False),
    (Connection(client_address="192.0.2.7"), True),
    (Connection(client_address="IPv6:2001:db8::5"), True),
    (Connection(client_address="198.51.100.1"), False),
    (Connection(client_address="not an address"), False),
    (Connection(), False),
])
def test_only_connections_policy_marks_are_submitters(connection, trusted):
    assert submission.is_submitter(CONFIG, connection) is trusted


def test_sasl_users_are_submitters_only_while_submission_sasl_is_on():
    config = AdvancedConfig(submission_sasl=False)
    assert not submission.is_submitter(config, Connection(sasl_user="alice"))


def test_the_account_is_the_sasl_login_else_the_client_account():
    assert submission.account_of(CONFIG, Connection(sasl_user="alice")) == "alice"
    assert submission.account_of(CONFIG, Connection(client_address="192.0.2.7")) == "jmap"
    assert submission.account_of(AdvancedConfig(), Connection(client_address="x")) is None


@pytest.mark.parametrize(("account", "sender", "allowed"), [
    ("alice", "alice@example.org", True),
    ("alice", "ALICE@Example.ORG", True),
    ("alice", "bob@example.org", False),
    ("jmap", "bob@example.org", True),
    ("jmap", "bob@sub.example.org", True),
    ("jmap", "bob@example.com", False),
    ("mallory", "alice@example.org", False),
])
def test_an_account_signs_only_as_the_senders_it_lists(account, sender, allowed):
    assert CONFIG.may_sign_as(account, sender) is allowed


def test_automatic_rules_raise_the_request_and_the_first_match_wins():
    config = AdvancedConfig(auto=(
        AutoRule(senders=("ceo@example.org",), encrypt="always"),
        AutoRule(senders=("example.org",), sign=True, encrypt="when-possible"),
    ))
    assert submission.auto_rule(config, "ceo@example.org").encrypt == "always"
    rule = submission.auto_rule(config, "bob@example.org")
    assert rule is config.auto[1]
    assert submission.auto_rule(config, "bob@example.com") is None
    assert submission.auto_rule(config, None) is None
    raised = submission.combined(Request(opaque=False), rule)
    assert raised == Request(sign=True, opaque=False, encrypt_if_possible=True)
    assert submission.combined(None, config.auto[0]) == Request(encrypt=True)
    assert submission.combined(Request(sign=True), None) == Request(sign=True)


def test_the_advanced_section_parses_strictly():
    config = parse_config(
        '[advanced]\nkeys = "keys"\nsubmission_clients = ["127.0.0.1"]\n'
        'client_account = "jmap"\n[advanced.accounts]\n"jmap@example.org" = ["example.org"]\n'
        '[[advanced.auto]]\nsenders = ["example.org"]\nencrypt = "when-possible"\n'
    ).advanced
    assert config.may_sign_as("jmap@example.org", "x@example.org")
    assert config.auto[0].encrypt == "when-possible" and not config.auto[0].sign
    for text, message in [
        ("[advanced]\nkeyz = 'k'", "advanced.keyz: unknown key"),
        ("[advanced.accounts]\nalice = []", "list the addresses"),
        ("[advanced.accounts]\nalice = ['not an address']", "not an address or domain"),
        ("[advanced]\nsubmission_clients = ['10.0.0.1/8']", "not an address or network"),
        ("[[advanced.auto]]\nsenders = ['a.org']\nencrypt = 'sometimes'", "invalid value"),
        ("[[advanced.auto]]\nsenders = ['a.org']", "neither signs nor encrypts"),
        ("[[advanced.auto]]\nsign = true", "senders: required"),
        ("[advanced]\nclient_account = 'a b'", "not an account name"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config(text)


def test_config_errors_name_the_line_of_the_key():
    with pytest.raises(ValueError, match=r"<config>:3: advanced.accounts.bob: "):
        parse_config("[advanced.accounts]\nalice = ['a@b.org']\nbob = [1]\n")


# --- header edits ------------------------------------------------------------------------

def test_header_edits_keep_untouched_fields_in_place_and_change_only_what_differs():
    original = [("Received", "from x"), ("From", "a@b.org"), ("Subject", "Plans"),
                ("Content-Type", "text/plain"), ("Keywords", "k"), ("X-Forged", "f")]
    composed = Composed(headers=(
        OuterField("Received", "from x", 0), OuterField("From", "a@b.org", 1),
        OuterField("Subject", "[...]", 2), OuterField("X-Forged", "f", 3),
        OuterField("MIME-Version", "1.0"), OuterField("Content-Type", "application/pkcs7-mime"),
    ), body=b"")
    # The composer saw the fields without the Keywords one (index 4 skipped).
    edits = submission.header_edits(original, composed, origins=(0, 1, 2, 5), drop=frozenset({3}))
    assert edits.change == (("Subject", 1, "[...]"),)
    assert sorted(edits.delete) == [("Content-Type", 1), ("Keywords", 1), ("X-Forged", 1)]
    assert edits.add == (("MIME-Version", "1.0"), ("Content-Type", "application/pkcs7-mime"))


def test_deletions_of_one_name_come_highest_index_first():
    original = [("Comments", "a"), ("Comments", "b"), ("Comments", "c")]
    edits = submission.header_edits(original, Composed(headers=(), body=b""))
    assert edits.delete == (("Comments", 3), ("Comments", 2), ("Comments", 1))


# --- RFC 9788 helpers -------------------------------------------------------------------

def test_hcp_baseline_obscures_subject_drops_keywords_and_comments_keeps_the_rest():
    assert protect.hcp_baseline("Subject", "Secret plans") == "[...]"
    assert protect.hcp_baseline("keywords", "x") is None
    assert protect.hcp_baseline("Comments", "x") is None
    assert protect.hcp_baseline("From", "a@b.org") == "a@b.org"


@pytest.mark.parametrize(("before", "after"), [
    ("text/plain", 'text/plain; hp="cipher"'),
    ("text/plain; charset=utf-8;", 'text/plain; charset=utf-8; hp="cipher"'),
    ('multipart/mixed; hp="clear"; boundary=x', 'multipart/mixed; boundary=x; hp="cipher"'),
    ("text/plain; HP=clear", 'text/plain; hp="cipher"'),
])
def test_the_hp_parameter_is_set_once(before, after):
    assert protect.with_hp_parameter(before, "cipher") == after


def test_protected_fields_leave_out_structure_trace_and_bcc():
    headers = [("Received", "r"), ("From", "a"), ("Bcc", "secret@x"), ("Content-Type", "t"),
               ("MIME-Version", "1.0"), ("Subject", "s"), ("HP-Outer", "Subject: x")]
    assert protect.protected_fields(headers) == (("From", "a"), ("Subject", "s"))
    assert protect.hp_outer_fields([("From", "a"), ("Subject", "[...]"), ("Content-Type", "t")]
                                   ) == (("HP-Outer", "From: a"), ("HP-Outer", "Subject: [...]"))

"""MIXER originator mapping with MMHS-Authorizing-Users
(draft-melnikov-mmhs-authorizing-users section 5 over RFC 2156): the pure
mapping, and ``smime-milter mixer`` run in-process and as a real process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from email.header import decode_header, make_header

import pytest

from smime_milter.cli.main import main
from smime_milter.release.mixer import (
    IpmsHeading,
    MixerError,
    from_x400,
    headers_from_message,
    to_x400,
)

Fields = tuple[tuple[str, str], ...]

ALICE = "Alice <alice@example.mil>"
BOB = "Bob <bob@example.mil>"
CAROL = "carol@example.mil"
DAVE = "Dave <dave@example.mil>"
SAM = "Sam Secretary <sam@example.mil>"


# --- to_x400: section 5.1 and the RFC 2156 fallback ----------------------------------


@pytest.mark.parametrize(("headers", "originator", "authorizing_users"), [
    pytest.param([("From", ALICE)], ALICE, (),
                 id="rfc2156: no Sender, From becomes originator"),
    pytest.param([("From", ALICE), ("Sender", SAM)], SAM, (ALICE,),
                 id="rfc2156: Sender becomes originator, From authorizing-users"),
    pytest.param([("From", f"{ALICE}, {BOB}"), ("Sender", SAM)], SAM, (ALICE, BOB),
                 id="rfc2156: Sender, every From address is an authorizing user"),
    pytest.param([("From", f"{ALICE}, {BOB}, {CAROL}")], ALICE, (BOB, CAROL),
                 id="rfc2156: several From, no Sender: first originator, rest authorizing"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", f"{BOB}, {CAROL}")],
                 ALICE, (BOB, CAROL),
                 id="5.1 rule 1: no Sender, From originator, MMHS authorizing"),
    pytest.param([("From", f"{ALICE}, {DAVE}"), ("MMHS-Authorizing-Users", f"{BOB}, {CAROL}")],
                 ALICE, (DAVE, BOB, CAROL),
                 id="5.1 rule 1: no Sender, remaining From + MMHS authorizing"),
    pytest.param([("From", ALICE), ("Sender", SAM), ("MMHS-Authorizing-Users", BOB)],
                 SAM, (ALICE, BOB),
                 id="5.1 rules 1-2: Sender originator, From + MMHS authorizing"),
    pytest.param([("From", f"{ALICE}, {DAVE}"), ("Sender", SAM),
                  ("MMHS-Authorizing-Users", f"{BOB}, {CAROL}")],
                 SAM, (ALICE, DAVE, BOB, CAROL),
                 id="5.1 rules 1-2: Sender, all From + all MMHS authorizing in order"),
    pytest.param([("MMHS-Authorizing-Users", BOB), ("Sender", SAM), ("From", ALICE)],
                 SAM, (ALICE, BOB),
                 id="field order does not matter"),
    pytest.param([("FROM", ALICE), ("sender", SAM), ("mmhs-authorizing-users", BOB)],
                 SAM, (ALICE, BOB),
                 id="field names are case-insensitive"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", f"Officers: {BOB}, {CAROL};")],
                 ALICE, (BOB, CAROL),
                 id="MMHS group is flattened into its members"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", f"Officers:;, {BOB}")],
                 ALICE, (BOB,),
                 id="MMHS empty group contributes nothing"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", "Officers:;")], ALICE, (),
                 id="MMHS with only an empty group is present and empty"),
    pytest.param([("From", f"{ALICE}, {BOB}"),
                  ("MMHS-Authorizing-Users", f"bob@EXAMPLE.mil, {CAROL}, C <CAROL@example.mil>")],
                 ALICE, (BOB, CAROL),
                 id="duplicates dropped case-insensitively, first kept"),
    pytest.param([("From", ALICE), ("Sender", SAM), ("MMHS-Authorizing-Users", "SAM@example.mil")],
                 SAM, (ALICE, "SAM@example.mil"),
                 id="originator is not removed from authorizing-users"),
    pytest.param([("From", ALICE), ("Subject", "x"), ("To", "x@example.org"),
                  ("Reply-To", BOB)], ALICE, (),
                 id="other fields are ignored"),
])
def test_to_x400_rules(headers: list[tuple[str, str]], originator: str,
                       authorizing_users: tuple[str, ...]) -> None:
    assert to_x400(headers) == IpmsHeading(originator, authorizing_users)


@pytest.mark.parametrize(("value", "mailboxes"), [
    pytest.param(f"{ALICE},\r\n {BOB}", (ALICE, BOB), id="CRLF SP folding"),
    pytest.param(f"{ALICE},\n\t{BOB}", (ALICE, BOB), id="LF HTAB folding"),
    pytest.param('"Smith, John" <john@example.mil>', ('"Smith, John" <john@example.mil>',),
                 id="quoted display name with a comma"),
    pytest.param("alice@example.mil (Alice in comment)", ("alice@example.mil",),
                 id="comments dropped"),
    pytest.param("=?utf-8?q?Zo=C3=AB?= <zoe@example.mil>", ("Zoë <zoe@example.mil>",),
                 id="RFC 2047 display name decoded"),
    pytest.param("Zoë <zoe@example.mil>", ("Zoë <zoe@example.mil>",),
                 id="RFC 6532 UTF-8 display name"),
    pytest.param(f"{ALICE}, , {BOB}", (ALICE, BOB), id="obsolete empty list member"),
    pytest.param("<@relay.example.mil:alice@example.mil>", ("alice@example.mil",),
                 id="obsolete route"),
    pytest.param("alice@[192.0.2.1]", ("alice@[192.0.2.1]",), id="domain literal"),
])
def test_address_syntax(value: str, mailboxes: tuple[str, ...]) -> None:
    heading = to_x400([("From", "x@example.mil"), ("Sender", "s@example.mil"),
                       ("MMHS-Authorizing-Users", value)])
    assert heading.authorizing_users == ("x@example.mil", *mailboxes)


def test_folded_from_and_sender() -> None:
    heading = to_x400([("From", f"{ALICE},\r\n {BOB}"),
                       ("Sender", "Sam\r\n Secretary\r\n\t <sam@example.mil>")])
    assert heading == IpmsHeading(SAM, (ALICE, BOB))


@pytest.mark.parametrize(("headers", "reason"), [
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", BOB),
                  ("mmhs-authorizing-users", CAROL)],
                 "more than one MMHS-Authorizing-Users", id="MMHS twice"),
    pytest.param([("From", ALICE), ("Sender", SAM), ("SENDER", SAM)],
                 "more than one Sender", id="Sender twice"),
    pytest.param([("From", ALICE), ("From", BOB)], "more than one From", id="From twice"),
    pytest.param([("From", ALICE), ("Sender", f"{SAM}, {BOB}")],
                 "exactly one mailbox", id="Sender with two addresses"),
    pytest.param([("From", ALICE), ("Sender", "")], "exactly one mailbox", id="Sender empty"),
    pytest.param([("Sender", SAM), ("MMHS-Authorizing-Users", BOB)], "no From",
                 id="no From"),
    pytest.param([], "no From", id="no fields at all"),
    pytest.param([("From", "")], "From names no mailbox", id="From empty"),
    pytest.param([("From", "Staff: alice@example.mil;")], "group syntax", id="From group"),
    pytest.param([("From", ALICE), ("Sender", "Staff: sam@example.mil;")], "group syntax",
                 id="Sender group"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", "")], "is empty",
                 id="MMHS empty"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", "  \r\n ")], "is empty",
                 id="MMHS only folding white space"),
    pytest.param([("From", "garbage")], "From is not an address list", id="no domain"),
    pytest.param([("From", "Alice <alice@example.mil")], "not an address list",
                 id="unclosed angle bracket"),
    pytest.param([("From", "alice@example.mil bob@example.mil")], "not an address list",
                 id="missing comma"),
    pytest.param([("From", "<alice@example.mil> junk")], "not an address list",
                 id="trailing junk"),
    pytest.param([("From", "<>")], "not an address list", id="null address"),
    pytest.param([("From", "alice.@example.mil")], "not an address list",
                 id="bad local part"),
    pytest.param([("From", '"Alice <alice@example.mil>')], "not an address list",
                 id="unterminated quoted string"),
    pytest.param([("From", ALICE), ("MMHS-Authorizing-Users", "Team: bob@example.mil; junk")],
                 "MMHS-Authorizing-Users is not an address list",
                 id="input that crashes the stdlib parser"),
    pytest.param([("From", ALICE), ("Sender", "sam@")], "Sender is not an address list",
                 id="Sender with no domain"),
    pytest.param([("From", "alice@example.mil\r\nBcc: eve@example.org")],
                 "line break that is not folding", id="header injection"),
    pytest.param([("From", "alice@example.mil\udcff")], "not UTF-8",
                 id="undecodable bytes"),
])
def test_to_x400_errors(headers: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(MixerError, match=reason):
        to_x400(headers)


def test_mixer_error_is_a_value_error() -> None:
    assert issubclass(MixerError, ValueError)


# --- headers_from_message ------------------------------------------------------------


@pytest.mark.parametrize("message", [
    b"From: Alice <alice@example.mil>,\r\n Bob <bob@example.mil>\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: Alice <alice@example.mil>,\n\tBob <bob@example.mil>\nSubject: x\n\nbody\n",
    b"From: Alice <alice@example.mil>,\r\n Bob <bob@example.mil>\r\nSubject: x\r\n",
])
def test_headers_from_message_unfolds(message: bytes) -> None:
    headers = headers_from_message(message)
    assert headers[0][0] == "From"
    assert to_x400(headers) == IpmsHeading(ALICE, (BOB,))


def test_headers_from_message_rejects_oversized_header() -> None:
    with pytest.raises(MixerError, match="cannot read the message header"):
        headers_from_message(b"X: " + b"a" * 300_000 + b"\r\n\r\nbody")


# --- from_x400: section 5.2 and the RFC 2156 fallback -------------------------------


@pytest.mark.parametrize(("heading", "military", "fields"), [
    pytest.param(IpmsHeading(ALICE, (BOB, CAROL), ("primary-precedence",)), None,
                 (("From", ALICE), ("MMHS-Authorizing-Users", f"{BOB}, {CAROL}")),
                 id="5.2 military by extension: originator From, authorizing MMHS"),
    pytest.param(IpmsHeading(ALICE, (), ("message-type",)), None, (("From", ALICE),),
                 id="5.2 military with no authorizing users: no MMHS field"),
    pytest.param(IpmsHeading(ALICE, (BOB,)), True,
                 (("From", ALICE), ("MMHS-Authorizing-Users", BOB)),
                 id="5.2 military by configuration"),
    pytest.param(IpmsHeading(ALICE, (BOB,), ("primary-precedence",)), False,
                 (("From", BOB), ("Sender", ALICE)),
                 id="non-military forced despite extensions"),
    pytest.param(IpmsHeading(SAM, (ALICE, BOB)), None,
                 (("From", f"{ALICE}, {BOB}"), ("Sender", SAM)),
                 id="rfc2156: authorizing-users From, originator Sender"),
    pytest.param(IpmsHeading(ALICE, ()), None, (("From", ALICE),),
                 id="rfc2156: no authorizing users, originator From"),
    pytest.param(IpmsHeading(ALICE, ()), False, (("From", ALICE),),
                 id="rfc2156 forced: no authorizing users"),
    pytest.param(IpmsHeading('"Smith, John" <john@example.mil>', ()), None,
                 (("From", '"Smith, John" <john@example.mil>'),),
                 id="quoted display name kept quoted"),
    pytest.param(IpmsHeading("  alice@example.mil  (comment)", ()), None,
                 (("From", "alice@example.mil"),),
                 id="mailbox text normalised"),
])
def test_from_x400_rules(heading: IpmsHeading, military: bool | None, fields: Fields) -> None:
    assert from_x400(heading, military) == fields


@pytest.mark.parametrize(("heading", "military", "reason"), [
    pytest.param(IpmsHeading(None, (BOB,)), None, "no originator", id="no originator"),
    pytest.param(IpmsHeading(None, (BOB,), ("x",)), None, "no originator",
                 id="no originator, military"),
    pytest.param(IpmsHeading(None, ()), False, "no originator",
                 id="no originator, forced non-military"),
    pytest.param(IpmsHeading("", ()), None, "originator must be exactly one mailbox",
                 id="empty originator"),
    pytest.param(IpmsHeading("garbage", ()), None, "originator is not an address list",
                 id="unparseable originator"),
    pytest.param(IpmsHeading(f"{ALICE}, {BOB}", ()), None, "exactly one mailbox",
                 id="two mailboxes as originator"),
    pytest.param(IpmsHeading("Staff: alice@example.mil;", ()), None, "exactly one mailbox",
                 id="group as originator"),
    pytest.param(IpmsHeading(ALICE, (BOB, "")), True,
                 "authorizing-users must be exactly one mailbox", id="empty authorizing user"),
    pytest.param(IpmsHeading(ALICE, (f"{BOB}, {CAROL}",)), True, "exactly one mailbox",
                 id="two mailboxes in one authorizing user"),
    pytest.param(IpmsHeading(ALICE, ("bob@example.mil\r\nBcc: eve@example.org",)), None,
                 "line break", id="header injection in authorizing user"),
])
def test_from_x400_errors(heading: IpmsHeading, military: bool | None, reason: str) -> None:
    with pytest.raises(MixerError, match=reason):
        from_x400(heading, military)


@pytest.mark.parametrize("name", ["Zoë Wölfl", "Ω" * 60, "日本語の名前" * 8])
def test_from_x400_encodes_non_ascii_display_names(name: str) -> None:
    ((field, value),) = from_x400(IpmsHeading(f"{name} <zoe@example.mil>", ()))
    assert field == "From" and value.isascii()
    phrase, _, addr_spec = value.rpartition(" <")
    assert addr_spec == "zoe@example.mil>"
    assert all(len(word) <= 75 for word in phrase.split(" "))
    assert str(make_header(decode_header(phrase))) == name


def test_encoded_display_name_round_trip() -> None:
    """A name that fits one encoded-word comes back unchanged. Python 3.11's
    parser keeps the space between adjacent encoded-words (RFC 2047 6.2
    says to drop it), so longer names are only checked with decode_header
    above."""
    ((_, value),) = from_x400(IpmsHeading("Zoë Wölfl <zoe@example.mil>", ()))
    assert to_x400([("From", value)]).originator == "Zoë Wölfl <zoe@example.mil>"


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    pytest.param((("From", ALICE), ("MMHS-Authorizing-Users", f"{BOB}, {CAROL}")),
                 id="military From + MMHS"),
    pytest.param((("From", ALICE),), id="military From only"),
])
def test_military_round_trip(fields: Fields) -> None:
    assert from_x400(to_x400(fields), military=True) == fields


@pytest.mark.parametrize("fields", [
    pytest.param((("From", f"{ALICE}, {BOB}"), ("Sender", SAM)), id="From + Sender"),
    pytest.param((("From", ALICE),), id="From only"),
])
def test_rfc2156_round_trip(fields: Fields) -> None:
    assert from_x400(to_x400(fields)) == fields


def test_military_sender_is_not_preserved() -> None:
    """Section 5 loses the difference between From and a Sender with
    MMHS-Authorizing-Users: the military reverse mapping has no Sender."""
    heading = to_x400([("From", ALICE), ("Sender", SAM), ("MMHS-Authorizing-Users", BOB)])
    assert from_x400(heading, military=True) == (
        ("From", SAM), ("MMHS-Authorizing-Users", f"{ALICE}, {BOB}"))


# --- the command line ------------------------------------------------------------

MILITARY_MESSAGE = (
    b"From: Alice <alice@example.mil>\r\n"
    b"MMHS-Authorizing-Users: Bob <bob@example.mil>,\r\n carol@example.mil\r\n"
    b"Subject: release\r\n\r\nBody.\r\n"
)
MILITARY_JSON = ('{"originator": "Alice <alice@example.mil>", "authorizingUsers": '
                 '["Bob <bob@example.mil>", "carol@example.mil"]}\n')


def mixer(args: list[str], stdin: bytes, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    status = main(["mixer", *args])
    out, err = capsys.readouterr()
    return status, out, err


def run_command(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "smime_milter.cli", "mixer", *args],
                          input=stdin, capture_output=True, timeout=120, check=False)


def test_cli_to_x400(monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    assert mixer(["--to-x400"], MILITARY_MESSAGE, monkeypatch, capsys) == (0, MILITARY_JSON, "")


@pytest.mark.parametrize(("args", "heading", "output"), [
    pytest.param(["--military"], MILITARY_JSON,
                 f"From: {ALICE}\nMMHS-Authorizing-Users: {BOB}, {CAROL}\n", id="--military"),
    pytest.param([], MILITARY_JSON, f"From: {BOB}, {CAROL}\nSender: {ALICE}\n",
                 id="no extensions: RFC 2156"),
    pytest.param(["--non-military"], json.dumps({
        "originator": ALICE, "authorizingUsers": [BOB], "mmhsExtensions": ["message-type"]}),
                 f"From: {BOB}\nSender: {ALICE}\n", id="--non-military"),
    pytest.param([], json.dumps({
        "originator": ALICE, "authorizingUsers": [BOB], "mmhsExtensions": ["message-type"]}),
                 f"From: {ALICE}\nMMHS-Authorizing-Users: {BOB}\n", id="extensions: military"),
    pytest.param([], json.dumps({"originator": ALICE}), f"From: {ALICE}\n",
                 id="authorizingUsers optional"),
])
def test_cli_from_x400(args: list[str], heading: str, output: str,
                       monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert mixer(["--from-x400", *args], heading.encode(), monkeypatch, capsys) == (
        0, output, "")


@pytest.mark.parametrize(("args", "stdin", "reason"), [
    pytest.param(["--to-x400"], b"Subject: x\r\n\r\n", "the message has no From field",
                 id="no From"),
    pytest.param(["--to-x400"], b"", "the message has no From field", id="empty stdin"),
    pytest.param(["--to-x400"], b"From: a@example.mil\r\nMMHS-Authorizing-Users: b@example.mil"
                 b"\r\nMMHS-Authorizing-Users: c@example.mil\r\n\r\n",
                 "more than one MMHS-Authorizing-Users field", id="MMHS twice"),
    pytest.param(["--to-x400"], b"From: Alice <alice@\r\n\r\n", "From is not an address list",
                 id="unparseable From"),
    pytest.param(["--to-x400"], b"From: \xff\xfe@example.mil\r\n\r\n", "not UTF-8",
                 id="undecodable From"),
    pytest.param(["--to-x400", "--military"], MILITARY_MESSAGE,
                 "--military and --non-military apply only to --from-x400",
                 id="--military with --to-x400"),
    pytest.param(["--from-x400"], b"not json", "stdin is not JSON", id="not JSON"),
    pytest.param(["--from-x400"], b"\xff\xfe\xfd", "stdin is not JSON", id="not text"),
    pytest.param(["--from-x400"], b"[]", "must be a JSON object", id="array"),
    pytest.param(["--from-x400"], b'{"originator": "a@example.mil", "authorisingUsers": []}',
                 "unknown key(s) in the IPMS heading: authorisingUsers", id="misspelt key"),
    pytest.param(["--from-x400"], b'{"originator": 7}', "originator must be a string",
                 id="originator not a string"),
    pytest.param(["--from-x400"], b'{"originator": "a@example.mil", "authorizingUsers": "b"}',
                 "authorizingUsers must be a list of strings", id="authorizingUsers string"),
    pytest.param(["--from-x400"], b'{"originator": "a@example.mil", "mmhsExtensions": [1]}',
                 "mmhsExtensions must be a list of strings", id="extension not a string"),
    pytest.param(["--from-x400"], b'{"authorizingUsers": ["b@example.mil"]}',
                 "the IPMS heading has no originator", id="no originator"),
    pytest.param(["--from-x400"], b'{"originator": null}', "the IPMS heading has no originator",
                 id="null originator"),
    pytest.param(["--from-x400", "--military"],
                 b'{"originator": "a@example.mil", "authorizingUsers": ["a\\r\\nBcc: e@x.org"]}',
                 "line break that is not folding", id="line break in address"),
])
def test_cli_bad_input(args: list[str], stdin: bytes, reason: str,
                       monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = mixer(args, stdin, monkeypatch, capsys)
    assert (status, out) == (2, "")
    assert err.startswith("smime-milter mixer: ") and reason in err
    assert err.count("\n") == 1 and err.endswith("\n")


@pytest.mark.parametrize("args", [[], ["--to-x400", "--from-x400"],
                                  ["--from-x400", "--military", "--non-military"]])
def test_cli_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["mixer", *args])
    assert exit_info.value.code == 2
    assert "smime-milter mixer: error:" in capsys.readouterr().err


@pytest.mark.process
def test_command_round_trip_of_a_military_message() -> None:
    to_x400_run = run_command(["--to-x400"], MILITARY_MESSAGE)
    assert to_x400_run.returncode == 0, to_x400_run.stderr
    assert to_x400_run.stdout.decode() == MILITARY_JSON
    from_x400_run = run_command(["--from-x400", "--military"], to_x400_run.stdout)
    assert from_x400_run.returncode == 0, from_x400_run.stderr
    assert from_x400_run.stdout.decode() == (
        "From: Alice <alice@example.mil>\n"
        "MMHS-Authorizing-Users: Bob <bob@example.mil>, carol@example.mil\n")


@pytest.mark.process
def test_command_bad_input_exits_2_without_traceback() -> None:
    result = run_command(["--to-x400"], b"From: a@example.mil\r\nSender: b@example.mil\r\n"
                         b"Sender: c@example.mil\r\n\r\n")
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode() == (
        "smime-milter mixer: the message has more than one Sender field (RFC 5322 3.6)\n")

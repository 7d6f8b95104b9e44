"""The delivery stamps: Authentication-Results (RFC 8601 + RFC 7281) and
SMIME-Status-At-Delivery.

The header values are checked with a small, strict RFC 8601 §2.2 reader written
here (not the module's own lexer), so a value that only the module itself could
read fails. Certificate content and error texts are attacker-controlled: the
property tests throw arbitrary text at every field and require the result to stay
ASCII, keep its line structure and parse back to one resinfo per signer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smime_milter.mail.mime import parse_address
from smime_milter.model import SignerResult, Status, Verdict
from smime_milter.stamp.fields import (
    AR_HEADER,
    MAX_COMMENT,
    MAX_RESULTS,
    STATUS_HEADER,
    authentication_results,
    authserv_id_of,
    claims_authserv_id,
    parse_status_header,
    smime_result,
    status_header,
    unfold,
)

ID = "mx.example.net"
RESULTS = {"none", "pass", "fail", "policy", "neutral", "permerror"}
PROPERTIES = {"body.smime-identifier", "body.smime-part", "body.smime-serial",
              "body.smime-issuer"}
PROPERTY_TEST = settings(max_examples=300, deadline=None, database=None, derandomize=True)


# --- a strict reader for what we write -----------------------------------------------


@dataclass
class Resinfo:
    method: str
    result: str
    comments: list[str] = field(default_factory=list)
    #: property name -> (value, was quoted); quoted values percent-decoded.
    props: dict[str, tuple[str, bool]] = field(default_factory=dict)


_SPECIALS = ';=()"'


def _lex(text: str) -> list[tuple[str, str]]:
    """(kind, text) with kind in comment, quoted, word, ';', '='."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in " \t":
            pos += 1
        elif char == "(":
            depth, start = 0, pos
            while True:
                if pos == len(text):
                    raise ValueError("unterminated comment")
                c = text[pos]
                if c == "\\":
                    pos += 1
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                elif not " " <= c <= "~":
                    raise ValueError(f"bad ctext {c!r}")
                pos += 1
            out.append(("comment", text[start + 1 : pos]))
            pos += 1
        elif char == '"':
            pos += 1
            content: list[str] = []
            while True:
                if pos == len(text):
                    raise ValueError("unterminated quoted-string")
                c = text[pos]
                if c == '"':
                    break
                if c == "\\":
                    pos += 1
                    c = text[pos : pos + 1]
                if not " " <= c <= "~":
                    raise ValueError(f"bad qtext {c!r}")
                content.append(c)
                pos += 1
            out.append(("quoted", "".join(content)))
            pos += 1
        elif char in ";=":
            out.append((char, char))
            pos += 1
        elif char == ")":
            raise ValueError("unbalanced ')'")
        else:
            start = pos
            while pos < len(text) and text[pos] not in _SPECIALS + " \t":
                if not "!" <= text[pos] <= "~":
                    raise ValueError(f"bad character {text[pos]!r}")
                pos += 1
            out.append(("word", text[start:pos]))
    return out


def parse_ar(value: str) -> tuple[str, list[Resinfo]]:
    """authserv-id and resinfos of an A-R value; ValueError on any deviation."""
    assert "\r" not in value and all(line.startswith("\t") for line in value.split("\n")[1:])
    items = _lex(unfold(value))
    while items and items[0][0] == "comment":
        items.pop(0)
    if not items or items[0][0] not in ("word", "quoted"):
        raise ValueError("no authserv-id")
    authserv_id = items.pop(0)[1]
    if items and items[0][0] == "word" and items[0][1].isdigit():
        items.pop(0)  # authres-version
    results: list[Resinfo] = []
    while items:
        kind, text = items.pop(0)
        if kind != ";":
            raise ValueError(f"expected ';', got {kind}")
        if len(items) < 3 or items[0][0] != "word" or items[1][0] != "=" or items[2][0] != "word":
            raise ValueError("bad methodspec")
        resinfo = Resinfo(items[0][1], items[2][1])
        del items[:3]
        while items and items[0][0] != ";":
            kind, text = items.pop(0)
            if kind == "comment":
                resinfo.comments.append(text)
                continue
            if kind != "word" or not items or items.pop(0)[0] != "=" or not items:
                raise ValueError(f"bad propspec at {text!r}")
            value_kind, value_text = items.pop(0)
            if (value_kind not in ("word", "quoted") or text in resinfo.props
                    or text not in PROPERTIES):
                raise ValueError(f"bad or repeated property {text!r}")
            if value_kind == "quoted":
                value_text = unquote(value_text, errors="surrogatepass")
            resinfo.props[text] = (value_text, value_kind == "quoted")
        results.append(resinfo)
    return authserv_id, results


# --- building verdicts ------------------------------------------------------------


def signer(**changes: object) -> SignerResult:
    base = SignerResult(
        emails=("alice@example.com",),
        subject="Common Name: Alice",
        issuer="Common Name: Example Issuing CA, Country: DE",
        serial=0x0A1B2C,
        digest_algorithm="sha256",
        signature_algorithm="rsassa_pkcs1v15",
        signature_ok=True,
        chain_ok=True,
        from_match=True,
        errors=(),
        certificate=b"0\x82",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def verdict(*signers: SignerResult, status: Status | None = Status.SIGNED_VERIFIED,
            **changes: object) -> Verdict:
    base = Verdict(
        status=status,
        errors=None if status is None or status.is_verified else ("signature not verified",),
        verified_at=None,
        signers=signers,
        layer="multipart/signed",
        signed_part="1",
        from_address="alice@example.com",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


GOOD = signer()
FAILED = Status.SIGNED_FAILED


def only(value: str) -> Resinfo:
    authserv_id, results = parse_ar(value)
    assert authserv_id == ID
    assert len(results) == 1
    return results[0]


# --- result codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "status", "expected"),
    [
        (GOOD, Status.SIGNED_VERIFIED, "pass"),
        (GOOD, Status.ENCRYPTED_SIGNED_VERIFIED, "pass"),
        (signer(signature_ok=False, errors=("message digest mismatch",)), FAILED, "fail"),
        (signer(signature_ok=False, certificate=None, serial=None, issuer="", emails=(),
                errors=("signer certificate not included in the message",)), FAILED,
         "permerror"),
        (signer(chain_ok=False, errors=("untrusted root",)), FAILED, "fail"),
        (signer(chain_ok=False, errors=("signer certificate chain revoked",)), FAILED, "fail"),
        (signer(chain_ok=False, errors=("certificate expired",)), FAILED, "fail"),
        (signer(from_match=False, errors=("From address does not match",)), FAILED, "policy"),
        (signer(errors=("something nobody classified",)), FAILED, "neutral"),
        # a sound signature in a failed verdict (partial coverage): never pass
        (GOOD, FAILED, "policy"),
        (GOOD, Status.ENCRYPTED_SIGNED_FAILED, "policy"),
        (GOOD, Status.UNKNOWN, "neutral"),
        (GOOD, Status.SIGNED, "neutral"),
        (GOOD, None, "none"),
    ],
)
def test_smime_result(one: SignerResult, status: Status | None, expected: str) -> None:
    assert smime_result(one, verdict(one, status=status)) == expected


def test_pass_exact_value() -> None:
    assert authentication_results(ID, verdict(GOOD)) == (
        "mx.example.net;\n"
        "\tsmime=pass body.smime-identifier=alice@example.com body.smime-part=1\n"
        "\tbody.smime-serial=0A1B2C\n"
        '\tbody.smime-issuer="Common Name: Example Issuing CA, Country: DE"'
    )


def test_unsigned_is_none() -> None:
    assert authentication_results(ID, Verdict(None, None, None)) == "mx.example.net; smime=none"
    assert only(authentication_results(ID, Verdict(None, None, None))).result == "none"


def test_unknown_is_neutral_with_reason() -> None:
    value = authentication_results(ID, Verdict(
        Status.UNKNOWN, None, None, layer="enveloped-data",
        notes=("encrypted; no decryption key configured",)))
    result = only(value)
    assert (result.result, result.comments) == (
        "neutral", ["encrypted, no decryption key configured"])
    certs_only = only(authentication_results(ID, Verdict(
        Status.UNKNOWN, None, None, layer="certs-only")))
    assert certs_only.comments == ["S/MIME layer certs-only not verifiable"]


def test_failed_without_signers_is_permerror() -> None:
    value = authentication_results(ID, Verdict(
        FAILED, ("signed-data carries no signature",), None, signed_part="2.1"))
    result = only(value)
    assert result.result == "permerror"
    assert result.comments == ["signed-data carries no signature"]
    assert result.props == {"body.smime-part": ("2.1", False)}


def test_verified_without_signers_is_not_pass() -> None:
    assert only(authentication_results(ID, Verdict(Status.SIGNED_VERIFIED, None, None))
                ).result == "neutral"


def test_each_signer_gets_a_resinfo() -> None:
    bob = signer(emails=("bob@example.org",), serial=7, chain_ok=False,
                 errors=("untrusted root: no path to a configured trust anchor",))
    _, results = parse_ar(authentication_results(ID, verdict(GOOD, bob)))
    assert [(r.result, r.props["body.smime-identifier"][0]) for r in results] == [
        ("pass", "alice@example.com"), ("fail", "bob@example.org")]
    assert results[0].comments == []
    assert results[1].comments == ["untrusted root: no path to a configured trust anchor"]
    assert results[1].props["body.smime-serial"] == ("07", False)


def test_partial_signature_blames_the_verdict() -> None:
    partial = verdict(GOOD, status=FAILED, signed_part="2.1", errors=(
        "signature covers only MIME part 2; part(s) 1 not signed",))
    result = only(authentication_results(ID, partial))
    assert result.result == "policy"
    assert result.comments == ["signature covers only MIME part 2, part[s] 1 not signed"]


def test_signers_are_capped() -> None:
    many = verdict(*[signer(serial=n) for n in range(MAX_RESULTS + 5)])
    value = authentication_results(ID, many)
    _, results = parse_ar(value)
    assert len(results) == MAX_RESULTS
    assert results[-1].comments == ["5 more signers not shown"]


# --- properties --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "expected"),
    [(0, "00"), (1, "01"), (255, "FF"), (256, "0100"), (0x0A1B2C, "0A1B2C"),
     (2**159 + 1, format(2**159 + 1, "X")), (-5, "-05")],
)
def test_serial_is_even_length_hex(serial: int, expected: str) -> None:
    props = only(authentication_results(ID, verdict(signer(serial=serial)))).props
    assert props["body.smime-serial"] == (expected, False)


@pytest.mark.parametrize(
    "changes",
    [{"serial": None}, {"issuer": ""}, {"serial": 2**600},
     {"issuer": "CN=" + "x" * 700}, {"serial": None, "issuer": ""}],
)
def test_serial_and_issuer_come_as_a_pair(changes: dict[str, object]) -> None:
    props = only(authentication_results(ID, verdict(signer(**changes)))).props
    assert "body.smime-serial" not in props
    assert "body.smime-issuer" not in props


def test_issuer_is_quoted_and_escaped() -> None:
    issuer = 'CN=Evil "CA"; smime=pass (x) \\ 100% M\u00fcller\r\nX-Injected: 1'
    value = authentication_results(ID, verdict(signer(issuer=issuer)))
    assert value.isascii()
    assert '"CN=Evil \\"CA\\"; smime=pass (x) \\\\ 100%25 M%C3%BCller%0D%0AX-Injected: 1"' in value
    assert only(value).props["body.smime-issuer"] == (issuer, True)


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("alice@example.com", ("alice@example.com", False)),
        ("Alice.Smith+tag@Example.COM", ("Alice.Smith+tag@example.com", False)),
        ("alice@b\u00fccher.example", ("alice@xn--bcher-kva.example", False)),
        ('"john doe"@example.com', ("john doe@example.com", True)),
        ("j\u00f6rg@example.com", ("j\u00f6rg@example.com", True)),
        ("evil@x; smime=pass", ("evil@x; smime=pass", True)),
        ('a"b@example.com', ('a"b@example.com', True)),
        ("a=b@example.com", ("a=b@example.com", True)),
        ("not an address", ("not an address", True)),
    ],
)
def test_identifier(email: str, expected: tuple[str, bool]) -> None:
    value = authentication_results(ID, verdict(signer(emails=(email,)), from_address=None))
    assert value.isascii()
    assert only(value).props["body.smime-identifier"] == expected


def test_identifier_prefers_the_address_bound_to_from() -> None:
    two = signer(emails=("other@example.org", "ALICE@example.com"))
    props = only(authentication_results(ID, verdict(two))).props
    assert props["body.smime-identifier"] == ("ALICE@example.com", False)
    unbound = verdict(two, from_address="carol@example.net")
    assert only(authentication_results(ID, unbound)).props["body.smime-identifier"] == (
        "other@example.org", False)


@pytest.mark.parametrize("email", ["", "   ", "x" * 300 + "@example.com"])
def test_unusable_identifier_is_left_out(email: str) -> None:
    props = only(authentication_results(ID, verdict(signer(emails=(email,))))).props
    assert "body.smime-identifier" not in props


@pytest.mark.parametrize("part", ["", "0", "1.0", "a", "1 ; smime=pass", "1..2", None])
def test_bad_part_numbers_are_left_out(part: str | None) -> None:
    props = only(authentication_results(ID, verdict(GOOD, signed_part=part))).props
    assert "body.smime-part" not in props


def test_reason_comment_is_sanitised_and_bounded() -> None:
    nasty = signer(signature_ok=False, errors=("a)(b\\c\r\nd;e \"q\" \u00e9\x00",))
    result = only(authentication_results(ID, verdict(nasty, status=FAILED)))
    assert result.comments == ["a][b/c d,e 'q' ?"]
    long = signer(signature_ok=False, errors=tuple("x" * 500 for _ in range(10_000)))
    value = authentication_results(ID, verdict(long, status=FAILED))
    comment = only(value).comments[0]
    assert len(comment) <= MAX_COMMENT and comment.endswith("...")
    assert len(value) < 2000


def test_empty_errors_get_a_default_reason() -> None:
    bare = signer(signature_ok=False, errors=())
    assert only(authentication_results(ID, verdict(bare, status=FAILED, errors=None))
                ).comments == ["signature not verified"]


def test_folding_keeps_lines_short() -> None:
    three = verdict(GOOD, signer(emails=("bob@example.org",), from_match=False,
                                 errors=("From address does not match the certificate",)),
                    signer(serial=None))
    value = authentication_results(ID, three)
    lines = value.split("\n")
    assert len(AR_HEADER) + 2 + len(lines[0]) <= 78
    assert all(len(line) <= 78 for line in lines[1:])
    assert all(line.startswith("\t") for line in lines[1:])
    assert [r.result for r in parse_ar(value)[1]] == ["pass", "policy", "pass"]


def test_odd_authserv_ids_are_quoted() -> None:
    for authserv_id in ("a b", 'x"; smime=pass', "\u00e9xample", "", "x\r\ny"):
        value = authentication_results(authserv_id, verdict(GOOD))
        assert value.isascii()
        assert len(parse_ar(value)[1]) == 1
        assert claims_authserv_id(value, authserv_id)


def test_unfold() -> None:
    assert unfold("a;\n\tb\r\n c\nd") == "a;\tb c\nd"


# --- hypothesis: nothing breaks the syntax ---------------------------------------------

NASTY = [*';"()\\\r\n\t =%@.<>,:[]/?', "\x00", "\x7f", "\u00e9", "\u2028", "\udcff", "\ud800",
         "\ufeff", "\U0001f600"]
text = st.text(alphabet=st.one_of(st.sampled_from(NASTY), st.characters()), max_size=40)
emails = st.one_of(
    text,
    st.builds(lambda local, domain: f"{local}@{domain}", text, text),
    st.emails(),
)
signers_ = st.builds(
    SignerResult,
    emails=st.lists(emails, max_size=3).map(tuple),
    subject=text,
    issuer=text,
    serial=st.one_of(st.none(), st.integers(), st.integers(min_value=-(2**700),
                                                              max_value=2**700)),
    digest_algorithm=st.just("sha256"),
    signature_algorithm=st.just("rsa"),
    signature_ok=st.booleans(),
    chain_ok=st.booleans(),
    from_match=st.booleans(),
    errors=st.lists(text, max_size=4).map(tuple),
    certificate=st.sampled_from([None, b"0"]),
)
verdicts = st.builds(
    Verdict,
    status=st.sampled_from([None, *Status]),
    errors=st.one_of(st.none(), st.lists(text, max_size=4).map(tuple)),
    verified_at=st.none(),
    signers=st.lists(signers_, max_size=MAX_RESULTS + 2).map(tuple),
    layer=st.one_of(st.none(), text),
    signed_part=st.one_of(st.none(), text, st.sampled_from(["1", "2.1", "1.2.3"])),
    from_address=st.one_of(st.none(), emails),
    notes=st.lists(text, max_size=3).map(tuple),
)


def expected_resinfos(v: Verdict) -> int:
    if v.status in (None, Status.UNKNOWN, Status.SIGNED) or not v.signers:
        return 1
    return min(len(v.signers), MAX_RESULTS)


@PROPERTY_TEST
@given(v=verdicts, authserv_id=st.one_of(st.just(ID), text))
def test_any_verdict_gives_a_well_formed_value(v: Verdict, authserv_id: str) -> None:
    value = authentication_results(authserv_id, v)
    assert value.isascii()
    assert "\r" not in value
    assert value.count("\n") == value.count("\n\t")
    assert all(len(line) < 998 for line in value.split("\n"))
    _, results = parse_ar(value)
    assert len(results) == expected_resinfos(v)
    assert claims_authserv_id(value, authserv_id)
    for index, result in enumerate(results):
        assert result.method == "smime"
        assert result.result in RESULTS
        assert ("body.smime-serial" in result.props) == ("body.smime-issuer" in result.props)
        assert all(len(c) <= MAX_COMMENT for c in result.comments)
        if result.result not in ("pass", "none"):
            assert result.comments, "every non-pass result says why"
        if v.status in (None, Status.UNKNOWN, Status.SIGNED) or not v.signers:
            continue
        one = v.signers[index]
        assert result.result == smime_result(one, v)
        if "body.smime-issuer" in result.props:
            assert result.props["body.smime-issuer"] == (one.issuer, True)
            assert int(result.props["body.smime-serial"][0], 16) == one.serial
        if "body.smime-identifier" in result.props:
            shown = result.props["body.smime-identifier"][0]
            assert any(shown == email.strip() or shown == _normalised(email)
                       for email in one.emails)


def _normalised(email: str) -> str | None:
    address = parse_address(email)
    return address.text if address is not None else None


@PROPERTY_TEST
@given(one=signers_, v=st.builds(Verdict, status=st.sampled_from([None, *Status]),
                                 errors=st.none(), verified_at=st.none()))
def test_smime_result_is_total(one: SignerResult, v: Verdict) -> None:
    result = smime_result(one, v)
    assert result in RESULTS
    if result == "pass":
        assert one.ok and v.status is not None and v.status.is_verified


# --- SMIME-Status-At-Delivery ----------------------------------------------------------


def test_status_header_name() -> None:
    assert STATUS_HEADER == "SMIME-Status-At-Delivery"


@pytest.mark.parametrize("status", [None, *Status])
def test_status_header_round_trip(status: Status | None) -> None:
    value = status_header(status, "01J0ABCDEF")
    assert value == f"{status.value if status else 'none'}; record=01J0ABCDEF"
    assert parse_status_header(value) == (status, "01J0ABCDEF")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  signed/verified ;\n\trecord = abc (stored) ", (Status.SIGNED_VERIFIED, "abc")),
        ("SIGNED/FAILED; record=\"a b\"", (Status.SIGNED_FAILED, "a b")),
        ("(comment) none", (None, None)),
        ("unknown; future=1; record=r1;", (Status.UNKNOWN, "r1")),
        ("encrypted+signed/verified;\r\n record=x", (Status.ENCRYPTED_SIGNED_VERIFIED, "x")),
    ],
)
def test_status_header_is_parsed_tolerantly(value: str,
                                            expected: tuple[Status | None, str | None]) -> None:
    assert parse_status_header(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", "bogus; record=x", "signed/verified record=x", "signed/verified; record",
     "signed/verified; record=a; record=b", 'signed/verified; record="open',
     "signed/verified (open", "signed/verified; =x", "signed/verified; record=a/b",
     "; record=x", "signed/verified;; record=x"],
)
def test_status_header_garbage_raises(value: str) -> None:
    with pytest.raises(ValueError):
        parse_status_header(value)


@PROPERTY_TEST
@given(status=st.sampled_from([None, *Status]), record=text)
def test_status_header_round_trips_any_record(status: Status | None, record: str) -> None:
    value = status_header(status, record)
    assert value.isascii() and "\n" not in value and "\r" not in value
    assert parse_status_header(value) == (status, record)


# --- authserv-id of foreign headers ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8601 appendix B shapes
        ("example.org; none", "example.org"),
        ("example.com; spf=pass smtp.mailfrom=example.net", "example.com"),
        ("example.com; auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
         " spf=pass smtp.mailfrom=example.net", "example.com"),
        ("example.com; iprev=pass\r\n policy.iprev=192.0.2.200", "example.com"),
        ("example.com;\r\n dkim=pass (good signature) header.d=mail-router.example.net;\r\n"
         " dkim=fail (bad signature) header.d=newyork.example.com", "example.com"),
        ("mail-router.example.net; dkim=pass (good signature) header.b=dee7ba3c",
         "mail-router.example.net"),
        ("example.com 1; spf=pass", "example.com"),
        # CFWS and quoting
        ("(comment) example.com; none", "example.com"),
        ("(nested (comment) \\) here) example.com;", "example.com"),
        ('"quoted.example"; dkim=pass', "quoted.example"),
        ('"quo\\"ted"; x', 'quo"ted'),
        ("\r\n\texample.com;", "example.com"),
        ("\r\nexample.com; none", "example.com"),  # a stray bare line break is whitespace
        ("  Example.COM(comment); spf=pass", "Example.COM"),
        ("example.com", "example.com"),
        (b"example.com; dkim=pass", "example.com"),
        (b"example.com; dkim=pass (\xff\xfe)", "example.com"),
        # garbage
        ("", None),
        ("   ", None),
        ("(unterminated example.com", None),
        ('"unterminated', None),
        (";", None),
        ("; spf=pass", None),
        ("exa@mple.com; x", None),
        ("spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=none", None),
        (b"\xff\xfe; x", None),
        ("\x00example.com; x", None),
    ],
)
def test_authserv_id_of(value: str | bytes, expected: str | None) -> None:
    assert authserv_id_of(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "example.com; smime=pass",
        "EXAMPLE.com; smime=pass",
        '"example.com"; smime=pass',
        "(fake) example.com 1; smime=pass",
        "\n\t example.com;\n\tsmime=pass",
        b"example.com; smime=pass \xff",
        # unparseable, but plainly ours: delete rather than let it through
        '"example.com; smime=pass',
        "example.com/x; smime=pass",
        'example.com"; smime=pass',
        "\x00example.com; smime=pass",
        "(c) \"example.com",
    ],
)
def test_claims_our_id(value: str | bytes) -> None:
    assert claims_authserv_id(value, "example.com")


@pytest.mark.parametrize(
    "value",
    [
        "example.com.evil.org; smime=pass",
        "example.community; smime=pass",
        "evil.example; smime=pass (example.com)",
        "(example.com; smime=pass",
        "",
        "   ",
        "xexample.com; smime=pass",
        b"\xffexample.com; smime=pass",
        "spf=pass smtp.mailfrom=example.com",
    ],
)
def test_does_not_claim_other_ids(value: str | bytes) -> None:
    assert not claims_authserv_id(value, "example.com")


def test_empty_id_claims_nothing_unparseable() -> None:
    assert not claims_authserv_id('"open', "")


_CASES = st.sampled_from(["example.com", "EXAMPLE.COM", "Example.Com"])
_CFWS = st.lists(
    st.one_of(
        st.sampled_from([" ", "\t", "\r\n ", "\n\t"]),
        text.map(lambda t: "(" + re.sub(r"([()\\])", r"\\\1", t) + ")"),
    ),
    max_size=4,
).map("".join)


@PROPERTY_TEST
@given(prefix=_CFWS, claimed=_CASES, quoted=st.booleans(), tail=text)
def test_forgeries_of_our_id_are_always_recognised(prefix: str, claimed: str, quoted: bool,
                                                   tail: str) -> None:
    head = f'"{claimed}"' if quoted else claimed
    assert claims_authserv_id(prefix + head + "; " + tail, "example.com")
    assert claims_authserv_id((prefix + head + ";" + tail).encode("utf-8", "surrogatepass"),
                              "example.com")


@PROPERTY_TEST
@given(value=st.one_of(text, st.binary(max_size=40)))
def test_authserv_id_of_is_total(value: str | bytes) -> None:
    found = authserv_id_of(value)
    assert found is None or isinstance(found, str)
    claims_authserv_id(value, "example.com")


def test_issuer_is_written_as_rfc4514_from_the_certificate(pki) -> None:  # type: ignore[no-untyped-def]
    from tests.support.smime import multipart_signed, text_entity
    from tests.support.verdicts import NOW, make_verifier

    verdict = make_verifier(pki).verify(multipart_signed(text_entity("hi\n"), pki.rsa), at=NOW)
    value = " ".join(authentication_results("mx.example.org", verdict).split())
    assert 'body.smime-issuer="CN=Test Intermediate CA,O=smime-milter tests"' in value
    digits = f"{pki.rsa.cert.serial_number:X}"
    assert f"body.smime-serial={digits.zfill(len(digits) + len(digits) % 2)} " in value

"""The milter protocol as an MTA sees it, driven by OpenDKIM's miltertest(8).

Every test runs the real ``smime-milter run`` daemon on a unix socket and a
generated Lua script (tests/support/miltertest.py) that plays the MTA: macros,
envelope, header fields, body, end of message; the script reports what the
filter requested. No Postfix is involved, so this is also what a Sendmail
site can expect on the wire:

* at end of message the filter **inserts** (SMFIR_INSHEADER)
  ``Authentication-Results`` at index 0 and ``SMIME-Status-At-Delivery`` at
  index 1, i.e. at the very top of the header;
* forged copies of those fields are **deleted** with SMFIR_CHGHEADER to an
  empty value, by 1-based index among fields of that name (names compared
  case-insensitively, sent as they appeared in the message);
* ``Subject`` is changed in place for the ``tag`` action; ``quarantine`` is
  SMFIR_QUARANTINE plus the usual stamps and a CONTINUE reply; ``reject`` is
  SMFIR_REPLYCODE "550 5.7.1 ..." without any header edits;
* the authserv-id is ``milter.authserv_id``, else the ``j`` macro from the
  connect stage (Sendmail and Postfix both send it by default), else the
  host name;
* one connection may carry several transactions (MAIL after end of message
  or after SMFIC_ABORT); each is judged and stamped on its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from smime_milter.bootstrap import build_verifier
from smime_milter.config.reader import load_config
from smime_milter.model import Status
from smime_milter.mta.app import hostname
from smime_milter.mta.handling import reply_text
from smime_milter.stamp.fields import authserv_id_of, parse_status_header, unfold
from tests.support.daemon import MilterProcess
from tests.support.miltertest import (
    CONTINUE,
    MILTERTEST,
    MILTERTEST_MISSING,
    REPLYCODE,
    EomResult,
    Message,
    header_changed_to,
    message,
    quarantined_with,
    run_session,
    smtp_reply_is,
)
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity, wrap_message

pytestmark = [pytest.mark.miltertest, pytest.mark.daemon,
              pytest.mark.skipif(MILTERTEST is None, reason=MILTERTEST_MISSING)]

AUTHSERV_ID = "mx.test.example"
AR = "Authentication-Results"
STATUS = "SMIME-Status-At-Delivery"
MAX_MESSAGE_SIZE = 64 << 10


class Daemon(MilterProcess):
    """MilterProcess with keys of its own in [milter], and optionally no authserv_id."""

    def __init__(self, directory: Path, anchors: Path, *, authserv_id: str | None,
                 milter_toml: str = "", extra_toml: str = "") -> None:
        self.milter_toml = milter_toml
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, anchors, authserv_id=authserv_id or "",
                         extra_toml=extra_toml)

    def write_config(self, extra_toml: str | None = None) -> None:
        super().write_config(extra_toml)
        lines = self.config.read_text().splitlines(keepends=True)
        if not self.authserv_id:
            lines = [line for line in lines if not line.startswith("authserv_id")]
        at = lines.index("[milter]\n") + 1
        lines[at:at] = [self.milter_toml]
        self.config.write_text("".join(lines))


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory, anchors: Path) -> Iterator[Daemon]:
    """authserv_id set; messages above 64 KiB are not examined."""
    daemon = Daemon(tmp_path_factory.mktemp("mt"), anchors, authserv_id=AUTHSERV_ID,
                    milter_toml=f"max_message_size = {MAX_MESSAGE_SIZE}\n")
    with daemon:
        yield daemon


@pytest.fixture(scope="module")
def j_milter(tmp_path_factory: pytest.TempPathFactory, anchors: Path) -> Iterator[Daemon]:
    """No authserv_id in the configuration: the MTA's ``j`` macro names us."""
    daemon = Daemon(tmp_path_factory.mktemp("mtj"), anchors, authserv_id=None)
    assert "authserv_id" not in daemon.config.read_text()
    with daemon:
        yield daemon


POLICY = """
[policy]
failed = "quarantine"
none = "tag"
[policy.domains."reject.example"]
failed = "reject"
none = "reject"
"""


@pytest.fixture(scope="module")
def policy_milter(tmp_path_factory: pytest.TempPathFactory, anchors: Path) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("mtp"), anchors, authserv_id=AUTHSERV_ID,
                    extra_toml=POLICY)
    with daemon:
        yield daemon


_counter = iter(range(10**6))


def signed(pki: TestPki, body: str = "Hello Bob\n",
           extra_headers: tuple[tuple[str, str], ...] = (), subject: str = "signed") -> bytes:
    return multipart_signed(text_entity(body), pki.rsa, to="bob@example.org",
                            subject=f"{subject} {next(_counter)}", extra_headers=extra_headers)


def tampered(data: bytes) -> bytes:
    return data.replace(b"Hello Bob", b"Hello Eve", 1)


def unsigned(subject: str = "plain") -> bytes:
    return wrap_message(text_entity("just text\n"), to="bob@example.org",
                        subject=f"{subject} {next(_counter)}")


def session(daemon: MilterProcess, tmp_path: Path, *messages: Message,
            macros: dict[str, str] | None = None) -> list[EomResult]:
    """One connection with the ``j`` macro of a Postfix called mta.example.net."""
    return run_session(daemon.postfix_socket, messages, tmp_path / f"s{next(_counter)}",
                       connect_macros={"j": "mta.example.net"} if macros is None else macros,
                       probe_names=(AR, STATUS, "Subject"))


def ar_value(result: EomResult) -> str:
    return " ".join(unfold(result.value(AR)).split())


def record_id_of(result: EomResult) -> str:
    _, record_id = parse_status_header(result.value(STATUS))
    assert record_id is not None
    return record_id


def first_error(daemon: MilterProcess, data: bytes) -> str:
    """The engine's first error for ``data`` under the daemon's configuration."""
    verifier = build_verifier(load_config(daemon.config))
    verdict = verifier.verify(data)
    assert verdict.errors, verdict
    return verdict.errors[0]


# -- stamps -------------------------------------------------------------------------


def test_signed_message_gets_both_stamps_at_the_top(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    [result] = session(milter, tmp_path, message(signed(live_pki), "alice@example.com",
                                                 ["bob@example.org"], queue_id="MTQ0001"))
    assert result.reply == CONTINUE
    assert result.index(AR) == 0 and result.index(STATUS) == 1
    value = ar_value(result)
    assert value.startswith(f"{AUTHSERV_ID}; smime=pass"), value
    assert "body.smime-identifier=alice@example.com" in value
    status, record_id = parse_status_header(result.value(STATUS))
    assert status is Status.SIGNED_VERIFIED
    assert not result.any_change and not result.any_add and not result.quarantined
    assert result.added == {} and set(result.inserted) == {AR, STATUS}
    # libmilter's rule for multi-line values: LF plus whitespace, never CR.
    for name in (AR, STATUS):
        assert "\r" not in result.value(name)
        assert all(line[:1] in (" ", "\t") for line in result.value(name).split("\n")[1:])
    with milter.open_store() as store:
        record = store.get(record_id)
    assert record is not None
    assert record.status_at_delivery is Status.SIGNED_VERIFIED
    assert record.queue_id == "MTQ0001"
    assert record.envelope_sender == "alice@example.com"
    assert record.envelope_recipients == ("bob@example.org",)


def test_unsigned_message_gets_none(milter: Daemon, tmp_path: Path) -> None:
    [result] = session(milter, tmp_path, message(unsigned(), "carol@example.net",
                                                 ["bob@example.org"]))
    assert result.reply == CONTINUE
    assert ar_value(result) == f"{AUTHSERV_ID}; smime=none"
    assert parse_status_header(result.value(STATUS))[0] is None
    assert not result.any_change


# -- forged stamps --------------------------------------------------------------------


def test_forged_stamps_are_deleted_by_index(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    forged = (
        (AR, "other.example; dkim=pass header.d=example.com"),  # AR #1: foreign, kept
        (AR, f"{AUTHSERV_ID}; smime=pass body.smime-identifier=mallory@example.com"),  # AR #2
        (AR, f"(looks harmless)\r\n\t{AUTHSERV_ID.upper()} 1; smime=pass"),  # AR #3: ours too
        (STATUS, "signed/verified; record=rforgedforgedforgedforged0"),  # STATUS #1
        (AR, f"{AUTHSERV_ID}.attacker.example; smime=pass"),  # AR #4: another host, kept
    )
    [result] = session(milter, tmp_path, message(signed(live_pki, extra_headers=forged),
                                                 "alice@example.com", ["bob@example.org"]))
    assert result.reply == CONTINUE
    assert result.deleted == {(AR, 2), (AR, 3), (STATUS, 1)}
    assert result.changed == {AR, STATUS}  # nothing else, not even Subject
    # The new stamps are still inserted on top, and the message itself verifies.
    assert result.index(AR) == 0 and result.index(STATUS) == 1
    assert ar_value(result).startswith(f"{AUTHSERV_ID}; smime=pass")
    assert parse_status_header(result.value(STATUS))[0] is Status.SIGNED_VERIFIED


def test_forged_status_fields_in_any_case_are_all_deleted(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    """Indexes count fields of one name case-insensitively; the name goes back as sent."""
    forged = ((STATUS, "signed/verified"), ("smime-status-at-delivery", "signed/verified"),
              ("SMIME-STATUS-AT-DELIVERY", "encrypted+signed/verified"))
    [result] = session(milter, tmp_path, message(tampered(signed(live_pki, extra_headers=forged)),
                                                 "alice@example.com", ["bob@example.org"]))
    assert result.deleted == {(STATUS, 1), ("smime-status-at-delivery", 2),
                              ("SMIME-STATUS-AT-DELIVERY", 3)}
    assert parse_status_header(result.value(STATUS))[0] is Status.SIGNED_FAILED
    assert ar_value(result).startswith(f"{AUTHSERV_ID}; smime=fail")


# -- authserv-id -------------------------------------------------------------------


def test_j_macro_is_the_authserv_id_when_none_is_configured(
    j_milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    forged = ((AR, f"{AUTHSERV_ID}; smime=pass"),  # not ours in this configuration: kept
              (AR, "MTA.example.net; smime=pass"))  # ours (the j macro): deleted
    [result] = session(j_milter, tmp_path, message(signed(live_pki, extra_headers=forged),
                                                   "alice@example.com", ["bob@example.org"]),
                       macros={"j": "mta.example.net"})
    assert authserv_id_of(result.value(AR)) == "mta.example.net"
    assert ar_value(result).startswith("mta.example.net; smime=pass")
    assert result.deleted == {(AR, 2)}


def test_each_connection_has_its_own_j_macro(j_milter: Daemon, tmp_path: Path) -> None:
    first = session(j_milter, tmp_path, message(unsigned(), "a@example.com", ["b@example.org"]),
                    macros={"j": "one.example"})
    second = session(j_milter, tmp_path, message(unsigned(), "a@example.com", ["b@example.org"]),
                     macros={"j": "two.example"})
    assert authserv_id_of(first[0].value(AR)) == "one.example"
    assert authserv_id_of(second[0].value(AR)) == "two.example"


def test_without_j_macro_the_host_name_is_the_authserv_id(
    j_milter: Daemon, tmp_path: Path
) -> None:
    [result] = session(j_milter, tmp_path, message(unsigned(), "a@example.com",
                                                   ["b@example.org"]), macros={})
    assert authserv_id_of(result.value(AR)) == hostname()


# -- policy ---------------------------------------------------------------------------


def test_reject_policy_gives_a_550_reply_and_no_edits(
    policy_milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    bad = tampered(signed(live_pki))
    expected = reply_text(f"S/MIME status signed/failed: {first_error(policy_milter, bad)}")
    none_reply = smtp_reply_is("550", "5.7.1", "S/MIME status none")
    failed_reply = smtp_reply_is("550", "5.7.1", expected)
    results = session(
        policy_milter, tmp_path,
        message(unsigned(), "a@example.com", ["x@reject.example"], checks={"reply": none_reply}),
        message(bad, "a@example.com", ["x@reject.example"], checks={"reply": failed_reply}),
        # The strictest recipient wins: one message, one reply.
        message(unsigned(), "a@example.com", ["bob@example.org", "x@sub.reject.example"],
                checks={"reply": none_reply}),
    )
    for result in results:
        assert result.reply == REPLYCODE
        assert result.checks == {"reply": True}
        assert not (result.any_insert or result.any_change or result.any_add)
        assert not result.quarantined
    assert policy_milter.log_text().count("action=reject") >= 3


def test_quarantine_policy_holds_the_message_with_its_stamps(
    policy_milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    bad = tampered(signed(live_pki))
    reason = reply_text(f"S/MIME status signed/failed: {first_error(policy_milter, bad)}")
    [result] = session(policy_milter, tmp_path,
                       message(bad, "a@example.com", ["bob@example.org"],
                               checks={"reason": quarantined_with(reason)}))
    assert result.reply == CONTINUE
    assert result.quarantined and result.checks == {"reason": True}
    assert ar_value(result).startswith(f"{AUTHSERV_ID}; smime=fail")
    assert parse_status_header(result.value(STATUS))[0] is Status.SIGNED_FAILED


def test_tag_policy_changes_the_subject_in_place(
    policy_milter: Daemon, tmp_path: Path
) -> None:
    data = unsigned("tag me")
    subject = re.search(rb"^Subject: (.*)\r$", data, re.M)
    assert subject is not None
    tagged = "[S/MIME none] " + subject.group(1).decode()
    [result] = session(policy_milter, tmp_path,
                       message(data, "a@example.com", ["bob@example.org"],
                               checks={"subject": header_changed_to("Subject", tagged)}))
    assert result.reply == CONTINUE and result.checks == {"subject": True}
    assert result.changed == {"Subject"} and result.deleted == set()
    assert ar_value(result) == f"{AUTHSERV_ID}; smime=none"


def test_tag_policy_adds_a_subject_when_there_is_none(
    policy_milter: Daemon, tmp_path: Path
) -> None:
    plain = message(unsigned(), "a@example.com", ["bob@example.org"])
    headers = tuple((name, value) for name, value in plain.headers if name != "Subject")
    [result] = session(policy_milter, tmp_path, replace(plain, headers=headers))
    assert result.added == {"Subject": ["[S/MIME none]"]}
    assert not result.any_change


def test_reject_reply_survives_a_percent_sign(
    policy_milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    """libmilter formats reply text with printf; a '%' from the From address must
    not turn a reject into a tempfail."""
    data = multipart_signed(text_entity("Hello Bob\n"), live_pki.rsa,
                            from_addr="mallory%relay@example.com", to="x@reject.example",
                            subject=f"percent {next(_counter)}")
    failure = smtp_reply_is("451", "4.3.0", "pymilter: untrapped exception in smime-milter")
    [result] = session(policy_milter, tmp_path,
                       message(data, "a@example.com", ["x@reject.example"],
                               checks={"pymilter failure": failure}))
    assert result.reply == REPLYCODE
    assert result.checks == {"pymilter failure": False}
    assert "must be doubled" not in policy_milter.log_text()


# -- several transactions on one connection ------------------------------------------


def test_several_messages_on_one_connection_each_get_their_own_stamps(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    forged = ((AR, f"{AUTHSERV_ID}; smime=pass"),)
    results = session(
        milter, tmp_path,
        message(signed(live_pki, extra_headers=forged), "alice@example.com",
                ["bob@example.org"], queue_id="MTQ1001"),
        # RSET half-way: the milter must forget this one entirely.
        message(signed(live_pki, extra_headers=forged * 3), "mallory@example.com",
                ["eve@example.org"], queue_id="MTQ1002", abort=True),
        message(unsigned(), "carol@example.net", ["dave@example.org"], queue_id="MTQ1003"),
        message(tampered(signed(live_pki)), "alice@example.com", ["bob@example.org"],
                queue_id="MTQ1004"),
    )
    assert [r.reply for r in results] == [CONTINUE] * 3
    assert [r.deleted for r in results] == [{(AR, 1)}, set(), set()]
    assert [ar_value(r).split()[1] for r in results] == ["smime=pass", "smime=none",
                                                         "smime=fail"]
    assert [parse_status_header(r.value(STATUS))[0] for r in results] == [
        Status.SIGNED_VERIFIED, None, Status.SIGNED_FAILED]
    record_ids = [record_id_of(r) for r in results]
    assert len(set(record_ids)) == 3
    with milter.open_store() as store:
        records = [store.get(record_id) for record_id in record_ids]
    assert [(r.queue_id, r.envelope_sender, r.envelope_recipients) for r in records if r] == [
        ("MTQ1001", "alice@example.com", ("bob@example.org",)),
        ("MTQ1003", "carol@example.net", ("dave@example.org",)),
        ("MTQ1004", "alice@example.com", ("bob@example.org",)),
    ]
    assert "MTQ1002" not in milter.log_text()


def test_connection_continues_after_a_reject(
    policy_milter: Daemon, tmp_path: Path
) -> None:
    rejected, accepted = session(
        policy_milter, tmp_path,
        message(unsigned(), "a@example.com", ["x@reject.example"]),
        message(unsigned(), "a@example.com", ["bob@example.org"]),
    )
    assert rejected.reply == REPLYCODE and not rejected.any_insert
    # Recipients of the rejected transaction are forgotten: this one is only tagged.
    assert accepted.reply == CONTINUE
    assert accepted.changed == {"Subject"}
    assert ar_value(accepted) == f"{AUTHSERV_ID}; smime=none"


# -- size limit ----------------------------------------------------------------------


def test_oversize_message_is_accepted_unexamined(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    line = "0123456789abcdef" * 4 + "\n"
    body = "Hello Bob\n" + line * (2 * MAX_MESSAGE_SIZE // len(line))
    forged = ((AR, f"{AUTHSERV_ID}; smime=pass"),)
    data = signed(live_pki, body, extra_headers=forged)
    assert len(split_body(data)) > MAX_MESSAGE_SIZE
    [result] = session(milter, tmp_path, message(data, "alice@example.com", ["bob@example.org"],
                                                 queue_id="MTQ2001"))
    assert result.reply == CONTINUE
    assert ar_value(result) == (
        f"{AUTHSERV_ID}; smime=neutral (not examined: message too large to examine)")
    assert result.index(AR) == 0
    assert STATUS not in result.inserted  # nothing recorded, so no record to point at
    assert result.deleted == {(AR, 1)}  # forged stamps go even when nothing is examined
    log_line = next(line for line in milter.log_text().splitlines() if "MTQ2001" in line)
    assert "outcome=oversize" in log_line and "action=accept" in log_line


def split_body(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[2]


# -- trust files ------------------------------------------------------------------------


def test_an_anchor_added_to_the_anchor_directory_is_used_without_a_reload(
    tmp_path_factory: pytest.TempPathFactory, anchors: Path, live_pki: TestPki, tmp_path: Path
) -> None:
    """``smime-milter trust add`` writes into trust.anchor_directory; the running
    daemon notices the file within seconds (no SIGUSR1), like the JMAP service."""
    daemon = Daemon(tmp_path_factory.mktemp("mta"), anchors, authserv_id=AUTHSERV_ID)
    data = multipart_signed(text_entity("Hello Bob\n"), live_pki.untrusted,
                            from_addr="untrusted@example.com", to="bob@example.org")

    def status() -> Status | None:
        [result] = session(daemon, tmp_path, message(data, "untrusted@example.com",
                                                     ["bob@example.org"]))
        return parse_status_header(result.value(STATUS))[0]

    with daemon:
        assert status() is Status.SIGNED_FAILED
        daemon.anchor_directory.mkdir()
        (daemon.anchor_directory / "other-root.pem").write_bytes(live_pki.other_root.cert_pem)
        deadline = time.monotonic() + 30
        while status() is not Status.SIGNED_VERIFIED:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.5)
        assert "trust anchor, intermediate or CRL files changed: reloading" in daemon.log_text()


def _log_line(daemon: MilterProcess, queue_id: str) -> str:
    return next(line for line in daemon.log_text().splitlines() if f"queue_id={queue_id}" in line)


def test_log_line_gives_a_reason_for_an_accepted_failure_and_the_client_as_postfix_does(
    milter: Daemon, live_pki: TestPki, tmp_path: Path
) -> None:
    """An accepted signed/failed message still says why; an unknown client
    (Postfix sends its name as ``[addr]``) is ``unknown[addr]``, a known one
    ``name[addr]``; a pass has no reason."""
    tampered = signed(live_pki, "Hello Bob\n").replace(b"Hello Bob", b"Hello Eve", 1)
    run_session(milter.postfix_socket, [message(tampered, "alice@example.com",
                                                ["bob@example.org"], queue_id="MTLOG1")],
                tmp_path / "a", connect_macros={"j": "mta.example.net"},
                client=("[192.0.2.7]", "192.0.2.7"))
    line = _log_line(milter, "MTLOG1")
    assert "status=signed/failed" in line and "action=accept" in line, line
    assert "client=unknown[192.0.2.7] " in line, line
    assert re.search(r" reason='[^']+'$", line), line
    assert " INFO " in line, line  # accepted by policy: not a warning

    run_session(milter.postfix_socket, [message(signed(live_pki, "Hello Bob\n"),
                                                "alice@example.com", ["bob@example.org"],
                                                queue_id="MTLOG2")],
                tmp_path / "b", connect_macros={"j": "mta.example.net"})
    line = _log_line(milter, "MTLOG2")
    assert "status=signed/verified" in line and "client=client.example[192.0.2.25] " in line
    assert "reason=" not in line, line


def test_start_up_and_reload_lines_name_config_store_workers_and_anchors(
    milter: Daemon
) -> None:
    log = milter.log_text()
    started = re.search(r"listening on unix:\S+ \(config (\S+), store (\S+), (\d+) workers, "
                        r"(\d+) trust anchors\)", log)
    assert started is not None, log
    assert started.group(1) == str(milter.config) and started.group(2) == str(milter.store_path)
    assert int(started.group(4)) > 50  # Mozilla's e-mail roots and the test root
    milter.reload()
    deadline = time.monotonic() + 60
    while "reloaded: config" not in milter.log_text():
        assert time.monotonic() < deadline, milter.log_text()[-2000:]
        time.sleep(0.05)
    assert re.search(rf"reloaded: config {re.escape(str(milter.config))}, store \S+, "
                     r"\d+ workers, \d+ trust anchors", milter.log_text())

"""``smime-milter jmap``: RFC 9219 Email/get, Email/query and Email/changes.

Every test drives a store filled by really verifying signed messages (see
``tests/support/jmapworld.py``) through the command, with JMAP Requests
shaped like RFC 9219's examples, and checks the Response field by field.
Time is moved with ``main``'s clock hook, so a certificate can expire or
be revoked after delivery.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smime_milter.cli.main import main
from smime_milter.model import Status
from smime_milter.store import Store
from tests.support.clockedcli import fixed
from tests.support.jmapworld import ACCOUNT, DELIVERED, World, build_world
from tests.support.pki import TestPki

VERIFIED = "signed/verified"
FAILED = "signed/failed"
AT_DELIVERY = "2026-06-01T00:00:00Z"
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.fixture
def world(tmp_path: Path, pki: TestPki) -> World:
    return build_world(tmp_path / "world", pki)


def iso(moment: object) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Email/get


def test_get_returns_every_rfc9219_property_as_computed_at_delivery(world: World) -> None:
    got = world.get(list(world.ids), None, now=DELIVERED + MINUTE)
    assert set(got) == set(world.ids)
    for name in ("alice", "opaque", "short", "late"):
        assert got[name] == {
            "id": world.ids[name], "smimeStatus": VERIFIED, "smimeStatusAtDelivery": VERIFIED,
            "smimeErrors": None, "smimeVerifiedAt": AT_DELIVERY,
        }, name
    for name in ("tampered", "mismatch", "newcomer"):
        item = got[name]
        assert item["smimeStatus"] == item["smimeStatusAtDelivery"] == FAILED, name
        assert item["smimeErrors"] and all(isinstance(e, str) for e in item["smimeErrors"])
    assert any("digest" in e or "signature" in e for e in got["tampered"]["smimeErrors"])
    assert any("mallory@example.com" in e for e in got["mismatch"]["smimeErrors"])
    assert any("untrusted root" in e for e in got["newcomer"]["smimeErrors"])
    assert got["plain"] == {"id": world.ids["plain"], "smimeStatus": None,
                            "smimeStatusAtDelivery": None, "smimeErrors": None,
                            "smimeVerifiedAt": None}


def test_example_1_at_delivery_and_received_at(world: World) -> None:
    response = world.jmap([["Email/get", {
        "accountId": ACCOUNT, "ids": [world.ids["alice"]],
        "properties": ["smimeStatusAtDelivery", "receivedAt"],
    }, "#1"]], now=DELIVERED + HOUR)
    name, result, call_id = response["methodResponses"][0]
    assert (name, call_id) == ("Email/get", "#1")
    assert result["accountId"] == ACCOUNT
    assert result["state"] == "8"  # eight records created
    assert result["notFound"] == []
    assert result["list"] == [{"id": world.ids["alice"], "smimeStatusAtDelivery": VERIFIED,
                               "receivedAt": AT_DELIVERY}]


def test_example_2_only_the_requested_properties(world: World) -> None:
    got = world.get(["mismatch"], ["smimeStatus", "smimeErrors", "smimeVerifiedAt"],
                    now=DELIVERED + MINUTE)
    assert list(got["mismatch"]) == ["id", "smimeStatus", "smimeErrors", "smimeVerifiedAt"]
    assert got["mismatch"]["smimeStatus"] == FAILED


def test_unknown_ids_are_not_found_and_duplicates_listed_once(world: World) -> None:
    response = world.jmap([["Email/get", {
        "accountId": ACCOUNT, "ids": [world.ids["alice"], "rnothere", world.ids["alice"],
                                      "not an id!"],
        "properties": ["smimeStatus"]}, "0"]], now=DELIVERED)
    result = response["methodResponses"][0][1]
    assert [item["id"] for item in result["list"]] == [world.ids["alice"]]
    assert result["notFound"] == ["rnothere", "not an id!"]


@pytest.mark.process
def test_through_a_separate_process(world: World) -> None:
    response = world.jmap_process([["Email/get", {
        "accountId": ACCOUNT, "ids": [world.ids["alice"], world.ids["plain"]],
        "properties": ["smimeStatus"]}, "p"]], now=DELIVERED)
    assert response["methodResponses"][0][1]["list"] == [
        {"id": world.ids["alice"], "smimeStatus": VERIFIED},
        {"id": world.ids["plain"], "smimeStatus": None},
    ]


# --------------------------------------------------------------------------- time passes


def test_cache_lifetime_then_revocation_after_delivery(world: World) -> None:
    revoked_at = DELIVERED + 10 * MINUTE
    world.revoke_later("late", revoked_at)
    before = world.state(now=DELIVERED)
    # Within the hour the cached status is reused, even though a CRL now says revoked.
    cached = world.get(["late"], ["smimeStatus", "smimeVerifiedAt"],
                       now=DELIVERED + 30 * MINUTE)["late"]
    assert cached == {"id": world.ids["late"], "smimeStatus": VERIFIED,
                      "smimeVerifiedAt": AT_DELIVERY}
    assert world.changes(before, now=DELIVERED + 30 * MINUTE)["updated"] == []
    # Past the cache lifetime the stored chain is validated again as of now.
    now = DELIVERED + 61 * MINUTE
    fresh = world.get(["late"], None, now=now)["late"]
    assert fresh["smimeStatus"] == FAILED
    assert any("revoked" in error for error in fresh["smimeErrors"])
    assert fresh["smimeVerifiedAt"] == iso(now)
    assert fresh["smimeStatusAtDelivery"] == VERIFIED  # revoked after delivery
    changes = world.changes(before, now=now)
    assert changes["updated"] == [world.ids["late"]]
    assert changes["created"] == [] and changes["destroyed"] == []
    assert changes["oldState"] == before and int(changes["newState"]) == int(before) + 1
    assert world.query({"hasVerifiedSmime": True}, now=now) == {"alice", "opaque", "short"}
    assert "late" in world.query({"hasVerifiedSmimeAtDelivery": True}, now=now)


def test_get_that_reverifies_returns_the_state_after_its_own_change(world: World) -> None:
    """The state of an Email/get is that of the values it returns: a client
    that fetched the flipped status is not told again by Email/changes."""
    world.revoke_later("late", DELIVERED + 10 * MINUTE)
    before = world.state(now=DELIVERED)
    now = DELIVERED + 2 * HOUR
    response = world.jmap([["Email/get", {"accountId": ACCOUNT, "ids": [world.ids["late"]],
                                          "properties": ["smimeStatus"]}, "g"]], now=now)
    result = response["methodResponses"][0][1]
    assert result["list"] == [{"id": world.ids["late"], "smimeStatus": FAILED}]
    assert int(result["state"]) == int(before) + 1
    assert world.changes(result["state"], now=now)["updated"] == []
    assert world.changes(before, now=now)["updated"] == [world.ids["late"]]


def test_expiry_after_delivery_flips_current_status_only(world: World) -> None:
    now = DELIVERED + timedelta(days=3)
    got = world.get(["short", "alice"], None, now=now)
    assert got["short"]["smimeStatus"] == FAILED
    assert any("expired" in error for error in got["short"]["smimeErrors"])
    assert got["short"]["smimeStatusAtDelivery"] == VERIFIED
    assert got["alice"]["smimeStatus"] == VERIFIED
    assert got["alice"]["smimeVerifiedAt"] == iso(now)


def test_reverification_that_only_moves_verified_at_is_not_a_change(world: World) -> None:
    before = world.state(now=DELIVERED)
    later = DELIVERED + 3 * HOUR
    got = world.get(["alice", "tampered"], ["smimeStatus", "smimeErrors", "smimeVerifiedAt"],
                    now=later)
    assert got["alice"]["smimeVerifiedAt"] == got["tampered"]["smimeVerifiedAt"] == iso(later)
    assert world.state(now=later) == before
    changes = world.changes(before, now=later)
    assert changes == {"accountId": ACCOUNT, "oldState": before, "newState": before,
                       "hasMoreChanges": False, "created": [], "updated": [], "destroyed": []}
    # The re-verification was recorded: within the hour after it, it is reused.
    again = world.get(["alice"], ["smimeVerifiedAt"], now=later + 30 * MINUTE)
    assert again["alice"]["smimeVerifiedAt"] == iso(later)


def test_at_delivery_only_request_does_not_reverify(world: World) -> None:
    got = world.get(["alice"], ["smimeStatusAtDelivery"], now=DELIVERED + 5 * HOUR)
    assert got["alice"] == {"id": world.ids["alice"], "smimeStatusAtDelivery": VERIFIED}
    assert world.get(["alice"], ["smimeVerifiedAt"], now=DELIVERED + 5 * HOUR)[
        "alice"]["smimeVerifiedAt"] == iso(DELIVERED + 5 * HOUR)


def test_trust_anchor_added_after_delivery(world: World) -> None:
    before = world.state(now=DELIVERED)
    anchor = world.root / "later-root.pem"
    anchor.write_bytes(world.extra["later_ca"].cert_pem)
    assert main(["trust", "add", "--config", str(world.config), str(anchor)]) == 0
    now = DELIVERED + MINUTE  # well within the cache lifetime: the anchor change counts
    got = world.get(["newcomer", "alice"], None, now=now)
    assert got["newcomer"]["smimeStatusAtDelivery"] == VERIFIED
    assert got["newcomer"]["smimeStatus"] == VERIFIED
    assert got["newcomer"]["smimeErrors"] is None
    assert got["alice"]["smimeStatus"] == VERIFIED
    assert world.changes(before, now=now)["updated"] == [world.ids["newcomer"]]
    assert "newcomer" in world.query({"hasVerifiedSmimeAtDelivery": True}, now=now)
    # Removing it again changes the current status, never the at-delivery one.
    fingerprint = main(["trust", "remove", "--config", str(world.config), str(anchor)])
    assert fingerprint == 0
    got = world.get(["newcomer"], None, now=now + MINUTE)["newcomer"]
    assert got["smimeStatus"] == FAILED
    assert got["smimeStatusAtDelivery"] == VERIFIED


def test_refresh_command_makes_flips_visible_to_changes(world: World, capsys) -> None:
    before = world.state(now=DELIVERED)
    now = DELIVERED + timedelta(days=3)
    assert main(["refresh", "--config", str(world.config)], clock=fixed(now)) == 0
    assert "re-validated 7 record(s)" in capsys.readouterr().out
    assert world.changes(before, now=now)["updated"] == [world.ids["short"]]


def test_read_only_store_computes_but_does_not_write(world: World) -> None:
    before = world.state(now=DELIVERED)
    now = DELIVERED + timedelta(days=3)
    response = world.jmap([["Email/get", {"accountId": ACCOUNT, "ids": [world.ids["short"]],
                                          "properties": ["smimeStatus"]}, "r"]],
                          now=now, extra_args=("--read-only",))
    assert response["methodResponses"][0][1]["list"][0]["smimeStatus"] == FAILED
    with Store.open(world.store, readonly=True) as store:
        assert store.get(world.ids["short"]).status.value == VERIFIED
        assert store.state() == before


# --------------------------------------------------------------------------- Email/query


@pytest.mark.parametrize(("filter", "expected"), [
    (None, {"alice", "opaque", "tampered", "mismatch", "short", "late", "newcomer", "plain"}),
    ({}, {"alice", "opaque", "tampered", "mismatch", "short", "late", "newcomer", "plain"}),
    ({"hasSmime": True}, {"alice", "opaque", "tampered", "mismatch", "short", "late",
                          "newcomer"}),
    ({"hasSmime": False}, {"plain"}),
    ({"hasVerifiedSmime": True}, {"alice", "opaque", "short", "late"}),
    ({"hasVerifiedSmime": False}, {"tampered", "mismatch", "newcomer", "plain"}),
    ({"hasVerifiedSmimeAtDelivery": True}, {"alice", "opaque", "short", "late"}),
    ({"hasSmime": True, "hasVerifiedSmime": False}, {"tampered", "mismatch", "newcomer"}),
    ({"operator": "AND", "conditions": [{"hasSmime": True}, {"hasVerifiedSmime": False}]},
     {"tampered", "mismatch", "newcomer"}),
    ({"operator": "OR", "conditions": [{"hasSmime": False}, {"hasVerifiedSmime": True}]},
     {"plain", "alice", "opaque", "short", "late"}),
    ({"operator": "NOT", "conditions": [{"hasSmime": False}, {"hasVerifiedSmime": True}]},
     {"tampered", "mismatch", "newcomer"}),
    ({"operator": "NOT", "conditions": [
        {"operator": "OR", "conditions": [{"hasVerifiedSmimeAtDelivery": True}]}]},
     {"tampered", "mismatch", "newcomer", "plain"}),
])
def test_query_filters(world: World, filter: dict | None, expected: set[str]) -> None:
    assert world.query(filter, now=DELIVERED + MINUTE) == expected


def test_query_over_candidates_keeps_their_order_and_counts_unknown_as_null(world: World
                                                                            ) -> None:
    candidates = [world.ids["plain"], "rnorecord", world.ids["short"], world.ids["alice"]]
    args = {"accountId": ACCOUNT, "filter": {"hasVerifiedSmime": False},
            "candidateIds": candidates, "calculateTotal": True}
    result = world.jmap([["Email/query", args, "q"]], now=DELIVERED)["methodResponses"][0][1]
    assert result["ids"] == [world.ids["plain"], "rnorecord"]
    assert result["total"] == 2 and result["position"] == 0
    assert result["canCalculateChanges"] is False
    args["filter"] = {"hasSmime": True}
    result = world.jmap([["Email/query", args, "q"]], now=DELIVERED)["methodResponses"][0][1]
    assert result["ids"] == [world.ids["short"], world.ids["alice"]]


@pytest.mark.parametrize("explicit", [False, True], ids=["all records", "candidates"])
def test_query_refreshes_stale_statuses_in_bulk(world: World, explicit: bool) -> None:
    now = DELIVERED + timedelta(days=3)
    candidates = list(world.ids.values()) if explicit else None
    assert world.query({"hasVerifiedSmime": True}, now=now, candidates=candidates) == {
        "alice", "opaque", "late"}
    with Store.open(world.store, readonly=True) as store:
        records = store.get_many(world.ids.values())
    assert all(r.verified_at == now for r in records.values() if r.revalidatable)
    assert records[world.ids["short"]].status.value == FAILED


def test_query_window_and_result_reference(world: World) -> None:
    candidates = [world.ids[name] for name in ("alice", "opaque", "short", "late")]
    response = world.jmap([
        ["Email/query", {"accountId": ACCOUNT, "filter": {"hasVerifiedSmime": True},
                         "candidateIds": candidates, "position": 1, "limit": 2}, "q"],
        ["Email/get", {"accountId": ACCOUNT, "properties": ["smimeStatus"],
                       "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "g"],
        ["Email/query", {"accountId": ACCOUNT, "candidateIds": candidates,
                         "anchor": world.ids["short"], "anchorOffset": -1, "limit": 1}, "a"],
        ["Email/query", {"accountId": ACCOUNT, "candidateIds": candidates,
                         "position": -1}, "n"],
    ], now=DELIVERED)
    query, get, anchored, negative = (r[1] for r in response["methodResponses"])
    assert query["ids"] == candidates[1:3] and query["position"] == 1
    assert [item["id"] for item in get["list"]] == candidates[1:3]
    assert anchored["ids"] == [world.ids["opaque"]] and anchored["position"] == 1
    assert negative["ids"] == [world.ids["late"]] and negative["position"] == 3


# --------------------------------------------------------------------------- Email/changes


def test_changes_paging_with_max_changes(world: World) -> None:
    first = world.changes("0", now=DELIVERED, max_changes=3)
    assert first["hasMoreChanges"] is True and len(first["created"]) == 3
    assert first["oldState"] == "0" and first["newState"] == "3"
    rest = world.changes(first["newState"], now=DELIVERED, max_changes=100)
    assert rest["hasMoreChanges"] is False and rest["newState"] == "8"
    assert set(first["created"]) | set(rest["created"]) == set(world.ids.values())


@pytest.mark.parametrize("state", ["999", "abc", "-1", ""])
def test_changes_from_an_unknown_state(world: World, state: str) -> None:
    response = world.jmap([["Email/changes", {"accountId": ACCOUNT, "sinceState": state},
                            "c"]], now=DELIVERED)
    name, error, call_id = response["methodResponses"][0]
    assert (name, error["type"], call_id) == ("error", "cannotCalculateChanges", "c")


# --------------------------------------------------------------------------- retention


def test_prune_deletes_old_records_and_changes_report_them_destroyed(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = world.state(now=DELIVERED)
    later = DELIVERED + timedelta(days=10)
    cutoff = iso(later - timedelta(days=5))
    args = ["prune", "--config", str(world.config)]
    assert main(args, clock=fixed(later)) == 0  # store.retention_days is not set: keep everything
    assert "nothing pruned" in capsys.readouterr().out
    assert main([*args, "--older-than", "30"], clock=fixed(later)) == 0
    assert capsys.readouterr().out == f"deleted 0 record(s) received before " \
        f"{iso(later - timedelta(days=30))}\n"
    assert main([*args, "--older-than", "5", "--dry-run"], clock=fixed(later)) == 0
    assert capsys.readouterr().out == f"would delete 8 record(s) received before {cutoff}\n"
    assert world.state(now=later) == before

    world.config.write_text(world.config.read_text().replace(
        "[store]\n", "[store]\nretention_days = 5\n"))
    assert main(args, clock=fixed(later)) == 0
    assert capsys.readouterr().out == f"deleted 8 record(s) received before {cutoff}\n"

    ids = list(world.ids.values())
    [[_, got, _], [_, changes, _], [_, query, _]] = world.jmap([
        ["Email/get", {"accountId": ACCOUNT, "ids": ids, "properties": ["smimeStatus"]}, "g"],
        ["Email/changes", {"accountId": ACCOUNT, "sinceState": before}, "c"],
        ["Email/query", {"accountId": ACCOUNT, "filter": {"hasSmime": False},
                         "candidateIds": ids}, "q"],
    ], now=later)["methodResponses"]
    assert got["list"] == [] and got["notFound"] == ids
    assert (changes["created"], changes["updated"]) == ([], [])
    assert sorted(changes["destroyed"]) == sorted(ids)
    assert changes["newState"] == got["state"] == str(int(before) + 8)
    assert query["ids"] == ids  # no record: smimeStatus null


@pytest.mark.parametrize("days", ["0", "-1", "many", "40000"])
def test_prune_needs_a_number_of_days(world: World, days: str) -> None:
    with pytest.raises(SystemExit):
        main(["prune", "--config", str(world.config), "--older-than", days])


# ------------------------------------------------------------------ a clock ahead (issue 16)

#: What ``jmap --now 2032-01-01T00:00:00Z`` once wrote into a live store.
FUTURE = datetime(2032, 1, 1, tzinfo=UTC)


def plant_future_result(world: World, name: str) -> None:
    """Stores, through the store API as the old bug did, a status computed
    under a clock years ahead: the certificate had expired by then."""
    with Store.open(world.store) as store:
        store.update(world.ids[name], status=Status.SIGNED_FAILED,
                     errors=("certificate expired (checked at 2032-01-01)",),
                     verified_at=FUTURE).result()


def stored(world: World, name: str) -> tuple[str | None, datetime | None]:
    with Store.open(world.store, readonly=True) as store:
        record = store.get(world.ids[name])
    assert record is not None
    return (None if record.status is None else record.status.value), record.verified_at


def run_cli(argv: list[str], stdin: bytes = b"") -> int:
    """``main(argv)`` with ``stdin``; argparse's usage errors as their status."""
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.stdin = saved


@pytest.mark.parametrize("command", ["jmap", "refresh", "prune"])
def test_a_pretend_moment_is_no_option_and_never_reaches_the_store(
    world: World, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before_state = world.state(now=DELIVERED)
    before = stored(world, "alice")
    request = json.dumps({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
                                    "urn:ietf:params:jmap:smimeverify"],
                          "methodCalls": [["Email/get", {"accountId": ACCOUNT,
                                                         "ids": list(world.ids.values())},
                                           "g"]]}).encode()
    argv = [command, "--config", str(world.config), "--now", "2032-01-01T00:00:00Z"]
    if command == "prune":
        argv += ["--older-than", "1"]
    assert run_cli(argv, request) == 2
    assert "unrecognized arguments: --now" in capsys.readouterr().err
    assert stored(world, "alice") == before == (VERIFIED, DELIVERED)
    assert world.state(now=DELIVERED) == before_state


def test_ingest_takes_no_pretend_moment_either(world: World, tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: a@example.com\r\n\r\nplain\r\n")
    assert run_cli(["ingest", "--config", str(world.config), "--authserv-id", "mx",
                    "--now", "2032-01-01T00:00:00Z", str(message)]) == 2


def test_a_status_verified_in_the_future_is_revalidated_when_read(world: World) -> None:
    plant_future_result(world, "alice")
    before = world.state(now=DELIVERED)
    now = DELIVERED + MINUTE  # well within the cache lifetime of a status from now
    got = world.get(["alice"], None, now=now)["alice"]
    assert got == {"id": world.ids["alice"], "smimeStatus": VERIFIED,
                   "smimeStatusAtDelivery": VERIFIED, "smimeErrors": None,
                   "smimeVerifiedAt": iso(now)}
    assert stored(world, "alice") == (VERIFIED, now)
    assert world.changes(before, now=now)["updated"] == [world.ids["alice"]]


def test_a_status_verified_in_the_future_fails_no_query(world: World) -> None:
    plant_future_result(world, "alice")
    assert "alice" in world.query({"hasVerifiedSmime": True}, now=DELIVERED + MINUTE)
    assert stored(world, "alice") == (VERIFIED, DELIVERED + MINUTE)


def test_refresh_revalidates_a_status_verified_in_the_future(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    plant_future_result(world, "alice")
    # The order of the report: a trust anchor removed after the bad write
    # started an epoch, which a status from the future outlived.
    anchor = world.root / "later-root.pem"
    anchor.write_bytes(world.extra["later_ca"].cert_pem)
    assert main(["trust", "add", "--config", str(world.config), str(anchor)]) == 0
    assert main(["trust", "remove", "--config", str(world.config), str(anchor)]) == 0
    capsys.readouterr()
    now = DELIVERED + MINUTE
    assert main(["refresh", "--config", str(world.config)], clock=fixed(now)) == 0
    # Every signed record: the anchor change made the others stale too.
    assert capsys.readouterr().out == "re-validated 7 record(s)\n"
    assert stored(world, "alice") == (VERIFIED, now)
    assert main(["refresh", "--config", str(world.config)], clock=fixed(now)) == 0
    assert capsys.readouterr().out == "re-validated 0 record(s)\n"


# --------------------------------------------------------------------------- a missing store


@pytest.mark.parametrize("argv", [
    ["jmap"], ["jmap", "--read-only"], ["refresh"], ["prune", "--older-than", "1"],
    ["prune", "--older-than", "1", "--dry-run"],
])
def test_readers_refuse_a_store_that_does_not_exist(
    world: World, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo"
    request = json.dumps({"using": ["urn:ietf:params:jmap:core"], "methodCalls": []}).encode()
    assert run_cli([*argv, "--config", str(world.config), "--store", str(typo)], request) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"smime-milter: no store at {typo} (no data.mdb); " \
        "the milter creates it\n"
    assert not typo.exists()


@pytest.mark.process
@pytest.mark.daemon
def test_the_jmap_service_refuses_a_store_that_does_not_exist(
    world: World, tmp_path: Path
) -> None:
    typo = tmp_path / "typo"
    done = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(world.config),
         "--store", str(typo), "--listen", f"unix:{tmp_path / 'jmap.sock'}"],
        capture_output=True, text=True, timeout=30,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"smime-milter: no store at {typo} (no data.mdb); " \
        "the milter creates it\n"
    assert not typo.exists() and not (tmp_path / "jmap.sock").exists()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("call", "error_type"), [
    (["Email/set", {"accountId": ACCOUNT}], "unknownMethod"),
    (["Mailbox/get", {"accountId": ACCOUNT}], "unknownMethod"),
    (["Email/get", {"accountId": ACCOUNT, "ids": [], "properties": ["mailboxIds"]}],
     "invalidArguments"),
    (["Email/get", {"accountId": ACCOUNT, "ids": "r1"}], "invalidArguments"),
    (["Email/get", {"ids": []}], "invalidArguments"),
    (["Email/get", {"accountId": ACCOUNT, "ids": [], "bogus": 1}], "invalidArguments"),
    (["Email/query", {"accountId": ACCOUNT, "filter": {"from": "x"}}], "unsupportedFilter"),
    (["Email/query", {"accountId": ACCOUNT, "filter": {"hasSmime": "yes"}}],
     "invalidArguments"),
    (["Email/query", {"accountId": ACCOUNT, "filter": {"operator": "XOR", "conditions": [{}]}}],
     "invalidArguments"),
    (["Email/query", {"accountId": ACCOUNT, "sort": [{"property": "subject"}]}],
     "unsupportedSort"),
    (["Email/query", {"accountId": ACCOUNT, "anchor": "rnothere"}], "anchorNotFound"),
    (["Email/changes", {"accountId": ACCOUNT, "sinceState": "0", "maxChanges": 0}],
     "invalidArguments"),
    (["Email/get", {"accountId": ACCOUNT, "#ids": {"resultOf": "x", "name": "Email/query",
                                                    "path": "/ids"}}],
     "invalidResultReference"),
])
def test_method_errors(world: World, call: list, error_type: str) -> None:
    response = world.jmap([[*call, "e"], ["Core/echo", {"still": "answered"}, "z"]],
                          now=DELIVERED)
    assert response["methodResponses"][0][0] == "error"
    assert response["methodResponses"][0][1]["type"] == error_type
    assert response["methodResponses"][0][2] == "e"
    assert response["methodResponses"][1] == ["Core/echo", {"still": "answered"}, "z"]


def test_smime_properties_need_the_capability(world: World) -> None:
    response = world.jmap([["Email/get", {"accountId": ACCOUNT, "ids": []}, "0"]],
                          now=DELIVERED, using=["urn:ietf:params:jmap:core",
                                                "urn:ietf:params:jmap:mail"])
    assert response["methodResponses"][0][1]["type"] == "invalidArguments"
    response = world.jmap([["Email/get", {"accountId": ACCOUNT, "ids": []}, "0"]],
                          now=DELIVERED, using=["urn:ietf:params:jmap:core"])
    assert response["methodResponses"][0][1]["type"] == "unknownMethod"


@pytest.mark.parametrize(("body", "kind"), [
    (b"{not json", "notJSON"),
    (b"\xff\xfe", "notJSON"),
    (b"[]", "notRequest"),
    (json.dumps({"using": [], "methodCalls": [["Email/get"]]}).encode(), "notRequest"),
    (json.dumps({"using": ["urn:example:nope"], "methodCalls": []}).encode(),
     "unknownCapability"),
])
def test_request_level_errors(world: World, body: bytes, kind: str) -> None:
    response = world.jmap_raw(body, now=DELIVERED)
    assert response["_exit"] == 1
    assert response["type"] == f"urn:ietf:params:jmap:error:{kind}"
    assert response["status"] == 400 and response["detail"]

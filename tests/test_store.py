"""The LMDB store: records, certificates, indexes, the change log, the writer thread.

Every test uses a real LMDB environment under ``tmp_path``. Certificates are
opaque to the store, so arbitrary byte strings stand in for DER.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import lmdb
import pytest

from smime_milter.model import SignerResult, Status, Verdict, new_record_id
from smime_milter.store import (
    INDEXES,
    MAX_LEARNED_PER_ADDRESS,
    SCHEMA_VERSION,
    CannotCalculateChanges,
    Changes,
    LearnedCertificate,
    Record,
    Resubmitted,
    Store,
    StoreError,
)
from smime_milter.store import facade as store_module
from smime_milter.store import writer as store_writer
from tests.support import storeload

REPO = Path(__file__).resolve().parents[1]
RECEIVED = datetime(2026, 6, 1, 12, 30, 5, tzinfo=UTC)
LEAF = b"\x30\x82leaf certificate DER" * 20
INTERMEDIATE = b"\x30\x82intermediate DER" * 20
ROOT = b"\x30\x82root DER" * 20


def sha(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def signer(**changes: object) -> SignerResult:
    base = SignerResult(
        emails=("alice@example.org", "älice@exämple.org"),
        subject="CN=Alice,O=Example",
        issuer="CN=Example Intermediate",
        serial=2**100 + 7,
        digest_algorithm="sha256",
        signature_algorithm="rsassa_pkcs1v15",
        signature_ok=True,
        chain_ok=True,
        from_match=True,
        errors=(),
        signing_time=datetime(2026, 6, 1, 12, 29, tzinfo=UTC),
        certificate=LEAF,
        path=(LEAF, INTERMEDIATE, ROOT),
    )
    return replace(base, **changes)


def record(**changes: object) -> Record:
    """A verified signed message; ``changes`` override fields."""
    base = Record(
        record_id=new_record_id(),
        received_at=RECEIVED,
        envelope_sender="alice@example.org",
        envelope_recipients=("bob@example.net", "carol@example.net"),
        message_id="<1234@example.org>",
        from_address="alice@example.org",
        queue_id="4QxYz1",
        status_at_delivery=Status.SIGNED_VERIFIED,
        errors_at_delivery=None,
        status=Status.SIGNED_VERIFIED,
        errors=None,
        verified_at=RECEIVED,
        signers=(signer(),),
        certificates=(LEAF, INTERMEDIATE),
        layer="multipart/signed",
        signed_part="1",
        notes=("a note",),
    )
    return replace(base, **changes)


def unsigned(**changes: object) -> Record:
    fields: dict[str, object] = {
        "status_at_delivery": None, "status": None, "verified_at": None, "signers": (),
        "certificates": (), "layer": None, "signed_part": None, "notes": (),
    }
    return record(**{**fields, **changes})


def failed(**changes: object) -> Record:
    errors = ("signer certificate expired",)
    fields: dict[str, object] = {
        "status_at_delivery": Status.SIGNED_FAILED, "errors_at_delivery": errors,
        "status": Status.SIGNED_FAILED, "errors": errors,
    }
    return record(**{**fields, **changes})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store.open(path)
    yield opened
    opened.close()


@contextmanager
def raw_env(path: Path, *, readonly: bool = True) -> Iterator[lmdb.Environment]:
    """LMDB opened directly, as a reader in another language would (no Store open)."""
    env = lmdb.open(str(path), readonly=readonly, lock=True, max_dbs=16)
    try:
        yield env
    finally:
        env.close()


def raw_db(env: lmdb.Environment, txn: lmdb.Transaction, name: str) -> object:
    return env.open_db(name.encode(), txn=txn, create=False)


# --------------------------------------------------------------------------- ids and records


def test_record_ids_are_opaque_jmap_ids() -> None:
    ids = {new_record_id() for _ in range(5000)}
    assert len(ids) == 5000
    for record_id in ids:
        assert re.fullmatch(r"r[a-z2-7]{25}", record_id), record_id


def test_round_trip_of_every_field(store: Store) -> None:
    original = record(
        signers=(
            signer(),
            signer(emails=(), serial=None, signature_ok=False, chain_ok=False,
                   from_match=False, errors=("bad signature", "untrusted root"),
                   signing_time=None, certificate=None, path=()),
        ),
        envelope_sender="",
        message_id="<ünïcode@example.org>",
        status=Status.ENCRYPTED_SIGNED_FAILED,
        errors=("first", "second"),
        notes=("one", "two"),
    )
    store.put_sync(original)
    assert store.get(original.record_id) == original


def test_round_trip_of_an_unsigned_message(store: Store) -> None:
    original = unsigned(message_id=None, from_address=None, queue_id=None,
                        envelope_recipients=())
    store.put_sync(original)
    assert store.get(original.record_id) == original


def test_dates_are_held_as_utc_whole_seconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    held = record(
        received_at=datetime(2026, 6, 1, 14, 30, 5, 999_999, tzinfo=plus_two),
        signers=(signer(signing_time=datetime(2026, 6, 1, 14, 0, 0, 5, tzinfo=plus_two)),),
    )
    assert held.received_at == RECEIVED and held.received_at.tzinfo is UTC
    assert held.signers[0].signing_time == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("bad", [
    {"received_at": datetime(2026, 6, 1)},
    {"verified_at": datetime(2026, 6, 1)},
    {"record_id": ""},
    {"record_id": "has space"},
    {"record_id": "x" * 256},
])
def test_invalid_records_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        record(**bad)


def test_undecodable_text_is_stored_with_replacement_characters(store: Store) -> None:
    """pymilter hands over undecodable bytes as lone surrogates; delivery must not fail."""
    original = record(envelope_sender="b\udcffd@example.org")
    store.put_sync(original)
    got = store.get(original.record_id)
    assert got is not None and got.envelope_sender == "b\ufffdd@example.org"


def test_from_verdict_copies_the_delivery_verdict_into_both_statuses() -> None:
    verdict = Verdict(
        status=Status.SIGNED_FAILED, errors=("expired",), verified_at=RECEIVED,
        signers=(signer(),), layer="signed-data", signed_part="1",
        from_address="alice@example.org", notes=("n",), certificates=(LEAF,),
    )
    made = Record.from_verdict(
        verdict, record_id="r1", received_at=RECEIVED, envelope_sender="s@example.org",
        envelope_recipients=["b@example.net"], message_id="<m@x>", queue_id="Q",
    )
    assert made == Record(
        record_id="r1", received_at=RECEIVED, envelope_sender="s@example.org",
        envelope_recipients=("b@example.net",), message_id="<m@x>",
        from_address="alice@example.org", queue_id="Q",
        status_at_delivery=Status.SIGNED_FAILED, errors_at_delivery=("expired",),
        status=Status.SIGNED_FAILED, errors=("expired",), verified_at=RECEIVED,
        signers=(signer(),), certificates=(LEAF,), layer="signed-data", signed_part="1",
        notes=("n",),
    )


def test_get_of_unknown_or_malformed_ids(store: Store) -> None:
    kept = record()
    store.put_sync(kept)
    assert store.get(new_record_id()) is None
    assert store.get("not an id") is None
    assert store.get_many([kept.record_id, "", "r" * 300, new_record_id()]) == {
        kept.record_id: kept
    }


def test_certificates_are_stored_once(store: Store) -> None:
    for _ in range(20):
        store.put(record())
    store.put_sync(record(signers=(), certificates=(ROOT, b"\x30\x03new")))
    assert store.stats()["certs"] == 4  # LEAF, INTERMEDIATE, ROOT, new


def test_replacing_a_record_keeps_its_id_and_content(store: Store) -> None:
    first = record()
    store.put_sync(first)
    second = replace(first, notes=("replaced",), signers=())
    store.put_sync(second)
    assert store.get(first.record_id) == second
    assert list(store.record_ids()) == [first.record_id]


# --------------------------------------------------------------------------- on-disk schema


def test_on_disk_layout_matches_the_schema_document(path: Path) -> None:
    crl = b"\x30\x82a CRL" * 10
    kept = record(
        record_id="rkept", status=Status.SIGNED_VERIFIED, crls=(crl,),
        message_errors=("message has 2 From header fields",),
        signers=(signer(errors=("untrusted root",), chain_errors=("untrusted root",)),),
    )
    with Store.open(path) as opened:
        opened.put_sync(kept)
        opened.update("rkept", status=Status.SIGNED_FAILED, errors=("revoked",))
        opened.record_trust("00ff", RECEIVED).result()
    with raw_env(path) as env, env.begin() as txn:
        names = sorted(key.decode() for key in txn.cursor().iternext(values=False))
        assert names == sorted(["meta", "records", "status", "certs", "crls", "changes",
                                *INDEXES, "verify_due", "learned"])
        # The only signer failed its chain: nothing learned from this message.
        assert dict(txn.cursor(db=raw_db(env, txn, "learned"))) == {}
        meta = dict(txn.cursor(db=raw_db(env, txn, "meta")))
        assert meta == {b"schema": str(SCHEMA_VERSION).encode(), b"state": b"2",
                        b"min_state": b"0", b"trust_generation": b"00ff",
                        b"trust_changed_at": str(int(RECEIVED.timestamp())).encode()}
        assert dict(txn.cursor(db=raw_db(env, txn, "changes"))) == {
            (1).to_bytes(8, "big"): b"crkept", (2).to_bytes(8, "big"): b"urkept",
        }
        certs = dict(txn.cursor(db=raw_db(env, txn, "certs")))
        assert certs == {sha(der).encode(): der for der in (LEAF, INTERMEDIATE, ROOT)}
        assert dict(txn.cursor(db=raw_db(env, txn, "crls"))) == {sha(crl).encode(): crl}
        assert dict(txn.cursor(db=raw_db(env, txn, "verify_due"))) == {
            int(RECEIVED.timestamp()).to_bytes(8, "big") + b"rkept": b""
        }
        assert json.loads(txn.get(b"rkept", db=raw_db(env, txn, "status"))) == {
            "receivedAt": "2026-06-01T12:30:05Z",
            "smimeStatusAtDelivery": "signed/verified",
            "smimeErrorsAtDelivery": None,
            "smimeStatus": "signed/failed",
            "smimeErrors": ["revoked"],
            "smimeVerifiedAt": "2026-06-01T12:30:05Z",
            "revalidatable": True,
        }
        for index, members in [("has_smime", {b"rkept": b""}), ("has_verified_smime", {}),
                               ("has_verified_smime_at_delivery", {b"rkept": b""})]:
            assert dict(txn.cursor(db=raw_db(env, txn, index))) == members
        doc = json.loads(txn.get(b"rkept", db=raw_db(env, txn, "records")).decode("utf-8"))
    assert doc == {
        "changeState": 2,
        "id": "rkept",
        "receivedAt": "2026-06-01T12:30:05Z",
        "envelopeSender": "alice@example.org",
        "envelopeRecipients": ["bob@example.net", "carol@example.net"],
        "messageId": "<1234@example.org>",
        "fromAddress": "alice@example.org",
        "queueId": "4QxYz1",
        "smimeStatusAtDelivery": "signed/verified",
        "smimeErrorsAtDelivery": None,
        "smimeStatus": "signed/failed",
        "smimeErrors": ["revoked"],
        "smimeVerifiedAt": "2026-06-01T12:30:05Z",
        "signers": [{
            "emails": ["alice@example.org", "älice@exämple.org"],
            "subject": "CN=Alice,O=Example",
            "issuer": "CN=Example Intermediate",
            "serial": str(2**100 + 7),
            "digestAlgorithm": "sha256",
            "signatureAlgorithm": "rsassa_pkcs1v15",
            "signatureOk": True,
            "chainOk": True,
            "fromMatch": True,
            "errors": ["untrusted root"],
            "signingTime": "2026-06-01T12:29:00Z",
            "certificate": sha(LEAF),
            "path": [sha(LEAF), sha(INTERMEDIATE), sha(ROOT)],
            "chainErrors": ["untrusted root"],
        }],
        "certificates": [sha(LEAF), sha(INTERMEDIATE)],
        "layer": "multipart/signed",
        "signedPart": "1",
        "notes": ["a note"],
        "crls": [sha(crl)],
        "messageErrors": ["message has 2 From header fields"],
    }


def test_new_store_files_and_modes(tmp_path: Path) -> None:
    where = tmp_path / "spool" / "smime"
    Store.open(where).close()
    assert stat.S_IMODE(where.stat().st_mode) == 0o750
    assert stat.S_IMODE((where / "data.mdb").stat().st_mode) == 0o640
    assert stat.S_IMODE((where / "lock.mdb").stat().st_mode) == 0o660


# --------------------------------------------------------------------------- indexes


def test_indexes_after_put(store: Store) -> None:
    verified, bad, plain, late = record(), failed(), unsigned(), record(status=Status.SIGNED)
    for each in (verified, bad, plain, late):
        store.put(each)
    store.put_sync(record(record_id="rlast"))
    ids = [verified.record_id, bad.record_id, plain.record_id, late.record_id]
    assert store.in_index("has_smime", ids) == {verified.record_id, bad.record_id,
                                                late.record_id}
    assert store.in_index("has_verified_smime", ids) == {verified.record_id}
    assert store.in_index("has_verified_smime_at_delivery", ids) == {
        verified.record_id, late.record_id,
    }
    assert set(store.index_members("has_verified_smime")) == {verified.record_id, "rlast"}


def test_indexes_follow_updates(store: Store) -> None:
    kept = record()
    store.put_sync(kept)
    store.update(kept.record_id, status=Status.SIGNED_FAILED, errors=("revoked",)).result()
    assert store.in_index("has_verified_smime", [kept.record_id]) == set()
    assert store.in_index("has_verified_smime_at_delivery", [kept.record_id]) == {
        kept.record_id
    }
    store.update(kept.record_id, status_at_delivery=Status.SIGNED_FAILED).result()
    assert store.in_index("has_verified_smime_at_delivery", [kept.record_id]) == set()
    store.update(kept.record_id, status=None, errors=None).result()
    assert store.in_index("has_smime", [kept.record_id]) == set()
    store.update(kept.record_id, status=Status.ENCRYPTED_SIGNED_VERIFIED).result()
    assert store.in_index("has_smime", [kept.record_id]) == {kept.record_id}
    assert store.in_index("has_verified_smime", [kept.record_id]) == {kept.record_id}


def test_unknown_index_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown index"):
        store.in_index("hasSmime", [])


def test_iterators_page_through_many_keys(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_CHUNK", 3)
    ids = sorted(f"r{n:02d}" for n in range(10))
    for record_id in ids:
        store.put(record(record_id=record_id))
    store.put_sync(unsigned(record_id="rzz"))
    assert list(store.record_ids()) == [*ids, "rzz"]
    assert list(store.index_members("has_verified_smime")) == ids


# --------------------------------------------------------------------------- change log


def test_creation_is_logged_and_put_returns_the_committed_state(store: Store) -> None:
    assert store.state() == "0"
    kept = record()
    future = store.put(kept)
    state = future.result(10)
    assert state == 1 and store.state() == "1"
    assert store.get(kept.record_id) == kept
    assert store.changes_since("0") == Changes("0", "1", (kept.record_id,), (), False)


def test_update_logging_rules(store: Store) -> None:
    """RFC 9219 §4.3: status, status at delivery and errors log; verified_at alone never."""
    rid = record().record_id
    store.put_sync(record(record_id=rid))
    later = RECEIVED + timedelta(hours=1)

    assert store.update(rid, verified_at=later).result() is False
    assert store.state() == "1"
    assert store.get(rid).verified_at == later  # type: ignore[union-attr]

    assert store.update(rid, status=Status.SIGNED_VERIFIED).result() is False  # no change
    assert store.update(rid, status=Status.SIGNED_FAILED, errors=("revoked",),
                        verified_at=later + timedelta(hours=1)).result() is True
    assert store.state() == "2"
    assert store.update(rid, errors=("revoked", "crl stale")).result() is True
    assert store.update(rid, errors_at_delivery=("was bad",)).result() is True
    assert store.update(rid, status_at_delivery=Status.SIGNED_FAILED).result() is True
    assert store.state() == "5"
    assert store.changes_since("1") == Changes("1", "5", (), (rid,), False)
    got = store.get(rid)
    assert got is not None
    assert (got.status, got.errors, got.status_at_delivery, got.errors_at_delivery) == (
        Status.SIGNED_FAILED, ("revoked", "crl stale"), Status.SIGNED_FAILED, ("was bad",),
    )


def test_replacing_put_logs_only_status_changes(store: Store) -> None:
    kept = record()
    store.put_sync(kept)
    assert store.put_sync(replace(kept, verified_at=RECEIVED + timedelta(days=1),
                                  notes=("other",))) == 1
    assert store.put_sync(replace(kept, status=Status.SIGNED_FAILED, errors=("x",))) == 2
    assert store.changes_since("1").updated == (kept.record_id,)


def test_update_of_an_unknown_record_fails_only_that_update(store: Store) -> None:
    kept = record()
    missing = store.update(new_record_id(), status=None)
    stored = store.put(kept)
    with pytest.raises(StoreError) as caught:
        missing.result(10)
    assert caught.value.reason == "missing"
    assert stored.result(10) == 1


def test_update_arguments_are_checked_by_the_caller(store: Store) -> None:
    rid = record().record_id
    with pytest.raises(ValueError):
        store.update(rid, status="signed/unsure")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.update(rid, errors="not a tuple")
    with pytest.raises(ValueError):
        store.update(rid, verified_at=datetime(2026, 1, 1))


def test_changes_are_deduplicated_and_creation_wins(store: Store) -> None:
    old, new = record(), record()
    store.put_sync(old)
    store.put_sync(new)
    for n in range(3):
        store.update(old.record_id, errors=(f"e{n}",)).result()
        store.update(new.record_id, errors=(f"e{n}",)).result()
    changes = store.changes_since("1")
    assert changes == Changes("1", "8", (new.record_id,), (old.record_id,), False)


def test_changes_paging_with_max_changes(store: Store) -> None:
    ids = [record().record_id for _ in range(7)]
    for record_id in ids:
        store.put(record(record_id=record_id))
    store.update(ids[0], status=None).result()  # state 8: an update of an id already seen
    seen: list[str] = []
    state = "0"
    pages = []
    while True:
        page = store.changes_since(state, max_changes=3)
        assert len(page.created) + len(page.updated) <= 3
        assert page.old_state == state
        pages.append(page)
        seen += page.created + page.updated
        state = page.new_state
        if not page.has_more_changes:
            break
    assert [page.has_more_changes for page in pages] == [True, True, False]
    assert [page.new_state for page in pages] == ["3", "6", "8"]
    assert seen == [*ids, ids[0]]  # ids[0] was created in page one, updated in page three
    assert store.changes_since(state) == Changes("8", "8", (), (), False)


def test_max_changes_cut_keeps_repeated_ids_together(store: Store) -> None:
    a, b = record(), record()
    store.put_sync(a)
    store.update(a.record_id, errors=("1",)).result()
    store.update(a.record_id, errors=("2",)).result()
    store.put_sync(b)
    page = store.changes_since("0", max_changes=1)
    assert page == Changes("0", "3", (a.record_id,), (), True)
    assert store.changes_since(page.new_state, max_changes=1) == Changes(
        "3", "4", (b.record_id,), (), False
    )


# --------------------------------------------------------------------------- deletion


def test_delete_removes_the_record_from_every_index_and_logs_it(store: Store) -> None:
    kept, doomed, plain = record(), record(), unsigned()
    for item in (kept, doomed, plain):
        store.put_sync(item)
    state = store.state()
    assert store.delete([doomed.record_id, plain.record_id, "rnothere", "not an id!",
                         doomed.record_id]).result() == (doomed.record_id, plain.record_id)
    assert store.get(doomed.record_id) is None and store.get(plain.record_id) is None
    assert store.views([doomed.record_id, kept.record_id]).keys() == {kept.record_id}
    assert list(store.record_ids()) == [kept.record_id]
    for index in INDEXES:
        assert set(store.index_members(index)) == {kept.record_id}, index
    far_future = datetime(2100, 1, 1, tzinfo=UTC)
    assert list(store.due(far_future)) == [kept.record_id]
    assert store.changes_since(state) == Changes(
        state, str(int(state) + 2), (), (), False, (doomed.record_id, plain.record_id))
    # Deleting again changes nothing, and the certificates stay for the kept record.
    assert store.delete([doomed.record_id]).result() == ()
    assert store.get(kept.record_id) == kept


def test_changes_report_each_deleted_id_once(store: Store) -> None:
    old, updated, fleeting, back = record(), record(), record(), record()
    for item in (old, updated, back):
        store.put_sync(item)
    since = store.state()
    store.update(updated.record_id, errors=("changed",)).result()
    store.put_sync(fleeting)
    store.delete([old.record_id, updated.record_id, fleeting.record_id,
                  back.record_id]).result()
    store.put_sync(back)  # deleted, then stored again: it existed before and exists now
    changes = store.changes_since(since)
    assert changes.created == () and changes.updated == (back.record_id,)
    assert changes.destroyed == (old.record_id, updated.record_id)  # not the fleeting one
    paged = store.changes_since(since, max_changes=1)
    assert (paged.updated, paged.destroyed, paged.has_more_changes) == (
        (updated.record_id,), (), True)
    seen = set(paged.updated + paged.destroyed + paged.created)
    state = paged.new_state
    while True:
        page = store.changes_since(state, max_changes=1)
        seen |= set(page.updated + page.destroyed + page.created)
        state = page.new_state
        if not page.has_more_changes:
            break
    assert {old.record_id, updated.record_id, back.record_id} <= seen


def test_learned_certificates_outlive_the_record_they_came_from(store: Store) -> None:
    item = record(from_address="alice@example.org")
    store.put_sync(item)
    store.delete([item.record_id]).result()
    [learned] = store.learned_certificates("alice@example.org")
    assert learned.certificate == LEAF and learned.chain == (INTERMEDIATE, ROOT)


def test_prune_deletes_what_was_received_before_the_moment(store: Store) -> None:
    ages = {days: record(received_at=RECEIVED - timedelta(days=days)) for days in (0, 29, 31, 400)}
    for item in ages.values():
        store.put_sync(item)
    cutoff = RECEIVED - timedelta(days=30)
    assert set(store.received_before(cutoff)) == {ages[31].record_id, ages[400].record_id}
    assert store.prune(cutoff, batch=1) == 2
    assert set(store.record_ids()) == {ages[0].record_id, ages[29].record_id}
    assert store.prune(cutoff) == 0


def test_read_only_handle_cannot_delete(path: Path) -> None:
    Store.open(path).close()
    with Store.open(path, readonly=True) as reader, pytest.raises(StoreError) as caught:
        reader.delete(["rsomething"])
    assert caught.value.reason == "io"


@pytest.mark.parametrize("garbage", ["", "abc", "-1", "01", "1.0", " 1", "1 ", "+1", "\u0661"])
def test_garbage_states_cannot_calculate_changes(store: Store, garbage: str) -> None:
    with pytest.raises(CannotCalculateChanges) as caught:
        store.changes_since(garbage)
    assert caught.value.reason == "cannot-calculate-changes"


def test_future_state_cannot_calculate_changes(store: Store) -> None:
    store.put_sync(record())
    with pytest.raises(CannotCalculateChanges, match="newer"):
        store.changes_since("2")


def test_max_changes_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        store.changes_since("0", max_changes=0)


def test_trimmed_change_log(path: Path) -> None:
    with Store.open(path, changelog_limit=4) as small:
        ids = [record().record_id for _ in range(10)]
        for record_id in ids:
            small.put_sync(record(record_id=record_id))
        assert small.stats()["changes"] == 4
        assert small.stats()["min_state"] == 6
        for too_old in ("0", "5"):
            with pytest.raises(CannotCalculateChanges, match="older"):
                small.changes_since(too_old)
        assert small.changes_since("6") == Changes("6", "10", tuple(ids[6:]), (), False)


# --------------------------------------------------------------------------- writer thread


def test_concurrent_puts_are_all_committed_in_batches(store: Store) -> None:
    threads, each = 8, 200
    futures: list[list[Future[int]]] = [[] for _ in range(threads)]
    records = [[record() for _ in range(each)] for _ in range(threads)]
    start = threading.Barrier(threads)

    def produce(n: int) -> None:
        start.wait()
        futures[n] = [store.put(one) for one in records[n]]

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    states = [future.result(30) for batch in futures for future in batch]
    assert max(states) == threads * each
    assert store.state() == str(threads * each)
    ids = {one.record_id for batch in records for one in batch}
    assert set(store.record_ids()) == ids
    assert set(store.changes_since("0").created) == ids
    assert store.stats()["commits"] < threads * each  # several records per transaction


def test_readers_keep_working_while_the_map_grows(path: Path) -> None:
    """Growing the map invalidates every open transaction of the process; readers
    in other threads must neither fail nor see a half-grown map."""
    seed = record()
    with Store.open(path, map_size=256 << 10, max_map_size=64 << 20) as growing:
        growing.put_sync(seed)
        done = threading.Event()
        failures: list[BaseException] = []

        def read() -> None:
            try:
                while not done.is_set():
                    assert growing.get(seed.record_id) == seed
                    assert growing.in_index("has_smime", [seed.record_id])
            except BaseException as exc:
                failures.append(exc)

        readers = [threading.Thread(target=read) for _ in range(4)]
        for reader in readers:
            reader.start()
        try:
            futures = [growing.put(record(certificates=(os.urandom(4096),)))
                       for _ in range(300)]
            for future in futures:
                future.result(30)
        finally:
            done.set()
            for reader in readers:
                reader.join()
        assert not failures
        assert growing.stats()["map_size"] > 256 << 10


def test_map_full_fails_the_batch_and_the_store_goes_on(path: Path) -> None:
    with Store.open(path, map_size=256 << 10, max_map_size=256 << 10) as tiny:
        huge = record(certificates=(os.urandom(1 << 20),))
        with pytest.raises(StoreError) as caught:
            tiny.put_sync(huge)
        assert caught.value.reason == "map-full"
        assert tiny.get(huge.record_id) is None
        small = record()
        assert tiny.put_sync(small) == 1
        assert tiny.get(small.record_id) == small


def test_map_grows_up_to_max_map_size(path: Path) -> None:
    with Store.open(path, map_size=256 << 10, max_map_size=8 << 20) as growing:
        huge = record(certificates=(os.urandom(1 << 20),))
        growing.put_sync(huge)
        assert growing.get(huge.record_id) == huge
        assert 256 << 10 < growing.stats()["map_size"] <= 8 << 20


@pytest.mark.parametrize("failure", [
    lmdb.DiskError("mdb_txn_commit", errno.ENOSPC),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_failed_batch_fails_exactly_its_futures(
    store: Store, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    gate, poison = record(), record()
    entered, release = threading.Event(), threading.Event()
    apply = store_writer.Put.apply

    def patched(self: store_writer.Put, batch: store_writer._Batch) -> None:
        if self.record_id == gate.record_id:
            entered.set()
            release.wait(10)
        if self.record_id == poison.record_id:
            raise failure
        apply(self, batch)

    monkeypatch.setattr(store_writer.Put, "apply", patched)
    first = store.put(gate)
    assert entered.wait(10)
    # The writer is busy with ``gate``: these three queue up for one batch.
    doomed = [store.put(record()), store.put(poison), store.put(record())]
    release.set()
    assert first.result(10) == 1
    for future in doomed:
        with pytest.raises(StoreError) as caught:
            future.result(10)
        assert caught.value.reason == "disk-full"
    assert store.state() == "1"
    assert list(store.record_ids()) == [gate.record_id]
    assert store.put_sync(record()) == 2


# --------------------------------------------------------- committing in the caller's thread


def test_put_sync_commits_in_the_calling_thread_without_a_writer_thread(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The milter's record costs no hand-off: the transaction runs in the
    thread that calls put_sync, and no writer thread is started for it."""
    seen: list[int] = []
    apply = store_writer.Put.apply

    def patched(self: store_writer.Put, batch: store_writer._Batch) -> None:
        seen.append(threading.get_ident())
        apply(self, batch)

    monkeypatch.setattr(store_writer.Put, "apply", patched)
    kept = record()
    assert store.put_sync(kept) == 1
    assert seen == [threading.get_ident()]
    assert store.get(kept.record_id) == kept
    assert not [t for t in threading.enumerate() if t.name.startswith("store-writer")]


def test_put_sync_keeps_the_order_of_earlier_queued_puts(store: Store) -> None:
    queued = [store.put(record()) for _ in range(50)]
    last = record()
    assert store.put_sync(last) == 51
    assert all(future.done() for future in queued)
    assert store.changes_since("0").created[-1] == last.record_id  # as the calls came


def test_concurrent_put_sync_threads_each_commit_their_own_state(store: Store) -> None:
    threads, each = 8, 50
    states: list[int] = []
    records = [[record() for _ in range(each)] for _ in range(threads)]
    start = threading.Barrier(threads)

    def produce(mine: list[Record]) -> None:
        start.wait()
        states.extend(store.put_sync(one) for one in mine)

    workers = [threading.Thread(target=produce, args=(mine,)) for mine in records]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(states) == list(range(1, threads * each + 1))
    ids = {one.record_id for mine in records for one in mine}
    assert set(store.changes_since("0").created) == ids
    assert store.stats()["commits"] == threads * each


@pytest.mark.parametrize("failure", [
    lmdb.DiskError("mdb_txn_commit", errno.ENOSPC),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_failed_put_sync_among_waiting_threads_fails_alone(
    store: Store, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """A failed transaction is aborted under the exclusive lock; threads
    waiting for the write transaction meanwhile must not hold that up."""
    poison = record()
    entered, release = threading.Event(), threading.Event()
    apply = store_writer.Put.apply

    def patched(self: store_writer.Put, batch: store_writer._Batch) -> None:
        if self.record_id == poison.record_id:
            entered.set()
            release.wait(10)
            raise failure
        apply(self, batch)

    monkeypatch.setattr(store_writer.Put, "apply", patched)
    outcomes: dict[str, object] = {}

    def put(one: Record) -> None:
        try:
            outcomes[one.record_id] = store.put_sync(one)
        except StoreError as exc:
            outcomes[one.record_id] = exc

    doomed = threading.Thread(target=put, args=(poison,))
    doomed.start()
    assert entered.wait(10)
    others = [record() for _ in range(4)]
    waiting = [threading.Thread(target=put, args=(one,)) for one in others]
    for thread in waiting:
        thread.start()
    release.set()
    for thread in (doomed, *waiting):
        thread.join(20)
        assert not thread.is_alive(), "a put_sync hangs"
    error = outcomes[poison.record_id]
    assert isinstance(error, StoreError) and error.reason == "disk-full"
    assert sorted(outcomes[one.record_id] for one in others) == [1, 2, 3, 4]  # type: ignore[type-var]
    assert store.get(poison.record_id) is None


# --------------------------------------------------------------------------- sync modes


def test_sync_mode_must_be_known(path: Path) -> None:
    with pytest.raises(ValueError, match="sync must be one of commit, interval"):
        Store.open(path, sync="never")


def test_interval_mode_flushes_in_the_background_at_most_every_second(path: Path) -> None:
    with Store.open(path, sync="interval") as opened:
        time.sleep(1.5)  # the schema set-up's flush
        before = opened.stats()
        assert before["sync"] == "interval" and before["syncs"] >= 1
        time.sleep(1.2)
        assert opened.stats()["syncs"] == before["syncs"]  # nothing new, no fsync
        for _ in range(20):
            opened.put_sync(record())
        assert opened.stats()["syncs"] == before["syncs"]  # not per commit
        deadline = time.monotonic() + 5
        while opened.stats()["syncs"] == before["syncs"]:
            assert time.monotonic() < deadline, "no background flush"
            time.sleep(0.05)
        assert opened.stats()["syncs"] == before["syncs"] + 1  # one for all 20


def test_a_durable_put_sync_is_flushed_before_it_returns(path: Path) -> None:
    with Store.open(path, sync="interval") as opened:
        syncs = opened.stats()["syncs"]
        opened.put_sync(record(), durable=True)
        assert opened.stats()["syncs"] == syncs + 1


def test_commit_mode_has_no_sync_thread(path: Path) -> None:
    with Store.open(path) as opened:
        opened.put_sync(record(), durable=True)
        stats = opened.stats()
        assert stats["sync"] == "commit" and stats["syncs"] == 0
        assert not [t for t in threading.enumerate() if t.name.startswith("store-sync")]


def test_close_flushes_what_the_interval_has_not(path: Path, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    flushed: list[str] = []
    sync = store_writer.Syncer._sync

    def counting(self: store_writer.Syncer) -> None:
        flushed.append(threading.current_thread().name)
        sync(self)

    monkeypatch.setattr(store_writer.Syncer, "_sync", counting)
    opened = Store.open(path, sync="interval")
    opened.put_sync(record())
    assert flushed == []  # well within the first second
    opened.close()
    assert flushed == [threading.current_thread().name]


# --------------------------------------------------------------------------- several processes


@pytest.mark.process
def test_several_processes_write_one_store_while_its_map_grows(tmp_path: Path) -> None:
    """A pre-forked milter: processes open the store after they start and
    commit from several threads each. Every record arrives, every commit
    gets its own state (the counter is read in each transaction), the change
    log is contiguous and reports each id once, and the map grows from
    256 KiB while the processes adopt the sizes the others set."""
    processes, threads, each = 4, 3, 40
    path = tmp_path / "store"
    load = storeload.Load(path, threads, each, map_size=256 << 10, max_map_size=64 << 20)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    out = context.Queue()
    children = [context.Process(target=storeload.write, args=(load, start, out))
                for _ in range(processes)]
    for child in children:
        child.start()
    try:
        results = [out.get(timeout=120) for _ in children]
    finally:
        for child in children:
            child.join(30)
    assert all(isinstance(result, storeload.Written) for result in results), results
    written: list[storeload.Written] = results
    assert [child.exitcode for child in children] == [0] * processes
    states = sorted(state for result in written for state in result.states)
    assert states == list(range(1, len(states) + 1))  # no state twice, none skipped
    ids = {record_id for result in written for record_id in result.ids}
    assert len(ids) == processes * threads * each
    assert len(states) == len(ids) + processes * threads * len(range(0, each, 7))
    assert sum(result.stats["map_adopted"] for result in written) > 0
    assert sum(result.stats["map_grown"] for result in written) > 0
    with Store.open(path, readonly=True) as reader:
        stats = reader.stats()
        assert stats["entries"] == len(ids) and stats["state"] == len(states)
        assert stats["map_size"] > 256 << 10
        assert stats["certs"] == len(ids) + 1  # each leaf, and the shared root once
        changes = reader.changes_since("0")
        assert sorted(changes.created) == sorted(ids) and not changes.updated
        assert len(changes.created) == len(set(changes.created))
        found = reader.get_many(ids)
        assert set(found) == ids
        assert all(found[rid].certificates[1] == storeload.ROOT for rid in ids)
    with raw_env(path) as env, env.begin() as txn:
        cursor = txn.cursor(db=raw_db(env, txn, "changes"))
        keys = [int.from_bytes(key, "big") for key in cursor.iternext(values=False)]
    assert keys == list(range(1, len(states) + 1))


# --------------------------------------------------------------------------- a crash of the process


@pytest.mark.process
def test_kill_9_right_after_put_sync_loses_nothing_in_interval_mode(path: Path) -> None:
    """A record put_sync returned for is in the OS's page cache, which a
    crash of the process does not take away, even though nothing was
    flushed to the disk yet."""
    code = (
        "import os, signal, sys\n"
        "from smime_milter.store import Store\n"
        "from tests.support.storeload import verified\n"
        "store = Store.open(sys.argv[1], sync='interval')\n"
        "for _ in range(50):\n"
        "    record = verified(os.urandom(2000))\n"
        "    print(record.record_id, store.put_sync(record), flush=True)\n"
        "print('syncs', store.stats()['syncs'], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'milter'}{os.pathsep}{REPO}"},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    *lines, last = done.stdout.splitlines()
    assert last == "syncs 0"  # killed before any flush to the disk
    returned = dict(line.split() for line in lines)
    assert len(returned) == 50
    with Store.open(path, readonly=True) as reader:
        assert set(reader.get_many(returned)) == set(returned)
        assert reader.state() == "50"
        assert sorted(reader.changes_since("0").created) == sorted(returned)


# --------------------------------------------------------------------------- open and close


def test_reopen_keeps_everything(path: Path) -> None:
    kept = failed()
    with Store.open(path) as first:
        first.put_sync(kept)
        first.update(kept.record_id, verified_at=RECEIVED + timedelta(days=1)).result()
    with Store.open(path) as second:
        assert second.get(kept.record_id) == replace(
            kept, verified_at=RECEIVED + timedelta(days=1)
        )
        assert second.state() == "1"
        assert second.put_sync(record()) == 2


def test_one_environment_per_path_in_a_process(path: Path, tmp_path: Path) -> None:
    first = Store.open(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    second = Store.open(link)
    reader = Store.open(path, readonly=True)
    kept = record()
    second.put_sync(kept)
    assert first.get(kept.record_id) == kept == reader.get(kept.record_id)
    with pytest.raises(StoreError) as caught:
        reader.put(record())
    assert caught.value.reason == "io"
    second.close()
    reader.close()
    assert first.put_sync(record()) == 2
    first.close()
    with Store.open(link) as again:
        assert again.state() == "2"


def test_writable_open_of_a_path_open_read_only_is_refused(path: Path) -> None:
    Store.open(path).close()
    with Store.open(path, readonly=True), pytest.raises(StoreError) as caught:
        Store.open(path)
    assert caught.value.reason == "io"


@pytest.mark.process
def test_read_only_open_from_another_process_while_writing(store: Store, path: Path) -> None:
    kept = record()
    store.put_sync(kept)
    code = (
        "import sys\n"
        "from smime_milter.store.facade import Store\n"
        "with Store.open(sys.argv[1], readonly=True) as s:\n"
        "    r = s.get(sys.argv[2])\n"
        "    print(r.status.value, r.signers[0].serial, s.state(), len(r.certificates))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), kept.record_id],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'milter'}{os.pathsep}{REPO}"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["signed/verified", str(2**100 + 7), "1", "2"]
    assert store.put_sync(record()) == 2  # the writer is unaffected


def test_read_only_open_of_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(StoreError) as caught:
        Store.open(missing, readonly=True)
    assert caught.value.reason == "missing"
    assert str(missing) in str(caught.value)
    assert not missing.exists()


def test_schema_mismatch(path: Path) -> None:
    Store.open(path).close()
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.put(b"schema", b"1", db=env.open_db(b"meta", txn=txn, create=False))
    for readonly in (False, True):
        with pytest.raises(StoreError, match=r"schema version b'1'.*ingest") as caught:
            Store.open(path, readonly=readonly)
        assert caught.value.reason == "schema"


def test_foreign_lmdb_environment_is_not_taken_over(path: Path) -> None:
    path.mkdir()
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"other", txn=txn))
    for readonly in (True, False):
        with pytest.raises(StoreError, match="not an smime-milter store") as caught:
            Store.open(path, readonly=readonly)
        assert caught.value.reason == "schema"


def test_corrupt_data_file(path: Path) -> None:
    with Store.open(path) as opened:
        opened.put_sync(record())
    data = path / "data.mdb"
    data.write_bytes(b"this is not an LMDB file " * 1000)
    for readonly in (False, True):
        with pytest.raises(StoreError) as caught:
            Store.open(path, readonly=readonly)
        assert caught.value.reason == "corrupt"
        assert str(path) in str(caught.value) and "MDB_INVALID" in str(caught.value)


def test_corrupt_record(path: Path) -> None:
    kept = record()
    Store.open(path).close()
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.put(kept.record_id.encode(), b'{"id": 1', db=env.open_db(b"records", txn=txn))
    with Store.open(path, readonly=True) as reader, pytest.raises(StoreError) as caught:
        reader.get(kept.record_id)
    assert caught.value.reason == "corrupt"
    assert kept.record_id in str(caught.value)


def test_close_drains_queued_puts_then_refuses_work(path: Path) -> None:
    opened = Store.open(path)
    futures = [opened.put(record()) for _ in range(100)]
    opened.close()
    assert sorted(future.result(0) for future in futures)[-1] == 100
    for call in (lambda: opened.put(record()), lambda: opened.get("r1"), opened.state,
                 lambda: opened.update("r1", status=None)):
        with pytest.raises(StoreError) as caught:
            call()
        assert caught.value.reason == "closed"
    opened.close()  # a second close is harmless
    with Store.open(path, readonly=True) as reader:
        assert reader.stats()["entries"] == 100


def test_stats(store: Store) -> None:
    store.put_sync(record())
    stats = store.stats()
    assert stats["entries"] == 1 and stats["state"] == 1 and stats["min_state"] == 0
    assert stats["map_size"] == 1 << 30
    assert 0 < stats["used_bytes"] < stats["map_size"]


# --------------------------------------------------------------------------- learned certificates


def test_capabilities_round_trip_and_are_optional_in_json(path: Path) -> None:
    oids = ("2.16.840.1.101.3.4.1.42", "1.2.840.113549.3.7")
    kept = record(signers=(signer(capabilities=oids), signer(certificate=None, path=())))
    with Store.open(path) as opened:
        opened.put_sync(kept)
        assert opened.get(kept.record_id) == kept
    with raw_env(path) as env, env.begin() as txn:
        doc = json.loads(txn.get(kept.record_id.encode(), db=raw_db(env, txn, "records")))
    assert doc["signers"][0]["capabilities"] == list(oids)
    assert "capabilities" not in doc["signers"][1]


def test_learned_entry_layout_matches_the_schema_document(path: Path) -> None:
    kept = record(record_id="rlearned", from_address="Alice@Example.ORG",
                  signers=(signer(capabilities=("1.2.3",)),))
    with Store.open(path) as opened:
        opened.put_sync(kept)
    with raw_env(path) as env, env.begin() as txn:
        learned = dict(txn.cursor(db=raw_db(env, txn, "learned")))
    assert learned == {
        b"alice@example.org\0" + sha(LEAF).encode(): json.dumps(
            {"receivedAt": "2026-06-01T12:30:05Z", "recordId": "rlearned",
             "capabilities": ["1.2.3"], "chain": [sha(INTERMEDIATE), sha(ROOT)]},
            separators=(",", ":"),
        ).encode()
    }
    with Store.open(path, readonly=True) as reader:
        (entry,) = reader.learned_certificates("ALICE@example.org")
    assert entry == LearnedCertificate(LEAF, RECEIVED, "rlearned", ("1.2.3",),
                                       (INTERMEDIATE, ROOT))


@pytest.mark.parametrize("change", [
    {"status_at_delivery": Status.SIGNED_FAILED},
    {"status_at_delivery": Status.SIGNED},
    {"status_at_delivery": None},
    {"from_address": None},
    {"signers": (signer(from_match=False),)},
    {"signers": (signer(chain_ok=False),)},
    {"signers": (signer(signature_ok=False),)},
    {"signers": (signer(errors=("extra",)),)},
    {"signers": (signer(certificate=None, path=()),)},
])
def test_only_proven_signers_of_verified_mail_are_learned(
    store: Store, change: dict[str, object]
) -> None:
    store.put_sync(record(**change))
    assert store.learned_certificates("alice@example.org") == []
    store.put_sync(record())
    assert [c.certificate for c in store.learned_certificates("alice@example.org")] == [LEAF]


def test_a_newer_message_replaces_an_older_one_and_not_the_reverse(store: Store) -> None:
    newer = record(received_at=RECEIVED + timedelta(hours=1))
    store.put_sync(newer)
    store.put_sync(record(received_at=RECEIVED, signers=(signer(capabilities=("1.9",)),)))
    (entry,) = store.learned_certificates("alice@example.org")
    assert (entry.record_id, entry.received_at, entry.capabilities) == (
        newer.record_id, newer.received_at, ())
    newest = record(received_at=RECEIVED + timedelta(hours=2),
                    signers=(signer(capabilities=("1.9",)),))
    store.put_sync(newest)
    (entry,) = store.learned_certificates("alice@example.org")
    assert (entry.record_id, entry.capabilities) == (newest.record_id, ("1.9",))


def test_at_most_a_few_certificates_per_address_newest_kept(store: Store) -> None:
    leaves = [b"\x30\x82leaf %d" % n * 10 for n in range(MAX_LEARNED_PER_ADDRESS + 3)]
    # Written out of order: age, not arrival, decides what is dropped.
    order = [3, 0, 10, 5, 1, 9, 2, 8, 4, 7, 6]
    for n in order:
        store.put_sync(record(received_at=RECEIVED + timedelta(minutes=n),
                              signers=(signer(certificate=leaves[n], path=(leaves[n],)),)))
    learned = store.learned_certificates("alice@example.org")
    assert [c.certificate for c in learned] == leaves[::-1][:MAX_LEARNED_PER_ADDRESS]
    assert store.learned_certificates("bob@example.org") == []
    store.put_sync(record(received_at=RECEIVED - timedelta(days=1),
                          signers=(signer(certificate=b"\x30\x82too old" * 9, path=()),)))
    assert store.learned_certificates("alice@example.org") == learned


def test_a_version_2_store_is_read_as_is_and_upgraded_by_the_writer(path: Path) -> None:
    with Store.open(path) as opened:
        opened.put_sync(record())
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.drop(env.open_db(b"learned", txn=txn, create=False), delete=True)
        txn.put(b"schema", b"2", db=env.open_db(b"meta", txn=txn, create=False))
    with Store.open(path, readonly=True) as reader:
        assert reader.learned_certificates("alice@example.org") == []
        assert reader.stats()["entries"] == 1
    with Store.open(path) as writer:
        writer.put_sync(record())
        assert len(writer.learned_certificates("alice@example.org")) == 1
    with raw_env(path) as env, env.begin() as txn:
        assert txn.get(b"schema", db=raw_db(env, txn, "meta")) == str(SCHEMA_VERSION).encode()
    assert SCHEMA_VERSION == 4


def test_a_version_3_store_is_read_as_is_and_upgraded_by_the_writer(path: Path) -> None:
    """Version 4 only adds deletions to the change log: a version 3 store has
    everything, and is marked 4 once a writer (which may delete) opens it."""
    item = record()
    with Store.open(path) as opened:
        opened.put_sync(item)
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.put(b"schema", b"3", db=env.open_db(b"meta", txn=txn, create=False))
    with Store.open(path, readonly=True) as reader:
        assert reader.get(item.record_id) == item
        assert len(reader.learned_certificates("alice@example.org")) == 1
    with raw_env(path) as env, env.begin() as txn:
        assert txn.get(b"schema", db=raw_db(env, txn, "meta")) == b"3"
    with Store.open(path) as writer:
        assert writer.delete([item.record_id]).result() == (item.record_id,)
    with raw_env(path) as env, env.begin() as txn:
        assert txn.get(b"schema", db=raw_db(env, txn, "meta")) == b"4"


def test_corrupt_learned_entry(path: Path) -> None:
    Store.open(path).close()
    with raw_env(path, readonly=False) as env, env.begin(write=True) as txn:
        txn.put(b"alice@example.org\0" + sha(LEAF).encode(), b"{",
                db=env.open_db(b"learned", txn=txn))
    with Store.open(path, readonly=True) as reader, pytest.raises(StoreError) as caught:
        reader.learned_certificates("alice@example.org")
    assert caught.value.reason == "corrupt"


def test_a_release_is_claimed_once_kept_on_disk_and_not_a_jmap_change(path: Path) -> None:
    """``resubmissions``, the optional member ``smime-milter release`` keeps."""
    first = Resubmitted(by="officer", at=RECEIVED + timedelta(hours=1))
    second = Resubmitted(by="deputy", at=RECEIVED + timedelta(hours=2))
    with Store.open(path) as opened:
        opened.put_sync(record(record_id="rheld"))
        state = opened.state()
        assert opened.claim_resubmission("rheld", first).result() is None
        # Claimed: a second release is refused and told about the first.
        assert opened.claim_resubmission("rheld", second).result() == first
        done = replace(first, queue_id="4QUEUED")
        assert opened.amend_resubmission("rheld", first, done).result()
        assert opened.claim_resubmission("rheld", second).result() == done
        assert opened.claim_resubmission("rheld", second, force=True).result() is None
        assert opened.amend_resubmission("rheld", second, None).result()  # withdrawn
        assert opened.get("rheld").resubmissions == (done,)  # type: ignore[union-attr]
        assert opened.state() == state  # not an Email/changes update
        with pytest.raises(StoreError) as missing:
            opened.claim_resubmission("rnone", first).result()
        assert missing.value.reason == "missing"
    with raw_env(path) as env, env.begin() as txn:
        doc = json.loads(txn.get(b"rheld", db=raw_db(env, txn, "records")))
    assert doc["resubmissions"] == [
        {"by": "officer", "at": "2026-06-01T13:30:05Z", "queueId": "4QUEUED"}]

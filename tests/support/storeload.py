"""A process that writes records into a shared store from several threads,
as one pre-forked milter process does (tests/test_store.py starts several).

Runs in a child started by :mod:`multiprocessing` (spawn), so everything it
needs is importable and its arguments and result are picklable.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smime_milter.model import SignerResult, Status, new_record_id
from smime_milter.store import Record, Store

RECEIVED = datetime(2026, 6, 1, 12, 30, 5, tzinfo=UTC)
#: Shared by every record: the store keeps it once however many processes write it.
ROOT = b"\x30\x82shared root DER" * 40


@dataclass(frozen=True, slots=True)
class Load:
    path: Path
    threads: int
    each: int
    map_size: int
    max_map_size: int
    sync: str = "interval"


@dataclass(frozen=True, slots=True)
class Written:
    """What one process saw: each put_sync's record id and returned state,
    and its store counters (commits, map growth and adoption)."""

    ids: tuple[str, ...]
    states: tuple[int, ...]
    stats: dict[str, Any]


def verified(leaf: bytes) -> Record:
    """A verified record whose own leaf certificate makes the store grow."""
    signer = SignerResult(
        emails=("alice@example.org",), subject="CN=Alice", issuer="CN=Example CA",
        serial=int.from_bytes(leaf[:8], "big"), digest_algorithm="sha256",
        signature_algorithm="rsassa_pkcs1v15", signature_ok=True, chain_ok=True,
        from_match=True, errors=(), signing_time=RECEIVED, certificate=leaf,
        path=(leaf, ROOT),
    )
    return Record(
        record_id=new_record_id(), received_at=RECEIVED, envelope_sender="alice@example.org",
        envelope_recipients=("bob@example.net",), message_id="<load@example.org>",
        from_address="alice@example.org", queue_id="4QLOAD",
        status_at_delivery=Status.SIGNED_VERIFIED, errors_at_delivery=None,
        status=Status.SIGNED_VERIFIED, errors=None, verified_at=RECEIVED,
        signers=(signer,), certificates=(leaf, ROOT), layer="multipart/signed",
        signed_part="1",
    )


def write(load: Load, start: Any, out: Any) -> None:
    """Waits at ``start`` (a Barrier of every process), then writes
    ``threads`` x ``each`` records, every fifth one durable and every
    seventh one stored again with a new status (a logged update); puts a
    :class:`Written` on ``out``, or the failure's repr."""
    try:
        out.put(_write(load, start))
    except BaseException as exc:
        out.put(repr(exc))


def _write(load: Load, start: Any) -> Written:
    ids: list[str] = []
    states: list[int] = []
    lock = threading.Lock()
    failures: list[BaseException] = []
    with Store.open(load.path, map_size=load.map_size, max_map_size=load.max_map_size,
                    sync=load.sync) as store:
        start.wait(60)

        def body() -> None:
            try:
                for n in range(load.each):
                    record = verified(os.urandom(3000))
                    state = store.put_sync(record, durable=n % 5 == 0)
                    mine = [(record.record_id, state)]
                    if n % 7 == 0:
                        changed = replace(record, status=Status.SIGNED_FAILED,
                                          errors=("revoked",))
                        mine.append((record.record_id, store.put_sync(changed)))
                    with lock:
                        for record_id, got in mine:
                            ids.append(record_id)
                            states.append(got)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=body) for _ in range(load.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return Written(tuple(ids), tuple(states), store.stats())

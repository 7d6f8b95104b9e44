"""The :class:`Store`: the LMDB store of verification results, as callers see it.

The milter writes, a JMAP server reads. The on-disk layout is a contract with
readers written in other languages and is specified in
``docs/store-schema.rst`` (:mod:`.codec` writes it, :mod:`.migrations`
versions it); change it only together with ``SCHEMA_VERSION``.

Concurrency model:

* one LMDB environment per process and path (LMDB forbids opening the same
  files twice in one process): :meth:`Store.open` keeps a registry keyed by
  realpath and hands out handles that share it (:mod:`.environment`). Any
  number of processes may open the same store for writing (a pre-forked
  milter), each after its fork;
* :meth:`Store.put_sync` (the milter's record) commits in the calling
  thread (:class:`~.writer.Committer`); the calls that return a
  :class:`~concurrent.futures.Future` queue their work for a writer thread
  that batches it (:class:`~.writer.Writer`, started on first use). Either
  way a result is returned only after the transaction holding it committed,
  and every transaction reads the change-log counter afresh;
* ``sync="commit"`` flushes every commit to the disk; ``sync="interval"``
  opens LMDB with MDB_NOSYNC and flushes at most every second in a
  background thread (:class:`~.writer.Syncer`), or at once for
  ``put_sync(durable=True)``: see "Durability" in ``docs/store-schema.rst``;
* reads use short read transactions from any thread. Growing the map (and
  closing) invalidates every transaction the process has open, so those take a
  process-wide exclusive lock that readers share.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lmdb

from smime_milter.model import Status, new_record_id
from smime_milter.store.changelog import CREATED, collect_changes, parse_state, read_counter
from smime_milter.store.codec import (
    INDEXES,
    decode_json,
    id_key,
    learned_prefix,
    record_value,
    resubmission_json,
    status_json,
    texts_or_none,
    utc_date,
    view_value,
)
from smime_milter.store.environment import (
    Database,
    Env,
    open_readonly_env,
    open_writable_env,
    translate,
)
from smime_milter.store.migrations import reader_dbs
from smime_milter.store.records import (
    CannotCalculateChanges,
    Changes,
    LearnedCertificate,
    Record,
    Resubmitted,
    StatusView,
    StoreError,
    TrustEpoch,
    utc,
)
from smime_milter.store.writer import (
    AmendResubmission,
    ClaimResubmission,
    Committer,
    Delete,
    Op,
    Put,
    SetTrust,
    Syncer,
    Update,
    Writer,
)

# Besides Store and UNSET, names that moved out of this module and stay
# importable from it for its older importers; new code imports them from
# smime_milter.store (new_record_id from smime_milter.model).
__all__ = [
    "UNSET",
    "CannotCalculateChanges",
    "Changes",
    "Record",
    "StatusView",
    "Store",
    "StoreError",
    "new_record_id",
    "utc_date",
]

#: The values of Store.open's ``sync`` (and of ``[store] sync``).
SYNC_MODES = ("commit", "interval")

#: Keys read per read transaction by the iterators, so none holds a snapshot
#: (and blocks map growth) for long.
_CHUNK = 1024


class _Unset(enum.Enum):
    UNSET = "UNSET"


#: "Leave this field alone" for :meth:`Store.update` (None means JSON null).
UNSET = _Unset.UNSET


def _key_chunk(cursor: lmdb.Cursor[bytes], after: bytes | None) -> list[bytes]:
    """Up to _CHUNK keys following ``after`` (from the start when None)."""
    found = cursor.first() if after is None else cursor.set_range(after)
    if found and cursor.key() == after:
        found = cursor.next()
    keys: list[bytes] = []
    while found and len(keys) < _CHUNK:
        keys.append(cursor.key())
        found = cursor.next()
    return keys


class _Opened:
    """The registry's entry for a path open in this process: its environment,
    how it commits (None when opened read-only), its writer thread (started
    on first use) and how many handles share them."""

    __slots__ = ("_batch_limit", "_writer", "_writer_lock", "committer", "env", "handles")

    def __init__(self, env: Env, committer: Committer | None, batch_limit: int = 1) -> None:
        self.env = env
        self.committer = committer
        self.handles = 0
        self._batch_limit = batch_limit
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()

    def queued_writer(self) -> Writer | None:
        """The writer thread when it has work queued or in flight."""
        with self._writer_lock:
            writer = self._writer
        return writer if writer is not None and writer.pending else None

    def writer(self) -> Writer:
        """The writer thread, started now if it was not yet: a milter
        process that only calls put_sync never starts one."""
        assert self.committer is not None
        with self._writer_lock:
            if self.env.closed:
                raise StoreError("closed", f"{self.env.path}: store is closed")
            if self._writer is None:
                self._writer = Writer(self.env, self.committer, self._batch_limit)
            return self._writer

    def shutdown(self) -> None:
        """Stops accepting work, lets the writer finish its queue, flushes
        what the sync thread has not flushed yet, closes LMDB."""
        self.env.stop_accepting()
        syncer = None if self.committer is None else self.committer.syncer
        try:
            with self._writer_lock:
                writer = self._writer
            if writer is not None:
                writer.stop()
            if syncer is not None:
                syncer.stop()
        finally:
            self.env.close(None if syncer is None else syncer.final_flush)


_REGISTRY: dict[str, _Opened] = {}
_REGISTRY_LOCK = threading.Lock()


def _open_readonly(path: str) -> _Opened:
    shared = open_readonly_env(path)
    try:
        shared.dbs = reader_dbs(shared.env, path)
    except lmdb.Error as exc:
        shared.env.close()
        raise translate(exc, f"opening {path}") from exc
    except BaseException:
        shared.env.close()
        raise
    return _Opened(shared, None)


def _open_writable(
    path: str, map_size: int, max_map_size: int, changelog_limit: int, batch_limit: int,
    create: bool, sync: str,
) -> _Opened:
    shared = open_writable_env(path, map_size, create=create, sync=sync == "commit")
    try:
        committer = Committer(shared, max_map_size, changelog_limit, None)
        committer.setup()
    except BaseException:
        shared.close()
        raise
    if sync == "interval":
        committer.syncer = Syncer(shared)
        committer.syncer.committed()  # the schema set-up, if it wrote anything
    return _Opened(shared, committer, batch_limit)


# --------------------------------------------------------------------------- public API


class Store:
    """A handle on the store at one path; see the module docstring."""

    __slots__ = ("_closed", "_committer", "_env", "_lock", "_opened")

    def __init__(self, opened: _Opened, readonly: bool) -> None:
        """Use :meth:`open`."""
        self._opened = opened
        self._env = opened.env
        #: None for a read-only handle (whether or not the path is writable).
        self._committer = None if readonly else opened.committer
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        readonly: bool = False,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 36,
        changelog_limit: int = 1_000_000,
        batch_limit: int = 256,
        create: bool = True,
        sync: str = "commit",
    ) -> Store:
        """Opens the store in directory ``path``, creating it when writable
        and ``create`` (the milter's open). Readers pass ``create=False``: a
        mistyped path must fail (StoreError "missing") rather than be
        answered from a new empty store.

        ``sync`` is ``"commit"`` (every commit is on the disk before it
        returns) or ``"interval"`` (commits reach the OS at once and the
        disk within about a second, ``put_sync(durable=True)`` at once; the
        milter daemon's ``[store] sync``).

        A path already open in this process reuses that environment; its
        first opener's sizes, limits and sync mode apply. A read-only open
        ignores them and uses the map size the writer chose. Open a store
        after a fork, never before: an environment must not be inherited.
        """
        if changelog_limit < 1 or batch_limit < 1 or max_map_size < map_size:
            raise ValueError(
                "need changelog_limit >= 1, batch_limit >= 1, max_map_size >= map_size"
            )
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {sync!r}")
        key = os.path.realpath(path)
        with _REGISTRY_LOCK:
            opened = _REGISTRY.get(key)
            if opened is None:
                opened = (
                    _open_readonly(key)
                    if readonly
                    else _open_writable(key, map_size, max_map_size, changelog_limit,
                                        batch_limit, create, sync)
                )
                _REGISTRY[key] = opened
            elif opened.env.readonly and not readonly:
                raise StoreError("io", f"{key} is already open read-only in this process")
            opened.handles += 1
        return cls(opened, readonly)

    # ----------------------------------------------------------------- writes

    def put(self, record: Record) -> Future[int]:
        """Queues ``record`` (replacing one with its id); resolves to the state
        after the commit that holds it."""
        return self._submit(Put(record))

    def put_sync(self, record: Record, timeout: float | None = 30.0, *,
                 durable: bool = False) -> int:
        """Stores ``record`` (replacing one with its id) in one write
        transaction of the calling thread; returns the state after it. Once
        this returns the record survives a crash of the process; with
        ``durable`` (a diverted message the milter must not lose) or in
        "commit" mode also one of the system. ``timeout`` is accepted for
        the callers of the queued form and not enforced: waiting for the
        write lock of another thread or process cannot be interrupted;
        it applies only while work queued earlier by :meth:`put` and the
        like is still pending: then this record queues behind it, so that
        commits keep the order of the calls."""
        committer = self._committing()
        op = Put(record)
        writer = self._opened.queued_writer()
        if writer is not None:
            state_after: int = writer.submit(op).result(timeout)
            if durable and committer.syncer is not None:
                committer.syncer.sync_now()
            return state_after
        outcomes, state = committer.run((op,), durable=durable)
        result: int = op.result(outcomes[0], state)
        return result

    def update(
        self,
        record_id: str,
        *,
        status: Status | _Unset | None = UNSET,
        errors: Sequence[str] | _Unset | None = UNSET,
        verified_at: datetime | _Unset | None = UNSET,
        status_at_delivery: Status | _Unset | None = UNSET,
        errors_at_delivery: Sequence[str] | _Unset | None = UNSET,
    ) -> Future[bool]:
        """Changes the given fields; resolves to True when that appended a
        change-log entry (never for smimeVerifiedAt alone, RFC 9219 §4.3)."""
        patch: dict[str, Any] = {}
        if status is not UNSET:
            patch["smimeStatus"] = status_json(status)
        if errors is not UNSET:
            patch["smimeErrors"] = texts_or_none(errors)
        if verified_at is not UNSET:
            patch["smimeVerifiedAt"] = utc_date(verified_at)
        if status_at_delivery is not UNSET:
            patch["smimeStatusAtDelivery"] = status_json(status_at_delivery)
        if errors_at_delivery is not UNSET:
            patch["smimeErrorsAtDelivery"] = texts_or_none(errors_at_delivery)
        return self._submit(Update(record_id, patch))

    def claim_resubmission(
        self, record_id: str, entry: Resubmitted, *, force: bool = False
    ) -> Future[Resubmitted | None]:
        """Records that ``record_id`` is being released (before the message
        goes out). Resolves to None when recorded, or, when the record was
        released before and ``force`` is off, to that latest earlier release
        (and records nothing). An unknown id fails with StoreError("missing")."""
        return self._submit(ClaimResubmission(record_id, resubmission_json(entry), force))

    def amend_resubmission(
        self, record_id: str, claimed: Resubmitted, new: Resubmitted | None
    ) -> Future[bool]:
        """Replaces a release :meth:`claim_resubmission` recorded with ``new``
        (say, with the queue id now known) or withdraws it (None: nothing was
        submitted after all); resolves to whether it was still there."""
        return self._submit(AmendResubmission(
            record_id, resubmission_json(claimed),
            None if new is None else resubmission_json(new)))

    def delete(self, record_ids: Iterable[str]) -> Future[tuple[str, ...]]:
        """Queues the deletion of the records ``record_ids``; resolves to the
        ids that existed. Each is logged, so Email/changes reports it
        destroyed. Ids no record can have are ignored."""
        return self._submit(Delete([rid for rid in dict.fromkeys(record_ids)
                                     if id_key(rid) is not None]))

    def prune(self, received_before: datetime, *, batch: int = 1000) -> int:
        """Deletes every record received before ``received_before`` (the
        retention job), ``batch`` per commit; returns how many."""
        deleted = 0
        doomed: list[str] = []
        for record_id in self.received_before(received_before):
            doomed.append(record_id)
            if len(doomed) >= batch:
                deleted += len(self.delete(doomed).result())
                doomed = []
        if doomed:
            deleted += len(self.delete(doomed).result())
        return deleted

    def received_before(self, moment: datetime) -> Iterator[str]:
        """Ids of the records received before ``moment`` (a retention scan
        of the small ``status`` entries); later chunks may see newer commits."""
        limit = utc(moment)
        batch: list[str] = []
        for record_id in self.record_ids():
            batch.append(record_id)
            if len(batch) >= _CHUNK:
                yield from self._received_before(batch, limit)
                batch = []
        yield from self._received_before(batch, limit)

    def _received_before(self, ids: list[str], limit: datetime) -> list[str]:
        views = self.views(ids)
        return [rid for rid in ids if rid in views and views[rid].received_at < limit]

    def record_trust(self, generation: str, changed_at: datetime) -> Future[bool]:
        """Notes that current statuses are now computed with the anchor set
        ``generation``; when that differs from the stored one, every status
        verified before ``changed_at`` becomes stale. Resolves to whether it
        differed."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", generation):
            raise ValueError(f"not a trust generation: {generation!r}")
        return self._submit(SetTrust(generation, changed_at))

    def _committing(self) -> Committer:
        self._check_open()
        if self._committer is None:
            raise StoreError("io", f"{self._env.path}: store handle is read-only")
        if self._env.closed:
            raise StoreError("closed", f"{self._env.path}: store is closed")
        return self._committer

    def _submit(self, op: Op) -> Future[Any]:
        self._committing()
        return self._opened.writer().submit(op)

    # ----------------------------------------------------------------- reads

    def get(self, record_id: str) -> Record | None:
        return self.get_many((record_id,)).get(record_id)

    def get_many(self, ids: Iterable[str]) -> dict[str, Record]:
        """The records among ``ids`` that exist, read from one snapshot."""
        self._check_open()
        dbs = self._env.dbs
        found: dict[str, Record] = {}
        with self._env.reading("reading records") as txn:
            cert = self._blob_loader(txn, "certs")
            crl = self._blob_loader(txn, "crls")
            for record_id in ids:
                key = id_key(record_id)
                raw = None if key is None else txn.get(key, db=dbs["records"])
                if raw is not None:
                    found[record_id] = self._decode(record_id, raw, cert, crl)
        return found

    def views(self, ids: Iterable[str]) -> dict[str, StatusView]:
        """The status members of the records among ``ids`` that exist, from
        one snapshot; several times cheaper than :meth:`get_many`."""
        return self.state_and_views(ids)[1]

    def state_and_views(self, ids: Iterable[str]) -> tuple[str, dict[str, StatusView]]:
        """The state and :meth:`views` from one snapshot, so that the state
        is exactly the one the values belong to (what JMAP's Email/get
        returns: a later change is after it, an earlier one is in them)."""
        self._check_open()
        db = self._env.dbs["status"]
        found: dict[str, StatusView] = {}
        with self._env.reading("reading statuses") as txn:
            state = str(read_counter(txn, self._env, b"state"))
            for record_id in ids:
                key = id_key(record_id)
                raw = None if key is None else txn.get(key, db=db)
                if raw is not None:
                    try:
                        found[record_id] = view_value(record_id, decode_json(raw.decode()))
                    except (ValueError, KeyError, TypeError, AttributeError) as exc:
                        raise StoreError(
                            "corrupt",
                            f"{self._env.path}: record {record_id} is unreadable ({exc!r})",
                        ) from exc
        return state, found

    def due(self, verified_before: datetime, *, or_after: datetime | None = None
            ) -> Iterator[str]:
        """Ids of re-validatable records whose smimeVerifiedAt is before
        ``verified_before`` (oldest first) or, with ``or_after``, after that
        moment: a status "verified" in the future came from a wrong clock
        and is stale too. Later chunks may see newer commits."""
        self._check_open()
        before = int(utc(verified_before).timestamp())
        db = self._env.dbs["verify_due"]
        for key in self._keys_raw(db, "reading verify_due"):
            if int.from_bytes(key[:8], "big") >= before:
                break
            yield key[8:].decode("ascii")
        if or_after is None:
            return
        # Keys are whole seconds: "after" is from the next whole second on,
        # and never again a key yielded above.
        start = max(math.floor(utc(or_after).timestamp()) + 1, before)
        for key in self._keys_raw(db, "reading verify_due", after=start.to_bytes(8, "big")):
            yield key[8:].decode("ascii")

    def trust_epoch(self) -> TrustEpoch | None:
        """The recorded trust-anchor generation, or None before the first."""
        self._check_open()
        meta = self._env.dbs["meta"]
        with self._env.reading("reading the trust epoch") as txn:
            generation = txn.get(b"trust_generation", db=meta)
            changed_at = txn.get(b"trust_changed_at", db=meta)
        if generation is None or changed_at is None:
            return None
        return TrustEpoch(
            generation.decode("ascii"), datetime.fromtimestamp(int(changed_at), UTC)
        )

    def learned_certificates(self, address: str) -> list[LearnedCertificate]:
        """The certificates ``address`` (compared lowercased) signed verified
        mail with, newest message first; at most
        :data:`MAX_LEARNED_PER_ADDRESS`. Empty on a version 2 store opened
        read-only, which has learned nothing yet (a handle opened before its
        writer upgraded it keeps answering that until it is reopened)."""
        self._check_open()
        db = self._env.dbs.get("learned")
        prefix = learned_prefix(address)
        if db is None or prefix is None:
            return []
        found: list[tuple[tuple[str, str], LearnedCertificate]] = []
        with self._env.reading("reading learned certificates") as txn:
            cert = self._blob_loader(txn, "certs")
            cursor = txn.cursor(db=db)
            if cursor.set_range(prefix):
                for key, value in cursor.iternext():
                    if not key.startswith(prefix):
                        break
                    found.append(self._learned_value(key, value, cert))
        found.sort(key=lambda item: item[0], reverse=True)
        return [learned for _order, learned in found]

    def in_index(self, index: str, record_ids: Iterable[str]) -> set[str]:
        """Which of ``record_ids`` are in ``index``."""
        db = self._index_db(index)
        with self._env.reading(f"reading index {index}") as txn:
            return {
                record_id
                for record_id in record_ids
                if (key := id_key(record_id)) is not None and txn.get(key, db=db) is not None
            }

    def index_members(self, index: str) -> Iterator[str]:
        """Ids in ``index``, in key order; later chunks may see newer commits."""
        return self._keys(self._index_db(index), f"reading index {index}")

    def record_ids(self) -> Iterator[str]:
        """Every record id, in key order; later chunks may see newer commits."""
        self._check_open()
        return self._keys(self._env.dbs["records"], "listing records")

    def state(self) -> str:
        self._check_open()
        with self._env.reading("reading the state") as txn:
            return str(read_counter(txn, self._env, b"state"))

    def changes_since(self, state: str, max_changes: int | None = None) -> Changes:
        """Email/changes from ``state``: ids de-duplicated, creation wins over
        update; with ``max_changes`` the new state is an intermediate one."""
        self._check_open()
        since = parse_state(state)
        if max_changes is not None and max_changes < 1:
            raise ValueError(f"max_changes must be positive, got {max_changes}")
        with self._env.reading("reading the change log") as txn:
            current = read_counter(txn, self._env, b"state")
            oldest = read_counter(txn, self._env, b"min_state")
            if since > current:
                raise CannotCalculateChanges(f"state {state} is newer than the store ({current})")
            if since < oldest:
                raise CannotCalculateChanges(
                    f"state {state} is older than the change log (oldest {oldest})"
                )
            cursor = txn.cursor(db=self._env.dbs["changes"])
            return collect_changes(cursor, since, current, max_changes)

    def stats(self) -> dict[str, Any]:
        """Sizes for monitoring: entries per sub-database, map and used bytes."""
        self._check_open()
        dbs = self._env.dbs
        with self._env.reading("reading statistics") as txn:
            info = self._env.env.info()
            counts = {name: txn.stat(dbs[name])["entries"] for name in ("certs", "changes")}
            return {
                "path": self._env.path,
                "entries": txn.stat(dbs["records"])["entries"],
                **counts,
                "schema_version": int(txn.get(b"schema", b"0", db=dbs["meta"])),
                "state": read_counter(txn, self._env, b"state"),
                "min_state": read_counter(txn, self._env, b"min_state"),
                "map_size": info["map_size"],
                "used_bytes": (info["last_pgno"] + 1) * self._env.env.stat()["psize"],
                "last_txnid": info["last_txnid"],
                **self._write_counters(),
            }

    def _write_counters(self) -> dict[str, Any]:
        """This process's commits, fsyncs of the sync thread, map growths
        and sizes adopted from other processes."""
        committer = self._opened.committer
        if committer is None:
            return {"commits": 0, "syncs": 0, "map_grown": 0, "map_adopted": 0, "sync": None}
        syncer = committer.syncer
        return {
            "commits": committer.commits,
            "syncs": 0 if syncer is None else syncer.syncs,
            "map_grown": committer.grown,
            "map_adopted": committer.adopted,
            "sync": "commit" if syncer is None else "interval",
        }

    def newest_received(self, look_back: int = 10_000) -> datetime | None:
        """When the most recently created record that still exists was
        received (``smime-milter status``'s last message): the change log
        read backwards, at most ``look_back`` entries; None when none is found."""
        self._check_open()
        with self._env.reading("reading the change log") as txn:
            cursor = txn.cursor(db=self._env.dbs["changes"])
            found = cursor.last()
            for _ in range(look_back):
                if not found:
                    return None
                value = cursor.value()
                if value[:1] == CREATED:
                    raw = txn.get(value[1:], db=self._env.dbs["status"])
                    if raw is not None:
                        record_id = value[1:].decode("ascii")
                        return view_value(record_id, decode_json(raw.decode())).received_at
                found = cursor.prev()
        return None

    def close(self) -> None:
        """Closes this handle; the last one drains the writer and closes LMDB."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _REGISTRY_LOCK:
            opened = self._opened
            opened.handles -= 1
            if opened.handles:
                return
            del _REGISTRY[opened.env.path]
            opened.shutdown()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("closed", f"{self._env.path}: store is closed")

    def _index_db(self, index: str) -> Database:
        self._check_open()
        if index not in INDEXES:
            raise ValueError(f"unknown index {index!r}; known: {', '.join(INDEXES)}")
        return self._env.dbs[index]

    def _keys(self, db: Database, what: str) -> Iterator[str]:
        return (key.decode("ascii") for key in self._keys_raw(db, what))

    def _keys_raw(self, db: Database, what: str, *, after: bytes | None = None
                  ) -> Iterator[bytes]:
        """The keys of ``db`` in order, those following ``after`` when given."""
        while True:
            with self._env.reading(what) as txn:
                chunk = _key_chunk(txn.cursor(db=db), after)
            yield from chunk
            if len(chunk) < _CHUNK:
                return
            after = chunk[-1]

    def _blob_loader(self, txn: lmdb.Transaction[bytes], name: str) -> Callable[[str], bytes]:
        """Loads DER from ``certs`` or ``crls`` by digest, once per digest."""
        db = self._env.dbs[name]
        path = self._env.path
        cache: dict[str, bytes] = {}

        def load(digest: str) -> bytes:
            der = cache.get(digest)
            if der is None:
                der = txn.get(digest.encode("ascii"), db=db)
                if der is None:
                    raise StoreError("corrupt", f"{path}: {name} entry {digest} is missing")
                cache[digest] = der
            return der

        return load

    def _learned_value(
        self, key: bytes, value: bytes, cert: Callable[[str], bytes]
    ) -> tuple[tuple[str, str], LearnedCertificate]:
        try:
            doc = decode_json(value.decode("utf-8"))
            learned = LearnedCertificate(
                certificate=cert(key[key.rindex(b"\0") + 1 :].decode("ascii")),
                received_at=datetime.fromisoformat(doc["receivedAt"]),
                record_id=doc["recordId"],
                capabilities=tuple(doc["capabilities"]),
                chain=tuple(map(cert, doc["chain"])),
            )
            return (doc["receivedAt"], doc["recordId"]), learned
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                "corrupt", f"{self._env.path}: learned entry {key!r} is unreadable ({exc!r})"
            ) from exc

    def _decode(
        self,
        record_id: str,
        raw: bytes,
        cert: Callable[[str], bytes],
        crl: Callable[[str], bytes],
    ) -> Record:
        try:
            return record_value(json.loads(raw), cert, crl)
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                "corrupt", f"{self._env.path}: record {record_id} is unreadable ({exc!r})"
            ) from exc

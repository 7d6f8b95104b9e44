"""Writing: the operations, and the two ways they are committed.

An operation (:class:`Op`) applies one change inside a write transaction
(:class:`_Batch`: records, indexes, the status entries, the change log,
certificates and learned certificates). :class:`Committer` commits a list of
them in one transaction of the calling thread, growing the map when they do
not fit and adopting a map another process grew; :meth:`Store.put_sync`
(the milter's record) uses it directly. :class:`Writer` is a thread for the
calls that return a :class:`~concurrent.futures.Future` (re-validation,
releases, pruning): it commits up to ``batch_limit`` queued operations per
transaction. :class:`Syncer` flushes a store opened without a sync per
commit ("interval" mode).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import lmdb

from smime_milter.store.changelog import (
    CREATED,
    DESTROYED,
    UPDATED,
    logged_view,
    read_counter,
    state_key,
)
from smime_milter.store.codec import (
    INDEXES,
    MAX_LEARNED_PER_ADDRESS,
    CertRefs,
    LearnedEntry,
    due_key,
    id_key,
    index_flags,
    json_bytes,
    learned_entries,
    learned_order,
    record_json,
    resubmission_value,
    status_entry,
    with_change_state,
)
from smime_milter.store.environment import Database, Env, translate
from smime_milter.store.migrations import writer_dbs
from smime_milter.store.records import (
    CannotCalculateChanges,
    Record,
    Resubmitted,
    StoreError,
    utc,
)

__all__ = [
    "AmendResubmission",
    "ClaimResubmission",
    "Committer",
    "Delete",
    "Op",
    "Put",
    "SetTrust",
    "Syncer",
    "Update",
    "Writer",
]

_log = logging.getLogger("smime_milter.store")


class _Batch:
    """One write transaction: the state counter and the change entries it adds."""

    def __init__(self, txn: lmdb.Transaction[bytes], env: Env) -> None:
        self.txn = txn
        self.dbs = env.dbs
        self.start = self.state = read_counter(txn, env, b"state")

    def log(self, kind: bytes, record_id: str) -> int:
        self.state += 1
        value = kind + record_id.encode("ascii")
        self.txn.put(state_key(self.state), value, db=self.dbs["changes"], append=True)
        return self.state

    def write_record(
        self, record_id: str, doc: dict[str, Any], body: bytes, old: dict[str, Any] | None
    ) -> None:
        key = record_id.encode("ascii")
        self.txn.put(key, body, db=self.dbs["records"])
        self.txn.put(key, status_entry(doc), db=self.dbs["status"])
        for index, member in index_flags(doc).items():
            if member:
                self.txn.put(key, b"", db=self.dbs[index], overwrite=False)
            else:
                self.txn.delete(key, db=self.dbs[index])
        due, old_due = due_key(doc), None if old is None else due_key(old)
        if due != old_due:
            if old_due is not None:
                self.txn.delete(old_due, db=self.dbs["verify_due"])
            if due is not None:
                self.txn.put(due, b"", db=self.dbs["verify_due"])

    def delete_record(self, record_id: str) -> bool:
        """Removes a record and its index entries; its certificates and CRLs
        stay (they are shared, and learned certificates refer to them)."""
        key = record_id.encode("ascii")
        old = self.txn.get(key, db=self.dbs["records"])
        if old is None:
            return False
        due = due_key(json.loads(old))
        if due is not None:
            self.txn.delete(due, db=self.dbs["verify_due"])
        for db in ("records", "status", *INDEXES):
            self.txn.delete(key, db=self.dbs[db])
        self.log(DESTROYED, record_id)
        return True

    def finish(self, changelog_limit: int) -> None:
        if self.state == self.start:
            return
        meta = self.dbs["meta"]
        self.txn.put(b"state", str(self.state).encode("ascii"), db=meta)
        excess = self.txn.stat(self.dbs["changes"])["entries"] - changelog_limit
        if excess > 0:
            self.txn.put(b"min_state", str(self._trim(excess)).encode("ascii"), db=meta)

    def _trim(self, count: int) -> int:
        """Deletes the ``count`` oldest entries; returns the newest deleted state,
        the oldest one the log can still answer from."""
        cursor = self.txn.cursor(db=self.dbs["changes"])
        cursor.first()
        last = 0
        for _ in range(count):
            last = int.from_bytes(cursor.key(), "big")
            cursor.delete()
        return last


class Op:
    """One unit of work; ``apply`` runs inside a write transaction and may run
    again if the transaction is retried after growing the map."""

    def apply(self, batch: _Batch) -> Any:
        raise NotImplementedError

    def result(self, applied: Any, state: int) -> Any:
        return applied


class Put(Op):
    def __init__(self, record: Record) -> None:
        certs, crls = CertRefs(), CertRefs()
        self.record_id = record.record_id
        self.doc = record_json(record, certs, crls)
        self.body = json_bytes(self.doc)
        self.learned = learned_entries(record, self.doc)
        self.blobs = [
            (db, digest.encode("ascii"), der)
            for db, refs in (("certs", certs), ("crls", crls))
            for digest, der in refs.der.items()
        ]

    def apply(self, batch: _Batch) -> None:
        old = batch.txn.get(self.record_id.encode("ascii"), db=batch.dbs["records"])
        old_doc = None if old is None else json.loads(old)
        if old_doc is None:
            state = batch.log(CREATED, self.record_id)
        elif logged_view(old_doc) != logged_view(self.doc):
            state = batch.log(UPDATED, self.record_id)
        else:
            state = old_doc["changeState"]
        for db, key, der in self.blobs:
            batch.txn.put(key, der, db=batch.dbs[db], overwrite=False)
        body = with_change_state(self.body, state)
        batch.write_record(self.record_id, self.doc, body, old_doc)
        for entry in self.learned:
            _learn(batch.txn, batch.dbs["learned"], entry)

    def result(self, applied: Any, state: int) -> int:
        return state


class Update(Op):
    def __init__(self, record_id: str, patch: dict[str, Any]) -> None:
        self.record_id = record_id
        self.patch = patch

    def apply(self, batch: _Batch) -> bool:
        old_doc = _stored_doc(batch, self.record_id)
        doc = {**old_doc, **self.patch}
        if doc == old_doc:
            return False
        logged = logged_view(doc) != logged_view(old_doc)
        if logged:
            doc["changeState"] = batch.log(UPDATED, self.record_id)
        batch.write_record(self.record_id, doc, json_bytes(doc), old_doc)
        return logged


class ClaimResubmission(Op):
    """Appends a release to a record's ``resubmissions``, unless it has one and
    ``force`` is off: then resolves to the latest earlier one and writes
    nothing. Check and write are one transaction, so of two releases racing
    only one passes. Not a JMAP change: no change-log entry."""

    def __init__(self, record_id: str, entry: dict[str, Any], force: bool) -> None:
        self.record_id = record_id
        self.entry = entry
        self.force = force

    def apply(self, batch: _Batch) -> dict[str, Any] | None:
        old_doc = _stored_doc(batch, self.record_id)
        earlier: list[dict[str, Any]] = old_doc.get("resubmissions", [])
        if earlier and not self.force:
            return earlier[-1]
        doc = {**old_doc, "resubmissions": [*earlier, self.entry]}
        batch.write_record(self.record_id, doc, json_bytes(doc), old_doc)
        return None

    def result(self, applied: Any, state: int) -> Resubmitted | None:
        return None if applied is None else resubmission_value(applied)


class AmendResubmission(Op):
    """Replaces a release :class:`ClaimResubmission` wrote with ``new`` (the
    queue id learnt from the MTA) or, with None, withdraws it (nothing was
    submitted). Resolves to whether the entry was still there."""

    def __init__(self, record_id: str, old: dict[str, Any], new: dict[str, Any] | None) -> None:
        self.record_id = record_id
        self.old = old
        self.new = new

    def apply(self, batch: _Batch) -> bool:
        old_doc = _stored_doc(batch, self.record_id)
        entries: list[dict[str, Any]] = list(old_doc.get("resubmissions", []))
        if self.old not in entries:
            return False
        at = len(entries) - 1 - entries[::-1].index(self.old)
        entries[at: at + 1] = [] if self.new is None else [self.new]
        doc = {key: value for key, value in old_doc.items() if key != "resubmissions"}
        if entries:
            doc["resubmissions"] = entries
        batch.write_record(self.record_id, doc, json_bytes(doc), old_doc)
        return True


class Delete(Op):
    def __init__(self, record_ids: list[str]) -> None:
        self.record_ids = record_ids

    def apply(self, batch: _Batch) -> tuple[str, ...]:
        return tuple(record_id for record_id in self.record_ids
                     if batch.delete_record(record_id))


class SetTrust(Op):
    """Records the trust-anchor generation; a new one restarts the epoch."""

    def __init__(self, generation: str, changed_at: datetime) -> None:
        self.generation = generation.encode("ascii")
        self.changed_at = str(int(utc(changed_at).timestamp())).encode("ascii")

    def apply(self, batch: _Batch) -> bool:
        meta = batch.dbs["meta"]
        if batch.txn.get(b"trust_generation", db=meta) == self.generation:
            return False
        batch.txn.put(b"trust_generation", self.generation, db=meta)
        batch.txn.put(b"trust_changed_at", self.changed_at, db=meta)
        return True


class Committer:
    """Commits operations in one write transaction of the calling thread.

    Used by :meth:`Store.put_sync` directly (no hand-off to another thread)
    and by the :class:`Writer` thread for its batches. Nothing is cached
    across transactions: each one reads the change-log counter afresh, so
    any number of threads and processes may commit to the same store."""

    def __init__(self, env: Env, max_map_size: int, changelog_limit: int,
                 syncer: Syncer | None) -> None:
        self._env = env
        self._max_map_size = max_map_size
        self._changelog_limit = changelog_limit
        #: None when every commit is flushed by LMDB itself ("commit" mode).
        self.syncer = syncer
        self.commits = 0
        self.grown = 0
        self.adopted = 0

    def setup(self) -> None:
        """Creates or upgrades the schema and opens the sub-databases."""
        env = self._env
        try:
            with env.write_mutex, env.lock.shared(), env.env.begin(write=True) as txn:
                env.dbs = writer_dbs(txn, env.env, env.path)
        except BaseException as exc:
            raise translate(exc, f"opening {env.path}") from exc

    def run(self, ops: Sequence[Op], *, durable: bool = False) -> tuple[list[Any], int]:
        """Commits ``ops`` in one transaction; returns each one's outcome (a
        StoreError("missing") for an unknown id, which fails only that op)
        and the state after the commit. With ``durable`` the commit is on the
        disk when this returns, whatever the sync mode. Any other failure
        is raised as a StoreError and nothing of ``ops`` is committed."""
        try:
            with self._env.write_mutex:
                outcomes, state = self._commit_growing(ops)
            if self.syncer is not None:
                if durable:
                    self.syncer.sync_now()
                else:
                    self.syncer.committed()
        except Exception as exc:
            error = translate(exc, f"writing to {self._env.path}")
            if error is not exc:
                raise error from exc
            raise
        return outcomes, state

    def _commit_growing(self, ops: Sequence[Op]) -> tuple[list[Any], int]:
        while True:
            try:
                return self._commit(ops)
            except lmdb.MapFullError as exc:
                if not self._grow():
                    raise StoreError(
                        "map-full",
                        f"{self._env.path}: batch of {len(ops)} does not fit in the map "
                        f"at max_map_size {self._max_map_size} bytes",
                    ) from exc
            except lmdb.MapResizedError:
                # Another process grew the map beyond ours: adopt its size.
                self._env.adopt_map_size()
                self.adopted += 1

    def _commit(self, ops: Sequence[Op]) -> tuple[list[Any], int]:
        """One write transaction for ``ops``. A failed one is aborted under the
        exclusive lock: py-lmdb's abort of a write txn waits until no LMDB call
        is in flight on any thread, which a steady stream of reads can delay
        indefinitely."""
        env = self._env
        with env.lock.shared():
            if env.released:
                raise StoreError("closed", f"{env.path}: store is closed")
            txn = env.env.begin(write=True)
            try:
                batch = _Batch(txn, env)
                outcomes = [_apply(op, batch) for op in ops]
                batch.finish(self._changelog_limit)
                txn.commit()
            except BaseException as exc:
                failure = exc
            else:
                self.commits += 1
                return outcomes, batch.state
        with env.lock.exclusive():
            txn.abort()
        raise failure

    def _grow(self) -> bool:
        """Adopts the map size another process gave the store when that is
        larger than ours; otherwise doubles ours up to max_map_size. False
        when already there. (A size set here reaches the other processes
        with the next commit; LMDB never persists a smaller one.)"""
        env = self._env
        with env.lock.exclusive():
            ours = env.env.info()["map_size"]
            env.env.set_mapsize(0)  # LMDB: 0 adopts the size in the meta page
            if env.env.info()["map_size"] > ours:
                self.adopted += 1
                return True
            if ours >= self._max_map_size:
                return False
            env.env.set_mapsize(min(ours * 2, self._max_map_size))
        self.grown += 1
        return True


class Syncer:
    """Flushes an environment opened without sync (MDB_NOSYNC) to the disk:
    a background thread at most every ``interval`` seconds when something
    was committed since the last flush, :meth:`sync_now` for a commit that
    must be durable before its caller answers, and a last flush when the
    store closes (:meth:`final_flush`). One fsync covers every commit before it, of any process."""

    def __init__(self, env: Env, interval: float = 1.0) -> None:
        self._env = env
        self._interval = interval
        self._dirty = False
        self._stopping = threading.Event()
        self.syncs = 0
        self.failures = 0
        self._thread = threading.Thread(
            target=self._run, name=f"store-sync {env.path}", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """Notes a commit the next background flush must cover."""
        self._dirty = True

    def sync_now(self) -> None:
        """Flushes every commit made so far (this thread's included)."""
        self._dirty = False
        try:
            self._flush()
        except Exception as exc:
            self._dirty = True
            raise translate(exc, f"syncing {self._env.path}") from exc

    def stop(self) -> None:
        """Ends the thread; the last flush is :meth:`final_flush`."""
        self._stopping.set()
        self._thread.join()

    def final_flush(self) -> None:
        """Flushes what is pending; run by :meth:`Env.close` under its
        exclusive lock, so no commit can come after it."""
        if self._dirty:
            self._dirty = False
            self._sync()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            if not self._dirty:
                continue
            # Cleared before the flush: a commit that lands during it sets
            # the flag again and is covered by the next one.
            self._dirty = False
            try:
                self._flush()
            except Exception as exc:
                self._dirty = True
                self.failures += 1
                _log.warning("store sync of %s failed: %s", self._env.path,
                             translate(exc, "syncing"))

    def _flush(self) -> None:
        with self._env.lock.shared():
            self._sync()

    def _sync(self) -> None:
        self._env.env.sync(True)
        self.syncs += 1


class Writer:
    """The thread that commits queued operations (:meth:`Store.put` and the
    other calls that return a Future), many per transaction."""

    def __init__(self, env: Env, committer: Committer, batch_limit: int):
        self._env = env
        self._committer = committer
        self._batch_limit = batch_limit
        self._queue: queue.SimpleQueue[tuple[Op, Future[Any]] | None] = queue.SimpleQueue()
        #: Operations queued and not yet settled (changed under the env's
        #: submit lock).
        self.pending = 0
        self._thread = threading.Thread(
            target=self._run, name=f"store-writer {env.path}", daemon=True
        )
        self._thread.start()

    def submit(self, op: Op) -> Future[Any]:
        """Queues ``op`` unless the store is closing; returns its future."""
        future: Future[Any] = Future()
        with self._env.accepting():
            self._queue.put((op, future))
            self.pending += 1
        return future

    def stop(self) -> None:
        """Finishes everything queued so far, then ends the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._next_batch()
            if batch:
                self._run_batch(batch)

    def _next_batch(self) -> tuple[list[tuple[Op, Future[Any]]], bool]:
        """Blocks for one operation, then takes what else is queued."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._batch_limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run_batch(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        try:
            self._settle(batch)
        finally:
            with self._env.submitting():
                self.pending -= len(batch)

    def _settle(self, batch: list[tuple[Op, Future[Any]]]) -> None:
        """Commits the batch, then settles its futures; a failure fails
        exactly these futures and leaves the writer running."""
        ops = [op for op, _future in batch]
        try:
            outcomes, state = self._committer.run(ops)
        except StoreError as error:
            for _op, future in batch:
                future.set_exception(_copy_error(error))
            return
        except Exception as exc:  # not translated: fail the futures all the same
            for _op, future in batch:
                future.set_exception(exc)
            return
        for (op, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, StoreError):
                future.set_exception(outcome)
            else:
                future.set_result(op.result(outcome, state))


def _apply(op: Op, batch: _Batch) -> Any:
    """Runs one operation; an unknown id (found before anything is written) is
    that operation's outcome and does not fail the rest of the batch."""
    try:
        return op.apply(batch)
    except StoreError as exc:
        if exc.reason != "missing":
            raise
        return exc


def _stored_doc(batch: _Batch, record_id: str) -> dict[str, Any]:
    """The stored JSON object of a record; StoreError("missing") when there is none."""
    key = id_key(record_id)
    old = None if key is None else batch.txn.get(key, db=batch.dbs["records"])
    if old is None:
        raise StoreError("missing", f"no record {record_id!r}")
    doc: dict[str, Any] = json.loads(old)
    return doc


def _learn(txn: lmdb.Transaction[bytes], db: Database, entry: LearnedEntry) -> None:
    """Writes one ``learned`` entry unless a newer message already holds it;
    a new certificate then trims the address to
    :data:`MAX_LEARNED_PER_ADDRESS` (the oldest go)."""
    prefix, key, order, value = entry
    old = txn.get(key, db=db)
    if old is not None:
        # The common case, a known sender's next message: the count is unchanged.
        if learned_order(old) <= order:
            txn.put(key, value, db=db)
        return
    txn.put(key, value, db=db)
    cursor = txn.cursor(db=db)
    entries: list[tuple[tuple[str, str], bytes]] = []
    if cursor.set_range(prefix):
        for entry_key, entry_value in cursor.iternext():
            if not entry_key.startswith(prefix):
                break
            entries.append((learned_order(entry_value), entry_key))
    if len(entries) > MAX_LEARNED_PER_ADDRESS:
        entries.sort()
        for _order, stale in entries[: len(entries) - MAX_LEARNED_PER_ADDRESS]:
            txn.delete(stale, db=db)


def _copy_error(exc: StoreError) -> StoreError:
    """One exception object per future: a shared one would collect the
    tracebacks of every thread that re-raises it."""
    copy = (
        CannotCalculateChanges(str(exc))
        if isinstance(exc, CannotCalculateChanges)
        else StoreError(exc.reason, str(exc))
    )
    copy.__cause__ = exc.__cause__
    return copy

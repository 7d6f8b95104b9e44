"""The LMDB environment of one store path, and the lock that keeps it usable.

LMDB allows one environment per process and path, and growing its map (or
closing it) invalidates every transaction the process has open. This module
owns both facts: :class:`Env` opens the files and hands out read
transactions under :class:`_SharedLock`, and :func:`translate` turns LMDB
and OS failures into :class:`~.records.StoreError`. It knows nothing of the
schema or of writing.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

import lmdb

from smime_milter.store.records import StoreError

__all__ = [
    "Database",
    "Env",
    "open_readonly_env",
    "open_writable_env",
    "translate",
]

#: A sub-database handle (py-lmdb's stub names its class but does not export it).
Database: TypeAlias = "lmdb._Database"

_MAX_DBS = 16
_CORRUPT = (
    lmdb.CorruptedError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadRslotError,
    lmdb.PageNotFoundError,
    lmdb.IncompatibleError,
    lmdb.BadDbiError,
)


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, lmdb.DiskError):
        return True
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, lmdb.Error):
        code = exc.code
    else:
        return False
    return code in (errno.ENOSPC, errno.EDQUOT)


def translate(exc: BaseException, where: str) -> StoreError:
    """The StoreError for an LMDB or OS failure, naming what was being done where."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, lmdb.MapFullError):
        return StoreError("map-full", f"{where}: the LMDB map is full ({exc})")
    if _is_disk_full(exc):
        return StoreError("disk-full", f"{where}: no space left on the device ({exc})")
    if isinstance(exc, _CORRUPT):
        return StoreError("corrupt", f"{where}: damaged or not an LMDB environment ({exc})")
    return StoreError("io", f"{where}: {exc}")


class _SharedLock:
    """Many holders of ``shared`` or one of ``exclusive``; waiting exclusive
    holders go first so growing the map is not starved by a stream of reads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Env:
    """One open LMDB environment, shared by every Store handle on its path."""

    def __init__(self, path: str, env: lmdb.Environment, readonly: bool) -> None:
        self.path = path
        self.env = env
        self.readonly = readonly
        self.dbs: dict[str, Database] = {}
        self.lock = _SharedLock()
        #: Held around every write transaction of this process (taken before
        #: ``lock``): LMDB allows one at a time anyway, and a thread that
        #: waits here holds no share of ``lock``, so aborting a failed write
        #: or growing the map under ``lock.exclusive()`` never waits for a
        #: thread that is itself waiting for the write transaction.
        self.write_mutex = threading.Lock()
        self.closed = False
        #: Set once LMDB is closed (``closed`` is set earlier, when the
        #: store stops accepting work and the writer drains its queue).
        self.released = False
        self._submit_lock = threading.Lock()

    @contextmanager
    def accepting(self) -> Iterator[None]:
        """Lets the caller queue work unless the store is closing; holds off
        :meth:`stop_accepting` meanwhile, so the writer's last drain sees it."""
        with self._submit_lock:
            if self.closed:
                raise StoreError("closed", f"{self.path}: store is closed")
            yield

    def submitting(self) -> threading.Lock:
        """The lock :meth:`accepting` holds, for counting queued work."""
        return self._submit_lock

    @contextmanager
    def reading(self, what: str) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction; adopts a map another process grew and retries."""
        while True:
            with self.lock.shared():
                if self.closed:
                    raise StoreError("closed", f"{self.path}: store is closed")
                try:
                    txn = self.env.begin()
                except lmdb.MapResizedError:
                    txn = None
                except lmdb.Error as exc:
                    raise translate(exc, f"{what} in {self.path}") from exc
                if txn is not None:
                    try:
                        yield txn
                    except lmdb.Error as exc:
                        raise translate(exc, f"{what} in {self.path}") from exc
                    finally:
                        txn.abort()
                    return
            self.adopt_map_size()

    def adopt_map_size(self) -> None:
        with self.lock.exclusive():
            self.env.set_mapsize(0)

    def stop_accepting(self) -> None:
        """Refuses work and reads from now on (the writer may still drain)."""
        with self._submit_lock:
            self.closed = True

    def close(self, last: Callable[[], None] | None = None) -> None:
        """Closes LMDB once no transaction of this process is in flight,
        after running ``last`` (the final flush) when given."""
        with self.lock.exclusive():
            self.released = True
            try:
                if last is not None:
                    last()
            finally:
                self.env.close()


def _check_exists(path: str) -> None:
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise StoreError("missing", f"no store at {path} (no data.mdb); the milter creates it")


def open_readonly_env(path: str) -> Env:
    """The existing environment at ``path``, for reading; no sub-database yet."""
    _check_exists(path)
    try:
        # map_size=0: adopt the size the writer gave the map.
        env = lmdb.open(path, readonly=True, lock=True, subdir=True, max_dbs=_MAX_DBS, map_size=0)
    except lmdb.Error as exc:
        raise translate(exc, f"opening {path}") from exc
    return Env(path, env, readonly=True)


def open_writable_env(path: str, map_size: int, *, create: bool = True,
                      sync: bool = True) -> Env:
    """The environment at ``path`` for writing, created with the modes
    readers in other processes need when it does not exist yet (refused
    instead without ``create``). Without ``sync`` (MDB_NOSYNC) a commit
    writes its pages to the OS but does not flush them to the disk; the
    caller then calls ``env.sync(True)`` itself (:class:`~.writer.Syncer`)."""
    if not create:
        _check_exists(path)
    data = os.path.join(path, "data.mdb")
    fresh = not os.path.exists(data)
    try:
        if not os.path.isdir(path):
            # Several processes may create it at once (a pre-forked milter).
            os.makedirs(path, mode=0o750, exist_ok=True)
            os.chmod(path, 0o750)
        env = lmdb.open(
            path,
            map_size=map_size,
            subdir=True,
            max_dbs=_MAX_DBS,
            lock=True,
            sync=sync,
            mode=0o640,
            # A new store uses the LMDB 0.9 data format every binding can read;
            # None lets an existing store's data format choose. py-lmdb's stub
            # types this int (default -1), but None is its real default.
            lib_version=0 if fresh else None,  # type: ignore[arg-type]
        )
    except (lmdb.Error, OSError) as exc:
        raise translate(exc, f"opening {path}") from exc
    if fresh:
        # Readers need write access to lock.mdb for their reader slot.
        os.chmod(data, 0o640)
        os.chmod(os.path.join(path, "lock.mdb"), 0o660)
    return Env(path, env, readonly=False)

"""The schema version: recognising a store, creating one, upgrading an older one.

A writer brings the store to :data:`SCHEMA_VERSION` when it opens it
(:func:`writer_dbs`); a reader accepts that version and the older ones the
writer upgrades from (:func:`reader_dbs`). ``docs/store-schema.rst`` says
what each version changed.
"""

from __future__ import annotations

import lmdb

from smime_milter.store.codec import INDEXES
from smime_milter.store.environment import Database
from smime_milter.store.records import StoreError

__all__ = [
    "SCHEMA_VERSION",
    "reader_dbs",
    "writer_dbs",
]

SCHEMA_VERSION = 4
#: Every named sub-database of schema version 2.
_V2_DB_NAMES = (
    "meta", "records", "status", "certs", "crls", "changes", *INDEXES, "verify_due"
)
#: Version 3 adds ``learned``; a version 2 store is upgraded in place by the
#: writer (the new sub-database starts empty), and read as it is until then.
#: Version 4 adds the ``d`` (deleted) change-log kind and nothing else.
_DB_NAMES = (*_V2_DB_NAMES, "learned")


def _check_main_db(txn: lmdb.Transaction[bytes], path: str) -> None:
    """Refuses an LMDB environment that holds anything but our sub-databases."""
    for name in txn.cursor().iternext(values=False):
        if name.decode("utf-8", "replace") not in _DB_NAMES:
            raise StoreError("schema", f"{path}: not an smime-milter store (holds {name!r})")


#: Older schema versions this program reads, and upgrades when it writes.
_UPGRADABLE = (2, 3)


def _schema_version(txn: lmdb.Transaction[bytes], meta: Database, path: str) -> int | None:
    """The store's schema version (ours or one we upgrade from); None when it
    was never initialised; StoreError("schema") for any other version."""
    raw = txn.get(b"schema", db=meta)
    if raw is None:
        return None
    for version in (SCHEMA_VERSION, *_UPGRADABLE):
        if raw == str(version).encode("ascii"):
            return version
    raise StoreError(
        "schema",
        f"{path}: store schema version {raw!r}, this program uses {SCHEMA_VERSION}; "
        "move the directory aside and rebuild it with 'smime-milter ingest'",
    )


def _upgrade(txn: lmdb.Transaction[bytes], dbs: dict[str, Database], version: int) -> None:
    """Version 2 -> 3 only adds ``learned`` (already created by the caller's
    open_db); it starts empty and fills as verified mail arrives. Version
    3 -> 4 only allows ``d`` entries in ``changes``, which version 3 readers
    would not understand. Either upgrade costs one meta write however large
    the store."""
    assert version in _UPGRADABLE, version
    txn.put(b"schema", str(SCHEMA_VERSION).encode("ascii"), db=dbs["meta"])


def _initialise(txn: lmdb.Transaction[bytes], dbs: dict[str, Database], path: str) -> None:
    if any(txn.stat(dbs[name])["entries"] for name in _DB_NAMES):
        raise StoreError("schema", f"{path}: store has data but no schema version")
    meta = dbs["meta"]
    txn.put(b"schema", str(SCHEMA_VERSION).encode("ascii"), db=meta)
    txn.put(b"state", b"0", db=meta)
    txn.put(b"min_state", b"0", db=meta)


def writer_dbs(txn: lmdb.Transaction[bytes], env: lmdb.Environment,
                path: str) -> dict[str, Database]:
    """Every sub-database, created where missing, in the write transaction
    ``txn``, with the store initialised or upgraded to SCHEMA_VERSION."""
    _check_main_db(txn, path)
    dbs = {name: env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}
    version = _schema_version(txn, dbs["meta"], path)
    if version is None:
        _initialise(txn, dbs, path)
    elif version != SCHEMA_VERSION:
        _upgrade(txn, dbs, version)
    return dbs


def reader_dbs(env: lmdb.Environment, path: str) -> dict[str, Database]:
    """The sub-databases of an existing store, for reading; StoreError when
    it is not one of a version this program reads."""
    with env.begin() as txn:
        _check_main_db(txn, path)
    # Without a txn: py-lmdb then opens the handles in one it commits, the
    # only way they outlive it (LMDB closes handles of an aborted txn).
    meta = _open_existing_db(env, "meta", path)
    with env.begin() as txn:
        version = _schema_version(txn, meta, path)
    if version is None:
        raise StoreError("schema", f"{path}: store was never initialised")
    # A version 2 store (its writer not yet upgraded) has no ``learned``.
    names = _V2_DB_NAMES if version == 2 else _DB_NAMES
    return {name: _open_existing_db(env, name, path) for name in names}


def _open_existing_db(env: lmdb.Environment, name: str, path: str) -> Database:
    try:
        return env.open_db(name.encode(), create=False)
    except lmdb.NotFoundError:
        raise StoreError("schema", f"{path}: not an smime-milter store (no {name!r})") from None

"""The change log behind JMAP states: what is logged, and reading it back.

Every committed change to a logged member appends one ``changes`` entry and
moves the ``state`` counter; Email/changes (RFC 8620 §5.2) replays the log
from a client's state. The writer appends entries (:mod:`.writer`); this
module holds the rules both sides share.
"""

from __future__ import annotations

import re
from typing import Any

import lmdb

from smime_milter.store.environment import Env
from smime_milter.store.records import CannotCalculateChanges, Changes, StoreError

__all__ = [
    "CREATED",
    "DESTROYED",
    "UPDATED",
    "collect_changes",
    "logged_view",
    "parse_state",
    "read_counter",
    "state_key",
]

_STATE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
#: Record properties whose change is an Email/changes "updated" (RFC 9219 §4.3).
_LOGGED = ("smimeStatusAtDelivery", "smimeErrorsAtDelivery", "smimeStatus", "smimeErrors")
CREATED = b"c"
UPDATED = b"u"
DESTROYED = b"d"


def logged_view(doc: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(doc[name] for name in _LOGGED)


def state_key(state: int) -> bytes:
    return state.to_bytes(8, "big")


def read_counter(txn: lmdb.Transaction[bytes], env: Env, key: bytes) -> int:
    raw = txn.get(key, db=env.dbs["meta"])
    if raw is None or not _STATE_RE.fullmatch(raw.decode("ascii", "replace")):
        raise StoreError(
            "corrupt", f"{env.path}: meta {key.decode()} is {raw!r}, not a decimal number"
        )
    return int(raw)


def parse_state(state: str) -> int:
    if not isinstance(state, str) or not _STATE_RE.fullmatch(state):
        raise CannotCalculateChanges(f"not a state of this store: {state!r}")
    return int(state)


def collect_changes(
    cursor: lmdb.Cursor[bytes], since: int, current: int, max_changes: int | None
) -> Changes:
    """Walks the change log from ``since``; stops before an entry that would
    add an id beyond ``max_changes`` so the new state is a real cut point.

    Each id is reported once, as RFC 8620 §5.2 asks: created (new since
    ``since``), updated (existed then and now), or destroyed (existed then,
    not now); an id created and destroyed in between is not reported."""
    created: dict[str, None] = {}
    updated: dict[str, None] = {}
    destroyed: dict[str, None] = {}

    def changes(new_state: int, more: bool) -> Changes:
        return Changes(str(since), str(new_state), tuple(created), tuple(updated), more,
                       tuple(destroyed))

    reached = since
    if cursor.set_range(state_key(since + 1)):
        for key, value in cursor.iternext():
            record_id = value[1:].decode("ascii")
            seen = record_id in created or record_id in updated or record_id in destroyed
            reported = len(created) + len(updated) + len(destroyed)
            if not seen and max_changes is not None and reported >= max_changes:
                return changes(reached, True)
            kind = value[:1]
            if kind == CREATED:
                if record_id in destroyed:  # deleted, then stored again
                    del destroyed[record_id]
                    updated[record_id] = None
                else:
                    created[record_id] = None
                    updated.pop(record_id, None)
            elif kind == UPDATED:
                if record_id not in created:
                    updated[record_id] = None
            elif kind == DESTROYED:
                updated.pop(record_id, None)
                if record_id in created:
                    del created[record_id]
                else:
                    destroyed[record_id] = None
            else:
                raise StoreError("corrupt", f"change entry {key.hex()} has kind {kind!r}")
            reached = int.from_bytes(key, "big")
    return changes(current, False)

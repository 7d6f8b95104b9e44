"""RFC 9219 semantics over the store, for a JMAP server to embed.

A JMAP server keeps its own Email objects; the milter stamped each delivered
message with the id of its record here (``SMIME-Status-At-Delivery: ...;
record=<id>``). With that id the server answers the S/MIME parts of
Email/get, Email/query and Email/changes from this module without touching
the message:

* :meth:`SmimeJmap.email_get` returns exactly the requested RFC 9219
  properties. ``smimeStatus`` is the status *now*: the stored value while it
  is younger than the cache lifetime and was computed with the current trust
  anchors, otherwise the stored signer chains are validated again as of now
  (``revalidate``) and the record is updated.
* :meth:`SmimeJmap.email_query` evaluates a FilterCondition/FilterOperator
  tree over the three RFC 9219 filters with the store's indexes.
* :meth:`SmimeJmap.email_changes` reads the store's change log, in which a
  change of ``smimeVerifiedAt`` alone never appears (RFC 9219 §4.3).

The JSON protocol around these (``smime-milter jmap``) is in ``jmap_protocol``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from smime_milter.errors import SmimeMilterError
from smime_milter.revalidate import Refresher
from smime_milter.store import Changes, StatusView, Store, utc_date

SMIMEVERIFY = "urn:ietf:params:jmap:smimeverify"
SMIME_ADVANCED = "urn:ietf:params:jmap:smime-advanced"

#: The Email properties RFC 9219 defines, in its order.
SMIME_PROPERTIES = ("smimeStatus", "smimeStatusAtDelivery", "smimeErrors", "smimeVerifiedAt")
#: Properties this module can answer for a record besides the RFC 9219 ones.
RECORD_PROPERTIES = ("id", "receivedAt")
#: Properties whose value is computed "now" and so may need re-validation.
_CURRENT = frozenset({"smimeStatus", "smimeErrors", "smimeVerifiedAt"})
#: RFC 9219 §4.2 FilterCondition properties.
FILTER_PROPERTIES = ("hasSmime", "hasVerifiedSmime", "hasVerifiedSmimeAtDelivery")
_INDEX_OF = {
    "hasSmime": "has_smime",
    "hasVerifiedSmime": "has_verified_smime",
    "hasVerifiedSmimeAtDelivery": "has_verified_smime_at_delivery",
}
OPERATORS = ("AND", "OR", "NOT")
#: Up to this many query candidates, stale ones are found by reading each.
FEW_CANDIDATES = 2_000


def capabilities(*, advanced: bool = False) -> dict[str, dict[str, Any]]:
    """What a JMAP server adds to its Session object (RFC 9219 §3): the
    ``capabilities`` entry and the ``accountCapabilities`` entry of every
    account whose mail passes through the milter; both are empty objects.

    With ``advanced`` (a server whose Email/set calls ``advanced.apply``),
    also ``urn:ietf:params:jmap:smime-advanced`` (draft-ietf-jmap-smime-sender-
    extensions §3), again an empty object in both places. It is off by
    default because advertising it promises Email/set support."""
    names = (SMIMEVERIFY, SMIME_ADVANCED) if advanced else (SMIMEVERIFY,)
    return {"capabilities": {name: {} for name in names},
            "accountCapabilities": {name: {} for name in names}}


class FilterError(SmimeMilterError, ValueError):
    """A filter this module cannot evaluate; ``type`` is the JMAP error type
    (``unsupportedFilter`` or ``invalidArguments``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.type = error_type


@dataclass(frozen=True, slots=True)
class GetResult:
    state: str
    #: One object per found id, in request order, with ``id`` and the
    #: requested properties only.
    found: tuple[dict[str, Any], ...]
    not_found: tuple[str, ...]


@functools.lru_cache(maxsize=4096)
def _date_text(moment: datetime | None) -> str | None:
    """Formatting dates is a third of Email/get; most records share a few."""
    return utc_date(moment)


def _value(view: StatusView, name: str) -> Any:
    if name == "id":
        return view.record_id
    if name == "receivedAt":
        return _date_text(view.received_at)
    if name == "smimeStatus":
        return None if view.status is None else view.status.value
    if name == "smimeStatusAtDelivery":
        return None if view.status_at_delivery is None else view.status_at_delivery.value
    if name == "smimeErrors":
        return None if view.errors is None else list(view.errors)
    if name == "smimeVerifiedAt":
        return _date_text(view.verified_at)
    raise KeyError(name)


class SmimeJmap:
    """The RFC 9219 methods over one store; thread-safe."""

    def __init__(self, refresher: Refresher, *, few_candidates: int = FEW_CANDIDATES) -> None:
        self.refresher = refresher
        self.few_candidates = few_candidates

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SmimeJmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        return self.refresher.store

    def state(self) -> str:
        """The Email state string of the S/MIME properties (the store's)."""
        return self.store.state()

    # ----------------------------------------------------------------- Email/get

    def email_get(self, ids: Sequence[str], properties: Sequence[str] | None = None) -> GetResult:
        """The requested properties of the records ``ids``.

        ``properties`` None means all of :data:`SMIME_PROPERTIES`; ``id`` is
        always included. Unknown names raise ValueError. The state and the
        values come from one snapshot (taken after any re-validation this
        call wrote), so a later change is reported by the next Email/changes
        and none that is already in the values is reported again.
        """
        wanted = list(SMIME_PROPERTIES if properties is None else properties)
        unknown = [name for name in wanted if name not in (*RECORD_PROPERTIES, *SMIME_PROPERTIES)]
        if unknown:
            raise ValueError(f"unknown properties: {', '.join(unknown)}")
        names = ["id", *(name for name in dict.fromkeys(wanted) if name != "id")]
        state, views = self.refresher.state_and_views(
            ids, fresh=bool(_CURRENT.intersection(names)))
        found: list[dict[str, Any]] = []
        not_found: list[str] = []
        seen: set[str] = set()
        for record_id in ids:
            if record_id in seen:
                continue
            seen.add(record_id)
            view = views.get(record_id)
            if view is None:
                not_found.append(record_id)
            else:
                found.append({name: _value(view, name) for name in names})
        return GetResult(state, tuple(found), tuple(not_found))

    # ----------------------------------------------------------------- Email/query

    def email_query(
        self, filter: Mapping[str, Any] | None, candidates: Sequence[str] | None = None
    ) -> list[str]:
        """The ids among ``candidates`` (default: every record) matching
        ``filter``, in candidate order. An email without a record has
        ``smimeStatus`` null: it matches only ``false`` conditions."""
        check_filter(filter)
        ids = list(dict.fromkeys(self.store.record_ids() if candidates is None else candidates))
        if filter is None:
            return ids
        universe = frozenset(ids)
        sets = {name: self._members(name, ids, universe) for name in _filter_names(filter)}
        matched = _evaluate(filter, universe, sets)
        return [record_id for record_id in ids if record_id in matched]

    def _members(self, name: str, ids: list[str], universe: frozenset[str]) -> frozenset[str]:
        """The ids among ``ids`` (as a set: ``universe``) for which filter
        ``name`` is true."""
        if name == "hasVerifiedSmime":
            self._refresh_stale(ids, universe)
        members = self.store.in_index(_INDEX_OF[name], ids)
        if name == "hasVerifiedSmime" and self.refresher.readonly:
            for record_id, view in self.refresher.overlaid(ids).items():
                if view.status is not None and view.status.is_verified:
                    members.add(record_id)
                else:
                    members.discard(record_id)
        return frozenset(members)

    def _refresh_stale(self, ids: list[str], universe: frozenset[str]) -> None:
        """Re-validates, in bulk, the candidates whose cached status is stale:
        a few candidates are looked up one by one, many by one scan of the
        stale ones (the ``verify_due`` index), which is short when little is
        stale."""
        if len(ids) <= self.few_candidates:
            self.refresher.views(ids, fresh=True)
            return
        stale = [record_id for record_id in self.refresher.stale_ids() if record_id in universe]
        if stale:
            self.refresher.refresh(stale)

    # ----------------------------------------------------------------- Email/changes

    def email_changes(self, since_state: str, max_changes: int | None = None) -> Changes:
        """Records created or whose smimeStatus, smimeStatusAtDelivery or
        smimeErrors changed since ``since_state``; raises
        ``store.CannotCalculateChanges`` for an unknown or trimmed state."""
        return self.store.changes_since(since_state, max_changes)


# --------------------------------------------------------------------------- filters


def check_filter(filter: Any, depth: int = 0) -> None:
    """Raises FilterError unless ``filter`` is a FilterOperator/FilterCondition
    tree over the RFC 9219 properties (RFC 8620 §5.5)."""
    if filter is None and depth == 0:
        return
    if depth > 32:
        raise FilterError("invalidArguments", "filter nested too deeply")
    if not isinstance(filter, Mapping):
        raise FilterError("invalidArguments", "a filter must be an object")
    if "operator" in filter:
        if set(filter) != {"operator", "conditions"}:
            raise FilterError("invalidArguments",
                              "a FilterOperator has exactly operator and conditions")
        if filter["operator"] not in OPERATORS:
            raise FilterError("invalidArguments",
                              f"operator must be AND, OR or NOT, not {filter['operator']!r}")
        conditions = filter["conditions"]
        if not isinstance(conditions, list) or not conditions:
            raise FilterError("invalidArguments", "conditions must be a non-empty array")
        for condition in conditions:
            check_filter(condition, depth + 1)
        return
    for name, value in filter.items():
        if name not in FILTER_PROPERTIES:
            raise FilterError("unsupportedFilter", f"filter property {name!r} is not supported "
                              f"here (only {', '.join(FILTER_PROPERTIES)})")
        if not isinstance(value, bool):
            raise FilterError("invalidArguments", f"{name} must be true or false")


def _filter_names(filter: Mapping[str, Any]) -> set[str]:
    if "operator" in filter:
        return set().union(*(_filter_names(c) for c in filter["conditions"]))
    return set(filter)


def _evaluate(
    filter: Mapping[str, Any], universe: frozenset[str], sets: Mapping[str, frozenset[str]]
) -> frozenset[str]:
    if "operator" in filter:
        parts = [_evaluate(c, universe, sets) for c in filter["conditions"]]
        if filter["operator"] == "AND":
            return frozenset.intersection(*parts)
        union = frozenset().union(*parts)
        return union if filter["operator"] == "OR" else universe - union
    matched = universe
    for name, wanted in filter.items():
        matched = matched & (sets[name] if wanted else universe - sets[name])
    return matched

"""The status of a stored record at another moment, without the message.

At delivery the engine records every signer's signature check, From binding
and certificates. Whether a signature *holds* never changes; whether its
certificate chain is acceptable does (expiry, revocation, trust anchors).
So a record is re-validated by validating each signer's chain again at the
new moment and deciding the status with the same function the engine uses
(``status.signed_status``): an unchanged outcome gives identical status and
errors, which keeps Email/changes quiet.

:class:`Refresher` applies this to the store: RFC 9219 lets a server cache
``smimeStatus`` for up to 24 hours; a status older than the configured
lifetime, computed before the trust anchors last changed, or "verified" in
the future (under a clock that was ahead), is stale and is re-validated as
of now when someone asks for it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asn1crypto import x509

from smime_milter.model import Status
from smime_milter.store import Record, StatusView, Store, StoreError
from smime_milter.trust import ChainValidator
from smime_milter.verify import signed_status

log = logging.getLogger(__name__)

#: RFC 9219 §4.1: results "MAY be cached for up to 24 hours".
MAX_CACHE_LIFETIME = timedelta(hours=24)
DEFAULT_CACHE_LIFETIME = timedelta(hours=1)
_BATCH = 512


@dataclass(frozen=True, slots=True)
class Assessment:
    """A record's status and errors as of one moment."""

    status: Status | None
    errors: tuple[str, ...] | None


class Revalidator:
    """Re-validates stored records against one ChainValidator; thread-safe."""

    def __init__(self, chains: ChainValidator, cert_cache_size: int = 10_000) -> None:
        self.chains = chains
        self._certs: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        self._cache_size = cert_cache_size
        self._lock = threading.Lock()

    @property
    def generation(self) -> str:
        """The trust-anchor set statuses are computed with."""
        return self.chains.trust.generation

    def assess(self, record: Record, at: datetime) -> Assessment | None:
        """The record's status as of ``at``; None when nothing in it can be
        re-validated (no signer certificate), so the stored status stands."""
        if not record.revalidatable:
            return None
        others = [self._cert(der) for der in record.certificates]
        signers = []
        for signer in record.signers:
            if signer.certificate is None:
                signers.append(signer)
                continue
            leaf = self._cert(signer.certificate)
            extra = [cert for cert, der in zip(others, record.certificates, strict=True)
                     if der != signer.certificate]
            signers.append(signer.with_chain(self.chains.validate(leaf, extra, record.crls, at)))
        encrypted = (record.layer or "").startswith("enveloped-data/")
        decided = signed_status(signers, record.message_errors, encrypted=encrypted)
        return Assessment(decided.status, decided.errors)

    def _cert(self, der: bytes) -> x509.Certificate:
        with self._lock:
            cert = self._certs.get(der)
            if cert is not None:
                self._certs.move_to_end(der)
                return cert
        cert = x509.Certificate.load(der)
        with self._lock:
            self._certs[der] = cert
            while len(self._certs) > self._cache_size:
                self._certs.popitem(last=False)
        return cert


@dataclass(frozen=True, slots=True)
class Window:
    """When a cached status is fresh: verified at or after ``cutoff`` (the
    cache lifetime, the last trust-anchor change) and not after ``now``. A
    status from the future was written under a wrong clock (one that jumped
    ahead, a pretend moment); trusting it would keep it until the real clock
    caught up, so it is stale, whatever its age."""

    cutoff: datetime
    now: datetime

    def holds(self, verified_at: datetime) -> bool:
        return self.cutoff <= verified_at <= self.now


@dataclass(frozen=True, slots=True)
class AtDeliveryChange:
    """An at-delivery status that a newly added trust anchor changed."""

    record_id: str
    old: Assessment
    new: Assessment


class Refresher:
    """Keeps current statuses within the cache lifetime and the trust epoch.

    Over a writable store, re-validated statuses are written back (a change
    of status or errors is an Email/changes update; a new smimeVerifiedAt
    alone is not). Over a read-only store they are kept in memory for the
    life of this object, and Email/changes cannot see them.
    """

    def __init__(
        self,
        store: Store,
        revalidator: Revalidator,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lifetime: timedelta = DEFAULT_CACHE_LIFETIME,
        readonly: bool = False,
    ) -> None:
        if not timedelta(0) <= lifetime <= MAX_CACHE_LIFETIME:
            raise ValueError(f"cache lifetime must be between 0 and 24 hours, got {lifetime}")
        self.store = store
        self.revalidator = revalidator
        self.clock = clock
        self.lifetime = lifetime
        self.readonly = readonly
        self._overlay: dict[str, StatusView] = {}
        self._trust_changed_at = datetime.fromtimestamp(0, UTC)
        self._lock = threading.Lock()
        self.sync_trust()

    # ----------------------------------------------------------------- trust

    def sync_trust(self) -> None:
        """Records our anchor set in the store; a different one than last
        recorded makes every status verified before now stale."""
        generation = self.revalidator.generation
        epoch = self.store.trust_epoch()
        if epoch is not None and epoch.generation == generation:
            # An epoch recorded under a clock ahead of ours would make every
            # status stale until we reach it: count it from now instead.
            self._trust_changed_at = min(epoch.changed_at, self.clock())
            return
        now = self.clock()
        # The first generation ever recorded starts no epoch: statuses
        # written before it were computed by a milter with these anchors.
        changed_at = datetime.fromtimestamp(0, UTC) if epoch is None else now
        if not self.readonly:
            self.store.record_trust(generation, changed_at).result()
            epoch = self.store.trust_epoch()
            changed_at = epoch.changed_at if epoch is not None else changed_at
        self._trust_changed_at = changed_at
        with self._lock:
            self._overlay.clear()

    # ----------------------------------------------------------------- staleness

    def window(self) -> Window:
        """The moments between which a status verified now counts as fresh."""
        now = self.clock()
        return Window(max(now - self.lifetime, self._trust_changed_at), now)

    def cutoff(self) -> datetime:
        """Statuses verified before this moment are stale."""
        return self.window().cutoff

    def is_stale(self, view: StatusView, window: Window | None = None) -> bool:
        if not view.revalidatable or view.verified_at is None:
            return False
        return not (window or self.window()).holds(view.verified_at)

    # ----------------------------------------------------------------- reads

    def views(self, ids: Iterable[str], *, fresh: bool) -> dict[str, StatusView]:
        """Status views of the records among ``ids``; with ``fresh``, stale
        ones are re-validated first (in bulk) and their new values returned."""
        return self.state_and_views(ids, fresh=fresh)[1]

    def state_and_views(
        self, ids: Iterable[str], *, fresh: bool
    ) -> tuple[str, dict[str, StatusView]]:
        """The store's state with :meth:`views`. When re-validation wrote to
        the store, both are read again from one snapshot taken after the
        writes, so the state covers the values returned; a client never sees
        its own Email/get's refresh again in Email/changes."""
        ids = list(ids)
        state, found = self.store.state_and_views(ids)
        with self._lock:
            for record_id in found.keys() & self._overlay.keys():
                found[record_id] = self._overlay[record_id]
        if not fresh:
            return state, found
        window = self.window()
        stale = [rid for rid, view in found.items() if self.is_stale(view, window)]
        if not stale:
            return state, found
        refreshed = self.refresh(stale)
        if self.readonly:
            found.update(refreshed)
            return state, found
        return self.store.state_and_views(ids)

    def overlaid(self, ids: Iterable[str]) -> dict[str, StatusView]:
        """The in-memory statuses among ``ids`` (read-only stores only)."""
        with self._lock:
            return {rid: self._overlay[rid] for rid in ids if rid in self._overlay}

    def stale_ids(self) -> Iterator[str]:
        """Every record id whose stored status is stale (the ``verify_due``
        index), oldest first, then those verified in the future."""
        with self._lock:
            overlay = dict(self._overlay)
        window = self.window()
        for record_id in self.store.due(window.cutoff, or_after=window.now):
            fresh = overlay.get(record_id)
            if fresh is None or fresh.verified_at is None or not window.holds(fresh.verified_at):
                yield record_id

    # ----------------------------------------------------------------- writes

    def refresh(self, ids: Iterable[str]) -> dict[str, StatusView]:
        """Re-validates ``ids`` as of now; returns their new views."""
        updated: dict[str, StatusView] = {}
        # The writes of one batch are committed while the next is validated;
        # everything is committed before this returns.
        pending: list[Future[bool]] = []
        batch: list[str] = []
        for record_id in ids:
            batch.append(record_id)
            if len(batch) >= _BATCH:
                updated.update(self._refresh_batch(batch, pending))
                batch = []
        if batch:
            updated.update(self._refresh_batch(batch, pending))
        for future in pending:
            _written_unless_deleted(future)
        return updated

    def refresh_due(self) -> int:
        """Re-validates every stale record (the periodic job); returns how many."""
        return len(self.refresh(self.stale_ids()))

    def _refresh_batch(
        self, ids: list[str], pending: list[Future[bool]]
    ) -> dict[str, StatusView]:
        now = self.clock()
        records = self.store.get_many(ids)
        results: dict[str, StatusView] = {}
        for record_id, record in records.items():
            assessment = self.revalidator.assess(record, now)
            if assessment is None:
                continue
            view = StatusView(
                record_id=record_id,
                received_at=record.received_at,
                status_at_delivery=record.status_at_delivery,
                errors_at_delivery=record.errors_at_delivery,
                status=assessment.status,
                errors=assessment.errors,
                verified_at=now.replace(microsecond=0),
                revalidatable=True,
            )
            results[record_id] = view
            if record.status != view.status or record.errors != view.errors:
                log.info(
                    "record %s: smimeStatus %s -> %s%s", record_id,
                    record.status, view.status,
                    f" ({'; '.join(view.errors)})" if view.errors else "",
                )
            if not self.readonly:
                pending.append(self.store.update(
                    record_id, status=view.status, errors=view.errors, verified_at=now
                ))
        if self.readonly:
            with self._lock:
                self._overlay.update(results)
        return results


def _written_unless_deleted(future: Future[bool]) -> None:
    """Waits for a record update; a record deleted meanwhile (retention)
    has nothing left to update, which is not an error."""
    try:
        future.result()
    except StoreError as exc:
        if exc.reason != "missing":
            raise


@dataclass(frozen=True, slots=True)
class AnchorChange:
    """What recording a new trust-anchor set did to the store."""

    #: The set differs from the recorded one: current statuses became stale.
    epoch_started: bool
    #: At-delivery statuses changed by added anchors (none after a removal).
    at_delivery: tuple[AtDeliveryChange, ...]


def apply_anchor_change(
    store: Store, revalidator: Revalidator, *, added: bool, now: datetime
) -> AnchorChange:
    """Records the revalidator's anchor set as current (statuses verified
    before ``now`` become stale) and, when anchors were added, re-assesses
    smimeStatusAtDelivery, which RFC 9219 §4.1 lets only added anchors change."""
    started = store.record_trust(revalidator.generation, now).result()
    changes = reassess_at_delivery(store, revalidator) if added else []
    return AnchorChange(started, tuple(changes))


def reassess_at_delivery(store: Store, revalidator: Revalidator) -> list[AtDeliveryChange]:
    """After trust anchors were *added*: applies :func:`reassess_records` to
    every record (RFC 9219 §4.1: smimeStatusAtDelivery changes only when
    anchors are added)."""
    changes: list[AtDeliveryChange] = []
    batch: list[str] = []
    for record_id in store.record_ids():
        batch.append(record_id)
        if len(batch) >= _BATCH:
            changes.extend(reassess_records(store, revalidator, batch))
            batch = []
    if batch:
        changes.extend(reassess_records(store, revalidator, batch))
    return changes


def reassess_records(
    store: Store, revalidator: Revalidator, ids: Iterable[str]
) -> list[AtDeliveryChange]:
    """The at-delivery rule of ``trust add`` and ``ingest``: a record whose
    at-delivery status failed is evaluated again as of its receivedAt with
    the revalidator's anchors, and written back when the status changes.

    Only the chain part can change: the signature, the From binding and the
    message errors are facts of the message that the evaluation keeps, so a
    failure for one of those stays a failure, and only one that an anchor
    unknown then caused (an untrusted chain) can turn verified. Both commands
    use this one function, so a store rebuilt by ``ingest`` gives the answer
    ``trust add`` gave to the store it replaces."""
    changes: list[AtDeliveryChange] = []
    ids = list(ids)
    candidates = [
        view.record_id
        for view in store.views(ids).values()
        if view.status_at_delivery is not None and view.status_at_delivery.is_failed
    ]
    pending = []
    for record in store.get_many(candidates).values():
        new = revalidator.assess(record, record.received_at)
        old = Assessment(record.status_at_delivery, record.errors_at_delivery)
        if new is None or new.status == old.status:
            # Still failed for another reason: the at-delivery errors are
            # not a JMAP property, so rewriting them would only make
            # clients refetch (an Email/changes update) for nothing.
            continue
        changes.append(AtDeliveryChange(record.record_id, old, new))
        pending.append(store.update(
            record.record_id, status_at_delivery=new.status, errors_at_delivery=new.errors
        ))
        log.info(
            "record %s: smimeStatusAtDelivery %s -> %s with the current trust anchors",
            record.record_id, old.status, new.status,
        )
    for future in pending:
        _written_unless_deleted(future)
    return changes

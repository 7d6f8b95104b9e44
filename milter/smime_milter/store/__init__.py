"""The LMDB store of verification results: the milter writes, a JMAP server reads.

What other packages use is named here; the modules behind it split the work:
:mod:`.facade` (the :class:`Store` handle), :mod:`.writer` (committing, in
the caller's thread or a writer thread, and the sync thread),
:mod:`.changelog` (JMAP states), :mod:`.migrations` (the schema version),
:mod:`.environment` (LMDB and its lock), :mod:`.codec` (the on-disk JSON form
and keys, specified in ``docs/store-schema.rst``) and :mod:`.records` (the
values and errors). Record ids are :func:`smime_milter.model.new_record_id`'s.
"""

from __future__ import annotations

from smime_milter.store.codec import INDEXES, MAX_LEARNED_PER_ADDRESS, utc_date
from smime_milter.store.facade import SYNC_MODES, UNSET, Store
from smime_milter.store.migrations import SCHEMA_VERSION
from smime_milter.store.records import (
    CannotCalculateChanges,
    Changes,
    LearnedCertificate,
    Record,
    Resubmitted,
    StatusView,
    StoreError,
    TrustEpoch,
)

__all__ = [
    "INDEXES", "MAX_LEARNED_PER_ADDRESS", "SCHEMA_VERSION", "SYNC_MODES", "UNSET",
    "CannotCalculateChanges", "Changes", "LearnedCertificate", "Record", "Resubmitted",
    "StatusView", "Store", "StoreError", "TrustEpoch", "utc_date"
]

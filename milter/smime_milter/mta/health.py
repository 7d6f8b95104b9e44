"""``smime-milter status``: is the milter healthy, check by check.

Each check looks at what an admin would look at by hand, from outside the
daemon: the milter socket (does it accept a connection?), the store (readable,
its schema and size; writable by the service user), the trust anchors as
the daemon loads them, the configured CRL files' dates, the last recorded
message and, when the daemon serves metrics, its workers. A check is ``ok``,
``FAIL`` (the command then exits 1) or ``unknown`` (nothing to look at).
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from smime_milter.config import Config
from smime_milter.errors import SmimeMilterError
from smime_milter.mta.metrics import MetricsError, scrape
from smime_milter.mta.privileges import DEFAULT_USER, STORE_FILES
from smime_milter.store import SCHEMA_VERSION, Store, StoreError
from smime_milter.trust import LoadedTrust, crl_validity

OK = "ok"
FAIL = "FAIL"
UNKNOWN = "unknown"
#: Seconds to wait for the milter socket or the metrics endpoint.
CONNECT_TIMEOUT = 5.0
#: Share of ``store.max_map_size`` above which the store check fails: at
#: max_map_size every write fails and mail gets the ``error`` action.
STORE_FULL = 0.9


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``smime-milter status``."""

    name: str
    state: str
    detail: str
    #: Machine-readable values for ``--json`` (numbers, ISO 8601 moments).
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Health:
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        return all(check.state != FAIL for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": {check.name: {"ok": check.state != FAIL, "state": check.state,
                                    "detail": check.detail, **check.facts}
                       for check in self.checks},
        }

    def lines(self) -> list[str]:
        return [f"{check.state:<7} {check.name:<12} {check.detail}" for check in self.checks]


def check_health(
    config: Config, load_trust: Callable[[Config], LoadedTrust], now: datetime,
    max_idle: timedelta | None = None,
) -> Health:
    """Every check against ``config`` at ``now``; ``max_idle`` makes a last
    message older than that (or none at all) a failure."""
    checks = [_socket(config.milter.socket)]
    store_check, newest = _store(config)
    checks += [store_check, _store_access(config), _anchors(config, load_trust),
               _crls(config, now), _last_message(store_check, newest, now, max_idle),
               _workers(config)]
    return Health(tuple(checks))


def _socket(spec: str) -> Check:
    kind, _, rest = spec.partition(":")
    try:
        if kind in ("unix", "local"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(CONNECT_TIMEOUT)
                probe.connect(rest)
        else:
            port, _, host = rest.partition("@")
            host = host or ("::1" if kind == "inet6" else "127.0.0.1")
            socket.create_connection((host, int(port)), CONNECT_TIMEOUT).close()
    except OSError as exc:
        return Check("socket", FAIL, f"{spec}: cannot connect: {exc.strerror or exc}",
                     {"socket": spec})
    return Check("socket", OK, f"{spec} accepts connections", {"socket": spec})


def _store(config: Config) -> tuple[Check, datetime | None]:
    """Opened read-only, as a JMAP server opens it: schema, records, size."""
    path = config.store.path
    try:
        with Store.open(path, readonly=True) as store:
            stats = store.stats()
            newest = store.newest_received()
    except StoreError as exc:
        return Check("store", FAIL, str(exc), {"path": str(path)}), None
    used, limit = int(stats["used_bytes"]), config.store.max_map_size
    facts = {"path": str(path), "schema_version": stats["schema_version"],
             "records": stats["entries"], "used_bytes": used, "max_map_size": limit}
    detail = (f"{path}: {stats['entries']} records, schema version {stats['schema_version']}, "
              f"{_mib(used)} of max_map_size {_mib(limit)} used")
    if stats["schema_version"] != SCHEMA_VERSION:
        return Check("store", FAIL, f"{detail}; the milter upgrades it to version "
                     f"{SCHEMA_VERSION} at its next start", facts), newest
    if used > STORE_FULL * limit:
        return Check("store", FAIL, f"{detail}: nearly full (raise store.max_map_size, or "
                     "prune: smime-milter prune)", facts), newest
    return Check("store", OK, detail, facts), newest


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _store_access(config: Config) -> Check:
    """Whether the service user could write the store directory and its files."""
    path = config.store.path
    name = config.milter.user or (DEFAULT_USER if os.geteuid() == 0
                                  else pwd.getpwuid(os.geteuid()).pw_name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return Check("store_access", FAIL, f"service user {name!r} does not exist", {"user": name})
    facts = {"user": name, "path": str(path)}
    if entry.pw_uid == 0:
        return Check("store_access", OK, f"{path} writable by {name}", facts)
    groups = set(os.getgrouplist(name, entry.pw_gid))
    targets = [(path, True), *((path / file, False) for file in STORE_FILES)]
    for target, directory in targets:
        try:
            info = os.stat(target)
        except FileNotFoundError:
            if target == path:
                return Check("store_access", FAIL, f"{path}: no such directory", facts)
            continue
        except OSError as exc:
            return Check("store_access", FAIL, f"{target}: {exc.strerror}", facts)
        if not _may_write(info, entry.pw_uid, groups, directory):
            return Check("store_access", FAIL, f"{target}: {name} may not write it", facts)
    return Check("store_access", OK, f"{path} writable by {name}", facts)


def _may_write(info: os.stat_result, uid: int, groups: set[int], directory: bool) -> bool:
    """Permission bits as the kernel applies them to a user who is not root."""
    needed = 0o3 if directory else 0o6  # write+search, or read+write
    if info.st_uid == uid:
        bits = (info.st_mode >> 6) & 0o7
    elif info.st_gid in groups:
        bits = (info.st_mode >> 3) & 0o7
    else:
        bits = info.st_mode & 0o7
    if directory and not stat.S_ISDIR(info.st_mode):
        return False
    return bits & needed == needed


def _anchors(config: Config, load_trust: Callable[[Config], LoadedTrust]) -> Check:
    try:
        loaded = load_trust(config)
    except SmimeMilterError as exc:
        return Check("anchors", FAIL, str(exc))
    count = len(loaded.store.anchors)
    facts = {"anchors": count, "sources": loaded.sources.describe()}
    if not count:
        return Check("anchors", FAIL, "no trust anchors: " + loaded.sources.describe(), facts)
    return Check("anchors", OK, f"{count} anchors: {loaded.sources.describe()}", facts)


def _crls(config: Config, now: datetime) -> Check:
    """The newest CRL's age and the first nextUpdate: a passed one means the
    job that fetches CRLs stopped (and soft revocation checking then reads
    stale data, hard checking refuses)."""
    if not config.trust.crls:
        return Check("crls", OK, "no CRL files configured ([trust] crls)", {"crls": 0})
    try:
        crls = crl_validity(config.trust.crls)
    except SmimeMilterError as exc:
        return Check("crls", FAIL, str(exc))
    if not crls:
        return Check("crls", FAIL, "[trust] crls names no CRL file", {"crls": 0})
    newest = max(crls, key=lambda crl: crl.this_update)
    due = [crl for crl in crls if crl.next_update is not None]
    first = min(due, key=lambda crl: crl.next_update or now) if due else None
    facts: dict[str, Any] = {
        "crls": len(crls), "newest_this_update": newest.this_update.isoformat(),
        "oldest_next_update": first.next_update.isoformat() if first and first.next_update
        else None,
    }
    detail = f"{len(crls)} CRLs, newest issued {_ago(now - newest.this_update)}"
    if first is not None and first.next_update is not None:
        if first.next_update < now:
            return Check("crls", FAIL, f"{first.file} ({first.issuer}): nextUpdate "
                         f"{first.next_update.isoformat()} passed {_ago(now - first.next_update)}",
                         facts)
        detail += f", next update due {first.next_update.isoformat()}"
    return Check("crls", OK, detail, facts)


def _last_message(store: Check, newest: datetime | None, now: datetime,
                  max_idle: timedelta | None) -> Check:
    if store.state == FAIL and "records" not in store.facts:
        return Check("last_message", UNKNOWN, "store not readable")
    if newest is None:
        state = FAIL if max_idle is not None else OK
        return Check("last_message", state, "no message recorded yet", {"received_at": None})
    facts = {"received_at": newest.isoformat()}
    detail = f"last recorded message received {_ago(now - newest)} ({newest.isoformat()})"
    if max_idle is not None and now - newest > max_idle:
        return Check("last_message", FAIL, f"{detail}: longer ago than {_ago(max_idle, '')}",
                     facts)
    return Check("last_message", OK, detail, facts)


def _workers(config: Config) -> Check:
    listen = config.metrics.listen
    if listen is None:
        return Check("workers", UNKNOWN, "metrics endpoint off ([metrics] listen)")
    try:
        samples = scrape(listen, CONNECT_TIMEOUT)
    except MetricsError as exc:
        return Check("workers", FAIL, f"metrics endpoint {exc}")
    alive = int(samples.get('smime_milter_workers{state="alive"}', 0))
    configured = int(samples.get('smime_milter_workers{state="configured"}', 0))
    restarts = int(samples.get("smime_milter_worker_restarts_total", 0))
    facts = {"alive": alive, "configured": configured, "restarts": restarts}
    detail = f"{alive} of {configured} milter processes alive, {restarts} restarted"
    return Check("workers", OK if configured and alive >= configured else FAIL, detail, facts)


def _ago(delta: timedelta, suffix: str = " ago") -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return f"in {_ago(-delta, '')}"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}{suffix}"
    return f"{seconds} s{suffix}"

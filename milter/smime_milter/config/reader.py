"""Configuration: one TOML file turned into immutable objects, strictly.

Unknown keys and bad values are errors that name the file, the line and the
key, so an admin's typo never silently falls back to a default; every error
of the file is reported in one ``ConfigError``, one line each, in file order. Each feature
(trust, release, advanced, policy) owns its settings and the parser of its
section; this module holds the sections of the programs above them (milter,
store, jmap, decrypt keys, verify) and assembles ``Config`` from them all.
The reading toolkit shared by every parser is ``smime_milter.settings``.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smime_milter.advanced import AdvancedConfig, read_advanced_section
from smime_milter.cms import AlgorithmPolicy
from smime_milter.policy import Policy, read_policy_section
from smime_milter.release import ReleaseConfig, read_release_section
from smime_milter.settings import ConfigError, Problems, Reader, did_you_mean, line_of, one_of
from smime_milter.store import SYNC_MODES
from smime_milter.trust import TrustConfig, read_trust_section
from smime_milter.verify import VerifyPolicy

DEFAULT_CONFIG = Path("/etc/smime-milter/smime-milter.toml")
#: Inside Postfix's queue directory, where Debian's chrooted smtpd reaches it
#: as ``unix:smime-milter/smime-milter.sock`` (the opendkim package's precedent).
DEFAULT_SOCKET = "unix:/var/spool/postfix/smime-milter/smime-milter.sock"
DEFAULT_STORE = Path("/var/lib/smime-milter/store")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class DecryptKeyConfig:
    key: Path
    certificate: Path | None = None


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """The daemon: where it listens, who it runs as, its limits."""

    #: libmilter syntax: ``unix:/path`` (or ``local:``), ``inet:port@host``, ``inet6:port@host``.
    socket: str = DEFAULT_SOCKET
    #: Permissions and group of a unix socket, so that only the MTA can connect.
    socket_mode: int = 0o660
    socket_group: str | None = None
    #: Drop privileges to this user after opening the socket (when started as
    #: root); None: ``smime-milter`` when started as root, else stay.
    user: str | None = None
    #: Authentication-Results authserv-id; None: the MTA's ``j`` macro, else the host name.
    authserv_id: str | None = None
    #: Milter processes (pre-forked, each verifying in-process); 0 means one per CPU.
    workers: int = 0
    #: Seconds libmilter waits on the MTA before giving up on a connection.
    timeout: int = 600
    #: Seconds one verification may take before it counts as an internal error.
    verify_timeout: float = 120.0
    #: Messages larger than this are not examined (policy action ``oversize``).
    max_message_size: int = 64 << 20
    #: Bodies larger than this are spooled to a file instead of kept in memory.
    spool_threshold: int = 1 << 20
    #: Where spooled bodies go (None: the system's temporary directory).
    spool_directory: Path | None = None
    log_level: str = "info"
    #: "stderr" (the journal, under systemd) or "syslog" (facility mail).
    log_target: str = "stderr"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The LMDB store the JMAP layer reads."""

    path: Path = DEFAULT_STORE
    map_size: int = 1 << 30
    max_map_size: int = 1 << 36
    #: ``smime-milter prune`` deletes records received more than this many
    #: days ago; 0 keeps every record.
    retention_days: float = 0.0
    #: How the milter daemon's commits reach the disk: "interval" (flushed
    #: at most a second later; diversions at once) or "commit" (each one).
    #: The daemon passes it to ``Store.open(sync=...)``.
    sync: str = "interval"


@dataclass(frozen=True, slots=True)
class JmapConfig:
    """The JMAP read API (``smime-milter jmap`` and ``smime_milter.jmap``)."""

    #: How long a computed smimeStatus is reused (RFC 9219: at most 24 hours).
    cache_lifetime: float = 3600.0
    #: ``unix:/path`` to serve the JMAP API over HTTP (``jmap --listen``).
    listen: str | None = None
    #: Mode of that socket; give the JMAP server's user the service group.
    listen_mode: int = 0o660


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the daemon's Prometheus endpoint, off unless ``listen`` is set."""

    #: ``unix:/path``, ``inet:PORT@ADDRESS`` or ``inet6:PORT@ADDRESS``; None: off.
    listen: str | None = None
    #: Whether ``listen`` may name an address other than loopback (the
    #: metrics say how much mail arrives and from which status: not for the world).
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the verifier and the daemon need, from one file."""

    source: Path | None = None
    trust: TrustConfig = field(default_factory=TrustConfig)
    verify: VerifyPolicy = field(default_factory=VerifyPolicy)
    decrypt_keys: tuple[DecryptKeyConfig, ...] = ()
    milter: MilterConfig = field(default_factory=MilterConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    policy: Policy = field(default_factory=Policy)
    jmap: JmapConfig = field(default_factory=JmapConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    advanced: AdvancedConfig = field(default_factory=AdvancedConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_SOCKET = re.compile(r"^(?:(?:unix|local):/.+|inet6?:\d{1,5}(?:@[^\s@]+)?)$")


def check_socket(text: str) -> str:
    """Validate a libmilter socket specification (raises ValueError)."""
    if not _SOCKET.match(text):
        raise ValueError(f"not a milter socket (unix:/path or inet:port@host): {text!r}")
    if text.startswith("inet") and not 0 < int(text.split(":", 1)[1].split("@", 1)[0]) < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return text


_TABLES = (
    "trust", "verify", "decrypt", "milter", "store", "policy", "jmap", "release", "advanced",
    "metrics",
)


def parse_config(text: str, path: Path | None = None, *, check_files: bool = False) -> Config:
    """Parse TOML text into a Config (``path`` is used for messages and
    relative file names); raises one ``ConfigError`` naming every problem
    (a TOML syntax error stops there: it is the only one). ``check_files``:
    a file a key names that does not exist is a problem at that key
    (``check-config``; the daemon finds out when it loads the file)."""
    where = str(path) if path else "<config>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    problems = Problems(check_files=check_files)
    tables: dict[str, dict[str, Any]] = {}
    for table, value in data.items():
        if table not in _TABLES:
            line = line_of(text, table, "") or line_of(text, "", table)
            problems.add(line, f"{where}:{line}: {table}: unknown section"
                               + did_you_mean(table, _TABLES))
        elif not isinstance(value, dict):
            line = line_of(text, "", table)
            problems.add(line, f"{where}:{line}: {table}: expected a table")
        else:
            tables[table] = value

    trust, revocation = read_trust_section(problems, path, text, tables.get("trust", {}))

    verify = Reader(problems, path, text, "verify", tables.get("verify", {}))
    min_rsa_bits = verify.take("min_rsa_bits", int, 2048)
    if not 512 <= min_rsa_bits <= 16384:
        verify.report("min_rsa_bits", "must be between 512 and 16384")
        min_rsa_bits = 2048
    policy = VerifyPolicy(
        algorithms=AlgorithmPolicy(
            allow_sha1=verify.take("allow_sha1", bool, False), min_rsa_bits=min_rsa_bits
        ),
        revocation=revocation,
        casefold_local_part=verify.take("casefold_local_part", bool, False),
    )
    verify.finish()

    decrypt = Reader(problems, path, text, "decrypt", tables.get("decrypt", {}))
    keys = tuple(DecryptKeyConfig(p) for p in decrypt.paths("keys", (), must_exist=True))
    decrypt.finish()

    def reader(table: str) -> Reader:
        return Reader(problems, path, text, table, tables.get(table, {}))

    config = Config(
        source=path, trust=trust, verify=policy, decrypt_keys=keys,
        milter=_milter_config(reader("milter")),
        store=_store_config(reader("store")),
        policy=read_policy_section(problems, path, text, tables.get("policy", {})),
        jmap=_jmap_config(reader("jmap")),
        release=read_release_section(problems, path, text, tables.get("release", {})),
        advanced=read_advanced_section(problems, path, text, tables.get("advanced", {})),
        metrics=_metrics_config(reader("metrics")),
    )
    problems.check()
    return config


def check_listen(text: str) -> str:
    """A ``unix:/absolute/path`` listening address (raises ValueError)."""
    if not re.fullmatch(r"unix:/\S+", text):
        raise ValueError(f"not a unix socket address (unix:/path): {text!r}")
    return text


_METRICS_LISTEN = re.compile(r"unix:/\S+|(inet6?):(\d{1,5})(?:@(\S+))?")


def metrics_address(text: str) -> tuple[str, int] | str:
    """A ``[metrics] listen`` value as ``(host, port)`` for TCP or the path of a
    unix socket (raises ValueError). ``inet:PORT`` alone means every address."""
    match = _METRICS_LISTEN.fullmatch(text)
    if match is None:
        raise ValueError(f"expected unix:/path, inet:PORT@ADDRESS or inet6:PORT@ADDRESS, "
                         f"got {text!r}")
    if match.group(1) is None:
        return text.removeprefix("unix:")
    family, port, host = match.group(1), int(match.group(2)), match.group(3)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {text!r}")
    if host is None:
        return ("::" if family == "inet6" else "0.0.0.0", port)
    if host == "localhost" and family == "inet":
        return ("127.0.0.1", port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address (a name could resolve anywhere): {host!r}") from None
    if (address.version == 6) != (family == "inet6"):
        raise ValueError(f"{family} needs an IPv{6 if family == 'inet6' else 4} address: {text!r}")
    return (str(address), port)


def is_loopback(address: tuple[str, int] | str) -> bool:
    """A unix socket or a loopback address: reachable from this host only."""
    return isinstance(address, str) or ipaddress.ip_address(address[0]).is_loopback


def _metrics_config(reader: Reader) -> MetricsConfig:
    listen = reader.take("listen", str, None)
    allow_remote = reader.take("allow_remote", bool, False)
    if listen is not None:
        try:
            address = metrics_address(listen)
        except ValueError as exc:
            reader.report("listen", str(exc))
            listen = None
        else:
            if not allow_remote and not is_loopback(address):
                reader.report("listen", "not a loopback address: the metrics would be served "
                              "to other hosts; set allow_remote = true if that is meant")
                listen = None
    reader.finish()
    return MetricsConfig(listen=listen, allow_remote=allow_remote)


def _octal_mode(reader: Reader, key: str, default: int) -> int:
    text = reader.take(key, str, None)
    if text is None:
        return default
    if not re.fullmatch(r"0?[0-7]{3}", text):
        reader.report(key, f"expected an octal mode such as \"0660\", got {text!r}")
        return default
    return int(text, 8)


def _jmap_config(reader: Reader) -> JmapConfig:
    defaults = JmapConfig()
    config = JmapConfig(
        cache_lifetime=float(reader.number("cache_lifetime", defaults.cache_lifetime, 0, 86400)),
        listen=reader.choice("listen", check_listen, None),
        listen_mode=_octal_mode(reader, "listen_mode", defaults.listen_mode),
    )
    reader.finish()
    return config


def _milter_config(reader: Reader) -> MilterConfig:
    defaults = MilterConfig()
    mode = _octal_mode(reader, "socket_mode", defaults.socket_mode)
    config = MilterConfig(
        socket=reader.choice("socket", check_socket, defaults.socket),
        socket_mode=mode,
        socket_group=reader.optional_str("socket_group"),
        user=reader.optional_str("user"),
        authserv_id=reader.choice("authserv_id", _check_authserv_id, None),
        workers=int(reader.number("workers", defaults.workers, 0, 256)),
        timeout=int(reader.number("timeout", defaults.timeout, 1, 86400)),
        verify_timeout=float(reader.number("verify_timeout", defaults.verify_timeout, 1, 3600)),
        max_message_size=reader.size("max_message_size", defaults.max_message_size),
        spool_threshold=reader.size("spool_threshold", defaults.spool_threshold),
        spool_directory=reader.optional_path("spool_directory"),
        log_level=reader.choice("log_level", one_of(LOG_LEVELS), defaults.log_level),
        log_target=reader.choice("log_target", one_of(("stderr", "syslog")),
                                 defaults.log_target),
    )
    reader.finish()
    return config


def _store_config(reader: Reader) -> StoreConfig:
    defaults = StoreConfig()
    path = reader.optional_path("path")
    map_size = reader.size("map_size", defaults.map_size)
    max_map_size = reader.size("max_map_size", max(defaults.max_map_size, map_size))
    if map_size < 1 << 20:
        reader.report("map_size", "must be at least 1M")
    if max_map_size < map_size and not reader.failed("map_size", "max_map_size"):
        reader.report("max_map_size", "must not be smaller than map_size")
    retention_days = float(reader.number("retention_days", defaults.retention_days, 0, 36500))
    sync = reader.choice("sync", one_of(SYNC_MODES), defaults.sync)
    reader.finish()
    return StoreConfig(
        path=path or defaults.path,
        map_size=map_size, max_map_size=max_map_size, retention_days=retention_days,
        sync=sync,
    )


_AUTHSERV_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


def _check_authserv_id(value: str) -> str:
    """An RFC 8601 authserv-id we can write as a bare token."""
    if not _AUTHSERV_ID.match(value):
        raise ValueError(value)
    return value


def load_config(path: Path, *, check_files: bool = False) -> Config:
    """The configuration file at ``path`` (see ``parse_config``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return parse_config(text, path, check_files=check_files)

"""Configuration: one TOML file turned into immutable objects, strictly.

Unknown keys and bad values are errors that name the file, the line and the
key, so an admin's typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from smime_milter.advanced import ENCRYPT_MODES, AdvancedConfig, AutoRule
from smime_milter.cms import AlgorithmPolicy
from smime_milter.errors import SmimeMilterError
from smime_milter.mail import mime
from smime_milter.model import RevocationMode
from smime_milter.policy import MACHINERY_ACTIONS, Action, Actions, Policy, merged
from smime_milter.release import DEFAULT_SUBMIT, HOLD, ReleaseConfig, ReleaseRule
from smime_milter.trust import TrustConfig, TrustStoreError, load_certificates
from smime_milter.verify import VerifyPolicy

DEFAULT_CONFIG = Path("/etc/smime-milter/smime-milter.toml")
DEFAULT_SOCKET = "unix:/run/smime-milter/smime-milter.sock"
DEFAULT_STORE = Path("/var/lib/smime-milter/store")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(SmimeMilterError, ValueError):
    """A configuration problem, already phrased as ``file:line: key: reason``."""


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
    #: Drop privileges to this user after opening the socket (when started as root).
    user: str | None = None
    #: Authentication-Results authserv-id; None: the MTA's ``j`` macro, else the host name.
    authserv_id: str | None = None
    #: Verification worker processes; 0 means one per CPU.
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


_SOCKET = re.compile(r"^(?:(?:unix|local):/.+|inet6?:\d{1,5}(?:@[^\s@]+)?)$")


def check_socket(text: str) -> str:
    """Validate a libmilter socket specification (raises ValueError)."""
    if not _SOCKET.match(text):
        raise ValueError(f"not a milter socket (unix:/path or inet:port@host): {text!r}")
    if text.startswith("inet") and not 0 < int(text.split(":", 1)[1].split("@", 1)[0]) < 65536:
        raise ValueError(f"port out of range: {text!r}")
    return text


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a string such as ``"64M"`` (powers of 1024)."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"not a size: {value!r}")
    return int(match.group(1)) << (10 * " kmgt".index(match.group(2).lower() or " "))


def _line_of(text: str, table: str, key: str, occurrence: int = 0) -> int:
    """Best-effort line number of ``key`` inside ``[table]`` (1-based, 0 if
    unknown); ``occurrence`` picks one ``[[table]]`` of an array of tables."""
    current = ""
    seen = 0
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    assignment = re.compile(r"^\s*([\"']?)([A-Za-z0-9_.@+-]+)\1\s*=")
    wanted = table.replace('"', "")
    for number, line in enumerate(text.splitlines(), start=1):
        match = header.match(line)
        if match:
            current = match.group(1).replace(" ", "").replace('"', "")
            if current == wanted:
                seen += 1
            if not key and current == table and seen == occurrence + 1:
                return number
            continue
        match = assignment.match(line)
        if match and current == wanted and seen == occurrence + 1 and match.group(2) == key:
            return number
    return 0


class _Reader:
    """Pops typed values out of a parsed table, remembering what was used."""

    def __init__(self, path: Path | None, text: str, table: str, data: Mapping[str, Any],
                 occurrence: int | None = None):
        self.path, self.text, self.table, self.data = path, text, table, dict(data)
        self.occurrence = occurrence

    def error(self, key: str, reason: str) -> ConfigError:
        where = str(self.path) if self.path else "<config>"
        line = _line_of(self.text, self.table, key, self.occurrence or 0)
        if not line and key:
            # A missing key: point at its table's header instead.
            line = _line_of(self.text, self.table, "", self.occurrence or 0)
        table = self.table if self.occurrence is None else f"{self.table}[{self.occurrence}]"
        dotted = ".".join(part for part in (table, key) if part)
        return ConfigError(f"{where}:{line}: {dotted}: {reason}")

    def take(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if kind is int and isinstance(value, bool):
            raise self.error(key, "expected an integer, got a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def paths(self, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        value = self.take(key, list, None)
        if value is None:
            return default
        if not all(isinstance(item, str) and item for item in value):
            raise self.error(key, "expected a list of non-empty path strings")
        base = self.path.parent if self.path else Path.cwd()
        return tuple(base / item for item in value)

    def choice(self, key: str, convert: Callable[[str], Any], default: Any) -> Any:
        value = self.take(key, str, None)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as exc:
            raise self.error(key, f"invalid value {value!r}") from exc

    def size(self, key: str, default: int) -> int:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(key, "expected a size in bytes (integer or \"64M\")")
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from exc

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {type(value).__name__}")
        self.data.pop(key, None)
        if not low <= value <= high:
            raise self.error(key, f"must be between {low:g} and {high:g}")
        return value

    def optional_str(self, key: str) -> str | None:
        value: str | None = self.take(key, str, None)
        if value is not None and not value.strip():
            raise self.error(key, "must not be empty (leave the key out for the default)")
        return value

    def finish(self) -> None:
        for key in self.data:
            raise self.error(key, "unknown key")


_TABLES = (
    "trust", "verify", "decrypt", "milter", "store", "policy", "jmap", "release", "advanced",
)


def parse_config(text: str, path: Path | None = None) -> Config:
    """Parse TOML text into a Config (``path`` is used for messages and
    relative file names)."""
    where = str(path) if path else "<config>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    for table, value in data.items():
        if table not in _TABLES:
            line = _line_of(text, table, "") or _line_of(text, "", table)
            raise ConfigError(f"{where}:{line}: {table}: unknown section")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}:{_line_of(text, '', table)}: {table}: expected a table")

    trust = _Reader(path, text, "trust", data.get("trust", {}))
    defaults = TrustConfig()
    trust_config = TrustConfig(
        anchors=trust.paths("anchors", defaults.anchors),
        intermediates=trust.paths("intermediates", ()),
        crls=trust.paths("crls", ()),
        anchor_directory=_relative(trust, trust.optional_str("anchor_directory"))
        or defaults.anchor_directory,
    )
    revocation = trust.choice("revocation", RevocationMode, RevocationMode.SOFT)
    trust.finish()

    verify = _Reader(path, text, "verify", data.get("verify", {}))
    min_rsa_bits = verify.take("min_rsa_bits", int, 2048)
    if not 512 <= min_rsa_bits <= 16384:
        raise verify.error("min_rsa_bits", "must be between 512 and 16384")
    policy = VerifyPolicy(
        algorithms=AlgorithmPolicy(
            allow_sha1=verify.take("allow_sha1", bool, False), min_rsa_bits=min_rsa_bits
        ),
        revocation=revocation,
        casefold_local_part=verify.take("casefold_local_part", bool, False),
    )
    verify.finish()

    decrypt = _Reader(path, text, "decrypt", data.get("decrypt", {}))
    keys = tuple(DecryptKeyConfig(p) for p in decrypt.paths("keys", ()))
    decrypt.finish()
    return Config(
        source=path, trust=trust_config, verify=policy, decrypt_keys=keys,
        milter=_milter_config(_Reader(path, text, "milter", data.get("milter", {}))),
        store=_store_config(_Reader(path, text, "store", data.get("store", {}))),
        policy=_policy(path, text, data.get("policy", {})),
        jmap=_jmap_config(_Reader(path, text, "jmap", data.get("jmap", {}))),
        release=_release_config(path, text, data.get("release", {})),
        advanced=_advanced_config(path, text, data.get("advanced", {})),
    )


def check_listen(text: str) -> str:
    """A ``unix:/absolute/path`` listening address (raises ValueError)."""
    if not re.fullmatch(r"unix:/\S+", text):
        raise ValueError(f"not a unix socket address (unix:/path): {text!r}")
    return text


def _octal_mode(reader: _Reader, key: str, default: int) -> int:
    text = reader.take(key, str, None)
    if text is None:
        return default
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise reader.error(key, f"expected an octal mode such as \"0660\", got {text!r}")
    return int(text, 8)


def _jmap_config(reader: _Reader) -> JmapConfig:
    defaults = JmapConfig()
    config = JmapConfig(
        cache_lifetime=float(reader.number("cache_lifetime", defaults.cache_lifetime, 0, 86400)),
        listen=reader.choice("listen", check_listen, None),
        listen_mode=_octal_mode(reader, "listen_mode", defaults.listen_mode),
    )
    reader.finish()
    return config


def _milter_config(reader: _Reader) -> MilterConfig:
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
        spool_directory=_relative(reader, reader.optional_str("spool_directory")),
        log_level=reader.choice("log_level", _one_of(LOG_LEVELS), defaults.log_level),
        log_target=reader.choice("log_target", _one_of(("stderr", "syslog")),
                                 defaults.log_target),
    )
    reader.finish()
    return config


def _relative(reader: _Reader, text: str | None) -> Path | None:
    if text is None:
        return None
    base = reader.path.parent if reader.path else Path.cwd()
    return base / text


def _store_config(reader: _Reader) -> StoreConfig:
    defaults = StoreConfig()
    path_text = reader.optional_str("path")
    map_size = reader.size("map_size", defaults.map_size)
    max_map_size = reader.size("max_map_size", max(defaults.max_map_size, map_size))
    if map_size < 1 << 20:
        raise reader.error("map_size", "must be at least 1M")
    if max_map_size < map_size:
        raise reader.error("max_map_size", "must not be smaller than map_size")
    retention_days = float(reader.number("retention_days", defaults.retention_days, 0, 36500))
    reader.finish()
    return StoreConfig(
        path=_relative(reader, path_text) or defaults.path,
        map_size=map_size, max_map_size=max_map_size, retention_days=retention_days,
    )


def _one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value
    return check


_AUTHSERV_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


def _check_authserv_id(value: str) -> str:
    """An RFC 8601 authserv-id we can write as a bare token."""
    if not _AUTHSERV_ID.match(value):
        raise ValueError(value)
    return value


def _actions(reader: _Reader) -> dict[str, Action]:
    """The outcome -> action keys present in one table."""
    found: dict[str, Action] = {}
    for name in Actions.outcome_names():
        action = reader.choice(name, Action, None)
        if action is None:
            continue
        if name in ("oversize", "error") and action not in _MACHINERY_CHOICES[name]:
            allowed = ", ".join(sorted(_MACHINERY_CHOICES[name]))
            raise reader.error(name, f"{action.value!r} is not possible here (use {allowed})")
        found[name] = action
    return found


_MACHINERY_CHOICES = {
    # An oversized message was not examined, so it cannot be tagged with a status.
    "oversize": MACHINERY_ACTIONS | {Action.QUARANTINE},
    "error": MACHINERY_ACTIONS,
}


def _policy(path: Path | None, text: str, data: Mapping[str, Any]) -> Policy:
    reader = _Reader(path, text, "policy", data)
    defaults = Policy()
    domains_data = reader.take("domains", dict, {})
    base = merged(Actions(), _actions(reader))
    monitor = reader.take("monitor", bool, defaults.monitor)
    tag_subject = reader.take("tag_subject", str, defaults.tag_subject)
    if "\n" in tag_subject or "\r" in tag_subject:
        raise reader.error("tag_subject", "must be one line")
    reader.finish()
    domains: dict[str, Actions] = {}
    for domain, table in domains_data.items():
        name = f'policy.domains."{domain}"'
        if not isinstance(table, dict):
            raise _Reader(path, text, "policy.domains", {}).error(domain, "expected a table")
        domain_reader = _Reader(path, text, name, table)
        if not re.fullmatch(r"[A-Za-z0-9.-]+", domain) or domain.startswith("."):
            raise domain_reader.error("", f"not a domain name: {domain!r}")
        domains[domain.lower().rstrip(".")] = merged(
base, _actions(domain_reader))
        domain_reader.finish()
    return Policy(actions=base, domains=tuple(domains.items()), monitor=monitor,
                  tag_subject=tag_subject)


_RULE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DOMAIN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def check_submit(text: str) -> str:
    """``sendmail:/absolute/path`` or ``smtp:host:port`` (raises ValueError)."""
    kind, _, rest = text.partition(":")
    if kind == "sendmail" and rest.startswith("/"):
        return text
    host, _, port = rest.rpartition(":")
    if kind == "smtp" and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise ValueError(f"expected sendmail:/path or smtp:host:port, got {text!r}")


def _release_config(path: Path | None, text: str, data: Mapping[str, Any]) -> ReleaseConfig:
    reader = _Reader(path, text, "release", data)
    rules_data = reader.take("rules", list, [])
    submit = reader.choice("submit", check_submit, DEFAULT_SUBMIT)
    reader.finish()
    rules: list[ReleaseRule] = []
    for index, table in enumerate(rules_data):
        if not isinstance(table, dict):
            raise reader.error("rules", "expected [[release.rules]] tables")
        rule = _release_rule(_Reader(path, text, "release.rules", table, index), index)
        if any(existing.name == rule.name for existing in rules):
            raise _Reader(path, text, "release.rules", {}, index).error(
                "name", f"rule name {rule.name!r} is used twice")
        rules.append(rule)
    return ReleaseConfig(rules=tuple(rules), submit=submit)


def _release_rule(reader: _Reader, index: int) -> ReleaseRule:
    name = reader.take("name", str, f"rule{index + 1}")
    if not _RULE_NAME.fullmatch(name):
        raise reader.error("name", "use letters, digits, '.', '_' and '-' (at most 64)")
    releasers = _address_or_domain_list(reader, "releasers")
    if not releasers:
        raise reader.error("releasers", "required: the addresses or domains that may release")
    divert_to = reader.take("divert_to", str, None)
    if divert_to is None:
        raise reader.error("divert_to", f"required: a release-officer address or {HOLD!r}")
    if divert_to != HOLD and (not _plain_address(divert_to)
                              or any(c in divert_to for c in "<>, \t\r\n")):
        raise reader.error("divert_to", f"not an address or {HOLD!r}: {divert_to!r}")
    if isinstance(reader.data.get("required"), float):
        raise reader.error("required", "expected an integer")
    required = int(reader.number("required", 1, 1, 100))
    everything = reader.take("all", bool, False)
    senders = _address_or_domain_list(reader, "senders")
    recipient_domains = _domain_list(reader, "recipient_domains")
    daemons = _string_list(reader, "daemons")
    ports = _port_list(reader, "ports")
    selectors = senders or recipient_domains or daemons or ports
    if everything and selectors:
        raise reader.error("all", "all = true applies to every message: drop the other "
                                  "selectors or all")
    if not everything and not selectors:
        raise reader.error("", "a rule needs a selector (senders, recipient_domains, "
                               "daemons, ports) or all = true")
    releaser_cas = _certificate_digests(reader, "releaser_cas")
    reader.finish()
    return ReleaseRule(
        name=name, releasers=releasers, divert_to=divert_to, required=required,
        all=everything, senders=senders, recipient_domains=recipient_domains,
        daemons=daemons, ports=ports, releaser_cas=releaser_cas,
    )


def _string_list(reader: _Reader, key: str) -> tuple[str, ...]:
    value = reader.take(key, list, [])
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise reader.error(key, "expected a list of non-empty strings")
    return tuple(value)


def _domain_list(reader: _Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in _string_list(reader, key):
        if not _DOMAIN.fullmatch(item.rstrip(".")):
            raise reader.error(key, f"not a domain name: {item!r}")
        found.append(item.lower().rstrip("."))
    return tuple(found)


def _address_or_domain_list(reader: _Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in _string_list(reader, key):
        if "@" in item:
            if not _plain_address(item) or item.strip() != item or "<" in item:
                raise reader.error(key, f"not an address: {item!r}")
            found.append(item)
        elif _DOMAIN.fullmatch(item.rstrip(".")):
            found.append(item.lower().rstrip("."))
        else:
            raise reader.error(key, f"not an address or domain: {item!r}")
    return tuple(found)


def _plain_address(text: str) -> bool:
    """``local@domain`` with a host-name domain and no stray ``@`` in the local
    part: ``alice@@example.com`` would parse (local part ``alice@``) yet never
    match anyone, silently switching a sender selector off."""
    address = mime.parse_address(text)
    local = text.rpartition("@")[0]
    return (address is not None and bool(_DOMAIN.fullmatch(address.domain))
            and ("@" not in local or (local.startswith('"') and local.endswith('"'))))


def _port_list(reader: _Reader, key: str) -> tuple[int, ...]:
    value = reader.take(key, list, [])
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value):
        raise reader.error(key, "expected a list of TCP ports (1-65535)")
    return tuple(value)


def _certificate_digests(reader: _Reader, key: str) -> tuple[bytes, ...]:
    paths = reader.paths(key, ())
    try:
        digests = tuple(cert.sha256 for cert in load_certificates(paths))
    except TrustStoreError as exc:
        raise reader.error(key, str(exc)) from exc
    if paths and not digests:
        # No CA would silently mean "any CA": the restriction must not vanish.
        raise reader.error(key, "no CA certificates found in " + ", ".join(map(str, paths)))
    return digests


_ACCOUNT = re.compile(r"[A-Za-z0-9_.@+-]{1,256}")


def _advanced_config(path: Path | None, text: str, data: Mapping[str, Any]) -> AdvancedConfig:
    reader = _Reader(path, text, "advanced", data)
    defaults = AdvancedConfig()
    accounts_table = reader.take("accounts", dict, {})
    auto_tables = reader.take("auto", list, [])
    client_account = reader.optional_str("client_account")
    if client_account is not None and not _ACCOUNT.fullmatch(client_account):
        raise reader.error("client_account", f"not an account name: {client_account!r}")
    keys = _relative(reader, reader.optional_str("keys"))
    password_file = _relative(reader, reader.optional_str("keys_password_file"))
    addressbook = _relative(reader, reader.optional_str("addressbook"))
    learn = reader.take("learn", bool, defaults.learn)
    daemons = _string_list(reader, "submission_daemons")
    clients = _network_list(reader, "submission_clients")
    sasl = reader.take("submission_sasl", bool, defaults.submission_sasl)
    reader.finish()
    accounts_reader = _Reader(path, text, "advanced.accounts", accounts_table)
    accounts = []
    for account in list(accounts_table):
        if not _ACCOUNT.fullmatch(account):
            raise accounts_reader.error(account, "not an account name (letters, digits, "
                                                 "'.', '_', '-', '+', '@')")
        senders = _address_or_domain_list(accounts_reader, account)
        if not senders:
            raise accounts_reader.error(account, "list the addresses or domains it may sign as")
        accounts.append((account, senders))
    rules = []
    for index, table in enumerate(auto_tables):
        if not isinstance(table, dict):
            raise reader.error("auto", "expected [[advanced.auto]] tables")
        rules.append(_auto_rule(_Reader(path, text, "advanced.auto", table, index)))
    return AdvancedConfig(
        keys=keys, keys_password_file=password_file, addressbook=addressbook, learn=learn,
        accounts=tuple(accounts), submission_daemons=daemons, submission_clients=clients,
        submission_sasl=sasl, client_account=client_account, auto=tuple(rules),
    )


def _auto_rule(reader: _Reader) -> AutoRule:
    senders = _address_or_domain_list(reader, "senders")
    if not senders:
        raise reader.error("senders", "required: the addresses or domains the rule covers")
    rule = AutoRule(
        senders=senders,
        sign=reader.take("sign", bool, False),
        encrypt=reader.choice("encrypt", _one_of(ENCRYPT_MODES), "never"),
    )
    reader.finish()
    if not rule.sign and rule.encrypt == "never":
        raise reader.error("", "the rule neither signs nor encrypts")
    return rule


def _network_list(reader: _Reader, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    found = []
    for item in _string_list(reader, key):
        try:
            found.append(ip_network(item, strict=True))
        except ValueError as exc:
            raise reader.error(key, f"not an address or network: {item!r} ({exc})") from exc
    return tuple(found)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return parse_config(text, path)

"""Reading one TOML section strictly, errors naming file, line and key.

Each feature owns its settings and the parser of its section; this module is
the toolkit they share, low enough for all of them: a ``Reader`` that pops
typed values out of one table, rejects unknown keys, and phrases every
problem as a ``ConfigError`` ``file:line: table.key: reason``. It reads
values; what a value means belongs to the feature's parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import parse_address

__all__ = [
    "ConfigError", "Reader", "address_or_domain_list", "domain_list", "line_of",
    "network_list", "one_of", "parse_size", "plain_address", "port_list", "string_list"
]


class ConfigError(SmimeMilterError, ValueError):
    """A configuration problem, already phrased as ``file:line: key: reason``."""


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


def line_of(text: str, table: str, key: str, occurrence: int = 0) -> int:
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


class Reader:
    """Pops typed values out of a parsed table, remembering what was used."""

    def __init__(self, path: Path | None, text: str, table: str, data: Mapping[str, Any],
                 occurrence: int | None = None):
        self.path, self.text, self.table, self.data = path, text, table, dict(data)
        self.occurrence = occurrence

    def error(self, key: str, reason: str) -> ConfigError:
        where = str(self.path) if self.path else "<config>"
        line = line_of(self.text, self.table, key, self.occurrence or 0)
        if not line and key:
            # A missing key: point at its table's header instead.
            line = line_of(self.text, self.table, "", self.occurrence or 0)
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

    def _base(self) -> Path:
        """Relative file names are relative to the configuration file."""
        return self.path.parent if self.path else Path.cwd()

    def paths(self, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        value = self.take(key, list, None)
        if value is None:
            return default
        if not all(isinstance(item, str) and item for item in value):
            raise self.error(key, "expected a list of non-empty path strings")
        return tuple(self._base() / item for item in value)

    def optional_path(self, key: str) -> Path | None:
        text = self.optional_str(key)
        return None if text is None else self._base() / text

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


def one_of(allowed: tuple[str, ...]) -> Callable[[str], str]:
    """A ``Reader.choice`` converter accepting exactly ``allowed``."""
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value
    return check


_DOMAIN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def string_list(reader: Reader, key: str) -> tuple[str, ...]:
    value = reader.take(key, list, [])
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise reader.error(key, "expected a list of non-empty strings")
    return tuple(value)


def domain_list(reader: Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in string_list(reader, key):
        if not _DOMAIN.fullmatch(item.rstrip(".")):
            raise reader.error(key, f"not a domain name: {item!r}")
        found.append(item.lower().rstrip("."))
    return tuple(found)


def address_or_domain_list(reader: Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in string_list(reader, key):
        if "@" in item:
            if not plain_address(item) or item.strip() != item or "<" in item:
                raise reader.error(key, f"not an address: {item!r}")
            found.append(item)
        elif _DOMAIN.fullmatch(item.rstrip(".")):
            found.append(item.lower().rstrip("."))
        else:
            raise reader.error(key, f"not an address or domain: {item!r}")
    return tuple(found)


def plain_address(text: str) -> bool:
    """``local@domain`` with a host-name domain and no stray ``@`` in the local
    part: ``alice@@example.com`` would parse (local part ``alice@``) yet never
    match anyone, silently switching a sender selector off."""
    address = parse_address(text)
    local = text.rpartition("@")[0]
    return (address is not None and bool(_DOMAIN.fullmatch(address.domain))
            and ("@" not in local or (local.startswith('"') and local.endswith('"'))))


def port_list(reader: Reader, key: str) -> tuple[int, ...]:
    value = reader.take(key, list, [])
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value):
        raise reader.error(key, "expected a list of TCP ports (1-65535)")
    return tuple(value)


def network_list(reader: Reader, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    found = []
    for item in string_list(reader, key):
        try:
            found.append(ip_network(item, strict=True))
        except ValueError as exc:
            raise reader.error(key, f"not an address or network: {item!r} ({exc})") from exc
    return tuple(found)

"""Reading one TOML section strictly, errors naming file, line and key.

Each feature owns its settings and the parser of its section; this module is
the toolkit they share, low enough for all of them: a ``Reader`` that pops
typed values out of one table, rejects unknown keys, and phrases every
problem as ``file:line: table.key: reason``. It reads values; what a value
means belongs to the feature's parser.

Problems are collected, not raised: every ``Reader`` of one file reports into
one ``Problems``, a bad value reads as the key's default so parsing goes on,
and the caller raises them all at once (``Problems.check``), so an admin sees
every error of the file in one run. A check that depends on a bad value is
skipped (``Reader.failed``) rather than reported as a follow-on error.

An unknown key or section names the closest known one (``did you mean``), and
with ``Problems(check_files=True)`` (``check-config``) a file a key names that
does not exist is a problem at that key's line too, so the admin learns about
every missing file of the file in the same run instead of one per start.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import parse_address

__all__ = [
    "ConfigError", "OneOf", "Problems", "Reader", "address_or_domain_list", "did_you_mean",
    "domain_list", "line_of", "network_list", "one_of", "parse_size", "plain_address",
    "port_list", "string_list"
]


class ConfigError(SmimeMilterError, ValueError):
    """Configuration problems, each already phrased as ``file:line: key: reason``;
    the message is all of them, one per line."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)

    @property
    def problems(self) -> tuple[str, ...]:
        """Each problem, in file order."""
        return tuple(str(problem) for problem in self.args)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class Problems:
    """The problems found in one configuration file, in the order found.
    ``check_files``: a file a key names must exist (``Reader.existing``)."""

    def __init__(self, *, check_files: bool = False) -> None:
        self._found: list[tuple[int, str]] = []
        self.check_files = check_files

    def add(self, line: int, message: str) -> None:
        """One problem at ``line`` (0: unknown); the same message once."""
        if (line, message) not in self._found:
            self._found.append((line, message))

    def __bool__(self) -> bool:
        return bool(self._found)

    def check(self) -> None:
        """Raise them all as one ``ConfigError``, in line order (ties in the
        order found, a problem of unknown line last), if there are any."""
        if self._found:
            ordered = sorted(self._found, key=lambda found: found[0] or float("inf"))
            raise ConfigError(*(message for _, message in ordered))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean "x"?`` for the known name closest to a misspelt one,
    else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


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
    seen = 0 if table else 1  # the root table (top-level keys) has no header
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
    """Pops typed values out of a parsed table, remembering what was used and
    reporting every problem into ``problems``."""

    def __init__(self, problems: Problems, path: Path | None, text: str, table: str,
                 data: Mapping[str, Any], occurrence: int | None = None):
        self.problems = problems
        self.path, self.text, self.table, self.data = path, text, table, dict(data)
        self.occurrence = occurrence
        self.bad: set[str] = set()
        #: Every key a parser asked for, in order: the candidates of ``did you mean``.
        self.known: list[str] = []

    def _ask(self, key: str) -> None:
        if key not in self.known:
            self.known.append(key)

    def report(self, key: str, reason: str) -> None:
        """One problem with ``key`` (``""``: the table itself)."""
        where = str(self.path) if self.path else "<config>"
        line = line_of(self.text, self.table, key, self.occurrence or 0)
        if not line and key:
            # A missing key: point at its table's header instead.
            line = line_of(self.text, self.table, "", self.occurrence or 0)
        table = self.table if self.occurrence is None else f"{self.table}[{self.occurrence}]"
        dotted = ".".join(part for part in (table, key) if part)
        self.bad.add(key)
        self.problems.add(line, f"{where}:{line}: {dotted}: {reason}")

    def failed(self, *keys: str) -> bool:
        """True when any of ``keys`` was reported: checks that depend on it
        are skipped rather than reported as follow-on errors."""
        return any(key in self.bad for key in keys)

    def take(self, key: str, kind: type, default: Any) -> Any:
        self._ask(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if kind is int and isinstance(value, bool):
            self.report(key, "expected an integer, got a boolean")
            return default
        if not isinstance(value, kind):
            self.report(key, f"expected {kind.__name__}, got {type(value).__name__}")
            return default
        return value

    def _base(self) -> Path:
        """Relative file names are relative to the configuration file."""
        return self.path.parent if self.path else Path.cwd()

    def paths(self, key: str, default: tuple[Path, ...], *,
              must_exist: bool = False) -> tuple[Path, ...]:
        """A list of file names; ``must_exist``: files the configuration
        reads, checked when ``problems.check_files`` is set."""
        value = self.take(key, list, None)
        if value is None:
            return default
        if not all(isinstance(item, str) and item for item in value):
            self.report(key, "expected a list of non-empty path strings")
            return default
        found = tuple(self._base() / item for item in value)
        if must_exist and self.problems.check_files:
            self.existing(key, found)
        return found

    def optional_path(self, key: str, *, must_exist: bool = False) -> Path | None:
        text = self.optional_str(key)
        if text is None:
            return None
        found = self._base() / text
        if must_exist and self.problems.check_files:
            self.existing(key, (found,))
        return found

    def existing(self, key: str, paths: Iterable[Path]) -> bool:
        """Reports each of ``paths`` that does not exist (``no such file``) at
        ``key``'s line; True when all exist."""
        missing = [path for path in paths if not path.exists()]
        for path in missing:
            self.report(key, f"no such file: {path}")
        return not missing

    def choice(self, key: str, convert: Callable[[str], Any], default: Any) -> Any:
        value = self.take(key, str, None)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError:
            choices: tuple[str, ...] = ()
            if isinstance(convert, OneOf):
                choices = convert.allowed
            elif isinstance(convert, type) and issubclass(convert, enum.Enum):
                choices = tuple(str(member.value) for member in convert)
            allowed = (" (allowed: " + ", ".join(f'"{a}"' for a in choices) + ")"
                       if choices else "")
            self.report(key, f"invalid value {value!r}{allowed}")
            return default

    def size(self, key: str, default: int) -> int:
        self._ask(key)
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.report(key, "expected a size in bytes (integer or \"64M\")")
            return default
        try:
            return parse_size(value)
        except ValueError as exc:
            self.report(key, str(exc))
            return default

    def number(self, key: str, default: float, low: float, high: float) -> float:
        self._ask(key)
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.report(key, f"expected a number, got {type(value).__name__}")
            return default
        if not low <= value <= high:
            self.report(key, f"must be between {low:g} and {high:g}")
            return default
        return value

    def optional_str(self, key: str) -> str | None:
        value: str | None = self.take(key, str, None)
        if value is not None and not value.strip():
            self.report(key, "must not be empty (leave the key out for the default)")
            return None
        return value

    def finish(self) -> None:
        """Every key left over is unknown; the closest known one is suggested."""
        for key in self.data:
            self.report(key, "unknown key" + did_you_mean(key, self.known))
        self.data.clear()


@dataclass(frozen=True, slots=True)
class OneOf:
    """A ``Reader.choice`` converter accepting exactly ``allowed``; a bad
    value's problem lists them, so the admin need not look them up."""

    allowed: tuple[str, ...]

    def __call__(self, value: str) -> str:
        if value not in self.allowed:
            raise ValueError(value)
        return value


def one_of(allowed: tuple[str, ...]) -> OneOf:
    """A ``Reader.choice`` converter accepting exactly ``allowed``."""
    return OneOf(tuple(allowed))


_DOMAIN = re.compile(r"(?=.{1,253}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def string_list(reader: Reader, key: str) -> tuple[str, ...]:
    value = reader.take(key, list, [])
    if not all(isinstance(item, str) and item.strip() for item in value):
        reader.report(key, "expected a list of non-empty strings")
        return ()
    return tuple(value)


def domain_list(reader: Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in string_list(reader, key):
        if not _DOMAIN.fullmatch(item.rstrip(".")):
            reader.report(key, f"not a domain name: {item!r}")
            continue
        found.append(item.lower().rstrip("."))
    return tuple(found)


def address_or_domain_list(reader: Reader, key: str) -> tuple[str, ...]:
    found = []
    for item in string_list(reader, key):
        if "@" in item:
            if not plain_address(item) or item.strip() != item or "<" in item:
                reader.report(key, f"not an address: {item!r}")
                continue
            found.append(item)
        elif _DOMAIN.fullmatch(item.rstrip(".")):
            found.append(item.lower().rstrip("."))
        else:
            reader.report(key, f"not an address or domain: {item!r}")
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
        reader.report(key, "expected a list of TCP ports (1-65535)")
        return ()
    return tuple(value)


def network_list(reader: Reader, key: str) -> tuple[IPv4Network | IPv6Network, ...]:
    found = []
    for item in string_list(reader, key):
        try:
            found.append(ip_network(item, strict=True))
        except ValueError as exc:
            reader.report(key, f"not an address or network: {item!r} ({exc})")
    return tuple(found)

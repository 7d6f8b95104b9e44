"""Configuration: one TOML file turned into immutable objects, strictly.

Unknown keys and bad values are errors that name the file, the line and the
key, so an admin's typo never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chain import SYSTEM_ANCHORS
from .cms import AlgorithmPolicy
from .engine import VerifyPolicy
from .model import RevocationMode

DEFAULT_CONFIG = Path("/etc/smime-milter/smime-milter.toml")


class ConfigError(ValueError):
    """A configuration problem, already phrased as ``file:line: key: reason``."""


@dataclass(frozen=True, slots=True)
class TrustConfig:
    anchors: tuple[Path, ...] = (SYSTEM_ANCHORS,)
    intermediates: tuple[Path, ...] = ()
    crls: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class DecryptKeyConfig:
    key: Path
    certificate: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the verifier needs; the milter sections extend this later."""

    source: Path | None = None
    trust: TrustConfig = field(default_factory=TrustConfig)
    verify: VerifyPolicy = field(default_factory=VerifyPolicy)
    decrypt_keys: tuple[DecryptKeyConfig, ...] = ()


def _line_of(text: str, table: str, key: str) -> int:
    """Best-effort line number of ``key`` inside ``[table]`` (1-based, 0 if unknown)."""
    current = ""
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    assignment = re.compile(r"^\s*(\"?)([A-Za-z0-9_.-]+)\1\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        match = header.match(line)
        if match:
            current = match.group(1).replace(" ", "")
            if not key and current == table:
                return number
            continue
        match = assignment.match(line)
        if match and current == table and match.group(2) == key:
            return number
    return 0


class _Reader:
    """Pops typed values out of a parsed table, remembering what was used."""

    def __init__(self, path: Path | None, text: str, table: str, data: Mapping[str, Any]):
        self.path, self.text, self.table, self.data = path, text, table, dict(data)

    def error(self, key: str, reason: str) -> ConfigError:
        where = str(self.path) if self.path else "<config>"
        line = _line_of(self.text, self.table, key)
        dotted = f"{self.table}.{key}" if self.table else key
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

    def finish(self) -> None:
        for key in self.data:
            raise self.error(key, "unknown key")


_TABLES = ("trust", "verify", "decrypt")


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
    return Config(source=path, trust=trust_config, verify=policy, decrypt_keys=keys)


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from exc
    return parse_config(text, path)

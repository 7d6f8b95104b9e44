"""The shipped systemd files read as systemd reads them, and ``systemd-analyze
verify`` run on them (tests/test_systemd.py, tests/test_systemd_jmap.py; the
``analyze_works`` fixture in tests/conftest.py skips where it cannot run)."""

from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "smime-milter.service"
SYSUSERS = SYSTEMD / "smime-milter.sysusers"
TMPFILES = SYSTEMD / "smime-milter.tmpfiles"
SHIPPED_CONFIG = ROOT / "policy" / "smime-milter.toml"
#: Where the Debian package (debian/rules) installs the command.
INSTALLED_BINARY = "/usr/bin/smime-milter"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@functools.cache
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def service(key: str) -> str:
    """The one value of ``key`` in [Service]."""
    values = unit()["Service"].get(key)
    assert values is not None, f"[Service] has no {key}="
    assert len(values) == 1, f"[Service] {key}= given {len(values)} times"
    return values[0]


def command(key: str) -> list[str]:
    """An Exec*= line split like systemd does (no prefix characters used here)."""
    argv = shlex.split(service(key))
    assert argv and argv[0][0] not in "-@:+!", f"{key}: unexpected prefix in {argv[0]!r}"
    return argv


def snippet_lines(path: Path) -> list[list[str]]:
    """Non-comment lines of a sysusers.d / tmpfiles.d file, split into fields."""
    return [shlex.split(line) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def analyze_verify(unit_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of *unit_path* (without man page checks where it can)."""
    assert SYSTEMD_ANALYZE is not None
    usage = subprocess.run([SYSTEMD_ANALYZE, "--help"], capture_output=True, text=True,
                           check=False).stdout
    options = ["--man=no"] if "--man" in usage else []
    return subprocess.run([SYSTEMD_ANALYZE, "verify", *options, str(unit_path)],
                          capture_output=True, text=True, timeout=60, check=False)


def complaints(done: subprocess.CompletedProcess[str], unit_path: Path) -> list[str]:
    """Output lines about our unit (other units' noise on a live system is ignored)."""
    return [line for line in (done.stdout + done.stderr).splitlines()
            if str(unit_path) in line or unit_path.name in line]


#: What every shipped service sets to confine itself.
HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}

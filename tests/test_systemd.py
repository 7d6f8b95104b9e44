"""The shipped systemd unit, sysusers and tmpfiles snippets.

``systemd-analyze verify`` checks the unit as systemd itself would load it;
the static tests pin the contract between the unit and the daemon (user,
directories, signals, default paths) so neither side can drift alone; the
last tests run the unit's own ExecStartPre command line.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from smime_milter.config.reader import DEFAULT_CONFIG, DEFAULT_SOCKET, DEFAULT_STORE, load_config
from smime_milter.mta import daemon
from tests.support.daemon import SMIME_MILTER
from tests.support.systemd import (
    HARDENING,
    INSTALLED_BINARY,
    SHIPPED_CONFIG,
    SYSUSERS,
    TMPFILES,
    UNIT,
    analyze_verify,
    command,
    complaints,
    service,
    snippet_lines,
    unit,
)


@pytest.mark.process
@pytest.mark.usefixtures("analyze_works")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """verify needs the Exec binaries to exist: point them at this venv's script."""
    assert SMIME_MILTER.exists(), SMIME_MILTER
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, str(SMIME_MILTER)))
    done = analyze_verify(copy)
    assert done.returncode == 0, done.stderr
    # Unknown keys and unparsable values are only warnings ("..., ignoring."): fail on them.
    assert complaints(done, copy) == [], done.stderr


@pytest.mark.process
@pytest.mark.usefixtures("analyze_works")
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above would notice a misspelt hardening key (it is not a no-op)."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(SMIME_MILTER))
                    .replace("NoNewPrivileges=", "NoNewPrivilegez="))
    assert any("NoNewPrivilegez" in line for line in complaints(analyze_verify(copy), copy))


# -- the unit's contract with the daemon --------------------------------------------


def test_unit_runs_as_its_own_user_and_group() -> None:
    assert service("User") == "smime-milter"
    assert service("Group") == "smime-milter"
    assert service("Type") == "simple"  # the daemon neither forks nor sd_notify()s


def test_exec_lines_check_then_run_the_same_config() -> None:
    pre, start = command("ExecStartPre"), command("ExecStart")
    assert pre == [INSTALLED_BINARY, "check-config", "--config", str(DEFAULT_CONFIG)]
    assert start == [INSTALLED_BINARY, "run", "--config", str(DEFAULT_CONFIG)]


def test_reload_sends_usr1_and_stop_sends_a_stop_signal() -> None:
    """libmilter treats SIGHUP as stop, so reload must be USR1 (what the daemon waits for)."""
    reload = command("ExecReload")
    assert Path(reload[0]).name == "kill"
    assert reload[1:] == ["-USR1", "$MAINPID"]
    assert daemon.RELOAD_SIGNAL == signal.SIGUSR1
    assert signal.SIGHUP in daemon.STOP_SIGNALS and signal.SIGHUP != daemon.RELOAD_SIGNAL
    assert signal.Signals[service("KillSignal")] in daemon.STOP_SIGNALS
    # Only the supervisor gets the stop signal; it retires its milter processes.
    assert service("KillMode") == "mixed"
    assert service("Restart") == "on-failure"


def test_directories_hold_the_default_socket_and_store() -> None:
    """ProtectSystem=strict leaves only the state directory, the runtime
    directory and the socket's directory in Postfix's queue writable; the
    socket directory may be missing (no Postfix), hence the "-"."""
    state = Path("/var/lib") / service("StateDirectory")
    kind, _, socket_path = DEFAULT_SOCKET.partition(":")
    assert kind == "unix"
    socket_directory = Path(socket_path).parent
    assert socket_directory == Path("/var/spool/postfix/smime-milter")
    assert service("ReadWritePaths").split() == [f"-{socket_directory}"]
    assert DEFAULT_STORE.is_relative_to(state)
    # The shipped configuration uses exactly those defaults.
    shipped = load_config(SHIPPED_CONFIG)
    assert shipped.milter.socket == DEFAULT_SOCKET
    assert shipped.store.path == DEFAULT_STORE


def test_group_can_reach_the_socket_and_nobody_else() -> None:
    """Postfix (in the service's group) needs x on the directory and rw on the socket."""
    runtime_mode = int(service("RuntimeDirectoryMode"), 8)
    assert runtime_mode & 0o010 and not runtime_mode & 0o007
    assert not int(service("StateDirectoryMode"), 8) & 0o007
    umask = int(service("UMask"), 8)
    assert not umask & 0o060 and umask & 0o007 == 0o007
    socket_mode = load_config(SHIPPED_CONFIG).milter.socket_mode
    assert socket_mode & 0o060 == 0o060 and not socket_mode & 0o007




@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_hardening(key: str, value: str) -> None:
    assert service(key) == value


def test_allowed_address_families_and_system_calls() -> None:
    """unix and inet sockets (both are valid milter sockets), and syslog's /dev/log."""
    assert set(service("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in service("SystemCallFilter").split()


def test_unit_starts_before_the_mta() -> None:
    before = " ".join(unit()["Unit"].get("Before", [])).split()
    # Debian's Postfix runs as postfix@-.service; postfix.service elsewhere.
    assert {"postfix@-.service", "postfix.service", "sendmail.service"} <= set(before)
    assert unit()["Install"]["WantedBy"] == ["multi-user.target"]


# -- sysusers.d and tmpfiles.d -----------------------------------------------------


def test_sysusers_creates_the_user_and_puts_postfix_in_its_group() -> None:
    lines = snippet_lines(SYSUSERS)
    users = [fields for fields in lines if fields[0] == "u"]
    assert len(users) == 1
    _, name, ident, _gecos, home, shell = users[0]
    assert name == service("User") == service("Group")  # "u" also creates the same-named group
    assert ident == "-"
    assert Path(home) == Path("/var/lib") / service("StateDirectory")
    assert Path(shell).name == "nologin"
    # Postfix joins the group in the package's postinst, only when installed:
    # an "m" line would create a postfix user on a machine without Postfix.
    assert lines == [users[0]]


def test_tmpfiles_makes_the_config_directory_private_to_the_group() -> None:
    lines = snippet_lines(TMPFILES)
    assert lines == [["d", str(DEFAULT_CONFIG.parent), "0750", "root", service("Group"), "-"]]


# -- ExecStartPre, for real -----------------------------------------------------------


def _exec_start_pre(config: Path) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStartPre with this venv's binary and ``config``."""
    argv = command("ExecStartPre")
    assert argv[0] == INSTALLED_BINARY and argv[-2] == "--config"
    argv = [str(SMIME_MILTER), *argv[1:-1], str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _shipped_anchors() -> list[Path]:
    return [Path(p) for p in load_config(SHIPPED_CONFIG).trust.anchors]


@pytest.mark.process
def test_exec_start_pre_accepts_the_shipped_config() -> None:
    missing = [p for p in _shipped_anchors() if not p.exists()]
    if missing:
        pytest.skip(f"the shipped config's trust anchors are not installed: {missing}")
    done = _exec_start_pre(SHIPPED_CONFIG)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{SHIPPED_CONFIG}: OK"


@pytest.mark.process
@pytest.mark.parametrize(("old", "new", "key"), [
    ("workers = 0", "wrokers = 0", "milter.wrokers"),
    ("timeout = 600", 'timeout = "soon"', "milter.timeout"),
    ('revocation = "soft"', 'revocation = "sometimes"', "trust.revocation"),
])
def test_exec_start_pre_rejects_a_broken_config(tmp_path: Path, old: str, new: str,
                                                key: str) -> None:
    """Exit 1 with ``file:line: key`` so the journal points at the mistake."""
    text = SHIPPED_CONFIG.read_text()
    pattern = re.compile(rf"^{re.escape(old)}$", re.M)
    match = pattern.search(text)
    assert match is not None and len(pattern.findall(text)) == 1, old
    line = text.count("\n", 0, match.start()) + 1
    broken = tmp_path / "smime-milter.toml"
    broken.write_text(pattern.sub(new, text))
    done = _exec_start_pre(broken)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{broken}:{line}: {key}" in done.stderr, done.stderr

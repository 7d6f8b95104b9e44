"""The shipped units of the JMAP read API and of the periodic re-validation.

Like ``test_systemd.py`` for the milter's unit: ``systemd-analyze verify``
loads them as systemd would, the static tests pin their contract with the
command line (arguments, directories, socket path, user) and with the
milter's unit, and the refresh unit's command is run for real.
"""

from __future__ import annotations

import functools
import itertools
import shlex
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smime_milter.cli.jmap import run_jmap, run_prune, run_refresh
from smime_milter.cli.main import build_parser
from smime_milter.config.reader import DEFAULT_CONFIG, DEFAULT_STORE, JmapConfig, check_listen
from smime_milter.store import Store
from tests.support import systemd as units
from tests.support.daemon import SMIME_MILTER
from tests.support.jmapworld import DELIVERED, build_world
from tests.support.pki import TestPki

JMAP_UNIT = units.SYSTEMD / "smime-milter-jmap.service"
REFRESH_UNIT = units.SYSTEMD / "smime-milter-refresh.service"
REFRESH_TIMER = units.SYSTEMD / "smime-milter-refresh.timer"
JMAP_SOCKET = "unix:/run/smime-milter/jmap.sock"


@functools.cache
def parsed(path: Path) -> units.Unit:
    return units.parse_unit(path.read_text())


def value(path: Path, section: str, key: str) -> str:
    """The one value of ``key`` in ``section`` of the unit ``path``."""
    values = parsed(path).get(section, {}).get(key)
    assert values is not None, f"{path.name}: [{section}] has no {key}="
    assert len(values) == 1, f"{path.name}: [{section}] {key}= given {len(values)} times"
    return values[0]


def exec_start(path: Path, key: str = "ExecStart") -> list[str]:
    argv = shlex.split(value(path, "Service", key))
    assert argv and argv[0][0] not in "-@:+!", f"unexpected prefix in {argv[0]!r}"
    return argv


# -- systemd-analyze verify ----------------------------------------------------------


def _installed_copies(directory: Path) -> list[Path]:
    """The three units with ExecStart pointing at this venv's script (verify
    needs the binary to exist), side by side so the timer finds its service."""
    copies = []
    for unit in (JMAP_UNIT, REFRESH_UNIT, REFRESH_TIMER):
        text = unit.read_text()
        copy = directory / unit.name
        copy.write_text(text.replace(units.INSTALLED_BINARY, str(SMIME_MILTER)))
        copies.append(copy)
    return copies


@pytest.mark.process
@pytest.mark.usefixtures("analyze_works")
@pytest.mark.parametrize("name", [JMAP_UNIT.name, REFRESH_UNIT.name, REFRESH_TIMER.name])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str) -> None:
    assert SMIME_MILTER.exists(), SMIME_MILTER
    copies = {copy.name: copy for copy in _installed_copies(tmp_path)}
    if name.endswith(".service"):
        assert units.INSTALLED_BINARY in (units.SYSTEMD / name).read_text()
    done = units.analyze_verify(copies[name])
    assert done.returncode == 0, done.stderr
    # Unknown keys and unparsable values are only warnings: fail on them.
    assert units.complaints(done, copies[name]) == [], done.stderr


@pytest.mark.process
@pytest.mark.usefixtures("analyze_works")
def test_systemd_analyze_verify_catches_a_typo_in_the_jmap_unit(tmp_path: Path) -> None:
    copy = _installed_copies(tmp_path)[0]
    copy.write_text(copy.read_text().replace("PrivateNetwork=", "PrivateNetwerk="))
    done = units.analyze_verify(copy)
    assert any("PrivateNetwerk" in line for line in units.complaints(done, copy))


@pytest.mark.process
def test_the_timer_fires_every_15_minutes() -> None:
    assert value(REFRESH_TIMER, "Timer", "Unit") == REFRESH_UNIT.name
    assert value(REFRESH_TIMER, "Install", "WantedBy") == "timers.target"
    calendar = value(REFRESH_TIMER, "Timer", "OnCalendar")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert calendar == "*:0/15"
        return
    done = subprocess.run([analyze, "calendar", "--iterations=5", calendar],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"systemd-analyze calendar does not work here: {done.stderr.strip()}")
    moments = [datetime.strptime(" ".join(line.split()[-3:-1]), "%Y-%m-%d %H:%M:%S")
               for line in done.stdout.splitlines()
               if line.strip().startswith(("Next elapse:", "Iter. #"))]
    assert len(moments) == 5, done.stdout
    assert {b - a for a, b in itertools.pairwise(moments)} == {timedelta(minutes=15)}


# -- the units' contract with the command line and with the milter's unit --------------


@pytest.mark.parametrize("unit", [JMAP_UNIT, REFRESH_UNIT])
def test_units_run_as_the_milters_user_on_its_store(unit: Path) -> None:
    assert value(unit, "Service", "User") == units.service("User")
    assert value(unit, "Service", "Group") == units.service("Group")
    assert value(unit, "Service", "StateDirectory") == units.service("StateDirectory")
    assert DEFAULT_STORE.is_relative_to(Path("/var/lib") / value(unit, "Service",
                                                                   "StateDirectory"))
    umask = int(value(unit, "Service", "UMask"), 8)
    assert umask & 0o007 == 0o007 and not umask & 0o060  # group rw, others nothing


def test_jmap_unit_serves_the_configured_store_on_the_shared_runtime_directory() -> None:
    argv = exec_start(JMAP_UNIT)
    assert argv == [units.INSTALLED_BINARY, "jmap", "--config", str(DEFAULT_CONFIG),
                    "--listen", JMAP_SOCKET]
    args = build_parser().parse_args(argv[1:])
    assert args.handler is run_jmap and args.listen == check_listen(JMAP_SOCKET)
    assert not args.read_only  # re-validated statuses reach Email/changes
    socket_path = Path(JMAP_SOCKET.partition(":")[2])
    runtime = value(JMAP_UNIT, "Service", "RuntimeDirectory")
    assert runtime == units.service("RuntimeDirectory")
    assert socket_path.parent == Path("/run") / runtime
    # A unit's stop removes its RuntimeDirectory: this one must not take the
    # milter's socket with it.
    assert value(JMAP_UNIT, "Service", "RuntimeDirectoryPreserve") == "yes"
    assert value(JMAP_UNIT, "Service", "Type") == "simple"
    # Anchors are noticed automatically: no reload, stop is SIGTERM (handled).
    assert "ExecReload" not in parsed(JMAP_UNIT)["Service"]
    assert value(JMAP_UNIT, "Service", "KillSignal") == "SIGTERM"
    assert value(JMAP_UNIT, "Install", "WantedBy") == "multi-user.target"


def test_jmap_socket_is_reachable_by_the_group_only() -> None:
    runtime_mode = int(value(JMAP_UNIT, "Service", "RuntimeDirectoryMode"), 8)
    assert runtime_mode == int(units.service("RuntimeDirectoryMode"), 8)
    assert runtime_mode & 0o010 and not runtime_mode & 0o007
    mode = JmapConfig().listen_mode
    assert mode & 0o060 == 0o060 and not mode & 0o007
    assert stat.S_IMODE(mode) == mode


def test_refresh_unit_runs_the_refresh_command_once_the_store_exists() -> None:
    argv = exec_start(REFRESH_UNIT)
    assert argv == [units.INSTALLED_BINARY, "refresh", "--config", str(DEFAULT_CONFIG)]
    assert build_parser().parse_args(argv[1:]).handler is run_refresh
    assert value(REFRESH_UNIT, "Service", "Type") == "oneshot"
    assert Path(value(REFRESH_UNIT, "Unit", "ConditionPathExists")) == DEFAULT_STORE / "data.mdb"
    assert "Install" not in parsed(REFRESH_UNIT)  # started by the timer


def test_refresh_unit_prunes_first() -> None:
    argv = exec_start(REFRESH_UNIT, "ExecStartPre")
    assert argv == [units.INSTALLED_BINARY, "prune", "--config", str(DEFAULT_CONFIG)]
    assert build_parser().parse_args(argv[1:]).handler is run_prune


@pytest.mark.parametrize("unit", [JMAP_UNIT, REFRESH_UNIT])
@pytest.mark.parametrize(("key", "expected"), sorted(units.HARDENING.items()))
def test_hardening(unit: Path, key: str, expected: str) -> None:
    assert value(unit, "Service", key) == expected


@pytest.mark.parametrize("unit", [JMAP_UNIT, REFRESH_UNIT])
def test_no_network(unit: Path) -> None:
    """Chains are re-validated from stored certificates and local CRLs only."""
    assert value(unit, "Service", "PrivateNetwork") == "yes"
    assert value(unit, "Service", "RestrictAddressFamilies").split() == ["AF_UNIX"]
    assert "@system-service" in value(unit, "Service", "SystemCallFilter").split()


# -- the refresh unit's command, for real ---------------------------------------------


@pytest.mark.process
def test_refresh_exec_start_revalidates_a_real_store(tmp_path: Path, pki: TestPki) -> None:
    world = build_world(tmp_path / "world", pki)
    if datetime.now(UTC) < DELIVERED + timedelta(hours=1):
        pytest.skip("the wall clock is before the scenario's statuses went stale")
    with Store.open(world.store, readonly=True) as store:
        due = sum(view.revalidatable for view in store.views(world.ids.values()).values())
    assert due
    argv = exec_start(REFRESH_UNIT)
    argv = [str(SMIME_MILTER), *argv[1:-1], str(world.config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"re-validated {due} record(s)", done.stdout
    # Nothing is stale any more.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "re-validated 0 record(s)", done.stdout


@pytest.mark.process
def test_prune_exec_start_pre_applies_the_configured_retention(
    tmp_path: Path, pki: TestPki
) -> None:
    world = build_world(tmp_path / "world", pki)
    argv = exec_start(REFRESH_UNIT, "ExecStartPre")
    argv = [str(SMIME_MILTER), *argv[1:-1], str(world.config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stdout.count("nothing pruned")) == (0, 1), done
    # The scenario was delivered in 2026-06: a retention of one day removes it all.
    world.config.write_text(world.config.read_text().replace(
        "[store]\n", "[store]\nretention_days = 1\n"))
    if datetime.now(UTC) < DELIVERED + timedelta(days=1):
        pytest.skip("the wall clock is before the scenario's records are a day old")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"deleted {len(world.ids)} record(s) received before ")
    with Store.open(world.store, readonly=True) as store:
        assert list(store.record_ids()) == []

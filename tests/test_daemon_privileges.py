"""``smime-milter run`` started as root with ``[milter] user``: what is prepared
for the service user, that no process of the daemon keeps root, and start-up
errors as one line naming the path or name.

The service user is ``nobody``. It cannot traverse ``/tmp/pytest-of-root``
(pytest makes it 0700 so that other users cannot tamper with test files, and
loosening it would weaken that for every test), so the daemon's files live in
a fresh ``tempfile.mkdtemp(dir="/var/tmp")`` directory made 0755 and removed
afterwards; the trust anchor is copied there too, since the daemon reads it
after the drop.

On a machine whose Python lives under a directory ``nobody`` cannot traverse
(pyenv under ``/root``, mode 0700), the daemon would lose its own interpreter
at the drop. The test then runs it in a private mount namespace in which only
that directory is replaced by a 0755 tmpfs holding the interpreter's tree
(``unshare --mount``, so the host's ``/root`` is never changed); everything
else, the daemon's files, socket and processes included, is the host's.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smime_milter.mta.privileges import DEFAULT_USER, StartupError, service_user
from tests.support import processes
from tests.support.daemon import SMIME_MILTER, MilterProcess
from tests.support.miltertest import (
    CONTINUE,
    MILTERTEST,
    MILTERTEST_MISSING,
    message,
    run_session,
)
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity

pytestmark = pytest.mark.process

SERVICE_USER = "nobody"
AR = "Authentication-Results"

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _entry() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pytest.skip(f"no user {SERVICE_USER!r} on this machine")


def _user_can_run_python(entry: pwd.struct_passwd, wrapper: tuple[str, ...]) -> bool:
    """Whether the user, as the daemon's forkserver does, can exec this interpreter
    and finds the same standard library. (setpriv itself execs before its
    capabilities are gone, so the exec to test is one a shell makes.)"""
    probe = f"import sys, smime_milter; sys.exit(sys.base_prefix != {sys.base_prefix!r})"
    command = [*wrapper, "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
               "--init-groups", "/bin/sh", "-c", 'exec "$0" "$@"', sys.executable, "-c", probe]
    return subprocess.run(command, capture_output=True, check=False, timeout=60).returncode == 0


def _wrapper_for(entry: pwd.struct_passwd, scratch: Path) -> tuple[str, ...]:
    """Nothing when the user can run this interpreter; else the mount-namespace
    wrapper the module docstring describes (the daemon's pid stays its own: the
    wrapper execs it)."""
    if _user_can_run_python(entry, ()):
        return ()
    prefix = Path(sys.base_prefix).resolve()
    blocked = next((parent for parent in reversed(prefix.parents)
                    if not os.stat(parent).st_mode & stat.S_IXOTH), None)
    if blocked is None or shutil.which("unshare") is None:
        pytest.skip(f"{SERVICE_USER} cannot run {sys.executable}")
    child = blocked / prefix.relative_to(blocked).parts[0]
    hold = scratch / ".interpreter"
    hold.mkdir()
    q = shlex.quote
    script = (f"set -e; mount --bind {q(str(child))} {q(str(hold))}; "
              f"mount -t tmpfs -o mode=0755 tmpfs {q(str(blocked))}; "
              f"mkdir {q(str(child))}; mount --move {q(str(hold))} {q(str(child))}; "
              'exec "$0" "$@"')
    wrapper = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
    if not _user_can_run_python(entry, wrapper):
        pytest.skip(f"{SERVICE_USER} cannot run {sys.executable}, even in a mount namespace")
    return wrapper


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A fresh 0755 directory the service user can traverse (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="smime-milter-privileges-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


class ServiceDaemon(MilterProcess):
    """MilterProcess with ``user`` set, the socket in a directory the daemon
    creates, and the store below parents it creates."""

    def __init__(self, directory: Path, anchors: Path, store: Path,
                 wrapper: tuple[str, ...], user: str | None = SERVICE_USER) -> None:
        directory.mkdir(mode=0o755)
        copied = directory / "root.pem"
        shutil.copyfile(anchors, copied)
        super().__init__(directory, copied, wrapper=wrapper, user=user)
        self.socket = directory / "run" / "milter.sock"
        self.store_path = store
        self.write_config()


def _status_ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return [int(value) for value in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _descendants(top: int) -> dict[int, str]:
    """The processes whose parent chain leads to ``top`` (``top`` included), with
    their command lines."""
    found = processes.descendants(top)
    lines: dict[int, str] = {}
    for pid in found:
        try:
            lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return lines


def _default_service_user() -> pwd.struct_passwd:
    """The default service user, created as the package's postinst does when
    missing (a system user and group of its own, no login)."""
    try:
        return pwd.getpwnam(DEFAULT_USER)
    except KeyError:
        subprocess.run(["adduser", "--system", "--group", "--quiet", "--no-create-home",
                        "--home", "/var/lib/smime-milter", DEFAULT_USER], check=True, timeout=60)
        return pwd.getpwnam(DEFAULT_USER)


def _owned(path: Path, entry: pwd.struct_passwd, mode: int | None = None) -> None:
    info = path.lstat()
    assert (info.st_uid, info.st_gid) == (entry.pw_uid, entry.pw_gid), path
    if mode is not None:
        assert stat.S_IMODE(info.st_mode) == mode, (path, oct(info.st_mode))


@as_root
@pytest.mark.daemon
@pytest.mark.miltertest
@pytest.mark.skipif(MILTERTEST is None, reason=MILTERTEST_MISSING)
@pytest.mark.parametrize("configured", [SERVICE_USER, None], ids=["user-set", "default-user"])
def test_daemon_runs_as_the_service_user_and_verifies(
    service_root: Path, anchors: Path, live_pki: TestPki, tmp_path: Path, configured: str | None
) -> None:
    """The store directory and its missing parents, and the socket directory the
    daemon creates, belong to the user; a signed message verifies end to end
    over miltertest; the supervisor and its milter processes all have real,
    effective, saved (and file system) uid and gid of the user.
    With no ``user`` at all the daemon, started as root, becomes the default
    service user (created here as the Debian package creates it)."""
    entry = _entry() if configured is not None else _default_service_user()
    wrapper = _wrapper_for(entry, service_root)
    store = service_root / "lib" / "smime-milter" / "store"
    daemon = ServiceDaemon(service_root / "milter", anchors, store, wrapper, user=configured)
    daemon.start()
    try:
        for directory in (service_root / "lib", store.parent, store):
            _owned(directory, entry, 0o750)
        _owned(store / "data.mdb", entry)
        _owned(store / "lock.mdb", entry)
        _owned(daemon.socket.parent, entry)  # created by the daemon: it removes the socket
        assert service_root.stat().st_uid == 0 and daemon.directory.stat().st_uid == 0

        data = multipart_signed(text_entity("Hello Bob\n"), live_pki.rsa, to="bob@example.org",
                                subject="as nobody")
        [result] = run_session(daemon.postfix_socket,
                               [message(data, "alice@example.com", ["bob@example.org"])],
                               tmp_path / "session", connect_macros={"j": "mta.example.net"},
                               probe_names=(AR,))
        assert result.reply == CONTINUE
        assert "smime=pass" in result.value(AR), result.value(AR)

        assert daemon.process is not None
        processes = _descendants(daemon.process.pid)
        commands = " | ".join(processes.values())
        assert len(processes) == 1 + daemon.workers, commands  # supervisor, milter processes
        for pid, command in processes.items():
            assert _status_ids(pid, "Uid") == [entry.pw_uid] * 4, (pid, command)
            assert _status_ids(pid, "Gid") == [entry.pw_gid] * 4, (pid, command)

        # A milter process that retires (as after a verification past its time
        # limit) leaves the socket to the others: libmilter, not root, would
        # unlink it at the end of its loop.
        victim = min(pid for pid in processes if pid != daemon.process.pid)
        os.kill(victim, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while victim in _descendants(daemon.process.pid):
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
        assert daemon.socket.exists(), daemon.log_text()
        [again] = run_session(daemon.postfix_socket,
                              [message(data, "alice@example.com", ["bob@example.org"])],
                              tmp_path / "again", connect_macros={"j": "mta.example.net"},
                              probe_names=(AR,))
        assert "smime=pass" in again.value(AR), again.value(AR)
        assert f"milter process {victim} retires" in daemon.log_text()
    finally:
        status = daemon.stop()
    log = daemon.log_text()
    assert status == 0, log
    assert f"running as user {entry.pw_name}" in log
    assert "Traceback" not in log and "leaked" not in log, log
    assert not daemon.socket.exists()


def _run(*args: str, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*wrapper, str(SMIME_MILTER), "run", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("smime-milter:")]


def _config(path: Path, milter: str, store: Path) -> Path:
    path.write_text(f'[milter]\n{milter}\n[store]\npath = "{store}"\n')
    return path


@as_root
def test_store_the_user_cannot_reach_is_one_line(service_root: Path) -> None:
    """The store's parent is root's and 0700: the daemon creates the store for
    the user as root, and after the drop cannot reach it."""
    entry = _entry()
    wrapper = _wrapper_for(entry, service_root)
    private = service_root / "private"
    private.mkdir(mode=0o700)
    store = private / "store"
    socket = service_root / "run" / "milter.sock"
    config = _config(service_root / "c.toml",
                     f'socket = "unix:{socket}"\nuser = "{SERVICE_USER}"', store)
    result = _run("--config", str(config), wrapper=wrapper)
    assert _error_lines(result) == [f"smime-milter: store {store}: Permission denied"]
    assert not socket.exists()  # removed again: its directory is the user's


def test_unknown_user_is_one_line(tmp_path: Path) -> None:
    socket = tmp_path / "run" / "milter.sock"
    config = _config(tmp_path / "c.toml",
                     f'socket = "unix:{socket}"\nuser = "no-such-user-smime"', tmp_path / "store")
    result = _run("--config", str(config))
    assert _error_lines(result) == ["smime-milter: milter.user: no such user 'no-such-user-smime'"]
    assert not socket.parent.exists() and not (tmp_path / "store").exists()


def test_unknown_socket_group_is_one_line(tmp_path: Path) -> None:
    socket = tmp_path / "run" / "milter.sock"
    config = _config(tmp_path / "c.toml",
                     f'socket = "unix:{socket}"\nuser = "root"\n'
                     'socket_group = "no-such-group-smime"',
                     tmp_path / "store")
    result = _run("--config", str(config))
    assert _error_lines(result) == [
        "smime-milter: milter.socket_group: no such group 'no-such-group-smime'"]
    assert not socket.parent.exists()


def test_socket_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = _config(tmp_path / "c.toml",
                     f'socket = "unix:{blocker}/run/milter.sock"\nuser = "root"',
                     tmp_path / "store")
    result = _run("--config", str(config))
    assert _error_lines(result) == [
        f"smime-milter: socket directory {blocker}/run: Not a directory"]


def test_root_without_a_user_never_stays_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started as root with no ``user`` and no default service user on the
    machine, the start stops with one line saying what to do."""
    monkeypatch.setattr("os.geteuid", lambda: 0)

    def no_user(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr("pwd.getpwnam", no_user)
    with pytest.raises(StartupError) as raised:
        service_user(None)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("milter.user: started as root, and the default service user "
                              "'smime-milter' does not exist")
    assert "adduser --system" in message


def test_root_written_out_keeps_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert service_user("root") is None


def test_an_ordinary_user_without_a_user_setting_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert service_user(None) is None


def test_missing_socket_directory_in_postfix_queue_says_what_makes_it() -> None:
    """As the service user under systemd (ProtectSystem=strict), the daemon
    cannot make the directory itself; the line says what does."""
    from smime_milter.mta.daemon import _socket_directory_failure

    directory = Path("/var/spool/postfix/no-such-smime-milter-dir")
    error = _socket_directory_failure(directory, OSError(30, "Read-only file system",
                                                         str(directory)))
    assert str(error) == (
        f"socket directory {directory}: Read-only file system: create it for the service "
        "user (the Debian package does when Postfix is installed; after installing Postfix "
        "later: dpkg-reconfigure smime-milter)")
    elsewhere = _socket_directory_failure(Path("/nonexistent/run"), OSError(
        13, "Permission denied", "/nonexistent/run"))
    assert str(elsewhere) == "socket directory /nonexistent/run: Permission denied"

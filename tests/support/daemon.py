"""Run the real ``smime-milter run`` daemon as a subprocess for tests.

The daemon is started exactly as an admin would start it (console script,
TOML file), so these tests also cover option parsing, socket set-up, the
pre-forked milter processes and signal handling.
"""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from smime_milter.store.facade import Store
from tests.support import activity

#: The group Debian's Postfix runs smtpd under.
POSTFIX_GROUP = "postfix"

SMIME_MILTER = Path(sys.executable).with_name("smime-milter")


def _socket_group() -> str:
    """What an admin configures so Postfix's smtpd (user and group postfix) can
    connect: the socket keeps the shipped mode 0660 and belongs to group
    postfix. Without Postfix installed only root (miltertest) connects, and
    the shipped defaults stay as they are."""
    try:
        grp.getgrnam(POSTFIX_GROUP)
    except KeyError:
        return ""
    return f'socket_group = "{POSTFIX_GROUP}"\n'


class MilterProcess:
    """One daemon with its own config file, socket and store."""

    def __init__(
        self, directory: Path, anchors: Path, *, authserv_id: str = "mx.test.example",
        extra_toml: str = "", workers: int = 2, map_size: str = "64M",
        max_map_size: str = "1G", anchor_directory: Path | None = None,
        wrapper: tuple[str, ...] = (), user: str | None = "root",
    ) -> None:
        self.directory = directory
        self.socket = directory / "milter.sock"
        self.store_path = directory / "store"
        self.config = directory / "smime-milter.toml"
        self.log_path = directory / "milter.log"
        self.authserv_id = authserv_id
        self.anchors = anchors
        self.anchor_directory = anchor_directory or directory / "anchors.d"
        self.extra_toml = extra_toml
        self.workers = workers
        self.map_size, self.max_map_size = map_size, max_map_size
        #: Command the daemon runs under (its pid stays the daemon's: it must exec).
        self.wrapper = wrapper
        #: ``[milter] user``; None leaves the default (``smime-milter`` as root).
        #: The tests run as root in pytest's 0700 directories, which the
        #: service user cannot enter, so most daemons say ``user = "root"``;
        #: tests/test_daemon_privileges.py and tests/test_debian_package.py run
        #: the default, as the service user, in directories it can reach.
        self.user = user
        #: Options after ``run --config FILE`` (``--workers N``, say).
        self.run_args: tuple[str, ...] = ()
        self.process: subprocess.Popen[bytes] | None = None
        self.write_config()

    def write_config(self, extra_toml: str | None = None) -> None:
        if extra_toml is not None:
            self.extra_toml = extra_toml
        self.config.write_text(
            f'[trust]\nanchors = ["{self.anchors}"]\nrevocation = "soft"\n'
            f'anchor_directory = "{self.anchor_directory}"\n'
            f'[milter]\nsocket = "unix:{self.socket}"\n{_socket_group()}'
            + (f'user = "{self.user}"\n' if self.user is not None else "") +
            f'authserv_id = "{self.authserv_id}"\nworkers = {self.workers}\n'
            f'[store]\npath = "{self.store_path}"\nmap_size = "{self.map_size}"\n'
            f'max_map_size = "{self.max_map_size}"\n'
            + self.extra_toml
        )

    @property
    def postfix_socket(self) -> str:
        return f"unix:{self.socket}"

    def start(self, timeout: float = 60.0) -> None:
        activity.note("daemon")
        self.socket.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.wrapper, str(SMIME_MILTER), "run", "--config", str(self.config),
             *self.run_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smime-milter exited at start:\n{self.log_text()}")
            if self.socket.exists() and "listening on" in self.log_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"smime-milter did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        """kill -9 of the whole process group (daemon and workers)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # stray workers, if any
        return self.process.returncode

    def open_store(self) -> Store:
        return Store.open(self.store_path, readonly=True)

    def __enter__(self) -> MilterProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

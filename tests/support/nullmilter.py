"""A milter that receives every message and changes nothing.

It is the baseline for benchmarks ("what does the milter protocol alone cost?") and the
simplest way to prove that a test Postfix really talks to its milter.  It subscribes to
the same stages a content filter needs (envelope, headers, body), so Postfix streams the
whole message to it, and accepts everything at end of message.

With ``--add-headers`` it is the fair do-nothing baseline for smime-milter: it takes the
same protocol steps (connect too, every step before end of message without a reply, as
smime-milter's callbacks are ``@noreply``) and at end of message inserts two header
fields at the top, as many and about as long as smime-milter's stamp; the edits cost
Postfix a queue-file update and the milter two more requests.

Run it as ``python -m tests.support.nullmilter [--add-headers] unix:/path/sock``
(libmilter socket syntax: ``unix:/path`` or ``inet:port@host``), or from Python with
:func:`null_milter` (:func:`null_milter_process` also gives its process);
:func:`running_milter` does the same for any milter command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import Milter

from tests.support import activity

REPO_ROOT = Path(__file__).resolve().parents[2]

#: What ``--add-headers`` appends at end of message: two fields about as long as the
#: Authentication-Results and SMIME-Status-At-Delivery fields of smime-milter's stamp.
ADDED_HEADERS = (
    ("X-Null-Milter-Results", "mx.test.example; null=pass header.from=sender@example.com"),
    ("X-Null-Milter-Status", "none; at=2025-01-01T00:00:00Z; mx.test.example"),
)


class NullMilter(Milter.Base):
    """Asks for envelope, headers and body like a real filter; returns CONTINUE/ACCEPT."""

    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    def header(self, name: str, value: str) -> int:
        return Milter.CONTINUE

    def eoh(self) -> int:
        return Milter.CONTINUE

    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        return Milter.ACCEPT


class HeaderAddingMilter(Milter.Base):
    """Does nothing in the protocol steps smime-milter takes, without replies as it does,
    and inserts :data:`ADDED_HEADERS` at the top at end of message."""

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        for index, (name, value) in enumerate(ADDED_HEADERS):
            self.addheader(name, value, index)
        return Milter.ACCEPT


@dataclass(frozen=True)
class RunningMilter:
    """A milter started by :func:`milter_process`: its socket in Postfix syntax and its
    process (benchmarks read its CPU time from /proc)."""

    socket: str
    process: subprocess.Popen[bytes]


def postfix_socket(libmilter_socket: str) -> str:
    """The same socket in Postfix syntax: ``inet:port@host`` becomes ``inet:host:port``."""
    kind, _, address = libmilter_socket.partition(":")
    if kind in ("unix", "local"):
        return f"unix:{address}"
    if kind == "inet":
        port, _, host = address.partition("@")
        return f"inet:{host or '127.0.0.1'}:{port}"
    raise ValueError(f"unsupported milter socket {libmilter_socket!r}")


def _accepts_connections(libmilter_socket: str) -> bool:
    kind, _, address = postfix_socket(libmilter_socket).partition(":")
    if kind == "unix":
        target: str | tuple[str, int] = address
        family = socket.AF_UNIX
    else:
        host, _, port = address.rpartition(":")
        target, family = (host, int(port)), socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(target)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_milter(
    command: list[str],
    libmilter_socket: str,
    timeout: float = 15.0,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[str]:
    """Run a milter *command* until the block ends; yield its socket in Postfix syntax.

    Returns once the socket accepts connections, so Postfix can use it at once.  libmilter
    notices SIGTERM only between 5-second polls; pass SIGKILL when a clean exit is moot.
    """
    with milter_process(command, libmilter_socket, timeout, stop_signal) as milter:
        yield milter.socket


@contextlib.contextmanager
def milter_process(
    command: list[str],
    libmilter_socket: str,
    timeout: float = 15.0,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[RunningMilter]:
    """:func:`running_milter` that also yields the process."""
    activity.note("daemon")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not _accepts_connections(libmilter_socket):
            if process.poll() is not None:
                raise RuntimeError(f"milter {command} exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"milter {command} did not open {libmilter_socket}")
            time.sleep(0.01)
        yield RunningMilter(postfix_socket(libmilter_socket), process)
    finally:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _command(libmilter_socket: str, add_headers: bool) -> list[str]:
    options = ["--add-headers"] if add_headers else []
    return [sys.executable, "-m", "tests.support.nullmilter", *options, libmilter_socket]


def null_milter(
    libmilter_socket: str, add_headers: bool = False
) -> contextlib.AbstractContextManager[str]:
    """:func:`running_milter` for :class:`NullMilter` (*add_headers*:
    :class:`HeaderAddingMilter`); it keeps no state, so SIGKILL ends it."""
    command = _command(libmilter_socket, add_headers)
    return running_milter(command, libmilter_socket, stop_signal=signal.SIGKILL)


def null_milter_process(
    libmilter_socket: str, add_headers: bool = False
) -> contextlib.AbstractContextManager[RunningMilter]:
    """:func:`null_milter` that also yields the process."""
    command = _command(libmilter_socket, add_headers)
    return milter_process(command, libmilter_socket, stop_signal=signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="libmilter socket: unix:/path or inet:port@host")
    parser.add_argument("--add-headers", action="store_true",
                        help="insert two header fields at end of message")
    args = parser.parse_args(argv)
    os.umask(0o111)  # socket mode 0666: Postfix's smtpd connects as user "postfix"
    if args.add_headers:
        Milter.factory = HeaderAddingMilter
        Milter.set_flags(Milter.ADDHDRS)
    else:
        Milter.factory = NullMilter
        Milter.set_flags(0)  # no modifications requested
    Milter.runmilter("nullmilter", args.socket)


if __name__ == "__main__":
    main()

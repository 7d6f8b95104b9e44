"""A milter that receives every message and changes nothing.

It is the baseline for benchmarks ("what does the milter protocol alone cost?") and the
simplest way to prove that a test Postfix really talks to its milter.  It subscribes to
the same stages a content filter needs (envelope, headers, body), so Postfix streams the
whole message to it, and accepts everything at end of message.

Run it as ``python -m tests.support.nullmilter unix:/path/sock`` (libmilter socket syntax:
``unix:/path`` or ``inet:port@host``), or from Python with :func:`null_milter`;
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
from pathlib import Path

import Milter

from tests.support import activity

REPO_ROOT = Path(__file__).resolve().parents[2]


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
        yield postfix_socket(libmilter_socket)
    finally:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def null_milter(libmilter_socket: str) -> contextlib.AbstractContextManager[str]:
    """:func:`running_milter` for :class:`NullMilter`; it keeps no state, so SIGKILL ends it."""
    command = [sys.executable, "-m", "tests.support.nullmilter", libmilter_socket]
    return running_milter(command, libmilter_socket, stop_signal=signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="libmilter socket: unix:/path or inet:port@host")
    args = parser.parse_args(argv)
    os.umask(0o111)  # socket mode 0666: Postfix's smtpd connects as user "postfix"
    Milter.factory = NullMilter
    Milter.set_flags(0)  # no modifications requested
    Milter.runmilter("nullmilter", args.socket)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""End-to-end SMTP throughput of a throw-away Postfix, bare or with a milter in the path.

:func:`measure_throughput` starts a fresh :class:`~tests.support.postfix.PostfixInstance`
(127.0.0.1, a free high port, its own configuration directory: never port 25 or
/etc/postfix), sends COUNT messages over SESSIONS parallel SMTP sessions with
:func:`send_load`, and times from the first SMTP connection until the last message is in
the Maildir (the newest Maildir file's time stamp), so queueing and delivery count and
start-up does not.  The milter's end-to-end benchmark (bench_milter_postfix.py) calls it
for every configuration with the same messages.

The load generator is a small SMTP client of our own, one process per session, one
connection per message (as ``smtp-source`` does), with MAIL, RCPT and DATA pipelined.
It replaces ``smtp-source``, which sends a single file: distinct messages would need one
``smtp-source`` process per message, and that costs ~5.5 ms of CPU per message here, more
than Postfix itself; this client needs ~0.3 ms, and the same for every configuration
(each measurement reports it).

Run on its own it compares no milter with :mod:`tests.support.nullmilter`, plain and
with ``--add-headers``, on one message:

    .venv/bin/python bench/postfix_throughput.py [--count N] [--sessions S] [MESSAGE_FILE]

Needs root and Postfix (``master``, ``postmap``, ``postqueue``).  This is a measurement,
not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support without installing anything
    sys.path.insert(0, str(REPO))

from tests.support.nullmilter import null_milter
from tests.support.postfix import PostfixInstance, Setting, process_group

SENDER = "sender@example.com"
RECIPIENT = "bench@example.org"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# A small plain-text message, as in a typical mailbox.
DEFAULT_MESSAGE = b"""\
From: Sender <sender@example.com>
To: Bench <bench@example.org>
Subject: throughput sample
Date: Sat, 22 Nov 2025 10:00:00 +0000
Message-ID: <throughput-sample@example.com>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Hello,

this is one of many identical messages that measure how fast the mail
system accepts, queues and delivers mail into a Maildir.

Regards
"""


@dataclass(frozen=True)
class Outgoing:
    """One message ready for the wire: pipelined envelope commands, then the DATA
    payload (CRLF line ends, dot-stuffed, with the terminating ``.``)."""

    commands: bytes
    payload: bytes

    @classmethod
    def of(cls, message: bytes, sender: str = SENDER, recipient: str = RECIPIENT) -> Outgoing:
        data = re.sub(rb"\r?\n", b"\r\n", message)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        data = re.sub(rb"(?m)^\.", b"..", data)
        commands = f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode()
        return cls(commands, data + b".\r\n")


@dataclass(frozen=True)
class Throughput:
    messages: int
    seconds: float
    #: Delivered copies picked evenly from the Maildir (``samples=`` of measure_throughput).
    samples: tuple[bytes, ...] = field(default=(), repr=False)
    #: CPU seconds of the load generator's processes.
    client_cpu: float = 0.0
    #: CPU seconds of this Postfix instance's daemons (all of them, start-up included).
    postfix_cpu: float = 0.0

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


class LoadError(RuntimeError):
    """The SMTP server refused or dropped a message: the set-up is broken."""


def _reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """The last line of the next (possibly multi-line) SMTP reply; *buffer* keeps the rest."""
    while True:
        while (end := buffer.find(b"\r\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if line[3:4] != b"-":
                return line
        chunk = sock.recv(65536)
        if not chunk:
            raise LoadError("connection closed by the server")
        buffer += chunk


def _expect(sock: socket.socket, buffer: bytearray, code: bytes, step: str) -> None:
    line = _reply(sock, buffer)
    if not line.startswith(code):
        raise LoadError(f"{step}: {line.decode(errors='replace')}")


def _session(port: int, messages: Sequence[Outgoing], report: Connection) -> None:
    """One SMTP session process: each message on its own connection, MAIL/RCPT/DATA
    pipelined (RFC 2920); report this process's CPU seconds, or the first failure."""
    try:
        for message in messages:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                buffer = bytearray()
                _expect(sock, buffer, b"220", "greeting")
                sock.sendall(b"EHLO client.test.invalid\r\n")
                _expect(sock, buffer, b"250", "EHLO")
                sock.sendall(message.commands)
                _expect(sock, buffer, b"250", "MAIL")
                _expect(sock, buffer, b"250", "RCPT")
                _expect(sock, buffer, b"354", "DATA")
                sock.sendall(message.payload)
                _expect(sock, buffer, b"250", "end of data")
                sock.sendall(b"QUIT\r\n")
                _expect(sock, buffer, b"221", "QUIT")
    except (OSError, LoadError) as error:
        report.send(("error", str(error)))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report.send(("ok", usage.ru_utime + usage.ru_stime))


def send_load(
    port: int, messages: Sequence[Outgoing], count: int, sessions: int, timeout: float
) -> float:
    """Send *count* messages (cycling through *messages*) to 127.0.0.1:*port* over
    *sessions* parallel sessions; return the CPU seconds the sessions used.  Message *j*
    goes to session *j* mod *sessions*, so every session sends a mix of messages."""
    context = multiprocessing.get_context("fork")
    shares = [
        [messages[j % len(messages)] for j in range(first, count, sessions)]
        for first in range(min(sessions, count))
    ]
    workers = []
    for share in shares:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_session, args=(port, share, send), daemon=True)
        process.start()
        send.close()
        workers.append((process, receive))
    cpu, errors = 0.0, []
    deadline = time.monotonic() + timeout
    for process, receive in workers:
        if not receive.poll(max(0.0, deadline - time.monotonic())):
            process.kill()
            errors.append("timed out")
        else:
            with contextlib.suppress(EOFError):
                kind, value = receive.recv()
                if kind == "ok":
                    cpu += value
                else:
                    errors.append(value)
        process.join()
    if errors:
        raise LoadError(f"{len(errors)} SMTP sessions failed, first: {errors[0]}")
    return cpu


def process_cpu(pids: set[int]) -> float:
    """User + system CPU seconds of *pids*, each with its reaped children's, from /proc."""
    seconds = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return seconds


def measure_throughput(
    messages: Sequence[Outgoing],
    count: int,
    sessions: int = 10,
    milter: str | None = None,
    settings: Mapping[str, Setting] | None = None,
    timeout: float = 600.0,
    samples: int = 0,
) -> Throughput:
    """Deliver *count* messages (cycling through *messages*) through a fresh Postfix;
    time first SMTP connection to last Maildir delivery.  *milter* is a Postfix milter
    socket (``unix:/path`` or ``inet:host:port``) that must already be listening;
    *settings* are extra main.cf parameters.  *samples* delivered copies, spread evenly
    over the run, are read back (after the clock stops) for the caller to check."""
    with (
        tempfile.TemporaryDirectory(prefix="postfix-bench-") as base,
        PostfixInstance(Path(base), milter, settings=settings, mailboxes=[RECIPIENT]) as mta,
    ):
        started = time.time()  # wall clock: compared with the Maildir files' mtime
        client_cpu = send_load(mta.smtp_port, messages, count, sessions, timeout)
        deadline = time.monotonic() + timeout
        while mta.delivered_count(RECIPIENT) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{mta.delivered_count(RECIPIENT)} of {count} delivered in {timeout}s\n"
                    + "\n".join(mta.log_text().splitlines()[-20:])
                )
            time.sleep(0.02)
        postfix_cpu = process_cpu(process_group(mta.master_pid))
        paths = mta.message_paths(RECIPIENT)  # oldest first
        seconds = paths[-1].stat().st_mtime_ns / 1e9 - started
        picked = [paths[i * len(paths) // samples] for i in range(min(samples, len(paths)))]
        return Throughput(
            count, seconds, tuple(path.read_bytes() for path in picked), client_cpu, postfix_cpu
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="?", type=Path, help="message file (default: built in)")
    parser.add_argument("--count", type=int, default=1000, help="messages per run (1000)")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions (10)")
    args = parser.parse_args(argv)

    raw = args.message.read_bytes() if args.message else DEFAULT_MESSAGE
    messages = [Outgoing.of(raw)]
    print(f"{args.count} messages of {len(raw)} bytes, {args.sessions} SMTP sessions")
    with tempfile.TemporaryDirectory(prefix="postfix-bench-") as scratch:
        bare = measure_throughput(messages, args.count, args.sessions)
        print(f"bare Postfix        {bare.per_second:8.1f} messages/s  ({bare.seconds:.2f} s)")
        for label, add_headers in (("null milter", False), ("null + 2 headers", True)):
            with null_milter(f"unix:{scratch}/null.sock", add_headers) as socket_spec:
                run = measure_throughput(messages, args.count, args.sessions, socket_spec)
            print(f"{label:<20}{run.per_second:8.1f} messages/s  ({run.seconds:.2f} s), "
                  f"{run.per_second / bare.per_second:.2f} of bare")
        print(f"load generator CPU  {1000 * bare.client_cpu / bare.messages:8.2f} ms/message")


if __name__ == "__main__":
    main()

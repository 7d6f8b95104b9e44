#!/usr/bin/env python3
"""End-to-end SMTP throughput of a throw-away Postfix, bare or with a milter in the path.

:func:`measure_throughput` starts a fresh :class:`~tests.support.postfix.PostfixInstance`,
lets ``smtp-source`` send COUNT copies of a prepared message over SESSIONS parallel SMTP
sessions, and times from the start of smtp-source until the last copy is in the Maildir
(so queueing and delivery count, start-up does not).  The milter's end-to-end benchmark
calls it with the real milter's socket.

Run on its own it compares no milter with :mod:`tests.support.nullmilter` (a milter that
receives everything and does nothing) on the same message, in the same run:

    .venv/bin/python bench/postfix_throughput.py [--count N] [--sessions S] [MESSAGE_FILE]

Needs root and Postfix (``master``, ``postmap``, ``postqueue``, ``smtp-source``).  This is a
measurement, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support without installing anything
    sys.path.insert(0, str(REPO))

from tests.support.nullmilter import null_milter
from tests.support.postfix import PostfixInstance, Setting

SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "sender@example.com"
RECIPIENT = "bench@example.org"

# A small plain-text message, as in a typical mailbox; smtp-source -F sends it verbatim.
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
class Throughput:
    messages: int
    seconds: float
    #: Delivered copies picked evenly from the Maildir (``samples=`` of measure_throughput).
    samples: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


def measure_throughput(
    message: Path,
    count: int,
    sessions: int = 10,
    milter: str | None = None,
    settings: Mapping[str, Setting] | None = None,
    timeout: float = 600.0,
    samples: int = 0,
) -> Throughput:
    """Deliver *count* copies of *message* through a fresh Postfix; time first SMTP
    connection to last Maildir delivery.  *milter* is a Postfix milter socket
    (``unix:/path`` or ``inet:host:port``) that must already be listening; *settings*
    are extra main.cf parameters.  *samples* delivered copies, spread evenly over the
    run, are read back (after the clock stops) for the caller to check."""
    with (
        tempfile.TemporaryDirectory(prefix="postfix-bench-") as base,
        PostfixInstance(Path(base), milter, settings=settings, mailboxes=[RECIPIENT]) as mta,
    ):
        started = time.monotonic()
        source = subprocess.run(
            [
                SMTP_SOURCE,
                "-F", str(message),
                "-m", str(count),
                "-s", str(sessions),
                "-f", SENDER,
                "-t", RECIPIENT,
                "-M", "client.test.invalid",
                f"127.0.0.1:{mta.smtp_port}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip
        if source.returncode != 0:
            raise RuntimeError(f"smtp-source failed: {source.stderr or source.stdout}")
        deadline = started + timeout
        while mta.delivered_count(RECIPIENT) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{mta.delivered_count(RECIPIENT)} of {count} delivered in {timeout}s\n"
                    + "\n".join(mta.log_text().splitlines()[-20:])
                )
            time.sleep(0.005)
        seconds = time.monotonic() - started
        paths = mta.message_paths(RECIPIENT) if samples > 0 else []
        picked = [paths[i * len(paths) // samples] for i in range(min(samples, len(paths)))]
        return Throughput(count, seconds, tuple(path.read_bytes() for path in picked))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="?", type=Path, help="message file (default: built in)")
    parser.add_argument("--count", type=int, default=1000, help="messages per run (1000)")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions (10)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="postfix-bench-") as scratch:
        message: Path = args.message or Path(scratch, "message.eml")
        if args.message is None:
            message.write_bytes(DEFAULT_MESSAGE)
        print(
            f"{args.count} messages of {message.stat().st_size} bytes, "
            f"{args.sessions} SMTP sessions"
        )
        bare = measure_throughput(message, args.count, args.sessions)
        print(f"bare Postfix      {bare.per_second:8.1f} messages/s  ({bare.seconds:.2f} s)")
        with null_milter(f"unix:{scratch}/null.sock") as socket_spec:
            null = measure_throughput(message, args.count, args.sessions, socket_spec)
        print(f"null milter       {null.per_second:8.1f} messages/s  ({null.seconds:.2f} s)")
        print(f"null / bare       {null.per_second / bare.per_second:8.2f}")


if __name__ == "__main__":
    main()

"""Collecting one message from milter callbacks.

Headers arrive one by one, the body in chunks. Small messages stay in
memory; past a threshold the whole message moves to a spool file so a 50 MB
message never sits in memory twice. Past the size limit nothing more is
kept at all: the message will not be examined.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO


def header_line(name: bytes, value: bytes) -> bytes:
    """One header field as it was in the message. libmilter hands us the value
    without the space after the colon and with bare LF in folded lines."""
    value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return name + b": " + value + b"\r\n"


class MessageBuffer:
    """The message being received on one connection (reset for every message)."""

    def __init__(self, spool_threshold: int, max_size: int, spool_directory: Path | None) -> None:
        self.spool_threshold = spool_threshold
        self.max_size = max_size
        self.spool_directory = spool_directory
        self.headers: list[tuple[str, bytes]] = []
        self.size = 0
        self.oversize = False
        self._head = bytearray()
        self._body = bytearray()
        self._spool: IO[bytes] | None = None

    def add_header(self, name: str, value: bytes) -> None:
        self.headers.append((name, value))
        if self.oversize:
            return
        line = header_line(name.encode("ascii", "surrogateescape"), value)
        self._grow(len(line))
        if not self.oversize:
            self._head += line

    def end_of_headers(self) -> None:
        self._grow(2)
        if not self.oversize:
            self._head += b"\r\n"

    def add_body(self, chunk: bytes) -> None:
        self._grow(len(chunk))
        if self.oversize:
            return
        if self._spool is not None:
            self._spool.write(chunk)
            return
        self._body += chunk
        if len(self._head) + len(self._body) > self.spool_threshold:
            self._start_spool()

    def _grow(self, count: int) -> None:
        self.size += count
        if not self.oversize and self.size > self.max_size:
            self.oversize = True
            self._head.clear()
            self._body.clear()
            self.discard()

    def _start_spool(self) -> None:
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives until the message ends
            prefix="smime-milter-", dir=self.spool_directory, delete=False
        )
        os.fchmod(spool.fileno(), 0o600)
        spool.write(self._head)
        spool.write(self._body)
        self._body.clear()
        self._spool = spool

    @property
    def spool_path(self) -> str | None:
        """The spool file holding the whole message, flushed, or None when in memory."""
        if self._spool is None:
            return None
        self._spool.flush()
        return self._spool.name

    def message(self) -> bytes:
        """The in-memory message (only when not spooled)."""
        return bytes(self._head + self._body)

    def discard(self) -> None:
        """Remove the spool file; safe to call repeatedly."""
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool.name)

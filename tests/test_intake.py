"""Collecting a message from milter callbacks: memory, spool, size limit."""

from __future__ import annotations

import os
from pathlib import Path

from smime_milter.mta.intake import MessageBuffer, header_line


def _feed(buffer: MessageBuffer, body: bytes, chunk: int = 65535) -> None:
    buffer.add_header("From", b"a@example.org")
    buffer.add_header("Subject", b"folded\n\tline")
    buffer.end_of_headers()
    for start in range(0, len(body), chunk):
        buffer.add_body(body[start:start + chunk])


EXPECTED_HEAD = b"From: a@example.org\r\nSubject: folded\r\n\tline\r\n\r\n"


def test_header_line_restores_space_and_crlf_folding() -> None:
    assert header_line(b"X", b"a\n b") == b"X: a\r\n b\r\n"
    assert header_line(b"X", b"a\r\n b") == b"X: a\r\n b\r\n"


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    buffer = MessageBuffer(1000, 10_000, tmp_path)
    _feed(buffer, b"hello\r\n")
    assert buffer.spool_path is None
    assert buffer.message() == EXPECTED_HEAD + b"hello\r\n"
    assert list(tmp_path.iterdir()) == []


def test_large_message_is_spooled_whole_and_removed(tmp_path: Path) -> None:
    body = os.urandom(50_000)
    buffer = MessageBuffer(10_000, 1_000_000, tmp_path)
    _feed(buffer, body, chunk=4096)
    path = buffer.spool_path
    assert path is not None and Path(path).parent == tmp_path
    assert Path(path).read_bytes() == EXPECTED_HEAD + body
    assert Path(path).stat().st_mode & 0o777 == 0o600
    buffer.discard()
    buffer.discard()
    assert list(tmp_path.iterdir()) == []


def test_oversize_message_keeps_headers_but_no_content(tmp_path: Path) -> None:
    buffer = MessageBuffer(1000, 5000, tmp_path)
    _feed(buffer, b"x" * 20_000, chunk=1000)
    assert buffer.oversize
    assert buffer.size == len(EXPECTED_HEAD) + 20_000
    assert [name for name, _ in buffer.headers] == ["From", "Subject"]
    assert buffer.spool_path is None and buffer.message() == b""
    assert list(tmp_path.iterdir()) == []

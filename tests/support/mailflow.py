"""Mail through a real Postfix and the real milter daemon: the pieces every
end-to-end module (test_*_postfix.py, test_ingest.py) shares.

``pytestmark = POSTFIX`` marks and skips a module that starts Postfix;
:func:`milter_process` and :func:`milter_and_postfix` start the two; the rest
builds messages and reads what was delivered.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from smime_milter.stamp.fields import parse_status_header
from smime_milter.store.facade import Record
from tests.support.daemon import MilterProcess
from tests.support.pki import TestPki
from tests.support.postfix import (
    POSTFIX_MISSING,
    PostfixFactory,
    PostfixInstance,
    Setting,
    make_traversable,
    postfix_available,
)
from tests.support.smime import multipart_signed, text_entity

#: Module marks of a test module that starts Postfix: marked, and skipped where
#: Postfix cannot run.  Every such module also starts the milter daemon.
POSTFIX = [pytest.mark.postfix, pytest.mark.daemon,
           pytest.mark.skipif(not postfix_available(), reason=POSTFIX_MISSING)]

AUTHSERV_ID = "mx.test.example"


def milter_process(directory: Path, anchors: Path, extra_toml: str = "", **options: str
                   ) -> MilterProcess:
    """A milter daemon (not started) whose socket Postfix's smtpd can reach."""
    directory.mkdir(parents=True, exist_ok=True)
    make_traversable(directory / "milter.sock")
    return MilterProcess(directory, anchors, authserv_id=AUTHSERV_ID, extra_toml=extra_toml,
                         **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def milter_and_postfix(
    tmp_path_factory: pytest.TempPathFactory, anchors: Path, name: str, *,
    extra_toml: str = "", mailboxes: Iterable[str] = (),
    settings: Mapping[str, Setting] | None = None, submission: bool = False,
) -> Iterator[tuple[MilterProcess, PostfixInstance]]:
    """A running milter daemon and a Postfix whose smtpd uses it, for a module's tests."""
    with milter_process(tmp_path_factory.mktemp(f"{name}-milter"), anchors,
                        extra_toml) as milter, \
            PostfixFactory(tmp_path_factory.mktemp(f"{name}-postfix")) as factory:
        yield milter, factory(milter=milter.postfix_socket, settings=settings,
                              mailboxes=mailboxes, submission=submission)


_counter = iter(range(10**9))


def unique(text: str) -> str:
    """*text* made unique in this run: a Subject that finds exactly one delivery."""
    return f"{text} #{next(_counter)} {time.monotonic_ns()}"


def signed_message(pki: TestPki, subject: str, rcpt: str, body: str = "Hello Bob\n",
                   extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    return multipart_signed(text_entity(body), pki.rsa, to=rcpt, subject=subject,
                            extra_headers=extra_headers)


def tampered(message: bytes) -> bytes:
    return message.replace(b"Hello Bob", b"Hello Eve", 1)


def delivered_with(mta: PostfixInstance, address: str, subject: str,
                   timeout: float = 30.0) -> Message:
    """The one delivered copy whose Subject contains ``subject``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in map(message_from_bytes, mta.delivered(address))
                 if subject in (m["Subject"] or "")]
        if found:
            assert len(found) == 1, f"{len(found)} copies of {subject!r}"
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"{subject!r} not delivered; log:\n{mta.log_text()[-3000:]}")
        time.sleep(0.05)


def stamps(message: Message) -> tuple[list[str], list[str]]:
    """(our Authentication-Results values unfolded, SMIME-Status-At-Delivery values)."""
    results = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])]
    return ([r for r in results if r.lower().startswith(AUTHSERV_ID)],
            [str(v) for v in message.get_all("SMIME-Status-At-Delivery", [])])


def record_of(milter: MilterProcess, message: Message) -> Record:
    """The store record the delivered *message*'s status field names."""
    [status_value] = stamps(message)[1]
    _, record_id = parse_status_header(status_value)
    assert record_id is not None
    store = milter.open_store()
    record = store.get(record_id)
    assert record is not None, f"record {record_id} not in the store"
    return record


def wait_for_log(daemon: MilterProcess, text: str, count: int = 1, timeout: float = 60) -> None:
    """Wait until the daemon logged *text* at least *count* times."""
    deadline = time.monotonic() + timeout
    while daemon.log_text().count(text) < count:
        assert time.monotonic() < deadline, daemon.log_text()[-2000:]
        time.sleep(0.05)

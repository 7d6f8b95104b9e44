"""SmimeMilter without libmilter: recorders in place of the libmilter-facing
methods, a fake verifier and a fake store (tests/test_release_app.py and
tests/test_advanced_app.py drive the milter glue with these)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import Milter

from smime_milter.model import Verdict
from smime_milter.mta.app import SmimeMilter
from smime_milter.mta.verifying import Job
from smime_milter.store import Record
from smime_milter.verify.engine import Verifier

#: The envelope recipients :meth:`Connection.send` uses unless told otherwise.
RECIPIENTS = ("rel1@example.org", "rel2@example.org")


@dataclass
class FakeVerifier:
    """The verifier: the real engine (frozen at NOW), a fixed verdict, or a failure."""

    engine: Verifier | None = None
    verdict: Verdict | None = None
    failure: Exception | None = None
    jobs: list[Job] = field(default_factory=list)

    def verify(self, job: Job, timeout: float) -> Verdict:
        self.jobs.append(job)
        if self.failure is not None:
            raise self.failure
        if self.verdict is not None:
            return self.verdict
        assert self.engine is not None
        message = job.message if job.message is not None else Path(job.path or "").read_bytes()
        return self.engine.verify(message, at=job.at)


@dataclass
class FakeStore:
    failure: Exception | None = None
    records: list[Record] = field(default_factory=list)
    #: put_sync's ``durable`` for each of ``records``.
    durable: list[bool] = field(default_factory=list)

    def put_sync(self, record: Record, timeout: float | None = None, *,
                 durable: bool = False) -> int:
        if self.failure is not None:
            raise self.failure
        self.records.append(record)
        self.durable.append(durable)
        return len(self.records)


Call = tuple[object, ...]


class Connection:
    """One SmimeMilter with every libmilter-facing method replaced by a recorder."""

    def __init__(self, macros: Mapping[str, str | None], fail: Mapping[str, int]) -> None:
        self.milter = SmimeMilter()
        self.milter._protocol = 0  # what libmilter negotiates; 0: every callback replies
        self.calls: list[Call] = []
        self.macros = dict(macros)
        self.milter.getsymval = self.macros.get  # type: ignore[method-assign]
        for name in ("addheader", "chgheader", "addrcpt", "delrcpt", "quarantine", "setreply"):
            setattr(self.milter, name, self._recorder(name, fail.get(name)))

    def _recorder(self, name: str, fail_at: int | None) -> Callable[..., None]:
        def record(*args: object) -> None:
            self.calls.append((name, *args))
            if fail_at is not None and self.count(name) == fail_at:
                raise Milter.error(f"{name} failed")  # what pymilter raises on MTA errors
        return record

    def count(self, name: str) -> int:
        return len(self.of(name))

    def of(self, name: str) -> list[Call]:
        return [call[1:] for call in self.calls if call[0] == name]

    @property
    def added(self) -> dict[str, str]:
        return {str(args[0]): str(args[1]) for args in self.of("addheader")}

    def connect(self) -> int:
        return self.milter.connect("client.example", socket.AF_INET, ("192.0.2.7", 40000))

    def send(self, message: bytes, sender: str = "alice@example.com",
             recipients: Sequence[str] = RECIPIENTS) -> int:
        """MAIL FROM through end of data; the return code of eom."""
        assert self.milter.envfrom(f"<{sender}>") == Milter.CONTINUE
        for recipient in recipients:
            assert self.milter.envrcpt(f"<{recipient}>") == Milter.CONTINUE
        headers, body = split_message(message)
        for name, value in headers:
            assert self.milter.header(name, value) == Milter.CONTINUE
        assert self.milter.eoh() == Milter.CONTINUE
        for start in range(0, len(body), 1000):
            assert self.milter.body(body[start:start + 1000]) == Milter.CONTINUE
        rc: int = self.milter.eom()
        return rc


def split_message(message: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Header fields as libmilter hands them over (no space after the colon, folded
    lines joined with a bare LF) and the body."""
    head, _, body = message.partition(b"\r\n\r\n")
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        else:
            name_bytes, _, value = line.partition(b":")
            fields.append((name_bytes.decode(), value[1:] if value[:1] == b" " else value))
    return fields, body

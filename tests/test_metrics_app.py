"""What the daemon's connection threads count when the machinery fails
(tests/test_metrics.py covers the ordinary flow against the real daemon):
a dead worker, a refused store record and an internal error all count as
status ``error`` with the action taken, each once."""

from __future__ import annotations

from collections.abc import Iterator

import Milter
import pytest

from smime_milter.config.reader import Config
from smime_milter.mta import MilterMetrics, Runtime
from smime_milter.mta.app import RuntimeHolder, SmimeMilter
from smime_milter.mta.verifying import VerifyFailure
from smime_milter.store import StoreError
from tests.support.milterapp import Connection, FakeStore, FakeVerifier
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity
from tests.support.verdicts import NOW, make_verifier

MACROS = {"j": "mx.example.org", "i": "4ABCD"}


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[MilterMetrics]:
    metrics = MilterMetrics()
    monkeypatch.setattr(SmimeMilter, "metrics", metrics)
    monkeypatch.setattr(SmimeMilter, "clock", staticmethod(lambda: NOW))
    yield metrics


def _send(monkeypatch: pytest.MonkeyPatch, pki: TestPki, verifier: FakeVerifier,
          store: FakeStore, fail: dict[str, int] | None = None) -> int:
    runtime = Runtime(config=Config(), verifier=verifier, store=store, hostname="h")
    monkeypatch.setattr(SmimeMilter, "holder", RuntimeHolder(runtime), raising=False)
    connection = Connection(MACROS, fail or {})
    assert connection.connect() == Milter.CONTINUE
    message = multipart_signed(text_entity("Hello\n"), pki.rsa, to="bob@example.org")
    return connection.send(message)


def _value(metrics: MilterMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_failures_count_as_error_with_the_action_taken(
    metrics: MilterMetrics, monkeypatch: pytest.MonkeyPatch, pki: TestPki
) -> None:
    engine = make_verifier(pki)
    assert _send(monkeypatch, pki, FakeVerifier(failure=VerifyFailure("worker died")),
                 FakeStore()) == Milter.TEMPFAIL
    assert _send(monkeypatch, pki, FakeVerifier(engine=engine),
                 FakeStore(failure=StoreError("full", "map full"))) == Milter.TEMPFAIL
    assert _send(monkeypatch, pki, FakeVerifier(engine=engine), FakeStore(),
                 fail={"addheader": 1}) == Milter.TEMPFAIL
    assert _send(monkeypatch, pki, FakeVerifier(engine=engine), FakeStore()) == Milter.CONTINUE
    assert _value(metrics, "smime_milter_messages_total",
                  status="error", action="tempfail") == 3
    assert _value(metrics, "smime_milter_messages_total",
                  status="signed/verified", action="accept") == 1
    assert _value(metrics, "smime_milter_end_of_message_seconds_count") == 4
    # Verification was attempted for every message, the failing one included.
    assert _value(metrics, "smime_milter_verify_seconds_count") == 4

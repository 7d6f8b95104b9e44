"""The benchmarks' do-nothing milter (tests/support/nullmilter.py) with ``add_headers``,
driven by miltertest: it inserts exactly two fields at the top, as smime-milter's stamp
does; the end-to-end benchmark compares smime-milter with it.  (The default mode
negotiates no connect step, which miltertest cannot drive; tests/test_postfix_harness.py
covers it through Postfix.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.miltertest import (
    ACCEPT,
    MILTERTEST,
    MILTERTEST_MISSING,
    Message,
    message,
    run_session,
)
from tests.support.nullmilter import ADDED_HEADERS, null_milter_process

pytestmark = [pytest.mark.miltertest, pytest.mark.daemon,
              pytest.mark.skipif(MILTERTEST is None, reason=MILTERTEST_MISSING)]

MESSAGE = (b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hello\r\n\r\n"
           b"Hello,\r\nonly a test.\r\n")


def _mail() -> list[Message]:
    return [message(MESSAGE, "a@example.com", ["b@example.org"]) for _ in range(2)]


def test_header_adding_milter_inserts_two_fields_per_message(tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/null.sock"
    with null_milter_process(socket, add_headers=True) as milter:
        assert milter.socket == socket
        assert milter.process.poll() is None
        results = run_session(socket, _mail(), tmp_path / "mt",
                              probe_names=[name for name, _ in ADDED_HEADERS])
    for result in results:
        assert result.reply == ACCEPT
        assert result.any_insert and not result.any_add and not result.any_change
        assert result.inserted == {
            name: [(index, value)] for index, (name, value) in enumerate(ADDED_HEADERS)
        }

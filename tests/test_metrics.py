"""Health and metrics of the real daemon: the Prometheus endpoint
(``[metrics] listen``) counts what miltertest sends, and ``smime-milter
status`` reports the running daemon healthy and the stopped one not.

Every test starts ``smime-milter run`` (tests/support/daemon.py) and talks
to it as an MTA does (OpenDKIM's miltertest), so the counters are checked
where they are incremented in production: the daemon's connection threads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smime_milter.mta import scrape
from tests.support.daemon import SMIME_MILTER, MilterProcess
from tests.support.miltertest import (
    CONTINUE,
    MILTERTEST,
    MILTERTEST_MISSING,
    message,
    run_session,
)
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, text_entity, wrap_message

pytestmark = [pytest.mark.miltertest, pytest.mark.daemon,
              pytest.mark.skipif(MILTERTEST is None, reason=MILTERTEST_MISSING)]

SIGNED = 'smime_milter_messages_total{action="accept",status="signed/verified"}'
FAILED = 'smime_milter_messages_total{action="accept",status="signed/failed"}'
NONE = 'smime_milter_messages_total{action="accept",status="none"}'
HISTOGRAMS = ("smime_milter_verify_seconds", "smime_milter_end_of_message_seconds",
              "smime_milter_store_commit_seconds")


def _signed(pki: TestPki, n: int) -> bytes:
    return multipart_signed(text_entity("Hello Bob\n"), pki.rsa, to="bob@example.org",
                            subject=f"signed {n}")


def _mail(pki: TestPki) -> list[bytes]:
    """Two signed, one tampered, one plain message."""
    tampered = _signed(pki, 3).replace(b"Hello Bob", b"Hello Eve", 1)
    plain = wrap_message(text_entity("just text\n"), to="bob@example.org", subject="plain")
    return [_signed(pki, 1), _signed(pki, 2), tampered, plain]


def _send(daemon: MilterProcess, pki: TestPki, workdir: Path) -> None:
    results = run_session(daemon.postfix_socket,
                          [message(data, "alice@example.com", ["bob@example.org"])
                           for data in _mail(pki)], workdir)
    assert [result.reply for result in results] == [CONTINUE] * 4


def _status(daemon: MilterProcess, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SMIME_MILTER), "status", "--config", str(daemon.config),
                           *options], capture_output=True, text=True, timeout=120, check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def unix_daemon(tmp_path: Path, anchors: Path) -> Iterator[MilterProcess]:
    directory = tmp_path / "d"
    directory.mkdir()
    daemon = MilterProcess(directory, anchors,
                           extra_toml=f'[metrics]\nlisten = "unix:{directory}/metrics.sock"\n')
    with daemon:
        yield daemon


def test_counters_and_histograms_move_by_what_was_sent(
    unix_daemon: MilterProcess, live_pki: TestPki, tmp_path: Path
) -> None:
    listen = f"unix:{unix_daemon.directory}/metrics.sock"
    before = scrape(listen)
    assert before.get(SIGNED, 0) == before.get(FAILED, 0) == before.get(NONE, 0) == 0
    _send(unix_daemon, live_pki, tmp_path / "mt")
    after = scrape(listen)
    assert after[SIGNED] == 2 and after[FAILED] == 1 and after[NONE] == 1
    counted = {name: value for name, value in after.items()
               if name.startswith("smime_milter_messages_total")}
    assert sum(counted.values()) == 4, counted
    for histogram in HISTOGRAMS:
        assert after[f"{histogram}_count"] == 4, histogram
        assert after[f'{histogram}_bucket{{le="+Inf"}}'] == 4, histogram
        assert after[f"{histogram}_sum"] > 0, histogram
    assert after['smime_milter_workers{state="configured"}'] == 2
    assert after['smime_milter_workers{state="alive"}'] == 2
    assert after.get("smime_milter_worker_restarts_total") == 0
    assert after["smime_milter_store_records"] == 4
    assert 0 < after['smime_milter_store_bytes{kind="used"}'] \
        <= after['smime_milter_store_bytes{kind="map"}'] \
        <= after['smime_milter_store_bytes{kind="max_map"}'] == 1 << 30
    assert time.time() - after["smime_milter_last_message_timestamp_seconds"] < 120

    unix_daemon.reload()
    deadline = time.monotonic() + 60
    while scrape(listen).get('smime_milter_reloads_total{result="ok"}') != 1:
        assert time.monotonic() < deadline, unix_daemon.log_text()
        time.sleep(0.1)
    assert scrape(listen)['smime_milter_reloads_total{result="failed"}'] == 0


def test_status_reports_the_running_daemon_and_then_the_stopped_one(
    unix_daemon: MilterProcess, live_pki: TestPki, tmp_path: Path
) -> None:
    _send(unix_daemon, live_pki, tmp_path / "mt")
    done = _status(unix_daemon, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["healthy"] is True
    checks = report["checks"]
    assert {name for name, check in checks.items() if not check["ok"]} == set()
    assert checks["socket"]["state"] == "ok"
    assert checks["socket"]["socket"] == unix_daemon.postfix_socket
    assert checks["store"]["records"] == 4
    assert checks["store_access"]["state"] == "ok"
    assert checks["workers"]["alive"] == checks["workers"]["configured"] == 2
    assert checks["last_message"]["received_at"] is not None
    assert checks["anchors"]["anchors"] >= 1
    human = _status(unix_daemon)
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].startswith("ok") and f"unix:{unix_daemon.socket}" in lines[0]
    assert any(line.startswith("ok") and "4 records" in line for line in lines), lines

    unix_daemon.stop()
    stopped = _status(unix_daemon)
    assert stopped.returncode == 1
    failed = [line for line in stopped.stdout.splitlines() if line.startswith("FAIL")]
    assert any(line.split()[1] == "socket" and str(unix_daemon.socket) in line
               for line in failed), stopped.stdout
    assert stopped.stderr == ""  # one line per check, no traceback
    # The store is still there, readable, with the four records.
    assert any(line.startswith("ok") and "4 records" in line
               for line in stopped.stdout.splitlines()), stopped.stdout


def test_metrics_over_loopback_tcp(tmp_path: Path, anchors: Path, live_pki: TestPki) -> None:
    """``inet:PORT@127.0.0.1``: prometheus_client's own HTTP server."""
    listen = f"inet:{_free_port()}@127.0.0.1"
    directory = tmp_path / "d"
    directory.mkdir()
    with MilterProcess(directory, anchors, extra_toml=f'[metrics]\nlisten = "{listen}"\n',
                       workers=1) as daemon:
        _send(daemon, live_pki, tmp_path / "mt")
        samples = scrape(listen)
        assert samples[SIGNED] == 2 and samples[FAILED] == 1 and samples[NONE] == 1
        assert samples["smime_milter_verify_seconds_count"] == 4
        assert samples['smime_milter_workers{state="alive"}'] == 1
        assert "metrics on " + listen in daemon.log_text()


def test_status_without_metrics_says_workers_unknown(
    tmp_path: Path, anchors: Path
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    with MilterProcess(directory, anchors) as daemon:
        done = _status(daemon)
    assert done.returncode == 0, done.stdout
    [workers] = [line for line in done.stdout.splitlines() if line.split()[1] == "workers"]
    assert workers.startswith("unknown") and "[metrics] listen" in workers
    assert any(line.startswith("ok") and "0 records" in line
               for line in done.stdout.splitlines()), done.stdout

"""``smime-milter run``: start-up errors, embedded defaults, graceful stop."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import SMIME_MILTER, MilterProcess

pytestmark = pytest.mark.process


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SMIME_MILTER), "run", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_bad_socket_argument_is_a_usage_error() -> None:
    result = _run("--socket", "tcp:25")
    assert result.returncode == 2
    assert "not a milter socket" in result.stderr


def test_bad_config_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[milter]\nsocket = "unix:/x"\nspool = "/tmp"\n')
    result = _run("--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == f"smime-milter: {config}:3: milter.spool: unknown key"


def test_unreadable_trust_anchors_stop_the_start(tmp_path: Path) -> None:
    result = _run("--socket", f"unix:{tmp_path / 's.sock'}", "--store", str(tmp_path / "st"),
                  "--user", "root", "--trust-anchors", str(tmp_path / "missing.pem"))
    assert result.returncode == 1
    assert "missing.pem" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.daemon
def test_sigterm_stops_gracefully_and_removes_the_socket(tmp_path: Path) -> None:
    daemon = MilterProcess(tmp_path, Path("/etc/ssl/certs/ca-certificates.crt"))
    daemon.start()
    assert daemon.socket.exists()
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    log = daemon.log_text()
    assert "SIGTERM received" in log and "stopping" in log
    assert "leaked" not in log and "Traceback" not in log

"""Logging that always works (config/logs.py): syslog at a real Unix datagram
socket, stderr with one warning line when that socket is missing or goes
away, and timestamps on stderr unless it is the journal."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smime_milter.config import SYSLOG_SOCKET, configure_logging, syslog_problem
from smime_milter.config.reader import MilterConfig

SYSLOG = MilterConfig(log_target="syslog")
STDERR = MilterConfig(log_target="stderr")
#: The stderr line's start outside the journal: 2026-12-03T14:50:01+0000 INFO ...
STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")
log = logging.getLogger("smime_milter.test_logging")


@pytest.fixture(autouse=True)
def restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging replaces the root logger's handlers; put them back."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def syslogd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for /dev/log."""
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        yield server, path


def test_syslog_lines_reach_the_socket_as_facility_mail(
        syslogd: tuple[socket.socket, str], capsys: pytest.CaptureFixture[str]) -> None:
    server, path = syslogd
    assert syslog_problem(path) is None
    configure_logging(SYSLOG, syslog_socket=path)
    log.info("hello %s", "syslog")
    log.warning("careful")
    # mail is facility 2: <2*8 + 6 (info)>, <2*8 + 4 (warning)>
    assert server.recv(4096) == f"<22>smime-milter[{os.getpid()}]: hello syslog\0".encode()
    assert server.recv(4096) == f"<20>smime-milter[{os.getpid()}]: careful\0".encode()
    assert capsys.readouterr().err == ""


def test_missing_syslog_socket_is_one_warning_then_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-log")
    assert syslog_problem(missing) == f"syslog socket {missing}: No such file or directory"
    configure_logging(SYSLOG, syslog_socket=missing)
    log.info("first")
    log.info("second")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(f"WARNING syslog socket {missing}: No such file or directory; "
                             "logging to stderr")
    assert lines[1].endswith("INFO first") and lines[2].endswith("INFO second")


def test_the_warning_shows_even_when_only_errors_are_logged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(MilterConfig(log_target="syslog", log_level="error"),
                      syslog_socket=str(tmp_path / "no-such-log"))
    log.warning("not shown")
    err = capsys.readouterr().err
    assert "logging to stderr" in err and "not shown" not in err


def test_syslog_socket_gone_after_configuration_is_no_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    configure_logging(SYSLOG, syslog_socket=path)
    log.info("delivered")
    assert server.recv(4096).endswith(b"delivered\0")
    server.close()
    os.unlink(path)  # the syslog daemon stopped
    log.info("one")
    log.info("two")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 3, lines
    assert re.search(f"WARNING syslog socket {re.escape(path)}: [^;]+; logging to stderr$",
                     lines[0]), lines[0]
    assert lines[1].endswith("INFO one") and lines[2].endswith("INFO two")

    # A restarted daemon gets the lines again, after one line saying so.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as restarted:
        restarted.bind(path)
        restarted.settimeout(5)
        log.info("three")
        assert restarted.recv(4096).endswith(b"three\0")
    assert capsys.readouterr().err.rstrip("\n").endswith(
        f"WARNING syslog socket {path}: connected again; logging to syslog")


def test_a_format_bug_still_shows_its_traceback(
        syslogd: tuple[socket.socket, str], capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(SYSLOG, syslog_socket=syslogd[1])
    log.info("%d", "not a number")
    assert "Logging error" in capsys.readouterr().err


def test_stderr_lines_are_stamped_outside_the_journal(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(STDERR)
    log.info("stamped")
    line = capsys.readouterr().err
    assert STAMPED.match(line), line
    assert line.endswith(" INFO stamped\n")


def _journal_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: str | None) -> str:
    """What one INFO line looks like on a real file as stderr, with JOURNAL_STREAM
    set to *journal* (``"self"``: that file's own device:inode)."""
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        if journal == "self":
            status = os.fstat(stream.fileno())
            journal = f"{status.st_dev}:{status.st_ino}"
        if journal is not None:
            monkeypatch.setenv("JOURNAL_STREAM", journal)
        configure_logging(STDERR, stream=stream)
        log.info("journal?")
        stream.flush()
    return out.read_text()


def test_under_journald_stderr_lines_are_not_stamped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _journal_line(tmp_path, monkeypatch, "self") == "INFO journal?\n"


@pytest.mark.parametrize("journal", [None, "0:0"], ids=["absent", "another-stream"])
def test_without_the_journal_stderr_lines_are_stamped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: str | None) -> None:
    """JOURNAL_STREAM inherited from a parent whose stderr was the journal, while
    ours is redirected elsewhere, does not count."""
    line = _journal_line(tmp_path, monkeypatch, journal)
    assert STAMPED.match(line) and line.endswith(" INFO journal?\n"), line


def _default_socket_works() -> bool:
    """Whether this machine's /dev/log takes a connection (datagram or stream)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect("/dev/log")
            except OSError:
                continue
            return True
    return False


def _check_config(tmp_path: Path, target: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    config = tmp_path / "c.toml"
    config.write_text(f'[milter]\nlog_target = "{target}"\n')
    return config, subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=120,
    )


@pytest.mark.process
def test_check_config_warns_when_syslog_is_unusable(tmp_path: Path) -> None:
    """check-config can only look at the product's /dev/log: the expectation
    follows what this machine has, both ways deterministic."""
    assert SYSLOG_SOCKET == "/dev/log"
    config, done = _check_config(tmp_path, "syslog")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"{config}: OK"
    if _default_socket_works():
        assert lines == [f"{config}: OK"]
    else:
        assert len(lines) == 2
        assert re.fullmatch(r"warning: syslog socket /dev/log: [^;]+; logs will go to stderr",
                            lines[0]), lines[0]
    assert done.stderr == ""


@pytest.mark.process
def test_check_config_is_silent_about_stderr_logging(tmp_path: Path) -> None:
    config, done = _check_config(tmp_path, "stderr")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{config}: OK\n", "")

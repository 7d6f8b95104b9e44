"""Logging as ``[milter]`` configures it: stderr (the journal) or syslog.

Shared by the milter daemon and the JMAP service.  Logging must always work:
a syslog socket that is missing at start, or goes away later, turns into one
warning line and stderr, never into a "--- Logging error ---" traceback per
line.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from typing import TextIO

from smime_milter.config.reader import MilterConfig

#: Where syslog daemons (and journald's syslog compatibility) listen.
SYSLOG_SOCKET = "/dev/log"

#: ISO 8601 with the UTC offset, e.g. 2026-12-03T14:50:01+0000.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def configure_logging(milter: MilterConfig, *, syslog_socket: str = SYSLOG_SOCKET,
                      stream: TextIO | None = None) -> None:
    """stderr (the journal under systemd) or syslog facility mail, like other milters.

    *stream* is where stderr logging writes (default: ``sys.stderr`` now).  With
    ``log_target = "syslog"`` and no connectable *syslog_socket*, one warning
    line goes to *stream* and logging stays there."""
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    fallback = stderr_handler(sys.stderr if stream is None else stream)
    handler: logging.Handler = fallback
    if milter.log_target == "syslog":
        problem = syslog_problem(syslog_socket)
        if problem is None:
            handler = FallbackSysLogHandler(syslog_socket, fallback)
        else:
            announce(fallback, f"{problem}; logging to stderr")
    root.addHandler(handler)
    root.setLevel(milter.log_level.upper())


def syslog_problem(path: str = SYSLOG_SOCKET) -> str | None:
    """Why syslog at *path* cannot be used now, as one line ("syslog socket
    /dev/log: No such file or directory"); None when a connection works.
    Tries a datagram and then a stream socket, as SysLogHandler does."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
            except OSError as exc:
                error = exc
                continue
        return None
    return _describe(path, error)


def under_journald(stream: TextIO) -> bool:
    """True when *stream* is the journal: systemd sets JOURNAL_STREAM to the
    "device:inode" of the stream it connected (systemd.exec(5)), which must be
    this stream's, not one inherited from a parent whose output went there."""
    expected = os.environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO)
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


def stderr_handler(stream: TextIO) -> logging.StreamHandler[TextIO]:
    """Level and message; a timestamp first unless *stream* is the journal,
    which stamps each line itself."""
    handler = logging.StreamHandler(stream)
    if under_journald(stream):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               datefmt=TIMESTAMP_FORMAT))
    return handler


def announce(handler: logging.Handler, text: str) -> None:
    """One warning line through *handler*, whatever the configured level: it
    says where the log lines are."""
    handler.handle(logging.LogRecord(__name__, logging.WARNING, __file__, 0, text, None, None))


class FallbackSysLogHandler(logging.handlers.SysLogHandler):
    """Syslog facility mail at a Unix socket; while sending fails (the syslog
    daemon stopped), lines go to *fallback* instead, with one warning when that
    starts and one when syslog works again.  Each line tries syslog first, so a
    restarted daemon is picked up."""

    def __init__(self, address: str, fallback: logging.Handler) -> None:
        super().__init__(address=address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
        self.setFormatter(logging.Formatter("smime-milter[%(process)d]: %(message)s"))
        self.fallback = fallback
        self.failing = False
        self._failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)  # calls handleError on failure
        if self.failing and not self._failed_now:
            self.failing = False
            announce(self.fallback, f"syslog socket {self.address}: connected again; "
                                    "logging to syslog")

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)  # a bug (a bad format string) keeps its traceback
            return
        self._failed_now = True
        if not self.failing:
            self.failing = True
            announce(self.fallback, f"{_describe(str(self.address), error)}; logging to stderr")
        self.fallback.handle(record)


def _describe(path: str, error: OSError | None) -> str:
    reason = (error.strerror or str(error)) if error is not None else "cannot connect"
    return f"syslog socket {path}: {reason}"

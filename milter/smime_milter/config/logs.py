"""Logging as ``[milter]`` configures it: stderr (the journal) or syslog.

Shared by the milter daemon and the JMAP service.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from smime_milter.config.reader import MilterConfig


def configure_logging(milter: MilterConfig) -> None:
    """stderr (the journal under systemd) or syslog facility mail, like other milters."""
    root = logging.getLogger()
    for previous in list(root.handlers):
        root.removeHandler(previous)
    handler: logging.Handler
    if milter.log_target == "syslog":
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("smime-milter[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(milter.log_level.upper())

"""The configuration file reader: strict TOML to immutable settings, errors
naming file, line and key."""

from __future__ import annotations

from smime_milter.config.logs import SYSLOG_SOCKET, configure_logging, syslog_problem
from smime_milter.config.reader import (
    DEFAULT_CONFIG,
    Config,
    MetricsConfig,
    check_listen,
    check_socket,
    is_loopback,
    load_config,
    metrics_address,
)
from smime_milter.release import check_submit
from smime_milter.settings import ConfigError

__all__ = [
    "DEFAULT_CONFIG", "SYSLOG_SOCKET", "Config", "ConfigError", "MetricsConfig", "check_listen",
    "check_socket", "check_submit", "configure_logging", "is_loopback", "load_config",
    "metrics_address", "syslog_problem"
]

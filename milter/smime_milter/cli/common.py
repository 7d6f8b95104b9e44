"""What several ``smime-milter`` commands share: the ``--config``/``--store``
options of the commands that work on the store, ISO 8601 moments, the
clock the hidden ``--now`` fixes, and how an at-delivery change is told."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from smime_milter.config import DEFAULT_CONFIG, Config, load_config
from smime_milter.revalidate import AtDeliveryChange

#: What ``add_subparsers`` returns: each command module adds its parsers to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parse_moment(text: str) -> datetime:
    """argparse ``type`` for a moment: ISO 8601, UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config``, defaulting to the daemon's file when it exists."""
    parser.add_argument("--config", type=Path, help=f"configuration file (default: "
                        f"{DEFAULT_CONFIG} when it exists, else the built-in defaults)")


def service_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--store``, for the commands that work on the store."""
    config_argument(parser)
    parser.add_argument("--store", type=Path, metavar="DIR",
                        help="LMDB store directory (default: the configured store.path)")


def service_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (or the default file when it
    exists), with ``--store`` on top."""
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    config = load_config(path) if path else Config()
    if args.store:
        config = replace(config, store=replace(config.store, path=args.store))
    return config


def clock(args: argparse.Namespace) -> Callable[[], datetime]:
    """The wall clock, or the fixed moment of the hidden ``--now`` (tests)."""
    if args.now is None:
        return lambda: datetime.now(UTC)
    return lambda: args.now


def _status_text(status: object) -> str:
    return "null" if status is None else str(status)


def at_delivery_line(change: AtDeliveryChange) -> str:
    """One line for a record whose smimeStatusAtDelivery the current anchors
    changed (``trust add`` and ``ingest`` print the same)."""
    line = (f"record {change.record_id}: smimeStatusAtDelivery "
            f"{_status_text(change.old.status)} -> {_status_text(change.new.status)}")
    if change.new.errors:
        line += f" ({'; '.join(change.new.errors)})"
    return line

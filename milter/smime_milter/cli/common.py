"""What several ``smime-milter`` commands share: how a command presents
itself in ``--help``, the ``--config``/``--store`` options of the commands
that work on the store, ISO 8601 moments, the commands' clock, and how an
at-delivery change is told."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from smime_milter.config import DEFAULT_CONFIG, Config, load_config
from smime_milter.revalidate import AtDeliveryChange

#: What ``add_subparsers`` returns: each command module adds its parsers to it.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


#: Width of the wrapped descriptions (argparse's own text wraps near it too).
HELP_WIDTH = 78


def describe(text: str) -> str:
    """Paragraphs (separated by a blank line) wrapped for ``--help``: the
    raw formatter keeps them, so an example's layout stays as written."""
    return "\n\n".join(textwrap.fill(" ".join(paragraph.split()), HELP_WIDTH)
                       for paragraph in text.split("\n\n"))


def examples(*lines: str) -> str:
    """The ``example:`` block that ends a command's ``--help``."""
    head = "example:" if len(lines) == 1 else "examples:"
    return "\n".join([head, *(f"  {line}" for line in lines)])


def add_command(commands: Commands, name: str, *, summary: str, description: str,
                example: tuple[str, ...]) -> argparse.ArgumentParser:
    """A command whose ``--help`` says what it does for the admin and how to
    run it: ``summary`` in the list of commands, then ``description`` and
    ``example`` (whole command lines) in its own help."""
    return commands.add_parser(
        name, help=summary, description=describe(description), epilog=examples(*example),
        formatter_class=argparse.RawDescriptionHelpFormatter)


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


def wall_clock() -> datetime:
    return datetime.now(UTC)


def clock(args: argparse.Namespace) -> Callable[[], datetime]:
    """The command's clock: the wall clock, unless a test gave ``main`` another.

    There is deliberately no command-line option for it: statuses computed
    at a pretend moment and written to a live store stayed there (issue 16).
    """
    chosen: Callable[[], datetime] | None = getattr(args, "clock", None)
    return chosen or wall_clock


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

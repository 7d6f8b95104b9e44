"""The ``smime-milter`` command: argument parsing and output formatting only
(the work is done by the layers below)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime

from cryptography.utils import CryptographyDeprecationWarning

from smime_milter import __version__
from smime_milter.cli.common import describe, examples, service_arguments, service_config
from smime_milter.cli.daemon import add_daemon_parser
from smime_milter.cli.ingest import add_ingest_parser
from smime_milter.cli.jmap import add_jmap_parsers
from smime_milter.cli.mixer import add_mixer_parser
from smime_milter.cli.release import add_release_parsers
from smime_milter.cli.status import add_status_parser
from smime_milter.cli.trust import add_trust_parser
from smime_milter.cli.verify import add_verify_parsers
from smime_milter.errors import SmimeMilterError

#: What the top-level ``--help`` tells the admin (the module docstring is for
#: developers and must not show up there).
DESCRIPTION = """\
S/MIME verification milter with an RFC 9219 status store. The daemon (run)
verifies the S/MIME signatures of mail as Postfix or Sendmail delivers it,
stamps each message with its status and records it in a store that the JMAP
service (jmap) serves to mail clients. The other commands check a
configuration, verify message files by hand, manage the trust anchors, and
keep the store up to date.

Each command has its own help: smime-milter COMMAND --help."""


def build_parser() -> argparse.ArgumentParser:
    """Every command, each from its module; the order is the order of ``--help``."""
    parser = argparse.ArgumentParser(
        prog="smime-milter", description=describe(DESCRIPTION),
        epilog=examples("smime-milter check-config",
                        "smime-milter verify --config /etc/smime-milter/smime-milter.toml "
                        "message.eml",
                        "smime-milter trust list"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")
    add_verify_parsers(commands)
    add_daemon_parser(commands)
    add_status_parser(commands)
    add_jmap_parsers(commands)
    add_ingest_parser(commands)
    add_trust_parser(commands)
    add_mixer_parser(commands)
    add_release_parsers(commands, service_arguments, service_config)
    return parser


def main(argv: Sequence[str] | None = None, *,
         clock: Callable[[], datetime] | None = None) -> int:
    """Run one command. An expected failure (a SmimeMilterError: bad input or
    configuration, a store or MTA that refuses) is one line (a bad
    configuration: one per problem) and exit status 1; anything else is a bug
    and keeps its traceback.

    ``clock`` is a hook for tests that move time (an expiry, a revocation,
    retention) over a store of their own; it is no command-line option, so
    a pretend moment cannot reach a live store."""
    args = build_parser().parse_args(argv)
    args.clock = clock
    try:
        with warnings.catch_warnings():
            _quiet_library_warnings()
            return int(args.handler(args))
    except SmimeMilterError as exc:
        # A configuration with several errors names them one per line.
        for line in str(exc).splitlines() or [""]:
            print(f"smime-milter: {line}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``smime-milter trust list | head``): stop
        # quietly, as a shell tool does, and keep the interpreter's final
        # flush of stdout from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _quiet_library_warnings() -> None:
    """Keep exactly the warnings out of the admin's console that are no
    instruction to them. cryptography warns on every certificate with a
    serial number that is not positive (RFC 5280 forbids it): several of
    Mozilla's e-mail roots have one, so ``trust list`` printed a Python
    warning per such root and line of code. Nothing on the console can
    change those roots; an admin's own such anchor is named in ``trust
    list``'s warnings instead. Every other warning still shows."""
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning,
        message=r"Parsed a serial number which wasn't positive")


if __name__ == "__main__":
    sys.exit(main())

"""``smime-milter run``: the milter daemon, configured by file and options."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from smime_milter.bootstrap import build_runtime
from smime_milter.cli.common import Commands, add_command, config_argument, service_config
from smime_milter.config import Config, check_socket
from smime_milter.mta import run


def add_daemon_parser(commands: Commands) -> None:
    """Add ``run``."""
    daemon = add_command(
        commands, "run", summary="run the milter daemon",
        description="Run the milter until SIGTERM: Postfix or Sendmail hands it every "
        "message; it verifies the S/MIME signatures as of the moment the message "
        "arrived, stamps the message (Authentication-Results, SMIME-Status-At-Delivery), "
        "applies the [policy] action and records the status in the store. The options "
        "override the configuration file. Started as root, it opens the socket and then "
        "becomes the service user for good. SIGUSR1 (systemctl reload) reads the "
        "configuration and the trust anchors again.\n\n"
        "The Debian package runs it as the smime-milter systemd service; run it by hand "
        "for a try or from a source checkout.",
        example=("smime-milter run --socket unix:/tmp/smime-milter.sock "
                 "--store /tmp/smime-milter-store",),
    )
    config_argument(daemon)
    daemon.add_argument("--socket", type=_socket_argument,
                        help="libmilter socket: unix:/path or inet:port@host")
    daemon.add_argument("--store", type=Path, metavar="DIR", help="LMDB store directory")
    daemon.add_argument("--trust-anchors", type=Path, action="append", default=[],
                        metavar="PATH", help="trust anchor PEM file or directory (repeatable)")
    daemon.add_argument("--workers", type=int, help="milter processes (0: one per CPU)")
    daemon.add_argument("--user", metavar="NAME",
                        help="started as root, become this user (default: milter.user, "
                        "else smime-milter; only 'root' written out keeps root)")
    daemon.set_defaults(handler=run_daemon)


def _socket_argument(text: str) -> str:
    try:
        return check_socket(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run_config(args: argparse.Namespace) -> Config:
    """The file (if any) with the command line's overrides on top."""
    config = service_config(args)
    milter = config.milter
    if args.socket:
        milter = replace(milter, socket=args.socket)
    if args.workers is not None:
        milter = replace(milter, workers=args.workers)
    if args.user:
        milter = replace(milter, user=args.user)
    trust = config.trust
    if args.trust_anchors:
        trust = replace(trust, anchors=tuple(args.trust_anchors))
    return replace(config, milter=milter, trust=trust)


def run_daemon(args: argparse.Namespace) -> int:
    return run(_run_config(args), lambda: _run_config(args), build_runtime)

"""``smime-milter status``: one line per health check, or a JSON object;
exit status 0 when no check failed, 1 otherwise (for monitoring and scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from smime_milter.bootstrap import load_trust_with_sources
from smime_milter.cli.common import Commands, add_command, config_argument, service_config
from smime_milter.mta import check_health


def add_status_parser(commands: Commands) -> None:
    """Add ``status``."""
    status = add_command(
        commands, "status", summary="check the running milter: socket, store, trust anchors, "
        "CRLs, last message, workers; exit 1 when a check fails",
        description="Check, as the monitoring system would, that the milter is serving: its "
        "socket answers, the store opens and the service user can write it, the trust "
        "anchors load, no configured CRL is past its nextUpdate, and (with [metrics] listen) "
        "its verification workers are alive. One line per check (ok, FAIL or unknown); exit "
        "status 0 when every check passed, 1 when one failed.",
        example=("smime-milter status", "smime-milter status --json --max-idle 30"),
    )
    config_argument(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.add_argument("--max-idle", type=_minutes, metavar="MINUTES",
                        help="fail when no message was recorded for this long "
                        "(a busy server's alarm)")
    status.set_defaults(handler=run_status, store=None)


def _minutes(text: str) -> timedelta:
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of minutes: {text!r}")
    return timedelta(minutes=minutes)


def run_status(args: argparse.Namespace) -> int:
    health = check_health(service_config(args), load_trust_with_sources, datetime.now(UTC),
                          args.max_idle)
    if args.json:
        json.dump(health.as_json(), sys.stdout, indent=2)
        print()
    else:
        for line in health.lines():
            print(line)
    return 0 if health.healthy else 1

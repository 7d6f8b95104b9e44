"""``smime-milter jmap``, ``refresh`` and ``prune``: the JMAP API over the
store, and the periodic upkeep of that store.

They read a store the milter made and never create one: a mistyped
``--store`` is an error, not an empty store that answers ``notFound``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from smime_milter.bootstrap import build_refresher
from smime_milter.cli.common import (
    Commands,
    add_command,
    clock,
    service_arguments,
    service_config,
)
from smime_milter.config import ConfigError
from smime_milter.jmap import JmapProtocol, RequestError, SmimeJmap, listen_argument, serve
from smime_milter.store import Store, utc_date

#: ``--listen`` given without a value: use ``[jmap] listen`` (not a str, so
#: argparse does not pass it through the option's ``type``).
_CONFIGURED = True


def add_jmap_parsers(commands: Commands) -> None:
    """Add ``jmap``, ``refresh`` and ``prune``."""
    jmap = _store_command(
        commands, "jmap", run_jmap, "answer a JMAP Request (Email/get, Email/query, "
        "Email/changes) from the store: JSON on stdin, the Response on stdout; or, with "
        "--listen, serve the JMAP API over HTTP on a unix socket",
        description="Give mail clients the S/MIME status the milter recorded (RFC 9219: "
        "smimeStatus, smimeStatusAtDelivery, smimeErrors, smimeVerifiedAt). Without "
        "--listen, one JMAP Request is read as JSON from stdin and its Response printed "
        "(for a JMAP server that runs a command per request, and for trying it by hand); "
        "with --listen the API is served over HTTP on a unix socket until SIGTERM (the "
        "smime-milter-jmap systemd service). A status older than jmap.cache_lifetime is "
        "re-validated when read.",
        example=("smime-milter jmap --listen unix:/run/smime-milter/jmap.sock",
                 "smime-milter jmap --read-only < request.json > response.json"),
    )
    jmap.add_argument("--listen", type=listen_argument, metavar="unix:/PATH", nargs="?",
                      const=_CONFIGURED,
                      help="serve HTTP (POST /jmap/api, GET /jmap/session) on this unix "
                      "socket until SIGTERM; without a value, on the configured jmap.listen. "
                      "Without --listen one Request is read from stdin")
    jmap.add_argument("--read-only", action="store_true",
                      help="open the store read-only: re-validated statuses are not written "
                      "back, so Email/changes does not see them")
    _store_command(
        commands, "refresh", run_refresh, "re-validate every stored status older than "
        "jmap.cache_lifetime or than the last trust-anchor change, or verified in the "
        "future (a clock that was ahead); run it periodically",
        description="Re-validate, as of now, every stored smimeStatus that is older than "
        "jmap.cache_lifetime, was computed before the last trust-anchor change, or claims "
        "to have been verified in the future (a clock that was ahead), so that clients see "
        "revocations, expiries and anchor changes without waiting for a read to do it. Run "
        "it periodically (the Debian package's timer does); it prints how many records it "
        "re-validated.",
        example=("smime-milter refresh",),
    )
    prune = _store_command(
        commands, "prune", run_prune, "delete the records of messages received more than "
        "store.retention_days (or --older-than) days ago; Email/changes reports them destroyed",
        description="Delete the store records of messages received more than "
        "store.retention_days days ago (or --older-than DAYS), to keep the store as "
        "small as your retention policy allows; Email/changes reports them as destroyed. "
        "With retention_days = 0 (the default) and no --older-than nothing is deleted. "
        "Try --dry-run first.",
        example=("smime-milter prune --older-than 400 --dry-run",),
    )
    prune.add_argument("--older-than", type=_days_argument, metavar="DAYS",
                       help="instead of store.retention_days")
    prune.add_argument("--dry-run", action="store_true",
                       help="count the records that would be deleted, delete nothing")


def _store_command(commands: Commands, name: str, handler: Callable[[argparse.Namespace], int],
                   text: str, *, description: str,
                   example: tuple[str, ...]) -> argparse.ArgumentParser:
    """A command over the store: ``--config`` and ``--store``."""
    command = add_command(commands, name, summary=text,
                          description=f"{description} The store must exist (the milter "
                          "creates it): a missing one is an error (exit status 1).",
                          example=example)
    service_arguments(command)
    command.set_defaults(handler=handler)
    return command


def run_jmap(args: argparse.Namespace) -> int:
    config = service_config(args)
    listen = config.jmap.listen if args.listen is _CONFIGURED else args.listen
    if args.listen is _CONFIGURED and not listen:
        raise ConfigError("--listen without a value needs [jmap] listen in the configuration")
    with Store.open(config.store.path, readonly=args.read_only, create=False,
                    map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        if listen:
            return serve(config, store, listen, build_refresher=build_refresher,
                         readonly=args.read_only, clock=clock(args))
        refresher = build_refresher(config, store, readonly=args.read_only, clock=clock(args))
        protocol = JmapProtocol(SmimeJmap(refresher))
        try:
            request = json.loads(sys.stdin.buffer.read())
        except (ValueError, UnicodeDecodeError) as exc:
            error = RequestError("notJSON", f"the request is not JSON: {exc}")
            print(json.dumps(error.problem))
            return 1
        try:
            response: dict[str, Any] = protocol.handle(request)
        except RequestError as exc:
            print(json.dumps(exc.problem))
            return 1
        print(json.dumps(response, ensure_ascii=False))
    return 0


def run_refresh(args: argparse.Namespace) -> int:
    config = service_config(args)
    with Store.open(config.store.path, create=False, map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        refresher = build_refresher(config, store, clock=clock(args))
        count = refresher.refresh_due()
    print(f"re-validated {count} record(s)")
    return 0


def _days_argument(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not 0 < days <= 36500:
        raise argparse.ArgumentTypeError(f"not a number of days (0 < DAYS <= 36500): {text!r}")
    return days


def run_prune(args: argparse.Namespace) -> int:
    config = service_config(args)
    days = args.older_than or config.store.retention_days
    if not days:
        print("store.retention_days is 0 (keep every record) and no --older-than: "
              "nothing pruned")
        return 0
    cutoff = clock(args)() - timedelta(days=days)
    with Store.open(config.store.path, readonly=args.dry_run, create=False,
                    map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        if args.dry_run:
            count = sum(1 for _ in store.received_before(cutoff))
            print(f"would delete {count} record(s) received before {utc_date(cutoff)}")
        else:
            count = store.prune(cutoff)
            print(f"deleted {count} record(s) received before {utc_date(cutoff)}")
    return 0

"""``smime-milter ingest``: fill the store from delivered messages that carry
this milter's stamps."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from smime_milter.bootstrap import build_revalidator, build_verifier, load_trust
from smime_milter.cli.common import (
    Commands,
    add_command,
    at_delivery_line,
    clock,
    service_arguments,
    service_config,
)
from smime_milter.config import ConfigError
from smime_milter.ingest import IngestResult, ingest_message, message_files
from smime_milter.revalidate import AtDeliveryChange, reassess_records
from smime_milter.store import Store

#: Created records re-assessed together: the stamp tells what was decided with
#: the anchors of that day, and what `trust add` would have changed since
#: changes here too.
_BATCH = 512


def add_ingest_parser(commands: Commands) -> None:
    """Add ``ingest``."""
    ingest = add_command(
        commands, "ingest", summary="fill the store (creating it if need be) from delivered "
        "messages stamped by this milter",
        example=("smime-milter ingest --authserv-id mx.example.org /var/mail/alice/Maildir",),
        description="Create or refresh store records from delivered messages (after the "
        "store was lost or must be rebuilt, or on a JMAP host fed from the mail store); "
        "unlike the other commands over the store it creates the store when it does not "
        "exist, since rebuilding one is what it is for. "
        "Only the milter's own stamps are trusted: an Authentication-Results field with "
        "the configured authserv-id and one SMIME-Status-At-Delivery field. Directories "
        "are walked as Maildirs (new/, cur/ and folders) or as directories of message "
        "files. Exit status 0 when every file could be read, 1 otherwise: messages "
        "skipped for lack of a trusted stamp (sent mail, mail from before the milter, "
        "forgeries) are not failures. A created record whose stamp says the signature "
        "failed at delivery is evaluated again as of its delivery with the current trust "
        "anchors, as `trust add` does: a chain an anchor added since then validates turns "
        "it verified.",
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_MAILDIR")
    service_arguments(ingest)
    ingest.add_argument("--authserv-id", type=_authserv_argument, metavar="ID",
                        help="the authserv-id the milter stamps with (default: "
                        "milter.authserv_id; one of the two is required)")
    ingest.add_argument("--json", action="store_true", help="one JSON object per file")
    ingest.set_defaults(handler=run_ingest)


def _authserv_argument(text: str) -> str:
    if not text or any(not "!" <= c <= "~" or c in ';()"\\' for c in text):
        raise argparse.ArgumentTypeError(f"not an authserv-id: {text!r}")
    return text


def _printable_path(path: Path) -> str:
    """A file name as text stdout can take (undecodable bytes become U+FFFD)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _ingest_line(name: str, result: IngestResult) -> str:
    if result.action == "skipped":
        return f"{name}: skipped: {result.reason}"
    return f"{name}: {result.action} {result.record_id}"


def run_ingest(args: argparse.Namespace) -> int:
    config = service_config(args)
    authserv_id = args.authserv_id or config.milter.authserv_id
    if not authserv_id:
        raise ConfigError("ingest trusts only stamps with the milter's authserv-id and does "
                          "not guess it: give --authserv-id or set milter.authserv_id")
    trust = load_trust(config)
    verifier = build_verifier(config, trust=trust)
    now = clock(args)()
    revalidator = build_revalidator(config, trust)
    created: list[str] = []
    changes: list[AtDeliveryChange] = []
    counts = dict.fromkeys(("created", "refreshed", "unchanged", "skipped", "unreadable"), 0)
    with Store.open(config.store.path, map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        for path, problem in message_files(args.paths):
            name = _printable_path(path)
            raw = None
            if problem is None:
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    problem = exc.strerror or str(exc)
            if raw is None:
                counts["unreadable"] += 1
                if args.json:
                    print(json.dumps({"file": name, "action": "unreadable", "record": None,
                                      "reason": problem}, ensure_ascii=False))
                else:
                    print(f"smime-milter: {name}: {problem}", file=sys.stderr)
                continue
            result = ingest_message(raw, authserv_id=authserv_id, verifier=verifier,
                                    store=store, now=now)
            counts[result.action] += 1
            if result.action == "created" and result.record_id is not None:
                created.append(result.record_id)
            if len(created) >= _BATCH:
                changes += reassess_records(store, revalidator, created)
                created = []
            if args.json:
                print(json.dumps({"file": name, "action": result.action,
                                  "record": result.record_id, "reason": result.reason},
                                 ensure_ascii=False))
            else:
                print(_ingest_line(name, result))
        changes += reassess_records(store, revalidator, created)
    for change in changes:
        print(at_delivery_line(change), file=sys.stderr if args.json else sys.stdout)
    print(f"ingest: {sum(counts.values())} file(s): "
          + ", ".join(f"{count} {action}" for action, count in counts.items()),
          file=sys.stderr)
    return 1 if counts["unreadable"] else 0

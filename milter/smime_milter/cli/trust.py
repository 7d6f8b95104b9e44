"""``smime-milter trust add``, ``remove`` and ``list``: the managed trust
anchors of trust.anchor_directory, and what a change means for the store."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from smime_milter.bootstrap import build_revalidator, load_trust, load_trust_with_sources
from smime_milter.cli.common import (
    Commands,
    add_command,
    at_delivery_line,
    service_arguments,
    service_config,
)
from smime_milter.config import Config
from smime_milter.revalidate import apply_anchor_change
from smime_milter.store import Store, utc_date
from smime_milter.trust import AnchorEntry, TrustStore, add_anchors, list_anchors, remove_anchors

_RELOAD_REMINDER = (
    "a running milter and JMAP service use the new trust anchors within 5 seconds "
    "(at once after `systemctl reload smime-milter`, SIGUSR1)"
)


def add_trust_parser(commands: Commands) -> None:
    """Add ``trust`` with its ``add``, ``remove`` and ``list`` subcommands."""
    trust = add_command(
        commands, "trust", summary="manage the trust anchors of trust.anchor_directory",
        description="Decide which certification authorities the milter trusts for "
        "S/MIME: Mozilla's e-mail roots (trust.system_anchors), the files of "
        "trust.anchors, and the managed anchors in trust.anchor_directory, which these "
        "commands add and remove. A running milter and JMAP service pick a change up "
        "within 5 seconds.",
        example=("smime-milter trust list", "smime-milter trust add our-ca.pem"),
    )
    trust_commands = trust.add_subparsers(dest="trust_command", required=True,
                                          metavar="COMMAND", title="commands")
    trust_add = add_command(
        trust_commands, "add", summary="trust the certificates of PEM/DER files; re-assesses "
        "smimeStatusAtDelivery of stored records whose chain failed",
        description="Trust the CA certificates of PEM or DER files as managed anchors: "
        "each is copied into trust.anchor_directory as <sha256>.pem (a certificate that "
        "is no self-signed CA is added with a warning). Stored statuses verified before "
        "become stale and are re-validated when read, and smimeStatusAtDelivery of stored "
        "messages whose chain failed is re-assessed, as RFC 9219 allows for an added "
        "anchor. Nothing changes when a file cannot be read.",
        example=("smime-milter trust add /tmp/our-ca.pem",),
    )
    trust_add.add_argument("files", nargs="+", type=Path, metavar="PEM")
    service_arguments(trust_add)
    trust_add.set_defaults(handler=run_trust_add)
    trust_remove = add_command(
        trust_commands, "remove", summary="stop trusting managed anchors, named by "
        "certificate file, SHA-256 fingerprint or file name in the anchor directory",
        description="Stop trusting managed anchors (those of trust.anchor_directory), "
        "each named by a certificate file, its SHA-256 fingerprint (as trust list prints "
        "it) or its file name in the anchor directory. Stored statuses become stale and "
        "are re-validated when read; smimeStatusAtDelivery stays as it was (RFC 9219). "
        "Anchors of trust.anchors and the system anchors are changed in the "
        "configuration instead.",
        example=("smime-milter trust remove /tmp/our-ca.pem",),
    )
    trust_remove.add_argument("anchors", nargs="+", metavar="WHAT")
    service_arguments(trust_remove)
    trust_remove.set_defaults(handler=run_trust_remove)
    trust_list = add_command(
        trust_commands, "list", summary="list the trust anchors: the system ones (Mozilla's "
        "e-mail roots), the configured and the managed ones",
        description="List every trust anchor the milter uses, with its SHA-256 "
        "fingerprint, subject, expiry, where it comes from (system: Mozilla's e-mail "
        "roots, trust.anchors, or managed) and warnings such as an expired or non-CA "
        "certificate. --json prints the same as a JSON array for scripts.",
        example=("smime-milter trust list --managed", "smime-milter trust list --json"),
    )
    trust_list.add_argument("--json", action="store_true", help="a JSON array of anchors")
    trust_list.add_argument("--managed", action="store_true",
                            help="only the managed anchors (trust.anchor_directory)")
    service_arguments(trust_list)
    trust_list.set_defaults(handler=run_trust_list)


def _anchor_text(entry: AnchorEntry) -> str:
    return f"{entry.subject} (SHA-256 {entry.fingerprint})"


def _print_warnings(entry: AnchorEntry) -> None:
    for warning in entry.warnings:
        print(f"  warning: {warning}")


def _directory_failure(config: Config, exc: OSError) -> int:
    """Report a file of the anchor directory that could not be written or removed."""
    print(f"smime-milter: {exc.filename or config.trust.anchor_directory}: "
          f"{exc.strerror or exc}", file=sys.stderr)
    return 1


def _update_store(config: Config, trust: TrustStore, *, added: bool) -> None:
    """Records the new anchor set in the store (current statuses computed
    with the old one become stale); after an addition also re-assesses
    smimeStatusAtDelivery, which RFC 9219 §4.1 lets only added anchors change."""
    path = config.store.path
    # A writable open would create the store; the milter owns its creation.
    if not (path / "data.mdb").is_file():
        print(f"store {path} does not exist yet: no stored status to update")
        return
    with Store.open(path, create=False, map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        change = apply_anchor_change(store, build_revalidator(config, trust), added=added,
                                     now=datetime.now(UTC))
    if change.epoch_started:
        print(f"store {path}: smimeStatus values verified before now are stale and get "
              "re-validated when read (or by `smime-milter refresh`)")
    if not added:
        print("smimeStatusAtDelivery is left unchanged: removing an anchor does not "
              "change the status at delivery (RFC 9219 §4.1)")
        return
    for line in change.at_delivery:
        print(at_delivery_line(line))
    print(f"smimeStatusAtDelivery changed for {len(change.at_delivery)} record(s)")


def run_trust_add(args: argparse.Namespace) -> int:
    config = service_config(args)
    before = load_trust(config)  # a broken configuration fails before anything changes
    try:
        entries = add_anchors(config.trust.anchor_directory, args.files)
    except OSError as exc:
        return _directory_failure(config, exc)
    for entry in entries:
        if entry.already_present:
            print(f"already present: {_anchor_text(entry)} in {entry.path}")
        else:
            print(f"added {_anchor_text(entry)} as {entry.path}")
        _print_warnings(entry)
    if all(entry.already_present for entry in entries):
        print("nothing changed")
        return 0
    trust = load_trust(config)
    if trust.generation == before.generation:
        print("the trust anchor set is unchanged (already trusted through trust.anchors "
              "or the system anchors)")
        return 0
    _update_store(config, trust, added=True)
    print(_RELOAD_REMINDER)
    return 0


def run_trust_remove(args: argparse.Namespace) -> int:
    config = service_config(args)
    # A broken configuration fails before anything changes.
    system = load_trust_with_sources(config).sources.system
    try:
        entries = remove_anchors(config.trust.anchor_directory, args.anchors,
                                 configured=config.trust.anchors, system=system)
    except OSError as exc:
        return _directory_failure(config, exc)
    for entry in entries:
        print(f"removed {_anchor_text(entry)}: deleted {entry.path}")
        _print_warnings(entry)
    _update_store(config, load_trust(config), added=False)
    print(_RELOAD_REMINDER)
    return 0


def run_trust_list(args: argparse.Namespace) -> int:
    entries = list_anchors(service_config(args).trust, managed_only=args.managed)
    if args.json:
        print(json.dumps([
            {
                "sha256": entry.sha256,
                "subject": entry.subject,
                "notAfter": utc_date(entry.not_after),
                "managed": entry.managed,
                "system": entry.system,
                "source": str(entry.source),
                "file": str(entry.path),
                "warnings": list(entry.warnings),
            }
            for entry in entries
        ], ensure_ascii=False, indent=2))
        return 0
    for entry in entries:
        if entry.system:
            where = "system: Mozilla's root program, trusted for e-mail"
        elif entry.managed:
            where = "managed"
        elif entry.path == entry.source:
            where = "trust.anchors"
        else:  # a file of a configured directory
            where = f"trust.anchors {entry.source}"
        print(entry.fingerprint)
        print(f"  subject: {entry.subject}")
        print(f"  notAfter: {utc_date(entry.not_after)}")
        print(f"  source: {where} ({entry.path})")
        _print_warnings(entry)
    print(f"{len(entries)} trust anchor(s)")
    return 0

"""The ``smime-milter`` command: argument parsing and output formatting only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smime_milter import __version__
from smime_milter.bootstrap import (
    build_advanced,
    build_refresher,
    build_revalidator,
    build_runtime,
    build_verifier,
    load_trust,
)
from smime_milter.cli.mixer import add_mixer_parser
from smime_milter.cli.release import add_release_parsers
from smime_milter.cms import AlgorithmPolicy
from smime_milter.config import DEFAULT_CONFIG, Config, ConfigError, check_socket, load_config
from smime_milter.ingest import IngestResult, ingest_message, message_files
from smime_milter.jmap import JmapProtocol, RequestError, SmimeJmap, listen_argument, serve
from smime_milter.model import RevocationMode, Verdict
from smime_milter.mta import StartupError, VerifyFailure, run
from smime_milter.revalidate import AtDeliveryChange, apply_anchor_change
from smime_milter.store import Store, StoreError, utc_date
from smime_milter.trust import (
    AnchorEntry,
    TrustConfig,
    TrustStore,
    TrustStoreError,
    add_anchors,
    list_anchors,
    remove_anchors,
)


def parse_moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def verdict_json(name: str, verdict: Verdict, at: datetime) -> dict[str, Any]:
    return {
        "file": name,
        "smimeStatus": verdict.status.value if verdict.status else None,
        "smimeErrors": list(verdict.errors) if verdict.errors is not None else None,
        "smimeVerifiedAt": utc_date(verdict.verified_at),
        "validationTime": utc_date(at),
        "layer": verdict.layer,
        "signedPart": verdict.signed_part,
        "from": verdict.from_address,
        "signers": [
            {
                "email": signer.emails[0] if signer.emails else None,
                "emails": list(signer.emails),
                "subject": signer.subject,
                "issuer": signer.issuer,
                "serial": str(signer.serial) if signer.serial is not None else None,
                "digestAlgorithm": signer.digest_algorithm,
                "signatureAlgorithm": signer.signature_algorithm,
                "signingTime": utc_date(signer.signing_time),
                "signature": "pass" if signer.signature_ok else "fail",
                "chain": "pass" if signer.chain_ok else "fail",
                "fromMatch": signer.from_match,
                "errors": list(signer.errors),
            }
            for signer in verdict.signers
        ],
        "notes": list(verdict.notes),
    }


def verdict_text(name: str, verdict: Verdict) -> str:
    status = verdict.status.value if verdict.status else "null (no S/MIME)"
    lines = [f"{name}: {status}"]
    for error in verdict.errors or ():
        lines.append(f"  error: {error}")
    for signer in verdict.signers:
        who = ", ".join(signer.emails) or signer.subject or "unknown signer"
        lines.append(
            f"  signer {who}: signature {'pass' if signer.signature_ok else 'fail'}, "
            f"chain {'pass' if signer.chain_ok else 'fail'}, "
            f"From {'matches' if signer.from_match else 'does not match'}"
        )
    for note in verdict.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smime-milter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser(
        "verify", help="print the RFC 9219 S/MIME status of message files"
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument("--json", action="store_true", help="one JSON object per file")
    verify.add_argument("--at", type=parse_moment, help="validate as of this ISO 8601 moment")
    verify.add_argument("--config", type=Path, help=f"configuration file (default: none; "
                        f"the daemon uses {DEFAULT_CONFIG})")
    verify.add_argument("--trust-anchors", type=Path, action="append", default=[],
                        metavar="PATH", help="trust anchor PEM file or directory (repeatable)")
    verify.add_argument("--intermediates", type=Path, action="append", default=[],
                        metavar="PATH", help="extra intermediate certificates (repeatable)")
    verify.add_argument("--crl", type=Path, action="append", default=[], metavar="PATH",
                        help="CRL file or directory (repeatable)")
    verify.add_argument("--revocation", choices=[m.value for m in RevocationMode])
    verify.add_argument("--allow-sha1", action="store_true", default=None,
                        help="accept SHA-1 signatures (legacy mail)")
    verify.add_argument("--decrypt-key", type=Path, action="append", default=[],
                        metavar="PEM", help="PEM with a recipient's private key and certificate")

    check = commands.add_parser(
        "check-config", help="validate a configuration file and load what it names"
    )
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)

    run = commands.add_parser("run", help="run the milter daemon")
    run.add_argument("--config", type=Path, help=f"configuration file (default: {DEFAULT_CONFIG} "
                     "when it exists, else the built-in defaults)")
    run.add_argument("--socket", type=_socket_argument,
                     help="libmilter socket: unix:/path or inet:port@host")
    run.add_argument("--store", type=Path, metavar="DIR", help="LMDB store directory")
    run.add_argument("--trust-anchors", type=Path, action="append", default=[],
                     metavar="PATH", help="trust anchor PEM file or directory (repeatable)")
    run.add_argument("--workers", type=int, help="verification processes (0: one per CPU)")
    run.set_defaults(handler=_run_daemon)

    jmap = commands.add_parser(
        "jmap", help="answer a JMAP Request (Email/get, Email/query, Email/changes) from the "
        "store: JSON on stdin, the Response on stdout; or, with --listen, serve the JMAP "
        "API over HTTP on a unix socket",
    )
    _service_arguments(jmap)
    jmap.add_argument("--listen", type=listen_argument, metavar="unix:/PATH", nargs="?",
                      const=_CONFIGURED,
                      help="serve HTTP (POST /jmap/api, GET /jmap/session) on this unix "
                      "socket until SIGTERM; without a value, on the configured jmap.listen. "
                      "Without --listen one Request is read from stdin")
    jmap.add_argument("--read-only", action="store_true",
                      help="open the store read-only: re-validated statuses are not written "
                      "back, so Email/changes does not see them")
    jmap.add_argument("--now", type=parse_moment, help=argparse.SUPPRESS)
    jmap.set_defaults(handler=_run_jmap)

    refresh = commands.add_parser(
        "refresh", help="re-validate every stored status older than jmap.cache_lifetime or "
        "than the last trust-anchor change (run it periodically)",
    )
    _service_arguments(refresh)
    refresh.add_argument("--now", type=parse_moment, help=argparse.SUPPRESS)
    refresh.set_defaults(handler=_run_refresh)

    prune = commands.add_parser(
        "prune", help="delete the records of messages received more than store.retention_days "
        "(or --older-than) days ago; Email/changes reports them destroyed",
    )
    _service_arguments(prune)
    prune.add_argument("--older-than", type=_days_argument, metavar="DAYS",
                       help="instead of store.retention_days")
    prune.add_argument("--dry-run", action="store_true",
                       help="count the records that would be deleted, delete nothing")
    prune.add_argument("--now", type=parse_moment, help=argparse.SUPPRESS)
    prune.set_defaults(handler=_run_prune)

    ingest = commands.add_parser(
        "ingest", help="fill the store from delivered messages stamped by this milter",
        description="Create or refresh store records from delivered messages (after the "
        "store was lost or must be rebuilt, or on a JMAP host fed from the mail store). "
        "Only the milter's own stamps are trusted: an Authentication-Results field with "
        "the configured authserv-id and one SMIME-Status-At-Delivery field. Directories "
        "are walked as Maildirs (new/, cur/ and folders) or as directories of message "
        "files. Exit status 0 when every file could be read, 1 otherwise: messages "
        "skipped for lack of a trusted stamp (sent mail, mail from before the milter, "
        "forgeries) are not failures.",
    )
    ingest.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_MAILDIR")
    _service_arguments(ingest)
    ingest.add_argument("--authserv-id", type=_authserv_argument, metavar="ID",
                        help="the authserv-id the milter stamps with (default: "
                        "milter.authserv_id; one of the two is required)")
    ingest.add_argument("--json", action="store_true", help="one JSON object per file")
    ingest.add_argument("--now", type=parse_moment, help=argparse.SUPPRESS)
    ingest.set_defaults(handler=_run_ingest)

    trust = commands.add_parser(
        "trust", help="manage the trust anchors of trust.anchor_directory",
    )
    trust_commands = trust.add_subparsers(dest="trust_command", required=True)
    trust_add = trust_commands.add_parser(
        "add", help="trust the certificates of PEM/DER files; re-assesses "
        "smimeStatusAtDelivery of stored records whose chain failed",
    )
    trust_add.add_argument("files", nargs="+", type=Path, metavar="PEM")
    _service_arguments(trust_add)
    trust_add.set_defaults(handler=_run_trust_add)
    trust_remove = trust_commands.add_parser(
        "remove", help="stop trusting managed anchors, named by certificate file, SHA-256 "
        "fingerprint or file name in the anchor directory",
    )
    trust_remove.add_argument("anchors", nargs="+", metavar="WHAT")
    _service_arguments(trust_remove)
    trust_remove.set_defaults(handler=_run_trust_remove)
    trust_list = trust_commands.add_parser(
        "list", help="list the configured and the managed trust anchors",
    )
    trust_list.add_argument("--json", action="store_true", help="a JSON array of anchors")
    _service_arguments(trust_list)
    trust_list.set_defaults(handler=_run_trust_list)
    add_mixer_parser(commands)
    add_release_parsers(commands, _service_arguments, _service_config)
    verify.set_defaults(handler=_run_verify)
    check.set_defaults(handler=_run_check_config)
    return parser


#: ``--listen`` given without a value: use ``[jmap] listen`` (not a str, so
#: argparse does not pass it through the option's ``type``).
_CONFIGURED = True


def _service_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--store``, for the commands that work on the store."""
    parser.add_argument("--config", type=Path, help=f"configuration file (default: "
                        f"{DEFAULT_CONFIG} when it exists, else the built-in defaults)")
    parser.add_argument("--store", type=Path, metavar="DIR",
                        help="LMDB store directory (default: the configured store.path)")


def _service_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (or the default file when it
    exists), with ``--store`` on top."""
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    config = load_config(path) if path else Config()
    if args.store:
        config = replace(config, store=replace(config.store, path=args.store))
    return config


def _socket_argument(text: str) -> str:
    try:
        return check_socket(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run_config(args: argparse.Namespace) -> Config:
    """The file (if any) with the command line's overrides on top."""
    config = _service_config(args)
    milter = config.milter
    if args.socket:
        milter = replace(milter, socket=args.socket)
    if args.workers is not None:
        milter = replace(milter, workers=args.workers)
    trust = config.trust
    if args.trust_anchors:
        trust = replace(trust, anchors=tuple(args.trust_anchors))
    return replace(config, milter=milter, trust=trust)


def _run_daemon(args: argparse.Namespace) -> int:
    return run(_run_config(args), lambda: _run_config(args), build_runtime)


def _verify_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
    trust = config.trust
    if args.trust_anchors or args.intermediates or args.crl:
        trust = TrustConfig(
            anchors=tuple(args.trust_anchors) or trust.anchors,
            intermediates=trust.intermediates + tuple(args.intermediates),
            crls=trust.crls + tuple(args.crl),
        )
    policy = config.verify
    if args.revocation:
        policy = replace(policy, revocation=RevocationMode(args.revocation))
    if args.allow_sha1:
        policy = replace(policy, algorithms=AlgorithmPolicy(
            allow_sha1=True, min_rsa_bits=policy.algorithms.min_rsa_bits))
    return replace(config, trust=trust, verify=policy)


def _run_verify(args: argparse.Namespace) -> int:
    config = _verify_config(args)
    verifier = build_verifier(config, args.decrypt_key)
    status = 0
    for path in args.files:
        try:
            message = path.read_bytes()
        except OSError as exc:
            print(f"smime-milter: {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        at = args.at or verifier.clock()
        verdict = verifier.verify(message, at=at)
        if args.json:
            print(json.dumps(verdict_json(str(path), verdict, at), ensure_ascii=False))
        else:
            print(verdict_text(str(path), verdict))
    return status


def _clock(args: argparse.Namespace) -> Callable[[], datetime]:
    """The wall clock, or the fixed moment of the hidden ``--now`` (tests)."""
    if args.now is None:
        return lambda: datetime.now(UTC)
    return lambda: args.now


def _run_jmap(args: argparse.Namespace) -> int:
    config = _service_config(args)
    listen = config.jmap.listen if args.listen is _CONFIGURED else args.listen
    if args.listen is _CONFIGURED and not listen:
        raise ConfigError("--listen without a value needs [jmap] listen in the configuration")
    with Store.open(config.store.path, readonly=args.read_only,
                    map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        if listen:
            return serve(config, store, listen, build_refresher=build_refresher,
                         readonly=args.read_only, clock=_clock(args))
        refresher = build_refresher(config, store, readonly=args.read_only, clock=_clock(args))
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


def _run_refresh(args: argparse.Namespace) -> int:
    config = _service_config(args)
    with Store.open(config.store.path, map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        refresher = build_refresher(config, store, clock=_clock(args))
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


def _run_prune(args: argparse.Namespace) -> int:
    config = _service_config(args)
    days = args.older_than or config.store.retention_days
    if not days:
        print("store.retention_days is 0 (keep every record) and no --older-than: "
              "nothing pruned")
        return 0
    cutoff = _clock(args)() - timedelta(days=days)
    with Store.open(config.store.path, readonly=args.dry_run, map_size=config.store.map_size,
                    max_map_size=config.store.max_map_size) as store:
        if args.dry_run:
            count = sum(1 for _ in store.received_before(cutoff))
            print(f"would delete {count} record(s) received before {utc_date(cutoff)}")
        else:
            count = store.prune(cutoff)
            print(f"deleted {count} record(s) received before {utc_date(cutoff)}")
    return 0


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


def _run_ingest(args: argparse.Namespace) -> int:
    config = _service_config(args)
    authserv_id = args.authserv_id or config.milter.authserv_id
    if not authserv_id:
        raise ConfigError("ingest trusts only stamps with the milter's authserv-id and does "
                          "not guess it: give --authserv-id or set milter.authserv_id")
    verifier = build_verifier(config)
    now = args.now or datetime.now(UTC)
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
            if args.json:
                print(json.dumps({"file": name, "action": result.action,
                                  "record": result.record_id, "reason": result.reason},
                                 ensure_ascii=False))
            else:
                print(_ingest_line(name, result))
    print(f"ingest: {sum(counts.values())} file(s): "
          + ", ".join(f"{count} {action}" for action, count in counts.items()),
          file=sys.stderr)
    return 1 if counts["unreadable"] else 0


_RELOAD_REMINDER = (
    "a running milter and JMAP service use the new trust anchors within 5 seconds "
    "(at once after `systemctl reload smime-milter`, SIGUSR1)"
)


def _anchor_text(entry: AnchorEntry) -> str:
    return f"{entry.subject} (SHA-256 {entry.fingerprint})"


def _print_warnings(entry: AnchorEntry) -> None:
    for warning in entry.warnings:
        print(f"  warning: {warning}")


def _status_text(status: object) -> str:
    return "null" if status is None else str(status)


def _at_delivery_line(change: AtDeliveryChange) -> str:
    line = (f"record {change.record_id}: smimeStatusAtDelivery "
            f"{_status_text(change.old.status)} -> {_status_text(change.new.status)}")
    if change.new.errors:
        line += f" ({'; '.join(change.new.errors)})"
    return line


def _update_store(config: Config, trust: TrustStore, *, added: bool) -> None:
    """Records the new anchor set in the store (current statuses computed
    with the old one become stale); after an addition also re-assesses
    smimeStatusAtDelivery, which RFC 9219 §4.1 lets only added anchors change."""
    path = config.store.path
    # A writable open would create the store; the milter owns its creation.
    if not (path / "data.mdb").is_file():
        print(f"store {path} does not exist yet: no stored status to update")
        return
    with Store.open(path, map_size=config.store.map_size,
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
        print(_at_delivery_line(line))
    print(f"smimeStatusAtDelivery changed for {len(change.at_delivery)} record(s)")


def _run_trust_add(args: argparse.Namespace) -> int:
    config = _service_config(args)
    before = load_trust(config)  # a broken configuration fails before anything changes
    try:
        entries = add_anchors(config.trust.anchor_directory, args.files)
    except OSError as exc:
        print(f"smime-milter: {exc.filename or config.trust.anchor_directory}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
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
        print("the trust anchor set is unchanged (already trusted through trust.anchors)")
        return 0
    _update_store(config, trust, added=True)
    print(_RELOAD_REMINDER)
    return 0


def _run_trust_remove(args: argparse.Namespace) -> int:
    config = _service_config(args)
    load_trust(config)  # a broken configuration fails before anything changes
    try:
        entries = remove_anchors(config.trust.anchor_directory, args.anchors,
                                 configured=config.trust.anchors)
    except OSError as exc:
        print(f"smime-milter: {exc.filename or config.trust.anchor_directory}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    for entry in entries:
        print(f"removed {_anchor_text(entry)}: deleted {entry.path}")
        _print_warnings(entry)
    _update_store(config, load_trust(config), added=False)
    print(_RELOAD_REMINDER)
    return 0


def _run_trust_list(args: argparse.Namespace) -> int:
    entries = list_anchors(_service_config(args).trust)
    if args.json:
        print(json.dumps([
            {
                "sha256": entry.sha256,
                "subject": entry.subject,
                "notAfter": utc_date(entry.not_after),
                "managed": entry.managed,
                "source": str(entry.source),
                "file": str(entry.path),
                "warnings": list(entry.warnings),
            }
            for entry in entries
        ], ensure_ascii=False, indent=2))
        return 0
    for entry in entries:
        if entry.managed:
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


def _run_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    build_verifier(config)
    build_advanced(config)  # key store and address book: refused files are named
    print(f"{args.config}: OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, TrustStoreError, StartupError, StoreError, VerifyFailure,
            ValueError) as exc:
        print(f"smime-milter: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

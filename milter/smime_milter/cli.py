"""The ``smime-milter`` command: argument parsing and output formatting only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .chain import TrustStoreError
from .cms import AlgorithmPolicy
from .config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    TrustConfig,
    check_socket,
    load_config,
)
from .daemon import StartupError, run
from .model import RevocationMode, Verdict
from .pool import VerifyFailure
from .store import StoreError
from .wiring import build_verifier


def utc_date(moment: datetime | None) -> str | None:
    """JMAP UTCDate (RFC 8620 §1.4): ``2020-07-07T14:15:18Z``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    verify.set_defaults(handler=_run_verify)
    check.set_defaults(handler=_run_check_config)
    return parser


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
    return run(_run_config(args), lambda: _run_config(args))


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


def _run_check_config(args: argparse.Namespace) -> int:
    build_verifier(load_config(args.config))
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

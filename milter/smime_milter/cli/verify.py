"""``smime-milter verify`` and ``smime-milter check-config``: verify message
files as the milter would, and check that a configuration loads."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from smime_milter.bootstrap import build_advanced, build_verifier
from smime_milter.cli.common import Commands, add_command, parse_moment
from smime_milter.cms import AlgorithmPolicy
from smime_milter.config import DEFAULT_CONFIG, Config, load_config, syslog_problem
from smime_milter.model import RevocationMode, Verdict
from smime_milter.store import utc_date


def add_verify_parsers(commands: Commands) -> None:
    """Add ``verify`` and ``check-config``."""
    verify = add_command(
        commands, "verify", summary="print the RFC 9219 S/MIME status of message files",
        description="Verify the S/MIME signatures of message files (RFC 5322, as "
        "delivered or saved from a mail client) as the milter would, and print each "
        "file's RFC 9219 status (signed/verified, signed/failed, ...) with its signers "
        "and the reasons of a failure. Nothing is stamped or stored. Without --config "
        "the built-in defaults apply (Mozilla's e-mail roots); the options add to or "
        "replace what the file says.\n\n"
        "Exit status: 0 when every file was examined, whatever its status; 1 when a "
        "file could not be read (the others are still examined) or the configuration "
        "has errors; 2 for bad arguments.",
        example=("smime-milter verify --trust-anchors /etc/ssl/our-ca.pem message.eml",
                 "smime-milter verify --json --at 2026-01-15T09:30:00Z message.eml"),
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
    verify.set_defaults(handler=run_verify)

    check = add_command(
        commands, "check-config", summary="validate a configuration file and load what it names",
        description="Check a configuration file before the daemon uses it (the systemd "
        "unit runs this before every start; run it after editing the file or after an "
        "upgrade). Every error of the file is printed in one run, one line each in line "
        "order, as file:line: key: reason: unknown keys and sections (with the closest "
        "known name), bad values (with the allowed ones), and files the configuration "
        "names that do not exist. The files that exist are then loaded as the daemon "
        "would load them.\n\n"
        "Exit status: 0 when the file is valid (a warning may have been printed), 1 when "
        "it has errors or cannot be read, 2 for bad arguments.",
        example=("smime-milter check-config --config /etc/smime-milter/smime-milter.toml",),
    )
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help="the configuration file to check (default: %(default)s)")
    check.set_defaults(handler=run_check_config)


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


def _verify_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config) if args.config else Config()
    trust = config.trust
    if args.trust_anchors or args.intermediates or args.crl:
        trust = replace(
            trust,
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


def run_verify(args: argparse.Namespace) -> int:
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


def run_check_config(args: argparse.Namespace) -> int:
    # Every missing file the configuration names is a problem with its line,
    # all in this one run; loading them then finds what is wrong inside them.
    config = load_config(args.config, check_files=True)
    build_verifier(config)
    build_advanced(config)  # key store and address book: refused files are named
    if config.milter.log_target == "syslog":  # valid, but the daemon would log elsewhere
        problem = syslog_problem()
        if problem is not None:
            print(f"warning: {problem}; logs will go to stderr")
    print(f"{args.config}: OK")
    return 0

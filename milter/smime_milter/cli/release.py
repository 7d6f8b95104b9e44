"""``smime-milter authorize`` and ``smime-milter release``: the two tools of
the draft-and-release flow, as thin command-line wrappers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from smime_milter.bootstrap import build_verifier
from smime_milter.cli.common import Commands, add_command
from smime_milter.cms import SigningError, SigningIdentity
from smime_milter.config import Config, check_submit
from smime_milter.release import (
    AuthorizeError,
    ReleaseError,
    authorize,
    looks_like_record_id,
    prepare,
    record_id_of,
    submit,
)
from smime_milter.store import Store


def add_release_parsers(
    commands: Commands,
    service_arguments: Callable[[argparse.ArgumentParser], None],
    service_config: Callable[[argparse.Namespace], Config],
) -> None:
    """Add ``authorize`` and ``release``. The CLI owns the shared options:
    ``service_arguments`` adds ``--config``/``--store`` and ``service_config``
    turns them into a Config."""
    auth = add_command(
        commands, "authorize", summary="countersign a held message as an authorizing user",
        description="Read a message on stdin, verify it, add your countersignature (or "
        "your signature when the originator did not sign) and list you in "
        "MMHS-Authorizing-Users; write the authorized message on stdout. This is the "
        "release officer's step of draft-and-release ([[release.rules]]): the authorized "
        "message is then handed to smime-milter release.",
        example=("smime-milter authorize --key officer.key --cert officer.pem "
                 "< held.eml > authorized.eml",),
    )
    auth.add_argument("--key", type=Path, required=True, help="your private key (PEM or DER)")
    auth.add_argument("--cert", type=Path, required=True, help="your certificate")
    auth.add_argument("--chain", type=Path, help="CA certificates to include (PEM)")
    auth.add_argument("--address", help="the address to authorize as (default: the "
                      "certificate's first email address)")
    service_arguments(auth)
    auth.set_defaults(handler=lambda args: run_authorize(args, service_config(args)))

    release = add_command(
        commands, "release", summary="re-submit an authorized message to its original "
        "recipients",
        example=("smime-milter release --dry-run authorized.eml",
                 "smime-milter release authorized.eml"),
        description="Re-submit an authorized message to the envelope recipients recorded "
        "when the milter held it back, through [release] submit, so it passes the milter "
        "again. FILE is the authorized message (its SMIME-Status-At-Delivery names the "
        "record); with a RECORD id the message is read from stdin.",
    )
    release.add_argument("target", metavar="RECORD_OR_FILE")
    release.add_argument("--submit", type=_submit_argument,
                         help="sendmail:/path or smtp:host:port (default: [release] submit)")
    release.add_argument("--dry-run", action="store_true",
                         help="check and print what would be sent, send nothing")
    service_arguments(release)
    release.set_defaults(handler=lambda args: run_release(args, service_config(args)))


def _submit_argument(text: str) -> str:
    try:
        return check_submit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run_authorize(args: argparse.Namespace, config: Config) -> int:
    try:
        identity = SigningIdentity.load(args.key, args.cert, args.chain)
        result = authorize(sys.stdin.buffer.read(), identity, build_verifier(config),
                           address=args.address,
                           casefold_local_part=config.verify.casefold_local_part)
    except (SigningError, AuthorizeError) as exc:
        print(f"smime-milter authorize: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result.message)
    sys.stdout.flush()
    print(f"smime-milter authorize: {result.action} as {result.address}; "
          f"MMHS-Authorizing-Users: {', '.join(result.authorizing_users)}", file=sys.stderr)
    return 0


def run_release(args: argparse.Namespace, config: Config) -> int:
    target = Path(args.target)
    try:
        if looks_like_record_id(args.target) and not target.exists():
            record_id, message = args.target, sys.stdin.buffer.read()
        else:
            message = _read(target)
            record_id = record_id_of(message)
        store = Store.open(config.store.path, readonly=True)
        try:
            record = store.get(record_id)
        finally:
            store.close()
        resubmission = prepare(message, record, record_id, config.release.rules,
                               build_verifier(config),
                               casefold_local_part=config.verify.casefold_local_part)
        if args.dry_run:
            print(f"would release record {record_id} from <{resubmission.sender}> to "
                  + ", ".join(f"<{r}>" for r in resubmission.recipients))
            return 0
        submit(resubmission, args.submit or config.release.submit)
    except ReleaseError as exc:
        print(f"smime-milter release: {exc}", file=sys.stderr)
        return 1
    print(f"released record {record_id} ({resubmission.decision.summary}) to "
          + ", ".join(f"<{r}>" for r in resubmission.recipients))
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror or exc}") from exc

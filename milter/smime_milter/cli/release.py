"""``smime-milter authorize`` and ``smime-milter release``: the two tools of
the draft-and-release flow, as thin command-line wrappers."""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from collections.abc import Callable
from datetime import UTC, datetime
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
    release,
)
from smime_milter.store import Store, StoreError


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
        "record); with a RECORD id the message is read from stdin. The release is recorded "
        "in the record before the message is sent (who, when, the MTA's queue id), and a "
        "record released before is refused: that would deliver the message twice.",
    )
    release.add_argument("target", metavar="RECORD_OR_FILE")
    release.add_argument("--submit", type=_submit_argument,
                         help="sendmail:/path or smtp:host:port (default: [release] submit)")
    release.add_argument("--dry-run", action="store_true",
                         help="check and print what would be sent, send nothing")
    release.add_argument("--force", action="store_true",
                         help="release even though the record was released before")
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
    path = config.store.path
    try:
        if looks_like_record_id(args.target) and not target.exists():
            record_id, message = args.target, sys.stdin.buffer.read()
        else:
            message = _read(target)
            record_id = record_id_of(message)
        # A writable open would create a missing store: the milter owns that.
        if not args.dry_run and not (path / "data.mdb").is_file():
            raise ReleaseError(f"no store at {path}: nothing was sent")
        store = Store.open(path, readonly=True) if args.dry_run else _writable(config)
        with store:
            resubmission = prepare(message, store.get(record_id), record_id,
                                   config.release.rules, build_verifier(config),
                                   casefold_local_part=config.verify.casefold_local_part,
                                   force=args.force)
            if args.dry_run:
                print(f"would release record {record_id} from <{resubmission.sender}> to "
                      + ", ".join(f"<{r}>" for r in resubmission.recipients))
                return 0
            done = release(store, resubmission, args.submit or config.release.submit,
                           by=_login_name(), now=datetime.now(UTC), force=args.force)
    except ReleaseError as exc:
        print(f"smime-milter release: {exc}", file=sys.stderr)
        return 1
    print(f"released record {record_id} ({resubmission.decision.summary}) to "
          + ", ".join(f"<{r}>" for r in resubmission.recipients)
          + f"; queue id {done.queue_id or 'unknown'}")
    return 0


def _writable(config: Config) -> Store:
    """The store, opened to record the release: failing that, nothing is sent."""
    try:
        return Store.open(config.store.path, map_size=config.store.map_size,
                          max_map_size=config.store.max_map_size)
    except StoreError as exc:
        raise ReleaseError(f"cannot record the release in the store ({exc}): nothing was "
                           "sent; run release as the service's user") from exc


def _login_name() -> str:
    """Who releases: the login name, and the sudo user behind it."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (as {name})" if sudo and sudo != name else name


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror or exc}") from exc

"""``smime-milter mixer``: the MIXER originator mapping (mixer.py) as a
filter from stdin to stdout, for gateways and for testing the mapping by hand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smime_milter.cli.common import Commands, add_command
from smime_milter.release import IpmsHeading, MixerError, from_x400, headers_from_message, to_x400

PROG = "smime-milter mixer"
#: Exit status for input that cannot be mapped. It matches argparse's usage
#: errors: in both cases the caller has to fix what it passed in.
BAD_INPUT = 2

_HEADING_KEYS = frozenset({"originator", "authorizingUsers", "mmhsExtensions"})


def add_mixer_parser(commands: Commands) -> None:
    """Add the ``mixer`` subcommand to the ``smime-milter`` command line."""
    mixer = add_command(
        commands, "mixer", summary="map From, Sender and MMHS-Authorizing-Users to and from "
        "the X.400 IPMS heading (RFC 2156 as updated by draft-melnikov-mmhs-authorizing-users)",
        description="Map the originator fields between RFC 5322 and X.400 (MIXER, RFC 2156, "
        "with the section 5 update of draft-melnikov-mmhs-authorizing-users). Addresses stay "
        "RFC 5322 mailboxes: translating them to O/R addresses is up to the gateway. "
        f"Input that cannot be mapped gives exit status {BAD_INPUT}.",
        example=("smime-milter mixer --to-x400 < message.eml",
                 "echo '{\"originator\": \"alice@example.org\", \"authorizingUsers\": "
                 "[\"bob@example.org\"]}' | smime-milter mixer --from-x400"),
    )
    direction = mixer.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--to-x400", action="store_true",
        help='read an RFC 5322 message on stdin and print its IPMS heading as JSON: '
        '{"originator": ..., "authorizingUsers": [...]}')
    direction.add_argument(
        "--from-x400", action="store_true",
        help='read that JSON on stdin (with an optional "mmhsExtensions": [...]) and print '
        'the RFC 5322 header fields, one "Name: value" line each')
    kind = mixer.add_mutually_exclusive_group()
    kind.add_argument(
        "--military", dest="military", action="store_const", const=True, default=None,
        help="with --from-x400: treat the message as military even without MMHS heading "
        "extensions (the configuration option of section 5.2)")
    kind.add_argument(
        "--non-military", dest="military", action="store_const", const=False,
        help="with --from-x400: use the plain RFC 2156 mapping even with MMHS heading "
        "extensions")
    mixer.set_defaults(handler=run_mixer)


def run_mixer(args: argparse.Namespace) -> int:
    """Map stdin to stdout in the direction the arguments ask for."""
    if args.to_x400 and args.military is not None:
        return _fail("--military and --non-military apply only to --from-x400")
    source = sys.stdin.buffer.read()
    try:
        if args.to_x400:
            output = heading_json(to_x400(headers_from_message(source)))
        else:
            output = fields_text(from_x400(heading_from_json(source), args.military))
    except MixerError as exc:
        return _fail(str(exc))
    sys.stdout.write(output)
    return 0


def _fail(reason: str) -> int:
    print(f"{PROG}: {' '.join(reason.split())}", file=sys.stderr)
    return BAD_INPUT


def heading_json(heading: IpmsHeading) -> str:
    """The heading as one line of JSON. ``to_x400`` sets no heading
    extensions, so the output has no ``mmhsExtensions``."""
    document = {"originator": heading.originator,
                "authorizingUsers": list(heading.authorizing_users)}
    return json.dumps(document, ensure_ascii=False) + "\n"


def fields_text(fields: tuple[tuple[str, str], ...]) -> str:
    """One unfolded ``Name: value`` line per field."""
    return "".join(f"{name}: {value}\n" for name, value in fields)


def heading_from_json(source: bytes) -> IpmsHeading:
    """The heading that ``--to-x400`` prints. Unknown keys are refused so
    that a misspelt key is not silently ignored."""
    try:
        document = json.loads(source)
    except ValueError as exc:
        raise MixerError(f"stdin is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MixerError("the IPMS heading must be a JSON object")
    unknown = sorted(set(document) - _HEADING_KEYS)
    if unknown:
        raise MixerError(f"unknown key(s) in the IPMS heading: {', '.join(unknown)}")
    originator = document.get("originator")
    if originator is not None and not isinstance(originator, str):
        raise MixerError("originator must be a string or null")
    return IpmsHeading(
        originator=originator,
        authorizing_users=_string_list(document, "authorizingUsers"),
        mmhs_extensions=_string_list(document, "mmhsExtensions"),
    )


def _string_list(document: dict[str, Any], key: str) -> tuple[str, ...]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MixerError(f"{key} must be a list of strings")
    return tuple(value)

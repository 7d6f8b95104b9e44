"""The milter's submission mode: who may ask for signing, and what they asked.

A JMAP server (or any trusted submitter) that submits over SMTP asks for
``smime-advanced`` processing with a request header::

    SMIME-Advanced: smimeSign=true; smimeEncrypt=true; headerProtect=true

It is honoured only on connections the policy marks as submission (a
Postfix ``{daemon_name}``, an authenticated SASL user, or a listed client
network) and removed from every message, so nobody on the internet can make
the server sign with a user's key. Pure decisions; ``app`` does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from smime_milter.advanced.compose import Composed
from smime_milter.advanced.settings import AdvancedConfig, AutoRule
from smime_milter.errors import SmimeMilterError
from smime_milter.mail import mime

REQUEST_HEADER = "SMIME-Advanced"
#: draft-ietf-jmap-smime-sender-extensions §4 argument -> (attribute, default).
_ARGUMENTS = {
    "smimesign": "sign",
    "smimeencrypt": "encrypt",
    "headerprotect": "header_protect",
    "smimesignopaque": "opaque",
}
#: Line breaks of folded header lines (libmilter's bare LF, or CRLF).
_FOLDING = re.compile(r"\r?\n(?=[ \t])")


class RequestHeaderError(SmimeMilterError, ValueError):
    """A malformed request header; answered like a JMAP ``invalidArguments``."""

    jmap_error = "invalidArguments"


@dataclass(frozen=True, slots=True)
class Request:
    """What to do to one message, with the draft's defaults."""

    sign: bool = False
    encrypt: bool = False
    header_protect: bool = True
    opaque: bool = True
    #: Encrypt only if every recipient has a certificate (automatic rules).
    encrypt_if_possible: bool = False

    @property
    def wanted(self) -> bool:
        return self.sign or self.encrypt or self.encrypt_if_possible


@dataclass(frozen=True, slots=True)
class Connection:
    """What the MTA told us about the SMTP client."""

    daemon_name: str | None = None
    sasl_user: str | None = None
    client_address: str | None = None


def parse_request(values: Sequence[str]) -> Request | None:
    """The request of the message's ``SMIME-Advanced`` fields (None if none);
    names compare case-insensitively, values are ``true`` or ``false``."""
    if not values:
        return None
    if len(values) > 1:
        raise RequestHeaderError(f"{len(values)} {REQUEST_HEADER} fields; send one")
    settings: dict[str, bool] = {}
    for item in values[0].split(";"):
        if not item.strip():
            continue
        name, equals, value = (part.strip() for part in item.partition("="))
        attribute = _ARGUMENTS.get(name.lower())
        if attribute is None or not equals:
            raise RequestHeaderError(f"unknown {REQUEST_HEADER} argument {name[:40]!r}")
        if value.lower() not in ("true", "false"):
            raise RequestHeaderError(f"{name} must be true or false, not {value[:40]!r}")
        if attribute in settings:
            raise RequestHeaderError(f"{name} given twice")
        settings[attribute] = value.lower() == "true"
    return Request(**settings)


def is_submitter(config: AdvancedConfig, connection: Connection) -> bool:
    """Does policy trust this connection to ask for signing and encryption?"""
    if connection.sasl_user and config.submission_sasl:
        return True
    if connection.daemon_name and connection.daemon_name in config.submission_daemons:
        return True
    if connection.client_address and config.submission_clients:
        try:
            address = ip_address(connection.client_address.removeprefix("IPv6:"))
        except ValueError:
            return False
        return any(address in network for network in config.submission_clients)
    return False


def account_of(config: AdvancedConfig, connection: Connection) -> str | None:
    """The account whose signing rights apply: the SASL login, else the
    configured ``client_account`` (None: this connection may not sign)."""
    return connection.sasl_user or config.client_account


def auto_rule(config: AdvancedConfig, sender: str | None) -> AutoRule | None:
    """The first ``[[advanced.auto]]`` rule covering the sender."""
    if sender is None:
        return None
    return next((rule for rule in config.auto if mime.address_in(sender, rule.senders)), None)


def combined(request: Request | None, rule: AutoRule | None) -> Request | None:
    """The client's request, raised to what the automatic rule requires."""
    if rule is None:
        return request
    base = request or Request()
    return Request(
        sign=base.sign or rule.sign,
        encrypt=base.encrypt or rule.encrypt == "always",
        header_protect=base.header_protect,
        opaque=base.opaque,
        encrypt_if_possible=rule.encrypt == "when-possible",
    )


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header changes that turn the original message into the composed one,
    in libmilter terms (1-based index among fields of the same name)."""

    #: Highest index first per name, so renumbering after a deletion is harmless.
    delete: tuple[tuple[str, int], ...]
    change: tuple[tuple[str, int, str], ...]
    #: Appended at the end of the header section, in order.
    add: tuple[tuple[str, str], ...]


def header_edits(
    original: Sequence[tuple[str, str]],
    composed: Composed,
    *,
    origins: Sequence[int] | None = None,
    drop: frozenset[int] = frozenset(),
) -> HeaderEdits:
    """Edits from the original (name, value) fields to ``composed``.

    ``origins`` maps the indexes the composer saw to indexes of ``original``
    (when fields were left out before composing); ``drop`` lists indexes of
    ``composed.headers`` that must not survive (forged copies of our own
    fields). Kept fields stay where they are, so trace fields keep their
    order."""
    occurrence: list[int] = []
    seen: dict[str, int] = {}
    for name, _ in original:
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
        occurrence.append(seen[name.lower()])
    kept: dict[int, str | None] = {}
    add: list[tuple[str, str]] = []
    for index, field in enumerate(composed.headers):
        if field.origin is None:
            if index not in drop:
                add.append((field.name, field.value))
            continue
        source = origins[field.origin] if origins is not None else field.origin
        kept[source] = None if index in drop else field.value
    delete: list[tuple[str, int]] = []
    change: list[tuple[str, int, str]] = []
    for index, (name, old) in enumerate(original):
        value = kept.get(index)
        if value is None:
            delete.append((name, occurrence[index]))
        elif value != old and value != _FOLDING.sub("", old).strip():
            # The composer unfolds and trims what it keeps: only a real change
            # is written back (an unfolded References could exceed 998 chars).
            change.append((name, occurrence[index], value))
    delete.sort(key=lambda item: (item[0].lower(), -item[1]))
    return HeaderEdits(tuple(delete), tuple(change), tuple(add))

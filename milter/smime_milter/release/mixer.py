"""The MIXER originator mapping, as updated for MMHS-Authorizing-Users.

RFC 2156 (MIXER) maps RFC 822 From/Sender to the X.400 IPMS heading's
originator and authorizing-users and back again.
draft-melnikov-mmhs-authorizing-users section 5 (later RFC 7912) updates
that mapping for the MMHS-Authorizing-Users header field, which records the
releasing officers of a drafted message (draft section 4). This module turns
header fields into an IPMS heading and back. It only maps header fields: it
does no I/O and keeps no state.

Out of scope: translating addresses to and from X.400 O/R addresses. Both
sides hold RFC 5322 mailbox text (``Alice <alice@example.mil>``), because
the address-mapping tables of MIXER belong to a gateway, not to this mapping.
The RFC 6477 mapping of the other MMHS header fields to heading extensions
is also out of scope. ``IpmsHeading.mmhs_extensions`` only says which
extensions a message carries, and section 5.2 needs that to decide whether
a message is military.

Decisions the texts leave open:

* With no Sender field and several From addresses (RFC 5322 would require a
  Sender field here), the first From address becomes the originator and the
  rest become authorizing users. Section 5.1 says this for MMHS messages, and
  the plain RFC 2156 mapping does the same, so one rule covers both.
* Authorizing users are listed in order with no repeats. From addresses come
  first, then MMHS-Authorizing-Users addresses. When a mailbox appears a
  second time (the addr-spec compared case-insensitively), the later copy is
  dropped. The originator is never dropped from authorizing-users: composing
  a message and authorizing it are different roles.
* From must be a mailbox-list and Sender a single mailbox (RFC 5322 3.6.2).
  Group syntax (RFC 6854) is refused in those fields because a group names
  no single originator. MMHS-Authorizing-Users is an address-list, so its
  groups are flattened into their members.
* RFC 5322 section 4 obsolete syntax is accepted because receivers must
  parse it. Anything else the stdlib parser reports as a defect is refused,
  and so are values that are not UTF-8.
* ``from_x400`` writes non-ASCII display names as RFC 2047 encoded-words,
  so the fields it produces are valid without SMTPUTF8.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address, AddressHeader

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import MimeError, address_header, parse_entity
from smime_milter.release.rules import AUTHORIZING_USERS_HEADER

FROM = "From"
SENDER = "Sender"
MMHS_AUTHORIZING_USERS = AUTHORIZING_USERS_HEADER

#: Defects the parser reports for syntax a receiver must still accept:
#: RFC 5322 section 4 obsolete syntax and RFC 6532 UTF-8 local parts.
#: 45 bytes become 60 base64 characters. With "=?utf-8?b?" and "?=" added,
#: the encoded-word is 72 characters, within RFC 2047's limit of 75.
_ENCODED_WORD_BYTES = 45


class MixerError(SmimeMilterError, ValueError):
    """The header fields or the heading cannot be mapped; the text says why."""


@dataclass(frozen=True, slots=True)
class IpmsHeading:
    """The IPMS heading fields that this mapping reads and writes.

    Addresses are RFC 5322 mailbox text, with display names decoded
    (RFC 2047 encoded-words become text). Translating them to O/R addresses
    is left to a gateway. ``mmhs_extensions`` names the MMHS heading
    extensions present: section 5.2 treats a message that has any of them
    as military.
    """

    originator: str | None
    authorizing_users: tuple[str, ...]
    mmhs_extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _OriginatorFields:
    """From, Sender and MMHS-Authorizing-Users, parsed and checked once so
    that the mapping rules only choose which address goes where."""

    from_: tuple[Address, ...]
    sender: Address | None
    #: None when the field is absent: the mapping depends on whether it exists.
    mmhs_authorizing_users: tuple[Address, ...] | None


# --- RFC 5322 to X.400 (section 5.1) -------------------------------------------


def to_x400(headers: Sequence[tuple[str, str]]) -> IpmsHeading:
    """The IPMS originator and authorizing-users for a message's header
    fields (name, value). Names are case-insensitive, and folded values
    are accepted."""
    fields = _originator_fields(headers)
    if fields.mmhs_authorizing_users is None:
        return _rfc2156_heading(fields)
    return _mmhs_heading(fields, fields.mmhs_authorizing_users)


def _rfc2156_heading(fields: _OriginatorFields) -> IpmsHeading:
    """Without MMHS-Authorizing-Users (section 5.1, first paragraph):
    Sender becomes the originator and From the authorizing users. With no
    Sender, From becomes the originator."""
    if fields.sender is not None:
        return _heading(fields.sender, fields.from_)
    return _heading(fields.from_[0], fields.from_[1:])


def _mmhs_heading(fields: _OriginatorFields, authorizers: tuple[Address, ...]) -> IpmsHeading:
    """With MMHS-Authorizing-Users, section 5.1 rules 1 and 2."""
    if fields.sender is not None:
        # Rule 2: Sender becomes the originator. Rule 1, second sentence:
        # every From address and MMHS-Authorizing-Users address becomes an
        # authorizing user.
        return _heading(fields.sender, fields.from_ + authorizers)
    # Rule 1, first sentence: the first From address becomes the originator,
    # and the remaining From addresses plus MMHS-Authorizing-Users become
    # authorizing users.
    return _heading(fields.from_[0], fields.from_[1:] + authorizers)


def _heading(originator: Address, authorizers: tuple[Address, ...]) -> IpmsHeading:
    return IpmsHeading(originator=str(originator),
                       authorizing_users=tuple(str(a) for a in _distinct(authorizers)))


def _distinct(addresses: tuple[Address, ...]) -> tuple[Address, ...]:
    """Keep the first of each addr-spec, compared case-insensitively."""
    seen: set[str] = set()
    kept: list[Address] = []
    for address in addresses:
        key = address.addr_spec.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(address)
    return tuple(kept)


def _originator_fields(headers: Sequence[tuple[str, str]]) -> _OriginatorFields:
    from_values = _field_values(headers, FROM)
    sender_values = _field_values(headers, SENDER)
    authorizing_values = _field_values(headers, MMHS_AUTHORIZING_USERS)
    if not from_values:
        raise MixerError("the message has no From field")
    if len(from_values) > 1:
        raise MixerError("the message has more than one From field (RFC 5322 3.6)")
    if len(sender_values) > 1:
        raise MixerError("the message has more than one Sender field (RFC 5322 3.6)")
    if len(authorizing_values) > 1:
        raise MixerError(f"the message has more than one {MMHS_AUTHORIZING_USERS} field "
                         "(draft-melnikov-mmhs-authorizing-users section 4: MUST NOT)")
    return _OriginatorFields(
        from_=_from_mailboxes(from_values[0]),
        sender=_sender_mailbox(sender_values[0]) if sender_values else None,
        mmhs_authorizing_users=(_address_list_mailboxes(authorizing_values[0])
                                if authorizing_values else None),
    )


def _field_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    wanted = name.lower()
    return [value for field, value in headers if field.lower() == wanted]


def _from_mailboxes(value: str) -> tuple[Address, ...]:
    mailboxes = _mailbox_list(FROM, value)
    if not mailboxes:
        raise MixerError("From names no mailbox")
    return mailboxes


def _sender_mailbox(value: str) -> Address:
    mailboxes = _mailbox_list(SENDER, value)
    if len(mailboxes) != 1:
        raise MixerError(f"Sender must name exactly one mailbox (RFC 5322 3.6.2), "
                         f"not {len(mailboxes)}: {value!r}")
    return mailboxes[0]


def _mailbox_list(field: str, value: str) -> tuple[Address, ...]:
    """A From or Sender value. Groups are refused: they name no single person."""
    groups = _parse_address_list(field, value).groups
    if any(group.display_name is not None for group in groups):
        raise MixerError(f"{field} must not use group syntax, since an originator is a "
                         f"mailbox (RFC 5322 3.6.2): {value!r}")
    return tuple(address for group in groups for address in group.addresses)


def _address_list_mailboxes(value: str) -> tuple[Address, ...]:
    """An MMHS-Authorizing-Users value: an RFC 5322 address-list, with its
    groups flattened. A group can be empty, but the list must have an entry."""
    header = _parse_address_list(MMHS_AUTHORIZING_USERS, value)
    if not header.groups:
        raise MixerError(f"{MMHS_AUTHORIZING_USERS} is empty; the field holds an "
                         "address-list (draft section 4)")
    return tuple(header.addresses)


def _parse_address_list(field: str, value: str) -> AddressHeader:
    """Parse one address-list strictly (mime.address_header), naming the field."""
    try:
        return address_header(value)
    except MimeError as exc:
        raise MixerError(f"{field} is not an address list ({exc}): {value!r}") from exc


def headers_from_message(message: bytes) -> list[tuple[str, str]]:
    """The unfolded header fields of an RFC 5322 message, in order. Parsing
    is left to mime.py, which the milter uses too."""
    try:
        return list(parse_entity(message).headers)
    except MimeError as exc:
        raise MixerError(f"cannot read the message header: {exc}") from exc


# --- X.400 to RFC 5322 (section 5.2) -------------------------------------------


def from_x400(heading: IpmsHeading, military: bool | None = None) -> tuple[tuple[str, str], ...]:
    """The RFC 5322 originator fields for an IPMS heading.

    A message is military when it has MMHS heading extensions. ``military``
    overrides that when it is set, because section 5.2 also allows the
    choice to come from configuration.
    """
    if heading.originator is None:
        raise MixerError("the IPMS heading has no originator")
    originator = _mailbox_text("originator", heading.originator)
    authorizers = tuple(_mailbox_text("authorizing-users", text)
                        for text in heading.authorizing_users)
    if _is_military(heading, military):
        return _military_fields(originator, authorizers)
    return _rfc2156_fields(originator, authorizers)


def _is_military(heading: IpmsHeading, military: bool | None) -> bool:
    return bool(heading.mmhs_extensions) if military is None else military


def _military_fields(originator: str, authorizers: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Section 5.2 rule 1: the originator becomes From. Rule 2:
    authorizing-users becomes MMHS-Authorizing-Users, left out when empty."""
    fields: tuple[tuple[str, str], ...] = ((FROM, originator),)
    if authorizers:
        fields += ((MMHS_AUTHORIZING_USERS, ", ".join(authorizers)),)
    return fields


def _rfc2156_fields(originator: str, authorizers: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The RFC 2156 mapping for non-military messages: authorizing-users
    becomes From and the originator Sender. With no authorizing users, the
    originator becomes From."""
    if authorizers:
        return ((FROM, ", ".join(authorizers)), (SENDER, originator))
    return ((FROM, originator),)


def _mailbox_text(role: str, text: str) -> str:
    """Check that one heading address is a single mailbox and render it for
    a header field."""
    groups = _parse_address_list(role, text).groups
    if len(groups) != 1 or groups[0].display_name is not None or len(groups[0].addresses) != 1:
        raise MixerError(f"{role} must be exactly one mailbox: {text!r}")
    return _render(groups[0].addresses[0])


def _render(address: Address) -> str:
    name = address.display_name
    if not name or name.isascii():
        return str(address)
    return f"{_encoded_words(name)} <{address.addr_spec}>"


def _encoded_words(text: str) -> str:
    """``text`` as RFC 2047 UTF-8 encoded-words, each within 75 characters.
    The split never cuts a character in two."""
    chunks = [""]
    for char in text:
        if len((chunks[-1] + char).encode("utf-8")) > _ENCODED_WORD_BYTES:
            chunks.append("")
        chunks[-1] += char
    return " ".join(f"=?utf-8?b?{base64.b64encode(chunk.encode('utf-8')).decode('ascii')}?="
                    for chunk in chunks)

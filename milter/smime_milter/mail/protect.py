"""RFC 9788 header protection for messages we sign or encrypt.

The protected header fields are copied onto the Cryptographic Payload (the
MIME entity inside the signature or encryption), whose Content-Type gets
``hp="clear"`` (signed only) or ``hp="cipher"`` (encrypted). When encrypting,
the outer header section is passed through the baseline Header
Confidentiality Policy (``hcp_baseline``: Subject becomes ``[...]``, Keywords
and Comments go) and every outer field that remains is recorded inside as
``HP-Outer``, so a receiver can tell what travelled in the clear.

Pure functions over ``(name, value)`` pairs: no MIME parsing, no crypto.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: What ``hcp_baseline`` puts in place of the Subject.
OBSCURED_SUBJECT = "[...]"
#: Fields ``hcp_baseline`` removes from the outer header section.
_REMOVED_OUTSIDE = frozenset({"keywords", "comments"})
#: Fields that describe the MIME structure rather than the message: they
#: belong to the entity they head and are never copied or obscured.
_STRUCTURAL = frozenset({"mime-version"})
#: Transport and trace fields: added along the way, not the author's words.
#: Bcc is never copied inside, or every recipient who decrypts would read it.
_NOT_PROTECTED = frozenset({
    "received", "return-path", "delivered-to", "x-original-to", "dkim-signature",
    "authentication-results", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "bcc", "resent-bcc",
})
_HP_PARAMETER = re.compile(r""";\s*hp\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;\s]*)""", re.IGNORECASE)

Field = tuple[str, str]


def is_structural(name: str) -> bool:
    """Content-* and MIME-Version: they move with the body, not the message."""
    lowered = name.lower()
    return lowered.startswith("content-") or lowered in _STRUCTURAL


def protected_fields(headers: Sequence[Field]) -> tuple[Field, ...]:
    """The message's own fields that the Cryptographic Payload carries."""
    return tuple(
        (name, value) for name, value in headers
        if not is_structural(name) and name.lower() not in _NOT_PROTECTED
        and name.lower() != "hp-outer"
    )


def hcp_baseline(name: str, value: str) -> str | None:
    """RFC 9788 §3.2.1: the outer value of a field, None to drop it."""
    lowered = name.lower()
    if lowered == "subject":
        return OBSCURED_SUBJECT
    if lowered in _REMOVED_OUTSIDE:
        return None
    return value


def with_hp_parameter(content_type: str, mode: str) -> str:
    """``content_type`` with its ``hp`` parameter set to ``mode`` ("clear" or
    "cipher"); a parameter the author's client left is replaced."""
    if mode not in ("clear", "cipher"):
        raise ValueError(f"hp mode must be clear or cipher, not {mode!r}")
    base = _HP_PARAMETER.sub("", content_type).rstrip().rstrip(";").rstrip()
    return f'{base}; hp="{mode}"'


def hp_outer_fields(outer: Sequence[Field]) -> tuple[Field, ...]:
    """RFC 9788 §2.2.1: one ``HP-Outer`` per non-structural outer field."""
    return tuple(
        ("HP-Outer", f"{name}: {value}") for name, value in outer
        if not is_structural(name) and name.lower() not in _NOT_PROTECTED
    )

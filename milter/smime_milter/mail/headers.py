"""Folding and unfolding of header field values (RFC 5322 §2.1.1, §2.2.3).

Values the milter writes are folded with a bare "\\n" before the whitespace
that continues the line: libmilter's smfi_addheader and smfi_chgheader take
multi-line values that way, and callers writing a message themselves replace
it with their own line end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["LINE_WIDTH", "fold_words", "folded", "unfold"]

#: RFC 5322 §2.1.1: lines SHOULD be at most 78 characters, CRLF excluded.
LINE_WIDTH = 78
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: str) -> str:
    """RFC 5322 §2.2.3 unfolding: drop line breaks that precede whitespace."""
    return _FOLD.sub("", value)


def fold_words(words: Iterable[str], room: int, *, continuation: str = " ") -> list[str]:
    """``words`` joined by single spaces and broken into lines between them:
    the first line holds at most ``room`` characters, each further one
    LINE_WIDTH including its leading ``continuation`` (which stands in for
    the space). A word longer than a line stays whole on a line of its own."""
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > room:
            lines.append(current)
            current, room = continuation + word, LINE_WIDTH
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines


def folded(value: str, room: int, *, continuation: str = " ") -> str:
    """``value`` folded at spaces (RFC 5322 FWS) as :func:`fold_words` breaks
    it, lines joined with "\\n"; with the default continuation, unfolding
    gives ``value`` back."""
    return "\n".join(fold_words(value.split(" "), room, continuation=continuation))

"""The lexical layer of the header fields the milter writes and reads back
(RFC 5322 §3.2: folding, comments, quoted-strings; RFC 8601 §2.2: resinfos).

One scanner for comments and one for quoted-strings serve both readers: the
strict parsers of stamp.fields (which refuse what never closes) and the lenient
resinfo split ingest uses on stored mail (where an unclosed comment or
quoted-string simply runs to the end of the value).
"""

from __future__ import annotations

from typing import NamedTuple

from smime_milter.errors import SmimeMilterError
from smime_milter.mail import unfold

__all__ = [
    "CFWS_SPACE",
    "FieldSyntaxError",
    "Span",
    "comment_at",
    "quoted_at",
    "read_quoted",
    "resinfos",
    "skip_cfws",
    "unfold",
    "word_end",
]

#: The whitespace CFWS may hold once unfolded (a bare CR or LF included).
CFWS_SPACE = " \t\r\n"


class FieldSyntaxError(SmimeMilterError, ValueError):
    """A header field the milter reads back is malformed (a comment or
    quoted-string that never closes, an unknown status, a bad parameter).
    Also a ValueError, the name its callers caught before the root existed."""


class Span(NamedTuple):
    """A comment or quoted-string: its content with quoted-pairs resolved,
    the offset after it, and whether it was closed before the text ended."""

    content: str
    end: int
    closed: bool


def comment_at(text: str, pos: int) -> Span:
    """The comment opening at ``text[pos] == "("``; nested comments stay in
    the content, parentheses included."""
    out: list[str] = []
    depth = 1
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 1
            char = text[pos : pos + 1]
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if not depth:
                return Span("".join(out), pos + 1, True)
        out.append(char)
        pos += 1
    return Span("".join(out), len(text), False)


def quoted_at(text: str, pos: int) -> Span:
    """The quoted-string opening at ``text[pos] == '"'``."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return Span("".join(out), pos + 1, True)
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        out.append(char)
        pos += 1
    return Span("".join(out), len(text), False)


def skip_cfws(text: str, pos: int) -> int:
    """Skip RFC 5322 CFWS (nested comments, quoted-pairs); FieldSyntaxError
    when a comment never closes."""
    while pos < len(text):
        char = text[pos]
        if char == "(":
            comment = comment_at(text, pos)
            if not comment.closed:
                raise FieldSyntaxError("unterminated comment")
            pos = comment.end
        elif char in CFWS_SPACE:
            pos += 1
        else:
            return pos
    return pos


def read_quoted(text: str, pos: int) -> tuple[str, int]:
    """Content of the quoted-string at ``pos`` (quoted-pairs resolved) and the
    offset after it; FieldSyntaxError when it never closes."""
    quoted = quoted_at(text, pos)
    if not quoted.closed:
        raise FieldSyntaxError("unterminated quoted-string")
    return quoted.content, quoted.end


def word_end(text: str, pos: int) -> int:
    """The offset after the run of characters at ``pos`` that are none of
    ';', '=', '(', ')', '"' or CFWS space."""
    while pos < len(text) and text[pos] not in ';=()"' + CFWS_SPACE:
        pos += 1
    return pos


def resinfos(value: str) -> list[tuple[str, list[str]]]:
    """Split an Authentication-Results value at ';' outside comments and
    quoted-strings: (text with each comment replaced by a space, the
    comments' texts) per part, the authserv-id's part first. Lenient: an
    unclosed comment or quoted-string runs to the end of the value."""
    text = unfold(value)
    parts: list[tuple[str, list[str]]] = []
    current: list[str] = []
    comments: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "(":
            comment = comment_at(text, pos)
            if comment.closed:
                comments.append(comment.content)
                current.append(" ")
            elif comment.content:
                comments.append(comment.content)
            pos = comment.end
        elif char == '"':
            end = quoted_at(text, pos).end
            current.append(text[pos:end])
            pos = end
        elif char == ";":
            parts.append(("".join(current), comments))
            current, comments = [], []
            pos += 1
        else:
            current.append(char)
            pos += 1
    parts.append(("".join(current), comments))
    return parts

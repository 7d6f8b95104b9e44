"""Byte-exact MIME walking: find the S/MIME layer without re-encoding anything.

Signatures cover bytes as transmitted, so this module never decodes and
re-serialises an entity: it slices the raw message, and only the CMS blobs
(and nothing that is hashed) are transfer-decoded. Everything is bounded
(header count, nesting depth, part count) so hostile input costs little.
"""

from __future__ import annotations

import binascii
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import getaddresses
from functools import lru_cache
from typing import TypeVar, cast, overload

from smime_milter.errors import SmimeMilterError
from smime_milter.mail.headers import unfold

MAX_HEADERS = 1000
MAX_HEADER_BYTES = 256 * 1024
MAX_DEPTH = 20
MAX_PARTS = 1000

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)

SIGNATURE_PROTOCOLS = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
PKCS7_MIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
#: Bytes examined per step when scanning a view: bounds the temporary copies.
WINDOW = 1 << 20

#: Raw message bytes: a bytes object, or a zero-copy view (of a mapped file).
Buffer = TypeVar("Buffer", bytes, memoryview)


class MimeError(SmimeMilterError, ValueError):
    """The message is not MIME we can walk; the text is the smimeErrors reason."""


@dataclass(frozen=True, slots=True)
class ContentType:
    """A parsed Content-Type: lower-case ``type/subtype`` and parameters."""

    mime_type: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None


DEFAULT_CONTENT_TYPE = ContentType("text/plain", (("charset", "us-ascii"),))


class _Fields:
    """Header-field access shared by :class:`Entity` and :class:`Part`."""

    __slots__ = ()
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    @property
    def transfer_encoding(self) -> str:
        value = self.get("content-transfer-encoding")
        return value.strip().lower() if value else "7bit"


@dataclass(frozen=True, slots=True)
class Entity(_Fields):
    """One MIME entity as raw bytes, with its header fields parsed.

    ``raw`` is the whole entity (headers, blank line, body) exactly as
    received; ``body`` is a slice of it.
    """

    raw: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: ContentType = DEFAULT_CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class Part(_Fields):
    """An :class:`Entity` whose ``raw`` and ``body`` are views into the
    message: the verifier walks a large (memory-mapped) message without
    copying its bodies."""

    raw: memoryview
    headers: tuple[tuple[str, str], ...]
    body: memoryview
    content_type: ContentType = DEFAULT_CONTENT_TYPE


def try_parse_entity(raw: bytes) -> Entity | None:
    """parse_entity, or None when the entity exceeds the parser's bounds."""
    try:
        return parse_entity(raw)
    except MimeError:
        return None


def try_parse_part(raw: memoryview) -> Part | None:
    """parse_part, or None when the entity exceeds the parser's bounds."""
    try:
        return parse_part(raw)
    except MimeError:
        return None


def parse_entity(raw: bytes) -> Entity:
    """Split ``raw`` into header fields and body."""
    headers, body, content_type = _split_entity(raw)
    return Entity(raw=raw, headers=headers, body=body, content_type=content_type)


def parse_part(raw: memoryview) -> Part:
    """:func:`parse_entity` for a view: the body is a view too, never a copy."""
    headers, body, content_type = _split_entity(raw)
    return Part(raw=raw, headers=headers, body=body, content_type=content_type)


def _split_entity(raw: Buffer) -> tuple[tuple[tuple[str, str], ...], Buffer, ContentType]:
    match = _HEADER_END.search(raw, 0, MAX_HEADER_BYTES + 4)
    if raw[:2] == b"\r\n" or raw[:1] == b"\n":
        header_block, body = b"", raw[2 if raw[:2] == b"\r\n" else 1 :]
    elif match is None:
        if len(raw) > MAX_HEADER_BYTES:
            raise MimeError(f"header section larger than {MAX_HEADER_BYTES} bytes")
        # No blank line: headers only, empty body (RFC 5322 allows no body).
        header_block, body = bytes(raw), raw[len(raw) :]
    else:
        header_block, body = bytes(raw[: match.start()]), raw[match.end() :]
    headers = parse_header_block(header_block)
    content_type = DEFAULT_CONTENT_TYPE
    for name, value in headers:
        if name.lower() == "content-type":
            content_type = parse_content_type(value) or DEFAULT_CONTENT_TYPE
            break
    return headers, body, content_type


def parse_header_block(block: bytes) -> tuple[tuple[str, str], ...]:
    """Unfold header fields; values are decoded as UTF-8 with surrogate escapes."""
    fields: list[tuple[str, str]] = []
    current: list[bytes] = []
    for line in _LINE_END.split(block):
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            _append_field(fields, b"".join(current))
        current = [line]
        if len(fields) > MAX_HEADERS:
            raise MimeError(f"more than {MAX_HEADERS} header fields")
    if current:
        _append_field(fields, b"".join(current))
    return tuple(fields)


def _append_field(fields: list[tuple[str, str]], line: bytes) -> None:
    match = _FIELD.match(line)
    if match is None:
        return  # not a header field (e.g. an mbox "From " line): ignore it
    name = match.group(1).decode("ascii")
    value = match.group(2).decode("utf-8", "surrogateescape").strip()
    fields.append((name, value))


def _tokenize_params(text: str) -> Iterator[str]:
    """Split on ';' outside quoted strings."""
    if '"' not in text:
        yield from text.split(";")  # nothing quoted: the common case, in C
        return
    start, in_quote, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and in_quote:
            escaped = True
        elif char == '"':
            in_quote = not in_quote
        elif char == ";" and not in_quote:
            yield text[start:index]
            start = index + 1
    yield text[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


_COMMENT = re.compile(r"\([^()\"]*\)")


@lru_cache(maxsize=1024)
def parse_content_type(value: str) -> ContentType | None:
    """Parse a Content-Type value; None when the type itself is unusable.
    Memoised: most values recur from message to message."""
    tokens = list(_tokenize_params(value))
    mime_type = _COMMENT.sub("", tokens[0]).strip().lower()
    if mime_type.count("/") != 1 or not all(mime_type.split("/")):
        return None
    params: list[tuple[str, str]] = []
    for token in tokens[1:]:
        if "=" not in token:
            continue
        key, _, raw_value = token.partition("=")
        key = key.strip().lower()
        if key.endswith("*0") or key.endswith("*"):
            key = key.split("*", 1)[0]  # RFC 2231 continuations: first segment is enough
        params.append((key, _unquote(raw_value)))
    return ContentType(mime_type, tuple(params))


def split_multipart(body: Buffer, boundary: str, *, strict: bool = True) -> list[Buffer]:
    """Body parts of a multipart body (RFC 2046 §5.1.1), each exactly as sent
    (slices of ``body``: views when it is a view).

    A part excludes the line break that belongs to the following delimiter.
    Raises MimeError when the boundary never appears; a missing close
    delimiter is an error only when ``strict`` (where a signature's coverage
    depends on it), otherwise the last part runs to the end of the body and
    parts beyond MAX_PARTS are dropped.
    Scans with ``bytes.find`` so the cost stays linear and fast.
    """
    if not boundary or len(boundary) > 200:
        raise MimeError("multipart boundary missing or too long")
    marker = b"--" + boundary.encode("utf-8", "surrogateescape")
    parts: list[Buffer] = []
    part_start: int | None = None
    closed = False
    position = 0
    size = len(body)
    finder = _Finder(body)
    while (found := finder.find(marker, position)) >= 0:
        position = found + 1
        if found and body[found - 1] != 0x0A:
            continue  # not at the start of a line
        after = found + len(marker)
        is_close = body[after : after + 2] == b"--"
        line_end = after + 2 if is_close else after
        while line_end < size and body[line_end] in (0x20, 0x09):
            line_end += 1
        if body[line_end : line_end + 2] == b"\r\n":
            next_start = line_end + 2
        elif body[line_end : line_end + 1] == b"\n" or line_end == size:
            next_start = line_end + 1
        else:
            continue  # the boundary is only the prefix of a longer line
        if part_start is not None:
            end = found - 2 if found >= 2 and body[found - 2] == 0x0D else found - 1
            parts.append(body[part_start : max(end, part_start)])
            if len(parts) >= MAX_PARTS:
                if strict:
                    raise MimeError(f"more than {MAX_PARTS} body parts")
                return parts  # scanning only: the first MAX_PARTS parts are enough
        if is_close:
            closed = True
            break
        part_start = next_start
        position = next_start
    if part_start is None:
        raise MimeError("multipart boundary not found in body")
    if not closed:
        if strict:
            raise MimeError("multipart close delimiter missing")
        parts.append(body[part_start:])
    return parts


class _Finder:
    """``data.find`` also for a view (which has none): the view is searched
    in a sliding window of :data:`WINDOW` bytes, so a scan costs one copy
    of each window however many matches it steps through."""

    __slots__ = ("base", "data", "window")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.base = 0
        self.window = data if isinstance(data, bytes) else b""

    def find(self, sub: bytes, start: int) -> int:
        if isinstance(self.data, bytes):
            return self.data.find(sub, start)
        size = len(self.data)
        while True:
            end = self.base + len(self.window)
            if self.base <= start <= end:
                found = self.window.find(sub, start - self.base)
                if found >= 0:
                    return self.base + found
                if end >= size:
                    return -1
                start = max(start, end - len(sub) + 1)  # a match may straddle the edge
            self.base = start
            self.window = bytes(self.data[start : start + WINDOW])


def canonicalize(data: bytes) -> bytes:
    """RFC 8551 §3.1.1: line endings become CRLF; nothing else changes."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data  # already canonical: two C scans beat a regex rewrite
    return _LINE_END.sub(b"\r\n", data)


@dataclass(frozen=True, slots=True)
class CanonicalText:
    """A view whose line endings become CRLF (RFC 8551 §3.1.1) as it is
    hashed, window by window, so a large part is never copied whole."""

    data: memoryview

    def chunks(self) -> Iterator[bytes]:
        for window in _windows(self.data):
            yield _LINE_END.sub(b"\r\n", window)


def canonical(data: memoryview) -> memoryview | CanonicalText:
    """:func:`canonicalize` for a view: the view itself when its line endings
    are already CRLF (the usual case), else the conversion to hash."""
    for window in _windows(data):
        if window.count(b"\n") != window.count(b"\r\n"):
            return CanonicalText(data)
    return data


def _windows(data: memoryview) -> Iterator[bytes]:
    """Copies of consecutive pieces of at most about :data:`WINDOW` bytes,
    never split inside a CRLF."""
    start, size = 0, len(data)
    while start < size:
        stop = min(size, start + WINDOW)
        if stop < size and data[stop - 1] == 0x0D:
            stop += 1
        yield bytes(data[start:stop])
        start = stop


@overload
def decode_transfer_encoding(entity: Entity) -> bytes: ...
@overload
def decode_transfer_encoding(entity: Part) -> bytes | memoryview: ...
def decode_transfer_encoding(entity: Entity | Part) -> bytes | memoryview:
    """Decode the body of a part holding binary data (a CMS blob)."""
    encoding = entity.transfer_encoding
    if encoding == "base64":
        try:
            return binascii.a2b_base64(entity.body)
        except (binascii.Error, ValueError) as exc:
            raise MimeError(f"invalid base64 in {entity.content_type.mime_type} part") from exc
    if encoding == "quoted-printable":
        return quopri.decodestring(bytes(entity.body))
    if encoding in ("7bit", "8bit", "binary"):
        return entity.body
    raise MimeError(f"unknown Content-Transfer-Encoding {encoding!r}")


# --- addresses ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox split for comparison (RFC 5321 local part, DNS domain)."""

    local: str
    domain: str

    @property
    def text(self) -> str:
        return f"{self.local}@{self.domain}"

    def matches(self, other: Address, *, casefold_local: bool = False) -> bool:
        if self.domain != other.domain:
            return False
        if casefold_local:
            return self.local.casefold() == other.local.casefold()
        return self.local == other.local


def parse_address(text: str) -> Address | None:
    """Normalise one addr-spec: unquote the local part, lower-case and
    IDNA-encode the domain. None when it is not a usable address."""
    text = text.strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return None
    local = _unquote(local)
    domain = domain.strip().rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None
    if not local or not domain or any(c.isspace() for c in domain):
        return None
    return Address(local, domain)


def address_in(text: str, entries: Iterable[str]) -> bool:
    """``text`` is one of the addresses, or in one of the domains (or their
    subdomains), of ``entries``; local parts compare case-insensitively, as
    policy tables are written by people."""
    address = parse_address(text)
    if address is None:
        return False
    for entry in entries:
        if "@" in entry:
            wanted = parse_address(entry)
            if wanted is not None and wanted.matches(address, casefold_local=True):
                return True
        elif domain_in(address.domain, (entry,)):
            return True
    return False


def domain_in(domain: str, domains: Iterable[str]) -> bool:
    """``domain`` is one of ``domains`` or a subdomain of one."""
    domain = domain.strip("<> ").lower().rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in domains)


def mailbox_list(values: list[str]) -> list[Address | None]:
    """Every mailbox in the given header values (None for unusable ones)."""
    return list(_mailbox_tuple(tuple(values)))


@lru_cache(maxsize=4096)
def _mailbox_tuple(values: tuple[str, ...]) -> tuple[Address | None, ...]:
    found: list[Address | None] = []
    for name, addr in getaddresses(list(values)):
        if addr or name:
            found.append(parse_address(addr) if addr else None)
    return tuple(found)


_ADDRESS_HEADERS = HeaderRegistry()
#: RFC 5322 §4 obsolete syntax (receivers must accept it) and RFC 6532 UTF-8
#: local parts are tolerated; any other defect means "not an address-list".
_TOLERATED_DEFECTS = (ObsoleteHeaderDefect, NonASCIILocalPartDefect)


def address_header(value: str) -> AddressHeader:
    """One RFC 5322 ``address-list`` value parsed strictly, display names and
    groups kept (raises MimeError with the reason)."""
    unfolded = unfold(value)
    if "\r" in unfolded or "\n" in unfolded:
        raise MimeError("a line break that is not folding")
    try:
        unfolded.encode("utf-8")
    except UnicodeEncodeError:
        raise MimeError("not UTF-8") from None
    try:
        header = _ADDRESS_HEADERS("to", unfolded)  # "to": parsed as an address-list
    except Exception as exc:
        # The stdlib parser raises IndexError, AttributeError, TypeError or
        # UnboundLocalError on some malformed input instead of a defect.
        raise MimeError("not an address list") from exc
    defects = [d for d in header.defects if not isinstance(d, _TOLERATED_DEFECTS)]
    if defects:
        raise MimeError(f"not an address list: {defects[0]}")
    addresses = cast("AddressHeader", header)  # what the registry makes of "to"
    for entry in addresses.addresses:
        if not entry.username or not entry.domain:
            raise MimeError(f"{entry.addr_spec!r} is not a mailbox")
    return addresses


def address_list(value: str) -> tuple[Address, ...]:
    """The mailboxes of one RFC 5322 ``address-list`` value (groups flattened),
    normalised for comparison. Raises MimeError when the value is not an
    address-list or names no mailbox, so a caller can say "malformed"
    instead of guessing what was meant."""
    found: list[Address] = []
    for entry in address_header(value).addresses:
        address = parse_address(entry.addr_spec)
        if address is None:
            raise MimeError(f"{entry.addr_spec!r} is not a mailbox")
        found.append(address)
    if not found:
        raise MimeError("the address list names no mailbox")
    return tuple(found)

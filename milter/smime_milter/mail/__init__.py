"""RFC 5322/MIME: walking entities, addresses, header fields and folding, RFC
9788 header protection."""

from __future__ import annotations

from smime_milter.mail import mime, protect
from smime_milter.mail.headers import LINE_WIDTH, fold_words, folded, unfold
from smime_milter.mail.mime import Address, MimeError, address_header, parse_address, parse_entity

__all__ = [
    "LINE_WIDTH", "Address", "MimeError", "address_header", "fold_words", "folded", "mime",
    "parse_address", "parse_entity", "protect", "unfold"
]

"""Our header fields: writing and reading Authentication-Results smime (RFC
7281/8601) and SMIME-Status-At-Delivery."""

from __future__ import annotations

from smime_milter.stamp import fields
from smime_milter.stamp.fields import (
    AR_HEADER,
    MAX_RESULTS,
    NEUTRAL,
    NONE,
    PASS,
    STATUS_HEADER,
    authserv_id_of,
    claims_authserv_id,
    parse_status_header,
)
from smime_milter.stamp.lexer import FieldSyntaxError, resinfos, unfold

__all__ = [
    "AR_HEADER", "MAX_RESULTS", "NEUTRAL", "NONE", "PASS", "STATUS_HEADER", "FieldSyntaxError",
    "authserv_id_of", "claims_authserv_id", "fields", "parse_status_header", "resinfos", "unfold"
]

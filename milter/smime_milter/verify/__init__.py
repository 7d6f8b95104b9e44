"""Verification: locating the S/MIME layer, checking it, the RFC 9219 status rule."""

from __future__ import annotations

from smime_milter.verify.engine import Verifier, VerifyPolicy
from smime_milter.verify.status import signed_status

__all__ = [
    "Verifier", "VerifyPolicy", "signed_status"
]

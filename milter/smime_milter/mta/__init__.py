"""The milter: pymilter callbacks, the pipeline that decides and plans header
edits, the verifier pool, the daemon."""

from __future__ import annotations

from smime_milter.mta.app import Runtime, hostname
from smime_milter.mta.daemon import StartupError, run
from smime_milter.mta.pool import VerifierPool, VerifyFailure

__all__ = [
    "Runtime", "StartupError", "VerifierPool", "VerifyFailure", "hostname", "run"
]

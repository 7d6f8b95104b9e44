"""The milter: pymilter callbacks, the pipeline that decides and plans header
edits, the verifier pool, the daemon."""

from __future__ import annotations

from smime_milter.mta.app import hostname
from smime_milter.mta.daemon import run
from smime_milter.mta.pipeline import Envelope, Examination, Runtime, examine, plan
from smime_milter.mta.pool import VerifierPool, VerifyFailure
from smime_milter.mta.privileges import StartupError

__all__ = [
    "Envelope", "Examination", "Runtime", "StartupError", "VerifierPool", "VerifyFailure",
    "examine", "hostname", "plan", "run",
]

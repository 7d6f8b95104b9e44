"""The milter: pymilter callbacks, the pipeline that decides and plans header
edits, in-process verification under a watchdog, the pre-forking daemon, its
metrics and health checks."""

from __future__ import annotations

from smime_milter.mta.app import hostname
from smime_milter.mta.daemon import run
from smime_milter.mta.health import Check, Health, check_health
from smime_milter.mta.metrics import MetricsError, MilterMetrics, scrape
from smime_milter.mta.pipeline import Envelope, Examination, Runtime, examine, plan
from smime_milter.mta.privileges import StartupError
from smime_milter.mta.verifying import InProcessVerifier, Job, VerifyFailure

__all__ = [
    "Check", "Envelope", "Examination", "Health", "InProcessVerifier", "Job", "MetricsError",
    "MilterMetrics", "Runtime", "StartupError", "VerifyFailure", "check_health", "examine",
    "hostname", "plan", "run", "scrape",
]

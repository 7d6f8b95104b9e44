"""The ``[release]`` settings: draft-and-release rules and how a released
message goes back to the MTA (owned here so release needs no config reader)."""

from __future__ import annotations

from dataclasses import dataclass

from smime_milter.release.rules import ReleaseRule

#: How ``smime-milter release`` hands a released message back to the MTA.
DEFAULT_SUBMIT = "sendmail:/usr/sbin/sendmail"


@dataclass(frozen=True, slots=True)
class ReleaseConfig:
    """MMHS draft-and-release: the rules (first match wins) and how released
    messages are re-submitted."""

    rules: tuple[ReleaseRule, ...] = ()
    #: ``sendmail:/path`` (run as ``sendmail -i -f SENDER -- RCPT...``) or
    #: ``smtp:host:port`` (plain SMTP to the local MTA).
    submit: str = DEFAULT_SUBMIT



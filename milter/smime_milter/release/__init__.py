"""MMHS draft-and-release: rules, assessment, countersigning (authorize), re-
submission, the MIXER mapping."""

from __future__ import annotations

from smime_milter.release.authorize import AuthorizeError, authorize
from smime_milter.release.mixer import (
    IpmsHeading,
    MixerError,
    from_x400,
    headers_from_message,
    to_x400,
)
from smime_milter.release.resubmit import (
    AlreadyReleased,
    PartlyRefused,
    ReleaseError,
    looks_like_record_id,
    prepare,
    record_id_of,
    release,
    submit,
)
from smime_milter.release.rules import (
    HOLD,
    ORIGINAL_RECIPIENTS_HEADER,
    RELEASE_STATUS_HEADER,
    Diversion,
    MessageContext,
    ReleaseRule,
    assess,
    divert,
    select_rule,
    status_stamp,
)
from smime_milter.release.settings import (
    DEFAULT_SUBMIT,
    ReleaseConfig,
    check_submit,
    read_release_section,
)

__all__ = [
    "DEFAULT_SUBMIT", "HOLD", "ORIGINAL_RECIPIENTS_HEADER", "RELEASE_STATUS_HEADER",
    "AlreadyReleased", "AuthorizeError", "Diversion", "IpmsHeading", "MessageContext",
    "MixerError", "PartlyRefused", "ReleaseConfig", "ReleaseError", "ReleaseRule", "assess",
    "authorize", "check_submit", "divert", "from_x400", "headers_from_message",
    "looks_like_record_id", "prepare", "read_release_section", "record_id_of", "release",
    "select_rule", "status_stamp", "submit", "to_x400"
]

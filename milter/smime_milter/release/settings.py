"""The ``[release]`` settings: draft-and-release rules and how a released
message goes back to the MTA, and the parser of ``[release]`` and its
``[[release.rules]]`` (owned here so release needs no config reader)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smime_milter.release.rules import HOLD, ReleaseRule
from smime_milter.settings import (
    Problems,
    Reader,
    address_or_domain_list,
    domain_list,
    plain_address,
    port_list,
    string_list,
)
from smime_milter.trust import TrustStoreError, load_certificates

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


_RULE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_submit(text: str) -> str:
    """``sendmail:/absolute/path`` or ``smtp:host:port`` (raises ValueError)."""
    kind, _, rest = text.partition(":")
    if kind == "sendmail" and rest.startswith("/"):
        return text
    host, _, port = rest.rpartition(":")
    if kind == "smtp" and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise ValueError(f"expected sendmail:/path or smtp:host:port, got {text!r}")


def read_release_section(problems: Problems, path: Path | None, text: str,
                         data: Mapping[str, Any]) -> ReleaseConfig:
    """``[release]`` and its ``[[release.rules]]`` (rule names unique);
    problems go to ``problems``."""
    reader = Reader(problems, path, text, "release", data)
    rules_data = reader.take("rules", list, [])
    submit = reader.choice("submit", check_submit, DEFAULT_SUBMIT)
    reader.finish()
    rules: list[ReleaseRule] = []
    for index, table in enumerate(rules_data):
        if not isinstance(table, dict):
            reader.report("rules", "expected [[release.rules]] tables")
            continue
        rule_reader = Reader(problems, path, text, "release.rules", table, index)
        rule = _release_rule(rule_reader, index)
        if rule_reader.failed("name"):
            continue
        if any(existing.name == rule.name for existing in rules):
            Reader(problems, path, text, "release.rules", {}, index).report(
                "name", f"rule name {rule.name!r} is used twice")
        rules.append(rule)
    return ReleaseConfig(rules=tuple(rules), submit=submit)


def _release_rule(reader: Reader, index: int) -> ReleaseRule:
    """One rule; after a problem (reported) the rule holds placeholders."""
    name = reader.take("name", str, f"rule{index + 1}")
    if not _RULE_NAME.fullmatch(name):
        reader.report("name", "use letters, digits, '.', '_' and '-' (at most 64)")
    releasers = address_or_domain_list(reader, "releasers")
    if not releasers and not reader.failed("releasers"):
        reader.report("releasers", "required: the addresses or domains that may release")
    divert_to = reader.take("divert_to", str, None)
    if divert_to is None:
        if not reader.failed("divert_to"):
            reader.report("divert_to", f"required: a release-officer address or {HOLD!r}")
        divert_to = HOLD
    elif divert_to != HOLD and (not plain_address(divert_to)
                                or any(c in divert_to for c in "<>, \t\r\n")):
        reader.report("divert_to", f"not an address or {HOLD!r}: {divert_to!r}")
    if isinstance(reader.data.get("required"), float):
        reader.report("required", "expected an integer")
        reader.data.pop("required")
    required = int(reader.number("required", 1, 1, 100))
    everything = reader.take("all", bool, False)
    senders = address_or_domain_list(reader, "senders")
    recipient_domains = domain_list(reader, "recipient_domains")
    daemons = string_list(reader, "daemons")
    ports = port_list(reader, "ports")
    selectors = senders or recipient_domains or daemons or ports
    if not reader.failed("all", "senders", "recipient_domains", "daemons", "ports"):
        if everything and selectors:
            reader.report("all", "all = true applies to every message: drop the other "
                                 "selectors or all")
        if not everything and not selectors:
            reader.report("", "a rule needs a selector (senders, recipient_domains, "
                              "daemons, ports) or all = true")
    releaser_cas = _certificate_digests(reader, "releaser_cas")
    reader.finish()
    return ReleaseRule(
        name=name, releasers=releasers, divert_to=divert_to, required=required,
        all=everything, senders=senders, recipient_domains=recipient_domains,
        daemons=daemons, ports=ports, releaser_cas=releaser_cas,
    )


def _certificate_digests(reader: Reader, key: str) -> tuple[bytes, ...]:
    paths = reader.paths(key, ())
    # Read now, whoever loads the file: a missing file is always a problem.
    if not reader.existing(key, paths):
        return ()
    try:
        digests = tuple(cert.sha256 for cert in load_certificates(paths))
    except TrustStoreError as exc:
        reader.report(key, str(exc))
        return ()
    if paths and not digests:
        # No CA would silently mean "any CA": the restriction must not vanish.
        reader.report(key, "no CA certificates found in " + ", ".join(map(str, paths)))
    return digests

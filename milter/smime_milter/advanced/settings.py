"""The ``[advanced]`` settings: key stores, who may sign as whom, which
connections are submitters, automatic rules, and the parser of the section
(owned here so the submission code needs no config reader)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from smime_milter.mail import mime
from smime_milter.settings import (
    Problems,
    Reader,
    address_or_domain_list,
    network_list,
    one_of,
    string_list,
)

#: ``encrypt`` values of an automatic rule.
ENCRYPT_MODES = ("never", "when-possible", "always")


@dataclass(frozen=True, slots=True)
class AutoRule:
    """Sign and/or encrypt every submitted message of some senders without a
    request header (first matching rule wins)."""

    senders: tuple[str, ...]
    sign: bool = False
    #: ``never``; ``when-possible`` (only when every recipient has a valid
    #: certificate, else sent as it is); ``always`` (else rejected).
    encrypt: str = "never"


@dataclass(frozen=True, slots=True)
class AdvancedConfig:
    """Server-side signing and encryption (JMAP smime-advanced): the key and
    certificate stores, who may sign as whom, and which connections are
    submitters whose ``SMIME-Advanced`` request header is honoured."""

    #: Directory of signing identities (PEM key+certificates, or PKCS#12).
    keys: Path | None = None
    #: File holding the PKCS#12 password (first line).
    keys_password_file: Path | None = None
    #: Directory of recipients' certificates (PEM or DER files).
    addressbook: Path | None = None
    #: Also use signer certificates learned from inbound signed/verified mail.
    learn: bool = True
    #: (account, addresses-or-domains it may sign as); nobody else may sign.
    accounts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: Postfix ``{daemon_name}`` values of submission services.
    submission_daemons: tuple[str, ...] = ()
    #: Client networks that are submitters (a JMAP server submitting by SMTP).
    submission_clients: tuple[IPv4Network | IPv6Network, ...] = ()
    #: Connections with an authenticated SASL user are submitters.
    submission_sasl: bool = True
    #: The account of a submitter connection without a SASL login; None: such
    #: connections may encrypt but not sign.
    client_account: str | None = None
    auto: tuple[AutoRule, ...] = ()

    def may_sign_as(self, account: str, sender: str) -> bool:
        """``[advanced.accounts]``: the account lists the address or its domain;
        an account that is not listed may not sign at all."""
        for name, senders in self.accounts:
            if name == account:
                return mime.address_in(sender, senders)
        return False


_ACCOUNT = re.compile(r"[A-Za-z0-9_.@+-]{1,256}")


def read_advanced_section(problems: Problems, path: Path | None, text: str,
                          data: Mapping[str, Any]) -> AdvancedConfig:
    """``[advanced]``, its ``[advanced.accounts]`` and ``[[advanced.auto]]``;
    problems go to ``problems``."""
    reader = Reader(problems, path, text, "advanced", data)
    defaults = AdvancedConfig()
    accounts_table = reader.take("accounts", dict, {})
    auto_tables = reader.take("auto", list, [])
    client_account = reader.optional_str("client_account")
    if client_account is not None and not _ACCOUNT.fullmatch(client_account):
        reader.report("client_account", f"not an account name: {client_account!r}")
        client_account = None
    keys = reader.optional_path("keys", must_exist=True)
    password_file = reader.optional_path("keys_password_file", must_exist=True)
    addressbook = reader.optional_path("addressbook", must_exist=True)
    learn = reader.take("learn", bool, defaults.learn)
    daemons = string_list(reader, "submission_daemons")
    clients = network_list(reader, "submission_clients")
    sasl = reader.take("submission_sasl", bool, defaults.submission_sasl)
    reader.finish()
    accounts_reader = Reader(problems, path, text, "advanced.accounts", accounts_table)
    accounts = []
    for account in list(accounts_table):
        if not _ACCOUNT.fullmatch(account):
            accounts_reader.report(account, "not an account name (letters, digits, "
                                            "'.', '_', '-', '+', '@')")
            continue
        senders = address_or_domain_list(accounts_reader, account)
        if not senders:
            if not accounts_reader.failed(account):
                accounts_reader.report(account, "list the addresses or domains it may sign as")
            continue
        accounts.append((account, senders))
    rules = []
    for index, table in enumerate(auto_tables):
        if not isinstance(table, dict):
            reader.report("auto", "expected [[advanced.auto]] tables")
            continue
        rules.append(_auto_rule(Reader(problems, path, text, "advanced.auto", table, index)))
    return AdvancedConfig(
        keys=keys, keys_password_file=password_file, addressbook=addressbook, learn=learn,
        accounts=tuple(accounts), submission_daemons=daemons, submission_clients=clients,
        submission_sasl=sasl, client_account=client_account, auto=tuple(rules),
    )


def _auto_rule(reader: Reader) -> AutoRule:
    senders = address_or_domain_list(reader, "senders")
    if not senders and not reader.failed("senders"):
        reader.report("senders", "required: the addresses or domains the rule covers")
    rule = AutoRule(
        senders=senders,
        sign=reader.take("sign", bool, False),
        encrypt=reader.choice("encrypt", one_of(ENCRYPT_MODES), "never"),
    )
    reader.finish()
    if not rule.sign and rule.encrypt == "never" and not reader.failed("sign", "encrypt"):
        reader.report("", "the rule neither signs nor encrypts")
    return rule

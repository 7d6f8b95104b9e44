"""The ``[advanced]`` settings: key stores, who may sign as whom, which
connections are submitters, automatic rules (owned here so the submission
code needs no config reader)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from smime_milter.mail import mime

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



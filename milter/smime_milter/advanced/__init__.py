"""Signing and encrypting on the user's behalf (JMAP smime-advanced):
composition, key store, address book, submission."""

from __future__ import annotations

from smime_milter.advanced import compose, submission
from smime_milter.advanced.addressbook import AddressBook
from smime_milter.advanced.compose import (
    Advanced,
    AdvancedError,
    AdvancedNotConfigured,
    Composed,
    InvalidEmail,
    OuterField,
    SignedSenderNotAllowed,
    ValidEncryptionKeyNotFound,
    apply,
    configure,
    sender_of,
)
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.advanced.settings import (
    ENCRYPT_MODES,
    AdvancedConfig,
    AutoRule,
    read_advanced_section,
)
from smime_milter.advanced.submission import REQUEST_HEADER

__all__ = [
    "ENCRYPT_MODES", "REQUEST_HEADER", "AddressBook", "Advanced", "AdvancedConfig",
    "AdvancedError", "AdvancedNotConfigured", "AutoRule", "Composed", "InvalidEmail",
    "OuterField", "SignedSenderNotAllowed", "SigningKeys", "ValidEncryptionKeyNotFound",
    "apply", "compose", "configure", "read_advanced_section", "sender_of", "submission"
]

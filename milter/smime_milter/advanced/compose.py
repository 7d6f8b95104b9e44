"""Sign and encrypt a message on its author's behalf (JMAP ``smime-advanced``).

draft-ietf-jmap-smime-sender-extensions lets a client ask the server to
S/MIME sign and/or encrypt a message it creates. :class:`Advanced` does that
for a JMAP server (``Email/set``) and for the milter's submission mode:

* the signer is the single address of the Sender field, else of From;
* signing uses that address's key from the key store, and only when the
  account may sign as it; the result is application/pkcs7-mime signed-data
  (opaque) or multipart/signed, SHA-256 or stronger, with the chain,
  signing-time and S/MIME capabilities;
* encryption goes to the sender and every recipient, each with a valid
  certificate from the address book, AES-256-CBC; sign first, then encrypt;
* header protection follows RFC 9788 (see ``protect``).

Failures raise :class:`AdvancedError` subclasses whose ``jmap_error`` is the
JMAP SetError type to return.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Protocol

from cryptography import x509

from smime_milter.cms import (
    EncryptionError,
    EncryptionRecipient,
    SigningIdentity,
    build_signer_info,
    detached_signed_data,
    encapsulated_signed_data,
    enveloped_data,
)
from smime_milter.errors import SmimeMilterError
from smime_milter.mail import folded, mime, protect

__all__ = [
    "Advanced",
    "AdvancedError",
    "Composed",
    "InvalidEmail",
    "OuterField",
    "SignedSenderNotAllowed",
    "ValidEncryptionKeyNotFound",
    "apply",
    "configure",
]

#: RSAES-OAEP in a recipient's SMIMECapabilities (RFC 8551 §2.7.1, RFC 4055).
OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
_MICALG = {"sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: RFC 5322 §2.1.1: lines longer than this are illegal; we fold before it.
_MAX_LINE = 998


class AdvancedError(SmimeMilterError):
    """The message cannot be built as asked; ``jmap_error`` says why to a
    JMAP client (an RFC 8620 SetError type)."""

    jmap_error: ClassVar[str] = "invalidEmail"


class AdvancedNotConfigured(AdvancedError):
    """The module-level :func:`apply` was called before :func:`configure`: a
    fault of the embedding server, not of the message."""

    jmap_error = "serverFail"


class InvalidEmail(AdvancedError):
    """The message is not one we can sign or encrypt (sender, addresses, MIME)."""

    jmap_error = "invalidEmail"


class SignedSenderNotAllowed(AdvancedError):
    """The account may not sign as the sender, or the sender has no usable key."""

    jmap_error = "signedSenderNotAllowed"


class ValidEncryptionKeyNotFound(AdvancedError):
    """Some recipient has no valid (unexpired, unrevoked) encryption certificate."""

    jmap_error = "validEncryptionKeyNotFound"

    def __init__(self, recipients: Sequence[str]) -> None:
        self.recipients = tuple(recipients)
        super().__init__("no valid encryption certificate for " + ", ".join(self.recipients))


class SigningKeys(Protocol):
    def identity_for(self, address: str, at: datetime) -> SigningIdentity | None: ...


class RecipientCertificates(Protocol):
    def lookup(self, address: str, at: datetime) -> _Found | None: ...


class _Found(Protocol):
    # Read-only, so a frozen dataclass (addressbook.RecipientCertificate) fits.
    @property
    def certificate(self) -> x509.Certificate: ...
    @property
    def capabilities(self) -> tuple[str, ...]: ...


SenderPolicy = Callable[[str, str], bool]
"""``allowed(account, sender_address)``: may this account sign as that sender?"""


@dataclass(frozen=True, slots=True)
class OuterField:
    """One field of the resulting message's header section; ``origin`` is the
    index of the original field it keeps (with ``value`` possibly changed),
    None for a field we added. The milter turns this into header edits."""

    name: str
    value: str
    origin: int | None = None


@dataclass(frozen=True, slots=True)
class Composed:
    """The signed and/or encrypted message: header fields and CRLF body."""

    headers: tuple[OuterField, ...]
    body: bytes
    signer: str | None = None
    recipients: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        lines = [_field_line(f.name, f.value) for f in self.headers]
        return b"".join(lines) + b"\r\n" + self.body


@dataclass(frozen=True, slots=True)
class _Message:
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Advanced:
    """Builds signed/encrypted messages from the configured stores."""

    def __init__(
        self,
        keys: SigningKeys | None,
        addressbook: RecipientCertificates | None,
        may_sign_as: SenderPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keys
        self._addressbook = addressbook
        self._may_sign_as = may_sign_as
        self._clock = clock

    def apply(
        self,
        message_bytes: bytes,
        smimeSign: bool = False,  # the draft's argument names
        smimeEncrypt: bool = False,
        headerProtect: bool = True,
        smimeSignOpaque: bool = True,
        account: str | None = None,
    ) -> bytes:
        """The message signed and/or encrypted as Email/set asks (draft §4).

        ``account`` is the authenticated JMAP account; None means the caller
        has already decided that the sender is the account's own."""
        return self.compose(
            message_bytes, sign=smimeSign, encrypt=smimeEncrypt,
            header_protect=headerProtect, opaque=smimeSignOpaque, account=account,
        ).to_bytes()

    def compose(
        self,
        message_bytes: bytes,
        *,
        sign: bool,
        encrypt: bool,
        header_protect: bool = True,
        opaque: bool = True,
        account: str | None = None,
        recipients: Sequence[str] | None = None,
        require_account: bool = False,
    ) -> Composed:
        """Like :meth:`apply`, as header fields and body; ``recipients``
        replaces To/Cc/Bcc as the encryption recipients (the milter passes
        the envelope recipients, which include Bcc). With ``require_account``
        an unknown account (None) may not sign."""
        message = _parse(message_bytes)
        if not sign and not encrypt:
            return Composed(
                tuple(OuterField(n, v, i) for i, (n, v) in enumerate(message.headers)),
                mime.canonicalize(message.body),
            )
        at = self._clock()
        sender = _sender(message.headers)
        if sign and account is None and require_account:
            raise SignedSenderNotAllowed(f"no account on this connection may sign as {sender}")
        identity = self._identity(sender, account, at) if sign else None
        targets = self._recipients(message.headers, sender, recipients, at) if encrypt else ()

        outer: list[OuterField] = []
        protected: list[tuple[str, str]] = []
        content_fields: list[tuple[str, str]] = []
        for index, (name, value) in enumerate(message.headers):
            if protect.is_structural(name):
                if name.lower() != "mime-version":
                    content_fields.append((name, value))
                continue
            if encrypt and header_protect:
                outside = protect.hcp_baseline(name, value)
                if outside is not None:
                    outer.append(OuterField(name, outside, index))
            else:
                outer.append(OuterField(name, value, index))
        payload_fields, payload_body = _payload_entity(content_fields, message.body)
        if header_protect:
            protected = list(protect.protected_fields(message.headers))
            mode = "cipher" if encrypt else "clear"
            payload_fields = [
                (n, protect.with_hp_parameter(v, mode) if n.lower() == "content-type" else v)
                for n, v in payload_fields
            ]
            if encrypt:
                protected += protect.hp_outer_fields([(f.name, f.value) for f in outer])
        entity = _entity(payload_fields[:1] + protected + payload_fields[1:], payload_body)

        if identity is not None:
            entity = _signed(entity, identity, opaque=opaque, at=at)
        if encrypt:
            try:
                envelope = enveloped_data(entity, [t for _, t in targets])
            except EncryptionError as exc:
                raise ValidEncryptionKeyNotFound([str(exc)]) from exc
            entity = _pkcs7_entity("enveloped-data", envelope)
        top_fields, top_body = _split_entity(entity)
        outer.append(OuterField("MIME-Version", "1.0"))
        outer.extend(OuterField(n, v) for n, v in top_fields)
        return Composed(
            tuple(outer), top_body, signer=sender if sign else None,
            recipients=tuple(a for a, _ in targets),
        )

    # -- stores ------------------------------------------------------------

    def _identity(self, sender: str, account: str | None, at: datetime) -> SigningIdentity:
        if account is not None and not self._may_sign_as(account, sender):
            raise SignedSenderNotAllowed(f"account {account} may not sign as {sender}")
        identity = self._keys.identity_for(sender, at) if self._keys is not None else None
        if identity is None:
            raise SignedSenderNotAllowed(f"no valid signing key for {sender}")
        return identity

    def _recipients(
        self,
        headers: Sequence[tuple[str, str]],
        sender: str,
        envelope: Sequence[str] | None,
        at: datetime,
    ) -> tuple[tuple[str, EncryptionRecipient], ...]:
        wanted = [sender, *(envelope if envelope is not None else _header_recipients(headers))]
        addresses = list(dict.fromkeys(_normalised(a) for a in wanted))
        found: list[tuple[str, EncryptionRecipient]] = []
        missing: list[str] = []
        for address in addresses:
            entry = self._addressbook.lookup(address, at) if self._addressbook else None
            if entry is None:
                missing.append(address)
            else:
                oaep = OID_RSAES_OAEP in entry.capabilities
                found.append((address, EncryptionRecipient(entry.certificate, oaep=oaep)))
        if missing:
            raise ValidEncryptionKeyNotFound(missing)
        return tuple(found)


# --- message parsing --------------------------------------------------------


def _parse(message_bytes: bytes) -> _Message:
    try:
        entity = mime.parse_entity(message_bytes)
    except mime.MimeError as exc:
        raise InvalidEmail(f"the message cannot be parsed: {exc}") from exc
    if not entity.headers:
        raise InvalidEmail("the message has no header fields")
    return _Message(entity.headers, entity.body)


def _sender(headers: Sequence[tuple[str, str]]) -> str:
    """Draft §4: the first address of the last Sender field if any, else of
    From; several fields or several addresses in the chosen one are invalid."""
    for name in ("sender", "from"):
        values = [value for field, value in headers if field.lower() == name]
        if not values:
            continue
        if len(values) > 1:
            raise InvalidEmail(f"{len(values)} {name.title()} fields; S/MIME needs exactly one")
        try:
            addresses = mime.address_list(values[0])
        except mime.MimeError as exc:
            raise InvalidEmail(f"{name.title()} is not an address: {exc}") from exc
        if len(addresses) != 1:
            raise InvalidEmail(f"{name.title()} holds {len(addresses)} addresses; "
                               "S/MIME needs exactly one")
        return addresses[0].text
    raise InvalidEmail("the message has neither Sender nor From")


def sender_of(headers: Sequence[tuple[str, str]]) -> str | None:
    """The address a signature would be made for, or None when the message
    has no single one (see :func:`_sender`)."""
    try:
        return _sender(headers)
    except InvalidEmail:
        return None


def _header_recipients(headers: Sequence[tuple[str, str]]) -> list[str]:
    found: list[str] = []
    for field, value in headers:
        if field.lower() not in ("to", "cc", "bcc"):
            continue
        if not value.strip():
            continue  # an empty Bcc: (RFC 5322 §3.6.3) names nobody
        try:
            found.extend(address.text for address in mime.address_list(value))
        except mime.MimeError as exc:
            raise InvalidEmail(f"{field} is not an address list: {exc}") from exc
    return found


def _normalised(address: str) -> str:
    parsed = mime.parse_address(address)
    if parsed is None:
        raise InvalidEmail(f"not an address: {address!r}")
    return parsed.text


# --- MIME assembly ----------------------------------------------------------


def _field_line(name: str, value: str) -> bytes:
    line = f"{name}: {value}"
    if len(line) > _MAX_LINE:
        line = f"{name}: " + folded(value, _MAX_LINE - len(name) - 2).replace("\n", "\r\n")
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


def _entity(fields: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A MIME entity in canonical form (RFC 8551 §3.1.1): CRLF line ends."""
    return b"".join(_field_line(n, v) for n, v in fields) + b"\r\n" + body


def _split_entity(entity: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = entity.partition(b"\r\n\r\n")
    fields = [tuple(line.decode("utf-8", "surrogateescape").split(": ", 1))
              for line in head.split(b"\r\n")]
    return [(n, v) for n, v in fields], body


def _payload_entity(
    content_fields: list[tuple[str, str]], body: bytes
) -> tuple[list[tuple[str, str]], bytes]:
    """The original body with its Content-* fields, Content-Type first and
    explicit, in canonical form. A non-multipart body that is not 7-bit safe
    is re-encoded as base64, so that no relay's conversion can break the
    signature (RFC 8551 §3.1.3)."""
    content_type = next((v for n, v in content_fields if n.lower() == "content-type"), None)
    encoding = next(
        (v.strip().lower() for n, v in content_fields
         if n.lower() == "content-transfer-encoding"), "7bit",
    )
    others = [(n, v) for n, v in content_fields
              if n.lower() not in ("content-type", "content-transfer-encoding")]
    if content_type is None:
        content_type = "text/plain; charset=us-ascii"
    parsed = mime.parse_content_type(content_type)
    if parsed is None:
        raise InvalidEmail(f"malformed Content-Type: {content_type[:100]!r}")
    multipart = parsed.mime_type.startswith("multipart/")
    if not multipart and encoding in ("8bit", "binary", "7bit") and not _seven_bit_safe(
            body, binary=encoding == "binary"):
        if encoding != "binary":
            body = mime.canonicalize(body)
        return ([("Content-Type", content_type),
                 ("Content-Transfer-Encoding", "base64"), *others], _base64_lines(body))
    fields = [("Content-Type", content_type)]
    if encoding != "7bit" or any(n.lower() == "content-transfer-encoding"
                                 for n, _ in content_fields):
        fields.append(("Content-Transfer-Encoding", encoding))
    return fields + others, mime.canonicalize(body)


def _seven_bit_safe(body: bytes, *, binary: bool) -> bool:
    if binary or not body.isascii() or b"\0" in body:
        return False
    return all(len(line) <= _MAX_LINE for line in _LINE_END.split(body))


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


def _pkcs7_entity(smime_type: str, der: bytes) -> bytes:
    return _entity(
        [
            ("Content-Type", f"application/pkcs7-mime; smime-type={smime_type}; "
                             'name="smime.p7m"'),
            ("Content-Transfer-Encoding", "base64"),
            ("Content-Disposition", 'attachment; filename="smime.p7m"'),
        ],
        _base64_lines(der),
    )


def _signed(entity: bytes, identity: SigningIdentity, *, opaque: bool, at: datetime) -> bytes:
    info = build_signer_info(identity, entity, content_type="data", signing_time=at)
    if opaque:
        return _pkcs7_entity(
            "signed-data", encapsulated_signed_data(info, entity, identity.certificates_der))
    signature = detached_signed_data(info, identity.certificates_der)
    boundary = _boundary(entity)
    parts = (
        b"This is an S/MIME signed message.\r\n"
        + b"--" + boundary + b"\r\n" + entity + b"\r\n"
        + b"--" + boundary + b"\r\n"
        + _entity(
            [("Content-Type", 'application/pkcs7-signature; name="smime.p7s"'),
             ("Content-Transfer-Encoding", "base64"),
             ("Content-Disposition", 'attachment; filename="smime.p7s"')],
            _base64_lines(signature),
        )
        + b"\r\n--" + boundary + b"--\r\n"
    )
    content_type = (
        'multipart/signed; protocol="application/pkcs7-signature"; '
        f'micalg={_MICALG[identity.digest]}; boundary="{boundary.decode("ascii")}"'
    )
    return _entity([("Content-Type", content_type)], parts)


def _boundary(content: bytes) -> bytes:
    while True:
        boundary = b"----smime-" + secrets.token_hex(12).encode("ascii")
        if boundary not in content:
            return boundary


# --- the module-level API -----------------------------------------------------

_default: Advanced | None = None


def configure(advanced: Advanced | None) -> None:
    """Set the instance that :func:`apply` uses (``bootstrap.build_advanced``
    builds one from the configuration)."""
    global _default
    _default = advanced


def configured() -> Advanced | None:
    """The instance :func:`configure` set, if any."""
    return _default


def apply(
    message_bytes: bytes,
    smimeSign: bool = False,  # the draft's argument names
    smimeEncrypt: bool = False,
    headerProtect: bool = True,
    smimeSignOpaque: bool = True,
    account: str | None = None,
) -> bytes:
    """:meth:`Advanced.apply` on the configured instance. Nothing configured
    is an AdvancedError: this package does not read configuration files
    (``bootstrap.default_advanced()`` builds and configures the instance
    from the daemon's configuration)."""
    if _default is None:
        raise AdvancedNotConfigured(
            "no Advanced instance configured: call advanced.configure() first, "
            "or call smime_milter.bootstrap.default_advanced()")
    return _default.apply(
        message_bytes, smimeSign, smimeEncrypt, headerProtect, smimeSignOpaque, account)

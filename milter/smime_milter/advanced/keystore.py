"""Local users' signing identities, read once from a directory of key files.

Server-side signing needs the private key of every local sender it signs
for. They live in one directory the administrator fills: a ``*.pem`` file
holds one unencrypted private key with its certificate (and optionally the
chain), a ``*.p12``/``*.pfx`` file is PKCS#12. Everything is read and
checked when the store is loaded, so a broken or exposed file stops the
service at start instead of failing a message later; at message time only
the choice among an address's identities is left (:meth:`SigningKeys.identity_for`).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from smime_milter.cms import (
    PrivateKey,
    SigningError,
    SigningIdentity,
    certificate_der,
    files,
    signer_emails,
    signing_key,
)

PEM_SUFFIXES = (".pem",)
PKCS12_SUFFIXES = (".p12", ".pfx")
#: Permission bits that expose a key to other users: like ssh, a key (or its
#: directory, or the PKCS#12 password) anyone else can read or replace is refused.
_EXPOSED = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
_SIGNING_EKUS = frozenset({ExtendedKeyUsageOID.EMAIL_PROTECTION,
                           ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE})


class KeyStoreError(SigningError):
    """The key directory or one of its files cannot be used; the text names it."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """An identity with what choosing it at message time needs, computed at
    load so a malformed certificate fails the load, not a message."""

    identity: SigningIdentity
    source: Path
    not_before: datetime
    not_after: datetime
    #: Key usage and EKU (when present) allow S/MIME signing.
    can_sign: bool


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The signing identities of local users, indexed by certificate address."""

    entries: tuple[KeyEntry, ...] = ()
    _by_address: Mapping[str, tuple[KeyEntry, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[str, list[KeyEntry]] = {}
        for entry in self.entries:
            for address in _addresses(entry.identity.certificate):
                index.setdefault(address, []).append(entry)
        frozen = {address: tuple(found) for address, found in sorted(index.items())}
        object.__setattr__(self, "_by_address", MappingProxyType(frozen))

    @classmethod
    def load(cls, directory: Path, password_file: Path | None = None) -> SigningKeys:
        """Every ``*.pem``, ``*.p12`` and ``*.pfx`` file in ``directory``
        (other files are ignored). Raises KeyStoreError naming the file for a
        missing or exposed directory, an exposed or unreadable file, or one
        that does not hold exactly one usable key with its certificate."""
        directory = Path(directory)
        _check_private(directory, "key directory", want_dir=True)
        password = _read_password(password_file) if password_file is not None else None
        entries: list[KeyEntry] = []
        seen: set[bytes] = set()
        for path in sorted(directory.iterdir()):
            suffix = path.suffix.lower()
            if suffix not in (*PEM_SUFFIXES, *PKCS12_SUFFIXES):
                continue
            _check_private(path, "key file", want_dir=False)
            try:
                if suffix in PEM_SUFFIXES:
                    identities = _pem_identities(path)
                else:
                    identities = _pkcs12_identities(path, password)
            except KeyStoreError:
                raise
            except (SigningError, files.KeyFileError) as exc:  # these name the file already
                raise KeyStoreError(str(exc)) from exc
            for identity in identities:
                encoded = certificate_der(identity.certificate)
                if encoded not in seen:
                    seen.add(encoded)
                    entries.append(_entry(identity, path))
        return cls(tuple(entries))

    @property
    def identities(self) -> tuple[SigningIdentity, ...]:
        return tuple(entry.identity for entry in self.entries)

    def identity_for(self, address: str, at: datetime) -> SigningIdentity | None:
        """The identity to sign ``address``'s mail with at ``at``: among those
        whose certificate names the address (compared lowercased), is valid
        at ``at`` and allows S/MIME signing, the newest (latest notBefore),
        so a renewed certificate takes over as soon as it is valid."""
        usable = [
            entry for entry in self._by_address.get(address.lower(), ())
            if entry.can_sign and entry.not_before <= at <= entry.not_after
        ]
        if not usable:
            return None
        return max(usable, key=lambda entry: entry.not_before).identity

    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Every identity's certificate: local senders can be encrypted to,
        so the address book offers them too."""
        return tuple(entry.identity.certificate for entry in self.entries)

    def addresses(self) -> tuple[str, ...]:
        """Every address some certificate names, lowercased, sorted."""
        return tuple(self._by_address)


def _addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    parsed = asn1_x509.Certificate.load(certificate_der(certificate))
    return tuple(dict.fromkeys(email.lower() for email in signer_emails(parsed)))


def _check_private(path: Path, what: str, *, want_dir: bool) -> None:
    """Refuses a missing path, one of the wrong kind, or one other users can
    read or write (the owner's choice to share a key is not ours to honour)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise KeyStoreError(f"{what} {path}: {exc.strerror or exc}") from exc
    if want_dir and not stat.S_ISDIR(info.st_mode):
        raise KeyStoreError(f"{what} {path} is not a directory")
    if not want_dir and not stat.S_ISREG(info.st_mode):
        raise KeyStoreError(f"{what} {path} is not a regular file")
    if info.st_mode & _EXPOSED:
        raise KeyStoreError(
            f"{what} {path} is accessible to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); allow the owner only (chmod go-rw)"
        )


def _read_password(path: Path) -> bytes:
    _check_private(Path(path), "password file", want_dir=False)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"password file {path}: {exc.strerror or exc}") from exc
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            return data[: -len(ending)]
    return data


def _pem_identities(path: Path) -> list[SigningIdentity]:
    """One key and the certificates in any order: the key's certificate(s)
    become identities, the rest their chain."""
    data = files.read(path, "key")
    keys = len(files.private_key_blocks(data))
    if keys != 1:
        raise KeyStoreError(f"key file {path} holds {keys} private keys instead of one")
    key = signing_key(files.parse_private_key(path, data), path)
    return _identities(path, key, files.parse_certificates(path, data, "key"))


def _pkcs12_identities(path: Path, password: bytes | None) -> list[SigningIdentity]:
    data = files.read(path, "key")
    # Without a password file, try no password and the empty one: tools
    # differ in which of the two "no password" means.
    attempts = [password] if password is not None else [None, b""]
    key, certificates = files.parse_pkcs12(path, data, attempts)
    return _identities(path, signing_key(key, path), certificates)


def _identities(
    path: Path, key: PrivateKey, certificates: Iterable[x509.Certificate]
) -> list[SigningIdentity]:
    """An identity per certificate of ``key`` (a renewal may reuse the key),
    each with the file's other certificates as its chain, issuer first."""
    unique = {certificate_der(c): c for c in certificates}
    own: list[x509.Certificate] = []
    others: list[x509.Certificate] = []
    for certificate in unique.values():
        (own if files.key_matches(key, certificate) else others).append(certificate)
    if not own:
        raise KeyStoreError(f"key file {path}: no certificate matches its private key")
    try:
        return [SigningIdentity(key, leaf, _ordered_chain(leaf, others)) for leaf in own]
    except SigningError as exc:
        raise KeyStoreError(f"key file {path}: {exc}") from exc


def _ordered_chain(
    leaf: x509.Certificate, others: list[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """``others`` issuer first, as SigningIdentity documents; certificates
    that do not continue the path keep their file order at the end."""
    remaining = list(others)
    ordered: list[x509.Certificate] = []
    current = leaf
    while remaining:
        issuer = next((c for c in remaining if c.subject == current.issuer), None)
        if issuer is None or issuer.subject == current.subject:
            break
        ordered.append(issuer)
        remaining.remove(issuer)
        current = issuer
    return (*ordered, *remaining)


def _entry(identity: SigningIdentity, source: Path) -> KeyEntry:
    certificate = identity.certificate
    return KeyEntry(
        identity=identity,
        source=source,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        can_sign=_can_sign(certificate, source),
    )


def _can_sign(certificate: x509.Certificate, source: Path) -> bool:
    """RFC 8550 §4.4: keyUsage (when present) digitalSignature or
    nonRepudiation; extendedKeyUsage (when present) emailProtection or any."""
    try:
        extensions = certificate.extensions
    except ValueError as exc:  # duplicate or malformed extensions
        raise KeyStoreError(f"key file {source}: certificate extensions unreadable: {exc}") from exc
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        return False
    try:
        purposes = set(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return True
    return bool(purposes & _SIGNING_EKUS)

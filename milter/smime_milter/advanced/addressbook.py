"""Recipients' encryption certificates: where server-side encryption finds them.

Three sources, in order of trust in the choice (not in the certificate:
every candidate is validated the same way before use):

1. ``directory``: certificate files the administrator curates, which win
   because someone chose them deliberately;
2. ``keys``: the local signing identities' certificates, so a local sender
   can encrypt to itself (the copy in its Sent folder stays readable);
3. ``learned``: certificates senders proved they hold by signing mail that
   verified at delivery (see ``Store.learned_certificates``), newest first.

A candidate is usable only if it names the address and validates *now*
through the configured ChainValidator (anchors, expiry, revocation) with
the encryption usage rules; the first usable one wins, so a revoked newer
certificate falls back to an older still-valid one rather than to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from asn1crypto import x509 as asn1_x509
from cryptography import x509

from smime_milter.advanced.keystore import SigningKeys
from smime_milter.cms import cert_info, signer_emails
from smime_milter.errors import SmimeMilterError
from smime_milter.store import Store
from smime_milter.trust import ChainValidator, TrustStoreError, load_certificates

Source = Literal["directory", "keys", "learned"]


class AddressBookError(SmimeMilterError, ValueError):
    """The certificate directory cannot be read; the text names the file."""


@dataclass(frozen=True, slots=True)
class RecipientCertificate:
    """The certificate to encrypt to ``address`` with, and where it came from."""

    address: str
    certificate: x509.Certificate
    #: Dotted OIDs of the SMIMECapabilities the holder last signed with
    #: (learned certificates only): which content encryption it can read.
    capabilities: tuple[str, ...] = ()
    source: Source = "directory"


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A certificate with the certificates that may help chain it."""

    certificate: asn1_x509.Certificate
    extra: tuple[asn1_x509.Certificate, ...]
    source: Source
    capabilities: tuple[str, ...] = ()


class AddressBook:
    """Looks up encryption certificates; thread-safe (read-only after
    construction; the store and the validator are thread-safe)."""

    def __init__(
        self,
        directory: Path | None,
        keys: SigningKeys | None,
        store: Store | None,
        validator: ChainValidator,
    ) -> None:
        """Reads ``directory`` now (AddressBookError naming a bad file); the
        store is read at each lookup, so newly learned certificates count."""
        self._validator = validator
        self._store = store
        self._directory = _index(_directory_candidates(directory) if directory else ())
        self._keys = _index(_key_candidates(keys) if keys else ())

    def lookup(self, address: str, at: datetime) -> RecipientCertificate | None:
        """The certificate to encrypt to ``address`` at ``at``, or None when
        no source has a usable one."""
        wanted = address.lower()
        for candidate in self._candidates(wanted):
            if self._usable(wanted, candidate, at):
                return RecipientCertificate(
                    address=address,
                    certificate=x509.load_der_x509_certificate(candidate.certificate.dump()),
                    capabilities=candidate.capabilities,
                    source=candidate.source,
                )
        return None

    def lookup_all(
        self, addresses: Iterable[str], at: datetime
    ) -> tuple[dict[str, RecipientCertificate], tuple[str, ...]]:
        """Every address's certificate (keyed as given) and, in order, the
        addresses without one: encrypting needs all or none."""
        found: dict[str, RecipientCertificate] = {}
        missing: list[str] = []
        for address in dict.fromkeys(addresses):
            recipient = self.lookup(address, at)
            if recipient is None:
                missing.append(address)
            else:
                found[address] = recipient
        return found, tuple(missing)

    def _candidates(self, address: str) -> Iterator[_Candidate]:
        yield from self._directory.get(address, ())
        yield from self._keys.get(address, ())
        if self._store is not None:
            for learned in self._store.learned_certificates(address):
                try:
                    certificate = cert_info(learned.certificate).cert
                    chain = tuple(cert_info(der).cert for der in learned.chain)
                except ValueError:
                    continue  # not a certificate after all: nothing to encrypt to
                yield _Candidate(certificate, chain, "learned", learned.capabilities)

    def _usable(self, address: str, candidate: _Candidate, at: datetime) -> bool:
        if address not in _emails(candidate.certificate):
            return False
        result = self._validator.validate(
            candidate.certificate, candidate.extra, (), at, usage="encrypt"
        )
        return result.ok


def _emails(certificate: asn1_x509.Certificate) -> tuple[str, ...]:
    return tuple(email.lower() for email in signer_emails(certificate))


def _index(candidates: Iterable[_Candidate]) -> dict[str, tuple[_Candidate, ...]]:
    """Candidates per lowercased address, newest certificate (notBefore) first."""
    index: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        for address in dict.fromkeys(_emails(candidate.certificate)):
            index.setdefault(address, []).append(candidate)
    return {
        address: tuple(sorted(found, key=_not_before, reverse=True))
        for address, found in index.items()
    }


def _not_before(candidate: _Candidate) -> datetime:
    validity: datetime = candidate.certificate["tbs_certificate"]["validity"]["not_before"].native
    return validity


def _directory_candidates(directory: Path) -> list[_Candidate]:
    """Every certificate in ``directory``; the CA certificates among them help
    chain the others (a recipient's file often carries its intermediate)."""
    try:
        certificates = load_certificates([Path(directory)])
    except TrustStoreError as exc:
        raise AddressBookError(f"recipient certificates: {exc}") from exc
    cas = tuple(c for c in certificates if c.ca)
    return [
        _Candidate(certificate, tuple(ca for ca in cas if ca is not certificate), "directory")
        for certificate in certificates
        if not certificate.ca
    ]


def _key_candidates(keys: SigningKeys) -> list[_Candidate]:
    candidates = []
    for identity in keys.identities:
        certificate, *chain = (
            asn1_x509.Certificate.load(der) for der in identity.certificates_der
        )
        candidates.append(_Candidate(certificate, tuple(chain), "keys"))
    return candidates

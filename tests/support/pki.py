"""Test-time PKI: CAs, S/MIME leaf certificates and CRLs generated with ``cryptography``.

Nothing is checked in: every certificate is minted when the suite runs, relative to a
``now`` the test chooses, so validity-window tests never rot. Private keys are cached per
label because RSA key generation dominates the cost of building a PKI.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

#: keyUsage bits a normal S/MIME signing certificate carries.
SIGNING_KEY_USAGE: frozenset[str] = frozenset({"digital_signature", "content_commitment"})
#: keyUsage bits of a CA certificate.
CA_KEY_USAGE: frozenset[str] = frozenset({"key_cert_sign", "crl_sign"})
#: The default leaf EKU: id-kp-emailProtection.
EMAIL_EKU: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.EMAIL_PROTECTION,)

_KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
_KEY_USAGE_ALIASES = {"non_repudiation": "content_commitment"}

_EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "ec256": ec.SECP256R1,
    "ec384": ec.SECP384R1,
    "ec521": ec.SECP521R1,
}

_ORG = "smime-milter tests"

#: Names of the leaf identities on :class:`TestPki`, in a stable order.
LEAF_NAMES: tuple[str, ...] = (
    "rsa",
    "rsa_pss",
    "ec256",
    "ec384",
    "ec521",
    "ed25519",
    "expired",
    "not_yet_valid",
    "revoked",
    "wrong_eku",
    "no_eku",
    "bad_ku",
    "no_email",
    "dn_only",
    "untrusted",
    "weak_rsa",
)


# --------------------------------------------------------------------------- keys


def generate_key(key_type: str) -> PrivateKey:
    """A fresh private key; ``key_type`` is rsa, rsa<bits>, ec256/384/521, ed25519 or ed448."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type.startswith("rsa") and key_type[3:].isdigit():
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    if key_type in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[key_type]())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}")


@functools.cache
def cached_key(label: str, key_type: str) -> PrivateKey:
    """The same key for the same (label, type) for the whole run: RSA keygen is slow."""
    return generate_key(key_type)


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class Identity:
    """A private key with its certificate and the CA certificates needed to chain it.

    ``chain`` lists the issuing CAs from the direct issuer upwards, stopping before the
    self-signed root, i.e. exactly what a sender puts into SignedData.certificates.
    """

    key: PrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8, the form OpenSSL and the milter both load."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def bundle_pem(self) -> bytes:
        """Key PEM followed by certificate PEM: the file format ``--decrypt-key`` takes."""
        return self.key_pem + self.cert_pem

    @property
    def is_self_signed(self) -> bool:
        return self.cert.issuer == self.cert.subject

    @property
    def ski(self) -> bytes | None:
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return None
        return ext.value.digest


# --------------------------------------------------------------------------- issuance


def _key_usage(bits: frozenset[str] | set[str]) -> x509.KeyUsage:
    names = {_KEY_USAGE_ALIASES.get(b, b) for b in bits}
    unknown = names - set(_KEY_USAGE_BITS)
    if unknown:
        raise ValueError(f"unknown keyUsage bits {sorted(unknown)}")
    return x509.KeyUsage(**{b: b in names for b in _KEY_USAGE_BITS})


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384() if key.curve.key_size <= 384 else hashes.SHA512()
    return hashes.SHA256()


def _name(common_name: str, email_in_dn: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if email_in_dn:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email_in_dn))
    return x509.Name(attrs)


def issue(
    subject: x509.Name,
    key: PrivateKey,
    issuer: Identity | None,
    *,
    not_before: datetime,
    not_after: datetime,
    ca: bool = False,
    path_length: int | None = None,
    key_usage: frozenset[str] | set[str] | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    san: Sequence[x509.GeneralName] = (),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
    ski: bool = True,
    aki: bool = True,
) -> Identity:
    """Low-level issuance; ``issuer=None`` self-signs. ``None`` for ku/eku omits them."""
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(_key_usage(key_usage), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    if aki:
        issuer_public = issuer.cert.public_key() if issuer else public_key
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    signing_key = issuer.key if issuer else key
    cert = builder.sign(signing_key, _signing_hash(signing_key))  # type: ignore[arg-type]
    if issuer is None:
        chain: tuple[x509.Certificate, ...] = ()
    elif issuer.is_self_signed:
        chain = issuer.chain
    else:
        chain = (issuer.cert, *issuer.chain)
    return Identity(key=key, cert=cert, chain=chain)


def make_ca(
    common_name: str,
    issuer: Identity | None = None,
    key_type: str = "rsa",
    *,
    now: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    path_length: int | None = None,
    key_usage: frozenset[str] | set[str] | None = CA_KEY_USAGE,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    key: PrivateKey | None = None,
    key_label: str | None = None,
) -> Identity:
    """A CA (self-signed when ``issuer`` is None); use ``extensions`` for name constraints."""
    now = now or datetime.now(UTC)
    return issue(
        _name(common_name),
        key or cached_key(key_label or f"ca:{common_name}", key_type),
        issuer,
        not_before=not_before or now - timedelta(days=3650),
        not_after=not_after or now + timedelta(days=3650),
        ca=True,
        path_length=path_length,
        key_usage=key_usage,
        extensions=extensions,
    )


def make_leaf(
    issuer: Identity,
    email: str | None,
    key_type: str = "rsa",
    *,
    now: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    emails: Sequence[str] | None = None,
    email_in_dn: bool = False,
    extra_san: Sequence[x509.GeneralName] = (),
    common_name: str | None = None,
    subject: x509.Name | None = None,
    key_usage: frozenset[str] | set[str] | None = SIGNING_KEY_USAGE,
    eku: Sequence[x509.ObjectIdentifier] | None = EMAIL_EKU,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ca: bool = False,
    path_length: int | None = None,
    serial: int | None = None,
    ski: bool = True,
    aki: bool = True,
    key: PrivateKey | None = None,
    key_label: str | None = None,
) -> Identity:
    """An end-entity certificate for one-off tests.

    ``email`` becomes the only SAN rfc822Name unless ``emails`` lists them explicitly
    (``emails=[]`` means no SAN); ``email_in_dn`` also puts ``email`` in the subject as
    emailAddress. ``key_usage``/``eku`` of None omit the extension. The key is cached on
    ``key_label`` (default: key type + email), so pass ``key`` or a new label for a
    distinct key.
    """
    now = now or datetime.now(UTC)
    san_emails = list(emails) if emails is not None else ([email] if email else [])
    san: list[x509.GeneralName] = [x509.RFC822Name(e) for e in san_emails]
    san.extend(extra_san)
    if subject is None:
        subject = _name(common_name or email or "No Email Leaf", email if email_in_dn else None)
    return issue(
        subject,
        key or cached_key(key_label or f"leaf:{email}", key_type),
        issuer,
        not_before=not_before or now - timedelta(days=30),
        not_after=not_after or now + timedelta(days=365),
        ca=ca,
        path_length=path_length,
        key_usage=key_usage,
        eku=eku,
        san=san,
        extensions=extensions,
        serial=serial,
        ski=ski,
        aki=aki,
    )


def make_crl(
    issuer: Identity,
    revoked: Sequence[tuple[x509.Certificate, datetime]] = (),
    *,
    this_update: datetime,
    next_update: datetime,
    number: int = 1,
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
) -> bytes:
    """A DER CRL from ``issuer`` listing (certificate, revocation date) pairs."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.cert.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    for cert, when in revoked:
        entry = (
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(when)
        )
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(issuer.key, _signing_hash(issuer.key))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)


def crl_pem(der: bytes) -> bytes:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- the PKI


@dataclass(frozen=True)
class TestPki:
    """The standard test PKI: root -> intermediate -> leaves, plus an untrusted root.

    Every leaf except ``untrusted`` is issued by ``intermediate``; see :data:`LEAF_NAMES`.
    """

    __test__ = False  # not a pytest test class despite the name

    now: datetime
    root: Identity
    intermediate: Identity
    other_root: Identity
    rsa: Identity
    rsa_pss: Identity
    ec256: Identity
    ec384: Identity
    ec521: Identity
    ed25519: Identity
    expired: Identity
    not_yet_valid: Identity
    revoked: Identity
    wrong_eku: Identity
    no_eku: Identity
    bad_ku: Identity
    no_email: Identity
    dn_only: Identity
    untrusted: Identity
    weak_rsa: Identity
    crl: bytes
    crl_empty: bytes
    root_crl: bytes

    @property
    def leaves(self) -> dict[str, Identity]:
        return {name: getattr(self, name) for name in LEAF_NAMES}

    @property
    def ca_bundle_pem(self) -> bytes:
        """root + intermediate: the CAfile for openssl cross-checks."""
        return self.root.cert_pem + self.intermediate.cert_pem

    def write(self, dirpath: Path | str) -> dict[str, Path]:
        """Write PEM/DER files into ``dirpath``; returns them keyed by file name.

        Files: root.pem, intermediate.pem, other_root.pem, ca_bundle.pem, crl.der/.pem,
        crl_empty.der/.pem, root_crl.der/.pem and ``<leaf>.pem`` (key PEM + cert PEM).
        """
        out = Path(dirpath)
        out.mkdir(parents=True, exist_ok=True)
        blobs: dict[str, bytes] = {
            "root.pem": self.root.cert_pem,
            "intermediate.pem": self.intermediate.cert_pem,
            "other_root.pem": self.other_root.cert_pem,
            "ca_bundle.pem": self.ca_bundle_pem,
        }
        for crl_name in ("crl", "crl_empty", "root_crl"):
            der = getattr(self, crl_name)
            blobs[f"{crl_name}.der"] = der
            blobs[f"{crl_name}.pem"] = crl_pem(der)
        for name, ident in self.leaves.items():
            blobs[f"{name}.pem"] = ident.bundle_pem
        paths: dict[str, Path] = {}
        for filename, data in blobs.items():
            path = out / filename
            path.write_bytes(data)
            paths[filename] = path
        return paths


@functools.lru_cache(maxsize=8)
def build_pki(now: datetime) -> TestPki:
    """Build the standard PKI relative to ``now`` (cached: the result is immutable)."""
    if now.tzinfo is None:
        raise ValueError("build_pki needs an aware datetime")
    day = timedelta(days=1)
    root = make_ca("Test Root CA", now=now, key_label="root")
    intermediate = make_ca(
        "Test Intermediate CA",
        root,
        now=now,
        path_length=0,
        key_label="intermediate",
        not_before=now - 1825 * day,
        not_after=now + 1825 * day,
    )
    other_root = make_ca("Untrusted Root CA", now=now, key_label="other_root")

    def leaf(label: str, email: str | None, key_type: str = "rsa", **kw: Any) -> Identity:
        return make_leaf(intermediate, email, key_type, now=now, key_label=f"pki:{label}", **kw)

    revoked = leaf("revoked", "revoked@example.com")
    return TestPki(
        now=now,
        root=root,
        intermediate=intermediate,
        other_root=other_root,
        rsa=leaf("rsa", "alice@example.com"),
        rsa_pss=leaf("rsa_pss", "pss@example.com"),
        ec256=leaf("ec256", "ec256@example.com", "ec256"),
        ec384=leaf("ec384", "ec384@example.com", "ec384"),
        ec521=leaf("ec521", "ec521@example.com", "ec521"),
        ed25519=leaf("ed25519", "ed@example.com", "ed25519"),
        expired=leaf(
            "expired",
            "expired@example.com",
            not_before=now - 400 * day,
            not_after=now - 10 * day,
        ),
        not_yet_valid=leaf(
            "not_yet_valid",
            "future@example.com",
            not_before=now + 10 * day,
            not_after=now + 400 * day,
        ),
        revoked=revoked,
        wrong_eku=leaf("wrong_eku", "wrongeku@example.com", eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        no_eku=leaf("no_eku", "noeku@example.com", eku=None),
        bad_ku=leaf("bad_ku", "badku@example.com", key_usage={"key_encipherment"}),
        no_email=leaf("no_email", None, common_name="No Email Leaf"),
        dn_only=leaf("dn_only", "dn@example.com", emails=[], email_in_dn=True),
        untrusted=make_leaf(
            other_root, "untrusted@example.com", now=now, key_label="pki:untrusted"
        ),
        weak_rsa=leaf("weak_rsa", "weak@example.com", "rsa1024"),
        crl=make_crl(
            intermediate,
            [(revoked.cert, now - 5 * day)],
            this_update=now - day,
            next_update=now + 30 * day,
        ),
        crl_empty=make_crl(
            intermediate, this_update=now - day, next_update=now + 30 * day, number=2
        ),
        root_crl=make_crl(root, this_update=now - day, next_update=now + 30 * day),
    )

"""Certificate path validation at a moment T (RFC 5280 / RFC 8550), with a cache.

pyhanko-certvalidator does path building, policy processing, name
constraints and CRL checking at a past moment. A full validation costs a few
milliseconds, so results are cached: the key is the chain's fingerprints,
the trust store generation, the revocation mode and a time bucket; positive
results are additionally re-checked against the path's validity window so a
cached answer can never outlive a certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from asn1crypto import crl as asn1_crl
from asn1crypto import x509
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator import errors as cv_errors
from pyhanko_certvalidator.policy_decl import (
    NO_REVOCATION,
    REQUIRE_REVINFO,
    CertRevTrustPolicy,
    DisallowWeakAlgorithmsPolicy,
    FreshnessReqType,
    RevocationCheckingPolicy,
    RevocationCheckingRule,
)
from pyhanko_certvalidator.registry import SimpleTrustManager

from smime_milter.cms import files
from smime_milter.errors import SmimeMilterError
from smime_milter.model import ChainResult, RevocationMode

CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")
CRL_SUFFIXES = (".pem", ".crl", ".der", ".r0")

_EE_ONLY_REVINFO = RevocationCheckingPolicy(
    ee_certificate_rule=RevocationCheckingRule.CRL_OR_OCSP_REQUIRED,
    intermediate_ca_cert_rule=RevocationCheckingRule.NO_CHECK,
)
#: "Any age" for CRLs whose nextUpdate has passed (see ChainValidator._policies).
_ANY_AGE = timedelta(days=100 * 365)

#: What the leaf certificate is validated for: verifying a signature it made
#: ("sign") or encrypting to its holder ("encrypt"); RFC 8550 §4.4 asks
#: different key usages of each.
Usage = Literal["sign", "encrypt"]
#: Smallest RSA key a message is encrypted to (RFC 8551 §2.7 and §4.1).
MIN_ENCRYPTION_RSA_BITS = 2048
#: Curves ECDH key agreement (RFC 5753) is accepted with: those we sign with.
ENCRYPTION_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


class TrustStoreError(SmimeMilterError, ValueError):
    """A trust anchor, intermediate or CRL file could not be used."""


def _der_blobs(path: Path, kind: str) -> list[bytes]:
    blobs = files.der_blobs(path.read_bytes())
    if not blobs:
        raise TrustStoreError(f"{path}: empty {kind} file")
    return blobs


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if path.is_file():
        return [path]
    raise TrustStoreError(f"{path}: no such file or directory")


def parse_certificates(blobs: Iterable[bytes], where: str) -> tuple[x509.Certificate, ...]:
    """Certificates from DER blobs (the system anchors), each checked to be readable."""
    found: dict[bytes, x509.Certificate] = {}
    for der in blobs:
        try:
            cert = x509.Certificate.load(der)
            _ = cert.subject.native, cert.public_key.native
        except (ValueError, TypeError) as exc:
            raise TrustStoreError(f"{where}: holds a certificate that cannot be read") from exc
        found.setdefault(cert.sha256, cert)
    return tuple(found.values())


def load_certificates(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    """Certificates from PEM (several per file) or DER files and directories."""
    found: dict[bytes, x509.Certificate] = {}
    for path in paths:
        for file in _files(Path(path), CERT_SUFFIXES):
            try:
                for der in _der_blobs(file, "certificate"):
                    cert = x509.Certificate.load(der)
                    _ = cert.subject.native, cert.public_key.native
                    found.setdefault(cert.sha256, cert)
            except (ValueError, TypeError, OSError) as exc:
                raise TrustStoreError(f"{file}: not a certificate file ({exc})") from exc
    return tuple(found.values())


def load_crls(paths: Iterable[Path]) -> tuple[bytes, ...]:
    """CRLs (DER) from PEM/DER files and directories."""
    found: list[bytes] = []
    for path in paths:
        for file in _files(Path(path), CRL_SUFFIXES):
            try:
                for der in _der_blobs(file, "CRL"):
                    _ = asn1_crl.CertificateList.load(der)["tbs_cert_list"]["issuer"].native
                    found.append(der)
            except (ValueError, TypeError, OSError) as exc:
                raise TrustStoreError(f"{file}: not a CRL file ({exc})") from exc
    return tuple(found)


@dataclass(frozen=True, slots=True)
class CrlValidity:
    """When one configured CRL was issued and when its issuer promised the
    next one: what ``smime-milter status`` checks for a CRL fetch job that stopped."""

    file: Path
    issuer: str
    this_update: datetime
    #: None when the CRL names no nextUpdate (RFC 5280 requires one).
    next_update: datetime | None


def crl_validity(paths: Iterable[Path]) -> tuple[CrlValidity, ...]:
    """thisUpdate and nextUpdate of every CRL in ``paths`` (files or
    directories, as ``[trust] crls`` names them); TrustStoreError as load_crls."""
    found: list[CrlValidity] = []
    for path in paths:
        for file in _files(Path(path), CRL_SUFFIXES):
            try:
                for der in _der_blobs(file, "CRL"):
                    tbs = asn1_crl.CertificateList.load(der)["tbs_cert_list"]
                    next_update = tbs["next_update"].native
                    found.append(CrlValidity(file, tbs["issuer"].human_friendly,
                                             tbs["this_update"].native, next_update))
            except (ValueError, TypeError, OSError) as exc:
                raise TrustStoreError(f"{file}: not a CRL file ({exc})") from exc
    return tuple(found)


@dataclass(frozen=True, slots=True)
class TrustStore:
    """Trust anchors, local intermediates and local CRLs.

    ``generation`` changes whenever the content does, so cached chain
    results from an older trust store are never reused.
    """

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    crls: tuple[bytes, ...] = ()

    @property
    def generation(self) -> str:
        digest = hashlib.sha256()
        for group in (self.anchors, self.intermediates):
            digest.update(b"".join(sorted(cert.sha256 for cert in group)) + b"|")
        for der in self.crls:
            digest.update(hashlib.sha256(der).digest())
        return digest.hexdigest()[:16]

    @classmethod
    def load(
        cls,
        anchors: Iterable[Path],
        intermediates: Iterable[Path] = (),
        crls: Iterable[Path] = (),
        *,
        system: Iterable[bytes] = (),
        system_source: str = "system anchors",
    ) -> TrustStore:
        """Anchors from files and directories plus ``system`` (DER blobs, the
        system anchors read from ``system_source``), intermediates, CRLs."""
        return cls(merge_certificates(parse_certificates(system, system_source),
                                      load_certificates(anchors)),
                   load_certificates(intermediates), load_crls(crls))


def merge_certificates(*groups: Iterable[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The certificates of all groups, each once (the first seen is kept)."""
    found: dict[bytes, x509.Certificate] = {}
    for group in groups:
        for cert in group:
            found.setdefault(cert.sha256, cert)
    return tuple(found.values())


def _name(cert: x509.Certificate) -> str:
    """A short name for error lines: the common name, else the whole DN."""
    try:
        subject = cert.subject.native
        return str(subject.get("common_name") or cert.subject.human_friendly)
    except (ValueError, TypeError, AttributeError):
        return "unnamed certificate"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    result: ChainResult
    not_before: datetime
    not_after: datetime


class ChainValidator:
    """Validates signer certificates against one TrustStore; thread-safe."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        revocation: RevocationMode = RevocationMode.SOFT,
        allow_sha1: bool = False,
        min_rsa_bits: int = 2048,
        cache_size: int = 20_000,
        bucket_seconds: int = 60,
    ) -> None:
        self.trust = trust
        self.revocation = revocation
        self.allow_sha1 = allow_sha1
        self._generation = trust.generation
        self._trust_manager = SimpleTrustManager.build(trust_roots=list(trust.anchors))
        self._weak = frozenset({"md2", "md5"} | (set() if allow_sha1 else {"sha1"}))
        # [verify] min_rsa_bits governs certificate keys as well as signer keys;
        # a legacy policy below 2048 bits also admits DSA keys of that size.
        self._algorithms = DisallowWeakAlgorithmsPolicy(  # type: ignore[no-untyped-call]
            self._weak, rsa_key_size_threshold=min_rsa_bits,
            dsa_key_size_threshold=min_rsa_bits if min_rsa_bits < 2048 else 3192,
        )
        self._cache: OrderedDict[tuple[object, ...], _CacheEntry] = OrderedDict()
        self._cache_size = cache_size
        self._bucket = bucket_seconds
        self._lock = threading.Lock()
        self._local = threading.local()
        self.hits = 0
        self.misses = 0

    def validate(
        self,
        leaf: x509.Certificate,
        extra_certs: Sequence[x509.Certificate] = (),
        extra_crls: Sequence[bytes] = (),
        at: datetime | None = None,
        *,
        usage: Usage = "sign",
    ) -> ChainResult:
        """Is ``leaf`` an acceptable S/MIME certificate at ``at``, for
        verifying its signatures (``usage="sign"``) or for encrypting to it
        (``"encrypt"``)? The path, expiry and revocation rules are the same;
        only the leaf's key usage and key type requirements differ."""
        at = at or datetime.now(UTC)
        key = (
            leaf.sha256,
            frozenset(cert.sha256 for cert in extra_certs),
            frozenset(hashlib.sha256(der).digest() for der in extra_crls),
            self._generation,
            self.revocation,
            self.allow_sha1,
            int(at.timestamp()) // self._bucket,
            usage,
        )
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.not_before <= at <= entry.not_after:
                self._cache.move_to_end(key)
                self.hits += 1
                return entry.result
        self.misses += 1
        result, window = self._validate_uncached(leaf, extra_certs, extra_crls, at, usage)
        with self._lock:
            self._cache[key] = _CacheEntry(result, *window)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    # -- internals ---------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = asyncio.new_event_loop()
        return loop

    def _policies(self, have_crls: bool) -> list[CertRevTrustPolicy]:
        """Revocation policies to try in order.

        certvalidator's own soft-fail mode ignores locally held CRLs for
        certificates without a CRL distribution point, so soft mode first
        demands revocation data and only relaxes when none exists. Before
        giving up on CRLs, soft mode also reads those past their nextUpdate:
        revocation is permanent, so a stale CRL listing a certificate still
        proves it revoked.
        """
        if self.revocation is RevocationMode.OFF:
            return [_current(NO_REVOCATION)]
        if self.revocation is RevocationMode.HARD:
            return [_current(REQUIRE_REVINFO)]
        policies = [_current(REQUIRE_REVINFO), _current(_EE_ONLY_REVINFO)]
        if have_crls:
            policies += [_any_age(REQUIRE_REVINFO), _any_age(_EE_ONLY_REVINFO)]
        return [*policies, _current(NO_REVOCATION)]

    def _validate_uncached(
        self,
        leaf: x509.Certificate,
        extra_certs: Sequence[x509.Certificate],
        extra_crls: Sequence[bytes],
        at: datetime,
        usage: Usage,
    ) -> tuple[ChainResult, tuple[datetime, datetime]]:
        never = (at, at)
        crls = [*self.trust.crls, *extra_crls]
        last_error: Exception | None = None
        for policy in self._policies(bool(crls)):
            try:
                context = ValidationContext(
                    trust_manager=self._trust_manager,
                    other_certs=[*self.trust.intermediates, *extra_certs],
                    crls=crls,
                    moment=at,
                    allow_fetching=False,
                    revinfo_policy=policy,
                    algorithm_usage_policy=self._algorithms,
                )
                validator = CertificateValidator(
                    leaf, list(extra_certs), validation_context=context
                )
                path = self._loop().run_until_complete(validator.async_validate_path())
            except cv_errors.InsufficientRevinfoError as exc:
                # Without its traceback: kept, it would hold the frames (and a
                # message's buffers) of every attempt until the next GC cycle.
                last_error = exc.with_traceback(None)
                continue
            except (cv_errors.PathError, cv_errors.ValidationError) as exc:
                return ChainResult(False, (self._describe(exc, leaf, at),)), never
            except (ValueError, TypeError, KeyError, IndexError, NotImplementedError) as exc:
                # Malformed certificates or CRLs from the message surface here.
                problem = f"certificate chain could not be processed: {_first_line(exc)}"
                return ChainResult(False, (problem,)), never
            usage_errors = (
                _encryption_usage_errors(leaf) if usage == "encrypt" else _usage_errors(leaf)
            )
            if usage_errors:
                return ChainResult(False, usage_errors), never
            certs = list(path)
            window = (
                max(c["tbs_certificate"]["validity"]["not_before"].native for c in certs),
                min(c["tbs_certificate"]["validity"]["not_after"].native for c in certs),
            )
            chain = tuple(c.dump() for c in reversed(certs))
            return ChainResult(True, (), chain), window
        assert last_error is not None
        return ChainResult(False, (self._describe(last_error, leaf, at),)), never

    def _describe(self, exc: Exception, leaf: x509.Certificate, at: datetime) -> str:
        """One short smimeErrors line per chain problem."""
        if isinstance(exc, cv_errors.RevokedError):
            return f"signer certificate chain revoked at {_iso(at)}: {_first_line(exc)}"
        if isinstance(exc, cv_errors.ExpiredError):
            return f"certificate expired at {_iso(exc.expired_dt)} (checked at {_iso(at)})"
        if isinstance(exc, cv_errors.NotYetValidError):
            return f"certificate not valid before {_iso(exc.valid_from)} (checked at {_iso(at)})"
        if isinstance(exc, cv_errors.InsufficientRevinfoError):
            return f"no current revocation information (CRL): {_first_line(exc)}"
        if isinstance(exc, cv_errors.DisallowedAlgorithmError):
            return f"weak algorithm in certificate chain: {_first_line(exc)}"
        if isinstance(exc, cv_errors.PathBuildingError):
            return f"untrusted root: no path from {_name(leaf)!r} to a configured trust anchor"
        return f"certificate chain invalid: {_first_line(exc)}"


def _current(policy: RevocationCheckingPolicy) -> CertRevTrustPolicy:
    """Revocation data valid at T (a CRL issued after T also counts)."""
    return CertRevTrustPolicy(policy, retroactive_revinfo=True)


def _any_age(policy: RevocationCheckingPolicy) -> CertRevTrustPolicy:
    """Revocation data of any age, even past its nextUpdate."""
    return CertRevTrustPolicy(
        policy,
        freshness=_ANY_AGE,
        freshness_req_type=FreshnessReqType.MAX_DIFF_REVOCATION_VALIDATION,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _usage_errors(leaf: x509.Certificate) -> tuple[str, ...]:
    """RFC 8550 §4.4: key usage and extended key usage for S/MIME signing."""
    errors: list[str] = []
    key_usage = leaf.key_usage_value
    if key_usage is not None:
        usages = set(key_usage.native)
        if not usages & {"digital_signature", "non_repudiation"}:
            errors.append("certificate key usage allows neither digitalSignature "
                          "nor nonRepudiation")
    errors.extend(_email_eku_errors(leaf))
    return tuple(errors)


def _encryption_usage_errors(leaf: x509.Certificate) -> tuple[str, ...]:
    """RFC 8550 §4.4.2 and RFC 8551 §2.7: what encrypting a message to
    ``leaf`` needs. RSA keys transport the content key (keyEncipherment), EC
    keys agree on one (keyAgreement, RFC 5753); anything else, or a key too
    weak to protect the content, is refused rather than used."""
    errors: list[str] = []
    needed: str | None = None
    try:
        public_key = leaf.public_key
        algorithm = public_key.algorithm
        if algorithm == "rsa":
            needed = "key_encipherment"
            if public_key.bit_size < MIN_ENCRYPTION_RSA_BITS:
                errors.append(f"RSA key of {public_key.bit_size} bits is below the minimum "
                              f"of {MIN_ENCRYPTION_RSA_BITS} for encryption")
        elif algorithm == "ec":
            needed = "key_agreement"
            kind, curve = public_key.curve
            if kind != "named" or curve not in ENCRYPTION_CURVES:
                errors.append("elliptic curve is not accepted for encryption (named P-256, "
                              "P-384 or P-521 needed)")
        else:
            errors.append(f"{algorithm} keys cannot be encrypted to")
    except (ValueError, TypeError, KeyError) as exc:
        return (f"certificate public key could not be read: {_first_line(exc)}",)
    key_usage = leaf.key_usage_value
    if needed is not None and key_usage is not None and needed not in set(key_usage.native):
        name = "keyEncipherment" if needed == "key_encipherment" else "keyAgreement"
        errors.append(f"certificate key usage does not allow {name}")
    errors.extend(_email_eku_errors(leaf))
    return tuple(errors)


def _email_eku_errors(leaf: x509.Certificate) -> list[str]:
    """RFC 8550 §4.4.4: an EKU, when present, must allow emailProtection."""
    ext_key_usage = leaf.extended_key_usage_value
    if ext_key_usage is not None:
        purposes = set(ext_key_usage.native)
        if not purposes & {"email_protection", "any_extended_key_usage"}:
            return ["certificate extended key usage does not allow emailProtection"]
    return []


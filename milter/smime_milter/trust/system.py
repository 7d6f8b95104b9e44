"""The system's S/MIME trust anchors: the roots Mozilla's root program trusts
for e-mail, read from NSS's built-in root module (``libnssckbi.so``).

The TLS bundle (``/etc/ssl/certs/ca-certificates.crt``) is built for server
authentication: it holds TLS-only roots and whatever private CA an admin added
for HTTPS, and lacks e-mail-only CAs. NSS's built-in module carries Mozilla's
per-purpose trust bits, so only roots trusted as CAs for e-mail protection
become anchors. The module is read through PKCS#11 (PyKCS11), the interface it
is made for. Nothing here ever falls back to the TLS bundle: a missing module
is an error that names the fix.

Values are from NSS's ``lib/util/pkcs11n.h``.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PyKCS11

from smime_milter.trust.chain import TrustStoreError

#: Where distributions install NSS's built-in root module (package libnss3 on
#: Debian), searched in this order.
NSS_MODULE_PATTERNS = (
    "/usr/lib/*/libnssckbi.so",
    "/usr/lib/*/nss/libnssckbi.so",
    "/usr/lib64/libnssckbi.so",
    "/usr/lib64/nss/libnssckbi.so",
    "/usr/lib/libnssckbi.so",
)

_NSS = 0x80000000 | 0x4E534350  # CKO/CKA/CKT_VENDOR_DEFINED | NSSCK_VENDOR_NSS
CKO_NSS_TRUST = _NSS + 3
CKA_NSS_EMAIL_DISTRUST_AFTER = _NSS + 36
_CKA_TRUST = _NSS + 0x2000
CKA_TRUST_SERVER_AUTH = _CKA_TRUST + 8
CKA_TRUST_EMAIL_PROTECTION = _CKA_TRUST + 11
CKA_CERT_SHA1_HASH = _CKA_TRUST + 100
#: Trusted as a CA (an anchor) for the purpose.
CKT_NSS_TRUSTED_DELEGATOR = _NSS + 2
#: Explicitly distrusted (DigiNotar, say).
CKT_NSS_NOT_TRUSTED = _NSS + 10


class SystemAnchorsError(TrustStoreError):
    """The system's e-mail trust anchors cannot be read; one line for an admin."""


class NssModuleNotFound(SystemAnchorsError):
    """No NSS built-in root module where one was looked for."""


class NssModuleUnusable(SystemAnchorsError):
    """A file that is not a usable NSS built-in root module."""


_FIX = 'install libnss3, or set [trust] system_anchors = "none" and list anchors yourself'


@dataclass(frozen=True, slots=True)
class SystemAnchors:
    """The roots of Mozilla's program trusted for e-mail, as DER, and what
    was left out (for the start-up log line)."""

    source: Path
    certificates: tuple[bytes, ...]
    #: Trusted for other purposes (TLS) only.
    skipped_tls_only: int
    #: Explicitly distrusted, or with trust data that does not match its certificate.
    skipped_distrusted: int
    #: Trusted for e-mail only for certificates issued before a date
    #: (CKA_NSS_EMAIL_DISTRUST_AFTER): left out entirely, as under-trusting
    #: is safe and over-trusting is not.
    skipped_distrust_after: int = 0

    def describe(self) -> str:
        """``108 for e-mail from Mozilla's root program (path; ... left out)``."""
        left_out = [f"{self.skipped_tls_only} TLS-only", f"{self.skipped_distrusted} distrusted"]
        if self.skipped_distrust_after:
            left_out.append(f"{self.skipped_distrust_after} with an e-mail distrust-after date")
        return (f"{len(self.certificates)} for e-mail from Mozilla's root program "
                f"({self.source}; {', '.join(left_out[:-1])} and {left_out[-1]} left out)")


def find_nss_module(patterns: Sequence[str] = NSS_MODULE_PATTERNS) -> Path:
    """The first NSS built-in root module found; NssModuleNotFound names where
    it was looked for."""
    for pattern in patterns:
        for found in sorted(glob.glob(pattern)):
            if Path(found).is_file():
                return Path(found)
    raise NssModuleNotFound(
        f"no NSS built-in root module (libnssckbi.so, package libnss3) found in "
        f"{', '.join(patterns)}: {_FIX}"
    )


def load_system_anchors(module: Path | None = None) -> SystemAnchors:
    """The e-mail anchors of ``module`` (default: the one :func:`find_nss_module`
    finds). Costs milliseconds, so callers read it at every (re)load."""
    if module is None:
        module = find_nss_module()
    elif not module.is_file():
        raise NssModuleNotFound(
            f"{module}: no such file (trust.nss_module); fix the path, {_FIX}")
    try:
        return _read(module)
    except PyKCS11.PyKCS11Error as exc:
        raise NssModuleUnusable(
            f"{module}: not a usable NSS built-in root module ({_reason(exc)}); "
            f"point [trust] nss_module at libnssckbi.so, or {_FIX}") from exc


def _read(module: Path) -> SystemAnchors:
    library = PyKCS11.PyKCS11Lib()
    library.load(str(module))
    slots = library.getSlotList(tokenPresent=True)
    if not slots:
        raise NssModuleUnusable(f"{module}: the module offers no token; {_FIX}")
    session = library.openSession(slots[0])
    try:
        certificates = _certificates(session)
        anchors: list[bytes] = []
        tls_only = distrusted = distrust_after = 0
        for trust in session.findObjects([(PyKCS11.CKA_CLASS, CKO_NSS_TRUST)]):
            email, sha1, issuer, serial = _attributes(session, trust, [
                CKA_TRUST_EMAIL_PROTECTION, CKA_CERT_SHA1_HASH,
                PyKCS11.CKA_ISSUER, PyKCS11.CKA_SERIAL_NUMBER,
            ])
            found = certificates.get((issuer or b"", serial or b""))
            if found is None:
                continue  # trust without a certificate: nothing to anchor
            der, distrust_date = found
            level = int.from_bytes(email, "little") if email else None
            if level == CKT_NSS_NOT_TRUSTED:
                distrusted += 1
            elif level != CKT_NSS_TRUSTED_DELEGATOR:
                tls_only += 1
            elif sha1 and sha1 != hashlib.sha1(der).digest():
                distrusted += 1  # inconsistent module: never trust on a mismatch
            elif distrust_date:
                distrust_after += 1
            else:
                anchors.append(der)
    finally:
        session.closeSession()
    if not anchors:
        raise NssModuleUnusable(
            f"{module}: holds no root certificate trusted for e-mail (not NSS's built-in "
            f"root module?); {_FIX}")
    return SystemAnchors(module, tuple(anchors), tls_only, distrusted, distrust_after)


def _certificates(session: Any) -> dict[tuple[bytes, bytes], tuple[bytes, bool]]:
    """(issuer, serial) -> (DER, has an e-mail distrust-after date).

    Trust objects are matched to certificates by issuer and serial number:
    that is how NSS itself looks trust up, both attributes are mandatory on
    trust objects while CKA_CERT_SHA1_HASH is optional, and together they
    name one certificate of a CA. The SHA-1 hash, when present, is only a
    consistency check (a mismatch distrusts rather than trusts).
    """
    found: dict[tuple[bytes, bytes], tuple[bytes, bool]] = {}
    for cert in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_CERTIFICATE)]):
        value, issuer, serial, distrust = _attributes(session, cert, [
            PyKCS11.CKA_VALUE, PyKCS11.CKA_ISSUER, PyKCS11.CKA_SERIAL_NUMBER,
            CKA_NSS_EMAIL_DISTRUST_AFTER,
        ])
        if value and issuer and serial:
            found[(issuer, serial)] = (value, _has_date(distrust))
    return found


def _has_date(value: bytes | None) -> bool:
    """CKA_NSS_EMAIL_DISTRUST_AFTER: absent, empty or CK_FALSE (one zero byte)
    means no date; anything else (a UTCTime) is one."""
    return bool(value) and value != b"\x00"


def _attributes(session: Any, handle: Any, types: list[int]) -> list[bytes | None]:
    """The attributes as bytes; None for one the object lacks."""
    values = session.getAttributeValue(handle, types, allAsBinary=True)
    return [None if value is None else bytes(value) for value in values]


def _reason(exc: PyKCS11.PyKCS11Error) -> str:
    """The PKCS#11 return code's name, or 'cannot be loaded' for dlopen failures."""
    value = getattr(exc, "value", None)
    if value == -1:
        return "cannot be loaded as a PKCS#11 module"
    name = PyKCS11.CKR.get(value) if isinstance(value, int) else None
    return str(name) if isinstance(name, str) else "PKCS#11 error"

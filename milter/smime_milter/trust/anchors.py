"""The managed trust-anchor directory behind ``smime-milter trust add|remove|list``.

Admins add the roots of their correspondents' CAs without editing the
configuration: each anchor is one ``<sha256 hex>.pem`` file in
``trust.anchor_directory``, which the trust store reads next to the
configured ``trust.anchors``. Naming files by fingerprint makes adding
idempotent and lets removal find an anchor from nothing but its
fingerprint. Files are written atomically (temporary file, fsync, rename) so
a milter reloading at the same moment never reads half a certificate.

Anchors that come from ``trust.anchors`` or from the system (Mozilla's
e-mail roots, trust/system.py) are listed but never touched here: the
configuration is the admin's file, and libnss3 the distribution's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smime_milter.cms import files
from smime_milter.errors import SmimeMilterError
from smime_milter.trust.chain import CERT_SUFFIXES, TrustStoreError, load_certificates
from smime_milter.trust.settings import TrustConfig
from smime_milter.trust.sources import read_system_anchors
from smime_milter.trust.system import SystemAnchors

#: Permissions of the directory and of each anchor file: public data, root-owned.
DIRECTORY_MODE = 0o755
FILE_MODE = 0o644

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: ``openssl x509 -fingerprint -sha256`` prints ``sha256 Fingerprint=AB:CD:...``.
_OPENSSL_PREFIX = re.compile(r"^\s*sha-?256\s+fingerprint\s*=\s*", re.IGNORECASE)


class AnchorError(SmimeMilterError, ValueError):
    """A certificate file or an anchor name that cannot be used; nothing was changed."""


@dataclass(frozen=True, slots=True)
class AnchorEntry:
    """One trust anchor and where it comes from.

    ``warnings`` are facts an admin should see before relying on the anchor
    (not a CA, expired, ...): they do not stop it from being trusted.
    """

    sha256: str
    subject: str
    not_after: datetime
    #: The file holding the certificate.
    path: Path
    #: The managed directory, the ``trust.anchors`` entry it was found under,
    #: or the NSS module of a system anchor.
    source: Path
    managed: bool
    warnings: tuple[str, ...] = ()
    #: For ``add``: the directory already held it, so nothing was written.
    already_present: bool = False
    #: One of the system anchors (Mozilla's e-mail roots).
    system: bool = False

    @property
    def fingerprint(self) -> str:
        """``AB:CD:...``, the form ``openssl x509 -fingerprint -sha256`` prints."""
        return ":".join(self.sha256[i:i + 2] for i in range(0, 64, 2)).upper()


@dataclass(frozen=True, slots=True)
class _Cert:
    """A certificate parsed by both libraries the milter uses on it."""

    der: bytes
    sha256: str
    cert: x509.Certificate


# --------------------------------------------------------------------------- parsing


def _parse(der: bytes, where: str) -> _Cert:
    """Refuses anything the trust store (asn1crypto) or cryptography cannot read."""
    try:
        cert = x509.load_der_x509_certificate(der)
        loaded = asn1_x509.Certificate.load(der)
        _ = loaded.subject.native, loaded.public_key.native, loaded.not_valid_after
        sha256 = loaded.sha256.hex()
    except (ValueError, TypeError, KeyError) as exc:
        raise AnchorError(f"{where}: not a valid X.509 certificate ({_first_line(exc)})") from exc
    return _Cert(der, sha256, cert)


def _read_certificates(path: Path) -> tuple[_Cert, ...]:
    """Every certificate in a PEM (one or more CERTIFICATE blocks) or DER file.

    Other PEM blocks (private keys, CRLs) are an error rather than skipped, so
    a wrong file is noticed instead of half used.
    """
    try:
        data = files.read(path, "anchor")
    except files.KeyFileError as exc:
        raise AnchorError(f"{path}: {exc.detail}") from exc
    if not data.strip():
        raise AnchorError(f"{path}: empty file")
    try:
        blocks = files.pem_blocks(data)
    except ValueError as exc:
        raise AnchorError(f"{path}: broken PEM ({_first_line(exc)})") from exc
    if blocks:
        certs = []
        for number, block in enumerate(blocks, start=1):
            if block.label != "CERTIFICATE":
                raise AnchorError(
                    f"{path}: PEM block {number} is a {block.label}, not a CERTIFICATE")
            certs.append(_parse(block.der, f"{path}: certificate {number}"))
        return tuple(certs)
    if pem.detect(data):
        raise AnchorError(f"{path}: no certificate in the file")
    return (_parse(data, str(path)),)


def _warnings(cert: x509.Certificate, now: datetime) -> tuple[str, ...]:
    found: list[str] = []
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        found.append("not a CA certificate (basicConstraints cA is not set)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            found.append("key usage does not allow keyCertSign")
    except x509.ExtensionNotFound:
        pass
    if cert.issuer != cert.subject:
        found.append(f"not self-signed (issued by {_rfc4514(cert.issuer)}); "
                     "trusted on its own as an anchor")
    if cert.not_valid_after_utc < now:
        found.append(f"expired on {_iso(cert.not_valid_after_utc)}")
    if cert.not_valid_before_utc > now:
        found.append(f"not valid before {_iso(cert.not_valid_before_utc)}")
    return tuple(found)


def _serial_warning(parsed: _Cert, system: bool) -> tuple[str, ...]:
    """The admin's own anchor with a serial number that is not positive:
    cryptography only warns now and will refuse it one day. A system anchor
    is Mozilla's to replace, so it gets no such line."""
    if system or asn1_x509.Certificate.load(parsed.der).serial_number > 0:
        return ()
    return ("serial number is not positive (RFC 5280 forbids it; a future release of "
            "the cryptography library will refuse this certificate)",)


def _entry(parsed: _Cert, path: Path, source: Path, managed: bool, now: datetime,
           already_present: bool = False, extra: Sequence[str] = (),
           system: bool = False) -> AnchorEntry:
    return AnchorEntry(
        sha256=parsed.sha256,
        subject=_rfc4514(parsed.cert.subject),
        not_after=parsed.cert.not_valid_after_utc,
        path=path,
        source=source,
        managed=managed,
        warnings=(*_warnings(parsed.cert, now), *_serial_warning(parsed, system), *extra),
        already_present=already_present,
        system=system,
    )


# --------------------------------------------------------------------------- reading sources


def _source_files(path: Path) -> list[Path]:
    """The files the trust store reads for one anchor path (see chain.load_certificates)."""
    if path.is_dir():
        return sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CERT_SUFFIXES
        )
    if path.is_file():
        return [path]
    raise TrustStoreError(f"{path}: no such file or directory")


def _index(source: Path, managed: bool) -> list[tuple[Path, list[_Cert]]]:
    """(file, certificates) for every file under one anchor source, read the
    way the trust store reads them."""
    if managed and not source.is_dir():
        return []
    found = []
    for file in _source_files(source):
        certs = load_certificates([file])
        found.append((file, [_parse(cert.dump(), str(file)) for cert in certs]))
    return found


def list_anchors(trust: TrustConfig, *, managed_only: bool = False,
                 now: datetime | None = None) -> list[AnchorEntry]:
    """Every anchor the milter trusts: the system anchors, the configured
    ``trust.anchors``, then the managed directory (only that one with
    ``managed_only``); one entry per (certificate, file)."""
    now = now or datetime.now(UTC)
    entries: list[AnchorEntry] = []
    if not managed_only:
        system = read_system_anchors(trust)
        if system is not None:
            # A few of Mozilla's older roots have a serial number that is not
            # positive: cryptography warns about it, and the CLI keeps that
            # warning off the console (cli/main.py); nothing to act on here.
            entries.extend(
                _entry(_parse(der, str(system.source)), system.source, system.source,
                       False, now, system=True)
                for der in system.certificates
            )
        for source in trust.anchors:
            for file, certs in _index(source, managed=False):
                entries.extend(_entry(cert, file, source, False, now) for cert in certs)
    for file, certs in _index(trust.anchor_directory, managed=True):
        entries.extend(_entry(cert, file, trust.anchor_directory, True, now) for cert in certs)
    return entries


# --------------------------------------------------------------------------- add


def add_anchors(directory: Path, pem_or_der_path: Path | Iterable[Path], *,
                now: datetime | None = None) -> list[AnchorEntry]:
    """Copies every certificate of the given file(s) into ``directory`` as
    ``<sha256>.pem``. All files are read and checked before anything is
    written, so a bad file changes nothing. Already present anchors are
    reported with ``already_present`` and left alone."""
    now = now or datetime.now(UTC)
    sources = [pem_or_der_path] if isinstance(pem_or_der_path, Path) else list(pem_or_der_path)
    wanted: dict[str, _Cert] = {}
    for source in sources:
        for cert in _read_certificates(Path(source)):
            wanted.setdefault(cert.sha256, cert)
    present = {cert.sha256: file for file, certs in _index(directory, managed=True)
               for cert in certs}
    if not directory.is_dir():
        directory.mkdir(mode=DIRECTORY_MODE, parents=True)
        directory.chmod(DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
    entries = []
    for sha256, cert in wanted.items():
        if sha256 in present:
            entries.append(_entry(cert, present[sha256], directory, True, now,
                                  already_present=True))
            continue
        target = directory / f"{sha256}.pem"
        _write_atomically(target, cert.cert.public_bytes(serialization.Encoding.PEM))
        entries.append(_entry(cert, target, directory, True, now))
    return entries


def _write_atomically(target: Path, data: bytes) -> None:
    """Temporary file in the same directory, fsync, rename, fsync the directory.

    The temporary name ends in ``.tmp``, a suffix the trust store never reads.
    """
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=".anchor-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), FILE_MODE)
            os.fsync(file.fileno())
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------- remove


def parse_fingerprint(text: str) -> str | None:
    """Lowercase hex of a SHA-256 fingerprint (``ab12...``, ``AB:12:...`` or
    openssl's ``sha256 Fingerprint=AB:12:...``), or None when ``text`` is not one."""
    digits = _OPENSSL_PREFIX.sub("", text).replace(":", "").strip().lower()
    return digits if _HEX64.fullmatch(digits) else None


def remove_anchor(directory: Path, what: str, *, configured: Sequence[Path] = (),
                  system: SystemAnchors | None = None,
                  now: datetime | None = None) -> list[AnchorEntry]:
    """Removes the managed anchor(s) ``what`` names (a certificate file may
    hold several); see :func:`remove_anchors`."""
    return remove_anchors(directory, [what], configured=configured, system=system, now=now)


def remove_anchors(directory: Path, whats: Iterable[str], *,
                   configured: Sequence[Path] = (),
                   system: SystemAnchors | None = None,
                   now: datetime | None = None) -> list[AnchorEntry]:
    """Removes managed anchors named by a certificate file, a SHA-256
    fingerprint or a managed file name; returns what was removed.

    Everything is resolved before anything is deleted: an unknown name, or
    an anchor that only ``trust.anchors`` (``configured``) or the system
    anchors (``system``) provide, is an error that changes nothing. An
    anchor that is also configured or a system anchor is removed from the
    directory with a warning that it stays trusted.
    """
    now = now or datetime.now(UTC)
    managed = _index(directory, managed=True)
    by_sha: dict[str, list[tuple[Path, list[_Cert]]]] = {}
    for file, certs in managed:
        for cert in certs:
            by_sha.setdefault(cert.sha256, []).append((file, certs))
    configured_index: dict[str, Path] | None = None

    def configured_source(sha256: str) -> Path | None:
        nonlocal configured_index
        if configured_index is None:
            configured_index = {}
            for source in configured:
                for _file, certs in _index(source, managed=False):
                    for cert in certs:
                        configured_index.setdefault(cert.sha256, source)
        return configured_index.get(sha256)

    planned: dict[str, AnchorEntry] = {}
    doomed: set[Path] = set()
    for what in whats:
        for sha256, label in _fingerprints(directory, what):
            if sha256 in planned:
                continue
            holders = by_sha.get(sha256)
            also = configured_source(sha256)
            if not holders:
                if system is not None and sha256 in _system_fingerprints(system):
                    raise AnchorError(
                        f"{label}: this anchor is one of Mozilla's e-mail roots (from "
                        f"{system.source}), not from {directory}; set [trust] system_anchors "
                        '= "none" and list the anchors you want in trust.anchors to stop '
                        "trusting it"
                    )
                if also is not None:
                    raise AnchorError(
                        f"{label}: this anchor comes from trust.anchors ({also}), not from "
                        f"{directory}; edit the trust.anchors key of the configuration "
                        "to stop trusting it"
                    )
                raise AnchorError(f"{label}: no managed trust anchor with SHA-256 {sha256}")
            for file, certs in holders:
                if len(certs) > 1:
                    raise AnchorError(
                        f"{label}: {file} holds {len(certs)} certificates; "
                        "edit that file by hand"
                    )
            extra: tuple[str, ...] = (
                (f"still trusted through trust.anchors ({also})",) if also else ())
            if system is not None and sha256 in _system_fingerprints(system):
                extra += (f"still trusted as one of Mozilla's e-mail roots ({system.source})",)
            file, certs = holders[0]
            planned[sha256] = _entry(certs[0], file, directory, True, now, extra=extra)
            doomed.update(file for file, _certs in holders)
    for file in sorted(doomed):
        file.unlink()
    if doomed:
        _fsync_directory(directory)
    return list(planned.values())


def _fingerprints(directory: Path, what: str) -> list[tuple[str, str]]:
    """(sha256, label for messages) of the anchors ``what`` names."""
    sha256 = parse_fingerprint(what)
    if sha256 is not None:
        return [(sha256, what)]
    if os.sep not in what and (directory / what).is_file():
        # A managed file name; its content decides, should it have been renamed.
        return [(cert.sha256, what) for cert in _read_certificates(directory / what)]
    path = Path(what)
    if path.is_file():
        return [(cert.sha256, what) for cert in _read_certificates(path)]
    raise AnchorError(
        f"{what}: not a certificate file, a file in {directory} or a SHA-256 fingerprint"
    )


# --------------------------------------------------------------------------- helpers


def _system_fingerprints(system: SystemAnchors) -> set[str]:
    return {hashlib.sha256(der).hexdigest() for der in system.certificates}


def _rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:
        return "unprintable name"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

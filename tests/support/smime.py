"""S/MIME message builders for tests.

SignedData is assembled by hand with ``asn1crypto`` rather than produced by a library
signer, so tests can make exactly the broken structures a verifier must reject (wrong
messageDigest, missing attributes, odd algorithm OIDs, SKI signer ids, several signers).
EnvelopedData is produced by the system ``openssl cms`` (see :func:`enveloped_der`).
All MIME output uses CRLF line endings, as on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from asn1crypto import algos, cms, core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .pki import Identity

OPENSSL = shutil.which("openssl") or "openssl"

CRLF = b"\r\n"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: RFC 8551 §3.5.3 micalg names.
MICALG: dict[str, str] = {
    "sha1": "sha-1",
    "sha224": "sha-224",
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
}

#: Names accepted in ``omit_attrs``; "all" drops signedAttrs entirely (signature over content).
SIGNED_ATTRS = frozenset({"content_type", "message_digest", "signing_time", "smime_capabilities"})

CertLike = Identity | x509.Certificate | bytes


# --------------------------------------------------------------------------- CMS


def default_digest(signer: Identity) -> str:
    """sha256, except Ed25519 which RFC 8419 §3.1 pins to sha512."""
    return "sha512" if isinstance(signer.key, ed25519.Ed25519PrivateKey) else "sha256"


def _cert_der(cert: CertLike) -> bytes:
    if isinstance(cert, Identity):
        return cert.cert_der
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(serialization.Encoding.DER)
    return cert


def _time(when: datetime) -> cms.Time:
    # RFC 5652 §11.3: UTCTime for 1950..2049, GeneralizedTime otherwise.
    when = when.astimezone(UTC).replace(microsecond=0)
    name = "utc_time" if 1950 <= when.year < 2050 else "generalized_time"
    return cms.Time(name=name, value=when)


def _signer_identifier(signer: Identity, sid: str) -> tuple[cms.SignerIdentifier, str]:
    if sid == "issuer_serial":
        cert = asn1_x509.Certificate.load(signer.cert_der)
        value = cms.IssuerAndSerialNumber(
            {"issuer": cert.issuer, "serial_number": cert.serial_number}
        )
        return cms.SignerIdentifier(name="issuer_and_serial_number", value=value), "v1"
    if sid == "ski":
        if signer.ski is None:
            raise ValueError("signer certificate has no subjectKeyIdentifier")
        return cms.SignerIdentifier(name="subject_key_identifier", value=signer.ski), "v3"
    raise ValueError(f"sid must be 'issuer_serial' or 'ski', not {sid!r}")


def digest_algorithm(digest: str, null_params: bool = False) -> algos.DigestAlgorithm:
    """AlgorithmIdentifier for a hash, parameters absent unless ``null_params``.

    RFC 5754 §2 says SHA-2 parameters SHOULD be absent (OpenSSL omits them, some agents
    send NULL; verifiers must take both). asn1crypto always forces NULL when building,
    so the absent form is loaded from hand-made DER instead.
    """
    if null_params:
        return algos.DigestAlgorithm({"algorithm": digest, "parameters": core.Null()})
    oid = algos.DigestAlgorithmId(digest).dump()
    return algos.DigestAlgorithm.load(bytes([0x30, len(oid)]) + oid)


def _signature_algorithm(
    signer: Identity, digest: str, pss: bool, null_params: bool
) -> algos.SignedDigestAlgorithm:
    key = signer.key
    if pss and not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("pss=True needs an RSA signer")
    if isinstance(key, rsa.RSAPrivateKey) and pss:
        params = algos.RSASSAPSSParams(
            {
                "hash_algorithm": digest_algorithm(digest, null_params),
                "mask_gen_algorithm": {
                    "algorithm": "mgf1",
                    "parameters": digest_algorithm(digest, null_params),
                },
                "salt_length": _HASHES[digest].digest_size,
            }
        )
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
    if isinstance(key, rsa.RSAPrivateKey):
        # rsaEncryption + NULL: what Thunderbird, Outlook and openssl put here.
        return algos.SignedDigestAlgorithm(
            {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return algos.SignedDigestAlgorithm({"algorithm": "ed25519"})
    raise TypeError(f"cannot sign CMS with {type(key).__name__}")


def _raw_sign(signer: Identity, data: bytes, digest: str, pss: bool) -> bytes:
    key = signer.key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)  # PureEdDSA over the attributes themselves (RFC 8419 §3.2)
    hash_alg = _HASHES[digest]()
    if isinstance(key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            if pss
            else padding.PKCS1v15()
        )
        return key.sign(data, pad, hash_alg)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_alg))
    raise TypeError(f"cannot sign CMS with {type(key).__name__}")


def _smime_capabilities() -> cms.SMIMECapabilites:
    return cms.SMIMECapabilites(
        [{"capability_id": name} for name in ("aes256_cbc", "aes192_cbc", "aes128_cbc")]
    )


def signer_info(
    content: bytes,
    signer: Identity,
    *,
    digest: str | None = None,
    pss: bool = False,
    sid: str = "issuer_serial",
    omit_attrs: Iterable[str] = (),
    signing_time: datetime | None = None,
    tamper_digest: bool = False,
    sig_oid_override: str | None = None,
    null_digest_params: bool = False,
) -> cms.SignerInfo:
    """One SignerInfo over ``content``; the knobs are documented on :func:`sign_cms`."""
    digest = digest or default_digest(signer)
    if digest not in _HASHES:
        raise ValueError(f"unsupported digest {digest!r}")
    omit = set(omit_attrs)
    unknown = omit - SIGNED_ATTRS - {"all"}
    if unknown:
        raise ValueError(f"unknown signed attributes {sorted(unknown)}")
    sid_value, version = _signer_identifier(signer, sid)
    message_digest = hashlib.new(digest, content).digest()
    if tamper_digest:
        message_digest = message_digest[:-1] + bytes([message_digest[-1] ^ 0x01])

    attrs: list[cms.CMSAttribute] = []
    if "content_type" not in omit:
        attrs.append(cms.CMSAttribute({"type": "content_type", "values": ["data"]}))
    if "signing_time" not in omit:
        attrs.append(
            cms.CMSAttribute(
                {"type": "signing_time", "values": [_time(signing_time or datetime.now(UTC))]}
            )
        )
    if "message_digest" not in omit:
        attrs.append(cms.CMSAttribute({"type": "message_digest", "values": [message_digest]}))
    if "smime_capabilities" not in omit:
        attrs.append(
            cms.CMSAttribute({"type": "smime_capabilities", "values": [_smime_capabilities()]})
        )

    sig_alg = _signature_algorithm(signer, digest, pss, null_digest_params)
    if sig_oid_override is not None:
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": sig_oid_override})
    info = cms.SignerInfo(
        {
            "version": version,
            "sid": sid_value,
            "digest_algorithm": digest_algorithm(digest, null_digest_params),
            "signature_algorithm": sig_alg,
            "signature": b"",
        }
    )
    if "all" in omit:
        to_sign = content
    else:
        info["signed_attrs"] = cms.CMSAttributes(attrs)
        # RFC 5652 §5.4: sign the DER of the attributes with the SET OF tag (0x31) in
        # place of the [0] IMPLICIT tag; taking the bytes back out of the SignerInfo
        # guarantees the signed bytes are the transmitted bytes.
        to_sign = b"\x31" + info["signed_attrs"].dump()[1:]
    info["signature"] = _raw_sign(signer, to_sign, digest, pss)
    return info


def _dedup(ders: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(ders))


def signed_data(
    content: bytes,
    infos: Sequence[cms.SignerInfo],
    *,
    detached: bool = True,
    certs: Iterable[CertLike] = (),
    crls: Iterable[bytes] = (),
) -> bytes:
    """Wrap SignerInfos into a DER ContentInfo(SignedData) with the right version numbers."""
    digest_algs = _dedup(i["digest_algorithm"].dump() for i in infos)
    version = "v3" if any(i["version"].native == "v3" for i in infos) else "v1"
    data = cms.SignedData(
        {
            "version": version,
            "digest_algorithms": [algos.DigestAlgorithm.load(d) for d in digest_algs],
            "encap_content_info": {
                "content_type": "data",
                "content": None if detached else content,
            },
            "signer_infos": list(infos),
        }
    )
    cert_ders = _dedup(_cert_der(c) for c in certs)
    if cert_ders:
        data["certificates"] = [
            cms.CertificateChoices(name="certificate", value=asn1_x509.Certificate.load(d))
            for d in cert_ders
        ]
    crl_list = list(crls)
    if crl_list:
        data["crls"] = [
            cms.RevocationInfoChoice(name="crl", value=asn1_crl.CertificateList.load(c))
            for c in crl_list
        ]
    return cms.ContentInfo({"content_type": "signed_data", "content": data}).dump()


def sign_cms(
    content: bytes,
    signer: Identity,
    *,
    digest: str | None = None,
    pss: bool = False,
    detached: bool = True,
    sid: str = "issuer_serial",
    certs: Sequence[CertLike] | None = None,
    crls: Sequence[bytes] = (),
    omit_attrs: Iterable[str] = (),
    extra_signers: Sequence[Identity] = (),
    signing_time: datetime | None = None,
    tamper_digest: bool = False,
    sig_oid_override: str | None = None,
    null_digest_params: bool = False,
) -> bytes:
    """DER ContentInfo(SignedData) over ``content``, signed the way real agents do.

    - ``digest``: sha1/sha224/sha256/sha384/sha512; default sha256 (sha512 for Ed25519).
    - ``pss``: RSA signers use id-RSASSA-PSS (MGF1 same hash, salt = hash length).
    - ``sid``: "issuer_serial" (SignerInfo v1) or "ski" (v3).
    - ``certs``: what goes into SignedData.certificates; default is each signer's cert
      plus its ``chain`` (the intermediates, never the root); ``[]`` sends none.
    - ``crls``: DER CRLs to embed.
    - ``omit_attrs``: signed attributes to leave out (see :data:`SIGNED_ATTRS`); "all"
      omits signedAttrs, so the signature is directly over the content.
    - ``tamper_digest``: messageDigest is wrong by one bit, but the signature over the
      attributes is valid, so only the content/digest comparison can catch it.
    - ``sig_oid_override``: replace signatureAlgorithm by this OID (dotted or asn1crypto
      name) with no parameters; the signature bytes are unchanged.
    - ``extra_signers``: additional, untampered SignerInfos over the same content using
      the same sid/signing_time and ``digest`` (Ed25519 extras always use sha512).
      ``pss``, ``omit_attrs``, ``tamper_digest`` and ``sig_oid_override`` apply only to
      the primary signer.
    - ``null_digest_params``: encode hash AlgorithmIdentifiers with NULL parameters (as
      some agents do) instead of absent ones.
    """
    infos = [
        signer_info(
            content,
            signer,
            digest=digest,
            pss=pss,
            sid=sid,
            omit_attrs=omit_attrs,
            signing_time=signing_time,
            tamper_digest=tamper_digest,
            sig_oid_override=sig_oid_override,
            null_digest_params=null_digest_params,
        )
    ]
    for extra in extra_signers:
        extra_digest = default_digest(extra) if digest is None or _is_ed(extra) else digest
        infos.append(
            signer_info(
                content,
                extra,
                digest=extra_digest,
                sid=sid,
                signing_time=signing_time,
                null_digest_params=null_digest_params,
            )
        )
    if certs is None:
        certs = [c for ident in (signer, *extra_signers) for c in (ident.cert, *ident.chain)]
    return signed_data(content, infos, detached=detached, certs=certs, crls=crls)


def certs_only_cms(certs: Iterable[CertLike]) -> bytes:
    """Degenerate SignedData (no signers, no content): the RFC 8551 certs-only form."""
    return signed_data(b"", [], detached=True, certs=certs)


def _is_ed(ident: Identity) -> bool:
    return isinstance(ident.key, ed25519.Ed25519PrivateKey)


# --------------------------------------------------------------------------- MIME


def crlf(data: bytes) -> bytes:
    """Normalise any mix of CR, LF and CRLF line endings to CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def _base64_body(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"".join(text[i : i + 76] + CRLF for i in range(0, len(text), 76))


def text_entity(text: str, content_type: str = "text/plain") -> bytes:
    """A single-part MIME entity (headers, blank line, CRLF body ending in CRLF).

    us-ascii/7bit for ASCII text, utf-8/8bit otherwise.
    """
    ascii_only = text.isascii()
    charset, cte = ("us-ascii", "7bit") if ascii_only else ("utf-8", "8bit")
    body = crlf(text.encode("utf-8"))
    if not body.endswith(CRLF):
        body += CRLF
    headers = (
        f"Content-Type: {content_type}; charset={charset}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return headers.encode("ascii") + body


def wrap_message(
    entity: bytes,
    *,
    from_addr: str = "alice@example.com",
    to: str = "bob@example.com",
    subject: str = "test",
    extra_headers: Sequence[tuple[str, str]] = (),
    date: datetime | None = None,
) -> bytes:
    """Turn a MIME entity into an RFC 5322 message by prepending the top-level headers."""
    token = hashlib.sha256(entity).hexdigest()[:20]
    lines = [
        f"From: {from_addr}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {format_datetime(date or datetime.now(UTC), usegmt=True)}",
        f"Message-ID: <{token}@example.com>",
        *(f"{name}: {value}" for name, value in extra_headers),
        "MIME-Version: 1.0",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8") + entity


def pkcs7_mime_entity(der: bytes, smime_type: str, name: str = "smime.p7m") -> bytes:
    """An application/pkcs7-mime entity carrying ``der`` base64-encoded."""
    headers = (
        f"Content-Type: application/pkcs7-mime; smime-type={smime_type}; name={name}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename={name}\r\n\r\n"
    )
    return headers.encode("ascii") + _base64_body(der)


def multipart_signed_entity(
    inner_entity: bytes,
    signer: Identity,
    *,
    protocol: str = "application/pkcs7-signature",
    micalg: str | None = None,
    signature_content_type: str | None = None,
    boundary: str | None = None,
    **sign_kwargs: object,
) -> bytes:
    """The multipart/signed entity alone (for nesting, e.g. inside :func:`enveloped`).

    The signature covers ``inner_entity`` byte for byte; the CRLF before the boundary
    delimiter belongs to the delimiter (RFC 2046 §5.1.1), so it is not signed.
    ``micalg`` defaults to the digest actually used; ``signature_content_type`` to
    ``protocol``.
    """
    der = sign_cms(inner_entity, signer, detached=True, **sign_kwargs)  # type: ignore[arg-type]
    digest = sign_kwargs.get("digest") or default_digest(signer)
    micalg = micalg or MICALG[str(digest)]
    boundary = boundary or "----=_smime_" + hashlib.sha256(der).hexdigest()[:28]
    part_type = signature_content_type or protocol
    head = (
        f'Content-Type: multipart/signed; protocol="{protocol}";\r\n'
        f'\tmicalg={micalg}; boundary="{boundary}"\r\n\r\n'
        "This is a cryptographically signed message in MIME format.\r\n\r\n"
        f"--{boundary}\r\n"
    ).encode("ascii")
    sig_part = (
        f"\r\n--{boundary}\r\n"
        f"Content-Type: {part_type}; name=smime.p7s\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
    ).encode("ascii")
    return head + inner_entity + sig_part + _base64_body(der) + f"--{boundary}--\r\n".encode()


def multipart_signed(
    inner_entity: bytes,
    signer: Identity,
    *,
    from_addr: str = "alice@example.com",
    to: str = "bob@example.com",
    subject: str = "test",
    extra_headers: Sequence[tuple[str, str]] = (),
    protocol: str = "application/pkcs7-signature",
    micalg: str | None = None,
    **sign_kwargs: object,
) -> bytes:
    """A clear-signed (detached, RFC 8551 §3.5) message; ``sign_kwargs`` go to sign_cms."""
    entity = multipart_signed_entity(
        inner_entity, signer, protocol=protocol, micalg=micalg, **sign_kwargs
    )
    return wrap_message(
        entity, from_addr=from_addr, to=to, subject=subject, extra_headers=extra_headers
    )


def opaque_signed(
    inner_entity: bytes,
    signer: Identity,
    *,
    from_addr: str = "alice@example.com",
    to: str = "bob@example.com",
    subject: str = "test",
    extra_headers: Sequence[tuple[str, str]] = (),
    **sign_kwargs: object,
) -> bytes:
    """An opaque-signed message: application/pkcs7-mime with the entity as eContent."""
    der = sign_cms(inner_entity, signer, detached=False, **sign_kwargs)  # type: ignore[arg-type]
    return wrap_message(
        pkcs7_mime_entity(der, "signed-data"),
        from_addr=from_addr,
        to=to,
        subject=subject,
        extra_headers=extra_headers,
    )


def certs_only(
    certs: Iterable[CertLike],
    *,
    from_addr: str = "alice@example.com",
    to: str = "bob@example.com",
    subject: str = "certificates",
) -> bytes:
    """A message whose body is a certs-only SignedData (smime-type=certs-only)."""
    entity = pkcs7_mime_entity(certs_only_cms(certs), "certs-only", name="smime.p7c")
    return wrap_message(entity, from_addr=from_addr, to=to, subject=subject)


# --------------------------------------------------------------------------- openssl


def openssl(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the system openssl binary without raising on failure."""
    return subprocess.run([OPENSSL, *map(str, args)], input=stdin, capture_output=True, check=False)


def openssl_version() -> str:
    return openssl("version").stdout.decode().strip()


def enveloped_der(
    inner_entity: bytes,
    recipients: Sequence[Identity],
    *,
    cipher: str = "aes256",
    rsa_oaep: bool = False,
) -> bytes:
    """DER EnvelopedData (or AuthEnvelopedData for a *-gcm cipher) made by ``openssl cms``.

    openssl rather than cryptography's PKCS7EnvelopeBuilder: the builder only does RSA
    PKCS#1 v1.5 key transport with AES-CBC, while openssl also covers EC recipients
    (ECDH key agreement), RSA-OAEP and AES-GCM, and is the implementation real agents'
    output is usually compared against. ``-binary`` keeps the CRLF entity byte-exact.
    """
    if not recipients:
        raise ValueError("at least one recipient is needed")
    with tempfile.TemporaryDirectory(prefix="smime-env-") as tmp:
        tmpdir = Path(tmp)
        args: list[str | Path] = ["cms", "-encrypt", "-binary", f"-{cipher}", "-outform", "DER"]
        for index, ident in enumerate(recipients):
            path = tmpdir / f"recip{index}.pem"
            path.write_bytes(ident.cert_pem)
            args += ["-recip", path]
            if rsa_oaep and isinstance(ident.key, rsa.RSAPrivateKey):
                args += ["-keyopt", "rsa_padding_mode:oaep"]
        result = openssl(*args, stdin=inner_entity)
    if result.returncode != 0:
        raise RuntimeError(f"openssl cms -encrypt failed: {result.stderr.decode()}")
    return result.stdout


def enveloped(
    inner_entity: bytes,
    recipients: Sequence[Identity],
    *,
    from_addr: str = "alice@example.com",
    to: str = "bob@example.com",
    subject: str = "test",
    extra_headers: Sequence[tuple[str, str]] = (),
    cipher: str = "aes256",
    rsa_oaep: bool = False,
) -> bytes:
    """An encrypted message (smime-type=enveloped-data, or authEnveloped-data for GCM)."""
    der = enveloped_der(inner_entity, recipients, cipher=cipher, rsa_oaep=rsa_oaep)
    smime_type = "authEnveloped-data" if "gcm" in cipher.lower() else "enveloped-data"
    return wrap_message(
        pkcs7_mime_entity(der, smime_type),
        from_addr=from_addr,
        to=to,
        subject=subject,
        extra_headers=extra_headers,
    )


def openssl_verify_result(
    message: bytes, ca_pem_paths: Sequence[Path], *, extra_args: Sequence[str] = ()
) -> subprocess.CompletedProcess[bytes]:
    """``openssl cms -verify -purpose any`` on an RFC 5322 message; stdout is the content."""
    with tempfile.TemporaryDirectory(prefix="smime-verify-") as tmp:
        bundle = Path(tmp) / "ca.pem"
        bundle.write_bytes(b"".join(Path(p).read_bytes() for p in ca_pem_paths))
        return openssl(
            "cms", "-verify", "-CAfile", bundle, "-purpose", "any", *extra_args, stdin=message
        )


def openssl_verify(
    message: bytes, ca_pem_paths: Sequence[Path], *, extra_args: Sequence[str] = ()
) -> bool:
    """Cross-check: does ``openssl cms -verify -purpose any`` accept ``message``?

    OpenSSL 3 CMS cannot verify Ed25519 at all (openssl/openssl#11915, still open in
    3.6 as #32248), so this is always False for Ed25519 signers.
    """
    return openssl_verify_result(message, ca_pem_paths, extra_args=extra_args).returncode == 0


def openssl_decrypt(message: bytes, recipient: Identity) -> bytes:
    """Decrypt an enveloped message with ``openssl cms -decrypt``; raises on failure."""
    with tempfile.TemporaryDirectory(prefix="smime-decrypt-") as tmp:
        key = Path(tmp) / "key.pem"
        key.write_bytes(recipient.key_pem)
        cert = Path(tmp) / "cert.pem"
        cert.write_bytes(recipient.cert_pem)
        result = openssl("cms", "-decrypt", "-inkey", key, "-recip", cert, stdin=message)
    if result.returncode != 0:
        raise RuntimeError(f"openssl cms -decrypt failed: {result.stderr.decode()}")
    return result.stdout

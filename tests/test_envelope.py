"""Tests for smime_milter.envelope: CMS (Auth)EnvelopedData decryption.

Real messages come from the shared Thunderbird corpus (../shared next to the
repository); OpenSSL 3 ``cms -encrypt`` output is used as a second, independent
producer; a hypothesis test makes sure hostile bytes never raise.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import email
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smime_milter.cms.envelope import (
    MAX_RECIPIENT_INFOS,
    DecryptionKey,
    DecryptResult,
    decrypt,
    load_decryption_key,
)

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
CORPUS = CORPORA / "thunderbird"
INTEROP = CORPUS / "interop"

needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"Thunderbird S/MIME corpus not found at {CORPUS}"
)

ALICE_TO_BOB = b"This is a test message from Alice to Bob."
TO_FRAN = b"This is a test message to Fran."
FAILED = "decryption failed"
NOT_FOR_US = "no RecipientInfo for a configured key"


# ------------------------------------------------------------------ helpers


def mime_body(raw: bytes) -> bytes:
    """Base64-decode the body of a single-part MIME message (headers end at
    the first blank line; the corpus has both CRLF and LF files)."""
    ends = [(raw.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if sep in raw]
    pos, length = min(ends)
    return base64.b64decode(raw[pos + length :])


def enveloped_parts(raw: bytes) -> list[bytes]:
    """DER of every enveloped-data MIME part anywhere in a message (stdlib email)."""
    parts = []
    for part in email.message_from_bytes(raw).walk():
        if part.get_content_type() in ("application/pkcs7-mime", "application/x-pkcs7-mime") and (
            part.get_param("smime-type") == "enveloped-data"
        ):
            parts.append(part.get_payload(decode=True))
    return parts


@cache
def corpus_key(name: str) -> DecryptionKey:
    return {
        "bob": lambda: load_decryption_key(CORPUS / "bob-key.pem", CORPUS / "bob-cert.pem"),
        "fran": lambda: load_decryption_key(INTEROP / "fran-key.pem", INTEROP / "fran-cert.pem"),
        "fran-ec": lambda: load_decryption_key(
            INTEROP / "fran-ec-key.pem", INTEROP / "fran-ec-cert.pem"
        ),
    }[name]()


def make_cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cn: str,
    *,
    issuer: x509.Name | None = None,
    serial: int | None = None,
    ski: bool = True,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def pem_key(key: object, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8):
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@cache
def fresh_keys() -> tuple[DecryptionKey, DecryptionKey]:
    """A new RSA-2048 and a new P-256 recipient, each with a self-signed cert."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return (
        DecryptionKey(rsa_key, make_cert(rsa_key, "rsa recipient")),
        DecryptionKey(ec_key, make_cert(ec_key, "ec recipient")),
    )


# ------------------------------------------------------- load_decryption_key


@needs_corpus
def test_load_bob_key_precomputes_recipient_identifiers():
    key = corpus_key("bob")
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.serial_number == key.certificate.serial_number
    assert key.issuer_der == key.certificate.issuer.public_bytes()
    assert key.subject_key_identifier is None  # Bob's cert has no extensions at all


def test_load_combined_file_either_order_and_traditional_formats(tmp_path):
    rsa_dk, ec_dk = fresh_keys()
    trad = serialization.PrivateFormat.TraditionalOpenSSL
    for name, blob in {
        "key-first.pem": pem_key(rsa_dk.private_key) + pem_cert(rsa_dk.certificate),
        "cert-first.pem": pem_cert(rsa_dk.certificate) + pem_key(rsa_dk.private_key),
        "rsa-trad.pem": pem_key(rsa_dk.private_key, trad) + pem_cert(rsa_dk.certificate),
        "ec-trad.pem": pem_cert(ec_dk.certificate) + pem_key(ec_dk.private_key, trad),
    }.items():
        (tmp_path / name).write_bytes(blob)
        key = load_decryption_key(tmp_path / name)
        expected = rsa_dk if name != "ec-trad.pem" else ec_dk
        assert key.certificate == expected.certificate
        assert key.subject_key_identifier == (
            expected.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        )


def test_load_picks_the_matching_certificate_and_accepts_der(tmp_path):
    rsa_dk, ec_dk = fresh_keys()
    (tmp_path / "k.pem").write_bytes(pem_key(ec_dk.private_key))
    (tmp_path / "chain.pem").write_bytes(pem_cert(rsa_dk.certificate) + pem_cert(ec_dk.certificate))
    assert load_decryption_key(tmp_path / "k.pem", tmp_path / "chain.pem").certificate == (
        ec_dk.certificate
    )
    (tmp_path / "c.der").write_bytes(ec_dk.certificate.public_bytes(serialization.Encoding.DER))
    assert load_decryption_key(tmp_path / "k.pem", tmp_path / "c.der").certificate == (
        ec_dk.certificate
    )


def test_load_errors_name_the_file(tmp_path):
    rsa_dk, ec_dk = fresh_keys()
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert_file.write_bytes(pem_cert(ec_dk.certificate))  # not rsa_dk's certificate
    key_file.write_bytes(pem_key(rsa_dk.private_key))
    with pytest.raises(ValueError, match=re.escape(str(cert_file))):
        load_decryption_key(key_file, cert_file)
    with pytest.raises(ValueError, match=re.escape(str(key_file))):
        load_decryption_key(key_file)  # no certificate in the key file
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing.pem"))):
        load_decryption_key(tmp_path / "missing.pem")

    encrypted = rsa_dk.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    key_file.write_bytes(encrypted + pem_cert(rsa_dk.certificate))
    with pytest.raises(ValueError, match="encrypted"):
        load_decryption_key(key_file)

    key_file.write_bytes(pem_cert(rsa_dk.certificate))
    with pytest.raises(ValueError, match="no PEM private key"):
        load_decryption_key(key_file)

    ed = ed25519.Ed25519PrivateKey.generate()
    key_file.write_bytes(pem_key(ed) + pem_cert(rsa_dk.certificate))
    with pytest.raises(ValueError, match=re.escape(str(key_file))):
        load_decryption_key(key_file)

    cert_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    key_file.write_bytes(pem_key(rsa_dk.private_key))
    with pytest.raises(ValueError, match=re.escape(str(cert_file))):
        load_decryption_key(key_file, cert_file)


def test_decryption_key_rejects_a_foreign_certificate():
    rsa_dk, ec_dk = fresh_keys()
    with pytest.raises(ValueError):
        DecryptionKey(rsa_dk.private_key, ec_dk.certificate)


# ------------------------------------------------------------ real corpus


@needs_corpus
def test_bob_decrypts_alice_env():
    der = mime_body((CORPUS / "alice.env.eml").read_bytes())
    result = decrypt(der, [corpus_key("bob")])
    assert result.error is None, result.error
    assert result.addressed_to_us
    assert result.content.startswith(b"Content-Type: text/plain")
    assert ALICE_TO_BOB in result.content


def _bob_can_decrypt() -> list[str]:
    """Files the README/expected.tsv say are enveloped for Bob as the outer layer."""
    if not CORPUS.is_dir():
        return []
    with (CORPUS / "expected.tsv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return sorted(
        r["file"]
        for r in rows
        if r["smimeStatus_with_bob_key"].startswith("encrypted+")
        or r["note"].startswith("enveloped for Bob")
    )


@needs_corpus
def test_env_files_match_the_readme():
    assert _bob_can_decrypt() == sorted(p.name for p in CORPUS.glob("*.env.eml"))


@needs_corpus
@pytest.mark.parametrize("name", _bob_can_decrypt() or ["(corpus missing)"])
def test_bob_decrypts_every_env_file(name):
    result = decrypt(mime_body((CORPUS / name).read_bytes()), [corpus_key("bob")])
    assert result == DecryptResult(result.content, None, True), result.error
    assert result.content.startswith(b"Content-Type: ")
    if ".sig." in name:  # opaque-signed inside
        assert b"application/pkcs7-mime" in result.content.split(b"\n", 1)[0]
    elif ".dsig." in name:  # clear-signed inside
        assert b"multipart/signed" in result.content.split(b"\n", 1)[0]


@needs_corpus
@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("fran-oaep_ossl.env", "fran"),
        ("fran-oaep-label_ossl.env", "fran"),
        ("fran-oaep-sha256hash_ossl.env", "fran"),
        ("fran-oaep-sha256hash-sha256mgf_ossl.env", "fran"),
        ("fran-ec_ossl-aes128-sha256.env", "fran-ec"),
        ("fran-ec_ossl-aes256-sha512.env", "fran-ec"),
    ],
)
def test_interop_files_decrypt_for_fran(name, key):
    der = mime_body((INTEROP / name).read_bytes())
    result = decrypt(der, [corpus_key(key)])
    assert result.error is None, result.error
    assert result.content == TO_FRAN + b"\n"
    # With every key configured, the right one is still found.
    assert decrypt(der, [corpus_key(k) for k in ("bob", "fran-ec", "fran")]).content == (
        result.content
    )
    # And the other keys alone are not addressed.
    other = "fran-ec" if key == "fran" else "fran"
    assert decrypt(der, [corpus_key(other), corpus_key("bob")]) == DecryptResult(
        None, NOT_FOR_US, False
    )


@needs_corpus
def test_oaep_label_is_passed_through():
    """The label in the interop file is the 8 bytes 0x0123456789abcdef."""
    der = mime_body((INTEROP / "fran-oaep-label_ossl.env").read_bytes())
    ri = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen
    label = ri["key_encryption_algorithm"]["parameters"]["p_source_algorithm"]["parameters"]
    assert label.native == bytes.fromhex("0123456789ABCDEF")
    assert decrypt(der, [corpus_key("fran")]).content == TO_FRAN + b"\n"


@needs_corpus
@pytest.mark.parametrize(
    "name", ["outer-pgp-sig-inner-smime-enc.eml", "outer-pgp-sig-inner-smime-enc-sig.eml"]
)
def test_outer_pgp_inner_part_is_for_an_older_bob(name):
    parts = enveloped_parts((CORPUS / name).read_bytes())
    assert len(parts) == 1
    # Same serial number as today's Bob, different issuer name ("NSS Test CA").
    rid = cms.ContentInfo.load(parts[0])["content"]["recipient_infos"][0].chosen["rid"].chosen
    assert rid["serial_number"].native == corpus_key("bob").serial_number
    assert rid["issuer"].dump() != corpus_key("bob").issuer_der
    assert decrypt(parts[0], [corpus_key("bob")]) == DecryptResult(None, NOT_FOR_US, False)


@needs_corpus
def test_wrong_key_is_not_addressed():
    der = mime_body((CORPUS / "alice.env.eml").read_bytes())
    assert decrypt(der, [corpus_key("fran"), corpus_key("fran-ec")]) == DecryptResult(
        None, NOT_FOR_US, False
    )
    assert decrypt(der, []) == DecryptResult(None, NOT_FOR_US, False)


def assert_fails_like_bad_content(result: DecryptResult) -> None:
    """A failed PKCS#1 v1.5 unwrap continues with a random CEK (RFC 3218), so
    the CBC padding of the garbage it decrypts is valid about once in 256
    runs: then garbage comes back, which the engine reports as unsigned
    content. Either way the real plaintext never appears and no error text
    reveals that the key unwrap was what failed."""
    assert result.addressed_to_us
    if result.content is None:
        assert result.error == FAILED
    else:
        assert b"This is a test message" not in result.content


@needs_corpus
def test_right_identity_wrong_private_key_fails_like_bad_content():
    """A key whose certificate claims Bob's issuer and serial: the RSA PKCS#1 v1.5
    unwrap fails, and the error must look exactly like a content failure."""
    bob = corpus_key("bob")
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = make_cert(
        impostor, "impostor", issuer=bob.certificate.issuer, serial=bob.serial_number, ski=False
    )
    der = mime_body((CORPUS / "alice.env.eml").read_bytes())
    assert_fails_like_bad_content(decrypt(der, [DecryptionKey(impostor, cert)]))

    # Corrupt the encrypted CEK: same message as a corrupt ciphertext.
    ri = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen
    enc_key = ri["encrypted_key"].native
    bad_key = der.replace(enc_key, bytes([enc_key[0] ^ 1]) + enc_key[1:])
    assert_fails_like_bad_content(decrypt(bad_key, [bob]))
    # Damage the last ciphertext block so the CBC padding check fails.
    ciphertext = cms.ContentInfo.load(der)["content"]["encrypted_content_info"]["encrypted_content"]
    at = der.rindex(ciphertext.native[-16:]) + 15
    bad_content = der[:at] + bytes([der[at] ^ 0x55]) + der[at + 1 :]
    assert decrypt(bad_content, [bob]) == DecryptResult(None, FAILED, True)


@needs_corpus
def test_signed_data_is_not_enveloped():
    der = mime_body((CORPUS / "alice.sig.SHA256.opaque.eml").read_bytes())
    result = decrypt(der, [corpus_key("bob")])
    assert result.content is None
    assert result.error.startswith("not an EnvelopedData")
    assert not result.addressed_to_us


@needs_corpus
def test_truncated_der_gives_errors():
    der = mime_body((CORPUS / "alice.env.eml").read_bytes())
    for cut in [*range(0, 40), *range(40, len(der), 7)]:
        result = decrypt(der[:cut], [corpus_key("bob")])
        assert result.content is None and result.error, cut


@needs_corpus
@pytest.mark.parametrize(
    ("file", "key", "old_oid", "new_oid", "error"),
    [
        (
            "alice.env.eml",
            "bob",
            "1.2.840.113549.1.1.1",
            "1.2.840.113549.1.1.10",
            "unsupported key transport algorithm 1.2.840.113549.1.1.10",
        ),
        (
            "alice.env.eml",
            "bob",
            "2.16.840.1.101.3.4.1.2",
            "2.16.840.1.101.3.4.1.3",
            "unsupported content encryption algorithm 2.16.840.1.101.3.4.1.3 in EnvelopedData",
        ),
        (
            "interop/fran-ec_ossl-aes128-sha256.env",
            "fran-ec",
            "1.3.132.1.11.1",
            "1.3.132.1.14.1",
            "unsupported key agreement algorithm 1.3.132.1.14.1",
        ),
        (
            "interop/fran-ec_ossl-aes128-sha256.env",
            "fran-ec",
            "2.16.840.1.101.3.4.1.5",
            "2.16.840.1.101.3.4.1.8",
            "unsupported key wrap algorithm 2.16.840.1.101.3.4.1.8",
        ),
    ],
)
def test_unsupported_algorithms_are_named(file, key, old_oid, new_oid, error):
    der = mime_body((CORPUS / file).read_bytes())
    old, new = core.ObjectIdentifier(old_oid).dump(), core.ObjectIdentifier(new_oid).dump()
    assert der.count(old) == 1 and len(old) == len(new)
    assert decrypt(der.replace(old, new), [corpus_key(key)]) == DecryptResult(None, error, True)


def test_garbage_gives_errors():
    keys = list(fresh_keys())
    for blob in [b"", b"\x00", b"\x30\x80", b"\x30\x80\x00\x00", os.urandom(300), b"hello" * 50]:
        result = decrypt(blob, keys)
        assert result.content is None and result.error and not result.addressed_to_us
    wrong_type = cms.ContentInfo({"content_type": "data", "content": b"hi"}).dump()
    assert decrypt(wrong_type, keys).error.startswith("not an EnvelopedData")
    assert decrypt("not bytes", keys).error  # type: ignore[arg-type]


# ----------------------------------------- self-built AuthEnvelopedData (AAD)


class GcmParameters(core.Sequence):
    _fields = [("nonce", core.OctetString), ("icv_len", core.Integer, {"default": 12})]  # noqa: RUF012


def build_auth_enveloped(
    dk: DecryptionKey,
    content: bytes,
    *,
    attrs: bool,
    icv_len: int = 16,
    n_ris: int = 1,
    detached: bool = False,
    mode: str = "gcm",
) -> bytes:
    """RSA-OAEP-SHA256 + AES-128-GCM (or -CCM) AuthEnvelopedData, optionally with authAttrs."""
    cek, nonce = os.urandom(16), os.urandom(12)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ias = cms.IssuerAndSerialNumber(
        {
            "issuer": asn1_x509.Name.load(dk.issuer_der),
            "serial_number": dk.serial_number,
        }
    )
    ktri = cms.RecipientInfo(
        name="ktri",
        value={
            "version": "v0",
            "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=ias),
            "key_encryption_algorithm": {
                "algorithm": "rsaes_oaep",
                "parameters": {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "mask_gen_algorithm": {
                        "algorithm": "mgf1",
                        "parameters": {"algorithm": "sha256"},
                    },
                },
            },
            "encrypted_key": dk.certificate.public_key().encrypt(cek, oaep),
        },
    )
    auth_attrs = cms.CMSAttributes([{"type": "content_type", "values": ["data"]}])
    aad = auth_attrs.dump() if attrs else b""
    if mode == "gcm":  # a GCM tag may be truncated; ICVlen 12 is the DEFAULT, left out
        params = GcmParameters({"nonce": nonce, "icv_len": icv_len})
        sealed = AESGCM(cek).encrypt(nonce, content, aad)
        ciphertext, tag = sealed[:-16], sealed[-16:][:icv_len]
    else:
        params = algos.CcmParams({"aes_nonce": nonce, "aes_icvlen": icv_len})
        sealed = AESCCM(cek, tag_length=icv_len).encrypt(nonce, content, aad)
        ciphertext, tag = sealed[:-icv_len], sealed[-icv_len:]
    fields = {
        "version": "v0",
        "recipient_infos": [ktri] * n_ris,
        "auth_encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {
                "algorithm": f"aes128_{mode}",
                "parameters": params,
            },
            "encrypted_content": ciphertext,
        },
        "mac": tag,
    }
    if attrs:
        fields["auth_attrs"] = auth_attrs
    if detached:
        del fields["auth_encrypted_content_info"]["encrypted_content"]
    return cms.ContentInfo(
        {"content_type": "authenticated_enveloped_data", "content": cms.AuthEnvelopedData(fields)}
    ).dump()


@pytest.mark.parametrize("mode", ["gcm", "ccm"])
@pytest.mark.parametrize("attrs", [False, True])
@pytest.mark.parametrize("icv_len", [12, 16])
def test_auth_enveloped_with_auth_attrs_as_aad(attrs, icv_len, mode):
    rsa_dk, ec_dk = fresh_keys()
    content = os.urandom(333)
    der = build_auth_enveloped(rsa_dk, content, attrs=attrs, icv_len=icv_len, mode=mode)
    assert decrypt(der, [ec_dk, rsa_dk]) == DecryptResult(content, None, True)
    if attrs:  # the attribute value is authenticated: change "data" to "signed-data"
        data_oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"
        assert der.count(data_oid) == 2  # eContentType and the attribute
        at = der.rindex(data_oid)
        tampered = der[:at] + data_oid[:-1] + b"\x02" + der[at + len(data_oid) :]
        assert decrypt(tampered, [rsa_dk]) == DecryptResult(None, FAILED, True)


class EccCmsSharedInfo(core.Sequence):
    """RFC 5753 §7.2, encoded by asn1crypto (the module builds it by hand)."""

    _fields = [  # noqa: RUF012
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


def build_ecdh_enveloped(dk: DecryptionKey, content: bytes, ukm: bytes | None) -> bytes:
    """ECDH (dhSinglePass-stdDH-sha384kdf, aes256-wrap, rKeyId) + AES-256-CBC."""
    curve = dk.private_key.curve
    ephemeral = ec.generate_private_key(curve)
    wrap_alg = cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"})
    shared_info = EccCmsSharedInfo(
        {
            "key_info": wrap_alg,
            "entity_u_info": ukm,
            "supp_pub_info": (256).to_bytes(4, "big"),
        }
    ).dump()
    z = ephemeral.exchange(ec.ECDH(), dk.certificate.public_key())
    kek = X963KDF(algorithm=hashes.SHA384(), length=32, sharedinfo=shared_info).derive(z)
    cek, iv = os.urandom(32), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    kari = {
        "version": "v3",
        "originator": cms.OriginatorIdentifierOrKey(
            name="originator_key",
            value={"algorithm": {"algorithm": "ec"}, "public_key": point},
        ),
        "key_encryption_algorithm": {
            "algorithm": "1.3.132.1.11.2",
            "parameters": wrap_alg,
        },
        "recipient_encrypted_keys": [
            {
                "rid": cms.KeyAgreementRecipientIdentifier(
                    name="r_key_id",
                    value={"subject_key_identifier": dk.subject_key_identifier},
                ),
                "encrypted_key": aes_key_wrap(kek, cek),
            }
        ],
    }
    if ukm is not None:
        kari["ukm"] = ukm
    env = cms.EnvelopedData(
        {
            "version": "v2",
            "recipient_infos": [cms.RecipientInfo(name="kari", value=kari)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": ciphertext,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump()


@pytest.mark.parametrize("ukm", [None, b"user keying material " * 3])
def test_ecdh_ukm_goes_into_the_kdf(ukm):
    _, ec_dk = fresh_keys()
    content = os.urandom(100)
    der = build_ecdh_enveloped(ec_dk, content, ukm)
    assert decrypt(der, [ec_dk]) == DecryptResult(content, None, True)
    if ukm is not None:  # a different ukm yields a different KEK: the unwrap fails
        changed = der.replace(ukm, ukm.upper())
        assert decrypt(changed, [ec_dk]) == DecryptResult(None, FAILED, True)


def test_absent_encrypted_content_is_an_error():
    rsa_dk, _ = fresh_keys()
    der = build_auth_enveloped(rsa_dk, b"x", attrs=False, detached=True)
    assert decrypt(der, [rsa_dk]) == DecryptResult(
        None, "encrypted content is absent (detached)", True
    )


def test_too_many_recipient_infos_are_refused():
    rsa_dk, _ = fresh_keys()
    ok = build_auth_enveloped(rsa_dk, b"x", attrs=False, n_ris=MAX_RECIPIENT_INFOS)
    assert decrypt(ok, [rsa_dk]).content == b"x"
    too_many = build_auth_enveloped(rsa_dk, b"x", attrs=False, n_ris=MAX_RECIPIENT_INFOS + 1)
    result = decrypt(too_many, [rsa_dk])
    assert result.content is None and "too many RecipientInfos" in result.error


# ------------------------------------------------------ OpenSSL cross-check


def _openssl() -> str | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run([exe, "version"], capture_output=True, text=True).stdout
    return exe if out.startswith("OpenSSL 3") else None


OPENSSL = _openssl()
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="OpenSSL 3 command line not found")

# (openssl cms arguments with {rsa}/{ec} as recipient cert paths, which keys decrypt it)
OPENSSL_CASES = {
    "rsa-aes128": ("-aes128 {rsa}", "rsa"),
    "rsa-aes256": ("-aes256 {rsa}", "rsa"),
    "rsa-des3": ("-des3 {rsa}", "rsa"),
    "rsa-oaep-sha256": (
        "-aes256 -recip {rsa} -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256",
        "rsa",
    ),
    "rsa-oaep-sha384-mgf1sha1-label": (
        "-aes192 -recip {rsa} -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha384"
        " -keyopt rsa_mgf1_md:sha1 -keyopt rsa_oaep_label:00112233445566",
        "rsa",
    ),
    "ec-aes128-default-kdf": ("-aes128 {ec}", "ec"),
    "ec-aes192-sha384kdf": ("-aes192 -recip {ec} -keyopt ecdh_kdf_md:sha384", "ec"),
    "ec-aes256-sha512kdf": ("-aes256 -recip {ec} -keyopt ecdh_kdf_md:sha512", "ec"),
    "ec-aes256-sha224kdf": ("-aes256 -recip {ec} -keyopt ecdh_kdf_md:sha224", "ec"),
    "rsa-aes256-gcm": ("-aes-256-gcm {rsa}", "rsa"),
    "ec-aes128-gcm": ("-aes-128-gcm -recip {ec} -keyopt ecdh_kdf_md:sha256", "ec"),
    "keyid-both": ("-aes256 -keyid {rsa} {ec}", "both"),
    "stream-ber": ("-stream -aes128 {rsa}", "rsa"),
}


@pytest.fixture(scope="module")
def openssl_recipients(tmp_path_factory):
    rsa_dk, ec_dk = fresh_keys()
    folder = tmp_path_factory.mktemp("openssl")
    (folder / "rsa.pem").write_bytes(pem_cert(rsa_dk.certificate))
    (folder / "ec.pem").write_bytes(pem_cert(ec_dk.certificate))
    return folder, rsa_dk, ec_dk


def openssl_encrypt(folder: Path, args: str, content: bytes) -> bytes:
    (folder / "in.bin").write_bytes(content)
    argv = [OPENSSL, "cms", "-encrypt", "-binary", "-outform", "DER", "-in", str(folder / "in.bin")]
    argv += args.format(rsa=folder / "rsa.pem", ec=folder / "ec.pem").split()
    return subprocess.run(argv, capture_output=True, check=True).stdout


@pytest.mark.process
@needs_openssl
@pytest.mark.parametrize("case", OPENSSL_CASES)
def test_openssl_cms_encrypt_round_trip(case, openssl_recipients):
    folder, rsa_dk, ec_dk = openssl_recipients
    args, who = OPENSSL_CASES[case]
    content = os.urandom(10000 if case == "stream-ber" else 1000)
    der = openssl_encrypt(folder, args, content)
    if case == "stream-ber":
        assert der[1] == 0x80  # indefinite length, eContent in chunks
    if "gcm" in case:
        assert cms.ContentInfo.load(der)["content_type"].native == "authenticated_enveloped_data"
    if "label" in case:
        ri = cms.ContentInfo.load(der)["content"]["recipient_infos"][0].chosen
        source = ri["key_encryption_algorithm"]["parameters"]["p_source_algorithm"]
        assert source["parameters"].native == bytes.fromhex("00112233445566")
    if "keyid" in case:
        ris = cms.ContentInfo.load(der)["content"]["recipient_infos"]
        assert {ri.name for ri in ris} == {"ktri", "kari"}
    expected = DecryptResult(content, None, True)
    if who in ("rsa", "both"):
        assert decrypt(der, [rsa_dk]) == expected
    if who in ("ec", "both"):
        assert decrypt(der, [ec_dk]) == expected
    assert decrypt(der, [ec_dk, rsa_dk]) == expected
    stranger = {"rsa": ec_dk, "ec": rsa_dk}.get(who)
    if stranger is not None:
        assert decrypt(der, [stranger]) == DecryptResult(None, NOT_FOR_US, False)
    # Flip a bit in the last ciphertext block (or GCM tag): still no exception.
    tampered = bytearray(der)
    tampered[-30 if case == "stream-ber" else -3] ^= 0x01
    result = decrypt(bytes(tampered), [rsa_dk, ec_dk])
    assert result.content != content


# ------------------------------------------------------------- hypothesis


@cache
def fuzz_seeds() -> tuple[tuple[bytes, tuple[DecryptionKey, ...]], ...]:
    rsa_dk, _ = fresh_keys()
    seeds = [(build_auth_enveloped(rsa_dk, b"fuzz me" * 10, attrs=True), (rsa_dk,))]
    if CORPUS.is_dir():
        seeds.append((mime_body((CORPUS / "alice.env.eml").read_bytes()), (corpus_key("bob"),)))
        seeds.append(
            (
                mime_body((INTEROP / "fran-ec_ossl-aes128-sha256.env").read_bytes()),
                (corpus_key("fran-ec"),),
            )
        )
        seeds.append(
            (
                mime_body((INTEROP / "fran-oaep-label_ossl.env").read_bytes()),
                (corpus_key("fran"),),
            )
        )
    return tuple(seeds)


@settings(
    max_examples=400, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(min_value=0, max_value=3),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
    insert=st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.binary(max_size=8))),
)
def test_mutated_der_never_raises(seed, edits, cut, insert):
    seeds = fuzz_seeds()
    der, keys = seeds[seed % len(seeds)]
    data = bytearray(der)
    for pos, value in edits:
        data[pos % len(data)] = value
    if insert is not None:
        at = insert[0] % (len(data) + 1)
        data[at:at] = insert[1]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    result = decrypt(bytes(data), keys)
    assert isinstance(result, DecryptResult)
    assert (result.content is None) != (result.error is None)
    assert result.error is None or len(result.error) <= 120
    if result.content is not None:
        assert result.addressed_to_us

"""CMS building for server-side signing and encryption: ``encrypt.enveloped_data``
and ``signing.encapsulated_signed_data``, each result opened both by the project's
own reader (``envelope.decrypt``, ``cms``, the engine) and by the system openssl."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from smime_milter.cms.encrypt import EncryptionError, EncryptionRecipient, enveloped_data
from smime_milter.cms.envelope import DecryptionKey, decrypt
from smime_milter.cms.signed_data import (
    OID_DATA,
    AlgorithmPolicy,
    check_signature,
    parse_signed_data,
)
from smime_milter.cms.signing import (
    SigningIdentity,
    build_signer_info,
    detached_signed_data,
    encapsulated_signed_data,
)
from smime_milter.model import Status
from tests.support import smime
from tests.support.pki import Identity, TestPki, make_leaf
from tests.support.verdicts import NOW, assert_verified, entity, make_verifier

#: openssl checks certificate validity at NOW, as the engine tests do.
OPENSSL_AT = ["-attime", str(int(NOW.timestamp()))]

CONTENT = smime.text_entity("Encrypted for you.\nSecond line.\n")

OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
OID_RSA_PKCS1V15 = "1.2.840.113549.1.1.1"
OID_RSA_OAEP = "1.2.840.113549.1.1.7"
#: RFC 5753 dhSinglePass-stdDH-sha{256,384,512}kdf-scheme.
OID_ECDH_SHA256 = "1.3.132.1.11.1"
OID_ECDH_SHA384 = "1.3.132.1.11.2"
OID_ECDH_SHA512 = "1.3.132.1.11.3"

#: Exact DER of the key-encryption AlgorithmIdentifiers (RFC 3370 §4.2.1; RFC 4055
#: §2.1 and §4.1: sha256Identifier and mgf1SHA256Identifier carry NULL parameters,
#: pSourceFunc is left at its DEFAULT; RFC 3565 §2.3.2: aes256-wrap without parameters).
PKCS1V15_DER = bytes.fromhex("300d06092a864886f70d0101010500")
OAEP_SHA256_DER = bytes.fromhex(
    "303c06092a864886f70d010107302f"
    "a00f300d06096086480165030402010500"
    "a11c301a06092a864886f70d010108300d06096086480165030402010500"
)
AES256_WRAP_DER = bytes.fromhex("300b060960864801650304012d")


@dataclass(frozen=True)
class Kind:
    """One recipient flavour: how its certificate is made and what must come out."""

    key_type: str
    key_usage: str
    oaep: bool
    info: str  # RecipientInfo alternative
    algorithm: str  # keyEncryptionAlgorithm OID


KINDS: dict[str, Kind] = {
    "rsa-pkcs1v15": Kind("rsa", "key_encipherment", False, "ktri", OID_RSA_PKCS1V15),
    "rsa-oaep": Kind("rsa", "key_encipherment", True, "ktri", OID_RSA_OAEP),
    "ec-p256": Kind("ec256", "key_agreement", False, "kari", OID_ECDH_SHA256),
    "ec-p384": Kind("ec384", "key_agreement", False, "kari", OID_ECDH_SHA384),
    "ec-p521": Kind("ec521", "key_agreement", False, "kari", OID_ECDH_SHA512),
    # The OAEP capability means nothing for an EC key: still ECDH.
    "ec-p256-oaep-flag": Kind("ec256", "key_agreement", True, "kari", OID_ECDH_SHA256),
}

#: Recipient mixes -> the EnvelopedData version RFC 5652 §6.1 demands.
MIXES: dict[str, tuple[tuple[str, ...], str]] = {
    "rsa-only": (("rsa-pkcs1v15", "rsa-oaep"), "v0"),
    "ec-only": (("ec-p256", "ec-p384"), "v2"),
    "mixed": (("rsa-pkcs1v15", "rsa-oaep", "ec-p256", "ec-p384", "ec-p521"), "v2"),
}


@pytest.fixture(scope="module")
def recipients(pki: TestPki) -> dict[str, Identity]:
    """An encryption certificate (its own key) per kind, from the test intermediate."""
    return {
        name: make_leaf(
            pki.intermediate,
            f"{name}@example.net",
            kind.key_type,
            now=NOW,
            key_usage={kind.key_usage},
            key_label=f"encrypt:{name}",
        )
        for name, kind in KINDS.items()
    }


@pytest.fixture(scope="module")
def ca_file(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("encrypt-ca") / "ca.pem"
    path.write_bytes(pki.ca_bundle_pem)
    return path


def recipient(ident: Identity, kind: str) -> EncryptionRecipient:
    return EncryptionRecipient(ident.cert, oaep=KINDS[kind].oaep)


def ours(der: bytes, ident: Identity) -> bytes | None:
    result = decrypt(der, [DecryptionKey(ident.key, ident.cert)])
    return result.content


def openssl_opens(der: bytes, ident: Identity) -> bytes:
    message = smime.wrap_message(smime.pkcs7_mime_entity(der, "enveloped-data"))
    return smime.openssl_decrypt(message, ident)


def enveloped(der: bytes) -> asn1_cms.EnvelopedData:
    info = asn1_cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    return info["content"]


def counting_random() -> Callable[[int], bytes]:
    """A predictable random source: 00 01 02 ... across calls."""
    counter = itertools.count()
    return lambda size: bytes(next(counter) % 256 for _ in range(size))


# --- enveloped_data: one recipient ------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("kind", KINDS)
def test_single_recipient_opens_with_both_decryptors(
    kind: str, recipients: dict[str, Identity]
) -> None:
    ident = recipients[kind]
    der = enveloped_data(CONTENT, [recipient(ident, kind)])

    assert ours(der, ident) == CONTENT
    assert openssl_opens(der, ident) == CONTENT


@pytest.mark.parametrize("kind", KINDS)
def test_single_recipient_structure(kind: str, recipients: dict[str, Identity]) -> None:
    ident = recipients[kind]
    expected = KINDS[kind]
    env = enveloped(enveloped_data(CONTENT, [recipient(ident, kind)]))

    assert env["version"].native == ("v0" if expected.info == "ktri" else "v2")
    assert isinstance(env["originator_info"], core.Void)
    assert isinstance(env["unprotected_attrs"], core.Void)
    eci = env["encrypted_content_info"]
    assert eci["content_type"].dotted == OID_DATA
    assert eci["content_encryption_algorithm"]["algorithm"].dotted == OID_AES256_CBC
    assert len(eci["content_encryption_algorithm"]["parameters"].native) == 16
    assert len(eci["encrypted_content"].native) % 16 == 0

    (info,) = env["recipient_infos"]
    assert info.name == expected.info
    chosen = info.chosen
    assert chosen["version"].native == ("v0" if expected.info == "ktri" else "v3")
    assert chosen["key_encryption_algorithm"]["algorithm"].dotted == expected.algorithm
    if expected.info == "ktri":
        rid = chosen["rid"]
    else:
        (encrypted_key,) = chosen["recipient_encrypted_keys"]
        rid = encrypted_key["rid"]
    assert rid.name == "issuer_and_serial_number"
    assert rid.chosen["serial_number"].native == ident.cert.serial_number
    assert rid.chosen["issuer"].dump() == ident.cert.issuer.public_bytes()


@pytest.mark.parametrize(
    ("kind", "algorithm_der"),
    [("rsa-pkcs1v15", PKCS1V15_DER), ("rsa-oaep", OAEP_SHA256_DER)],
)
def test_key_transport_algorithm_encoding(
    kind: str, algorithm_der: bytes, recipients: dict[str, Identity]
) -> None:
    env = enveloped(enveloped_data(CONTENT, [recipient(recipients[kind], kind)]))
    (info,) = env["recipient_infos"]
    assert info.chosen["key_encryption_algorithm"].dump() == algorithm_der
    assert len(info.chosen["encrypted_key"].native) == 256  # RSA-2048


@pytest.mark.parametrize(
    ("kind", "point_bytes"), [("ec-p256", 65), ("ec-p384", 97), ("ec-p521", 133)]
)
def test_key_agreement_encoding(
    kind: str, point_bytes: int, recipients: dict[str, Identity]
) -> None:
    env = enveloped(enveloped_data(CONTENT, [recipient(recipients[kind], kind)]))
    (info,) = env["recipient_infos"]
    kari = info.chosen

    originator = kari["originator"]
    assert originator.name == "originator_key"
    algorithm = originator.chosen["algorithm"]
    assert algorithm["algorithm"].dotted == "1.2.840.10045.2.1"  # id-ecPublicKey
    assert isinstance(algorithm["parameters"], core.Void)  # absent: RFC 5753 §3.1.1 SHOULD
    point = originator.chosen["public_key"].native
    assert len(point) == point_bytes and point[0] == 0x04  # uncompressed
    curve = recipients[kind].cert.public_key().curve  # type: ignore[union-attr]
    ec.EllipticCurvePublicKey.from_encoded_point(curve, point)  # on the recipient's curve

    assert isinstance(kari["ukm"], core.Void)
    assert kari["key_encryption_algorithm"]["parameters"].dump() == AES256_WRAP_DER
    (encrypted_key,) = kari["recipient_encrypted_keys"]
    assert len(encrypted_key["encrypted_key"].native) == 40  # AES-256 CEK wrapped


@pytest.mark.process
@pytest.mark.parametrize(
    "content",
    [b"", b"x" * 15, b"y" * 16, bytes(range(256)) * 400],
    ids=["empty", "one-short-of-a-block", "full-block", "100k-binary"],
)
def test_content_lengths_and_padding(content: bytes, recipients: dict[str, Identity]) -> None:
    rsa_ident, ec_ident = recipients["rsa-oaep"], recipients["ec-p384"]
    der = enveloped_data(
        content, [recipient(rsa_ident, "rsa-oaep"), recipient(ec_ident, "ec-p384")]
    )
    ciphertext = enveloped(der)["encrypted_content_info"]["encrypted_content"].native
    assert len(ciphertext) == (len(content) // 16 + 1) * 16  # PKCS#7: always a pad block

    assert ours(der, rsa_ident) == content
    assert ours(der, ec_ident) == content
    assert openssl_opens(der, ec_ident) == content


def test_random_source_gives_cek_and_iv(recipients: dict[str, Identity]) -> None:
    ident = recipients["ec-p256"]
    der = enveloped_data(CONTENT, [recipient(ident, "ec-p256")], random=counting_random())
    eci = enveloped(der)["encrypted_content_info"]

    cek, iv = bytes(range(32)), bytes(range(32, 48))
    assert eci["content_encryption_algorithm"]["parameters"].native == iv
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(CONTENT) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    assert eci["encrypted_content"].native == encryptor.update(padded) + encryptor.finalize()
    assert ours(der, ident) == CONTENT


def test_every_message_gets_fresh_keys(recipients: dict[str, Identity]) -> None:
    ident = recipients["ec-p256"]
    first, second = (
        enveloped(enveloped_data(CONTENT, [recipient(ident, "ec-p256")])) for _ in range(2)
    )
    iv = [e["encrypted_content_info"]["content_encryption_algorithm"]["parameters"].native
          for e in (first, second)]
    ephemeral = [e["recipient_infos"][0].chosen["originator"].chosen["public_key"].native
                 for e in (first, second)]
    assert iv[0] != iv[1]
    assert ephemeral[0] != ephemeral[1]


def test_random_source_of_the_wrong_size_is_refused(recipients: dict[str, Identity]) -> None:
    with pytest.raises(ValueError, match="random source"):
        enveloped_data(CONTENT, [recipient(recipients["rsa-oaep"], "rsa-oaep")],
                       random=lambda size: b"\x00" * (size - 1))


# --- enveloped_data: several recipients -------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("mix", MIXES)
def test_every_recipient_of_a_mix_can_decrypt(mix: str, recipients: dict[str, Identity]) -> None:
    kinds, version = MIXES[mix]
    der = enveloped_data(CONTENT, [recipient(recipients[k], k) for k in kinds])
    env = enveloped(der)

    assert env["version"].native == version
    assert sorted(i.name for i in env["recipient_infos"]) == sorted(
        KINDS[k].info for k in kinds
    )
    for kind in kinds:
        assert ours(der, recipients[kind]) == CONTENT, kind
        assert openssl_opens(der, recipients[kind]) == CONTENT, kind


@pytest.mark.process
@pytest.mark.parametrize("outsider", ["rsa", "ec256", "ec521"])
def test_a_key_that_is_not_a_recipient_cannot_decrypt(
    outsider: str, pki: TestPki, recipients: dict[str, Identity]
) -> None:
    kinds, _ = MIXES["mixed"]
    der = enveloped_data(CONTENT, [recipient(recipients[k], k) for k in kinds])
    ident = getattr(pki, outsider)

    result = decrypt(der, [DecryptionKey(ident.key, ident.cert)])
    assert result.content is None
    assert not result.addressed_to_us
    with pytest.raises(RuntimeError, match="openssl cms -decrypt failed"):
        openssl_opens(der, ident)


def test_encoding_is_der(recipients: dict[str, Identity]) -> None:
    """Re-encoding through asn1crypto (which sorts SET OF) changes nothing."""
    kinds, _ = MIXES["mixed"]
    der = enveloped_data(CONTENT, [recipient(recipients[k], k) for k in kinds])
    assert asn1_cms.ContentInfo.load(der).dump(force=True) == der
    infos = [info.dump() for info in enveloped(der)["recipient_infos"]]
    assert infos == sorted(infos)


def test_duplicate_recipients_get_one_recipient_info(recipients: dict[str, Identity]) -> None:
    rsa_ident, ec_ident = recipients["rsa-pkcs1v15"], recipients["ec-p256"]
    reloaded = EncryptionRecipient(x509.load_der_x509_certificate(rsa_ident.cert_der), oaep=True)
    der = enveloped_data(CONTENT, [
        EncryptionRecipient(rsa_ident.cert),
        EncryptionRecipient(ec_ident.cert),
        EncryptionRecipient(rsa_ident.cert),
        reloaded,  # equal certificate, other object, other flag: the first entry wins
        EncryptionRecipient(ec_ident.cert),
    ])
    env = enveloped(der)
    assert len(env["recipient_infos"]) == 2
    (ktri,) = [i.chosen for i in env["recipient_infos"] if i.name == "ktri"]
    assert ktri["key_encryption_algorithm"].dump() == PKCS1V15_DER
    assert ours(der, rsa_ident) == CONTENT
    assert ours(der, ec_ident) == CONTENT


# --- enveloped_data: refusals -----------------------------------------------------------


def _unusable(pki: TestPki, name: str) -> Identity:
    if name == "ed25519":
        return pki.ed25519
    if name == "rsa1024":
        return pki.weak_rsa
    if name == "ed448":
        return make_leaf(pki.intermediate, "ed448@example.net", "ed448", now=NOW,
                         key_label="encrypt:ed448")
    curve = {"p224": ec.SECP224R1(), "secp256k1": ec.SECP256K1()}[name]
    return make_leaf(pki.intermediate, f"{name}@example.net", now=NOW,
                     key=ec.generate_private_key(curve))


UNUSABLE: dict[str, str] = {
    # certificate -> what the error must say
    "ed25519": "Ed25519PublicKey keys cannot receive encrypted mail",
    "ed448": "Ed448PublicKey keys cannot receive encrypted mail",
    "rsa1024": "RSA key of 1024 bits is below the minimum of 2048",
    "p224": "elliptic curve secp224r1 is not supported",
    "secp256k1": "elliptic curve secp256k1 is not supported",
}


@pytest.mark.parametrize("name", UNUSABLE)
def test_unusable_recipient_is_refused_by_name(
    name: str, pki: TestPki, recipients: dict[str, Identity]
) -> None:
    bad = _unusable(pki, name)
    drawn: list[int] = []

    def spy(size: int) -> bytes:
        drawn.append(size)
        return bytes(size)

    good = recipient(recipients["rsa-oaep"], "rsa-oaep")
    with pytest.raises(EncryptionError) as caught:
        enveloped_data(CONTENT, [good, EncryptionRecipient(bad.cert)], random=spy)
    message = str(caught.value)
    assert UNUSABLE[name] in message
    assert bad.cert.subject.rfc4514_string() in message
    assert drawn == []  # refused before any key material was made


def test_no_recipients_is_refused() -> None:
    with pytest.raises(EncryptionError, match="no recipients"):
        enveloped_data(CONTENT, [])


def test_encryption_error_is_a_value_error() -> None:
    assert issubclass(EncryptionError, ValueError)


# --- encapsulated_signed_data -------------------------------------------------------------

SIGNERS: dict[str, str] = {
    # test PKI leaf -> its SAN address
    "rsa": "alice@example.com",
    "ec256": "ec256@example.com",
    "ec384": "ec384@example.com",
    "ec521": "ec521@example.com",
}


def signing_identity(ident: Identity) -> SigningIdentity:
    return SigningIdentity(ident.key, ident.cert, ident.chain)


def opaque_blob(ident: Identity, content: bytes = CONTENT) -> bytes:
    signer = signing_identity(ident)
    info = build_signer_info(signer, content, content_type="data", signing_time=NOW)
    return encapsulated_signed_data(info, content, signer.certificates_der)


def openssl_verify_der(der: bytes, ca_file: Path) -> subprocess.CompletedProcess[bytes]:
    return smime.openssl_verify_result(
        der, [ca_file], extra_args=["-inform", "DER", "-binary", *OPENSSL_AT]
    )


@pytest.mark.process
@pytest.mark.parametrize("signer", SIGNERS)
def test_encapsulated_signed_data_verifies_with_openssl(
    signer: str, pki: TestPki, ca_file: Path
) -> None:
    result = openssl_verify_der(opaque_blob(getattr(pki, signer)), ca_file)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == CONTENT


@pytest.mark.parametrize("signer", SIGNERS)
def test_encapsulated_signed_data_passes_the_project_checker(signer: str, pki: TestPki) -> None:
    ident = getattr(pki, signer)
    signed = parse_signed_data(opaque_blob(ident))
    assert signed.econtent_type == OID_DATA
    assert signed.econtent == CONTENT
    (info,) = signed.signer_infos
    check = check_signature(info, signed.econtent, signed.certificates, AlgorithmPolicy())
    assert check.ok, check.errors
    assert check.certificate is not None
    assert check.certificate.serial == ident.cert.serial_number


@pytest.mark.parametrize("signer", SIGNERS)
def test_engine_verifies_an_opaque_signed_message(signer: str, pki: TestPki) -> None:
    message = smime.wrap_message(
        smime.pkcs7_mime_entity(opaque_blob(getattr(pki, signer), entity()), "signed-data"),
        from_addr=SIGNERS[signer],
    )
    verdict = make_verifier(pki).verify(message, at=NOW)
    assert_verified(verdict, SIGNERS[signer])
    assert verdict.layer == "signed-data"


@pytest.mark.process
def test_tampered_econtent_fails_everywhere(pki: TestPki, ca_file: Path) -> None:
    der = opaque_blob(pki.rsa)
    assert der.count(b"Encrypted for you.") == 1
    forged = der.replace(b"Encrypted for you.", b"Encrypted for YOU.")
    assert openssl_verify_der(forged, ca_file).returncode != 0
    signed = parse_signed_data(forged)
    check = check_signature(signed.signer_infos[0], signed.econtent or b"",
                            signed.certificates, AlgorithmPolicy())
    assert not check.ok


def test_encapsulated_and_detached_differ_only_in_econtent(pki: TestPki) -> None:
    signer = signing_identity(pki.ec384)
    info = build_signer_info(signer, CONTENT, content_type="data", signing_time=NOW)
    certificates = (*signer.certificates_der, signer.certificates_der[0])  # a duplicate
    opaque = asn1_cms.ContentInfo.load(encapsulated_signed_data(info, CONTENT, certificates))
    detached = asn1_cms.ContentInfo.load(detached_signed_data(info, certificates))

    for name in ("version", "digest_algorithms", "certificates", "signer_infos"):
        assert opaque["content"][name].dump() == detached["content"][name].dump(), name
    assert opaque["content"]["version"].native == "v1"
    assert len(opaque["content"]["certificates"]) == len(signer.certificates_der)
    encap = opaque["content"]["encap_content_info"]
    assert encap["content_type"].dotted == OID_DATA
    assert encap["content"].native == CONTENT
    assert isinstance(detached["content"]["encap_content_info"]["content"], core.Void)
    assert opaque.dump(force=True) == opaque.dump()


# --- both: sign, then encrypt -------------------------------------------------------------


def test_signed_then_encrypted_message_is_verified_by_the_engine(
    pki: TestPki, recipients: dict[str, Identity]
) -> None:
    """The server-side path end to end: opaque-sign as alice, envelope for an EC
    recipient, and let a verifier holding that recipient's key look inside."""
    inner = smime.pkcs7_mime_entity(opaque_blob(pki.rsa, entity()), "signed-data")
    ident = recipients["ec-p256"]
    der = enveloped_data(inner, [recipient(ident, "ec-p256")])
    message = smime.wrap_message(smime.pkcs7_mime_entity(der, "enveloped-data"))

    verifier = make_verifier(pki, keys=[DecryptionKey(ident.key, ident.cert)])
    verdict = verifier.verify(message, at=NOW)
    assert_verified(verdict, "alice@example.com", status=Status.ENCRYPTED_SIGNED_VERIFIED)

"""MMHS draft and release, building side: countersignatures, added signers and the
MMHS-Authorizing-Users field, cross-checked with the system openssl and with the
project's own signature checker."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core
from cryptography.hazmat.primitives import serialization

from smime_milter.cms.signed_data import (
    OID_COUNTERSIGNATURE,
    OID_DATA,
    AlgorithmPolicy,
    check_signature,
    parse_signed_data,
    signed_attributes_der,
)
from smime_milter.cms.signing import (
    SigningError,
    SigningIdentity,
    build_signer_info,
    countersignature,
)
from smime_milter.mail import mime
from smime_milter.release.authorize import (
    AuthorizeError,
    add_countersignatures,
    add_signer,
    set_authorizing_users,
    signer_infos,
)
from tests.support import smime
from tests.support.pki import Identity, TestPki

NOW = datetime.now(UTC).replace(microsecond=0)
COUNTERSIGNERS = ("rsa", "ec256", "ec384", "ec521", "ed25519")


@pytest.fixture(scope="module")
def ca_pem(live_pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    path = tmp_path_factory.mktemp("authorize-ca") / "ca.pem"
    path.write_bytes(live_pki.ca_bundle_pem)
    return [path]


def identity(ident: Identity) -> SigningIdentity:
    return SigningIdentity(ident.key, ident.cert, ident.chain)


def detached(live_pki: TestPki, text: str = "Release this, please.\n") -> bytes:
    return smime.multipart_signed(smime.text_entity(text), live_pki.rsa)


def opaque(live_pki: TestPki, text: str = "Release this, please.\n") -> bytes:
    return smime.opaque_signed(smime.text_entity(text), live_pki.rsa)


def cms_blob(message: bytes) -> bytes:
    """The SignedData of the top-level layer, decoded from the message."""
    top = mime.parse_entity(message)
    if top.content_type.mime_type == "multipart/signed":
        parts = mime.split_multipart(top.body, top.content_type.param("boundary") or "")
        return mime.decode_transfer_encoding(mime.parse_entity(parts[1]))
    return mime.decode_transfer_encoding(top)


def first_part(message: bytes) -> bytes:
    top = mime.parse_entity(message)
    return mime.split_multipart(top.body, top.content_type.param("boundary") or "")[0]


def head(message: bytes) -> bytes:
    return message[: len(message) - len(mime.parse_entity(message).body)]


def counters(info: asn1_cms.SignerInfo) -> list[asn1_cms.SignerInfo]:
    unsigned = info["unsigned_attrs"]
    if isinstance(unsigned, core.Void):
        return []
    return [
        value for attribute in unsigned if attribute["type"].dotted == OID_COUNTERSIGNATURE
        for value in attribute["values"]
    ]


def signed_parts(info: asn1_cms.SignerInfo) -> tuple[bytes, bytes, bytes]:
    return info["sid"].dump(), signed_attributes_der(info), info["signature"].contents


def print_cms(message: bytes) -> str:
    result = smime.openssl("cms", "-cmsout", "-print", "-inform", "DER", stdin=cms_blob(message))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


# --- countersignatures ---------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("build", [detached, opaque], ids=["multipart-signed", "signed-data"])
def test_countersigned_message_still_verifies_with_openssl(
    build, live_pki: TestPki, ca_pem: list[Path]
) -> None:
    message = build(live_pki)
    out = add_countersignatures(message, identity(live_pki.ec256), [0], NOW)

    verified = smime.openssl_verify_result(out, ca_pem)
    assert verified.returncode == 0, verified.stderr.decode()
    assert b"Release this, please." in verified.stdout
    printed = print_cms(out)
    # Certificates print before signerInfos: look only at the unsigned attributes.
    unsigned = printed[printed.index("unsignedAttrs:"):]
    assert "1.2.840.113549.1.9.6" in unsigned
    assert format(live_pki.ec256.cert.serial_number, "X") in unsigned


@pytest.mark.parametrize("build", [detached, opaque], ids=["multipart-signed", "signed-data"])
def test_countersigning_keeps_every_signed_byte(build, live_pki: TestPki) -> None:
    message = build(live_pki)
    out = add_countersignatures(message, identity(live_pki.ec384), [0], NOW)

    before, after = signer_infos(message), signer_infos(out)
    assert len(after) == 1
    assert signed_parts(after[0]) == signed_parts(before[0])
    assert after[0]["signed_attrs"].dump() == before[0]["signed_attrs"].dump()
    assert after[0]["signature"].dump() == before[0]["signature"].dump()
    old, new = parse_signed_data(cms_blob(message)), parse_signed_data(cms_blob(out))
    assert (new.econtent_type, new.econtent) == (old.econtent_type, old.econtent)
    assert head(out) == head(message)
    # Everything up to the base64 of the SignedData is untouched.
    marker = b"filename=smime.p7s\r\n\r\n" if build is detached else b"filename=smime.p7m\r\n\r\n"
    start = message.index(marker) + len(marker)
    assert out[:start] == message[:start]
    if build is detached:
        assert first_part(out) == first_part(message)
        assert out.endswith(message[message.rindex(b"\r\n--") :])  # close delimiter


def test_signature_part_is_base64_in_76_character_crlf_lines(live_pki: TestPki) -> None:
    out = add_countersignatures(detached(live_pki), identity(live_pki.ec256), [0], NOW)
    signature = mime.parse_entity(mime.split_multipart(
        mime.parse_entity(out).body, mime.parse_entity(out).content_type.param("boundary") or ""
    )[1])
    lines = signature.body.split(b"\r\n")
    assert b"\n" not in b"".join(lines)
    assert all(len(line) == 76 for line in lines[:-1]) and 0 < len(lines[-1]) <= 76
    assert signature.get("content-type") == "application/pkcs7-signature; name=smime.p7s"


@pytest.mark.parametrize("name", COUNTERSIGNERS)
def test_countersignature_verifies_with_the_project_checker(name: str, live_pki: TestPki) -> None:
    out = add_countersignatures(detached(live_pki), identity(getattr(live_pki, name)), [0], NOW)
    signed = parse_signed_data(cms_blob(out))
    parent = signed.signer_infos[0]
    (counter,) = counters(parent)
    octets = parent["signature"].native

    check = check_signature(counter, octets, signed.certificates, AlgorithmPolicy(),
                            expected_content_type=None)
    assert check.ok, check.errors
    assert check.certificate is not None
    assert check.certificate.serial == getattr(live_pki, name).cert.serial_number
    tampered = octets[:10] + bytes([octets[10] ^ 0x01]) + octets[11:]
    broken = check_signature(counter, tampered, signed.certificates, AlgorithmPolicy(),
                             expected_content_type=None)
    assert not broken.ok
    assert any("digest mismatch" in error for error in broken.errors)


def test_countersignature_attributes_follow_rfc5652_11_4(live_pki: TestPki) -> None:
    out = add_countersignatures(opaque(live_pki), identity(live_pki.rsa), [0], NOW)
    (counter,) = counters(signer_infos(out)[0])
    types = {attribute["type"].native for attribute in counter["signed_attrs"]}
    assert types == {"signing_time", "message_digest"}
    assert counter["version"].native == "v1"
    assert counter["sid"].name == "issuer_and_serial_number"
    (signing_time,) = (a["values"][0].native for a in counter["signed_attrs"]
                       if a["type"].native == "signing_time")
    assert signing_time == NOW


@pytest.mark.process
def test_two_countersigners_share_one_attribute(live_pki: TestPki, ca_pem: list[Path]) -> None:
    first = add_countersignatures(detached(live_pki), identity(live_pki.ec256), [0], NOW)
    second = add_countersignatures(first, identity(live_pki.ec521), [0], NOW)

    parent = signer_infos(second)[0]
    attributes = [a for a in parent["unsigned_attrs"] if a["type"].dotted == OID_COUNTERSIGNATURE]
    assert len(attributes) == 1
    found = counters(parent)
    assert [c["sid"].chosen["serial_number"].native for c in found] == [
        live_pki.ec256.cert.serial_number, live_pki.ec521.cert.serial_number,
    ]
    signed = parse_signed_data(cms_blob(second))
    for counter in found:
        check = check_signature(counter, parent["signature"].native, signed.certificates,
                                AlgorithmPolicy(), expected_content_type=None)
        assert check.ok, check.errors
    assert smime.openssl_verify(second, ca_pem)
    # The first countersignature is carried over byte for byte.
    assert counters(signer_infos(first)[0])[0].dump() == found[0].dump()


def test_certificates_are_added_once(live_pki: TestPki) -> None:
    countersigner = identity(live_pki.ec256)
    out = add_countersignatures(detached(live_pki), countersigner, [0], NOW)
    out = add_countersignatures(out, countersigner, [0], NOW)
    ders = [info.der for info in parse_signed_data(cms_blob(out)).certificates]
    assert len(ders) == len(set(ders))
    assert set(countersigner.certificates_der) <= set(ders)
    assert len(counters(signer_infos(out)[0])) == 2


@pytest.mark.process
def test_only_the_chosen_signer_is_countersigned(live_pki: TestPki, ca_pem: list[Path]) -> None:
    message = smime.multipart_signed(
        smime.text_entity("two signers\n"), live_pki.rsa, extra_signers=[live_pki.ec384]
    )
    out = add_countersignatures(message, identity(live_pki.ec256), [1], NOW)
    before, after = signer_infos(message), signer_infos(out)
    assert after[0].dump() == before[0].dump()
    assert counters(after[0]) == [] and len(counters(after[1])) == 1
    assert signed_parts(after[1]) == signed_parts(before[1])
    assert smime.openssl_verify(out, ca_pem)


@pytest.mark.process
def test_other_unsigned_attributes_are_kept(live_pki: TestPki, ca_pem: list[Path]) -> None:
    content = smime.text_entity("with an unsigned attribute\n")
    info = smime.signer_info(content, live_pki.rsa)
    other = asn1_cms.CMSAttribute({"type": "1.3.6.1.4.1.99999.1", "values": [core.Null()]})
    info["unsigned_attrs"] = asn1_cms.CMSAttributes([other])
    blob = smime.signed_data(content, [info], detached=False,
                             certs=[live_pki.rsa, *live_pki.rsa.chain])
    message = smime.wrap_message(smime.pkcs7_mime_entity(blob, "signed-data"))

    out = add_countersignatures(message, identity(live_pki.ec256), [0], NOW)
    attributes = list(signer_infos(out)[0]["unsigned_attrs"])
    assert [a["type"].dotted for a in attributes] == ["1.3.6.1.4.1.99999.1", OID_COUNTERSIGNATURE]
    assert attributes[0].dump() == other.dump()
    assert smime.openssl_verify(out, ca_pem)


@pytest.mark.process
@pytest.mark.parametrize("opaque_form", [False, True], ids=["multipart-signed", "signed-data"])
def test_openssl_streamed_ber_input(
    opaque_form: bool, live_pki: TestPki, ca_pem: list[Path], tmp_path: Path
) -> None:
    """openssl -stream writes indefinite-length BER and LF MIME around a CRLF part."""
    signer = tmp_path / "signer.pem"
    signer.write_bytes(live_pki.rsa.bundle_pem)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(live_pki.intermediate.cert_pem)
    args = ["cms", "-sign", "-stream", "-signer", signer, "-certfile", chain]
    signed = smime.openssl(*args, *(["-nodetach"] if opaque_form else []),
                           stdin=b"Content-Type: text/plain\n\nhello\nworld\n")
    assert signed.returncode == 0, signed.stderr.decode()
    message = b"From: alice@example.com\nTo: bob@example.com\nSubject: ber\n" + signed.stdout
    if opaque_form:
        assert cms_blob(message)[1] == 0x80  # indefinite-length BER

    out = add_countersignatures(message, identity(live_pki.ec256), [0], NOW)
    verified = smime.openssl_verify_result(out, ca_pem)
    assert verified.returncode == 0, verified.stderr.decode()
    assert signed_parts(signer_infos(out)[0]) == signed_parts(signer_infos(message)[0])
    assert head(out) == head(message)
    assert b"\r\n" not in out[len(out) - 200 :]  # the signature part kept LF line ends


# --- adding a signer -----------------------------------------------------------------


@pytest.mark.process
def test_add_signer_wraps_an_unsigned_message(live_pki: TestPki, ca_pem: list[Path],
                                              tmp_path: Path) -> None:
    message = smime.wrap_message(
        smime.text_entity("Unsigned draft\nsecond line\n"),
        extra_headers=[("MMHS-Authorizing-Users", "ec256@example.com")],
    )
    out = add_signer(message, identity(live_pki.ec256), NOW)

    signer_file = tmp_path / "signer.pem"
    verified = smime.openssl_verify_result(out, ca_pem, extra_args=["-signer", str(signer_file)])
    assert verified.returncode == 0, verified.stderr.decode()
    assert verified.stdout == smime.text_entity("Unsigned draft\nsecond line\n")
    assert signer_file.read_bytes() == live_pki.ec256.cert_pem
    top = mime.parse_entity(out)
    assert top.content_type.mime_type == "multipart/signed"
    assert top.content_type.param("micalg") == "sha-256"
    assert top.content_type.param("protocol") == "application/pkcs7-signature"
    names = [name.lower() for name, _ in top.headers]
    for name in ("from", "to", "subject", "date", "message-id", "mmhs-authorizing-users"):
        assert name in names
    assert "content-transfer-encoding" not in names
    assert first_part(out) == smime.text_entity("Unsigned draft\nsecond line\n")


@pytest.mark.process
def test_add_signer_canonicalises_an_lf_message(live_pki: TestPki, ca_pem: list[Path]) -> None:
    message = (b"From: alice@example.com\nSubject: lf\nMIME-Version: 1.0\n"
               b"Content-Type: text/plain; charset=us-ascii\n\nline one\nline two\n")
    out = add_signer(message, identity(live_pki.rsa), NOW)
    assert out.count(b"\n") == out.count(b"\r\n")
    assert first_part(out) == (
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\nline one\r\nline two\r\n"
    )
    assert mime.parse_entity(out).get_all("mime-version") == ["1.0"]
    assert smime.openssl_verify(out, ca_pem)
    signed = parse_signed_data(cms_blob(out))
    check = check_signature(signed.signer_infos[0], first_part(out), signed.certificates,
                            AlgorithmPolicy(), expected_content_type=OID_DATA)
    assert check.ok, check.errors


@pytest.mark.process
def test_add_signer_without_mime_version(live_pki: TestPki, ca_pem: list[Path]) -> None:
    message = b"From: alice@example.com\r\nSubject: plain\r\n\r\nhi\r\n"
    out = add_signer(message, identity(live_pki.ec384), NOW)
    assert mime.parse_entity(out).get("mime-version") == "1.0"
    assert mime.parse_entity(out).content_type.param("micalg") == "sha-384"
    assert first_part(out) == b"\r\nhi\r\n"
    assert smime.openssl_verify(out, ca_pem)


@pytest.mark.process
@pytest.mark.parametrize("build", [detached, opaque], ids=["multipart-signed", "signed-data"])
def test_add_signer_adds_a_parallel_signer(build, live_pki: TestPki, ca_pem: list[Path]) -> None:
    message = build(live_pki)
    out = add_signer(message, identity(live_pki.ec384), NOW)

    infos = signer_infos(out)
    assert len(infos) == 2
    assert signed_parts(infos[0]) == signed_parts(signer_infos(message)[0])
    assert infos[1]["sid"].chosen["serial_number"].native == live_pki.ec384.cert.serial_number
    assert head(out) == head(message)
    signed = parse_signed_data(cms_blob(out))
    digests = [a["algorithm"].native
               for a in asn1_cms.ContentInfo.load(cms_blob(out))["content"]["digest_algorithms"]]
    assert digests == ["sha256", "sha384"]
    content = signed.econtent if signed.econtent is not None else first_part(out)
    check = check_signature(infos[1], content, signed.certificates, AlgorithmPolicy(),
                            expected_content_type=signed.econtent_type)
    assert check.ok, check.errors
    verified = smime.openssl_verify_result(out, ca_pem)  # openssl checks every signer
    assert verified.returncode == 0, verified.stderr.decode()


def test_ed25519_signer_verifies_with_the_project_checker(live_pki: TestPki) -> None:
    out = add_signer(smime.wrap_message(smime.text_entity("ed\n")), identity(live_pki.ed25519),
                     NOW)
    signed = parse_signed_data(cms_blob(out))
    info = signed.signer_infos[0]
    assert info["digest_algorithm"]["algorithm"].native == "sha512"
    assert mime.parse_entity(out).content_type.param("micalg") == "sha-512"
    check = check_signature(info, first_part(out), signed.certificates, AlgorithmPolicy())
    assert check.ok, check.errors


# --- SignerInfo construction -------------------------------------------------------


def test_build_signer_info_attributes(live_pki: TestPki) -> None:
    signing = identity(live_pki.rsa)
    info = build_signer_info(signing, b"content", content_type=OID_DATA, signing_time=NOW)
    names = [attribute["type"].native for attribute in info["signed_attrs"]]
    assert sorted(names) == ["content_type", "message_digest", "signing_time",
                             "smime_capabilities"]
    # DER SET OF: the encodings are in ascending order.
    encodings = [attribute.dump() for attribute in info["signed_attrs"]]
    assert encodings == sorted(encodings)
    assert info["digest_algorithm"].dump() == bytes.fromhex("300b0609608648016503040201")
    certificates = parse_signed_data(
        smime.signed_data(b"", [], certs=[live_pki.rsa])).certificates
    check = check_signature(info, b"content", certificates, AlgorithmPolicy())
    assert check.ok, check.errors
    assert check.signing_time == NOW

    counter = countersignature(signing, info, NOW)
    names = [attribute["type"].native for attribute in counter["signed_attrs"]]
    assert sorted(names) == ["message_digest", "signing_time"]


def test_naive_signing_time_is_refused(live_pki: TestPki) -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_signer_info(identity(live_pki.rsa), b"x", content_type=OID_DATA,
                          signing_time=datetime(2026, 1, 1))


# --- SigningIdentity.load ------------------------------------------------------------


def _pem_files(directory: Path, ident: Identity, *, pkcs1: bool = False) -> tuple[Path, Path]:
    directory.mkdir(exist_ok=True)
    key = directory / "key.pem"
    if pkcs1:
        key.write_bytes(ident.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    else:
        key.write_bytes(ident.key_pem)
    cert = directory / "cert.pem"
    cert.write_bytes(ident.cert_pem)
    return key, cert


def test_load_pem_identity_with_chain(live_pki: TestPki, tmp_path: Path) -> None:
    key, cert = _pem_files(tmp_path, live_pki.rsa, pkcs1=True)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(live_pki.intermediate.cert_pem + live_pki.rsa.cert_pem)
    loaded = SigningIdentity.load(key, cert, chain)
    assert loaded.certificate == live_pki.rsa.cert
    assert loaded.chain == (live_pki.intermediate.cert,)  # the leaf is not repeated


def test_load_der_certificate_and_bundle(live_pki: TestPki, tmp_path: Path) -> None:
    der = tmp_path / "cert.der"
    der.write_bytes(live_pki.ec256.cert_der)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(live_pki.ec256.bundle_pem)
    assert SigningIdentity.load(bundle, der).certificate == live_pki.ec256.cert
    full = tmp_path / "fullchain.pem"
    full.write_bytes(live_pki.ec256.cert_pem + live_pki.intermediate.cert_pem)
    assert SigningIdentity.load(bundle, full).chain == (live_pki.intermediate.cert,)


def test_load_mismatched_key_names_the_files(live_pki: TestPki, tmp_path: Path) -> None:
    key, _ = _pem_files(tmp_path, live_pki.ec256)
    _, cert = _pem_files(tmp_path / "other", live_pki.rsa)
    with pytest.raises(SigningError, match="does not match") as caught:
        SigningIdentity.load(key, cert)
    assert str(key) in str(caught.value) and str(cert) in str(caught.value)


def test_load_missing_file_names_it(live_pki: TestPki, tmp_path: Path) -> None:
    key, cert = _pem_files(tmp_path, live_pki.rsa)
    missing = tmp_path / "nope.pem"
    with pytest.raises(SigningError, match=str(missing)):
        SigningIdentity.load(missing, cert)
    with pytest.raises(SigningError, match=str(missing)):
        SigningIdentity.load(key, missing)
    with pytest.raises(SigningError, match=str(missing)):
        SigningIdentity.load(key, cert, missing)


def test_load_rejects_unusable_keys(live_pki: TestPki, tmp_path: Path) -> None:
    key, cert = _pem_files(tmp_path, live_pki.rsa)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(live_pki.rsa.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(SigningError, match=f"{encrypted}.*encrypted"):
        SigningIdentity.load(encrypted, cert)
    with pytest.raises(SigningError, match=f"key file {cert}"):
        SigningIdentity.load(cert, cert)
    with pytest.raises(SigningError, match=f"certificate file {key}"):
        SigningIdentity.load(key, key)
    weak_key, weak_cert = _pem_files(tmp_path / "weak", live_pki.weak_rsa)
    with pytest.raises(SigningError, match="1024 bits"):
        SigningIdentity.load(weak_key, weak_cert)


def test_direct_construction_checks_the_pair(live_pki: TestPki) -> None:
    with pytest.raises(SigningError, match="does not match"):
        SigningIdentity(live_pki.rsa.key, live_pki.ec256.cert)


# --- refusals ------------------------------------------------------------------------


@pytest.mark.process
def test_refusals(live_pki: TestPki) -> None:
    countersigner = identity(live_pki.ec256)
    unsigned = smime.wrap_message(smime.text_entity("plain\n"))
    with pytest.raises(AuthorizeError, match="not S/MIME signed"):
        add_countersignatures(unsigned, countersigner, [0], NOW)
    with pytest.raises(AuthorizeError, match="out of range"):
        add_countersignatures(detached(live_pki), countersigner, [1], NOW)
    with pytest.raises(AuthorizeError, match="no signer"):
        add_countersignatures(detached(live_pki), countersigner, [], NOW)
    encrypted = smime.enveloped(smime.text_entity("secret\n"), [live_pki.rsa])
    with pytest.raises(AuthorizeError, match="encrypted message"):
        add_countersignatures(encrypted, countersigner, [0], NOW)
    with pytest.raises(AuthorizeError, match="encrypted message"):
        add_signer(encrypted, countersigner, NOW)
    with pytest.raises(AuthorizeError, match="certs-only"):
        add_countersignatures(smime.certs_only([live_pki.rsa]), countersigner, [0], NOW)
    with pytest.raises(AuthorizeError, match="not a MIME message"):
        set_authorizing_users(b"X-Long: " + b"a" * 300_000, ["a@example.com"])
    assert signer_infos(unsigned) == ()


def test_broken_signature_part_is_refused(live_pki: TestPki) -> None:
    message = detached(live_pki).replace(b"Content-Transfer-Encoding: base64",
                                         b"Content-Transfer-Encoding: 7bit")
    with pytest.raises(AuthorizeError, match="not base64"):
        add_countersignatures(message, identity(live_pki.ec256), [0], NOW)
    truncated = detached(live_pki).rsplit(b"--", 2)[0]
    with pytest.raises(AuthorizeError, match="structure broken"):
        add_countersignatures(truncated, identity(live_pki.ec256), [0], NOW)


# --- MMHS-Authorizing-Users --------------------------------------------------------


@pytest.mark.process
def test_set_authorizing_users_inserts_before_mime_version(live_pki: TestPki,
                                                           ca_pem: list[Path]) -> None:
    message = detached(live_pki)
    out = set_authorizing_users(message, ["ec256@example.com", "Officer <ec384@example.com>"])
    assert (b"MMHS-Authorizing-Users: ec256@example.com, Officer <ec384@example.com>\r\n"
            b"MIME-Version: 1.0\r\n") in out
    assert mime.parse_entity(out).body == mime.parse_entity(message).body
    assert smime.openssl_verify(out, ca_pem)  # the top-level header is not signed


def test_set_authorizing_users_replaces_folded_fields() -> None:
    message = (
        b"From: alice@example.com\r\n"
        b"mmhs-authorizing-users: old@example.com,\r\n"
        b"\tolder@example.com\r\n"
        b"Subject: hi\r\n"
        b"MMHS-Authorizing-Users:\r\n  third@example.com\r\n"
        b"\r\nbody\r\n"
    )
    out = set_authorizing_users(message, ["new@example.com"])
    assert out == (b"From: alice@example.com\r\nSubject: hi\r\n"
                   b"MMHS-Authorizing-Users: new@example.com\r\n\r\nbody\r\n")


def test_set_authorizing_users_keeps_lf_and_folds_long_lists() -> None:
    message = b"From: alice@example.com\nContent-Type: text/plain\n\nbody\n"
    addresses = [f"releasing.officer.{n}@authorizers.example.com" for n in range(5)]
    out = set_authorizing_users(message, addresses)
    assert b"\r" not in out
    header = mime.parse_entity(out)
    assert header.get("mmhs-authorizing-users") == ", ".join(addresses)
    field = out.split(b"Content-Type")[0].split(b"MMHS-")[1]
    lines = (b"MMHS-" + field).split(b"\n")[:-1]
    assert len(lines) > 1
    assert all(len(line) <= 78 for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert out.endswith(b"Content-Type: text/plain\n\nbody\n")


def test_set_authorizing_users_at_end_of_header_and_removal() -> None:
    message = b"From: a@example.com\r\nMMHS-Authorizing-Users: x@example.com\r\n\r\nbody"
    assert set_authorizing_users(message, ["y@example.com", "Y@example.com"]) == (
        b"From: a@example.com\r\nMMHS-Authorizing-Users: y@example.com\r\n\r\nbody")
    assert set_authorizing_users(message, []) == b"From: a@example.com\r\n\r\nbody"


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@example.com, b@example.com",
                                 "a@example.com\r\nBcc: evil@example.com"])
def test_set_authorizing_users_refuses_bad_addresses(bad: str) -> None:
    with pytest.raises(AuthorizeError, match="not a mail address"):
        set_authorizing_users(b"From: a@example.com\r\n\r\nbody", [bad])


def test_base64_helper_matches_the_standard_encoding(live_pki: TestPki) -> None:
    out = add_countersignatures(opaque(live_pki), identity(live_pki.ec256), [0], NOW)
    body = mime.parse_entity(out).body
    assert base64.b64decode(body) == cms_blob(out)
    assert body.endswith(b"\r\n")

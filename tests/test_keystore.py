"""The signing key store: PEM and PKCS#12 loading, refusals at load, choosing an identity."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from smime_milter.advanced.keystore import KeyStoreError, SigningKeys
from smime_milter.cms.signing import SigningError
from tests.support.pki import Identity, TestPki, make_ca, make_leaf
from tests.support.verdicts import NOW

DAY = timedelta(days=1)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    return directory


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def pem_bundle(identity: Identity) -> bytes:
    """Chain first, key in the middle, certificate last: order must not matter."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in identity.chain)
    return chain + identity.key_pem + identity.cert_pem


def p12(identity: Identity, password: bytes | None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        b"user", identity.key, identity.cert, list(identity.chain), encryption  # type: ignore[arg-type]
    )


def leaf(pki: TestPki, email: str, label: str, key_type: str = "rsa", **kw: object) -> Identity:
    return make_leaf(pki.intermediate, email, key_type, now=NOW, key_label=f"ks:{label}", **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- loading


def test_pem_file_in_any_order_gives_key_certificate_and_chain(
    pki: TestPki, keydir: Path
) -> None:
    write(keydir / "alice.pem", pem_bundle(pki.rsa))
    keys = SigningKeys.load(keydir)
    identity = keys.identity_for("Alice@Example.COM", NOW)
    assert identity is not None
    assert identity.certificate == pki.rsa.cert
    assert identity.chain == (pki.intermediate.cert,)
    assert keys.addresses() == ("alice@example.com",)
    assert keys.certificates() == (pki.rsa.cert,)


def test_chain_is_ordered_issuer_first_whatever_the_file_order(
    pki: TestPki, keydir: Path
) -> None:
    middle = make_ca("KS Middle CA", pki.root, now=NOW, key_label="ks:middle")
    lower = make_ca("KS Lower CA", middle, now=NOW, key_label="ks:lower")
    holder = make_leaf(lower, "hana@example.com", now=NOW, key_label="ks:hana")
    write(keydir / "hana.pem", pki.root.cert_pem + middle.cert_pem + holder.key_pem
          + holder.cert_pem + lower.cert_pem)
    identity = SigningKeys.load(keydir).identity_for("hana@example.com", NOW)
    assert identity is not None
    assert identity.chain == (lower.cert, middle.cert, pki.root.cert)


def test_pkcs12_with_password_file(pki: TestPki, keydir: Path, tmp_path: Path) -> None:
    write(keydir / "ec.p12", p12(pki.ec256, b"s3cret"))
    password = write(tmp_path / "password", b"s3cret\n")
    keys = SigningKeys.load(keydir, password)
    identity = keys.identity_for("ec256@example.com", NOW)
    assert identity is not None and identity.certificate == pki.ec256.cert
    assert identity.chain == (pki.intermediate.cert,)


def test_pkcs12_without_password(pki: TestPki, keydir: Path) -> None:
    write(keydir / "alice.pfx", p12(pki.rsa, None))
    identity = SigningKeys.load(keydir).identity_for("alice@example.com", NOW)
    assert identity is not None and identity.certificate == pki.rsa.cert


def test_pkcs12_with_the_wrong_password_names_the_file(
    pki: TestPki, keydir: Path, tmp_path: Path
) -> None:
    path = write(keydir / "ec.p12", p12(pki.ec256, b"s3cret"))
    password = write(tmp_path / "password", b"other\n")
    with pytest.raises(KeyStoreError, match="password") as caught:
        SigningKeys.load(keydir, password)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, SigningError)


def test_files_other_than_keys_are_ignored(pki: TestPki, keydir: Path) -> None:
    write(keydir / "README", b"not a key", mode=0o644)
    write(keydir / "alice.pem", pem_bundle(pki.rsa))
    assert SigningKeys.load(keydir).addresses() == ("alice@example.com",)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_key_file_readable_or_writable_by_others_is_refused(
    pki: TestPki, keydir: Path, mode: int
) -> None:
    path = write(keydir / "alice.pem", pem_bundle(pki.rsa), mode=mode)
    with pytest.raises(KeyStoreError, match="other users") as caught:
        SigningKeys.load(keydir)
    assert str(path) in str(caught.value)
    os.chmod(path, 0o600)
    assert SigningKeys.load(keydir).addresses() == ("alice@example.com",)


@pytest.mark.parametrize("mode", [0o750, 0o705])
def test_key_directory_readable_by_others_is_refused(keydir: Path, mode: int) -> None:
    os.chmod(keydir, mode)
    with pytest.raises(KeyStoreError, match="other users") as caught:
        SigningKeys.load(keydir)
    assert str(keydir) in str(caught.value)
    os.chmod(keydir, 0o711)  # search permission alone exposes no key
    assert SigningKeys.load(keydir).addresses() == ()


def test_password_file_readable_by_others_is_refused(
    pki: TestPki, keydir: Path, tmp_path: Path
) -> None:
    write(keydir / "ec.p12", p12(pki.ec256, b"s3cret"))
    password = write(tmp_path / "password", b"s3cret", mode=0o644)
    with pytest.raises(KeyStoreError, match="password file") as caught:
        SigningKeys.load(keydir, password)
    assert str(password) in str(caught.value)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(KeyStoreError) as caught:
        SigningKeys.load(missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"garbage", "0 private keys"),
        ("key only", "no usable certificate|holds no certificate"),
        ("other cert", "no certificate matches"),
        ("two keys", "2 private keys"),
        ("encrypted", "encrypted"),
    ],
)
def test_broken_key_file_is_named(
    pki: TestPki, keydir: Path, content: bytes | str, fragment: str
) -> None:
    write(keydir / "good.pem", pem_bundle(pki.rsa))
    blobs = {
        "key only": pki.ec256.key_pem,
        "other cert": pki.ec256.key_pem + pki.rsa.cert_pem,
        "two keys": pki.ec256.key_pem + pki.rsa.key_pem + pki.rsa.cert_pem,
        "encrypted": pki.rsa.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        ) + pki.rsa.cert_pem,
    }
    data = content if isinstance(content, bytes) else blobs[content]
    broken = write(keydir / "broken.pem", data)
    with pytest.raises(KeyStoreError, match=fragment) as caught:
        SigningKeys.load(keydir)
    assert str(broken) in str(caught.value)


def test_key_below_the_signing_minimum_is_refused_at_load(pki: TestPki, keydir: Path) -> None:
    broken = write(keydir / "weak.pem", pki.weak_rsa.bundle_pem)
    with pytest.raises(KeyStoreError, match="1024 bits") as caught:
        SigningKeys.load(keydir)
    assert str(broken) in str(caught.value)


# --------------------------------------------------------------------------- choosing


def test_every_certificate_address_is_indexed_lowercased(pki: TestPki, keydir: Path) -> None:
    two = leaf(pki, "Carol@Example.com", "two", emails=["Carol@Example.com", "c.l@Example.org"])
    write(keydir / "carol.pem", two.bundle_pem)
    keys = SigningKeys.load(keydir)
    assert keys.addresses() == ("c.l@example.org", "carol@example.com")
    for address in ("carol@example.com", "C.L@example.ORG"):
        identity = keys.identity_for(address, NOW)
        assert identity is not None and identity.certificate == two.cert
    assert keys.identity_for("dave@example.com", NOW) is None


def test_expired_and_not_yet_valid_identities_are_skipped(pki: TestPki, keydir: Path) -> None:
    old = leaf(pki, "erin@example.com", "old", not_before=NOW - 400 * DAY,
               not_after=NOW - DAY)
    future = leaf(pki, "erin@example.com", "future", not_before=NOW + DAY,
                  not_after=NOW + 400 * DAY)
    write(keydir / "old.pem", old.bundle_pem)
    write(keydir / "future.pem", future.bundle_pem)
    keys = SigningKeys.load(keydir)
    assert keys.identity_for("erin@example.com", NOW) is None
    later = keys.identity_for("erin@example.com", NOW + 2 * DAY)
    assert later is not None and later.certificate == future.cert
    earlier = keys.identity_for("erin@example.com", NOW - 2 * DAY)
    assert earlier is not None and earlier.certificate == old.cert


def test_the_newest_valid_certificate_wins(pki: TestPki, keydir: Path) -> None:
    older = leaf(pki, "fay@example.com", "older", not_before=NOW - 300 * DAY)
    newer = leaf(pki, "fay@example.com", "newer", not_before=NOW - 3 * DAY)
    write(keydir / "a.pem", newer.bundle_pem)
    write(keydir / "b.pem", older.bundle_pem)
    identity = SigningKeys.load(keydir).identity_for("fay@example.com", NOW)
    assert identity is not None and identity.certificate == newer.cert


@pytest.mark.parametrize(
    ("usage", "usable"),
    [
        ({"key_usage": {"key_encipherment"}}, False),
        ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, False),
        ({"key_usage": {"non_repudiation"}}, True),
        ({"key_usage": None, "eku": None}, True),
        ({"eku": [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]}, True),
    ],
)
def test_certificate_usage_must_allow_signing(
    pki: TestPki, keydir: Path, usage: dict[str, object], usable: bool
) -> None:
    identity = leaf(pki, "gus@example.com", "usage", **usage)
    write(keydir / "gus.pem", identity.bundle_pem)
    found = SigningKeys.load(keydir).identity_for("gus@example.com", NOW)
    assert (found is not None) is usable

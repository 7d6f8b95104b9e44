"""The address book: which certificate a recipient's mail is encrypted to.

Every source is real: certificate files in a directory, a loaded SigningKeys, and
certificates learned by writing records through an LMDB Store; every candidate goes
through a real ChainValidator with the encryption usage rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from smime_milter.advanced.addressbook import AddressBook, AddressBookError, RecipientCertificate
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.model import RevocationMode, SignerResult, Status, new_record_id
from smime_milter.store import Record, Store
from smime_milter.trust.chain import ChainValidator, TrustStore
from tests.support.pki import Identity, TestPki, make_crl, make_leaf
from tests.support.verdicts import NOW, anchor

DAY = timedelta(days=1)
#: keyUsage of a certificate good for both signing and (RSA) encryption.
RSA_BOTH = {"digital_signature", "key_encipherment"}
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES128_CBC = "2.16.840.1.101.3.4.1.2"


def leaf(pki: TestPki, email: str, label: str, key_type: str = "rsa", **kw: object) -> Identity:
    """An encryption-capable leaf of the standard PKI unless ``kw`` says otherwise."""
    kw.setdefault("key_usage", RSA_BOTH)
    return make_leaf(pki.intermediate, email, key_type, now=NOW, key_label=f"ab:{label}", **kw)  # type: ignore[arg-type]


def validator(pki: TestPki, crls: Sequence[bytes] = ()) -> ChainValidator:
    trust = TrustStore(anchors=(anchor(pki.root),), crls=tuple(crls))
    return ChainValidator(trust, revocation=RevocationMode.SOFT)


def revoking(pki: TestPki, *identities: Identity) -> bytes:
    return make_crl(pki.intermediate, [(i.cert, NOW - 2 * DAY) for i in identities],
                    this_update=NOW - DAY, next_update=NOW + 30 * DAY, number=7)


@pytest.fixture
def certdir(tmp_path: Path) -> Path:
    directory = tmp_path / "recipients"
    directory.mkdir()
    return directory


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def put_file(directory: Path, name: str, *identities: Identity, chain: bool = True) -> None:
    data = b"".join(i.cert_pem for i in identities)
    if chain:
        data += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in identities[0].chain)
    (directory / name).write_bytes(data)


def signed(
    identity: Identity,
    *,
    from_address: str | None = None,
    received: timedelta = timedelta(0),
    status: Status = Status.SIGNED_VERIFIED,
    capabilities: tuple[str, ...] = (),
    from_match: bool = True,
) -> Record:
    """The record of a message ``identity`` signed, as the milter writes it."""
    san = identity.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    email = from_address or san.value.get_values_for_type(x509.RFC822Name)[0]
    path = (identity.cert_der,
            *(c.public_bytes(serialization.Encoding.DER) for c in identity.chain))
    signer = SignerResult(
        emails=(email,), subject="CN=x", issuer="CN=y", serial=identity.cert.serial_number,
        digest_algorithm="sha256", signature_algorithm="rsassa_pkcs1v15",
        signature_ok=True, chain_ok=True, from_match=from_match,
        errors=() if from_match else ("From does not match",),
        certificate=identity.cert_der, path=path, capabilities=capabilities,
    )
    return Record(
        record_id=new_record_id(), received_at=NOW - 10 * DAY + received,
        envelope_sender=email, envelope_recipients=("bob@example.net",), message_id=None,
        from_address=email, queue_id=None, status_at_delivery=status,
        errors_at_delivery=None if status.is_verified else ("failed",), status=status,
        errors=None if status.is_verified else ("failed",), verified_at=NOW - 10 * DAY,
        signers=(signer,), certificates=path,
    )


def found(result: RecipientCertificate | None) -> tuple[bytes, str] | None:
    if result is None:
        return None
    return result.certificate.public_bytes(serialization.Encoding.DER), result.source


# --------------------------------------------------------------------------- directory


def test_directory_certificate_is_found(pki: TestPki, certdir: Path) -> None:
    bob = leaf(pki, "bob@example.com", "bob")
    put_file(certdir, "bob.pem", bob)
    book = AddressBook(certdir, None, None, validator(pki))
    result = book.lookup("Bob@Example.com", NOW)
    assert found(result) == (bob.cert_der, "directory")
    assert result is not None and result.address == "Bob@Example.com"
    assert result.capabilities == ()
    assert book.lookup("carol@example.com", NOW) is None


def test_newest_directory_certificate_wins(pki: TestPki, certdir: Path) -> None:
    older = leaf(pki, "bob@example.com", "bob-old", not_before=NOW - 300 * DAY)
    newer = leaf(pki, "bob@example.com", "bob-new", not_before=NOW - 30 * DAY)
    put_file(certdir, "a.pem", newer)
    put_file(certdir, "b.pem", older)
    book = AddressBook(certdir, None, None, validator(pki))
    assert found(book.lookup("bob@example.com", NOW)) == (newer.cert_der, "directory")
    book = AddressBook(certdir, None, None, validator(pki, [revoking(pki, newer)]))
    assert found(book.lookup("bob@example.com", NOW)) == (older.cert_der, "directory")


def test_ec_certificate_needs_key_agreement(pki: TestPki, certdir: Path) -> None:
    agree = leaf(pki, "ec@example.com", "ec-agree", "ec256", key_usage={"key_agreement"})
    put_file(certdir, "ec.pem", agree)
    book = AddressBook(certdir, None, None, validator(pki))
    assert found(book.lookup("ec@example.com", NOW)) == (agree.cert_der, "directory")
    # keyEncipherment is the RSA bit: an EC key cannot be encrypted to with it.
    wrong = leaf(pki, "ec2@example.com", "ec-wrong", "ec256", key_usage={"key_encipherment"})
    put_file(certdir, "ec2.pem", wrong)
    book = AddressBook(certdir, None, None, validator(pki))
    assert book.lookup("ec2@example.com", NOW) is None


def test_expired_certificate_is_not_used(pki: TestPki, certdir: Path) -> None:
    old = leaf(pki, "dan@example.com", "dan-old", not_before=NOW - 400 * DAY,
               not_after=NOW - DAY)
    put_file(certdir, "dan.pem", old)
    book = AddressBook(certdir, None, None, validator(pki))
    assert book.lookup("dan@example.com", NOW) is None
    assert found(book.lookup("dan@example.com", NOW - 2 * DAY)) == (old.cert_der, "directory")


def test_revoked_certificate_is_not_used(pki: TestPki, certdir: Path) -> None:
    eve = leaf(pki, "eve@example.com", "eve")
    put_file(certdir, "eve.pem", eve)
    assert AddressBook(certdir, None, None, validator(pki)).lookup("eve@example.com", NOW)
    book = AddressBook(certdir, None, None, validator(pki, [revoking(pki, eve)]))
    assert book.lookup("eve@example.com", NOW) is None


def test_signing_only_key_usage_is_not_used_for_encryption(
    pki: TestPki, certdir: Path
) -> None:
    put_file(certdir, "alice.pem", pki.rsa)  # digitalSignature + nonRepudiation
    chains = validator(pki)
    book = AddressBook(certdir, None, None, chains)
    assert book.lookup("alice@example.com", NOW) is None
    # The same certificate at the same moment is fine for verifying its
    # signatures: the usage is part of the question (and of the cache key).
    cert = asn1_x509.Certificate.load(pki.rsa.cert_der)
    intermediate = [asn1_x509.Certificate.load(pki.intermediate.cert_der)]
    assert chains.validate(cert, intermediate, at=NOW).ok
    refused = chains.validate(cert, intermediate, at=NOW, usage="encrypt")
    assert not refused.ok
    assert refused.errors == ("certificate key usage does not allow keyEncipherment",)


def test_untrusted_certificate_is_not_used(pki: TestPki, certdir: Path) -> None:
    stranger = make_leaf(pki.other_root, "zed@example.com", now=NOW, key_usage=RSA_BOTH,
                         key_label="ab:zed")
    put_file(certdir, "zed.pem", stranger)
    assert AddressBook(certdir, None, None, validator(pki)).lookup("zed@example.com", NOW) is None


def test_weak_or_unsuitable_keys_are_not_used(pki: TestPki, certdir: Path) -> None:
    put_file(certdir, "weak.pem", leaf(pki, "weak@example.com", "weak", "rsa1024"))
    put_file(certdir, "ed.pem", leaf(pki, "ed@example.com", "ed", "ed25519", key_usage=None))
    put_file(certdir, "eku.pem", leaf(pki, "eku@example.com", "eku", eku=[
        ExtendedKeyUsageOID.SERVER_AUTH]))
    book = AddressBook(certdir, None, None, validator(pki))
    for address in ("weak@example.com", "ed@example.com", "eku@example.com"):
        assert book.lookup(address, NOW) is None, address


def test_certificate_for_another_address_is_not_used(pki: TestPki, certdir: Path) -> None:
    put_file(certdir, "bob.pem", leaf(pki, "bob@example.com", "bob"))
    book = AddressBook(certdir, None, None, validator(pki))
    assert book.lookup("bob@example.org", NOW) is None


def test_unreadable_directory_file_is_named(pki: TestPki, certdir: Path) -> None:
    (certdir / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                         b"-----END CERTIFICATE-----\n")
    with pytest.raises(AddressBookError, match=r"broken\.pem"):
        AddressBook(certdir, None, None, validator(pki))
    with pytest.raises(AddressBookError, match="nowhere"):
        AddressBook(certdir / "nowhere", None, None, validator(pki))


def test_lookup_all_splits_found_and_missing(pki: TestPki, certdir: Path) -> None:
    bob = leaf(pki, "bob@example.com", "bob")
    put_file(certdir, "bob.pem", bob)
    book = AddressBook(certdir, None, None, validator(pki))
    hits, missing = book.lookup_all(
        ["bob@example.com", "x@example.com", "bob@example.com", "y@example.com"], NOW
    )
    assert list(hits) == ["bob@example.com"]
    assert found(hits["bob@example.com"]) == (bob.cert_der, "directory")
    assert missing == ("x@example.com", "y@example.com")


# --------------------------------------------------------------------------- signing keys


def test_local_signing_certificate_lets_a_sender_encrypt_to_itself(
    pki: TestPki, tmp_path: Path
) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    os.chmod(keydir, 0o700)
    mine = leaf(pki, "me@example.com", "me")
    (keydir / "me.pem").write_bytes(mine.bundle_pem + pki.intermediate.cert_pem)
    os.chmod(keydir / "me.pem", 0o600)
    keys = SigningKeys.load(keydir)
    book = AddressBook(None, keys, None, validator(pki))
    assert found(book.lookup("me@example.com", NOW)) == (mine.cert_der, "keys")


# --------------------------------------------------------------------------- learned


def test_learned_certificate_from_a_verified_record(pki: TestPki, store: Store) -> None:
    frank = leaf(pki, "frank@example.com", "frank")
    store.put_sync(signed(frank, capabilities=(AES256_CBC, AES128_CBC)))
    book = AddressBook(None, None, store, validator(pki))
    result = book.lookup("Frank@example.com", NOW)
    assert found(result) == (frank.cert_der, "learned")
    assert result is not None and result.capabilities == (AES256_CBC, AES128_CBC)


@pytest.mark.parametrize(
    "status", [Status.SIGNED, Status.SIGNED_FAILED, Status.UNKNOWN, Status.ENCRYPTED_SIGNED_FAILED]
)
def test_nothing_is_learned_from_unverified_mail(
    pki: TestPki, store: Store, status: Status
) -> None:
    gina = leaf(pki, "gina@example.com", "gina")
    store.put_sync(signed(gina, status=status))
    assert store.learned_certificates("gina@example.com") == []
    assert AddressBook(None, None, store, validator(pki)).lookup("gina@example.com", NOW) is None


def test_encrypted_and_verified_mail_teaches_too(pki: TestPki, store: Store) -> None:
    gina = leaf(pki, "gina@example.com", "gina")
    store.put_sync(signed(gina, status=Status.ENCRYPTED_SIGNED_VERIFIED))
    assert [c.certificate for c in store.learned_certificates("gina@example.com")] == [
        gina.cert_der
    ]


def test_a_signer_that_did_not_match_from_teaches_nothing(pki: TestPki, store: Store) -> None:
    hal = leaf(pki, "hal@example.com", "hal")
    store.put_sync(signed(hal, from_match=False))
    assert store.learned_certificates("hal@example.com") == []


def test_newest_learned_certificate_wins_and_a_revoked_one_falls_back(
    pki: TestPki, store: Store
) -> None:
    older = leaf(pki, "ivy@example.com", "ivy-1", not_before=NOW - 200 * DAY)
    newer = leaf(pki, "ivy@example.com", "ivy-2", not_before=NOW - 20 * DAY)
    store.put_sync(signed(newer, received=timedelta(hours=5), capabilities=(AES256_CBC,)))
    store.put_sync(signed(older, received=timedelta(hours=1), capabilities=(AES128_CBC,)))
    learned = store.learned_certificates("ivy@example.com")
    assert [c.certificate for c in learned] == [newer.cert_der, older.cert_der]
    result = AddressBook(None, None, store, validator(pki)).lookup("ivy@example.com", NOW)
    assert found(result) == (newer.cert_der, "learned")
    book = AddressBook(None, None, store, validator(pki, [revoking(pki, newer)]))
    result = book.lookup("ivy@example.com", NOW)
    assert found(result) == (older.cert_der, "learned")
    assert result is not None and result.capabilities == (AES128_CBC,)
    # A later message with the older certificate makes it the newest.
    store.put_sync(signed(older, received=timedelta(hours=9)))
    assert [c.certificate for c in store.learned_certificates("ivy@example.com")] == [
        older.cert_der, newer.cert_der
    ]


def test_a_learned_certificate_must_name_the_address(pki: TestPki, store: Store) -> None:
    # The store is not taken at its word: a record claiming another
    # address's certificate proved From teaches nothing usable.
    frank = leaf(pki, "frank@example.com", "frank")
    store.put_sync(signed(frank, from_address="mallory@example.com"))
    assert len(store.learned_certificates("mallory@example.com")) == 1
    assert AddressBook(None, None, store, validator(pki)).lookup("mallory@example.com", NOW) is None


def test_directory_is_preferred_over_learned(
    pki: TestPki, store: Store, certdir: Path
) -> None:
    curated = leaf(pki, "jo@example.com", "jo-dir", not_before=NOW - 300 * DAY)
    learned = leaf(pki, "jo@example.com", "jo-learned", not_before=NOW - 3 * DAY)
    store.put_sync(signed(learned, received=timedelta(days=9)))
    put_file(certdir, "jo.pem", curated)
    book = AddressBook(certdir, None, store, validator(pki))
    assert found(book.lookup("jo@example.com", NOW)) == (curated.cert_der, "directory")
    # An unusable curated certificate does not hide a usable learned one.
    book = AddressBook(certdir, None, store, validator(pki, [revoking(pki, curated)]))
    assert found(book.lookup("jo@example.com", NOW)) == (learned.cert_der, "learned")


def test_learned_certificates_are_read_from_a_read_only_store(
    pki: TestPki, tmp_path: Path
) -> None:
    kim = leaf(pki, "kim@example.com", "kim")
    with Store.open(tmp_path / "ro") as writer:
        writer.put_sync(signed(kim, capabilities=(AES256_CBC,)))
    with Store.open(tmp_path / "ro", readonly=True) as reader:
        result = AddressBook(None, None, reader, validator(pki)).lookup("kim@example.com", NOW)
    assert found(result) == (kim.cert_der, "learned")
    assert result is not None and result.capabilities == (AES256_CBC,)

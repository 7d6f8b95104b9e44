"""Re-validating stored records without the message, and the store's status views.

The central property: re-validating a record at its delivery moment gives
exactly the status and errors the engine computed from the message, for
every kind of signed message, so an unchanged outcome is never an
Email/changes update.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from smime_milter.model import ChainResult, SignerResult, Status
from smime_milter.revalidate import Refresher, Revalidator
from smime_milter.store import Record, Store
from smime_milter.trust.chain import ChainValidator, TrustStore
from smime_milter.verify.status import signed_status
from tests.support.pki import TestPki
from tests.support.smime import multipart_signed, opaque_signed, text_entity, wrap_message
from tests.support.verdicts import NOW, anchor, make_verifier

ENTITY = text_entity("Hello\n")


def messages(pki: TestPki) -> dict[str, bytes]:
    signed = multipart_signed(ENTITY, pki.rsa, signing_time=NOW)
    return {
        "verified": signed,
        "opaque": opaque_signed(ENTITY, pki.ec256, from_addr="ec256@example.com"),
        "tampered": signed.replace(b"Hello", b"Jello"),
        "mismatch": multipart_signed(ENTITY, pki.rsa, from_addr="eve@example.com"),
        "expired": multipart_signed(ENTITY, pki.expired, from_addr="expired@example.com"),
        "untrusted": multipart_signed(ENTITY, pki.untrusted,
                                      from_addr="untrusted@example.com"),
        "two signers, one good": multipart_signed(ENTITY, pki.rsa,
                                                  extra_signers=[pki.untrusted]),
        "two signers, none good": multipart_signed(ENTITY, pki.expired,
                                                   from_addr="expired@example.com",
                                                   extra_signers=[pki.untrusted]),
        "two From fields": wrap_message(
            multipart_signed(ENTITY, pki.rsa).split(b"MIME-Version: 1.0\r\n", 1)[1],
            extra_headers=[("From", "alice@example.com")]),
        "bad usage": multipart_signed(ENTITY, pki.bad_ku, from_addr=_email(pki, "bad_ku")),
        "nested": wrap_message(
            b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n--outer\r\n'
            + ENTITY + b"\r\n--outer\r\n"
            + multipart_signed(ENTITY, pki.rsa).split(b"MIME-Version: 1.0\r\n", 1)[1]
            + b"\r\n--outer--\r\n"),
        "plain": wrap_message(ENTITY),
    }


def _email(pki: TestPki, name: str) -> str:
    cert = getattr(pki, name).cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.RFC822Name)[0]


def record_of(pki: TestPki, message: bytes, record_id: str = "r1") -> Record:
    verdict = make_verifier(pki).verify(message, at=NOW)
    return Record.from_verdict(verdict, record_id=record_id, received_at=NOW,
                               envelope_sender="", envelope_recipients=(), message_id=None,
                               queue_id=None)


def revalidator(pki: TestPki) -> Revalidator:
    return Revalidator(ChainValidator(TrustStore(anchors=(anchor(pki.root),))))


NAMES = ["verified", "opaque", "tampered", "mismatch", "expired", "untrusted",
         "two signers, one good", "two signers, none good", "two From fields", "bad usage",
         "nested", "plain"]


@pytest.mark.parametrize("name", NAMES)
def test_revalidation_at_delivery_reproduces_the_engine(pki: TestPki, name: str) -> None:
    record = record_of(pki, messages(pki)[name])
    assessment = revalidator(pki).assess(record, NOW)
    if not record.revalidatable:
        assert assessment is None and name == "plain"
        return
    assert assessment is not None
    assert (assessment.status, assessment.errors) == (record.status, record.errors), name


def test_the_scenarios_cover_both_outcomes(pki: TestPki) -> None:
    statuses = {name: record_of(pki, m).status for name, m in messages(pki).items()}
    assert statuses["verified"] is Status.SIGNED_VERIFIED
    assert statuses["two signers, one good"] is Status.SIGNED_VERIFIED
    assert statuses["nested"] is Status.SIGNED_FAILED
    assert statuses["two From fields"] is Status.SIGNED_FAILED
    assert statuses["plain"] is None


def test_later_moments_change_only_the_chain_part(pki: TestPki) -> None:
    reval = revalidator(pki)
    verified = record_of(pki, messages(pki)["verified"])
    after_expiry = pki.rsa.cert.not_valid_after_utc + timedelta(days=1)
    expired = reval.assess(verified, after_expiry)
    assert expired is not None and expired.status is Status.SIGNED_FAILED
    assert len(expired.errors or ()) == 1 and "expired" in expired.errors[0]
    # A message error keeps a record failed whatever the chain does.
    nested = record_of(pki, messages(pki)["nested"])
    assert nested.message_errors and nested.message_errors[0].startswith("signature covers")
    assert reval.assess(nested, NOW).status is Status.SIGNED_FAILED
    # A From mismatch stays an error at every moment.
    mismatch = reval.assess(record_of(pki, messages(pki)["mismatch"]), after_expiry)
    assert any("eve@example.com" in e for e in mismatch.errors)
    assert any("expired" in e for e in mismatch.errors)


def test_a_new_anchor_verifies_an_untrusted_record(pki: TestPki) -> None:
    record = record_of(pki, messages(pki)["untrusted"])
    assert record.status is Status.SIGNED_FAILED
    both = TrustStore(anchors=(anchor(pki.root), anchor(pki.other_root)))
    assessment = Revalidator(ChainValidator(both)).assess(record, NOW)
    assert assessment is not None
    assert (assessment.status, assessment.errors) == (Status.SIGNED_VERIFIED, None)


def test_with_chain_replaces_exactly_the_chain_errors() -> None:
    signer = SignerResult(
        emails=("a@example.com",), subject="CN=a", issuer="CN=ca", serial=1,
        digest_algorithm="sha256", signature_algorithm="rsa", signature_ok=False,
        chain_ok=False, from_match=False,
        errors=("signature does not verify", "From differs", "untrusted root"),
        chain_errors=("untrusted root",),
    )
    good = signer.with_chain(ChainResult(True, (), (b"leaf",)))
    assert good.errors == ("signature does not verify", "From differs")
    assert good.chain_ok and good.path == (b"leaf",) and good.chain_errors == ()
    again = good.with_chain(ChainResult(False, ("revoked",)))
    assert again.errors == ("signature does not verify", "From differs", "revoked")
    assert not signed_status([again], (), encrypted=True).status.is_verified
    assert signed_status([again], (), encrypted=True).status is Status.ENCRYPTED_SIGNED_FAILED


# --------------------------------------------------------------------------- the refresher


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path / "store") as opened:
        yield opened


def test_views_due_and_refresh(pki: TestPki, store: Store) -> None:
    all_messages = messages(pki)
    for number, name in enumerate(("verified", "plain", "tampered")):
        store.put_sync(record_of(pki, all_messages[name], f"r{number}"))
    views = store.views(["r0", "r1", "r2", "rmissing"])
    assert set(views) == {"r0", "r1", "r2"}
    assert views["r0"].status is Status.SIGNED_VERIFIED and views["r0"].revalidatable
    assert views["r1"].status is None and not views["r1"].revalidatable
    assert list(store.due(NOW)) == []
    assert sorted(store.due(NOW + timedelta(seconds=1))) == ["r0", "r2"]

    now = [NOW + timedelta(minutes=30)]
    refresher = Refresher(store, revalidator(pki), clock=lambda: now[0],
                          lifetime=timedelta(hours=1))
    assert list(refresher.stale_ids()) == []
    now[0] = NOW + timedelta(hours=2)
    assert sorted(refresher.stale_ids()) == ["r0", "r2"]
    state = store.state()
    assert refresher.refresh_due() == 2
    assert store.state() == state  # same outcomes: only smimeVerifiedAt moved
    assert list(refresher.stale_ids()) == []
    assert sorted(store.due(now[0] + timedelta(seconds=1))) == ["r0", "r2"]
    assert store.views(["r0"])["r0"].verified_at == now[0]


def test_trust_epoch_makes_every_status_stale(pki: TestPki, store: Store) -> None:
    store.put_sync(record_of(pki, messages(pki)["verified"], "r0"))
    now = NOW + timedelta(minutes=5)
    first = Refresher(store, revalidator(pki), clock=lambda: now)
    epoch = store.trust_epoch()
    assert epoch is not None and epoch.generation == first.revalidator.generation
    assert list(first.stale_ids()) == []  # the first generation starts no epoch
    both = TrustStore(anchors=(anchor(pki.root), anchor(pki.other_root)))
    second = Refresher(store, Revalidator(ChainValidator(both)), clock=lambda: now)
    assert store.trust_epoch().changed_at == now
    assert list(second.stale_ids()) == ["r0"]
    assert store.record_trust(both.generation, now + timedelta(hours=1)).result() is False


def test_read_only_refresher_keeps_results_in_memory(pki: TestPki, tmp_path: Path) -> None:
    path = tmp_path / "ro"
    with Store.open(path) as writable:
        writable.put_sync(record_of(pki, messages(pki)["verified"], "r0"))
        Refresher(writable, revalidator(pki), clock=lambda: NOW)  # records the generation
    later = pki.rsa.cert.not_valid_after_utc + timedelta(days=1)
    with Store.open(path, readonly=True) as store:
        refresher = Refresher(store, revalidator(pki), clock=lambda: later, readonly=True)
        view = refresher.views(["r0"], fresh=True)["r0"]
        assert view.status is Status.SIGNED_FAILED and view.verified_at == later
        assert store.views(["r0"])["r0"].status is Status.SIGNED_VERIFIED
        assert refresher.views(["r0"], fresh=False)["r0"].status is Status.SIGNED_FAILED
        assert list(refresher.stale_ids()) == []


def test_lifetime_is_bounded(pki: TestPki, store: Store) -> None:
    with pytest.raises(ValueError, match="24 hours"):
        Refresher(store, revalidator(pki), lifetime=timedelta(hours=25))
    record = replace(record_of(pki, messages(pki)["verified"]), verified_at=None)
    assert not record.revalidatable


class _DeletingRevalidator(Revalidator):
    """Deletes each record just before assessing it: retention racing a refresh."""

    def __init__(self, inner: Revalidator, store: Store) -> None:
        super().__init__(inner.chains)
        self.store = store

    def assess(self, record: Record, moment):  # type: ignore[no-untyped-def]
        self.store.delete([record.record_id]).result()
        return super().assess(record, moment)


def test_a_record_deleted_during_a_refresh_is_not_an_error(pki: TestPki, store: Store) -> None:
    store.put_sync(record_of(pki, messages(pki)["verified"], "r0"))
    store.put_sync(record_of(pki, messages(pki)["verified"], "r1"))
    later = NOW + timedelta(hours=2)
    refresher = Refresher(store, revalidator(pki), clock=lambda: later)
    refresher.revalidator = _DeletingRevalidator(refresher.revalidator, store)
    state, views = refresher.state_and_views(["r0", "r1"], fresh=True)
    assert (state, views) == (store.state(), {})
    assert list(store.record_ids()) == []


def test_a_status_verified_in_the_future_is_due(pki: TestPki, store: Store) -> None:
    """A status written under a clock years ahead is stale now, whatever the
    cache lifetime says: it would otherwise stand until 2032 (issue 16)."""
    all_messages = messages(pki)
    for number, name in enumerate(("verified", "tampered", "opaque")):
        store.put_sync(record_of(pki, all_messages[name], f"r{number}"))
    ahead = NOW + timedelta(days=2000)
    store.update("r1", verified_at=ahead).result()
    store.update("r2", verified_at=NOW + timedelta(seconds=1)).result()
    assert list(store.due(NOW)) == []
    assert list(store.due(NOW, or_after=NOW)) == ["r2", "r1"]
    assert list(store.due(NOW, or_after=NOW + timedelta(seconds=1))) == ["r1"]
    assert list(store.due(NOW + timedelta(seconds=1), or_after=NOW)) == ["r0", "r2", "r1"]

    now = NOW + timedelta(minutes=30)
    refresher = Refresher(store, revalidator(pki), clock=lambda: now,
                          lifetime=timedelta(hours=1))
    assert list(refresher.stale_ids()) == ["r1"]
    assert refresher.is_stale(store.views(["r1"])["r1"])
    assert not refresher.is_stale(store.views(["r0"])["r0"])
    view = refresher.views(["r1"], fresh=True)["r1"]
    assert view.verified_at == now
    assert list(refresher.stale_ids()) == []


def test_a_trust_epoch_from_the_future_counts_from_now(pki: TestPki, store: Store) -> None:
    """Otherwise every status would be stale on every read until the clock
    caught up with the epoch."""
    store.put_sync(record_of(pki, messages(pki)["verified"], "r0"))
    now = NOW + timedelta(minutes=5)
    Refresher(store, revalidator(pki), clock=lambda: now)
    both = TrustStore(anchors=(anchor(pki.root), anchor(pki.other_root)))
    store.record_trust(both.generation, NOW + timedelta(days=2000)).result()
    refresher = Refresher(store, Revalidator(ChainValidator(both)), clock=lambda: now)
    assert list(refresher.stale_ids()) == ["r0"]  # verified before the anchors changed
    assert refresher.refresh_due() == 1
    assert list(refresher.stale_ids()) == []

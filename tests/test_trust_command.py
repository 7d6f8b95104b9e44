"""``smime-milter trust add|remove|list`` through the real CLI over a real LMDB store.

Stored records come from really verifying messages with the anchors of the
configuration; adding the second CA's root must then turn a delivery-time
"untrusted root" failure into signed/verified (RFC 9219 §4.1: added anchors
may change smimeStatusAtDelivery), while removal leaves it alone.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes

from smime_milter.bootstrap import load_trust
from smime_milter.cli.main import main
from smime_milter.config.reader import Config, load_config
from smime_milter.model import Status, Verdict, new_record_id
from smime_milter.stamp import fields as stamp
from smime_milter.store import Record, Store
from smime_milter.verify.engine import Verifier
from tests.support import smime
from tests.support.pki import TestPki
from tests.support.verdicts import BODY, NOW

ENTITY = smime.text_entity(BODY)
MISMATCH = "From address mallory@example.com does not match the certificate " \
    "(untrusted@example.com)"


@dataclass(frozen=True)
class Setup:
    config_path: Path
    config: Config
    root: Path
    other_root: Path
    anchors: Path
    store: Path

    def run(self, *args: str | Path) -> int:
        return main([*map(str, args), "--config", str(self.config_path)])


def _setup(tmp_path: Path, pki: TestPki) -> Setup:
    (tmp_path / "root.pem").write_bytes(pki.root.cert_pem)
    (tmp_path / "other_root.pem").write_bytes(pki.other_root.cert_pem)
    config_path = tmp_path / "smime-milter.toml"
    config_path.write_text(
        '[trust]\nanchors = ["root.pem"]\nanchor_directory = "anchors"\n'
        '[store]\npath = "store"\nmap_size = "16M"\n'
    )
    return Setup(config_path, load_config(config_path), tmp_path / "root.pem",
                 tmp_path / "other_root.pem", tmp_path / "anchors", tmp_path / "store")


@pytest.fixture
def setup(tmp_path: Path, pki: TestPki) -> Setup:
    return _setup(tmp_path, pki)


def _tamper(message: bytes) -> bytes:
    old = b"this message is signed"
    assert old in message
    return message.replace(old, b"this message is forged", 1)


def _messages(pki: TestPki) -> dict[str, bytes]:
    """Record id -> message, as delivered."""
    other = pki.untrusted  # issued by other_root, which the configuration does not trust
    return {
        "rchain": smime.multipart_signed(ENTITY, other, from_addr="untrusted@example.com",
                                         signing_time=NOW),
        "rmismatch": smime.multipart_signed(ENTITY, other, from_addr="mallory@example.com",
                                            signing_time=NOW),
        "rtampered": _tamper(smime.multipart_signed(
            ENTITY, other, from_addr="untrusted@example.com", signing_time=NOW)),
        "rgood": smime.multipart_signed(ENTITY, pki.rsa, signing_time=NOW),
    }


def _deliver(setup: Setup, pki: TestPki, ids: dict[str, str] | None = None
             ) -> dict[str, Record]:
    """Verifies the messages at NOW with the configured anchors and stores the
    records the milter would have written (under ``ids[name]`` when given);
    the store knows that anchor set."""
    trust = load_trust(setup.config)
    verifier = Verifier(trust, setup.config.verify, clock=lambda: NOW)
    records = {}
    with Store.open(setup.store, map_size=1 << 24) as store:
        for name, message in _messages(pki).items():
            record_id = (ids or {}).get(name, name)
            verdict = verifier.verify(message, at=NOW)
            record = Record.from_verdict(
                verdict, record_id=record_id, received_at=NOW,
                envelope_sender="untrusted@example.com",
                envelope_recipients=["bob@example.com"], message_id=None, queue_id=None,
            )
            store.put_sync(record)
            records[name] = record
        store.record_trust(trust.generation, NOW).result()
    return records


def _errors(record: Record) -> str:
    return " | ".join(record.errors_at_delivery or ())


def _read(setup: Setup) -> Store:
    return Store.open(setup.store, map_size=1 << 24)


# --------------------------------------------------------------------------- add


def test_add_makes_untrusted_root_failures_at_delivery_verified(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    delivered = _deliver(setup, pki)
    assert delivered["rchain"].status_at_delivery is Status.SIGNED_FAILED
    assert "untrusted root" in _errors(delivered["rchain"])
    assert _errors(delivered["rmismatch"]) == f"{MISMATCH} | {_errors(delivered['rchain'])}"
    assert delivered["rgood"].status_at_delivery is Status.SIGNED_VERIFIED
    with _read(setup) as store:
        state = store.state()
        epoch = store.trust_epoch()
    assert epoch is not None
    before = datetime.now(UTC).replace(microsecond=0)

    assert setup.run("trust", "add", setup.other_root) == 0

    out = capsys.readouterr().out
    sha = pki.other_root.cert.fingerprint(hashes.SHA256()).hex()
    written = setup.anchors / f"{sha}.pem"
    assert "added CN=Untrusted Root CA,O=smime-milter tests" in out
    assert str(written) in out
    assert "record rchain: smimeStatusAtDelivery signed/failed -> signed/verified\n" in out
    assert "record rgood" not in out
    # The others keep failing for their own reason: their at-delivery values
    # stay as they were (no Email/changes update for nothing).
    assert "record rtampered" not in out and "record rmismatch" not in out
    assert "smimeStatusAtDelivery changed for 1 record(s)" in out
    assert "systemctl reload smime-milter" in out and "SIGUSR1" in out

    with _read(setup) as store:
        records = store.get_many(delivered)
        changes = store.changes_since(state)
        new_epoch = store.trust_epoch()
    chain = records["rchain"]
    assert chain.status_at_delivery is Status.SIGNED_VERIFIED
    assert chain.errors_at_delivery is None
    # The current status is the JMAP layer's to re-validate; the command leaves it.
    assert chain.status is Status.SIGNED_FAILED
    assert chain.errors == delivered["rchain"].errors
    assert chain.verified_at == delivered["rchain"].verified_at
    # A failure that is not about the chain stays as it was delivered.
    assert records["rmismatch"] == delivered["rmismatch"]
    assert records["rtampered"] == delivered["rtampered"]
    assert records["rgood"] == delivered["rgood"]
    assert set(changes.updated) == {"rchain"}
    assert changes.created == ()
    # New anchor set: every current status verified before the change is stale.
    assert new_epoch is not None
    assert new_epoch.generation != epoch.generation
    assert new_epoch.generation == load_trust(setup.config).generation
    assert before <= new_epoch.changed_at <= datetime.now(UTC) + timedelta(seconds=1)

    # The managed file: <sha256>.pem, PEM of exactly that certificate, 0644 in a 0755 dir.
    assert written.read_bytes() == pki.other_root.cert_pem
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE(setup.anchors.stat().st_mode) == 0o755
    assert [p.name for p in setup.anchors.iterdir()] == [written.name]


def test_adding_twice_is_a_no_op(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    _deliver(setup, pki)
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    with _read(setup) as store:
        state, epoch = store.state(), store.trust_epoch()
    files = sorted(setup.anchors.iterdir())

    assert setup.run("trust", "add", setup.other_root) == 0

    out = capsys.readouterr().out
    assert "already present: CN=Untrusted Root CA" in out
    assert "nothing changed" in out
    assert "record " not in out
    assert sorted(setup.anchors.iterdir()) == files
    with _read(setup) as store:
        assert store.state() == state
        assert store.trust_epoch() == epoch


def test_add_of_an_anchor_already_configured_changes_nothing(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    _deliver(setup, pki)
    with _read(setup) as store:
        epoch = store.trust_epoch()
    assert setup.run("trust", "add", setup.root) == 0
    out = capsys.readouterr().out
    assert "already trusted through trust.anchors" in out
    with _read(setup) as store:
        assert store.trust_epoch() == epoch


def test_add_without_a_store_skips_the_store(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "add", setup.other_root) == 0
    out = capsys.readouterr().out
    assert f"store {setup.store} does not exist yet" in out
    assert not setup.store.exists()
    assert len(list(setup.anchors.iterdir())) == 1


def test_add_reports_warn_worthy_facts(
    setup: Setup, pki: TestPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf = tmp_path / "leaf.der"
    leaf.write_bytes(pki.rsa.cert_der)  # DER input, not a CA, not self-signed
    assert setup.run("trust", "add", leaf) == 0
    out = capsys.readouterr().out
    assert "added CN=alice@example.com" in out
    assert "  warning: not a CA certificate" in out
    assert "  warning: key usage does not allow keyCertSign" in out
    assert "  warning: not self-signed (issued by CN=Test Intermediate CA" in out


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b"not a certificate at all", id="garbage"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                 id="bad-der-in-pem"),
    pytest.param(None, id="private-key"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nnot base64!\n", id="broken-pem"),
])
def test_bad_input_names_the_file_and_changes_nothing(
    setup: Setup, pki: TestPki, content: bytes | None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(pki.rsa.bundle_pem if content is None else content)
    # A good file first: nothing of it may be written either.
    assert setup.run("trust", "add", setup.other_root, bad) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"smime-milter: {bad}: ")
    assert captured.err.count("\n") == 1
    if content is None:
        assert "PRIVATE KEY" in captured.err
    assert captured.out == ""
    assert not setup.anchors.exists()


def test_missing_input_file_is_an_error(
    setup: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "add", tmp_path / "missing.pem") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"smime-milter: {tmp_path / 'missing.pem'}: ")
    assert not setup.anchors.exists()


# --------------------------------------------------------------------------- remove


def _openssl_fingerprint(path: Path) -> str:
    """``sha256 Fingerprint=AB:CD:...`` as openssl prints it."""
    result = smime.openssl("x509", "-in", path, "-noout", "-fingerprint", "-sha256")
    return result.stdout.decode().strip()


@pytest.mark.process
def test_remove_keeps_at_delivery_and_starts_a_trust_epoch(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    _deliver(setup, pki)
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    with _read(setup) as store:
        state = store.state()
        epoch = store.trust_epoch()
        added = store.get_many(["rchain", "rmismatch"])
    assert added["rchain"].status_at_delivery is Status.SIGNED_VERIFIED
    line = _openssl_fingerprint(setup.other_root)
    fingerprint = line.split("=", 1)[1]
    assert len(fingerprint) == 95 and fingerprint.count(":") == 31

    assert setup.run("trust", "remove", fingerprint) == 0

    out = capsys.readouterr().out
    assert f"removed CN=Untrusted Root CA,O=smime-milter tests (SHA-256 {fingerprint}): " \
        "deleted " in out
    assert "smimeStatusAtDelivery is left unchanged" in out
    assert "record " not in out
    assert "systemctl reload smime-milter" in out
    assert list(setup.anchors.iterdir()) == []
    with _read(setup) as store:
        assert store.get_many(["rchain", "rmismatch"]) == added
        assert store.state() == state  # no record touched: nothing for Email/changes
        new_epoch = store.trust_epoch()
    assert epoch is not None and new_epoch is not None
    assert new_epoch.generation != epoch.generation
    assert new_epoch.generation == load_trust(setup.config).generation


@pytest.mark.process
@pytest.mark.parametrize("form", ["hex", "upper-colons", "openssl-line", "file-name",
                                  "pem-path", "managed-path"])
def test_remove_accepts_every_way_of_naming_an_anchor(
    setup: Setup, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    (managed,) = setup.anchors.iterdir()
    line = _openssl_fingerprint(setup.other_root)
    what = {
        "hex": managed.stem,
        "upper-colons": line.split("=", 1)[1],
        "openssl-line": line,
        "file-name": managed.name,
        "pem-path": str(setup.other_root),
        "managed-path": str(managed),
    }[form]
    assert setup.run("trust", "remove", what) == 0
    assert "removed CN=Untrusted Root CA" in capsys.readouterr().out
    assert not managed.exists()


def test_removing_a_configured_anchor_is_an_error(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    _deliver(setup, pki)
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    with _read(setup) as store:
        epoch = store.trust_epoch()
    files = sorted(setup.anchors.iterdir())

    # The configured root together with a managed one: neither is removed.
    assert setup.run("trust", "remove", setup.other_root, setup.root) == 1

    captured = capsys.readouterr()
    assert captured.err.startswith(f"smime-milter: {setup.root}: ")
    assert "trust.anchors" in captured.err and "edit" in captured.err
    assert captured.out == ""
    assert sorted(setup.anchors.iterdir()) == files
    with _read(setup) as store:
        assert store.trust_epoch() == epoch


def test_unknown_anchor_is_an_error(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    unknown = "ab" * 32
    assert setup.run("trust", "remove", unknown) == 1
    err = capsys.readouterr().err
    assert err == f"smime-milter: {unknown}: no managed trust anchor with SHA-256 {unknown}\n"
    assert setup.run("trust", "remove", "no-such-thing") == 1
    err = capsys.readouterr().err
    assert err.startswith("smime-milter: no-such-thing: not a certificate file")
    assert len(list(setup.anchors.iterdir())) == 1


# --------------------------------------------------------------------------- list


@pytest.mark.process
def test_list_shows_configured_and_managed_anchors(
    setup: Setup, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "add", setup.other_root) == 0
    capsys.readouterr()
    (managed,) = setup.anchors.iterdir()

    assert setup.run("trust", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    # The shipped default adds Mozilla's e-mail roots, listed first.
    anchors = [a for a in listed if not a["system"]]
    assert len(listed) - len(anchors) > 50
    assert [(a["subject"], a["managed"]) for a in anchors] == [
        ("CN=Test Root CA,O=smime-milter tests", False),
        ("CN=Untrusted Root CA,O=smime-milter tests", True),
    ]
    configured, added = anchors
    assert configured["source"] == str(setup.root) == configured["file"]
    assert added["source"] == str(setup.anchors)
    assert added["file"] == str(managed)
    assert added["sha256"] == managed.stem
    expected_end = pki.other_root.cert.not_valid_after_utc
    assert added["notAfter"] == expected_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert added["warnings"] == [] == configured["warnings"]

    assert setup.run("trust", "list") == 0
    out = capsys.readouterr().out
    fingerprint = _openssl_fingerprint(setup.other_root).split("=", 1)[1]
    assert f"{fingerprint}\n  subject: CN=Untrusted Root CA" in out
    assert f"  source: managed ({managed})" in out
    assert f"  source: trust.anchors ({setup.root})" in out
    assert out.endswith(f"{len(listed)} trust anchor(s)\n")


def test_list_without_a_managed_directory(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.run("trust", "list", "--json") == 0
    anchors = json.loads(capsys.readouterr().out)
    assert [a["managed"] for a in anchors if not a["system"]] == [False]


def test_configured_directory_and_anchor_in_both_places(
    tmp_path: Path, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configured directory is listed per file; removing a managed anchor
    that trust.anchors also provides works but says it stays trusted."""
    setup = _setup(tmp_path, pki)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "a.crt").write_bytes(pki.root.cert_pem + pki.other_root.cert_pem)
    setup.config_path.write_text(
        '[trust]\nanchors = ["bundle"]\nanchor_directory = "anchors"\n'
        '[store]\npath = "store"\n'
    )
    assert setup.run("trust", "add", setup.other_root) == 0
    assert "already trusted through trust.anchors" in capsys.readouterr().out
    assert setup.run("trust", "list") == 0
    out = capsys.readouterr().out
    assert out.count(f"  source: trust.anchors {bundle} ({bundle / 'a.crt'})") == 2
    assert out.count("  source: managed (") == 1

    assert setup.run("trust", "remove", setup.other_root) == 0
    out = capsys.readouterr().out
    assert f"  warning: still trusted through trust.anchors ({bundle})" in out
    assert list(setup.anchors.iterdir()) == []


# --- no library warnings on the admin's console ----------------------------------------

SMIME_MILTER = Path(sys.executable).with_name("smime-milter")
ROOT = Path(__file__).resolve().parents[1]


def _console(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed console script with every Python warning shown (as
    ``-W always`` would): whatever is not kept out on purpose reaches stderr."""
    return subprocess.run([str(SMIME_MILTER), *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "always"})


@pytest.mark.process
@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_trust_list_with_the_shipped_configuration_prints_no_warning(json_output: bool) -> None:
    """Mozilla's e-mail roots include some with a serial number that is not
    positive, which cryptography warns about once per root."""
    result = _console("trust", "list", *(["--json"] if json_output else []),
                      "--config", ROOT / "policy" / "smime-milter.toml")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout


def _zero_serial(pki: TestPki) -> bytes:
    """The test root with serial number 0, as some old CAs were issued."""
    cert = asn1_x509.Certificate.load(pki.root.cert_der)
    cert["tbs_certificate"]["serial_number"] = 0
    return cert.dump(force=True)


@pytest.mark.process
def test_an_anchor_with_a_serial_that_is_not_positive_is_a_listed_warning(
        tmp_path: Path, pki: TestPki) -> None:
    """Not a Python warning on stderr per code line, but a line of the
    anchor's own in trust list (the admin can replace their anchor)."""
    (tmp_path / "zero.der").write_bytes(_zero_serial(pki))
    config = tmp_path / "smime-milter.toml"
    config.write_text('[trust]\nanchors = ["zero.der"]\nanchor_directory = "anchors"\n'
                      'system_anchors = "none"\n[store]\npath = "store"\n')
    added = _console("trust", "add", tmp_path / "zero.der", "--config", config)
    assert (added.returncode, added.stderr) == (0, "")
    text = _console("trust", "list", "--config", config)
    as_json = _console("trust", "list", "--json", "--config", config)
    assert (text.returncode, text.stderr, as_json.returncode, as_json.stderr) == (0, "", 0, "")
    warning = ("serial number is not positive (RFC 5280 forbids it; a future release of "
               "the cryptography library will refuse this certificate)")
    assert text.stdout.count(f"  warning: {warning}\n") == 2  # configured and managed
    assert [warning in entry["warnings"] for entry in json.loads(as_json.stdout)] == [True, True]


# --------------------------------------------------------------------------- trust add = ingest


AUTHSERV = "mx.example.org"


def _as_delivered(message: bytes, verdict: Verdict, record_id: str) -> bytes:
    """The copy a Maildir holds: delivery fields, the milter's stamp (made by
    the real stamp functions from the delivery verdict), our MTA's Received."""
    fields = [
        ("Return-Path", "<untrusted@example.com>"), ("X-Original-To", "bob@example.com"),
        ("Delivered-To", "bob@example.com"),
        (stamp.AR_HEADER, stamp.authentication_results(AUTHSERV, verdict)),
        (stamp.STATUS_HEADER, stamp.status_header(verdict.status, record_id)),
        ("Received", f"from client.example.net (client.example.net [192.0.2.7])\n\tby "
                     f"{AUTHSERV} (Postfix) with ESMTPS id 4Xyz12AbCd\n\tfor "
                     f"<bob@example.com>; {format_datetime(NOW)}"),
    ]
    head = "".join(f"{name}: {value}\n" for name, value in fields).encode()
    return (head + message).replace(b"\r\n", b"\n")


def test_ingest_into_a_fresh_store_agrees_with_trust_add(
    tmp_path: Path, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16: after ``trust add`` the store said signed/verified at delivery
    while a store rebuilt by ``ingest`` kept the stamp's signed/failed."""
    setup = _setup(tmp_path, pki)
    ids = {name: new_record_id() for name in _messages(pki)}
    records = _deliver(setup, pki, ids)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    trust = load_trust(setup.config)
    verifier = Verifier(trust, setup.config.verify, clock=lambda: NOW)
    for name, message in _messages(pki).items():
        verdict = verifier.verify(message, at=NOW)
        assert verdict.status is records[name].status_at_delivery
        copy = _as_delivered(message, verdict, ids[name])
        (maildir / "new" / f"{name}.mx:2,").write_bytes(copy)

    # A: the store the milter wrote, after `trust add` of the other root.
    assert setup.run("trust", "add", setup.other_root) == 0
    with _read(setup) as store:
        after_trust_add = store.get_many(ids.values())

    # B: a fresh store rebuilt from the delivered mail, the root now trusted.
    capsys.readouterr()
    fresh = tmp_path / "rebuilt"
    assert main(["ingest", str(maildir), "--authserv-id", AUTHSERV, "--store", str(fresh),
                 "--config", str(setup.config_path)]) == 0
    out = capsys.readouterr().out
    assert (f"record {ids['rchain']}: smimeStatusAtDelivery signed/failed -> "
            "signed/verified\n") in out
    with Store.open(fresh, map_size=1 << 24) as store:
        rebuilt = store.get_many(ids.values())

    assert set(rebuilt) == set(after_trust_add) == set(ids.values())
    for name, record_id in ids.items():
        a, b = after_trust_add[record_id], rebuilt[record_id]
        assert b.status_at_delivery == a.status_at_delivery, name
        assert (b.errors_at_delivery is None) == (a.errors_at_delivery is None), name
    assert rebuilt[ids["rchain"]].status_at_delivery is Status.SIGNED_VERIFIED
    assert rebuilt[ids["rchain"]].errors_at_delivery is None
    # Failures for another reason stay failed on both paths.
    for name in ("rtampered", "rmismatch"):
        assert after_trust_add[ids[name]].status_at_delivery is Status.SIGNED_FAILED
        assert rebuilt[ids[name]].status_at_delivery is Status.SIGNED_FAILED
    assert rebuilt[ids["rgood"]].status_at_delivery is Status.SIGNED_VERIFIED

"""The Thunderbird/NSS corpus: 77 real messages with expected RFC 9219 statuses.

Validation is pinned to 2027-01-01 so the expectations (which assume a
moment inside the certificates' validity) hold whenever the suite runs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smime_milter.cms.certs import cert_info
from smime_milter.cms.envelope import decrypt, load_decryption_key
from smime_milter.cms.signed_data import AlgorithmPolicy
from smime_milter.mail.mime import decode_transfer_encoding, parse_entity
from smime_milter.model import Status
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier, VerifyPolicy
from tests.corpora import CORPORA, corpus

PINNED = datetime(2027, 1, 1, tzinfo=UTC)
FOLDER = CORPORA / "thunderbird"
ROWS = (
    list(csv.DictReader((FOLDER / "expected.tsv").open(newline="", encoding="utf-8"),
                        delimiter="\t"))
    if (FOLDER / "expected.tsv").is_file() else []
)
COLUMNS = ("smimeStatus_default", "smimeStatus_allow_sha1", "smimeStatus_with_bob_key")


@pytest.fixture(scope="module")
def folder() -> Path:
    return corpus("thunderbird")


@pytest.fixture(scope="module")
def verifiers(folder: Path) -> dict[str, Verifier]:
    trust = TrustStore.load([folder / "TestCA.pem"])
    bob = load_decryption_key(folder / "bob-key.pem", folder / "bob-cert.pem")
    return {
        "smimeStatus_default": Verifier(trust),
        "smimeStatus_allow_sha1": Verifier(
            trust, VerifyPolicy(algorithms=AlgorithmPolicy(allow_sha1=True))
        ),
        "smimeStatus_with_bob_key": Verifier(trust, decryption_keys=[bob]),
    }


def test_corpus_is_complete(folder: Path) -> None:
    assert len(ROWS) == 77
    assert {row["file"] for row in ROWS} == {p.name for p in folder.glob("*.eml")}


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_thunderbird_status(row: dict[str, str], column: str, folder: Path,
                            verifiers: dict[str, Verifier]) -> None:
    raw = (folder / row["file"]).read_bytes()
    verdict = verifiers[column].verify(raw, at=PINNED)
    got = verdict.status.value if verdict.status else "null"
    assert got == row[column], f"{row['note']} (errors: {verdict.errors}, notes: {verdict.notes})"
    if verdict.status is not None and verdict.status.is_failed:
        assert verdict.errors, "a failed status must say why"
    else:
        assert verdict.errors is None


@pytest.mark.parametrize("name", ["alice.dsig.SHA256.multipart.bad.eml",
                                  "alice.dsig.SHA256.multipart.mismatch-econtent.eml"])
def test_digest_mismatch_is_named(name: str, folder: Path,
                                  verifiers: dict[str, Verifier]) -> None:
    verdict = verifiers["smimeStatus_default"].verify((folder / name).read_bytes(), at=PINNED)
    assert any("digest mismatch" in error for error in verdict.errors or ())


def test_sha1_error_names_the_algorithm(folder: Path, verifiers: dict[str, Verifier]) -> None:
    raw = (folder / "alice.dsig.SHA1.multipart.eml").read_bytes()
    verdict = verifiers["smimeStatus_default"].verify(raw, at=PINNED)
    assert verdict.errors == ("SHA-1 digest algorithm is not accepted by policy",)


def test_partial_signature_names_unsigned_parts(folder: Path,
                                               verifiers: dict[str, Verifier]) -> None:
    raw = (folder / "alice.dsig.SHA256.multipart.in.mixed.with.header.eml").read_bytes()
    verdict = verifiers["smimeStatus_default"].verify(raw, at=PINNED)
    assert verdict.status is Status.SIGNED_FAILED
    assert verdict.errors[0] == "signature covers only MIME part 2; part(s) 1, 3 not signed"
    assert verdict.signers and verdict.signers[0].ok  # the part itself is a good signature


def test_expired_after_2031(folder: Path, verifiers: dict[str, Verifier]) -> None:
    raw = (folder / "alice.dsig.SHA256.multipart.eml").read_bytes()
    later = datetime(2032, 1, 1, tzinfo=UTC)
    verdict = verifiers["smimeStatus_default"].verify(raw, at=later)
    assert verdict.status is Status.SIGNED_FAILED
    assert any("expired" in error for error in verdict.errors or ())


def test_signer_address_from_subject_dn(folder: Path) -> None:
    from asn1crypto import pem

    _, _, der = pem.unarmor((folder / "alice-cert.pem").read_bytes())
    assert cert_info(der).emails == ("Alice@example.com",)


def test_bob_key_decrypts_alice_env(folder: Path) -> None:
    key = load_decryption_key(folder / "bob-key.pem", folder / "bob-cert.pem")
    entity = parse_entity((folder / "alice.env.eml").read_bytes())
    result = decrypt(decode_transfer_encoding(entity), [key])
    inner = parse_entity(result.content or b"")
    assert inner.content_type.mime_type == "text/plain"
    assert b"This is a test message from Alice to Bob." in inner.body


@pytest.mark.process
def test_cli_json_over_corpus(folder: Path) -> None:
    """The admin's view: ``smime-milter verify --json`` over every file."""
    files = sorted(folder.glob("*.eml"))
    result = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "verify", "--json",
         "--at", "2027-01-01T00:00:00Z", "--trust-anchors", str(folder / "TestCA.pem"),
         *map(str, files)],
        capture_output=True, check=True, timeout=300,
    )
    expected = {row["file"]: row["smimeStatus_default"] for row in ROWS}
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(files)
    for line in lines:
        assert (line["smimeStatus"] or "null") == expected[Path(line["file"]).name], line

"""``smime-milter verify``: the admin's offline test mode, run as a real process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smime_milter.cli import verify as verify_command
from smime_milter.cli.main import main
from smime_milter.errors import SmimeMilterError
from tests.support import smime
from tests.support.pki import TestPki
from tests.support.verdicts import NOW

pytestmark = pytest.mark.process

AT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def files(pki: TestPki, pki_files: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared PKI files (conftest) plus a few messages signed with it."""
    folder = tmp_path_factory.mktemp("cli")
    written = dict(pki_files)
    body = smime.text_entity("Hello Bob.\r\n")
    messages = {
        "good.eml": smime.multipart_signed(body, pki.rsa),
        "mismatch.eml": smime.multipart_signed(body, pki.rsa, from_addr="mallory@example.com"),
        "revoked.eml": smime.opaque_signed(body, pki.revoked, from_addr="revoked@example.com"),
        "plain.eml": smime.wrap_message(body),
        "encrypted.eml": smime.enveloped(
            smime.multipart_signed_entity(body, pki.rsa), [pki.ec256],
        ),
    }
    for name, data in messages.items():
        (folder / name).write_bytes(data)
        written[name] = folder / name
    return written


def test_json_fields(files: dict[str, Path]) -> None:
    result = run("verify", "--json", "--at", AT, "--trust-anchors", files["root.pem"],
                 files["good.eml"], files["mismatch.eml"], files["plain.eml"])
    assert result.returncode == 0, result.stderr
    good, mismatch, plain = (json.loads(line) for line in result.stdout.splitlines())
    assert good["file"] == str(files["good.eml"])
    assert good["smimeStatus"] == "signed/verified"
    assert good["smimeErrors"] is None
    assert good["smimeVerifiedAt"].endswith("Z")
    signer = good["signers"][0]
    assert signer["email"] == "alice@example.com"
    assert signer["signature"] == "pass" and signer["chain"] == "pass"
    assert signer["fromMatch"] is True and signer["errors"] == []
    assert "CN=" in signer["issuer"] or "Common Name" in signer["issuer"]
    assert signer["serial"].isdigit()
    assert signer["signingTime"].endswith("Z")
    assert mismatch["smimeStatus"] == "signed/failed"
    assert mismatch["signers"][0]["fromMatch"] is False
    assert any("mallory@example.com" in e for e in mismatch["smimeErrors"])
    assert plain["smimeStatus"] is None and plain["smimeVerifiedAt"] is None


def test_crl_and_revocation_switches(files: dict[str, Path]) -> None:
    base = ("verify", "--json", "--at", AT, "--trust-anchors", files["root.pem"])
    with_crl = json.loads(run(*base, "--crl", files["crl.pem"], files["revoked.eml"]).stdout)
    assert with_crl["smimeStatus"] == "signed/failed"
    assert any("revoked" in e for e in with_crl["smimeErrors"])
    off = json.loads(run(*base, "--crl", files["crl.pem"], "--revocation", "off",
                         files["revoked.eml"]).stdout)
    assert off["smimeStatus"] == "signed/verified"


def test_decrypt_key(files: dict[str, Path]) -> None:
    base = ("verify", "--json", "--at", AT, "--trust-anchors", files["root.pem"])
    without = json.loads(run(*base, files["encrypted.eml"]).stdout)
    assert without["smimeStatus"] == "unknown"
    opened = json.loads(run(*base, "--decrypt-key", files["ec256.pem"],
                            files["encrypted.eml"]).stdout)
    assert opened["smimeStatus"] == "encrypted+signed/verified"


def test_text_output(files: dict[str, Path]) -> None:
    result = run("verify", "--at", AT, "--trust-anchors", files["root.pem"],
                 files["mismatch.eml"])
    assert result.returncode == 0
    assert result.stdout.startswith(f"{files['mismatch.eml']}: signed/failed\n")
    assert "does not match" in result.stdout


def test_at_changes_the_answer(files: dict[str, Path]) -> None:
    later = run("verify", "--json", "--at", "2030-01-01T00:00:00+00:00",
                "--trust-anchors", files["root.pem"], files["good.eml"])
    verdict = json.loads(later.stdout)
    assert verdict["smimeStatus"] == "signed/failed"
    assert any("expired" in e for e in verdict["smimeErrors"])
    assert verdict["validationTime"] == "2030-01-01T00:00:00Z"


def test_unreadable_file_is_one_line_error(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.eml"
    result = run("verify", "--json", "--at", AT, "--trust-anchors", files["root.pem"],
                 missing, files["good.eml"])
    assert result.returncode == 1
    assert result.stderr.strip() == f"smime-milter: {missing}: No such file or directory"
    assert json.loads(result.stdout)["smimeStatus"] == "signed/verified"  # the rest still ran


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("verify", "--at", "yesterday", "x.eml"), "not an ISO 8601 date-time"),
        (("verify", "--revocation", "maybe", "x.eml"), "invalid choice"),
        (("verify",), "required"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], needle: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert needle in result.stderr


def test_bad_trust_anchor_file(tmp_path: Path, files: dict[str, Path]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    result = run("verify", "--trust-anchors", junk, files["good.eml"])
    assert result.returncode == 1
    assert result.stderr.startswith(f"smime-milter: {junk}: not a certificate file")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_decrypt_key_is_one_line_error(tmp_path: Path, files: dict[str, Path]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    result = run("verify", "--trust-anchors", files["root.pem"], "--decrypt-key", junk,
                 files["good.eml"])
    assert result.returncode == 1
    assert result.stderr == f"smime-milter: {junk}: no PEM private key found\n"


def test_malformed_status_field_is_one_line_error(tmp_path: Path) -> None:
    """``release`` reads the record id from the held copy's field; a field
    the milter did not write is the admin's input error, not a bug."""
    held = tmp_path / "held.eml"
    held.write_bytes(b"SMIME-Status-At-Delivery: bogus; record=x\r\nSubject: x\r\n\r\nbody\r\n")
    config = tmp_path / "smime-milter.conf"
    config.write_text("")
    result = run("release", "--dry-run", "--config", config, "--store", tmp_path / "store",
                 held)
    assert result.returncode == 1
    assert result.stderr == "smime-milter: unknown S/MIME status 'bogus'\n"


def _raising(exc: BaseException) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise exc
    return handler


def test_project_error_is_one_line_and_status_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(verify_command, "run_verify",
                        _raising(SmimeMilterError("the setup is wrong")))
    assert main(["verify", "x.eml"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "smime-milter: the setup is wrong\n"
    assert captured.out == ""


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"),
                                 ValueError("a bug, not an input error")])
def test_other_exceptions_keep_their_traceback(
        monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    """A bug is not turned into a one-line error, a bare ValueError included."""
    monkeypatch.setattr(verify_command, "run_verify", _raising(exc))
    with pytest.raises(type(exc)):
        main(["verify", "x.eml"])


def test_a_reader_that_goes_away_is_not_a_traceback(tmp_path: Path) -> None:
    """``smime-milter trust list | head -1``: the pipe closes before the
    command writes; it stops with SIGPIPE's shell status and no traceback."""
    config = tmp_path / "c.toml"
    config.write_text(f'[trust]\nanchor_directory = "{tmp_path / "anchors"}"\n')
    script = Path(sys.executable).with_name("smime-milter")
    process = subprocess.Popen([str(script), "trust", "list", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr

"""The default trust anchors: the roots Mozilla's root program trusts for
e-mail, read from this machine's real NSS built-in root module (libnss3).

Roots are picked by SHA-256 fingerprint and checked against an independent
source, the TLS bundle /etc/ssl/certs/ca-certificates.crt: a TLS-only root
is in the bundle but no anchor, an e-mail-only root is an anchor but not in
the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes

from smime_milter.bootstrap import load_trust
from smime_milter.cli.main import main
from smime_milter.cms import files
from smime_milter.config import Config, ConfigError, load_config
from smime_milter.config.reader import parse_config
from smime_milter.trust import (
    AnchorSources,
    NssModuleNotFound,
    NssModuleUnusable,
    SystemAnchors,
    TrustConfig,
    find_nss_module,
    list_anchors,
    load_system_anchors,
    load_trust_store,
    trust_files,
)
from tests.support.daemon import MilterProcess
from tests.support.pki import TestPki

TLS_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Mozilla trusts ISRG Root X1 (Let's Encrypt) for TLS only.
ISRG_ROOT_X1 = "96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6"
#: DigiCert Global Root G2: trusted for TLS and for e-mail.
DIGICERT_GLOBAL_ROOT_G2 = "cb3ccbb76031e5e0138f8dd39a23f9de47ffc35e43c1144cea27d46a5ab1cb5f"
#: GlobalSign Secure Mail Root R45: trusted for e-mail only.
GLOBALSIGN_SECURE_MAIL_R45 = "319af0a7729e6f89269c131ea6a3a16fcd86389fdcab3c47a4a675c161a3f974"


@pytest.fixture(scope="module")
def system() -> SystemAnchors:
    return load_system_anchors()


@pytest.fixture(scope="module")
def extracted(system: SystemAnchors) -> set[str]:
    return {hashlib.sha256(der).hexdigest() for der in system.certificates}


@pytest.fixture(scope="module")
def tls_bundle() -> set[str]:
    return {hashlib.sha256(der).hexdigest() for der in files.der_blobs(TLS_BUNDLE.read_bytes())}


def test_a_root_trusted_for_tls_only_is_no_anchor(extracted: set[str],
                                                   tls_bundle: set[str]) -> None:
    assert ISRG_ROOT_X1 in tls_bundle
    assert ISRG_ROOT_X1 not in extracted


def test_roots_trusted_for_email_are_anchors(extracted: set[str], tls_bundle: set[str]) -> None:
    assert DIGICERT_GLOBAL_ROOT_G2 in extracted and DIGICERT_GLOBAL_ROOT_G2 in tls_bundle
    # The TLS bundle lacks e-mail-only CAs.
    assert GLOBALSIGN_SECURE_MAIL_R45 in extracted
    assert GLOBALSIGN_SECURE_MAIL_R45 not in tls_bundle


def test_counts_are_plausible(system: SystemAnchors, extracted: set[str]) -> None:
    assert system.source == find_nss_module()
    assert system.source.name == "libnssckbi.so"
    assert len(system.certificates) > 50
    assert len(extracted) == len(system.certificates)  # each root once
    assert system.skipped_tls_only > 10
    assert system.skipped_distrusted >= 1  # DigiNotar, explicitly distrusted


def test_roots_with_an_email_distrust_after_date_are_left_out(system: SystemAnchors) -> None:
    """TrustCor's roots carry CKA_NSS_EMAIL_DISTRUST_AFTER (2022-11-30): left
    out entirely, not trusted for older certificates either."""
    subjects = [asn1_x509.Certificate.load(der).subject.human_friendly
                for der in system.certificates]
    assert not [s for s in subjects if "TrustCor" in s]
    if system.skipped_distrust_after:  # libnss3 3.87 has eight such roots
        assert f"{system.skipped_distrust_after} with an e-mail distrust-after date" in (
            system.describe())


def test_the_default_trust_store_holds_the_email_roots_only() -> None:
    anchors = {cert.sha256.hex() for cert in load_trust(Config()).anchors}
    assert DIGICERT_GLOBAL_ROOT_G2 in anchors and GLOBALSIGN_SECURE_MAIL_R45 in anchors
    assert ISRG_ROOT_X1 not in anchors


def test_a_missing_module_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(NssModuleNotFound) as info:
        load_system_anchors(tmp_path / "libnssckbi.so")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'libnssckbi.so'}: no such file (trust.nss_module)")
    assert 'system_anchors = "none"' in message

    with pytest.raises(NssModuleNotFound) as info:
        find_nss_module((str(tmp_path / "*" / "libnssckbi.so"),))
    assert str(info.value) == (
        f"no NSS built-in root module (libnssckbi.so, package libnss3) found in "
        f"{tmp_path}/*/libnssckbi.so: install libnss3, or set [trust] system_anchors = "
        '"none" and list anchors yourself')


def test_a_file_that_is_no_pkcs11_module_is_a_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "libnssckbi.so"
    bogus.write_bytes(b"not a shared library")
    with pytest.raises(NssModuleUnusable) as info:
        load_system_anchors(bogus)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{bogus}: not a usable NSS built-in root module")


def test_a_configured_missing_module_stops_loading_and_never_falls_back(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[trust]\nnss_module = "nowhere/libnssckbi.so"\n')
    config = load_config(tmp_path / "c.toml")
    assert config.trust.nss_module == tmp_path / "nowhere" / "libnssckbi.so"
    with pytest.raises(NssModuleNotFound):
        load_trust(config)


def test_system_anchors_none_yields_none(tmp_path: Path, pki: TestPki) -> None:
    (tmp_path / "root.pem").write_bytes(pki.root.cert_pem)
    (tmp_path / "c.toml").write_text(
        '[trust]\nsystem_anchors = "none"\nanchors = ["root.pem"]\n'
        'anchor_directory = "anchors"\n'
        # A missing module is no error when nothing is read from it.
        'nss_module = "nowhere/libnssckbi.so"\n')
    config = load_config(tmp_path / "c.toml")
    loaded = load_trust_store(config.trust)
    assert loaded.sources.system is None
    assert [cert.sha256 for cert in loaded.store.anchors] == [
        pki.root.cert.fingerprint(hashes.SHA256())]
    assert loaded.sources.describe() == (
        f'none from the system ([trust] system_anchors = "none"), 0 managed '
        f"({tmp_path / 'anchors'}), 1 from [trust] anchors")
    assert [entry.system for entry in list_anchors(config.trust)] == [False]
    assert all("libnssckbi" not in path for path, _, _ in trust_files(config.trust))


def test_defaults_and_a_bad_value_lists_the_allowed_ones(tmp_path: Path) -> None:
    defaults = parse_config("").trust
    assert (defaults.system_anchors, defaults.nss_module, defaults.anchors) == (
        "mozilla-email", None, ())
    path = tmp_path / "c.toml"
    path.write_text('[trust]\n\nsystem_anchors = "tls"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == (
        f"{path}:3: trust.system_anchors: invalid value 'tls' "
        '(allowed: "mozilla-email", "none")',)
    path.write_text('[trust]\nnss_module = ""\n')
    with pytest.raises(ConfigError, match=r"trust\.nss_module: must not be empty"):
        load_config(path)


def test_log_line_says_how_many_anchors_came_from_where(tmp_path: Path) -> None:
    system = SystemAnchors(Path("/usr/lib/x/libnssckbi.so"), (b"a",) * 108, 51, 1)
    sources = AnchorSources(system, 2, Path("/etc/smime-milter/anchors"), 0)
    assert sources.describe() == (
        "108 for e-mail from Mozilla's root program (/usr/lib/x/libnssckbi.so; "
        "51 TLS-only and 1 distrusted left out), 2 managed (/etc/smime-milter/anchors), "
        "0 from [trust] anchors")
    with_date = SystemAnchors(Path("/m.so"), (b"a",), 51, 1, 8)
    assert with_date.describe() == (
        "1 for e-mail from Mozilla's root program (/m.so; 51 TLS-only, 1 distrusted and "
        "8 with an e-mail distrust-after date left out)")


def test_the_watcher_notices_an_updated_module(tmp_path: Path) -> None:
    module = tmp_path / "libnssckbi.so"
    shutil.copyfile(find_nss_module(), module)
    trust = TrustConfig(nss_module=module, anchor_directory=tmp_path / "anchors")
    before = trust_files(trust)
    assert str(module) in [path for path, _, _ in before]
    assert len(load_system_anchors(module).certificates) > 50
    os.utime(module, ns=(0, 0))
    assert trust_files(trust) != before
    default = [path for path, _, _ in trust_files(TrustConfig())]
    assert str(find_nss_module()) in default


def test_trust_list_managed_shows_only_the_managed_anchors(
    tmp_path: Path, pki: TestPki, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "root.pem").write_bytes(pki.root.cert_pem)
    (tmp_path / "other.pem").write_bytes(pki.other_root.cert_pem)
    config = tmp_path / "c.toml"
    config.write_text('[trust]\nanchors = ["root.pem"]\nanchor_directory = "anchors"\n'
                      '[store]\npath = "store"\n')
    assert main(["trust", "add", str(tmp_path / "other.pem"), "--config", str(config)]) == 0
    capsys.readouterr()

    assert main(["trust", "list", "--managed", "--json", "--config", str(config)]) == 0
    managed = json.loads(capsys.readouterr().out)
    assert [(a["subject"], a["managed"], a["system"]) for a in managed] == [
        ("CN=Untrusted Root CA,O=smime-milter tests", True, False)]
    assert main(["trust", "list", "--managed", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("  source: ") == 1 and out.endswith("1 trust anchor(s)\n")

    assert main(["trust", "list", "--json", "--config", str(config)]) == 0
    everything = json.loads(capsys.readouterr().out)
    system = [a for a in everything if a["system"]]
    assert len(system) > 50
    assert {a["source"] for a in system} == {str(find_nss_module())}
    assert DIGICERT_GLOBAL_ROOT_G2 in {a["sha256"] for a in system}
    assert [a["managed"] for a in everything if not a["system"]] == [False, True]
    assert main(["trust", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "  source: system: Mozilla's root program, trusted for e-mail (" in out


def test_removing_a_system_anchor_says_how_to_stop_trusting_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[trust]\nanchor_directory = "anchors"\n[store]\npath = "store"\n')
    assert main(["trust", "remove", DIGICERT_GLOBAL_ROOT_G2, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "one of Mozilla's e-mail roots" in err and 'system_anchors = "none"' in err


@pytest.mark.process
@pytest.mark.daemon
def test_start_up_logs_where_the_anchors_came_from(tmp_path: Path, anchors: Path) -> None:
    daemon = MilterProcess(tmp_path, anchors, workers=1)
    daemon.start()
    try:
        log = daemon.log_text()
    finally:
        assert daemon.stop() == 0
    system = load_system_anchors()
    lines = [line for line in log.splitlines() if "trust anchors: " in line]
    assert len(lines) == 1, log
    assert lines[0].endswith(
        f"trust anchors: {system.describe()}, 0 managed ({daemon.anchor_directory}), "
        "1 from [trust] anchors")

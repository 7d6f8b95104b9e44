"""``smime-milter status``'s checks one by one, without a daemon: CRL dates,
the service user's access to the store, an unreachable socket or metrics
endpoint (tests/test_metrics.py runs them against the real daemon)."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smime_milter.bootstrap import load_trust_with_sources
from smime_milter.config import Config
from smime_milter.config.reader import MetricsConfig, parse_config
from smime_milter.mta import check_health
from smime_milter.mta.health import FAIL, OK, UNKNOWN, Health
from smime_milter.store import Store
from tests.support.pki import TestPki, crl_pem, make_crl

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _config(tmp_path: Path, pki: TestPki, extra: str = "") -> Config:
    anchor = tmp_path / "root.pem"
    anchor.write_bytes(pki.root.cert_pem)
    return parse_config(
        f'[trust]\nanchors = ["{anchor}"]\nsystem_anchors = "none"\n'
        f'anchor_directory = "{tmp_path}/anchors.d"\n'
        f'[milter]\nsocket = "unix:{tmp_path}/milter.sock"\nuser = "root"\n'
        f'[store]\npath = "{tmp_path}/store"\n' + extra, tmp_path / "c.toml")


def _checks(health: Health) -> dict[str, tuple[str, str]]:
    return {check.name: (check.state, check.detail) for check in health.checks}


def test_nothing_running_fails_on_socket_and_store_and_says_why(
    tmp_path: Path, pki: TestPki
) -> None:
    health = check_health(_config(tmp_path, pki), load_trust_with_sources, NOW)
    checks = _checks(health)
    assert not health.healthy
    assert checks["socket"] == (FAIL, f"unix:{tmp_path}/milter.sock: cannot connect: "
                                      "No such file or directory")
    assert checks["store"][0] == FAIL and "no store at" in checks["store"][1]
    assert checks["anchors"] == (OK, "1 anchors: none from the system ([trust] system_anchors "
                                     f'= "none"), 0 managed ({tmp_path}/anchors.d), '
                                     "1 from [trust] anchors")
    assert checks["crls"] == (OK, "no CRL files configured ([trust] crls)")
    assert checks["last_message"][0] == UNKNOWN
    assert checks["workers"] == (UNKNOWN, "metrics endpoint off ([metrics] listen)")
    assert health.as_json()["checks"]["socket"]["ok"] is False


def test_a_listening_socket_and_an_empty_store_are_healthy(tmp_path: Path, pki: TestPki) -> None:
    config = _config(tmp_path, pki)
    Store.open(config.store.path).close()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "milter.sock"))
        listener.listen()
        health = check_health(config, load_trust_with_sources, NOW)
        assert health.healthy, health.lines()
        checks = _checks(health)
        assert checks["store"][1].startswith(f"{config.store.path}: 0 records, schema version")
        assert checks["last_message"] == (OK, "no message recorded yet")
        idle = check_health(config, load_trust_with_sources, NOW, timedelta(minutes=30))
        assert _checks(idle)["last_message"] == (FAIL, "no message recorded yet")


def test_crl_dates_newest_issue_and_a_passed_next_update(tmp_path: Path, pki: TestPki) -> None:
    crls = tmp_path / "crls"
    crls.mkdir()
    (crls / "root.crl").write_bytes(crl_pem(make_crl(
        pki.root, this_update=NOW - timedelta(days=3), next_update=NOW + timedelta(days=4))))
    (crls / "intermediate.crl").write_bytes(make_crl(
        pki.intermediate, this_update=NOW - timedelta(hours=2),
        next_update=NOW + timedelta(days=1)))
    config = _config(tmp_path, pki, "")
    config = replace(config, trust=replace(config.trust, crls=(crls,)))
    state, detail = _checks(check_health(config, load_trust_with_sources, NOW))["crls"]
    assert (state, detail) == (OK, "2 CRLs, newest issued 2 h ago, next update due "
                                   f"{(NOW + timedelta(days=1)).isoformat()}")
    later = NOW + timedelta(days=2)
    state, detail = _checks(check_health(config, load_trust_with_sources, later))["crls"]
    assert state == FAIL
    assert detail.startswith(f"{crls}/intermediate.crl (")
    assert detail.endswith(f"nextUpdate {(NOW + timedelta(days=1)).isoformat()} passed 1 d ago")


def test_store_access_is_judged_for_the_service_user(tmp_path: Path, pki: TestPki) -> None:
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    config = _config(tmp_path, pki)
    Store.open(config.store.path).close()
    config = replace(config, milter=replace(config.milter, user="nobody"))
    state, detail = _checks(check_health(config, load_trust_with_sources, NOW))["store_access"]
    assert (state, detail) == (FAIL, f"{config.store.path}: nobody may not write it")
    if os.geteuid() != 0:
        return
    for path in (config.store.path, *config.store.path.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    state, detail = _checks(check_health(config, load_trust_with_sources, NOW))["store_access"]
    assert (state, detail) == (OK, f"{config.store.path} writable by nobody")


def test_an_unreachable_metrics_endpoint_fails_the_workers_check(
    tmp_path: Path, pki: TestPki
) -> None:
    config = _config(tmp_path, pki)
    config = replace(config, metrics=MetricsConfig(listen=f"unix:{tmp_path}/metrics.sock"))
    state, detail = _checks(check_health(config, load_trust_with_sources, NOW))["workers"]
    assert state == FAIL
    assert detail == f"metrics endpoint cannot read unix:{tmp_path}/metrics.sock: " \
                     "No such file or directory"

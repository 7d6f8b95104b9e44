"""Configuration: strict parsing, errors that name file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smime_milter.config import ConfigError, load_config, parse_config
from smime_milter.model import RevocationMode
from smime_milter.policy import Action

ROOT = Path(__file__).resolve().parents[1]


def test_example_policy_file_is_valid_and_matches_defaults() -> None:
    config = load_config(ROOT / "policy" / "smime-milter.toml")
    defaults = parse_config("")
    assert config.trust == defaults.trust
    assert config.verify == defaults.verify
    assert config.decrypt_keys == ()
    assert config.milter == defaults.milter
    assert config.store == defaults.store
    assert config.policy == defaults.policy
    assert config.jmap == defaults.jmap


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[trust]\nanchors = ["ca.pem"]\nrevocation = "hard"\n'
        "[verify]\nallow_sha1 = true\nmin_rsa_bits = 3072\ncasefold_local_part = true\n"
        '[decrypt]\nkeys = ["/k/bob.pem"]\n'
    )
    config = load_config(path)
    assert config.trust.anchors == (tmp_path / "ca.pem",)
    assert config.verify.revocation is RevocationMode.HARD
    assert config.verify.algorithms.allow_sha1 is True
    assert config.verify.algorithms.min_rsa_bits == 3072
    assert config.verify.casefold_local_part is True
    assert [k.key for k in config.decrypt_keys] == [Path("/k/bob.pem")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[verify]\nallow_sha1 = false\nallow_sha = true\n",
         "c.toml:3: verify.allow_sha: unknown key"),
        ("[verfy]\n", "c.toml:1: verfy: unknown section"),
        ('[trust]\n\nrevocation = "sometimes"\n',
         "c.toml:3: trust.revocation: invalid value 'sometimes'"),
        ('[verify]\nmin_rsa_bits = "2048"\n',
         "c.toml:2: verify.min_rsa_bits: expected int, got str"),
        ("[verify]\nmin_rsa_bits = 64\n", "c.toml:2: verify.min_rsa_bits: must be between"),
        ("[verify]\nallow_sha1 = 1\n", "c.toml:2: verify.allow_sha1: expected bool, got int"),
        ("[trust]\nanchors = [1]\n", "c.toml:2: trust.anchors: expected a list"),
        ("[trust\n", "c.toml: "),
        ('[milter]\nsocket = "tcp:25"\n', "c.toml:2: milter.socket: invalid value 'tcp:25'"),
        ('[milter]\nsocket = "inet:99999@localhost"\n', "c.toml:2: milter.socket: invalid"),
        ('[milter]\nsocket_mode = "rw"\n', "c.toml:2: milter.socket_mode: expected an octal"),
        ('[milter]\nmax_message_size = "big"\n', "c.toml:2: milter.max_message_size: not a size"),
        ("[milter]\nworkers = -1\n", "c.toml:2: milter.workers: must be between 0 and 256"),
        ('[milter]\nlog_level = "loud"\n', "c.toml:2: milter.log_level: invalid value"),
        ('[milter]\nauthserv_id = "a b"\n', "c.toml:2: milter.authserv_id: invalid value"),
        ('[milter]\nuser = ""\n', "c.toml:2: milter.user: must not be empty"),
        ('[store]\nmap_size = "64K"\n', "c.toml:2: store.map_size: must be at least 1M"),
        ('[store]\nmap_size = "2G"\nmax_map_size = "1G"\n',
         "c.toml:3: store.max_map_size: must not be smaller"),
        ('[store]\npathh = "x"\n', "c.toml:2: store.pathh: unknown key"),
        ('[policy]\nfailed = "bounce"\n', "c.toml:2: policy.failed: invalid value 'bounce'"),
        ('[policy]\nerror = "tag"\n', "c.toml:2: policy.error: 'tag' is not possible here"),
        ('[policy]\noversize = "tag"\n', "c.toml:2: policy.oversize: 'tag' is not possible"),
        ('[policy]\nmonitor = "yes"\n', "c.toml:2: policy.monitor: expected bool"),
        ('[policy.domains."a.example"]\nfailed = "accept"\nfaild = "reject"\n',
         'c.toml:3: policy.domains."a.example".faild: unknown key'),
        ('[policy.domains."a.example"]\n\nfailed = "drop"\n',
         'c.toml:3: policy.domains."a.example".failed: invalid value'),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(tmp_path / expected)), str(info.value)


def test_daemon_sections_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[milter]\nsocket = "inet:8891@127.0.0.1"\nsocket_mode = "0600"\n'
        'authserv_id = "mx.example.org"\nmax_message_size = "10M"\nspool_threshold = 4096\n'
        'spool_directory = "spool"\nworkers = 2\nlog_level = "debug"\n'
        '[store]\npath = "st"\nmap_size = "16M"\n'
        '[policy]\nfailed = "quarantine"\nmonitor = true\ntag_subject = "[{status}] "\n'
        '[policy.domains."Strict.Example"]\nfailed = "reject"\nnone = "tag"\n'
    )
    config = load_config(path)
    milter = config.milter
    assert (milter.socket, milter.socket_mode, milter.authserv_id) == (
        "inet:8891@127.0.0.1", 0o600, "mx.example.org")
    assert (milter.max_message_size, milter.spool_threshold, milter.workers) == (
        10 << 20, 4096, 2)
    assert milter.spool_directory == tmp_path / "spool"
    assert config.store.path == tmp_path / "st"
    assert config.store.map_size == 16 << 20
    policy = config.policy
    assert policy.monitor is True and policy.tag_subject == "[{status}] "
    assert policy.actions.failed is Action.QUARANTINE
    strict = dict(policy.domains)["strict.example"]
    # A domain table overrides some outcomes and inherits the rest from [policy].
    assert (strict.failed, strict.none, strict.verified) == (
        Action.REJECT, Action.TAG, Action.ACCEPT)


def test_check_config_command(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config",
         str(ROOT / "policy" / "smime-milter.toml")],
        capture_output=True, text=True, check=False,
    )
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[verify]\nfoo = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "check-config", "--config", str(bad)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"smime-milter: {bad}:2: verify.foo: unknown key"
    assert result.stdout == ""


def test_jmap_and_anchor_directory(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[trust]\nanchor_directory = "mine"\n'
                    '[jmap]\ncache_lifetime = 600\nlisten = "unix:/run/x/jmap.sock"\n'
                    'listen_mode = "0600"\n')
    config = load_config(path)
    assert config.trust.anchor_directory == tmp_path / "mine"
    assert config.trust.all_anchors == config.trust.anchors  # missing: holds none
    (tmp_path / "mine").mkdir()
    assert config.trust.all_anchors == (*config.trust.anchors, tmp_path / "mine")
    assert (config.jmap.cache_lifetime, config.jmap.listen, config.jmap.listen_mode) == (
        600, "unix:/run/x/jmap.sock", 0o600)


@pytest.mark.parametrize(("text", "message"), [
    ("[jmap]\ncache_lifetime = 90000\n", r"c.toml:2: jmap.cache_lifetime: must be between"),
    ("[jmap]\ncache_lifetime = true\n", r"c.toml:2: jmap.cache_lifetime: expected a number"),
    ('[jmap]\nlisten = "inet:80"\n', r"c.toml:2: jmap.listen: invalid value"),
    ('[jmap]\nlisten_mode = "rw"\n', r"c.toml:2: jmap.listen_mode: expected an octal mode"),
    ('[jmap]\nlifetime = 5\n', r"c.toml:2: jmap.lifetime: unknown key"),
    ('[trust]\nanchor_directory = ""\n', r"c.toml:2: trust.anchor_directory: must not be"),
])
def test_jmap_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)

"""Configuration: strict parsing, errors that name file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smime_milter.config import ConfigError, load_config, parse_config
from smime_milter.model import RevocationMode

ROOT = Path(__file__).resolve().parents[1]


def test_example_policy_file_is_valid_and_matches_defaults() -> None:
    config = load_config(ROOT / "policy" / "smime-milter.toml")
    defaults = parse_config("")
    assert config.trust == defaults.trust
    assert config.verify == defaults.verify
    assert config.decrypt_keys == ()


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
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(tmp_path / expected)), str(info.value)


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

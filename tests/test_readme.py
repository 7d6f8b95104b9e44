"""What README.rst tells an admin to paste works as pasted."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.rst"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
_LINE = re.compile(r"^    (postconf -e .+)$", re.MULTILINE)

pytestmark = pytest.mark.process


def _postconf_lines() -> list[list[str]]:
    return [shlex.split(line) for line in _LINE.findall(README.read_text(encoding="utf-8"))]


def test_the_readme_shows_postconf_lines() -> None:
    settings = [args[2].partition("=")[0].strip() for args in _postconf_lines()]
    assert {"smtpd_milters", "non_smtpd_milters", "milter_default_action"} <= set(settings)


@pytest.mark.skipif(not Path(POSTCONF).exists(), reason="Postfix is not installed")
def test_postconf_lines_read_back_exactly(tmp_path: Path) -> None:
    """A trailing comment (``tempfail  # keep it``) would become part of the
    value and make smtpd tempfail every message: each value must read back
    as written."""
    (tmp_path / "main.cf").write_text("")
    for args in _postconf_lines():
        assert args[:2] == ["postconf", "-e"] and len(args) == 3, args
        subprocess.run([POSTCONF, "-c", str(tmp_path), "-e", args[2]], check=True)
        name, _, value = (part.strip() for part in args[2].partition("="))
        shown = subprocess.run([POSTCONF, "-c", str(tmp_path), "-h", name], check=True,
                               capture_output=True, text=True).stdout.strip()
        assert shown == value, (name, shown)
        assert "#" not in shown

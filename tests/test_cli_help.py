"""``--help`` speaks to the admin: what each command does and how to run it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from smime_milter.cli import main as main_module
from smime_milter.cli.main import build_parser, main


def _help(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
              ) -> Iterator[tuple[str, ...]]:
    """Every command and nested command of the real parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, name)
                yield from _commands(sub, (*words, name))


def _top_level_commands() -> list[str]:
    return [words[0] for words in _commands(build_parser()) if len(words) == 1]


def test_the_top_level_help_describes_the_product_and_names_every_command(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    docstring = " ".join((main_module.__doc__ or "").split())
    assert docstring and docstring not in " ".join(text.split())
    assert "argument parsing" not in text
    assert "S/MIME" in text
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
    assert set(_top_level_commands()) <= listed, text
    assert re.search(r"^examples?:\n  smime-milter ", text, re.MULTILINE), text


@pytest.mark.parametrize("words", list(_commands(build_parser())), ids=" ".join)
def test_every_command_says_what_it_does_with_an_example(
        capsys: pytest.CaptureFixture[str], words: tuple[str, ...]) -> None:
    text = _help(capsys, *words)
    usage, _, rest = text.partition("\n\n")
    description = rest.partition("\n\n")[0]
    assert usage.startswith(f"usage: smime-milter {' '.join(words)}")
    # A description of its own, written as sentences, before the options.
    assert not description.startswith(("options:", "positional arguments:")), text
    assert len(description.split()) >= 12 and description.rstrip().endswith("."), text
    example = re.search(r"^examples?:\n((?:  .*\n?)+)", text, re.MULTILINE)
    assert example, text
    for line in example.group(1).splitlines():
        assert re.search(rf"\bsmime-milter {re.escape(' '.join(words))}\b", line), line

"""The man pages scripts/manpages generates: clean roff, reproducible, and
complete against what they describe (every command of the parser, every key
of the configuration loader), so a new option or key cannot go undocumented."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from smime_milter.cli.main import build_parser
from smime_milter.config.reader import parse_config
from smime_milter.settings import ConfigError, Problems, Reader

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "manpages"
SAMPLE = ROOT / "policy" / "smime-milter.toml"


def _generator() -> ModuleType:
    """The script as a module (it has no .py suffix, so load it by path)."""
    loader = importlib.machinery.SourceFileLoader("smime_milter_manpages", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


manpages = _generator()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    outdir = tmp_path_factory.mktemp("man")
    return {path.name: path.read_text("utf-8") for path in manpages.write_pages(outdir)}


def _groff(page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    groff = shutil.which("groff")
    assert groff, "groff is missing: apt-get install groff-base (scripts/bootstrap --test does)"
    return subprocess.run([groff, "-man", "-ww", *options, str(page)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.process
def test_the_build_command_writes_both_pages_without_roff_warnings(tmp_path: Path) -> None:
    """Run as the package build runs it; ``groff -ww`` reports every warning
    (bad escapes, unknown macros, lines that start with a control character)."""
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smime-milter.8",
                                                          "smime-milter.toml.5"]
    for page in tmp_path.iterdir():
        checked = _groff(page, "-z")
        assert checked.returncode == 0 and checked.stderr == "", (page.name, checked.stderr)


def test_the_pages_are_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same tree, same bytes: no date from the clock; SOURCE_DATE_EPOCH gives one."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = [p.read_bytes() for p in manpages.write_pages(tmp_path / "a")]
    second = [p.read_bytes() for p in manpages.write_pages(tmp_path / "b")]
    assert first == second
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    dated = manpages.write_pages(tmp_path / "c")[0].read_text("utf-8")
    assert '.TH "smime\\-milter" "8" "2026-01-01" "smime\\-milter 0.1.0"' in dated


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (nested) subcommand, walked independently of the generator."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, name), sub
                yield from _commands(sub, (*words, name))


def _sections(page: str, macro: str) -> dict[str, str]:
    """Section title (roff escapes undone) -> its text up to the next one."""
    found: dict[str, str] = {}
    parts = re.split(rf"^\{macro}(?: (.*))?\n", page, flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        if title is None:  # the title is the next line
            title, _, body = body.partition("\n")
        found[title.strip('"').replace("\\-", "-").replace("\\(dq", '"')] = body
    return found


def test_every_command_and_option_is_in_the_daemon_page(pages: dict[str, str]) -> None:
    page = pages["smime-milter.8"]
    commands = _sections(page, ".SS")
    walked = list(_commands(build_parser()))
    assert {"trust add", "trust remove", "trust list", "check-config"} <= {
        " ".join(words) for words, _ in walked}
    for words, sub in walked:
        title = " ".join(("smime-milter", *words))
        assert title in commands, title
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # -h/--help is described once, under OPTIONS
            if action.option_strings and action.help is not argparse.SUPPRESS:
                for option in action.option_strings:
                    escaped = option.replace("-", "\\-")
                    assert f"\\fB{escaped}\\fR" in commands[title], (title, option)
            if action.help not in (None, argparse.SUPPRESS) and "%" not in action.help:
                assert action.help.replace("-", "\\-")[1:] in commands[title], (title, action)


def _uncommented(sample: Any, text: str) -> str:
    """The sample with every commented-out ``# key = value`` and ``# [table]``
    made real, except a commented alternative of a key the table already sets
    (TOML forbids a key twice)."""
    lines = text.splitlines()
    for section in sample.sections:
        real = {key.name for key in section.keys if not key.commented}
        numbers = [key.line for key in section.keys if key.commented and key.name not in real]
        if section.commented:
            numbers.append(section.line)
        for number in numbers:
            lines[number - 1] = re.sub(r"^\s*# ?", "", lines[number - 1])
    return "\n".join(lines) + "\n"


class _Asked(dict[str, Any]):
    """A Reader's table that notes every key the reader looks up."""

    def __init__(self, data: dict[str, Any], note: Callable[[str], None]) -> None:
        super().__init__(data)
        self._note = note

    def __contains__(self, key: object) -> bool:
        self._note(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._note(key)
        return super().get(key, default)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        self._note(key)
        return super().pop(key, *default)


def _accepted(text: str, path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> tuple[set[tuple[str, str]], list[str]]:
    """(table, key) for every key the real loader asks for while parsing ``text``.

    Every section parser reads its table through ``settings.Reader``, which
    looks each known key up (present or not: ``take``/``number``/``size``
    test or pop it with a default) and calls whatever is left unknown. So
    recording the lookups of every Reader yields the keys the loader
    accepts, from the loader itself, with no hand-kept list: a key added to
    a parser but not to the sample shows up here. Tables read only when
    present (``[policy.domains."x"]``, ``[[release.rules]]``,
    ``[advanced.accounts]``, ``[[advanced.auto]]``) are covered because the
    uncommented sample has one of each. Returns the keys and the problems
    the loader reported (it reports them all, so every key is still asked)."""
    asked: set[tuple[str, str]] = set()
    original = Reader.__init__

    def recording(self: Reader, problems: Problems, path: Path | None, text: str, table: str,
                  data: Any, occurrence: int | None = None) -> None:
        original(self, problems, path, text, table, data, occurrence)
        self.data = _Asked(self.data, lambda key: asked.add((table, key)))

    monkeypatch.setattr(Reader, "__init__", recording)
    try:
        parse_config(text, path)
    except ConfigError as exc:
        return asked, list(exc.problems)
    return asked, []


def _parts(name: str) -> list[str]:
    """A dotted TOML table name split into its parts (quoted parts kept whole)."""
    return re.findall(r'"[^"]*"|[^.]+', name)


def _mentions(section: Any) -> set[str]:
    """Words of a table's comments: an example table (``# [[release.rules]]``)
    cannot set every key in its example at once (``all = true`` excludes the
    other selectors), so there a key may be documented by name in the prose."""
    lines = [*section.doc, *(line for entry in section.entries for line in entry.doc),
             *(key.note for key in section.keys)]
    return set(re.findall(r"\w+", " ".join(lines)))


def _documented(sample: Any, tables: set[str], asked: set[tuple[str, str]]
                ) -> set[tuple[str, str]]:
    """(table, key) for the sample's keys; (parent, name) for each sub-table
    whose parent is read by a Reader (the parent reads it as a key: ``[policy]
    domains``); and in an example table, the asked keys its comments name."""
    found = {(section.name, key.name) for section in sample.sections for key in section.keys}
    for section in sample.sections:
        parts = _parts(section.name)
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in tables:
                found.add((parent, parts[i]))
        if section.commented:
            words = _mentions(section)
            found |= {(table, key) for table, key in asked
                      if table == section.name and key in words}
    return found


def test_the_sample_documents_exactly_the_keys_the_loader_accepts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both directions: the fully uncommented sample loads without an error
    (every documented key is accepted, every example value is valid; only a
    file an example names, which the admin provides, may be missing here),
    and every key the loader asks for is in the sample."""
    text = SAMPLE.read_text("utf-8")
    sample = manpages.parse_sample(text)
    path = tmp_path / "smime-milter.toml"
    path.write_text(_uncommented(sample, text))
    asked, problems = _accepted(path.read_text(), path, monkeypatch)
    assert [p for p in problems if ": no such file: " not in p] == []
    tables = {table for table, _ in asked}
    assert tables == {section.name for section in sample.sections}
    assert asked == _documented(sample, tables, asked)


def test_the_config_page_shows_every_accepted_key_in_its_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pages: dict[str, str]) -> None:
    text = SAMPLE.read_text("utf-8")
    sample = manpages.parse_sample(text)
    asked, _ = _accepted(_uncommented(sample, text), tmp_path / "x.toml", monkeypatch)
    shown = {re.sub(r"^\[+|\]+( \(example\))?$", "", title): body
             for title, body in _sections(pages["smime-milter.toml.5"], ".SS").items()}
    for table, key in asked:
        if f"{table}.{key}" in shown or any(t.startswith(f"{table}.{key}.") for t in shown):
            continue  # a sub-table: it has a section of its own
        assert table in shown, table
        entry = re.search(rf"^(\\&)?\\fB{re.escape(key)}\\fR = ", shown[table], re.MULTILINE)
        example = f"[{table}] (example)" in pages["smime-milter.toml.5"] or (
            f"[[{table}]] (example)" in pages["smime-milter.toml.5"])
        named = example and re.search(rf"\b{re.escape(key)}\b", shown[table])
        assert entry or named, (table, key)


def test_the_sample_parser_follows_the_file(tmp_path: Path) -> None:
    """Whatever the sample says: a new key with its comment, a commented-out
    key, an inline note, a stand-alone paragraph and an example table."""
    sample = manpages.parse_sample(
        "# Preamble.\n\n[trust]\n# Use the system store.\n# Second line.\nsystem_anchors = true\n"
        "# nss_module = \"/usr/lib/libnssckbi.so\"  # optional\n\n# Alone.\n\n"
        "# Rules.\n# [[x.rules]]\n# name = \"a\"\n")
    assert sample.preamble == ["Preamble.", ""]
    trust, rules = sample.sections
    first, alone = trust.entries
    assert first.doc == ["Use the system store.", "Second line."]
    assert [(k.name, k.value, k.commented, k.note) for k in first.keys] == [
        ("system_anchors", "true", False, ""),
        ("nss_module", '"/usr/lib/libnssckbi.so"', True, "optional")]
    assert alone.doc == ["Alone."] and not alone.keys
    assert (rules.name, rules.array, rules.commented, rules.doc) == ("x.rules", True, True,
                                                                     ["Rules."])


@pytest.mark.process
def test_roff_specials_in_the_sample_are_escaped(tmp_path: Path) -> None:
    """A comment line starting with '.' or "'" must not become a request; a
    backslash must print as one; option names keep an ASCII hyphen."""
    sample = manpages.parse_sample(
        "[milter]\n# .so /etc/passwd\n# 'br\n# C:\\path and `--flag`\nkey = \"a\\\\b\"\n")
    page = tmp_path / "x.5"
    page.write_text(manpages.config_page(sample, ""))
    assert _groff(page, "-z").stderr == ""
    rendered = _groff(page, "-Tascii", "-P-cbou").stdout
    text = " ".join(rendered.split())
    for expected in (".so /etc/passwd 'br C:\\path and --flag", 'key = "a\\\\b"'):
        assert expected in text, text


def test_every_command_shows_its_description_and_examples(pages: dict[str, str]) -> None:
    """What a command's --help tells the admin is in its section of the page
    too: the description's words and each example line as typed."""
    commands = _sections(pages["smime-milter.8"], ".SS")
    for words, sub in _commands(build_parser()):
        body = commands[" ".join(("smime-milter", *words))]
        assert sub.description and sub.epilog, words
        flowing = " ".join(body.split())
        for paragraph in sub.description.split("\n\n"):
            assert " ".join(paragraph.split()).replace("-", "\\-") in flowing, (words, paragraph)
        for line in sub.epilog.splitlines()[1:]:
            assert f"\n{line.strip().replace('-', chr(92) + '-')}\n" in body, (words, line)

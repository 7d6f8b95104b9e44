"""The package structure is the architecture: these tests fail when it rots.

``.importlinter`` (run by ``scripts/test``) holds the one-way layer rule
between packages; this module checks what a layers contract cannot see:
import cycles between modules, and that packages use each other's public
faces (``__init__`` with ``__all__``) rather than their insides.
"""

from __future__ import annotations

import configparser
import importlib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "smime_milter"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_import_cycles(graph: grimp.ImportGraph) -> None:
    """A cycle hidden by a late import (``advanced`` <-> ``wiring`` once) is
    still a cycle: grimp sees imports inside functions too."""
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    fake = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        fake.add_module(name)
    fake.add_import(importer="p.a", imported="p.b")
    fake.add_import(importer="p.b", imported="p.a")
    fake.add_import(importer="p.c", imported="p.a")
    assert _cycles(fake) == [["p.a", "p.b"]]


def _layers() -> list[list[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    text = parser["importlinter:contract:layers"]["layers"]
    return [[name.strip() for name in line.split("|")]
            for line in text.strip().splitlines() if line.strip()]


def test_every_package_is_in_a_layer() -> None:
    """A new top-level package or module must be placed in the layer
    contract, or the contract silently does not cover it."""
    placed = {name for layer in _layers() for name in layer}
    source = ROOT / "milter" / PACKAGE
    present = {f"{PACKAGE}.{path.stem if path.is_file() else path.name}"
               for path in source.iterdir()
               if (path.is_dir() and (path / "__init__.py").exists())
               or (path.suffix == ".py" and path.stem != "__init__")}
    assert present == placed


def test_the_layer_contract_is_kept(graph: grimp.ImportGraph) -> None:
    """The same check as ``lint-imports``, so a plain pytest run sees it too."""
    illegal = graph.find_illegal_dependencies_for_layers(
        layers=[set(layer) if len(layer) > 1 else layer[0] for layer in _layers()],
    )
    assert not illegal, sorted((d.importer, d.imported) for d in illegal)


def _packages() -> list[str]:
    source = ROOT / "milter" / PACKAGE
    return sorted(f"{PACKAGE}.{path.name}" for path in source.iterdir()
                  if path.is_dir() and (path / "__init__.py").exists())


@pytest.mark.parametrize("package", _packages())
def test_each_package_has_a_public_face(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported, f"{package}/__init__.py declares no __all__"
    for name in exported:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"


def test_packages_import_each_other_only_through_their_faces(
        graph: grimp.ImportGraph) -> None:
    """``smime_milter.trust`` may be imported from ``smime_milter.verify``;
    ``smime_milter.trust.chain`` only from inside ``smime_milter.trust``. A
    face may offer a module as a namespace (``mail.mime``) by naming it in
    its ``__all__``."""
    packages = set(_packages())
    faces = {package: set(importlib.import_module(package).__all__) for package in packages}
    reaching_in = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            owner = next((p for p in packages if imported.startswith(p + ".")), None)
            if owner is None or importer == owner or importer.startswith(owner + "."):
                continue
            if imported.count(".") == owner.count(".") + 1 and \
                    imported.rpartition(".")[2] in faces[owner]:
                continue
            reaching_in.append(f"{importer} -> {imported}")
    assert reaching_in == []

"""The process tree as /proc shows it, for tests that check which processes
the daemon runs (supervisor, milter processes) and as whom."""

from __future__ import annotations

from pathlib import Path


def parents() -> dict[int, int]:
    """Every process's parent pid."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        found[int(entry.name)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    return found


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    return {child for child, parent in parents().items() if parent == pid}


def descendants(top: int) -> set[int]:
    """The processes whose parent chain leads to ``top`` (``top`` included)."""
    tree = parents()
    found = {top}
    while True:
        more = {pid for pid, parent in tree.items() if parent in found} - found
        if not more:
            return found
        found |= more

"""Noticing edited trust files: one fingerprint of every anchor, intermediate
and CRL file, compared by the milter daemon and the JMAP service alike."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from smime_milter.trust.settings import TrustConfig

#: ``(path, mtime_ns, size)`` of every trust file: what the daemon and the
#: JMAP service compare to notice an edited anchor, intermediate or CRL file.
TrustFiles = tuple[tuple[str, int, int], ...]


def _entries(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(path, mtime_ns, size)`` of ``path`` or of the files in it; a
    missing path counts too (it may appear later)."""
    try:
        info = path.stat()
    except OSError:
        yield (str(path), -1, -1)
        return
    if not stat.S_ISDIR(info.st_mode):
        yield (str(path), info.st_mtime_ns, info.st_size)
        return
    # The directory itself: a file removed or renamed changes its mtime.
    yield (str(path), info.st_mtime_ns, -2)
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return
    for name in names:
        child = path / name
        try:
            child_info = child.stat()
        except OSError:
            continue
        yield (str(child), child_info.st_mtime_ns, child_info.st_size)


def trust_files(trust: TrustConfig) -> TrustFiles:
    """What changes when any anchor, intermediate or CRL file does."""
    paths: Iterable[Path] = (*trust.anchors, trust.anchor_directory, *trust.intermediates,
                             *trust.crls)
    return tuple(entry for path in paths for entry in _entries(Path(path)))

"""Noticing edited trust files: one fingerprint of every anchor, intermediate
and CRL file, and of NSS's built-in root module when the system anchors come
from it (a libnss3 update brings Mozilla's changes), compared by the milter
daemon and the JMAP service alike."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from smime_milter.trust.settings import TrustConfig
from smime_milter.trust.system import SystemAnchorsError, find_nss_module

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


def _nss_module(trust: TrustConfig) -> tuple[Path, ...]:
    """The NSS module the system anchors come from, if any (one not found yet
    is not watched: installing libnss3 is followed by a reload or restart)."""
    if trust.system_anchors == "none":
        return ()
    if trust.nss_module is not None:
        return (trust.nss_module,)
    try:
        return (find_nss_module(),)
    except SystemAnchorsError:
        return ()


def trust_files(trust: TrustConfig) -> TrustFiles:
    """What changes when any anchor, intermediate or CRL file, or the NSS
    built-in root module, does."""
    paths: Iterable[Path] = (*trust.anchors, trust.anchor_directory, *trust.intermediates,
                             *trust.crls, *_nss_module(trust))
    return tuple(entry for path in paths for entry in _entries(Path(path)))

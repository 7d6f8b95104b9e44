"""The ``[trust]`` settings: where anchors, intermediates and CRLs come from.

The trust package owns them so that anchor management (``trust/anchors.py``)
needs nothing from the configuration reader above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smime_milter.trust.chain import SYSTEM_ANCHORS

#: Trust anchors managed by ``smime-milter trust add|remove``.
DEFAULT_ANCHOR_DIRECTORY = Path("/etc/smime-milter/anchors")

@dataclass(frozen=True, slots=True)
class TrustConfig:
    """``[trust]``: anchor, intermediate and CRL files or directories."""

    anchors: tuple[Path, ...] = (SYSTEM_ANCHORS,)
    intermediates: tuple[Path, ...] = ()
    crls: tuple[Path, ...] = ()
    #: Anchors added with ``smime-milter trust add`` (trusted in addition to
    #: ``anchors``; a missing directory holds none).
    anchor_directory: Path = DEFAULT_ANCHOR_DIRECTORY

    @property
    def all_anchors(self) -> tuple[Path, ...]:
        """Every anchor source: the configured ones and the managed directory."""
        if self.anchor_directory.is_dir():
            return (*self.anchors, self.anchor_directory)
        return self.anchors



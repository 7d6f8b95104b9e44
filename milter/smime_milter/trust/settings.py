"""The ``[trust]`` settings: where anchors, intermediates and CRLs come from.

The trust package owns them, and the parser of the ``[trust]`` section, so
that anchor management (``trust/anchors.py``) needs nothing from the
configuration reader above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smime_milter.model import RevocationMode
from smime_milter.settings import Problems, Reader
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


def read_trust_section(problems: Problems, path: Path | None, text: str,
                       data: Mapping[str, Any]) -> tuple[TrustConfig, RevocationMode]:
    """``[trust]``; its ``revocation`` key is returned apart, as the verifier
    applies it. Problems go to ``problems``."""
    reader = Reader(problems, path, text, "trust", data)
    defaults = TrustConfig()
    config = TrustConfig(
        anchors=reader.paths("anchors", defaults.anchors),
        intermediates=reader.paths("intermediates", ()),
        crls=reader.paths("crls", ()),
        anchor_directory=reader.optional_path("anchor_directory") or defaults.anchor_directory,
    )
    revocation = reader.choice("revocation", RevocationMode, RevocationMode.SOFT)
    reader.finish()
    return config, revocation

"""The ``[trust]`` settings: where anchors, intermediates and CRLs come from.

The default anchors are the roots Mozilla's root program trusts for e-mail
(``system_anchors = "mozilla-email"``, read from NSS's built-in root module,
see trust/system.py), never the TLS bundle; ``anchors`` adds files or
directories of the admin's own, and ``anchor_directory`` holds those of
``smime-milter trust add``.

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
from smime_milter.settings import Problems, Reader, one_of

#: Trust anchors managed by ``smime-milter trust add|remove``.
DEFAULT_ANCHOR_DIRECTORY = Path("/etc/smime-milter/anchors")
#: ``system_anchors`` values: Mozilla's e-mail roots, or no system anchors at all.
SYSTEM_ANCHOR_CHOICES = ("mozilla-email", "none")


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """``[trust]``: anchor, intermediate and CRL files or directories."""

    #: Anchor files or directories of the admin's own, trusted in addition
    #: to the system anchors.
    anchors: tuple[Path, ...] = ()
    intermediates: tuple[Path, ...] = ()
    crls: tuple[Path, ...] = ()
    #: Anchors added with ``smime-milter trust add`` (trusted in addition to
    #: ``anchors``; a missing directory holds none).
    anchor_directory: Path = DEFAULT_ANCHOR_DIRECTORY
    #: Where the system anchors come from: ``"mozilla-email"`` (the roots
    #: Mozilla trusts for e-mail, from NSS's built-in root module) or ``"none"``.
    system_anchors: str = "mozilla-email"
    #: The NSS built-in root module (libnssckbi.so); None: searched for.
    nss_module: Path | None = None

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
        anchors=reader.paths("anchors", defaults.anchors, must_exist=True),
        intermediates=reader.paths("intermediates", (), must_exist=True),
        crls=reader.paths("crls", (), must_exist=True),
        anchor_directory=reader.optional_path("anchor_directory") or defaults.anchor_directory,
        system_anchors=reader.choice("system_anchors", one_of(SYSTEM_ANCHOR_CHOICES),
                                     defaults.system_anchors),
        nss_module=reader.optional_path("nss_module", must_exist=True),
    )
    revocation = reader.choice("revocation", RevocationMode, RevocationMode.SOFT)
    reader.finish()
    return config, revocation

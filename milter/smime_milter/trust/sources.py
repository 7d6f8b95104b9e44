"""Building the trust store from every anchor source of ``[trust]``, and
saying how many anchors came from where.

Three sources: the system anchors (``system_anchors``, Mozilla's e-mail
roots by default), the admin's ``anchors`` files and the managed
``anchor_directory``. They are read at every (re)load, so an updated libnss3
takes effect like an edited anchor file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smime_milter.trust.chain import (
    TrustStore,
    load_certificates,
    load_crls,
    merge_certificates,
    parse_certificates,
)
from smime_milter.trust.settings import TrustConfig
from smime_milter.trust.system import SystemAnchors, load_system_anchors


@dataclass(frozen=True, slots=True)
class AnchorSources:
    """How many distinct anchors each source gave (one anchor may come from several)."""

    #: None: ``system_anchors = "none"``.
    system: SystemAnchors | None
    managed: int
    managed_directory: Path
    configured: int
    #: Distinct anchors in all (the start-up line's count).
    total: int = 0

    def describe(self) -> str:
        """The start-up and reload log line (after ``trust anchors: ``)."""
        system = (self.system.describe() if self.system is not None
                  else 'none from the system ([trust] system_anchors = "none")')
        return (f"{system}, {self.managed} managed ({self.managed_directory}), "
                f"{self.configured} from [trust] anchors")


@dataclass(frozen=True, slots=True)
class LoadedTrust:
    """A trust store and where its anchors came from."""

    store: TrustStore
    sources: AnchorSources


def read_system_anchors(trust: TrustConfig) -> SystemAnchors | None:
    """The system anchors ``trust`` asks for; None for ``system_anchors = "none"``."""
    if trust.system_anchors == "none":
        return None
    return load_system_anchors(trust.nss_module)


def load_trust_store(trust: TrustConfig) -> LoadedTrust:
    """Every anchor source of ``trust``, its intermediates and CRLs."""
    system = read_system_anchors(trust)
    system_certs = (parse_certificates(system.certificates, str(system.source))
                    if system is not None else ())
    configured = load_certificates(trust.anchors)
    directory = trust.anchor_directory
    managed = load_certificates([directory]) if directory.is_dir() else ()
    store = TrustStore(
        merge_certificates(system_certs, configured, managed),
        load_certificates(trust.intermediates),
        load_crls(trust.crls),
    )
    return LoadedTrust(store, AnchorSources(system, len(managed), directory, len(configured),
                                            total=len(store.anchors)))

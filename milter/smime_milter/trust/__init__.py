"""Trust: anchors (Mozilla's e-mail roots, the admin's, the managed ones) and
their management, certification path validation, the trust-file watcher."""

from __future__ import annotations

from smime_milter.trust.anchors import AnchorEntry, add_anchors, list_anchors, remove_anchors
from smime_milter.trust.chain import (
    ChainValidator,
    CrlValidity,
    TrustStore,
    TrustStoreError,
    crl_validity,
    load_certificates,
)
from smime_milter.trust.settings import TrustConfig, read_trust_section
from smime_milter.trust.sources import (
    AnchorSources,
    LoadedTrust,
    load_trust_store,
    read_system_anchors,
)
from smime_milter.trust.system import (
    NssModuleNotFound,
    NssModuleUnusable,
    SystemAnchors,
    SystemAnchorsError,
    find_nss_module,
    load_system_anchors,
)
from smime_milter.trust.watch import trust_files

__all__ = [
    "AnchorEntry", "AnchorSources", "ChainValidator", "CrlValidity", "LoadedTrust",
    "NssModuleNotFound", "NssModuleUnusable", "SystemAnchors", "SystemAnchorsError",
    "TrustConfig", "TrustStore", "TrustStoreError", "add_anchors", "crl_validity",
    "find_nss_module", "list_anchors", "load_certificates", "load_system_anchors",
    "load_trust_store", "read_system_anchors", "read_trust_section", "remove_anchors",
    "trust_files"
]

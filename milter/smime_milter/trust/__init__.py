"""Trust: anchors and their management, certification path validation, the trust-file watcher."""

from __future__ import annotations

from smime_milter.trust.anchors import AnchorEntry, add_anchors, list_anchors, remove_anchors
from smime_milter.trust.chain import ChainValidator, TrustStore, TrustStoreError, load_certificates
from smime_milter.trust.settings import TrustConfig, read_trust_section
from smime_milter.trust.watch import trust_files

__all__ = [
    "AnchorEntry", "ChainValidator", "TrustConfig", "TrustStore", "TrustStoreError",
    "add_anchors", "list_anchors", "load_certificates", "read_trust_section", "remove_anchors",
    "trust_files"
]

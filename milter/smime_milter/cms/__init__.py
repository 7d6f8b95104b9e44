"""CMS and X.509 bytes: DER, certificates, SignedData, signing, EnvelopedData,
encryption, key and certificate files."""

from __future__ import annotations

from smime_milter.cms import files
from smime_milter.cms.certs import cert_info, cert_info_of, signer_emails
from smime_milter.cms.der import read
from smime_milter.cms.encrypt import EncryptionError, EncryptionRecipient, enveloped_data
from smime_milter.cms.envelope import (
    DecryptionKey,
    DecryptionKeyError,
    decrypt,
    load_decryption_key,
)
from smime_milter.cms.fast import (
    RawSignedData,
    RawSignerInfo,
    check_raw_signature,
    parse_signed_data_fast,
)
from smime_milter.cms.files import certificate_der
from smime_milter.cms.signed_data import (
    OID_DATA,
    AlgorithmPolicy,
    CmsError,
    Content,
    ContentChunks,
    SignatureCheck,
    SignedData,
    check_signature,
    countersignatures,
    parse_signed_data,
    signature_octets,
    signed_attributes_der,
    smime_capabilities,
)
from smime_milter.cms.signing import (
    PrivateKey,
    SigningError,
    SigningIdentity,
    amend_signed_data,
    build_signer_info,
    countersignature,
    detached_signed_data,
    encapsulated_signed_data,
    signing_key,
    with_countersignature,
)

__all__ = [
    "OID_DATA",
    "AlgorithmPolicy",
    "CmsError",
    "Content",
    "ContentChunks",
    "DecryptionKey",
    "DecryptionKeyError",
    "EncryptionError",
    "EncryptionRecipient",
    "PrivateKey",
    "RawSignedData",
    "RawSignerInfo",
    "SignatureCheck",
    "SignedData",
    "SigningError",
    "SigningIdentity",
    "amend_signed_data",
    "build_signer_info",
    "cert_info",
    "cert_info_of",
    "certificate_der",
    "check_raw_signature",
    "check_signature",
    "countersignature",
    "countersignatures",
    "decrypt",
    "detached_signed_data",
    "encapsulated_signed_data",
    "enveloped_data",
    "files",
    "load_decryption_key",
    "parse_signed_data",
    "parse_signed_data_fast",
    "read",
    "signature_octets",
    "signed_attributes_der",
    "signer_emails",
    "signing_key",
    "smime_capabilities",
    "with_countersignature"
]

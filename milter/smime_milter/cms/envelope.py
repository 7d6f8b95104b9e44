"""Decrypt CMS EnvelopedData (RFC 5652 §6) and AuthEnvelopedData (RFC 5083).

The verifier needs to look inside ``application/pkcs7-mime;
smime-type=enveloped-data`` when the administrator configured the recipient's
key, so that a signed inner layer can be evaluated. ``cryptography`` has no
general CMS decryption API, so the structure is parsed with ``asn1crypto`` and
only the primitives come from ``cryptography``.

Supported:

* key transport (KeyTransRecipientInfo): RSA PKCS#1 v1.5 and RSA-OAEP
  (RFC 8017 / RFC 4055 parameters, including a pSpecified label);
* key agreement (KeyAgreeRecipientInfo): ephemeral-static ECDH,
  dhSinglePass-stdDH-sha*kdf-scheme (RFC 5753) with the ANSI X9.63 KDF and
  AES key wrap (RFC 3394);
* content encryption: AES-CBC, DES-EDE3-CBC; in AuthEnvelopedData AES-GCM
  and AES-CCM (RFC 5084).

Mail is attacker-controlled input, so :func:`decrypt` never raises and its work
is bounded. Every cryptographic failure is reported with the same message, and
a failed PKCS#1 v1.5 key transport continues with a random key (RFC 3218 §2.3.2)
so it cannot be told apart from a bad content padding: no padding oracle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from asn1crypto import cms, core
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

from smime_milter.cms.der import encode as der_encode
from smime_milter.cms.recipient_keys import (
    DecryptionKey,
    DecryptionKeyError,
    load_decryption_key,
)

__all__ = [
    "MAX_RECIPIENT_INFOS",
    "DecryptResult",
    "DecryptionKey",
    "DecryptionKeyError",
    "decrypt",
    "ecc_cms_shared_info",
    "load_decryption_key",
]

#: More RecipientInfos (or recipientEncryptedKeys) than this and we refuse to work.
MAX_RECIPIENT_INFOS = 64

_DECRYPTION_FAILED = "decryption failed"

_OID_ENVELOPED = "1.2.840.113549.1.7.3"
_OID_AUTH_ENVELOPED = "1.2.840.113549.1.9.16.1.23"
_OID_RSA_PKCS1V15 = "1.2.840.113549.1.1.1"
_OID_RSA_OAEP = "1.2.840.113549.1.1.7"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_P_SPECIFIED = "1.2.840.113549.1.1.9"

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1.3.14.3.2.26": hashes.SHA1,
    "2.16.840.1.101.3.4.2.4": hashes.SHA224,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}

# RFC 5753 §7.1.4 dhSinglePass-stdDH-*kdf-scheme -> KDF hash.
_ECDH_KDF_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1.3.133.16.840.63.0.2": hashes.SHA1,
    "1.3.132.1.11.0": hashes.SHA224,
    "1.3.132.1.11.1": hashes.SHA256,
    "1.3.132.1.11.2": hashes.SHA384,
    "1.3.132.1.11.3": hashes.SHA512,
}

# RFC 3394 AES key wrap -> KEK length in bytes.
_AES_WRAP_KEY_LEN = {
    "2.16.840.1.101.3.4.1.5": 16,
    "2.16.840.1.101.3.4.1.25": 24,
    "2.16.840.1.101.3.4.1.45": 32,
}

_CbcAlgorithm: TypeAlias = type[algorithms.AES] | type[TripleDES]

_CBC_CIPHERS: dict[str, tuple[_CbcAlgorithm, int]] = {
    "2.16.840.1.101.3.4.1.2": (algorithms.AES, 16),  # aes128-CBC
    "2.16.840.1.101.3.4.1.22": (algorithms.AES, 24),  # aes192-CBC
    "2.16.840.1.101.3.4.1.42": (algorithms.AES, 32),  # aes256-CBC
    "1.2.840.113549.3.7": (TripleDES, 24),  # des-ede3-cbc
}

_GCM_KEY_LEN = {
    "2.16.840.1.101.3.4.1.6": 16,
    "2.16.840.1.101.3.4.1.26": 24,
    "2.16.840.1.101.3.4.1.46": 32,
}

_CCM_KEY_LEN = {
    "2.16.840.1.101.3.4.1.7": 16,
    "2.16.840.1.101.3.4.1.27": 24,
    "2.16.840.1.101.3.4.1.47": 32,
}


class _GcmParameters(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 5084 §3.2 (asn1crypto knows the OIDs but not this structure)."""

    _fields = [  # noqa: RUF012 - asn1crypto API
        ("nonce", core.OctetString),
        ("icv_len", core.Integer, {"default": 12}),
    ]


class _CcmParameters(core.Sequence):  # type: ignore[misc]
    """RFC 5084 §3.1, with the DEFAULT 12 that asn1crypto's CcmParams lacks."""

    _fields = [  # noqa: RUF012 - asn1crypto API
        ("nonce", core.OctetString),
        ("icv_len", core.Integer, {"default": 12}),
    ]


# ------------------------------------------------------------------ decrypt


@dataclass(frozen=True)
class DecryptResult:
    """Outcome of :func:`decrypt`; ``addressed_to_us`` lets the caller tell
    "not for us" (leave it alone) from "for us but broken" (worth a log line)."""

    content: bytes | None
    error: str | None
    addressed_to_us: bool


class _Fail(Exception):
    """Stop with a specific message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _State:
    addressed_to_us: bool = False


@dataclass(frozen=True)
class _ContentCipher:
    key_len: int
    decrypt: Callable[[bytes], bytes]  # CEK -> plaintext; raises _Fail on any failure


def decrypt(der: bytes, keys: Sequence[DecryptionKey]) -> DecryptResult:
    """Open a DER/BER ContentInfo holding (Auth)EnvelopedData with one of ``keys``.

    Never raises: every problem, including malformed input, becomes a
    ``DecryptResult`` with ``content=None`` and a short ``error``.
    """
    state = _State()
    try:
        content = _decrypt(bytes(der), tuple(keys), state)
    except _Fail as exc:
        # Messages may quote attacker-chosen OIDs: keep them log-sized.
        message = exc.message if len(exc.message) <= 120 else exc.message[:117] + "..."
        return DecryptResult(None, message, state.addressed_to_us)
    except Exception:  # hostile input may trip anything in the parser
        return DecryptResult(None, "malformed CMS structure", state.addressed_to_us)
    return DecryptResult(content, None, True)


def _present(value: object) -> bool:
    return value is not None and not isinstance(value, core.Void)


def _decrypt(der: bytes, keys: tuple[DecryptionKey, ...], state: _State) -> bytes:
    try:
        info = cms.ContentInfo.load(der)
        content_type = info["content_type"].dotted
    except Exception as exc:
        raise _Fail("not a CMS ContentInfo") from exc
    if content_type == _OID_ENVELOPED:
        authenticated = False
    elif content_type == _OID_AUTH_ENVELOPED:
        authenticated = True
    else:
        raise _Fail(f"not an EnvelopedData (content type {info['content_type'].native})")
    try:
        env = info["content"]
        recipient_infos = env["recipient_infos"]
        count = len(recipient_infos)
    except Exception as exc:
        raise _Fail("malformed EnvelopedData") from exc
    if count > MAX_RECIPIENT_INFOS:
        raise _Fail(f"too many RecipientInfos ({count} > {MAX_RECIPIENT_INFOS})")

    matches = _match_recipients(recipient_infos, keys)
    if not matches:
        raise _Fail("no RecipientInfo for a configured key")
    state.addressed_to_us = True

    eci = env["auth_encrypted_content_info" if authenticated else "encrypted_content_info"]
    ciphertext = eci["encrypted_content"]
    if not _present(ciphertext):
        raise _Fail("encrypted content is absent (detached)")
    cipher = _content_cipher(env, eci, ciphertext.native or b"", authenticated)

    errors: list[str] = []
    tried = False
    for match in matches:
        try:
            cek = match(cipher.key_len)
        except _Fail as exc:
            errors.append(exc.message)
            continue
        except Exception:  # malformed fields in this RecipientInfo; try the others
            errors.append("malformed RecipientInfo")
            continue
        tried = True
        try:
            return cipher.decrypt(cek)
        except _Fail as exc:
            errors.append(exc.message)
    if tried or not errors:
        raise _Fail(_DECRYPTION_FAILED)
    raise _Fail(errors[0])


# A matched recipient: called with the expected CEK length, returns the CEK.
_Unwrapper = Callable[[int], bytes]


def _match_recipients(
    recipient_infos: cms.RecipientInfos, keys: tuple[DecryptionKey, ...]
) -> list[_Unwrapper]:
    matches: list[_Unwrapper] = []
    encrypted_keys_seen = 0
    for ri in recipient_infos:
        try:
            name = ri.name
            if name == "kari":
                encrypted_keys_seen += len(ri.chosen["recipient_encrypted_keys"])
                if encrypted_keys_seen > MAX_RECIPIENT_INFOS:
                    raise _Fail(f"too many recipientEncryptedKeys (> {MAX_RECIPIENT_INFOS})")
            matches.extend(_match_one(ri, keys))
        except _Fail:
            raise
        except Exception:  # a malformed RecipientInfo cannot be ours; look at the rest
            continue
    return matches


def _match_one(ri: cms.RecipientInfo, keys: tuple[DecryptionKey, ...]) -> list[_Unwrapper]:
    matches: list[_Unwrapper] = []
    if ri.name == "ktri":
        ktri = ri.chosen
        matches.extend(_ktri_unwrapper(ktri, key) for key in keys if _rid_matches(ktri["rid"], key))
    elif ri.name == "kari":
        kari = ri.chosen
        for rek in kari["recipient_encrypted_keys"]:
            matches.extend(
                _kari_unwrapper(kari, rek, key)
                for key in keys
                if _kari_rid_matches(rek["rid"], key)
            )
    # kekri, pwri, ori: nothing an admin can configure here.
    return matches


def _ias_matches(ias: cms.IssuerAndSerialNumber, key: DecryptionKey) -> bool:
    if ias["serial_number"].native != key.serial_number:
        return False
    issuer = ias["issuer"]
    # Byte equality first; fall back to RFC 5280 name comparison for senders
    # that re-encode the issuer (e.g. PrintableString vs UTF8String).
    return bool(issuer.dump() == key.issuer_der or issuer == key._issuer_name)


def _rid_matches(rid: cms.RecipientIdentifier, key: DecryptionKey) -> bool:
    if rid.name == "issuer_and_serial_number":
        return _ias_matches(rid.chosen, key)
    if rid.name == "subject_key_identifier":
        return key.subject_key_identifier is not None and (
            rid.chosen.native == key.subject_key_identifier
        )
    return False


def _kari_rid_matches(rid: cms.KeyAgreementRecipientIdentifier, key: DecryptionKey) -> bool:
    if rid.name == "issuer_and_serial_number":
        return _ias_matches(rid.chosen, key)
    if rid.name == "r_key_id":
        return key.subject_key_identifier is not None and (
            rid.chosen["subject_key_identifier"].native == key.subject_key_identifier
        )
    return False


# ------------------------------------------------------ key transport (RSA)


def _ktri_unwrapper(ktri: cms.KeyTransRecipientInfo, key: DecryptionKey) -> _Unwrapper:
    def unwrap(key_len: int) -> bytes:
        alg = ktri["key_encryption_algorithm"]
        oid = alg["algorithm"].dotted
        if oid not in (_OID_RSA_PKCS1V15, _OID_RSA_OAEP):
            raise _Fail(f"unsupported key transport algorithm {oid}")
        private_key = key.private_key
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise _Fail("key transport to a non-RSA key")
        encrypted_key = ktri["encrypted_key"].native
        if oid == _OID_RSA_PKCS1V15:
            return _rsa_pkcs1v15_unwrap(private_key, encrypted_key, key_len)
        oaep = _oaep_padding(alg)
        try:
            cek = private_key.decrypt(encrypted_key, oaep)
        except ValueError as exc:
            raise _Fail(_DECRYPTION_FAILED) from exc
        if len(cek) != key_len:
            raise _Fail(_DECRYPTION_FAILED)
        return cek

    return unwrap


def _rsa_pkcs1v15_unwrap(
    private_key: rsa.RSAPrivateKey, encrypted_key: bytes, key_len: int
) -> bytes:
    """RFC 3218 §2.3.2: never reveal a padding failure; carry on with a random
    CEK so the error surfaces only as a content decryption failure."""
    fallback = os.urandom(key_len)
    try:
        cek = private_key.decrypt(encrypted_key, padding.PKCS1v15())
    except ValueError:
        return fallback
    return cek if len(cek) == key_len else fallback


def _oaep_padding(alg: cms.KeyEncryptionAlgorithm) -> padding.OAEP:
    params = alg["parameters"]
    hash_oid = mgf_hash_oid = "1.3.14.3.2.26"  # RFC 4055 defaults: SHA-1, MGF1-SHA-1, no label
    label = b""
    if _present(params) and not isinstance(params, core.Null):
        hash_oid = params["hash_algorithm"]["algorithm"].dotted
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].dotted != _OID_MGF1:
            raise _Fail(f"unsupported OAEP mask generation function {mgf['algorithm'].dotted}")
        mgf_params = mgf["parameters"]
        if _present(mgf_params) and not isinstance(mgf_params, core.Null):
            mgf_hash_oid = mgf_params["algorithm"].dotted
        source = params["p_source_algorithm"]
        if source["algorithm"].dotted != _OID_P_SPECIFIED:
            raise _Fail(f"unsupported OAEP label source {source['algorithm'].dotted}")
        if _present(source["parameters"]):
            label = source["parameters"].native or b""
    for oid in (hash_oid, mgf_hash_oid):
        if oid not in _HASHES:
            raise _Fail(f"unsupported OAEP hash {oid}")
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=_HASHES[mgf_hash_oid]()),
        algorithm=_HASHES[hash_oid](),
        label=label or None,
    )


# ----------------------------------------------------- key agreement (ECDH)


def _kari_unwrapper(
    kari: cms.KeyAgreeRecipientInfo, rek: cms.RecipientEncryptedKey, key: DecryptionKey
) -> _Unwrapper:
    def unwrap(key_len: int) -> bytes:
        kea = kari["key_encryption_algorithm"]
        oid = kea["algorithm"].dotted
        kdf_hash = _ECDH_KDF_HASHES.get(oid)
        if kdf_hash is None:
            raise _Fail(f"unsupported key agreement algorithm {oid}")
        private_key = key.private_key
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise _Fail("key agreement with a non-EC key")
        # keyEncryptionAlgorithm.parameters is the KeyWrapAlgorithm (RFC 5753 §3.1.1).
        wrap_der = kea["parameters"].dump()
        wrap_oid = cms.KeyEncryptionAlgorithm.load(wrap_der)["algorithm"].dotted
        kek_len = _AES_WRAP_KEY_LEN.get(wrap_oid)
        if kek_len is None:
            raise _Fail(f"unsupported key wrap algorithm {wrap_oid}")

        originator = kari["originator"]
        if originator.name != "originator_key":
            raise _Fail("unsupported key agreement: originator is not an ephemeral key")
        peer = _originator_public_key(originator.chosen, private_key.curve)
        ukm = kari["ukm"].native if _present(kari["ukm"]) else None

        shared_secret = private_key.exchange(ec.ECDH(), peer)
        kek = X963KDF(
            algorithm=kdf_hash(),
            length=kek_len,
            sharedinfo=ecc_cms_shared_info(wrap_der, ukm, kek_len * 8),
        ).derive(shared_secret)
        try:
            cek = aes_key_unwrap(kek, rek["encrypted_key"].native)
        except (InvalidUnwrap, ValueError) as exc:
            raise _Fail(_DECRYPTION_FAILED) from exc
        if len(cek) != key_len:
            raise _Fail(_DECRYPTION_FAILED)
        return cek

    return unwrap


def _originator_public_key(
    info: cms.PublicKeyInfo, curve: ec.EllipticCurve
) -> ec.EllipticCurvePublicKey:
    algorithm = info["algorithm"]
    if algorithm["algorithm"].dotted != "1.2.840.10045.2.1":
        raise _Fail(f"unsupported originator key algorithm {algorithm['algorithm'].dotted}")
    # RFC 5753 lets the parameters be absent or NULL: the curve is then ours.
    params = algorithm["parameters"]
    if (
        _present(params)
        and params.name == "named"
        and str(params.chosen.native).lower() != curve.name.lower()
    ):
        raise _Fail("originator key is on a different curve")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, info["public_key"].native)
    except (ValueError, TypeError) as exc:
        raise _Fail("invalid originator public key") from exc


def ecc_cms_shared_info(key_info_der: bytes, ukm: bytes | None, kek_bits: int) -> bytes:
    """DER of ECC-CMS-SharedInfo (RFC 5753 §7.2), the X9.63 KDF SharedInfo.

    keyInfo is the key-wrap AlgorithmIdentifier exactly as the sender sent it,
    entityUInfo [0] the ukm if any, suppPubInfo [2] the KEK length in bits.
    Shared with ``encrypt`` so both directions derive the KEK the same way.
    """
    body = key_info_der
    if ukm is not None:
        body += der_encode(0xA0, der_encode(0x04, ukm))
    body += der_encode(0xA2, der_encode(0x04, kek_bits.to_bytes(4, "big")))
    return der_encode(0x30, body)


# ----------------------------------------------------- content encryption


def _content_cipher(
    env: cms.EnvelopedData | cms.AuthEnvelopedData,
    eci: cms.EncryptedContentInfo,
    ciphertext: bytes,
    authenticated: bool,
) -> _ContentCipher:
    alg = eci["content_encryption_algorithm"]
    oid = alg["algorithm"].dotted
    params = alg["parameters"]
    if not authenticated and oid in _CBC_CIPHERS:
        factory, key_len = _CBC_CIPHERS[oid]
        iv = params.native if isinstance(params, core.OctetString) else None
        block = factory.block_size // 8
        if not isinstance(iv, bytes) or len(iv) != block:
            raise _Fail("bad CBC parameters")
        return _ContentCipher(key_len, lambda cek: _cbc_decrypt(factory, cek, iv, ciphertext))
    if authenticated and (oid in _GCM_KEY_LEN or oid in _CCM_KEY_LEN):
        mac = env["mac"].native
        auth_attrs = env["auth_attrs"]
        # RFC 5083 §2.2: the AAD is the DER of authAttrs with a SET OF tag, not [1].
        aad = der_encode(0x31, auth_attrs.contents) if _present(auth_attrs) else b""
        if oid in _GCM_KEY_LEN:
            gcm = _GcmParameters.load(params.dump())
            nonce, icv_len = gcm["nonce"].native, gcm["icv_len"].native
            if not 12 <= icv_len <= 16 or len(mac) != icv_len or not 8 <= len(nonce) <= 128:
                raise _Fail("bad GCM parameters")
            return _ContentCipher(
                _GCM_KEY_LEN[oid], lambda cek: _gcm_decrypt(cek, nonce, mac, aad, ciphertext)
            )
        ccm = _CcmParameters.load(params.dump())
        nonce, icv_len = ccm["nonce"].native, ccm["icv_len"].native
        if icv_len not in (4, 6, 8, 10, 12, 14, 16) or len(mac) != icv_len:
            raise _Fail("bad CCM parameters")
        if not 7 <= len(nonce) <= 13:
            raise _Fail("bad CCM parameters")
        return _ContentCipher(
            _CCM_KEY_LEN[oid], lambda cek: _ccm_decrypt(cek, nonce, mac, aad, ciphertext)
        )
    kind = "AuthEnvelopedData" if authenticated else "EnvelopedData"
    raise _Fail(f"unsupported content encryption algorithm {oid} in {kind}")


def _cbc_decrypt(
    factory: _CbcAlgorithm, cek: bytes, iv: bytes, ciphertext: bytes
) -> bytes:
    algorithm = factory(cek)
    block = algorithm.block_size // 8
    if not ciphertext or len(ciphertext) % block:
        raise _Fail(_DECRYPTION_FAILED)
    # Check the padding of the last block first so a wrong CEK (e.g. the RFC
    # 3218 random one) costs one block, not the whole message.
    previous = ciphertext[-2 * block : -block] if len(ciphertext) > block else iv
    last = Cipher(algorithm, modes.CBC(previous)).decryptor().update(ciphertext[-block:])
    _unpad(last, block)
    decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
    return _unpad(decryptor.update(ciphertext) + decryptor.finalize(), block)


def _unpad(data: bytes, block: int) -> bytes:
    unpadder = sym_padding.PKCS7(block * 8).unpadder()
    try:
        return unpadder.update(data) + unpadder.finalize()
    except ValueError as exc:
        raise _Fail(_DECRYPTION_FAILED) from exc


def _gcm_decrypt(cek: bytes, nonce: bytes, mac: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    decryptor = Cipher(
        algorithms.AES(cek), modes.GCM(nonce, mac, min_tag_length=len(mac))
    ).decryptor()
    decryptor.authenticate_additional_data(aad)
    plaintext = decryptor.update(ciphertext)
    try:
        return plaintext + decryptor.finalize()
    except InvalidTag as exc:
        raise _Fail(_DECRYPTION_FAILED) from exc


def _ccm_decrypt(cek: bytes, nonce: bytes, mac: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    try:
        return AESCCM(cek, tag_length=len(mac)).decrypt(nonce, ciphertext + mac, aad or None)
    except (InvalidTag, ValueError) as exc:
        raise _Fail(_DECRYPTION_FAILED) from exc

"""The verification fast path: DER-walked SignedData, zero-copy MIME views,
``verify_file`` over a mapped file.

The asn1crypto parser stays the reference: every message here, and every
corpus message, must get exactly the same Verdict from both paths.
"""

from __future__ import annotations

import base64
import mmap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import core

from smime_milter.cms import der, parse_signed_data_fast
from smime_milter.cms.signed_data import _octet_string, _time
from smime_milter.mail import mime
from smime_milter.model import Verdict
from smime_milter.trust.chain import TrustStore
from smime_milter.verify import Verifier
from smime_milter.verify import engine as engine_module
from tests.corpora import corpus
from tests.support import smime
from tests.support.pki import TestPki
from tests.support.verdicts import NOW, entity, make_verifier

PINNED = datetime(2027, 1, 1, tzinfo=UTC)


def _both(pki: TestPki, **kwargs: Any) -> tuple[Verifier, Verifier]:
    fast = make_verifier(pki, **kwargs)
    slow = make_verifier(pki, **kwargs)
    slow.der_fast_path = False
    return fast, slow


def _signed_der(message: bytes) -> bytes | memoryview | None:
    """The CMS blob of the message's top-level signed layer, if any."""
    layer = engine_module._layer_of(mime.parse_part(memoryview(message)))
    return layer.der if layer.kind in ("detached", "opaque") else None


def _body(text: str = "Hello Bob,\nsigned.\n") -> bytes:
    return entity(text)


# Messages of every shape the tests build: (id, builder over the PKI).
SHAPES: dict[str, Callable[[TestPki], bytes]] = {
    "rsa-detached": lambda p: smime.multipart_signed(_body(), p.rsa, signing_time=NOW),
    "rsa-opaque": lambda p: smime.opaque_signed(_body(), p.rsa, signing_time=NOW),
    "rsa-ski": lambda p: smime.multipart_signed(_body(), p.rsa, sid="ski", signing_time=NOW),
    "rsa-pss": lambda p: smime.multipart_signed(_body(), p.rsa_pss, pss=True,
                                                from_addr="pss@example.com"),
    "ec256": lambda p: smime.multipart_signed(_body(), p.ec256, from_addr="ec256@example.com"),
    "ec384-opaque": lambda p: smime.opaque_signed(_body(), p.ec384,
                                                  from_addr="ec384@example.com"),
    "ec521": lambda p: smime.multipart_signed(_body(), p.ec521, from_addr="ec521@example.com"),
    "ed25519": lambda p: smime.multipart_signed(_body(), p.ed25519, from_addr="ed@example.com"),
    "sha1": lambda p: smime.multipart_signed(_body(), p.rsa, digest="sha1"),
    "sha512": lambda p: smime.multipart_signed(_body(), p.rsa, digest="sha512"),
    "null-digest-params": lambda p: smime.multipart_signed(_body(), p.rsa,
                                                           null_digest_params=True),
    "no-signing-time": lambda p: smime.multipart_signed(_body(), p.rsa,
                                                        omit_attrs=("signing_time",)),
    "no-capabilities": lambda p: smime.multipart_signed(_body(), p.rsa,
                                                        omit_attrs=("smime_capabilities",)),
    "no-signed-attrs": lambda p: smime.multipart_signed(_body(), p.rsa, omit_attrs=("all",)),
    "tampered-digest": lambda p: smime.multipart_signed(_body(), p.rsa, tamper_digest=True),
    "wrong-sig-oid": lambda p: smime.multipart_signed(_body(), p.rsa,
                                                      sig_oid_override="sha256_ecdsa"),
    "no-certificates": lambda p: smime.multipart_signed(_body(), p.rsa, certs=[]),
    "with-crl": lambda p: smime.multipart_signed(_body(), p.rsa, crls=[p.crl]),
    "two-signers": lambda p: smime.multipart_signed(_body(), p.rsa, extra_signers=[p.ec256]),
    "from-mismatch": lambda p: smime.multipart_signed(_body(), p.rsa,
                                                      from_addr="mallory@example.com"),
    "expired": lambda p: smime.multipart_signed(_body(), p.expired,
                                                from_addr="expired@example.com"),
    "revoked": lambda p: smime.multipart_signed(_body(), p.revoked,
                                                from_addr="revoked@example.com"),
    "untrusted": lambda p: smime.multipart_signed(_body(), p.untrusted,
                                                  from_addr="untrusted@example.com"),
    "weak-rsa": lambda p: smime.multipart_signed(_body(), p.weak_rsa,
                                                 from_addr="weak@example.com"),
    "dn-only": lambda p: smime.multipart_signed(_body(), p.dn_only,
                                                from_addr="dn@example.com"),
    "bare-lf": lambda p: smime.multipart_signed(_body(), p.rsa).replace(b"\r\n", b"\n"),
    "altered-body": lambda p: smime.multipart_signed(_body(), p.rsa).replace(b"Bob", b"Eve"),
    "nested": lambda p: smime.wrap_message(
        b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n'
        + smime.multipart_signed_entity(_body(), p.rsa) + b"\r\n--x\r\n"
        + _body("unsigned\n") + b"\r\n--x--\r\n"
    ),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fast_and_reference_paths_agree(shape: str, pki: TestPki) -> None:
    message = SHAPES[shape](pki)
    fast, slow = _both(pki, crls=[pki.crl])
    assert fast.verify(message, at=NOW) == slow.verify(message, at=NOW)


def test_the_common_shapes_take_the_fast_path(pki: TestPki) -> None:
    fast_shapes = {"rsa-detached", "rsa-opaque", "rsa-ski", "ec256", "ed25519", "sha1",
                   "no-signing-time", "tampered-digest", "two-signers", "no-certificates"}
    for shape in fast_shapes:
        blob = _signed_der(SHAPES[shape](pki))
        assert blob is not None and parse_signed_data_fast(blob) is not None, shape
    # Rare structures are left to asn1crypto: PSS parameters, CRLs, no signed attributes.
    for shape in ("rsa-pss", "with-crl", "no-signed-attrs"):
        blob = _signed_der(SHAPES[shape](pki))
        assert blob is not None and parse_signed_data_fast(blob) is None, shape


def test_countersigned_signed_data_takes_the_reference_path() -> None:
    blob = (corpus("countersignature") / "4.4.bin").read_bytes()
    assert parse_signed_data_fast(blob) is None  # unsigned attributes: countersignatures


def test_countersignature_corpus_verdicts_agree() -> None:
    folder = corpus("countersignature")
    blob = (folder / "4.4.bin").read_bytes()
    message = smime.wrap_message(smime.pkcs7_mime_entity(blob, "signed-data"),
                                 from_addr="AliceDSS@example.com")
    trust = TrustStore.load([folder / "CarlDSSSelf.cer", folder / "CarlRSASelf.cer"])
    fast, slow = Verifier(trust), Verifier(trust, der_fast_path=False)
    assert fast.verify(message, at=PINNED).signers == slow.verify(message, at=PINNED).signers


def test_thunderbird_corpus_verdicts_agree_and_go_fast() -> None:
    folder = corpus("thunderbird")
    trust = TrustStore.load([folder / "TestCA.pem"])
    clock = lambda: PINNED  # noqa: E731 - verified_at is part of the Verdict
    fast = Verifier(trust, clock=clock)
    slow = Verifier(trust, clock=clock, der_fast_path=False)
    signed = went_fast = 0
    for path in sorted(folder.glob("*.eml")):
        message = path.read_bytes()
        assert fast.verify(message, at=PINNED) == slow.verify(message, at=PINNED), path.name
        assert fast.verify_file(path, at=PINNED) == slow.verify(message, at=PINNED), path.name
        blob = _signed_der(message)
        if blob is not None:
            signed += 1
            went_fast += parse_signed_data_fast(blob) is not None
    # NSS writes BER (indefinite lengths) in the outer layers: still the fast path.
    assert signed == 59 and went_fast == signed


#: openssl checks certificate validity at NOW too, not at the wall clock.
OPENSSL_AT = ["-attime", str(int(NOW.timestamp()))]


@pytest.mark.process
@pytest.mark.parametrize("shape", ["rsa-detached", "rsa-opaque", "ec256", "tampered-digest"])
def test_retagged_signed_attributes_agree_with_openssl(
    shape: str, pki: TestPki, ca_files: list[Path]
) -> None:
    """The re-tagged attributes are the bytes the signature covers: the fast
    path's signature verdict is openssl's."""
    message = SHAPES[shape](pki)
    blob = _signed_der(message)
    assert blob is not None
    raw = parse_signed_data_fast(blob)
    assert raw is not None
    reference = asn1_cms.ContentInfo.load(bytes(blob))["content"]["signer_infos"][0]
    # [0] IMPLICIT re-tagged to SET OF: the same octets after the tag.
    assert raw.signer_infos[0].signed_attributes == der.encode(
        0x31, reference["signed_attrs"].contents)
    assert raw.signer_infos[0].signed_attributes[1:] == reference["signed_attrs"].dump()[1:]
    fast, _ = _both(pki)
    signature_ok = fast.verify(message, at=NOW).signers[0].signature_ok
    assert signature_ok == (shape != "tampered-digest")
    assert smime.openssl_verify(message, ca_files, extra_args=OPENSSL_AT) == signature_ok


def test_non_minimal_signed_attributes_length_is_left_to_asn1crypto(pki: TestPki) -> None:
    """Re-tagging is only right for a minimal DER length: the signature covers
    the DER re-encoding, so a padded length must go the reference way."""
    message = smime.multipart_signed(_body(), pki.rsa, signing_time=NOW)
    blob = _signed_der(message)
    assert isinstance(blob, bytes)
    info = asn1_cms.ContentInfo.load(blob)
    signer = info["content"]["signer_infos"][0]
    attrs = signer["signed_attrs"]
    size = len(attrs.contents)
    assert 0x80 <= size < 0x10000
    padded = b"\xa0\x83" + size.to_bytes(3, "big") + attrs.contents  # one octet too many
    signer_der = signer.dump()
    body = signer_der[len(signer_der) - len(signer.contents):].replace(attrs.dump(), padded)
    info["content"]["signer_infos"] = asn1_cms.SignerInfos(
        [asn1_cms.SignerInfo.load(der.encode(0x30, body))])
    tweaked = info.dump(force=False)
    assert parse_signed_data_fast(tweaked) is None
    assert parse_signed_data_fast(blob) is not None
    b64 = base64.encodebytes(tweaked).replace(b"\n", b"\r\n")
    swapped = message.replace(base64.encodebytes(blob).replace(b"\n", b"\r\n"), b64)
    assert swapped != message
    fast, slow = _both(pki)
    verdict = fast.verify(swapped, at=NOW)
    assert verdict == slow.verify(swapped, at=NOW)
    assert verdict.signers[0].signature_ok


# --- signed attribute value readers ------------------------------------------------


@pytest.mark.parametrize("value", [
    core.UTCTime(datetime(2026, 6, 1, 12, 30, 45, tzinfo=UTC)).dump(),
    core.UTCTime(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)).dump(),
    core.UTCTime(datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)).dump(),
    core.GeneralizedTime(datetime(2050, 1, 1, tzinfo=UTC)).dump(),
    b"\x17\x0b2606011230Z",  # no seconds: asn1crypto reads it
    b"\x17\x11260601123045+0200",  # an offset: asn1crypto reads it
])
def test_signing_time_reads_as_asn1crypto_does(value: bytes) -> None:
    assert _time(value) == asn1_cms.Time.load(value).native


def test_malformed_signing_time_still_raises() -> None:
    with pytest.raises(ValueError):
        _time(b"\x17\x0d261301000000Z")  # month 13


@pytest.mark.parametrize("value", [b"\x04\x03abc", core.OctetString(b"x" * 300).dump(),
                                   b"\x24\x80\x04\x01a\x04\x01b\x00\x00"])
def test_octet_string_reads_as_asn1crypto_does(value: bytes) -> None:
    assert _octet_string(value) == core.OctetString.load(value).native


# --- MIME on views -----------------------------------------------------------------


def test_split_multipart_views_match_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    body = (b"preamble\r\n--b\r\nfirst\r\n--b \r\nsecond part\n--bb\n--b\r\nthird\r\n"
            b"--b--\r\nepilogue")
    expected = mime.split_multipart(body, "b")
    monkeypatch.setattr(mime, "WINDOW", 5)  # force matches across window edges
    got = mime.split_multipart(memoryview(body), "b")
    assert [bytes(part) for part in got] == expected
    assert all(isinstance(part, memoryview) for part in got)


def test_parse_part_matches_parse_entity() -> None:
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
    part, whole = mime.parse_part(memoryview(raw)), mime.parse_entity(raw)
    assert (part.headers, bytes(part.body), part.content_type) == (
        whole.headers, whole.body, whole.content_type)


@pytest.mark.parametrize("data", [b"a\r\nb\r\n", b"a\nb\r\nc\n", b"\r\r\n\n\r", b"x" * 20,
                                  b"line\r\n" * 5 + b"bare\n"])
def test_canonical_view_hashes_like_canonicalize(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mime, "WINDOW", 3)  # windows that would split a CRLF
    result = mime.canonical(memoryview(data))
    joined = bytes(result) if isinstance(result, memoryview) else b"".join(result.chunks())
    assert joined == mime.canonicalize(data)
    assert isinstance(result, memoryview) == (mime.canonicalize(data) == data)


# --- verify_file -------------------------------------------------------------------


def test_verify_file_equals_verify(pki: TestPki, tmp_path: Path) -> None:
    fast, _ = _both(pki)
    for shape in ("rsa-detached", "rsa-opaque", "bare-lf", "altered-body", "nested"):
        message = SHAPES[shape](pki)
        path = tmp_path / f"{shape}.eml"
        path.write_bytes(message)
        assert fast.verify_file(path, at=NOW) == fast.verify(message, at=NOW), shape


def test_verify_file_of_an_empty_file(pki: TestPki, tmp_path: Path) -> None:
    fast, _ = _both(pki)
    path = tmp_path / "empty.eml"
    path.write_bytes(b"")
    assert fast.verify_file(path, at=NOW) == fast.verify(b"", at=NOW)


def test_verify_file_missing_raises_os_error(pki: TestPki, tmp_path: Path) -> None:
    fast, _ = _both(pki)
    with pytest.raises(OSError):
        fast.verify_file(tmp_path / "absent.eml", at=NOW)


def test_verify_file_unmaps_the_message(
    pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No view of the mapping outlives the call (a cache holding one would
    keep every large message mapped)."""
    maps: list[mmap.mmap] = []
    real = mmap.mmap

    def recording(*args: Any, **kwargs: Any) -> mmap.mmap:
        mapped = real(*args, **kwargs)
        maps.append(mapped)
        return mapped

    monkeypatch.setattr(mmap, "mmap", recording)
    fast, _ = _both(pki)
    for shape in ("rsa-detached", "rsa-opaque", "two-signers", "nested"):
        path = tmp_path / f"{shape}.eml"
        path.write_bytes(SHAPES[shape](pki))
        fast.verify_file(path, at=NOW)
    assert len(maps) == 4 and all(mapped.closed for mapped in maps)


def _large_message(pki: TestPki, size: int, *, line_end: bytes = b"\r\n") -> bytes:
    line = base64.b64encode(bytes(range(256)) * 3)[:76]
    count = size // (len(line) + len(line_end))
    inner = (b"Content-Type: application/octet-stream\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n"
             + (line + b"\r\n") * count)
    message = smime.multipart_signed(inner, pki.rsa, signing_time=NOW)
    return message if line_end == b"\r\n" else message.replace(b"\r\n", line_end)


def test_large_bare_lf_message_is_hashed_in_pieces(pki: TestPki, tmp_path: Path) -> None:
    """Bare LF on the wire: the canonical form is hashed window by window."""
    message = _large_message(pki, 3 * mime.WINDOW, line_end=b"\n")
    path = tmp_path / "large.eml"
    path.write_bytes(message)
    fast, slow = _both(pki)
    verdict = fast.verify_file(path, at=NOW)
    assert verdict.status is not None and verdict.status.value == "signed/verified"
    assert verdict == slow.verify(message, at=NOW)


MEMORY_PROBE = """
import sys, tracemalloc
from datetime import datetime
from asn1crypto import x509
from smime_milter.trust.chain import TrustStore
from smime_milter.verify import Verifier

def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise SystemExit("no VmHWM")

path, root, at = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
verifier = Verifier(TrustStore((x509.Certificate.load(open(root, "rb").read()),)))
verifier.verify(b"Content-Type: text/plain\\r\\n\\r\\nwarm-up\\r\\n", at=at)
before = peak_rss_mb()
tracemalloc.start()
verdict = verifier.verify_file(path, at=at)
peak = tracemalloc.get_traced_memory()[1]
print(verdict.status.value, before, peak_rss_mb() - before, peak // (1024 * 1024))
"""


def _large_opaque(pki: TestPki, size: int) -> bytes:
    line = base64.b64encode(bytes(range(256)) * 3)[:76]
    inner = (b"Content-Type: application/octet-stream\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n"
             + (line + b"\r\n") * (size // (len(line) + 2)))
    return smime.opaque_signed(inner, pki.rsa, signing_time=NOW)


def _probe(pki: TestPki, tmp_path: Path, message: bytes) -> tuple[int, int]:
    """(peak RSS added, peak Python allocations), in MB, of verify_file on
    ``message`` in a fresh process."""
    import subprocess
    import sys

    path, root = tmp_path / "big.eml", tmp_path / "root.der"
    path.write_bytes(message)
    root.write_bytes(pki.root.cert_der)
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), str(root), NOW.isoformat()],
        capture_output=True, text=True, check=True, timeout=120,
    )
    status, base_mb, rss_mb, python_mb = result.stdout.split()
    print(f"{len(message) >> 20} MB message via verify_file: +{rss_mb} MB peak RSS "
          f"(over {base_mb} MB), {python_mb} MB peak Python allocations")
    assert status == "signed/verified"
    return int(rss_mb), int(python_mb)


@pytest.mark.process
def test_fifty_megabyte_clear_signed_message_through_verify_file(
    pki: TestPki, tmp_path: Path
) -> None:
    """A 50 MB clear-signed message: the mapped file's pages are the only
    large cost (RSS grows by about the file, Python allocates little)."""
    rss_mb, python_mb = _probe(pki, tmp_path, _large_message(pki, 50 * 1024 * 1024))
    assert 40 < rss_mb < 64  # the mapped pages are touched, nothing else is big
    assert python_mb < 8


@pytest.mark.process
def test_fifty_megabyte_opaque_message_copies_its_content_once(
    pki: TestPki, tmp_path: Path
) -> None:
    """Opaque signed-data must be base64-decoded (a 36 MB SignedData for a
    50 MB message); the eContent inside it is hashed as a view, not copied."""
    _rss_mb, python_mb = _probe(pki, tmp_path, _large_opaque(pki, 36 * 1024 * 1024))
    assert python_mb < 45


def test_verify_accepts_the_same_bytes_as_before(pki: TestPki) -> None:
    """verify(bytes) keeps its signature: a bytes message, a Verdict back."""
    fast, _ = _both(pki)
    verdict: Verdict = fast.verify(SHAPES["rsa-detached"](pki), at=NOW)
    assert verdict.status is not None and verdict.status.value == "signed/verified"

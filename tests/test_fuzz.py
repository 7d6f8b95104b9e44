"""Robustness of ``Verifier.verify`` against mutated MIME and CMS.

Valid messages made by ``tests.support`` (clear-signed, opaque-signed, encrypted,
nested, several signers, protected headers, certs-only) are mutated at three
levels and fed to the engine:

* bytes: flip, insert, delete, duplicate and truncate slices of the raw message;
* headers: duplicate/alter From, drop Content-Type, change boundary, protocol,
  smime-type, media type or transfer encoding, rewrite line endings, fold;
* CMS: the DER blob is mutated and base64-encoded back into the message, so the
  CMS parser sees the garbage: raw bit flips and truncation, wrong length octets,
  and structure-aware edits (drop/duplicate/swap/graft TLVs, new tags, new
  primitive contents) re-encoded with correct outer lengths so the parser gets
  past the envelope into SignerInfos, attributes and certificates.

Whatever comes in, ``verify`` must return a well-formed RFC 9219 verdict within
a second and must not take its "unexpected error" escape hatch (which turns any
parser bug into ``signed/failed``). Huge and deeply nested inputs get their own
deterministic tests. A seeded plain-``random`` loop runs the same mutators as a
second, cheaper search. Targeted properties: a flipped bit in signed content or a
foreign From never verifies; LF line endings and trace fields change nothing.
Past findings are kept as regression tests at the end.

Every example is reproducible: hypothesis is derandomised without a database,
the loop uses ``random.Random(1234)``. ``SMIME_FUZZ_SCALE=10`` multiplies the
example counts for a longer local run.
"""

from __future__ import annotations

import base64
import functools
import gzip
import logging
import os
import random
import re
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smime_milter.cms.envelope import DecryptionKey
from smime_milter.model import Status, Verdict
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier
from tests.support import smime
from tests.support.pki import TestPki, build_pki

pytestmark = pytest.mark.process

#: CPU seconds of the calling thread per verify() call, whatever the input: a
#: guard against inputs that make the engine do super-linear work. Thread CPU
#: time, not wall time, so other processes loading the machine do not count.
TIME_LIMIT = 1.0
INTERNAL_ERROR = "message could not be examined"
SCALE = float(os.environ.get("SMIME_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ the oracle


#: One smimeErrors entry longer than this is a bug (it ends up in headers and JMAP).
MAX_ERROR_CHARS = 4096


class _InternalErrors(logging.Handler):
    """Records the engine's "unexpected error" log lines (its catch-all)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def catch_all_site(exc: BaseException) -> tuple[str, str]:
    """(file name, function) of the innermost smime_milter frame of ``exc``."""
    site = ("?", "?")
    for frame in traceback.extract_tb(exc.__traceback__):
        if "smime_milter" in frame.filename:
            site = (os.path.basename(frame.filename), frame.name)
    return site


@dataclass
class Harness:
    pki: TestPki
    verifier: Verifier
    log: _InternalErrors = field(default_factory=_InternalErrors)

    def run(self, message: bytes) -> tuple[Verdict, float, BaseException | None]:
        """``verify`` once: the verdict, the CPU seconds it took and what reached
        the engine's catch-all (None when nothing did)."""
        self.log.records.clear()
        start = time.thread_time()
        verdict = self.verifier.verify(message)
        elapsed = time.thread_time() - start
        caught = None
        for record in self.log.records:
            caught = record.exc_info[1] if record.exc_info else RuntimeError(record.getMessage())
        return verdict, elapsed, caught

    def check(self, message: bytes) -> Verdict:
        """Run ``verify`` once and assert every invariant; returns the verdict."""
        verdict, elapsed, caught = self.run(message)
        assert elapsed < TIME_LIMIT, f"verify took {elapsed:.3f} CPU s for {len(message)} bytes"
        assert_well_formed(verdict)
        if caught is not None:
            site = ":".join(catch_all_site(caught))
            raise AssertionError(
                f"engine hit its catch-all at {site}: {type(caught).__name__}: {caught}"
            )
        assert not any(INTERNAL_ERROR in e for e in verdict.errors or ()), verdict.errors
        return verdict


def assert_well_formed(verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.status is None or isinstance(verdict.status, Status), verdict.status
    if verdict.status is not None and verdict.status.is_failed:
        assert isinstance(verdict.errors, tuple), verdict
        assert verdict.errors, verdict
        assert all(isinstance(e, str) and e for e in verdict.errors), verdict.errors
        longest = max(len(e) for e in verdict.errors)
        assert longest <= MAX_ERROR_CHARS, f"an smimeErrors entry has {longest} characters"
    else:
        assert verdict.errors is None, verdict
    if verdict.status is not None and verdict.status.is_verified:
        assert any(signer.ok for signer in verdict.signers), verdict


# ------------------------------------------------------------------ seeds


@dataclass(frozen=True)
class CmsTemplate:
    """A message whose CMS blob can be swapped: ``prefix + base64(der) + suffix``."""

    name: str
    prefix: bytes
    der: bytes
    suffix: bytes

    def build(self, der: bytes) -> bytes:
        return self.prefix + b64_lines(der) + self.suffix


@dataclass(frozen=True)
class Corpus:
    harness: Harness
    messages: dict[str, bytes]
    templates: tuple[CmsTemplate, ...]
    #: Signed entities that go inside an EnvelopedData (encrypted in-process).
    inner_entities: dict[str, bytes]
    #: (message, start, end) of the signed bytes of clear-signed seeds.
    signed_regions: tuple[tuple[str, int, int], ...]


def b64_lines(der: bytes) -> bytes:
    text = base64.b64encode(der)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


_B64_BLOCK = re.compile(rb"(?:[A-Za-z0-9+/=]{1,76}\r\n){3,}")


def cms_template(name: str, message: bytes) -> CmsTemplate:
    """Split ``message`` around its (longest) base64 block."""
    block = max(_B64_BLOCK.finditer(message), key=lambda m: m.end() - m.start())
    der = base64.b64decode(block.group(0))
    template = CmsTemplate(name, message[: block.start()], der, message[block.end() :])
    assert template.build(der) == message
    return template


def envelope(entity: bytes, pki: TestPki) -> bytes:
    """Encrypt ``entity`` to the rsa leaf in-process (fast enough per example)."""
    der = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(entity)
        .add_recipient(pki.rsa.cert)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return smime.wrap_message(smime.pkcs7_mime_entity(der, "enveloped-data"))


def _protected_entity() -> bytes:
    """An RFC 9788 header-protected inner entity carrying its own From."""
    return (
        b'Content-Type: text/plain; charset=us-ascii; hp="clear"\r\n'
        b"From: alice@example.com\r\nSubject: protected\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\nprotected body\r\n"
    )


def _alternative_entity() -> bytes:
    return (
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        b"--alt\r\n" + smime.text_entity("plain text \u00e9t\u00e9\n")
        + b"\r\n--alt\r\n" + smime.text_entity("<p>html</p>", "text/html")
        + b"\r\n--alt--\r\n"
    )


@functools.cache
def corpus() -> Corpus:
    pki = build_pki(datetime.now(UTC).replace(microsecond=0))
    trust = TrustStore((asn1_x509.Certificate.load(pki.root.cert_der),))
    verifier = Verifier(trust, decryption_keys=[DecryptionKey(pki.rsa.key, pki.rsa.cert)])
    harness = Harness(pki, verifier)
    logging.getLogger("smime_milter.verify.engine").addHandler(harness.log)

    text = smime.text_entity("Hello Bob,\nthis is signed.\n-- \nAlice\n")
    detached_entity = smime.multipart_signed_entity(text, pki.rsa)
    opaque_entity = smime.pkcs7_mime_entity(
        smime.sign_cms(text, pki.rsa, detached=False), "signed-data"
    )
    mixed = (
        b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
        b"--mix\r\n" + smime.text_entity("unsigned preface\n")
        + b"\r\n--mix\r\n" + detached_entity + b"\r\n--mix--\r\n"
    )
    messages = {
        "detached": smime.wrap_message(detached_entity),
        "opaque": smime.wrap_message(opaque_entity),
        "detached-ec-alternative": smime.multipart_signed(
            _alternative_entity(), pki.ec256, from_addr="ec256@example.com"
        ),
        "detached-two-signers": smime.multipart_signed(
            text, pki.rsa, extra_signers=[pki.ec256], sid="ski"
        ),
        "detached-protected": smime.multipart_signed(_protected_entity(), pki.rsa),
        "opaque-pss": smime.opaque_signed(
            text, pki.rsa_pss, pss=True, from_addr="pss@example.com"
        ),
        "nested-mixed": smime.wrap_message(mixed),
        "enveloped-detached": smime.enveloped(detached_entity, [pki.rsa]),
        "enveloped-opaque": envelope(opaque_entity, pki),
        "certs-only": smime.certs_only([pki.rsa, pki.intermediate]),
        "plain": smime.wrap_message(text),
    }
    templates = tuple(
        cms_template(name, message)
        for name, message in messages.items()
        if name not in ("nested-mixed", "plain")
    )
    regions = []
    for name in ("detached", "detached-ec-alternative", "detached-two-signers"):
        message = messages[name]
        boundary = re.search(rb'boundary="([^"]+)"', message)
        assert boundary is not None
        start = message.index(b"--" + boundary.group(1) + b"\r\n") + len(boundary.group(1)) + 4
        end = message.index(b"\r\n--" + boundary.group(1), start)
        regions.append((name, start, end))
    expected = {
        "detached": Status.SIGNED_VERIFIED,
        "opaque": Status.SIGNED_VERIFIED,
        "detached-ec-alternative": Status.SIGNED_VERIFIED,
        "detached-two-signers": Status.SIGNED_VERIFIED,
        "detached-protected": Status.SIGNED_VERIFIED,
        "opaque-pss": Status.SIGNED_VERIFIED,
        "nested-mixed": Status.SIGNED_FAILED,
        "enveloped-detached": Status.ENCRYPTED_SIGNED_VERIFIED,
        "enveloped-opaque": Status.ENCRYPTED_SIGNED_VERIFIED,
        "certs-only": Status.UNKNOWN,
        "plain": None,
    }
    for name, message in messages.items():  # also warms the caches
        verdict = harness.check(message)
        assert verdict.status == expected[name], (name, verdict)
    return Corpus(
        harness,
        messages,
        templates,
        {"detached": detached_entity, "opaque": opaque_entity},
        tuple(regions),
    )


# ------------------------------------------------------------------ byte mutations

# An op is (kind, a, b, blob): positions are taken modulo the current length, so
# the same op list applies to any message and shrinks towards the start.
ByteOp = tuple[str, int, int, bytes]
BYTE_KINDS = ("flip", "set", "insert", "delete", "duplicate", "truncate", "move", "splice")

_INTERESTING = (
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00", b"\xff", b"--", b"=", b";", b":",
    b'"', b"\\", b"(", b" ", b"\t", b"\r\n\t", b"\x80", b"\xed\xa0\x80",
)


def apply_byte_op(data: bytes, op: ByteOp) -> bytes:
    kind, a, b, blob = op
    n = len(data)
    if n == 0:
        return blob
    pos = a % n
    if kind == "flip":
        return data[:pos] + bytes([data[pos] ^ (1 << (b % 8))]) + data[pos + 1 :]
    if kind == "set":
        return data[:pos] + blob + data[pos + len(blob) :]
    if kind == "insert":
        insert = blob or _INTERESTING[b % len(_INTERESTING)]
        return data[:pos] + insert + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + 1 + b % 64 :]
    if kind == "duplicate":
        chunk = data[pos : pos + 1 + b % 256]
        at = (b // 256) % n
        return data[:at] + chunk + data[at:]
    if kind == "truncate":
        return data[:pos]
    if kind == "move":
        chunk = data[pos : pos + 1 + b % 128]
        rest = data[:pos] + data[pos + len(chunk) :]
        at = (b // 128) % (len(rest) + 1)
        return rest[:at] + chunk + rest[at:]
    if kind == "splice":  # overwrite with bytes copied from elsewhere in the message
        src = (b // 64) % n
        chunk = data[src : src + 1 + b % 64]
        return data[:pos] + chunk + data[pos + len(chunk) :]
    raise AssertionError(kind)


def byte_ops() -> st.SearchStrategy[list[ByteOp]]:
    op = st.tuples(
        st.sampled_from(BYTE_KINDS),
        st.integers(0, 2**32),
        st.integers(0, 2**20),
        st.binary(max_size=8),
    )
    return st.lists(op, min_size=1, max_size=5)


def random_byte_op(rng: random.Random) -> ByteOp:
    return (
        rng.choice(BYTE_KINDS),
        rng.randrange(2**32),
        rng.randrange(2**20),
        rng.randbytes(rng.choice((0, 0, 1, 2, 8))),
    )


# ------------------------------------------------------------------ header mutations

HeaderOp = tuple[str, int, int]

_FROM_LINE = re.compile(rb"(?im)^from:[^\r\n]*\r?\n")
_CT_FIELD = re.compile(rb"(?im)^content-type:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")
_CTE_FIELD = re.compile(rb"(?im)^content-transfer-encoding:[^\r\n]*")
_MIME_TYPE = re.compile(rb"(?i)(content-type:\s*)([^;\s]+)")
_BOUNDARY_PARAM = re.compile(rb'(?i)boundary=("[^"]*"|[^;\s]+)')
_ANY_FIELD = re.compile(rb"(?m)^[!-9;-~]+:[^\r\n]*")

FROM_VALUES = (
    b"mallory@example.net", b"ALICE@example.com", b"alice@EXAMPLE.COM", b"<alice@example.com>",
    b'"Alice" <alice@example.com>', b"alice@example.com, bob@example.com", b"", b"<>",
    b"undisclosed-recipients:;", b"=?utf-8?q?Alice?= <alice@example.com>", b"alice@xn--e1afmkfd.ru",
    b"alice@\xc3\xa9xample.com", b"alice@\xff", b'"al\\"ice"@example.com', b"alice@example.com.",
    b"alice", b"@", b"alice@@example.com", b"(comment) alice@example.com (x)", b"a" * 300 + b"@b",
)
MIME_TYPES = (
    b"multipart/signed", b"application/pkcs7-mime", b"application/x-pkcs7-mime",
    b"application/pkcs7-signature", b"multipart/mixed", b"multipart/alternative",
    b"text/plain", b"message/rfc822", b"MULTIPART/SIGNED", b"multipart/", b"/", b"x",
)
PROTOCOLS = (
    b"application/pkcs7-signature", b"application/x-pkcs7-signature",
    b"APPLICATION/PKCS7-SIGNATURE", b"application/pgp-signature", b'""', b"x",
)
SMIME_TYPES = (
    b"signed-data", b"enveloped-data", b"authEnveloped-data", b"certs-only",
    b"compressed-data", b"SIGNED-DATA", b'""', b"junk",
)
ENCODINGS = (b"base64", b"quoted-printable", b"7bit", b"8bit", b"binary", b"x-uuencode",
             b"BASE64", b"", b"base64 (comment)")
BOUNDARIES = (b"", b"x", b"a" * 70, b"b" * 201, b'"', b"--", b"mix", b"alt", b"\xff\xfe",
              b"=_smime_", b"a b", b"\\")


def _pick(matches: Sequence[re.Match[bytes]], index: int) -> re.Match[bytes] | None:
    return matches[index % len(matches)] if matches else None


def _replace(data: bytes, match: re.Match[bytes], new: bytes, group: int = 0) -> bytes:
    return data[: match.start(group)] + new + data[match.end(group) :]


def _set_param(field_bytes: bytes, name: bytes, value: bytes | None) -> bytes:
    pattern = re.compile(rb"(?i);\s*" + name + rb'=("[^"]*"|[^;\s]*)')
    field_bytes = pattern.sub(b"", field_bytes)
    if value is None:
        return field_bytes
    return field_bytes + b"; " + name + b"=" + value


def apply_header_op(data: bytes, op: HeaderOp) -> bytes:
    kind, a, b = op
    if kind == "dup_from":
        m = _pick(list(_FROM_LINE.finditer(data)), a)
        if m is None:
            return b"From: alice@example.com\r\n" + data
        extra = m.group(0) if b % 2 else b"From: " + FROM_VALUES[b % len(FROM_VALUES)] + b"\r\n"
        return data[: m.end()] + extra + data[m.end() :]
    if kind == "set_from":
        m = _pick(list(_FROM_LINE.finditer(data)), a)
        line = b"From: " + FROM_VALUES[b % len(FROM_VALUES)] + b"\r\n"
        return line + data if m is None else _replace(data, m, line)
    if kind == "drop_from":
        m = _pick(list(_FROM_LINE.finditer(data)), a)
        return data if m is None else _replace(data, m, b"")
    fields = list(_CT_FIELD.finditer(data))
    m = _pick(fields, a)
    if kind == "drop_ct":
        return data if m is None else _replace(data, m, b"X-Dropped: 1")
    if kind == "mime_type":
        if m is None:
            return data
        t = _MIME_TYPE.match(m.group(0))
        if t is None:
            return data
        new = t.group(1) + MIME_TYPES[b % len(MIME_TYPES)] + m.group(0)[t.end() :]
        return _replace(data, m, new)
    if kind in ("protocol", "smime_type", "boundary_param", "hp"):
        if m is None:
            return data
        name, values = {
            "protocol": (b"protocol", PROTOCOLS),
            "smime_type": (b"smime-type", SMIME_TYPES),
            "boundary_param": (b"boundary", BOUNDARIES),
            "hp": (b"hp", (b'"clear"', b'"cipher"', b"x")),
        }[kind]
        value = None if b % (len(values) + 1) == len(values) else values[b % (len(values) + 1)]
        return _replace(data, m, _set_param(m.group(0), name, value))
    if kind == "boundary_delims":  # change the delimiter lines, keep the parameter
        params = list(_BOUNDARY_PARAM.finditer(data))
        p = _pick(params, a)
        if p is None:
            return data
        old = p.group(1).strip(b'"')
        if not old:
            return data
        new = BOUNDARIES[b % len(BOUNDARIES)]
        head, tail = data[: p.end()], data[p.end() :]
        if b & 0x100:  # only the close delimiter
            return head + tail.replace(b"--" + old + b"--", b"--" + new + b"--", 1)
        return head + tail.replace(b"--" + old, b"--" + new)
    if kind == "cte":
        c = _pick(list(_CTE_FIELD.finditer(data)), a)
        if c is None:
            return data
        return _replace(data, c, b"Content-Transfer-Encoding: " + ENCODINGS[b % len(ENCODINGS)])
    if kind == "eol":
        mode = b % 5
        if mode == 0:
            return data.replace(b"\r\n", b"\n")
        if mode == 1:
            return data.replace(b"\r\n", b"\r")
        if mode == 2:  # LF only in the headers of the whole message
            cut = data.find(b"\r\n\r\n")
            return data[:cut].replace(b"\r\n", b"\n") + data[cut:] if cut >= 0 else data
        lines = data.split(b"\r\n")
        rng = random.Random(a)
        sep = b"\n" if mode == 3 else b"\r"
        out = [line + (sep if rng.random() < 0.3 else b"\r\n") for line in lines[:-1]]
        return b"".join(out) + lines[-1]
    if kind == "fold":
        f = _pick(list(_ANY_FIELD.finditer(data)), a)
        if f is None:
            return data
        cut = f.start() + (b % (f.end() - f.start() + 1))
        fold = (b"\r\n\t", b"\r\n ", b"\n ", b"\r\n \r\n ")[(b >> 8) % 4]
        return data[:cut] + fold + data[cut:]
    if kind == "case":
        f = _pick(list(_ANY_FIELD.finditer(data)), a)
        if f is None:
            return data
        name_end = data.index(b":", f.start())
        name = data[f.start() : name_end]
        new = name.upper() if b % 2 else name.lower()
        return data[: f.start()] + new + data[name_end:]
    if kind == "blank":  # add or remove a blank line at a header/body boundary
        seps = list(re.finditer(rb"\r?\n\r?\n", data))
        s = _pick(seps, a)
        if s is None:
            return data
        return _replace(data, s, b"\r\n" if b % 2 else b"\r\n\r\n\r\n")
    if kind == "mbox":
        return b"From alice@example.com Thu Jan  1 00:00:00 2026\r\n" + data
    if kind == "rfc2231":
        if m is None:
            return data
        new = re.sub(rb"(?i)boundary=", b"boundary*0=", m.group(0), count=1)
        return _replace(data, m, new)
    raise AssertionError(kind)


HEADER_KINDS = (
    "dup_from", "set_from", "drop_from", "drop_ct", "mime_type", "protocol", "smime_type",
    "boundary_param", "hp", "boundary_delims", "cte", "eol", "fold", "case", "blank", "mbox",
    "rfc2231",
)


def header_ops() -> st.SearchStrategy[list[HeaderOp]]:
    op = st.tuples(st.sampled_from(HEADER_KINDS), st.integers(0, 64), st.integers(0, 2**12))
    return st.lists(op, min_size=1, max_size=4)


def random_header_op(rng: random.Random) -> HeaderOp:
    return (rng.choice(HEADER_KINDS), rng.randrange(64), rng.randrange(2**12))


# ------------------------------------------------------------------ DER mutations


@dataclass
class Tlv:
    """One BER/DER TLV; ``children`` is None for primitive values that do not
    themselves hold DER."""

    tag: bytes
    content: bytes = b""
    children: list[Tlv] | None = None
    #: OCTET STRING / BIT STRING whose content is DER (extensions, eContent).
    wraps: bytes | None = None
    #: Length octets to emit instead of the correct ones ("wrong length").
    bad_length: bytes | None = None


def _read_tlv(data: bytes, pos: int) -> tuple[bytes, int, int]:
    """(identifier octets, content start, content end) of the TLV at ``pos``."""
    if pos >= len(data):
        raise ValueError("no tag")
    tag_end = pos + 1
    if data[pos] & 0x1F == 0x1F:  # high tag number form
        while tag_end < len(data) and data[tag_end] & 0x80:
            tag_end += 1
        tag_end += 1
    if tag_end >= len(data):
        raise ValueError("no length")
    first, start = data[tag_end], tag_end + 1
    if first < 0x80:
        length = first
    elif first == 0x80 or first > 0x84:
        raise ValueError("indefinite or oversized length")
    else:
        length = int.from_bytes(data[start : start + (first & 0x7F)], "big")
        start += first & 0x7F
    if start + length > len(data):
        raise ValueError("truncated")
    return data[pos:tag_end], start, start + length


def parse_tlvs(data: bytes, depth: int = 0) -> list[Tlv]:
    if depth > 40:
        raise ValueError("too deep")
    nodes: list[Tlv] = []
    pos = 0
    while pos < len(data):
        tag, start, end = _read_tlv(data, pos)
        content = data[start:end]
        node = Tlv(tag, content)
        if tag[0] & 0x20:
            node.children = parse_tlvs(content, depth + 1)
        elif tag[0] in (0x04, 0x03) and content:
            inner = content[1:] if tag[0] == 0x03 else content
            try:
                wrapped = parse_tlvs(inner, depth + 1)
            except ValueError:
                wrapped = []
            if len(wrapped) == 1 and wrapped[0].children is not None:
                node.children = wrapped
                node.wraps = content[:1] if tag[0] == 0x03 else b""
        nodes.append(node)
        pos = end
    return nodes


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv_content(node: Tlv) -> bytes:
    if node.children is None:
        return node.content
    return (node.wraps or b"") + b"".join(encode_tlv(c) for c in node.children)


def encode_tlv(node: Tlv) -> bytes:
    content = tlv_content(node)
    length = node.bad_length if node.bad_length is not None else der_length(len(content))
    return node.tag + length + content


def walk(nodes: list[Tlv]) -> Iterator[tuple[list[Tlv], int]]:
    """Every node as (its parent's child list, its index), preorder."""
    for index, node in enumerate(nodes):
        yield nodes, index
        if node.children is not None:
            yield from walk(node.children)


DerOp = tuple[str, int, int, bytes]
DER_KINDS = (
    "flip", "truncate", "append", "length", "delete", "duplicate", "swap", "tag",
    "content", "graft", "empty", "wrap", "integer",
)
_BAD_LENGTHS = (b"\x00", b"\x80", b"\x81\x00", b"\x84\xff\xff\xff\xff", b"\x89" + b"\xff" * 9,
                b"\x82\x00\x05", b"\x7f")
_INTEGERS = (b"", b"\x00", b"\xff", b"\x00" * 40, b"\x7f" + b"\xff" * 600, b"\x80", b"\x00\x01")


def apply_der_op(der: bytes, op: DerOp) -> bytes:
    kind, a, b, blob = op
    if not der:
        return blob
    if kind == "flip":
        pos = a % len(der)
        return der[:pos] + bytes([der[pos] ^ (1 << (b % 8))]) + der[pos + 1 :]
    if kind == "truncate":
        return der[: a % len(der)]
    if kind == "append":
        return der + (blob or b"\x00\x00")
    try:
        tree = parse_tlvs(der)
    except ValueError:
        return apply_der_op(der, ("flip", a, b, blob))
    nodes = list(walk(tree))
    siblings, index = nodes[a % len(nodes)]
    node = siblings[index]
    if kind == "length":
        correct = len(tlv_content(node))
        choices = (*_BAD_LENGTHS, der_length(max(0, correct - 1)), der_length(correct + 1))
        node.bad_length = choices[b % len(choices)]
    elif kind == "delete":
        del siblings[index]
    elif kind == "duplicate":
        siblings.insert(index, parse_tlvs(encode_tlv(node))[0])
    elif kind == "swap":
        other = b % len(siblings)
        siblings[index], siblings[other] = siblings[other], siblings[index]
    elif kind == "tag":
        new_tag = bytes([b & 0xFF]) if (b & 0x1F) != 0x1F else b"\x1f\x81\x00"
        node.tag = new_tag
    elif kind == "content":
        node.children, node.wraps = None, None
        node.content = blob if b % 3 else bytes(b % 97)
    elif kind == "graft":  # type confusion: put a copy of another subtree here
        donor_siblings, donor_index = nodes[b % len(nodes)]
        siblings[index] = parse_tlvs(encode_tlv(donor_siblings[donor_index]))[0]
    elif kind == "empty":
        if node.children is not None:
            node.children = []
        else:
            node.content = b""
    elif kind == "wrap":  # bury the node in SEQUENCEs (recursion in parsers)
        for _ in range(1 + b % 64):
            node = Tlv(b"\x30", children=[node])
        siblings[index] = node
    elif kind == "integer":  # odd INTEGER contents (serials, versions, RSA values)
        ints = [(s, i) for s, i in nodes if s[i].tag == b"\x02"]
        if ints:
            s, i = ints[b % len(ints)]
            s[i].content = _INTEGERS[(b >> 4) % len(_INTEGERS)] or blob
    else:
        raise AssertionError(kind)
    return b"".join(encode_tlv(n) for n in tree)


def der_ops() -> st.SearchStrategy[list[DerOp]]:
    op = st.tuples(
        st.sampled_from(DER_KINDS),
        st.integers(0, 2**16),
        st.integers(0, 2**16),
        st.binary(max_size=24),
    )
    return st.lists(op, min_size=1, max_size=3)


def random_der_op(rng: random.Random) -> DerOp:
    return (
        rng.choice(DER_KINDS),
        rng.randrange(2**16),
        rng.randrange(2**16),
        rng.randbytes(rng.choice((0, 1, 4, 24))),
    )


def apply_all(data: bytes, ops: Sequence[tuple], apply: Callable[[bytes, tuple], bytes]) -> bytes:
    for op in ops:
        data = apply(data, op)
    return data


# ------------------------------------------------------------------ the generic oracle tests


SEED_NAMES = [
    "detached", "opaque", "detached-ec-alternative", "detached-two-signers",
    "detached-protected", "opaque-pss", "nested-mixed", "enveloped-detached",
    "enveloped-opaque", "certs-only", "plain",
]
TEMPLATE_NAMES = [n for n in SEED_NAMES if n not in ("nested-mixed", "plain")]


def _template(name: str) -> CmsTemplate:
    return next(t for t in corpus().templates if t.name == name)


@fuzz_settings(1200)
@given(name=st.sampled_from(SEED_NAMES), ops=byte_ops())
def test_byte_mutations(name: str, ops: list[ByteOp]) -> None:
    c = corpus()
    c.harness.check(apply_all(c.messages[name], ops, apply_byte_op))


@fuzz_settings(1000)
@given(name=st.sampled_from(SEED_NAMES), ops=header_ops())
def test_header_mutations(name: str, ops: list[HeaderOp]) -> None:
    c = corpus()
    c.harness.check(apply_all(c.messages[name], ops, apply_header_op))


@fuzz_settings(1500)
@given(name=st.sampled_from(TEMPLATE_NAMES), ops=der_ops())
def test_cms_mutations(name: str, ops: list[DerOp]) -> None:
    template = _template(name)
    der = apply_all(template.der, ops, apply_der_op)
    corpus().harness.check(template.build(der))


@fuzz_settings(500)
@given(
    name=st.sampled_from(TEMPLATE_NAMES),
    header=header_ops(),
    der=der_ops(),
    raw=st.lists(st.tuples(st.sampled_from(BYTE_KINDS), st.integers(0, 2**32),
                           st.integers(0, 2**20), st.binary(max_size=4)), max_size=2),
)
def test_combined_mutations(
    name: str, header: list[HeaderOp], der: list[DerOp], raw: list[ByteOp]
) -> None:
    template = _template(name)
    message = template.build(apply_all(template.der, der, apply_der_op))
    message = apply_all(apply_all(message, header, apply_header_op), raw, apply_byte_op)
    corpus().harness.check(message)


@fuzz_settings(300)
@given(
    name=st.sampled_from(["detached", "opaque"]),
    header=st.lists(st.tuples(st.sampled_from(HEADER_KINDS), st.integers(0, 64),
                              st.integers(0, 2**12)), max_size=2),
    raw=st.lists(st.tuples(st.sampled_from(BYTE_KINDS), st.integers(0, 2**32),
                           st.integers(0, 2**20), st.binary(max_size=4)), max_size=2),
    der=st.lists(st.tuples(st.sampled_from(DER_KINDS), st.integers(0, 2**16),
                           st.integers(0, 2**16), st.binary(max_size=16)), max_size=2),
)
def test_mutated_inner_layer_of_encrypted_message(
    name: str, header: list[HeaderOp], raw: list[ByteOp], der: list[DerOp]
) -> None:
    """What comes out of a successful decryption is as hostile as the outside."""
    c = corpus()
    entity = c.inner_entities[name]
    if der:
        inner = cms_template(name, entity)
        entity = inner.build(apply_all(inner.der, der, apply_der_op))
    entity = apply_all(apply_all(entity, header, apply_header_op), raw, apply_byte_op)
    c.harness.check(envelope(entity, c.harness.pki))


@fuzz_settings(300)
@given(index=st.integers(0, 2**32), bit=st.integers(0, 7), region=st.integers(0, 2))
def test_any_bit_flip_in_signed_content_is_detected(index: int, bit: int, region: int) -> None:
    """One flipped bit in the signed entity can never leave a clear-signed
    message signed/verified (canonicalisation only rewrites bare LF)."""
    c = corpus()
    name, start, end = c.signed_regions[region % len(c.signed_regions)]
    message = c.messages[name]
    pos = start + index % (end - start)
    mutated = message[:pos] + bytes([message[pos] ^ (1 << bit)]) + message[pos + 1 :]
    verdict = c.harness.check(mutated)
    assert verdict.status is not Status.SIGNED_VERIFIED, (name, pos, verdict)


FOREIGN_FROM = (
    b"mallory@example.net", b"alice@example.com, bob@example.com", b"", b"<>",
    b"undisclosed-recipients:;", b"alice", b"alice@@example.com", b"alice@example.org",
    b"alice@example.com.evil", b"alice@\xff",
)


@fuzz_settings(150)
@given(name=st.sampled_from(TEMPLATE_NAMES), value=st.sampled_from(FOREIGN_FROM),
       add=st.booleans())
def test_foreign_from_is_never_verified(name: str, value: bytes, add: bool) -> None:
    """A From that is not the signer's address (instead of, or next to, the
    real one) must not leave the message verified."""
    c = corpus()
    line = b"From: " + value + b"\r\n"
    message = c.messages[name]
    mutated = line + message if add else _FROM_LINE.sub(line, message, count=1)
    verdict = c.harness.check(mutated)
    assert not (verdict.status and verdict.status.is_verified), (name, value, verdict)


# ------------------------------------------------------------------ seeded plain loop

LOOP_ITERATIONS = int(4000 * SCALE)


def test_seeded_random_mutation_loop() -> None:
    """The same mutators driven by ``random.Random(1234)``: no shrinking, but
    cheaper per example than hypothesis, so it covers more combinations."""
    c = corpus()
    rng = random.Random(1234)
    names = list(c.messages)
    for iteration in range(LOOP_ITERATIONS):
        layer = rng.choice(("bytes", "headers", "cms", "cms", "mixed"))
        ops: dict[str, list[tuple]] = {"bytes": [], "headers": [], "cms": []}
        if layer in ("cms", "mixed"):
            template = rng.choice(c.templates)
            ops["cms"] = [random_der_op(rng) for _ in range(rng.randint(1, 3))]
            message = template.build(apply_all(template.der, ops["cms"], apply_der_op))
            name = template.name
        else:
            name = rng.choice(names)
            message = c.messages[name]
        if layer in ("headers", "mixed"):
            ops["headers"] = [random_header_op(rng) for _ in range(rng.randint(1, 3))]
        if layer in ("bytes", "mixed"):
            ops["bytes"] = [random_byte_op(rng) for _ in range(rng.randint(1, 4))]
        message = apply_all(message, ops["headers"], apply_header_op)
        message = apply_all(message, ops["bytes"], apply_byte_op)
        try:
            c.harness.check(message)
        except AssertionError as exc:
            raise AssertionError(f"iteration {iteration}, seed {name}, ops {ops}: {exc}") from exc


# ------------------------------------------------------------------ huge and deep inputs

_TOP = b"From: alice@example.com\r\nTo: bob@example.com\r\nMIME-Version: 1.0\r\n"


def _nested(depth: int, distinct: bool) -> bytes:
    def name(i: int) -> bytes:
        return b"b%d" % i if distinct else b"b"

    opens = b"".join(
        b'Content-Type: multipart/mixed; boundary="' + name(i) + b'"\r\n\r\n--' + name(i)
        + b"\r\n" for i in range(depth)
    )
    closes = b"".join(b"\r\n--" + name(i) + b"--" for i in reversed(range(depth)))
    return _TOP + opens + b"Content-Type: text/plain\r\n\r\nleaf\r\n" + closes + b"\r\n"


def _nested_around_signed(depth: int) -> bytes:
    signed = corpus().messages["detached"]
    entity = signed[signed.index(b"Content-Type: multipart/signed") :]
    for i in range(depth):
        entity = (b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
                  + entity + b"\r\n--n%d--\r\n" % i)
    return _TOP + entity


def _headers_then(message: bytes, block: bytes) -> bytes:
    return block + message


def _big_inputs() -> dict[str, Callable[[], bytes]]:
    def signed() -> bytes:
        return corpus().messages["detached"]

    def many_parts(n: int) -> bytes:
        return (_TOP + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
                + b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * n + b"--p--\r\n")

    def many_empty_delimiters(n: int) -> bytes:
        return _TOP + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + b"--p\r\n" * n

    return {
        "nested-5000-distinct-boundaries": lambda: _nested(5000, True),
        "nested-5000-same-boundary": lambda: _nested(5000, False),
        "nested-100-around-signed": lambda: _nested_around_signed(100),
        "headers-1MB-fields": lambda: _headers_then(
            signed(), b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"v" * 60) for i in range(14_000))),
        "headers-100000-lines": lambda: _headers_then(signed(), b"X: y\r\n" * 100_000),
        "headers-1000-fields": lambda: _headers_then(signed(), b"Received: x\r\n" * 990),
        "header-2MB-folded": lambda: _headers_then(
            signed(), b"Subject: x" + b"\r\n folded" * 250_000 + b"\r\n"),
        "header-2MB-one-line": lambda: _headers_then(signed(), b"Subject: " + b"s" * 2_000_000
                                                     + b"\r\n"),
        "header-2MB-no-body": lambda: b"Subject: " + b"s" * 2_000_000,
        "header-2MB-LF-folded": lambda: _headers_then(
            signed().replace(b"\r\n", b"\n"), b"Subject: x" + b"\n f" * 700_000 + b"\n"),
        "parts-100000": lambda: many_parts(100_000),
        "parts-100000-empty": lambda: many_empty_delimiters(100_000),
        "boundary-prefix-storm": lambda: (
            _TOP + b'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
            + b"\r\n--px" * 300_000 + b"\r\n--p--\r\n"),
        "cr-only-2MB": lambda: signed().replace(b"\r\n", b"\r") + b"\r" * 2_000_000,
        "signature-part-2MB-base64": lambda: signed().replace(
            b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n",
            b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
            + b"QUFB" * 500_000 + b"\r\n"),
        "cms-deep-sequence-nesting": lambda: _template("opaque").build(
            _deep_sequences(20_000)),
        "cms-2000-signer-infos": lambda: _template("detached").build(
            _many_signer_infos(2000)),
    }


def _deep_sequences(depth: int) -> bytes:
    der = b"\x05\x00"
    for _ in range(depth):
        der = b"\x30" + der_length(len(der)) + der
    oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"  # signedData
    explicit = b"\xa0" + der_length(len(der)) + der
    body = oid + explicit
    return b"\x30" + der_length(len(body)) + body


def _many_signer_infos(count: int) -> bytes:
    """The detached seed's SignedData with its SignerInfo repeated ``count`` times."""
    tree = parse_tlvs(_template("detached").der)
    signed_data = tree[0].children[1].children[0]  # ContentInfo [0] SignedData
    signer_infos = signed_data.children[-1]
    signer_infos.children = signer_infos.children * count
    return encode_tlv(tree[0])


BIG_INPUTS = _big_inputs()


@pytest.mark.parametrize("name", sorted(BIG_INPUTS))
def test_huge_or_deep_input_is_bounded(name: str) -> None:
    message = BIG_INPUTS[name]()
    corpus().harness.check(message)


# ------------------------------------------------------------------ fuzz findings
#
# Minimal reproducers of what these fuzzers found are data: tests/vectors/fuzz/,
# one file each, in a directory named after the verdict expected (its README
# says what each one found).

FINDINGS = Path(__file__).parent / "vectors" / "fuzz"
#: When the reproducers were made with the PKI whose root is trust-anchor.pem.
FINDINGS_MOMENT = datetime(2026, 12, 3, 13, 50, tzinfo=UTC)


def _unsigned(verdict: Verdict) -> None:
    assert verdict.status in (None, Status.UNKNOWN), verdict


def _signed_failed(verdict: Verdict) -> None:
    assert verdict.status is Status.SIGNED_FAILED, verdict


def _anything(verdict: Verdict) -> None:
    pass


EXPECTED_VERDICT: dict[str, Callable[[Verdict], None]] = {
    "unsigned": _unsigned, "signed-failed": _signed_failed, "any": _anything,
}


@functools.cache
def findings_harness() -> Harness:
    """The corpus harness, but trusting the findings' PKI as of when they were made."""
    _, _, der = asn1_pem.unarmor((FINDINGS / "trust-anchor.pem").read_bytes())
    trust = TrustStore((asn1_x509.Certificate.load(der),))
    return replace(corpus().harness, verifier=Verifier(trust, clock=lambda: FINDINGS_MOMENT))


def read_vector(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


FINDING_FILES = sorted(FINDINGS.glob("*/*.eml*"))


def test_every_finding_directory_names_a_verdict() -> None:
    assert FINDING_FILES
    assert {path.parent.name for path in FINDING_FILES} <= set(EXPECTED_VERDICT)


@pytest.mark.parametrize("path", FINDING_FILES, ids=lambda path: path.name.partition(".")[0])
def test_fuzz_finding_stays_fixed(path: Path) -> None:
    EXPECTED_VERDICT[path.parent.name](findings_harness().check(read_vector(path)))


# ------------------------------------------------------------------ transport changes

TRANSPORT_CHANGES: dict[str, Callable[[bytes], bytes]] = {
    "LF line endings": lambda m: m.replace(b"\r\n", b"\n"),
    "trace header fields added": lambda m: (
        b"Received: from mx.example.net by mx.example.com; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        b"X-Spam-Status: No\r\n" + m),
    "both": lambda m: (b"Received: by mx.example.com\n" + m.replace(b"\r\n", b"\n")),
}


@pytest.mark.parametrize("change", list(TRANSPORT_CHANGES))
@pytest.mark.parametrize("name", SEED_NAMES)
def test_transport_changes_keep_the_verdict(name: str, change: str) -> None:
    """What MTAs legitimately do to a message (LF line endings on local
    delivery, prepended trace fields) must not change its status."""
    c = corpus()
    original = c.harness.check(c.messages[name])
    changed = c.harness.check(TRANSPORT_CHANGES[change](c.messages[name]))
    assert changed.status == original.status, (name, change, changed)

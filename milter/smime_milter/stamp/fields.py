"""Header values that carry a verdict inside the message.

Two fields are written at delivery:

* ``Authentication-Results`` (RFC 8601 syntax) with the ``smime`` method of
  RFC 7281, one resinfo per SignerInfo, so filters and MUAs that already read
  A-R see the S/MIME outcome;
* ``SMIME-Status-At-Delivery``: the RFC 9219 ``smimeStatusAtDelivery`` token
  and the id of the store record that holds the full verdict.

Everything here is pure and total: any Verdict, however odd, becomes a value
that is 7-bit ASCII, has no line break other than ``"\\n\\t"`` folding, and
parses back to exactly one resinfo per reported signer. Certificate content
(addresses, DNs) and error texts are attacker-controlled, so every dynamic
piece goes through exactly one of three encoders: a strict RFC 2045 token, a
quoted-string whose content is percent-encoded to printable ASCII, or a
sanitised comment.

Folding uses a bare LF followed by a tab: libmilter's smfi_addheader and
smfi_chgheader document that a multi-line value is written with "\\n" plus
whitespace and no CR, which the MTA turns into CRLF itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from itertools import islice
from urllib.parse import unquote

from cryptography import x509

from smime_milter.mail import LINE_WIDTH, Address, fold_words, parse_address
from smime_milter.model import SignerResult, Status, Verdict
from smime_milter.stamp.lexer import (
    CFWS_SPACE,
    FieldSyntaxError,
    read_quoted,
    skip_cfws,
    unfold,
    word_end,
)

STATUS_HEADER = "SMIME-Status-At-Delivery"
AR_HEADER = "Authentication-Results"

# RFC 7281 result codes a Verdict can map to. ``temperror`` is not among
# them: a Verdict exists only when verification ran to its end, and a
# transient failure (resources, storage) yields no Verdict at all; the
# caller tempfails the message or reports that failure itself.
PASS = "pass"
FAIL = "fail"
POLICY = "policy"
NEUTRAL = "neutral"
PERMERROR = "permerror"
NONE = "none"

#: A reason comment is a hint for humans, not a log.
MAX_COMMENT = 100
#: One resinfo per signer, but a hostile message with thousands of
#: SignerInfos must not produce a huge header.
MAX_RESULTS = 10
#: Longest quoted property (quotes included); keeps every line far below
#: RFC 5322's 998-character limit without folding inside quoted-strings.
MAX_QUOTED = 600
#: RFC 5321 §4.5.3.1.3: no usable address is longer.
MAX_IDENTIFIER = 254
#: RFC 5280 §4.1.2.2 allows 20 octets; leave room for sloppy CAs.
MAX_SERIAL_BITS = 512

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_TOKEN_EXTRA = frozenset("!#$%&'*+-.^_`{|}~")
_BARE_LOCAL = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")
_BARE_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_IMAP_PART = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8}){0,31}")
_COMMENT_MAP = str.maketrans({"(": "[", ")": "]", "\\": "/", '"': "'", ";": ","})
_STATUS_TOKENS: dict[str, Status | None] = {"none": None, **{s.value: s for s in Status}}

_DEFAULT_REASON = {
    FAIL: "signature not verified",
    POLICY: "signer not accepted for this message",
    NEUTRAL: "S/MIME content could not be verified",
    PERMERROR: "no usable signature",
}


# --- result codes --------------------------------------------------------------


def smime_result(signer: SignerResult, verdict: Verdict) -> str:
    """The RFC 7281 result for one SignerInfo, first matching rule wins.

    * verdict status None -> ``none``: RFC 7281 §3 "the message was not signed".
    * status ``unknown`` or ``signed`` (not checked) -> ``neutral``: §3's
      catch-all for signatures that could not be processed; ``none`` would
      claim "not signed", which is false for e.g. encrypted+signed mail.
    * signature bad and no signer certificate found -> ``permerror``: §3,
      verification impossible and a retry will not change that.
    * signature or digest bad -> ``fail``: §3, the check itself failed.
    * signature good, chain untrusted/expired/revoked/wrong key usage ->
      ``fail``: verification per RFC 8551/8550 includes path validation, and
      RFC 7281's own example is "smime=fail (certificate is revoked by CRL)".
    * signer not bound to From -> ``policy``: §3, the signature is good but
      not acceptable to the ADMD; RFC 9219 §4.1 calls a From mismatch a
      "policy-related decision".
    * leftover errors with every check passed -> ``neutral`` (§3 catch-all).
    * signer fine but the verdict failed (signature covers one MIME part
      only, outer From differs from the protected one) -> ``policy``: the
      signature verified, but what it covers is not acceptable as this
      message's signature; never ``pass``.
    * otherwise -> ``pass``.
    """
    status = verdict.status
    if status is None:
        return NONE
    if status in (Status.UNKNOWN, Status.SIGNED):
        return NEUTRAL
    if not signer.signature_ok:
        return PERMERROR if signer.certificate is None else FAIL
    if not signer.chain_ok:
        return FAIL
    if not signer.from_match:
        return POLICY
    if signer.errors:
        return NEUTRAL
    if not status.is_verified:
        return POLICY
    return PASS


# --- Authentication-Results ------------------------------------------------------


def authentication_results(authserv_id: str, verdict: Verdict) -> str:
    """The Authentication-Results value (no field name), folded with "\\n\\t".

    Unsigned mail gets ``smime=none``; status ``unknown`` gets one
    ``smime=neutral`` with the reason as a comment (see smime_result); a
    failed verdict without SignerInfos (unparseable CMS, missing signature
    part) gets one ``smime=permerror``. Otherwise one resinfo per signer,
    at most MAX_RESULTS of them.
    """
    status = verdict.status
    part = _part_property(verdict)
    if status is None:
        resinfos = [[f"smime={NONE}"]]
    elif status in (Status.UNKNOWN, Status.SIGNED):
        resinfos = [[f"smime={NEUTRAL}", _comment(_unverified_reason(verdict), NEUTRAL), *part]]
    elif not verdict.signers:
        result = PERMERROR if status.is_failed else NEUTRAL
        texts = verdict.errors or ("no signer information",)
        resinfos = [[f"smime={result}", _comment(texts, result), *part]]
    else:
        resinfos = [_signer_resinfo(signer, verdict, part)
                    for signer in verdict.signers[:MAX_RESULTS]]
        hidden = len(verdict.signers) - MAX_RESULTS
        if hidden > 0:
            resinfos[-1].append(f"({hidden} more signers not shown)")
    return _fold(_authserv_value(authserv_id), resinfos)


def unexamined_results(authserv_id: str, result: str, reason: str) -> str:
    """The value for a message the milter did not examine (too large, or its
    own machinery failed and policy said deliver anyway): one result with the
    reason as a comment, quoted and cleaned like every other value."""
    return f"{_authserv_value(authserv_id)}; smime={result} {_comment((reason,), result)}"


def _unverified_reason(verdict: Verdict) -> tuple[str, ...]:
    """Why S/MIME content was not checked: the engine's notes, else the layer."""
    if verdict.notes:
        return verdict.notes
    if verdict.status is Status.SIGNED:
        return ("signature not yet verified",)
    return (f"S/MIME layer {verdict.layer} not verifiable",) if verdict.layer else ()


def _signer_resinfo(signer: SignerResult, verdict: Verdict, part: list[str]) -> list[str]:
    result = smime_result(signer, verdict)
    atoms = [f"smime={result}"]
    if result != PASS:
        # A sound signer in a failed verdict is blamed on the message-level errors.
        own = signer.errors if not (result == POLICY and signer.ok) else ()
        atoms.append(_comment(own or verdict.errors or (), result))
    identifier = _identifier(signer, verdict)
    if identifier is not None:
        atoms.append(f"body.smime-identifier={identifier}")
    return [*atoms, *part, *_certificate_properties(signer)]


def _part_property(verdict: Verdict) -> list[str]:
    """RFC 7281 ``body.smime-part``: the IMAP part number (RFC 3501 section-part)."""
    part = verdict.signed_part
    if part is not None and _IMAP_PART.fullmatch(part):
        return [f"body.smime-part={part}"]
    return []


def _identifier(signer: SignerResult, verdict: Verdict) -> str | None:
    """The signer's address: the one bound to From if any, else the first.

    A plain ASCII address is written bare (RFC 8601 allows an addr-spec); the
    bare form is restricted to characters no A-R parser misreads. Anything
    else becomes a percent-encoded quoted-string: the domain is already an
    IDNA A-label, so only exotic local parts end up there.
    """
    candidates = [(email, _address(email)) for email in islice(signer.emails, 50)]
    if not candidates:
        return None
    wanted = _address(verdict.from_address) if verdict.from_address else None
    raw, address = next(
        (c for c in candidates
         if wanted is not None and c[1] is not None
         and c[1].matches(wanted, casefold_local=True)),
        candidates[0],
    )
    if (address is not None and _BARE_LOCAL.fullmatch(address.local)
            and _BARE_DOMAIN.fullmatch(address.domain)):
        return address.text if len(address.text) <= MAX_IDENTIFIER else None
    text = address.text if address is not None else raw.strip()
    if not text or len(text) > MAX_QUOTED:
        return None
    quoted = _quoted(text)
    return quoted if len(quoted) <= MAX_QUOTED else None


def _address(text: str) -> Address | None:
    try:
        return parse_address(text)
    except ValueError:  # IDNA corner cases: an unusable address, not a crash
        return None


def _certificate_properties(signer: SignerResult) -> list[str]:
    """``body.smime-serial`` and ``body.smime-issuer``, both or neither.

    RFC 7281 uses the pair to name the signing certificate, so one without
    the other is useless. The serial is written in hexadecimal with an even
    number of digits, the way certificate viewers and ``openssl x509
    -serial`` show it (a decimal rendering of a 20-octet serial runs to 49
    digits and matches nothing an admin can look up).
    """
    serial, issuer = signer.serial, _rfc4514_issuer(signer)
    if (serial is None or not issuer or len(issuer) > MAX_QUOTED
            or abs(serial).bit_length() > MAX_SERIAL_BITS):
        return []
    digits = format(abs(serial), "X")
    digits = ("-" if serial < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)
    quoted = _quoted(issuer)
    if len(quoted) > MAX_QUOTED:
        return []
    return [f"body.smime-serial={digits}", f"body.smime-issuer={quoted}"]


def _rfc4514_issuer(signer: SignerResult) -> str:
    """The issuer as an RFC 4514 string ("CN=Example CA,O=Example"), which tools
    can match, rather than the display form; falls back to the latter."""
    if signer.certificate is not None:
        issuer = _issuer_of(signer.certificate)
        if issuer is not None:
            return issuer
    return signer.issuer


@functools.lru_cache(maxsize=1024)
def _issuer_of(certificate: bytes) -> str | None:
    """Parsing a certificate for its issuer once per signer, not per message
    (a few signers sign most of the mail)."""
    try:
        return x509.load_der_x509_certificate(certificate).issuer.rfc4514_string()
    except ValueError:
        return None


def _fold(head: str, resinfos: list[list[str]]) -> str:
    """One line when it fits, else the authserv-id, then each resinfo on its own
    line(s), breaking between atoms only (never inside a quoted-string)."""
    flat = head + "; " + "; ".join(" ".join(atoms) for atoms in resinfos)
    if len(AR_HEADER) + 2 + len(flat) <= LINE_WIDTH:
        return flat
    lines = [head + ";"]
    for index, atoms in enumerate(resinfos):
        if index < len(resinfos) - 1:
            atoms = [*atoms[:-1], atoms[-1] + ";"]
        first, *rest = fold_words(atoms, LINE_WIDTH - 1, continuation="\t")
        lines += ["\t" + first, *rest]
    return "\n".join(lines)


# --- the three encoders ------------------------------------------------------------


def _is_token(text: str) -> bool:
    """RFC 2045 token: printable ASCII without tspecials."""
    return bool(text) and all("!" <= c <= "~" and c not in _TSPECIALS for c in text)


def _percent(text: str) -> str:
    """Lossless 7-bit form: '%', controls and non-ASCII become %XX of their
    UTF-8 octets (RFC 3986 §2.1). RFC 2047 encoded-words are not allowed in
    quoted-strings, and dropping characters would let "Ex\u00e4mple CA" pass
    for "Example CA". Lone surrogates (undecodable bytes) survive via
    surrogatepass."""
    out: list[str] = []
    for char in text:
        if char == "%" or not " " <= char <= "~":
            out.extend(f"%{octet:02X}" for octet in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


def _quoted(text: str) -> str:
    """An RFC 5322 quoted-string of the percent-encoded text."""
    escaped = _percent(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _value(text: str) -> str:
    """RFC 2045 ``value``: a bare token when safe, else a quoted-string. Bare
    values never contain '%', so "quoted means percent-encoded" holds."""
    return text if _is_token(text) and "%" not in text else _quoted(text)


def _comment(texts: Iterable[str], result: str) -> str:
    """A short ``(reason)`` for humans (RFC 8601 gives comments no meaning).

    Lossy on purpose: non-ASCII becomes '?', whitespace and controls one
    space; parentheses, backslashes and quotes are swapped for look-alikes so
    nothing can close the comment early, and ';' for ',' so even parsers that
    split on ';' without honouring comments see no extra resinfo.
    """
    joined = ", ".join(str(text)[: MAX_COMMENT * 2] for text in islice(texts, 5))
    ascii_only = "".join(
        c if " " <= c <= "~" else "?" if c > "\x7f" else " " for c in joined
    ).translate(_COMMENT_MAP)
    clean = " ".join(ascii_only.split()) or _DEFAULT_REASON.get(result, result)
    if len(clean) > MAX_COMMENT:
        clean = clean[: MAX_COMMENT - 3].rstrip() + "..."
    return f"({clean})"


def _authserv_text(authserv_id: str) -> str:
    """Our authserv-id as written: printable ASCII (anything else becomes '?',
    a configuration mistake that must not break the header)."""
    return "".join(c if " " <= c <= "~" else "?" for c in authserv_id)


def _authserv_value(authserv_id: str) -> str:
    text = _authserv_text(authserv_id)
    if _is_token(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- SMIME-Status-At-Delivery ----------------------------------------------------------


def status_header(status: Status | None, record_id: str) -> str:
    """``<RFC 9219 token or "none">; record=<record id>``."""
    token = status.value if status is not None else NONE
    return f"{token}; record={_value(record_id)}"


def parse_status_header(value: str) -> tuple[Status | None, str | None]:
    """Inverse of status_header: (status, record id or None when absent).

    Tolerates folding, comments and unknown parameters; raises
    FieldSyntaxError for an unknown status, a malformed parameter or a
    repeated one.
    """
    text = unfold(value)
    pos = skip_cfws(text, 0)
    end = word_end(text, pos)
    word = text[pos:end].lower()
    if word not in _STATUS_TOKENS:
        raise FieldSyntaxError(f"unknown S/MIME status {text[pos:end]!r}")
    status, record, seen = _STATUS_TOKENS[word], None, set()
    pos = skip_cfws(text, end)
    while pos < len(text):
        if text[pos] != ";":
            raise FieldSyntaxError(f"expected ';' at offset {pos}")
        pos = skip_cfws(text, pos + 1)
        if pos == len(text):
            break  # a trailing ';' is harmless
        end = word_end(text, pos)
        name = text[pos:end].lower()
        if not _is_token(name) or name in seen:
            raise FieldSyntaxError(f"bad or repeated parameter {text[pos:end]!r}")
        seen.add(name)
        pos = skip_cfws(text, end)
        if pos >= len(text) or text[pos] != "=":
            raise FieldSyntaxError(f"parameter {name!r} has no value")
        param, pos = _read_value(text, skip_cfws(text, pos + 1))
        pos = skip_cfws(text, pos)
        if name == "record":
            record = param
    return status, record


def _read_value(text: str, pos: int) -> tuple[str, int]:
    if pos < len(text) and text[pos] == '"':
        content, end = read_quoted(text, pos)
        return unquote(content, errors="surrogatepass"), end
    end = word_end(text, pos)
    if not _is_token(text[pos:end]):
        raise FieldSyntaxError(f"bad parameter value at offset {pos}")
    return text[pos:end], end


# --- authserv-id of foreign headers ------------------------------------------------------


def authserv_id_of(value: str | bytes) -> str | None:
    """The authserv-id an Authentication-Results value claims, or None.

    RFC 8601 §2.2: ``[CFWS] authserv-id`` where authserv-id is a ``value``
    (token or quoted-string). Leading whitespace, folding and nested comments
    are skipped; a quoted id is unescaped; a token ends at whitespace, ';' or
    '('. Bytes may be any encoding: undecodable octets never match an ASCII id.
    """
    text = unfold(value.decode("utf-8", "surrogateescape") if isinstance(value, bytes)
                  else value)
    try:
        pos = skip_cfws(text, 0)
        if pos < len(text) and text[pos] == '"':
            return read_quoted(text, pos)[0]
    except FieldSyntaxError:
        return None
    end = pos
    while end < len(text) and text[end] not in ";(" + CFWS_SPACE:
        end += 1
    word = text[pos:end]
    return word if _is_token(word) else None


def claims_authserv_id(value: str | bytes, authserv_id: str) -> bool:
    """Whether a (possibly forged) A-R value claims our authserv-id.

    Parsed ids compare case-insensitively (they are host names). An
    unparseable value still counts as ours when, after whitespace, control
    characters, well-formed comments and stray quotes, it plainly begins with
    our id followed by something that cannot continue a token: lenient MUAs
    display "example.com"... or "example.com/x; dkim=pass" as coming from
    example.com, so such a forgery must not survive by being malformed. A
    value that does not begin with our id is left alone: deleting other
    servers' results on a guess would lose information.
    """
    ours = _authserv_text(authserv_id).lower()
    found = authserv_id_of(value)
    if found is not None:
        return found.lower() == ours
    text = unfold(value.decode("utf-8", "surrogateescape") if isinstance(value, bytes)
                  else value)
    try:
        pos = skip_cfws(text, 0)
    except FieldSyntaxError:
        return False  # all comment to a conforming reader: it names nobody
    while pos < len(text) and (text[pos] == '"' or text[pos] <= " " or text[pos] == "\x7f"):
        pos += 1
    if not ours or text[pos : pos + len(ours)].lower() != ours:
        return False
    after = text[pos + len(ours): pos + len(ours) + 1]
    return not after or not (after.isalnum() or after in _TOKEN_EXTRA)


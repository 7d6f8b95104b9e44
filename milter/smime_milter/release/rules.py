"""MMHS draft-and-release: which messages need release, and are they released?

A message composed by one user may only leave once enough authorizing users
(releasing officers) approved it: they are listed in the single
``MMHS-Authorizing-Users`` field (draft-melnikov-mmhs-authorizing-users,
RFC 7912) and each proves it with an S/MIME countersignature on the
originator's signature (RFC 5652 §11.4) or with a SignerInfo of their own
over the content (how a message the originator did not sign is authorized).
Whoever drafted the message (Sender, else From) cannot authorize it.

Pure functions over the engine's Verdict and the header fields: the worker
processes already checked every signature and countersignature and
validated every certificate; this module only applies the rules. It fails
closed: anything it cannot prove counts as not authorized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from smime_milter.mail import LINE_WIDTH, folded, mime
from smime_milter.model import ReleaseDecision, SignerResult, Verdict

AUTHORIZING_USERS_HEADER = "MMHS-Authorizing-Users"
#: Our record of the envelope recipients a diverted message was meant for.
ORIGINAL_RECIPIENTS_HEADER = "MMHS-Original-Recipients"
#: Our stamp: released, or held and why.
RELEASE_STATUS_HEADER = "SMIME-Release-Status"
#: ``divert_to`` value that puts the message on Postfix's hold queue instead.
HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ReleaseRule:
    """Which messages need release, who may release them, and where unreleased
    ones go. A rule applies when every selector it sets matches (several
    values of one selector: any of them); ``all`` applies it to every message."""

    name: str
    releasers: tuple[str, ...]
    divert_to: str
    required: int = 1
    all: bool = False
    #: Addresses (``user@example.mil``) or domains (``example.mil``, with subdomains).
    senders: tuple[str, ...] = ()
    recipient_domains: tuple[str, ...] = ()
    #: Postfix ``{daemon_name}`` values (``milter_macro_daemon_name``).
    daemons: tuple[str, ...] = ()
    #: Postfix ``{daemon_port}`` values (needs the macro in milter_connect_macros).
    ports: tuple[int, ...] = ()
    #: SHA-256 of CA certificates; when set, a releaser's validated path must
    #: contain one of them ("holds a certificate issued by CA X").
    releaser_cas: tuple[bytes, ...] = ()

    @property
    def holds(self) -> bool:
        """Unreleased messages are quarantined (hold queue), not redirected."""
        return self.divert_to == HOLD


@dataclass(frozen=True, slots=True)
class MessageContext:
    """What rule selection looks at. Sender selectors match the envelope
    sender *and* every From/Sender header address: matching on either keeps a
    protected user from slipping out under another envelope sender."""

    envelope_sender: str
    header_senders: tuple[str, ...]
    recipients: tuple[str, ...]
    daemon_name: str | None = None
    daemon_port: int | None = None


def select_rule(rules: Sequence[ReleaseRule], context: MessageContext) -> ReleaseRule | None:
    """The first rule that applies (order as in the policy file, like Postfix
    access tables), or None when the message needs no release."""
    for rule in rules:
        if _applies(rule, context):
            return rule
    return None


def _applies(rule: ReleaseRule, context: MessageContext) -> bool:
    if rule.all:
        return True
    checks: list[bool] = []
    if rule.senders:
        candidates = (context.envelope_sender, *context.header_senders)
        checks.append(any(mime.address_in(a, rule.senders) for a in candidates if a))
    if rule.recipient_domains:
        checks.append(any(
            mime.domain_in(r.rpartition("@")[2], rule.recipient_domains) for r in context.recipients
        ))
    if rule.daemons:
        checks.append(context.daemon_name in rule.daemons)
    if rule.ports:
        # Unknown port (macro not sent): fail closed, the rule applies.
        checks.append(context.daemon_port is None or context.daemon_port in rule.ports)
    return bool(checks) and all(checks)


# --------------------------------------------------------------------------- assessment


@dataclass(frozen=True, slots=True)
class _Proof:
    """A signature or countersignature someone made on this message."""

    kind: str  # "countersignature" or "signature"
    signer: SignerResult


def assess(
    rule: ReleaseRule,
    headers: Sequence[tuple[str, str]],
    verdict: Verdict | None,
    *,
    casefold_local_part: bool = False,
) -> ReleaseDecision:
    """Is this message released under ``rule``? ``verdict`` is the engine's
    verdict for the message as received (None: it could not be examined)."""
    reasons: list[str] = []
    listed = _listed_users(headers, reasons)
    if listed is None:
        return ReleaseDecision(rule.name, False, rule.required, (), tuple(reasons))
    proofs = _proofs(verdict, reasons)
    if reasons:  # the message itself cannot carry an authorization
        return ReleaseDecision(rule.name, False, rule.required, (), tuple(reasons))
    composer = drafter(headers)
    authorized: list[str] = []
    notes: list[str] = []
    for user in listed:
        problem = (
            f"{user.text}: the originator cannot authorize their own message"
            if composer is not None and user.matches(composer, casefold_local=casefold_local_part)
            else _authorization_problem(rule, user, proofs, casefold_local_part)
        )
        if problem is None:
            authorized.append(user.text)
        else:
            reasons.append(problem)
    for proof in proofs:
        if not any(_proves(proof, user, casefold_local_part) for user in listed):
            who = ", ".join(proof.signer.emails) or "an unidentified signer"
            if proof.kind == "countersignature":
                notes.append(f"countersignature by {who}, who is not listed in "
                             f"{AUTHORIZING_USERS_HEADER}, does not count")
    if len(authorized) < rule.required and not reasons:
        reasons.append(f"{len(authorized)} of {rule.required} required authorizations")
    # A listed user without a valid proof makes the field a false claim: the
    # message is not released even when others are enough (fail closed).
    released = not reasons
    return ReleaseDecision(rule.name, released, rule.required, tuple(authorized),
                           (*reasons, *notes))


def proven_users(
    headers: Sequence[tuple[str, str]], verdict: Verdict | None, *,
    casefold_local_part: bool = False,
) -> tuple[str, ...]:
    """The users of a well-formed MMHS-Authorizing-Users field whose
    authorization is proven, whatever the release policy says of them (what an
    authorizing user's agent checks in step 2 of the procedure)."""
    reasons: list[str] = []
    listed = _listed_users(headers, reasons) or ()
    proofs = _proofs(verdict, reasons)
    return tuple(
        user.text for user in listed
        if any(p.signer.proven and _proves(p, user, casefold_local_part) for p in proofs)
    )


def drafter(headers: Sequence[tuple[str, str]]) -> mime.Address | None:
    """Who composed the message: the Sender if there is one, else the first
    From address (the IPMS originator of the MIXER mapping, §5.1). Releasing
    is someone else's approval, so the drafter's own authorization never
    counts."""
    for name in ("sender", "from"):
        values = [value for field, value in headers if field.lower() == name]
        if values:
            found = [a for a in mime.mailbox_list(values) if a is not None]
            return found[0] if found else None
    return None


def _listed_users(headers: Sequence[tuple[str, str]], reasons: list[str]
                  ) -> tuple[mime.Address, ...] | None:
    """The distinct addresses of the single MMHS-Authorizing-Users field."""
    values = [value for name, value in headers if name.lower() == "mmhs-authorizing-users"]
    if not values:
        reasons.append(f"no {AUTHORIZING_USERS_HEADER} header field")
        return None
    if len(values) > 1:
        reasons.append(f"{AUTHORIZING_USERS_HEADER} appears {len(values)} times "
                       "(at most once is allowed)")
        return None
    try:
        addresses = mime.address_list(values[0])
    except mime.MimeError as exc:
        reasons.append(f"{AUTHORIZING_USERS_HEADER} is malformed: {exc}")
        return None
    distinct: dict[tuple[str, str], mime.Address] = {}
    for address in addresses:
        distinct.setdefault((address.local.casefold(), address.domain), address)
    return tuple(distinct.values())


def _proofs(verdict: Verdict | None, reasons: list[str]) -> tuple[_Proof, ...]:
    """Every signature that can prove an authorization, or none (with the
    reason) when the signed content does not stand for the whole message."""
    if verdict is None or not verdict.signers:
        note = verdict.notes[0] if verdict is not None and verdict.notes else "not signed"
        reasons.append(f"message carries no S/MIME signature that can prove an "
                       f"authorization ({note})")
        return ()
    if verdict.message_errors:
        reasons.append(f"the signature does not stand for the message: "
                       f"{verdict.message_errors[0]}")
        return ()
    originators = [signer for signer in verdict.signers if signer.from_match]
    broken = [signer for signer in originators if not signer.ok]
    if broken:
        reasons.append("the originator's signature is not valid: "
                       f"{(broken[0].errors or ('unknown error',))[0]}")
        return ()
    proofs: list[_Proof] = []
    for signer in verdict.signers:
        # A user's own SignerInfo over the content proves as much as a
        # countersignature; it is how an unsigned original is authorized
        # (draft §3, step 3). The drafter's own never counts (see assess).
        proofs.append(_Proof("signature", signer))
        if signer.signature_ok:
            proofs.extend(_countersignatures(signer))
    return tuple(proofs)


def _countersignatures(parent: SignerResult) -> Iterator[_Proof]:
    """Countersignatures below a parent whose own signature holds: one on a
    broken signature vouches for nothing."""
    for counter in parent.countersignatures:
        yield _Proof("countersignature", counter)
        if counter.signature_ok:
            yield from _countersignatures(counter)


def _proves(proof: _Proof, user: mime.Address, casefold_local_part: bool) -> bool:
    for email in proof.signer.emails:
        address = mime.parse_address(email)
        if address is not None and address.matches(user, casefold_local=casefold_local_part):
            return True
    return False


def _authorization_problem(
    rule: ReleaseRule, user: mime.Address, proofs: Sequence[_Proof], casefold_local_part: bool
) -> str | None:
    """Why ``user`` does not count, or None when the authorization is proven."""
    own = [proof for proof in proofs if _proves(proof, user, casefold_local_part)]
    if not own:
        return f"{user.text}: listed but no countersignature or signature by this user"
    valid = [proof for proof in own if proof.signer.proven]
    if not valid:
        return f"{user.text}: {(own[0].signer.errors or ('signature not valid',))[0]}"
    if not mime.address_in(user.text, rule.releasers):
        return f"{user.text}: not an authorized releaser under rule {rule.name}"
    if rule.releaser_cas and not any(_issued_by(p.signer, rule.releaser_cas) for p in valid):
        return f"{user.text}: certificate not issued by a releasing CA of rule {rule.name}"
    return None


def _issued_by(signer: SignerResult, cas: Sequence[bytes]) -> bool:
    return any(hashlib.sha256(der).digest() in cas for der in signer.path[1:])


# --------------------------------------------------------------------------- diversion


@dataclass(frozen=True, slots=True)
class Diversion:
    """The envelope and header edits that send an unreleased message to the
    release officers (or the hold queue) instead of its recipients."""

    delete_recipients: tuple[str, ...]
    add_recipients: tuple[str, ...]
    #: Header fields to add (name, value), after our forged-copy removal.
    add_headers: tuple[tuple[str, str], ...]
    quarantine_reason: str | None = None


_UNSAFE = frozenset('"\\')


def _quoted(text: str, limit: int = 300) -> str:
    clean = "".join(c if " " <= c <= "~" and c not in _UNSAFE else " " for c in text)
    clean = " ".join(clean.split())
    return '"' + (clean if len(clean) <= limit else clean[: limit - 3] + "...") + '"'


def status_stamp(decision: ReleaseDecision, divert_to: str | None) -> str:
    """The ``SMIME-Release-Status`` value: released and by whom, or held, where
    and why."""
    if decision.released:
        value = (f"released; rule={decision.rule}; "
                 f"authorized={_quoted(', '.join(decision.authorized))}")
    else:
        where = f"; divert-to={divert_to}" if divert_to else ""
        value = f"held; rule={decision.rule}{where}; reason={_quoted(decision.summary)}"
    return folded(value, LINE_WIDTH - len(RELEASE_STATUS_HEADER) - 2)


def recipients_field(recipients: Sequence[str], name: str = ORIGINAL_RECIPIENTS_HEADER) -> str:
    """An address-list value of the envelope recipients, folded so that no
    line of the field ``name: value`` exceeds 78 characters (RFC 5322 §2.1.1;
    a single longer address stays whole)."""
    value = ", ".join(f"<{recipient}>" for recipient in recipients)
    return folded(value, LINE_WIDTH - len(name) - 2, continuation="\t")


def divert(rule: ReleaseRule, decision: ReleaseDecision, recipients: Sequence[str]
           ) -> Diversion:
    """What to do with a message that is not released under ``rule``: record the
    original recipients in a header, then replace them with the release target,
    or keep them and quarantine (hold queue) the message."""
    headers = (
        (ORIGINAL_RECIPIENTS_HEADER, recipients_field(recipients)),
        (RELEASE_STATUS_HEADER, status_stamp(decision, rule.divert_to)),
    )
    if rule.holds:
        return Diversion((), (), headers, quarantine_reason=f"MMHS release: {decision.summary}")
    return Diversion(tuple(recipients), (rule.divert_to,), headers)

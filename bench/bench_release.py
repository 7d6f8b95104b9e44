#!/usr/bin/env python3
"""What draft-and-release costs per message, on one core.

Builds a PKI (root -> intermediate -> originator and K officers), N signed
messages, and from them N messages countersigned by 1 and by 2 officers
(with ``smime_milter.authorize``). Prints messages/s for: ``Verifier.verify``
of the plain signed messages, of the countersigned ones (each countersignature
is checked and its chain validated), ``release.assess`` on those verdicts, and
``authorize`` itself (what an officer's run of ``smime-milter authorize``
costs, without process start-up).

Usage: .venv/bin/python bench/bench_release.py [--messages N]
This is a measurement, not a test: it asserts nothing and only reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO):  # smime_milter and tests.support without installing
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from asn1crypto import x509 as asn1_x509

from smime_milter.cms.signing import SigningIdentity
from smime_milter.mail.mime import parse_entity
from smime_milter.release.authorize import authorize
from smime_milter.release.rules import ReleaseRule, assess
from smime_milter.trust.chain import TrustStore
from smime_milter.verify.engine import Verifier
from tests.support.pki import Identity, make_ca, make_leaf
from tests.support.smime import multipart_signed, text_entity


def _identity(ident: Identity) -> SigningIdentity:
    return SigningIdentity(key=ident.key, certificate=ident.cert, chain=ident.chain)


def _rate(label: str, items: Sequence[object], work: Callable[[object], object]) -> list[object]:
    started = time.perf_counter()
    results = [work(item) for item in items]
    seconds = time.perf_counter() - started
    print(f"{label:<44} {len(items) / seconds:9.0f} msg/s  ({seconds * 1000 / len(items):6.2f} ms)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    now = datetime.now(UTC)
    root = make_ca("Bench Root", now=now, key_label="bench:root")
    intermediate = make_ca("Bench Intermediate", root, now=now, key_label="bench:int")
    alice = make_leaf(intermediate, "alice@example.mil", now=now, key_label="bench:alice")
    officers = [make_leaf(intermediate, f"officer{n}@example.mil", now=now,
                          key_label=f"bench:officer{n}") for n in range(2)]
    trust = TrustStore(anchors=(asn1_x509.Certificate.load(root.cert_der),))
    verifier = Verifier(trust)
    signed = [multipart_signed(text_entity(f"Order {n}: move at dawn.\n" * 20), alice,
                               from_addr="alice@example.mil", subject=f"order {n}")
              for n in range(args.messages)]
    rule = ReleaseRule("bench", ("example.mil",), "release@example.mil", required=2,
                       all=True)
    print(f"{args.messages} messages, RSA-2048, SHA-256, Python {sys.version.split()[0]}")
    verifier.verify(signed[0])  # warm the chain cache like a running daemon
    _rate("verify: signed, no countersignature", signed, verifier.verify)
    one = _rate("authorize: first officer (countersign)", signed,
                lambda m: authorize(m, _identity(officers[0]), verifier).message)
    two = _rate("authorize: second officer", one,
                lambda m: authorize(m, _identity(officers[1]), verifier).message)
    verdicts = _rate("verify: signed + 2 countersignatures", two, verifier.verify)
    headers = [parse_entity(m).headers for m in two]
    decisions = _rate("assess: 2 of 2 required", list(zip(headers, verdicts, strict=True)),
                      lambda pair: assess(rule, *pair))  # type: ignore[misc]
    released = sum(1 for d in decisions if d.released)  # type: ignore[attr-defined]
    print(f"released: {released} of {len(decisions)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What server-side signing and encryption (smime-advanced) costs per message, on one core.

Builds a PKI (root -> intermediate -> a sender and R recipients, RSA-2048 or
EC P-256), a key store and an address book on disk, and prints messages/s of
``Advanced.apply`` for: sign (opaque), sign (multipart/signed), encrypt to
sender + R recipients, sign + encrypt, each with RFC 9788 header protection.
The address book validates each recipient's chain (cached after the first
message, as in the daemon), so the steady state is what is measured.

Usage: .venv/bin/python bench/bench_advanced.py [--messages N] [--recipients R] [--ec]
This is a measurement, not a test: it asserts nothing and only reports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO):  # smime_milter and tests.support without installing
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from asn1crypto import x509 as asn1_x509

from smime_milter.advanced.addressbook import AddressBook
from smime_milter.advanced.compose import Advanced
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.trust.chain import ChainValidator, TrustStore
from tests.support.pki import Identity, make_ca, make_leaf

BOTH = frozenset({"digital_signature", "key_encipherment"})
AGREEMENT = frozenset({"digital_signature", "key_agreement"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--recipients", type=int, default=3)
    parser.add_argument("--ec", action="store_true", help="EC P-256 recipients instead of RSA")
    args = parser.parse_args()
    now = datetime.now(UTC)
    root = make_ca("Bench Root", now=now, key_label="bench:root")
    intermediate = make_ca("Bench Intermediate", root, now=now, key_label="bench:int")
    sender = make_leaf(intermediate, "sender@example.com", now=now, key_usage=BOTH,
                       key_label="bench:sender")
    kind, usage = ("ec256", AGREEMENT) if args.ec else ("rsa", BOTH)
    recipients = [make_leaf(intermediate, f"r{n}@example.org", kind, now=now, key_usage=usage,
                            key_label=f"bench:r{n}:{kind}") for n in range(args.recipients)]
    with tempfile.TemporaryDirectory(prefix="bench-advanced-") as tmp:
        keys = Path(tmp) / "keys"
        keys.mkdir(mode=0o700)
        chain = b"".join(Identity(sender.key, c).cert_pem for c in sender.chain)
        (keys / "sender.pem").write_bytes(sender.key_pem + sender.cert_pem + chain)
        (keys / "sender.pem").chmod(0o600)
        book = Path(tmp) / "book"
        book.mkdir()
        for n, person in enumerate(recipients):
            (book / f"r{n}.pem").write_bytes(person.cert_pem + chain)
        signing_keys = SigningKeys.load(keys)
        anchor = asn1_x509.Certificate.load(root.cert_der)
        validator = ChainValidator(TrustStore(anchors=(anchor,)))
        engine = Advanced(signing_keys, AddressBook(book, signing_keys, None, validator),
                          lambda *_: True)
        to = ", ".join(f"r{n}@example.org" for n in range(args.recipients))
        message = (f"From: sender@example.com\r\nTo: {to}\r\nSubject: Quarterly plan\r\n"
                   "Message-ID: <bench@example.com>\r\nContent-Type: text/plain\r\n\r\n"
                   + "A line of the plan, long enough to be typical.\r\n" * 60).encode()
        print(f"{args.messages} messages of {len(message)} bytes, "
              f"{args.recipients} {kind} recipients + the sender")
        cases = [
            ("sign (opaque)", dict(smimeSign=True)),
            ("sign (multipart/signed)", dict(smimeSign=True, smimeSignOpaque=False)),
            ("encrypt", dict(smimeEncrypt=True)),
            ("sign + encrypt", dict(smimeSign=True, smimeEncrypt=True)),
        ]
        for label, arguments in cases:
            engine.apply(message, **arguments)  # warm the chain cache
            started = time.perf_counter()
            for _ in range(args.messages):
                engine.apply(message, **arguments)
            seconds = time.perf_counter() - started
            print(f"{label:<28} {args.messages / seconds:8.0f} msg/s  "
                  f"({seconds * 1000 / args.messages:6.2f} ms)")


if __name__ == "__main__":
    main()

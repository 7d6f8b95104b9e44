#!/usr/bin/env python3
"""Throughput of the JMAP read API over a store of N records (default 100,000).

The records come from really verifying messages: K signers of the test PKI
(root -> intermediate -> RSA-2048 leaf) sign messages that the engine verifies
at the delivery moment; each verdict is then stored under N distinct record
ids (70 % verified, 10 % failed, 20 % unsigned), as the milter would store
N deliveries. Printed:

1. **Email/get, cached** - ``SmimeJmap.email_get`` of all four RFC 9219
   properties, in batches of B ids, while every status is younger than the
   cache lifetime (the common case); and the same through
   ``JmapProtocol.handle`` (argument checks and the JSON-ready response);
2. **Email/query hasVerifiedSmime** over all N records as candidates, with
   fresh statuses; then with AND/NOT of the three filters;
3. **bulk refresh** - the same query after the cache lifetime has passed, so
   every signed record is re-validated as of the new moment and written back
   (the worst case, once per lifetime);
4. **``smime-milter jmap``** - one process answering one Request for B ids,
   start-up included.
5. **prune** - ``Store.prune`` deleting every record (retention), and the
   Email/changes that reports them destroyed.

Goals (issue 4): >= 20,000 cached Email/get records/s; a hasVerifiedSmime
query over 100,000 candidates in under 1 s. This is a measurement, not a
test: it asserts nothing.

Usage: .venv/bin/python bench/bench_jmap.py [--records N] [--batch B] [--signers K]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from smime_milter.jmap.methods import SmimeJmap
from smime_milter.jmap.protocol import JmapProtocol
from smime_milter.model import Verdict, new_record_id
from smime_milter.revalidate import Refresher, Revalidator
from smime_milter.store import Record, Store
from smime_milter.trust.chain import ChainValidator, TrustStore
from tests.support.pki import build_pki, make_leaf
from tests.support.smime import multipart_signed, text_entity, wrap_message
from tests.support.verdicts import NOW, anchor, make_verifier

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
         "urn:ietf:params:jmap:smimeverify"]
PROPERTIES = ["smimeStatus", "smimeStatusAtDelivery", "smimeErrors", "smimeVerifiedAt"]


def verdicts(signers: int) -> tuple[list[Verdict], list[Verdict], Verdict]:
    """Verified, failed (tampered) and unsigned verdicts from real messages."""
    pki = build_pki(NOW)
    verifier = make_verifier(pki, clock=NOW)
    good, bad = [], []
    for number in range(signers):
        email = f"user{number}@example.com"
        leaf = make_leaf(pki.intermediate, email, now=NOW, key_label=f"bench:{number}")
        message = multipart_signed(text_entity(f"message {number}\n" * 20), leaf,
                                   from_addr=email, signing_time=NOW)
        good.append(verifier.verify(message, at=NOW))
        forged = message.replace(f"message {number}".encode(), b"forged", 1)
        bad.append(verifier.verify(forged, at=NOW))
    plain = verifier.verify(wrap_message(text_entity("plain\n")), at=NOW)
    return good, bad, plain


def fill(store: Store, count: int, signers: int, rng: random.Random) -> list[str]:
    good, bad, plain = verdicts(signers)
    ids = []
    futures = []
    for _ in range(count):
        roll = rng.random()
        verdict = rng.choice(good) if roll < 0.7 else rng.choice(bad) if roll < 0.8 else plain
        record_id = new_record_id()
        ids.append(record_id)
        futures.append(store.put(Record.from_verdict(
            verdict, record_id=record_id, received_at=NOW,
            envelope_sender="sender@example.com", envelope_recipients=("bob@example.com",),
            message_id=None, queue_id=None,
        )))
    for future in futures:
        future.result()
    return ids


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s ({seconds * 1000:,.1f} ms for {count:,})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--signers", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.records:,} records, batch {args.batch}")
    rng = random.Random(1234)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        started = time.perf_counter()
        store = Store.open(path)
        ids = fill(store, args.records, args.signers, rng)
        print(f"filled in {time.perf_counter() - started:.1f} s")
        pki = build_pki(NOW)
        clock_now = [NOW + timedelta(minutes=5)]
        refresher = Refresher(
            store, Revalidator(ChainValidator(TrustStore(anchors=(anchor(pki.root),)))),
            clock=lambda: clock_now[0], lifetime=timedelta(hours=1),
        )
        api = SmimeJmap(refresher)
        protocol = JmapProtocol(api)

        batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
        started = time.perf_counter()
        for batch in batches:
            api.email_get(batch, PROPERTIES)
        print("Email/get cached, API:      ", rate(len(ids), time.perf_counter() - started))
        started = time.perf_counter()
        for batch in batches:
            protocol.handle({"using": USING, "methodCalls": [
                ["Email/get", {"accountId": "a", "ids": batch, "properties": PROPERTIES},
                 "0"]]})
        print("Email/get cached, protocol: ", rate(len(ids), time.perf_counter() - started))

        for label, filter in (
            ("hasVerifiedSmime", {"hasVerifiedSmime": True}),
            ("AND/NOT of all three", {"operator": "AND", "conditions": [
                {"hasSmime": True},
                {"operator": "NOT", "conditions": [{"hasVerifiedSmime": True}]},
                {"hasVerifiedSmimeAtDelivery": False}]}),
        ):
            started = time.perf_counter()
            matched = api.email_query(filter, ids)
            seconds = time.perf_counter() - started
            print(f"Email/query {label:<22} {seconds * 1000:,.0f} ms over {len(ids):,} "
                  f"candidates ({len(matched):,} match)")

        clock_now[0] = NOW + timedelta(hours=2)
        started = time.perf_counter()
        matched = api.email_query({"hasVerifiedSmime": True}, ids)
        seconds = time.perf_counter() - started
        stale = sum(1 for _ in refresher.stale_ids())
        print(f"Email/query after the lifetime (bulk refresh): {seconds:,.1f} s; "
              f"{rate(int(args.records * 0.8), seconds)} re-validated; {stale} left stale")
        state_before_prune = store.state()
        store.close()

        config = Path(tmp) / "smime-milter.toml"
        root_pem = Path(tmp) / "root.pem"
        root_pem.write_bytes(pki.root.cert_pem)
        config.write_text(f'[trust]\nanchors = ["{root_pem}"]\n[store]\npath = "{path}"\n')
        request = json.dumps({"using": USING, "methodCalls": [
            ["Email/get", {"accountId": "a", "ids": ids[:args.batch],
                           "properties": PROPERTIES}, "0"]]}).encode()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "smime_milter.cli", "jmap", "--config",
                        str(config), "--now", (NOW + timedelta(hours=2, minutes=5)).isoformat()],
                       input=request, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "milter")})
        print(f"smime-milter jmap process, {args.batch} ids: "
              f"{(time.perf_counter() - started) * 1000:,.0f} ms including start-up")

        with Store.open(path) as store:
            started = time.perf_counter()
            deleted = store.prune(NOW + timedelta(days=1))
            seconds = time.perf_counter() - started
            changes = store.changes_since(state_before_prune)
        print(f"prune of every record: {rate(deleted, seconds)}; Email/changes lists "
              f"{len(changes.destroyed):,} destroyed")


if __name__ == "__main__":
    main()

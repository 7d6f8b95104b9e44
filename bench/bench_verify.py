#!/usr/bin/env python3
"""Throughput of ``Verifier.verify`` on one core, with ``openssl cms -verify`` for scale.

Builds its own PKI (root -> intermediate -> K RSA-2048 S/MIME leaves), writes N
distinct signed messages (clear-signed and opaque, SHA-256, random 1-20 KB bodies)
and prints messages/s for: a cold first pass, a warm second pass, a warm pass
through ``verify_file`` (the spooled messages mapped, not read), a pass with the
chain cache disabled, and one ``openssl cms -verify`` process per message.

Usage: .venv/bin/python bench/bench_verify.py [--messages N] [--signers K]
This is a measurement, not a test: it asserts nothing and only reports.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO):  # smime_milter and tests.support without installing
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from asn1crypto import x509 as asn1_x509
from cryptography import x509

from smime_milter.cms import certs
from smime_milter.cms import fast as cms_fast
from smime_milter.cms import signed_data as cms
from smime_milter.mail import mime
from smime_milter.model import Status
from smime_milter.trust import chain
from smime_milter.trust.chain import ChainValidator, TrustStore
from smime_milter.verify import engine
from smime_milter.verify.engine import Verifier
from tests.support import smime
from tests.support.pki import Identity, make_ca, make_leaf

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "meeting",
    "agenda", "report", "budget", "contract", "please", "find", "attached", "regards",
    "tomorrow", "review", "draft", "signed", "message", "server", "delivery", "mailbox",
    "certificate", "chain", "policy", "update", "schedule", "quarterly",
)


@dataclass(frozen=True)
class Corpus:
    root: Identity
    signers: tuple[Identity, ...]
    messages: tuple[bytes, ...]
    kinds: Counter[str]


@dataclass(frozen=True)
class Row:
    label: str
    count: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("inf")

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / self.count if self.count else 0.0


def build_pki(now: datetime, count: int) -> tuple[Identity, Identity, tuple[Identity, ...]]:
    """root -> intermediate -> ``count`` RSA-2048 leaves with emailProtection."""
    root = make_ca("Bench Root CA", now=now, key_label="bench:root")
    intermediate = make_ca(
        "Bench Intermediate CA", root, now=now, path_length=0, key_label="bench:intermediate"
    )
    leaves = tuple(
        make_leaf(intermediate, f"user{i:03d}@bench.example", now=now,
                  key_label=f"bench:leaf{i}")
        for i in range(count)
    )
    return root, intermediate, leaves


def random_body(rng: random.Random, kb: tuple[int, int] = (1, 20)) -> str:
    target = rng.randint(kb[0] * 1024, kb[1] * 1024)
    lines: list[str] = []
    size = 0
    while size < target:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        lines.append(line)
        size += len(line) + 2
    return "\n".join(lines) + "\n"


def _kb_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a range like 2-3: {text!r}") from None
    if not 0 < first <= last:
        raise argparse.ArgumentTypeError(f"not a range like 2-3: {text!r}")
    return first, last


def email_of(identity: Identity) -> str:
    san = identity.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.RFC822Name)[0]


def build_corpus(count: int, signer_count: int, seed: int, now: datetime,
                 body_kb: tuple[int, int] = (1, 20)) -> Corpus:
    rng = random.Random(seed)
    root, _intermediate, leaves = build_pki(now, signer_count)
    messages: list[bytes] = []
    kinds: Counter[str] = Counter()
    for index in range(count):
        signer = leaves[index % signer_count]
        address = email_of(signer)
        entity = smime.text_entity(random_body(rng, body_kb))
        headers = {"from_addr": address, "subject": f"bench message {index}"}
        if rng.random() < 0.5:
            messages.append(smime.multipart_signed(entity, signer, digest="sha256", **headers))
            kinds["multipart/signed"] += 1
        else:
            messages.append(smime.opaque_signed(entity, signer, digest="sha256", **headers))
            kinds["opaque signed-data"] += 1
    return Corpus(root, leaves, tuple(messages), kinds)


def clear_parse_caches() -> None:
    """Forget everything memoised at module level (functools caches of the engine
    modules, e.g. parsed certificates), so "cold" really is cold."""
    for module in (certs, chain, cms, cms_fast, engine, mime):
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def timed_pass(
    verifier: Verifier, messages: Sequence[bytes], at: datetime, statuses: Counter[str]
) -> float:
    verify = verifier.verify
    start = time.perf_counter()
    for message in messages:
        verdict = verify(message, at)
        statuses[verdict.status.value if verdict.status else "null"] += 1
    return time.perf_counter() - start


def timed_file_pass(
    verifier: Verifier, paths: Sequence[Path], at: datetime, statuses: Counter[str]
) -> float:
    verify_file = verifier.verify_file
    start = time.perf_counter()
    for path in paths:
        verdict = verify_file(path, at)
        statuses[verdict.status.value if verdict.status else "null"] += 1
    return time.perf_counter() - start


def cache_note(validator: ChainValidator, before: tuple[int, int]) -> str:
    hits, misses = validator.hits - before[0], validator.misses - before[1]
    return f"chain cache {misses} misses / {hits} hits"


def run_openssl(paths: Sequence[Path], ca_file: Path) -> tuple[float, int]:
    """One ``openssl cms -verify`` process per message; (seconds, how many verified)."""
    openssl = shutil.which("openssl") or "openssl"
    ok = 0
    start = time.perf_counter()
    for path in paths:
        result = subprocess.run(
            [openssl, "cms", "-verify", "-in", str(path), "-CAfile", str(ca_file),
             "-purpose", "any", "-out", os.devnull],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
        ok += result.returncode == 0
    return time.perf_counter() - start, ok


def process_overhead(runs: int = 50) -> float:
    """Seconds per bare ``openssl version`` process: the floor of the openssl column."""
    openssl = shutil.which("openssl") or "openssl"
    start = time.perf_counter()
    for _ in range(runs):
        subprocess.run([openssl, "version"], stdout=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) / runs


def sample(messages: Sequence[bytes], size: int) -> list[int]:
    """Indices of an evenly spread sample (all when ``size`` is 0 or too big)."""
    if size <= 0 or size >= len(messages):
        return list(range(len(messages)))
    step = len(messages) / size
    return [int(i * step) for i in range(size)]


def pin_to_one_cpu() -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
        return f"pinned to CPU {cpus[0]}"
    except (AttributeError, OSError):
        return "not pinned"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def print_table(rows: Sequence[Row]) -> None:
    print(f"{'measurement':<46} {'msgs':>6} {'seconds':>8} {'msg/s':>9} {'ms/msg':>8}  notes")
    for row in rows:
        print(f"{row.label:<46} {row.count:>6} {row.seconds:>8.2f} {row.rate:>9.1f} "
              f"{row.ms:>8.3f}  {row.note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages (default 3000)")
    parser.add_argument("--signers", type=int, default=20, help="signer certificates (20)")
    parser.add_argument("--warm-passes", type=int, default=3,
                        help="warm passes; the best one is reported too (default 3)")
    parser.add_argument("--cold-chain-sample", type=int, default=0,
                        help="messages for the no-chain-cache pass (default 0 = all)")
    parser.add_argument("--openssl-sample", type=int, default=0,
                        help="messages for openssl cms -verify (default 0 = all)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed for the bodies")
    parser.add_argument("--body-kb", type=_kb_range, default=(1, 20), metavar="MIN-MAX",
                        help="size range of the text bodies in KB (1-20; 2-3 gives the "
                             "4.8 KB messages of issue 15)")
    parser.add_argument("--keep", type=Path, help="write the messages and root.pem here")
    args = parser.parse_args(argv)

    pinning = pin_to_one_cpu()
    now = datetime.now(UTC).replace(microsecond=0)
    at = now + timedelta(minutes=5)  # one fixed moment: every pass sees the same cache buckets

    start = time.perf_counter()
    corpus = build_corpus(args.messages, args.signers, args.seed, now, args.body_kb)
    built = time.perf_counter() - start
    messages = corpus.messages
    mean_kb = sum(len(m) for m in messages) / len(messages) / 1024
    trust = TrustStore((asn1_x509.Certificate.load(corpus.root.cert_der),))

    rows: list[Row] = []
    statuses: Counter[str] = Counter()

    # 1 + 2: one fresh Verifier, two passes.
    clear_parse_caches()
    verifier = Verifier(trust)
    before = (verifier.chains.hits, verifier.chains.misses)
    seconds = timed_pass(verifier, messages, at, statuses)
    rows.append(Row("1 cold: fresh Verifier, first pass", len(messages), seconds,
                    cache_note(verifier.chains, before)))
    warm: list[float] = []
    for _ in range(max(1, args.warm_passes)):
        before = (verifier.chains.hits, verifier.chains.misses)
        warm.append(timed_pass(verifier, messages, at, statuses))
        if len(warm) == 1:
            rows.append(Row("2 warm: same Verifier, second pass", len(messages), warm[0],
                            cache_note(verifier.chains, before)))
    if len(warm) > 1:
        rows.append(Row(f"2b warm: best of {len(warm)} warm passes", len(messages), min(warm),
                        "least disturbed by other load on the machine"))

    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        ca_file = out / "root.pem"
        ca_file.write_bytes(corpus.root.cert_pem)
        paths = []
        for index, message in enumerate(messages):
            path = out / f"msg{index:05d}.eml"
            path.write_bytes(message)
            paths.append(path)

        # 2c: the same warm Verifier on the spooled files (page cache warm).
        seconds = timed_file_pass(verifier, paths, at, statuses)
        rows.append(Row("2c warm: verify_file on spooled messages", len(paths), seconds,
                        "mmap, read-only"))

        # 3: every message pays a full pyhanko-certvalidator path validation.
        no_cache = ChainValidator(trust, cache_size=0)
        cold_verifier = Verifier(trust, chain_validator=no_cache)
        picked = [messages[i] for i in sample(messages, args.cold_chain_sample)]
        seconds = timed_pass(cold_verifier, picked, at, statuses)
        label = "3 cold chain: cache_size=0"
        label += "" if len(picked) == len(messages) else " (sample)"
        rows.append(Row(label, len(picked), seconds, cache_note(no_cache, (0, 0))))

        # 4: openssl, one process per message.
        chosen = [paths[i] for i in sample(messages, args.openssl_sample)]
        overhead = process_overhead()
        seconds, ok = run_openssl(chosen, ca_file)
    label = "4 openssl cms -verify, 1 process/msg"
    label += "" if len(chosen) == len(messages) else " (sample)"
    rows.append(Row(label, len(chosen), seconds,
                    f"{ok}/{len(chosen)} verified; bare process {overhead * 1000:.1f} ms"))

    print(f"smime-milter verify benchmark: {len(messages)} messages "
          f"({', '.join(f'{n} {kind}' for kind, n in sorted(corpus.kinds.items()))}), "
          f"{args.signers} signers, RSA-2048, SHA-256, mean {mean_kb:.1f} KB/message "
          f"(built in {built:.1f}s)")
    print("chains: root -> intermediate -> leaf; SignedData carries leaf + intermediate; "
          "trust anchor: root only; revocation: soft (default policy)")
    print()
    print_table(rows)
    print()
    print("verdicts over all engine passes: "
          + ", ".join(f"{status} {n}" for status, n in statuses.most_common()))
    openssl_version = subprocess.run(
        [shutil.which("openssl") or "openssl", "version"], capture_output=True, text=True,
        check=False,
    ).stdout.strip()
    print(f"environment: Python {platform.python_version()}, "
          f"cryptography {version_of('cryptography')}, asn1crypto {version_of('asn1crypto')}, "
          f"pyhanko-certvalidator {version_of('pyhanko-certvalidator')}, {openssl_version}, "
          f"{os.cpu_count()} CPUs ({pinning}), {cpu_model()}")
    if statuses.get(Status.SIGNED_VERIFIED.value, 0) != sum(statuses.values()):
        print("WARNING: not every message verified; the numbers above are not comparable")
    return 0


if __name__ == "__main__":
    sys.exit(main())

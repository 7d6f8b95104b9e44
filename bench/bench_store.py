#!/usr/bin/env python3
"""Throughput of the LMDB store: concurrent puts through the writer thread, and reads.

Builds N realistic records (a pool of K signers, each with leaf + intermediate +
root certificates of real-world size; about 70 % verified, 10 % failed, 20 %
unsigned) and prints records/s for:

1. **async** - T threads each queue their share with ``put()`` and wait for all
   futures at the end: the writer's best case, large batches;
2. **the milter's record write**, each in a fresh store, with 1 and with T
   threads, and with 2 processes of T/2 threads each (a pre-forked milter),
   as records/s and CPU milliseconds per record (the process's CPU time over
   every thread, the sync thread included):

   * ``writer+fsync``: ``put(record).result()``, the writer thread's path that
     ``put_sync`` took before it committed in the caller's thread (a
     hand-off, a batch of at most T, an fsync per commit);
   * ``commit``: ``put_sync`` in ``sync="commit"`` mode (in the caller's
     thread, an fsync per commit);
   * ``interval``: ``put_sync`` in ``sync="interval"`` mode (no fsync per
     commit; a flush at most every second);
3. reads: ``get`` from one thread and from T threads, ``get_many`` of 100,
   ``in_index`` of 100, and one ``changes_since("0")`` over the whole log.

Usage: .venv/bin/python bench/bench_store.py [--records N] [--threads T] [--dir DIR]
The fsyncs make the numbers depend on the file system of ``--dir`` (default:
the system temporary directory). This is a measurement, not a test: it
asserts nothing and only reports.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "milter") not in sys.path:  # smime_milter without installing
    sys.path.insert(0, str(REPO / "milter"))

import lmdb

from smime_milter.model import SignerResult, Status, new_record_id
from smime_milter.store import Record, Store

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Signer:
    email: str
    leaf: bytes
    intermediate: bytes
    root: bytes


def make_signers(rng: random.Random, count: int) -> list[Signer]:
    """K signers under 2 intermediates and 1 root; DER sizes as for RSA-2048."""
    root = rng.randbytes(900)
    intermediates = [rng.randbytes(1100) for _ in range(2)]
    return [
        Signer(f"user{n}@example.org", rng.randbytes(rng.randint(1200, 1600)),
               intermediates[n % 2], root)
        for n in range(count)
    ]


def make_record(rng: random.Random, signers: Sequence[Signer], n: int) -> Record:
    received = NOW + timedelta(seconds=n)
    who = rng.choice(signers)
    kind = rng.random()
    base = {
        "record_id": new_record_id(),
        "received_at": received,
        "envelope_sender": who.email,
        "envelope_recipients": tuple(f"rcpt{i}@example.net" for i in range(rng.randint(1, 3))),
        "message_id": f"<{n}.{rng.getrandbits(48):x}@example.org>",
        "from_address": who.email,
        "queue_id": f"4Q{n:08X}",
    }
    if kind < 0.2:
        return Record(status_at_delivery=None, errors_at_delivery=None, status=None,
                      errors=None, verified_at=None, **base)
    failed = kind < 0.3
    errors = ("signer certificate expired",) if failed else None
    status = Status.SIGNED_FAILED if failed else Status.SIGNED_VERIFIED
    signer = SignerResult(
        emails=(who.email,), subject=f"CN={who.email}", issuer="CN=Example Intermediate",
        serial=rng.getrandbits(128), digest_algorithm="sha256",
        signature_algorithm="rsassa_pkcs1v15", signature_ok=True, chain_ok=not failed,
        from_match=True, errors=errors or (), signing_time=received,
        certificate=who.leaf, path=() if failed else (who.leaf, who.intermediate, who.root),
    )
    return Record(
        status_at_delivery=status, errors_at_delivery=errors, status=status, errors=errors,
        verified_at=received, signers=(signer,), certificates=(who.leaf, who.intermediate),
        layer="multipart/signed", signed_part="1", **base,
    )


def split(items: Sequence[Record], parts: int) -> list[Sequence[Record]]:
    return [items[n::parts] for n in range(parts)]


def run_threads(work: Callable[[Sequence[Record]], None], shares: list[Sequence[Record]]) -> float:
    """Seconds from the start barrier until every thread finished its share."""
    barrier = threading.Barrier(len(shares) + 1)

    def body(share: Sequence[Record]) -> None:
        barrier.wait()
        work(share)

    threads = [threading.Thread(target=body, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def bench_async(store: Store, records: Sequence[Record], threads: int) -> float:
    futures: list[Future[int]] = []
    lock = threading.Lock()

    def work(share: Sequence[Record]) -> None:
        mine = [store.put(record) for record in share]
        with lock:
            futures.extend(mine)

    start = time.perf_counter()
    run_threads(work, split(records, threads))
    for future in futures:
        future.result()
    return time.perf_counter() - start


def bench_sync(store: Store, records: Sequence[Record], threads: int,
               queued: bool = False) -> float:
    def work(share: Sequence[Record]) -> None:
        for record in share:
            store.put_sync(record)

    def work_queued(share: Sequence[Record]) -> None:
        for record in share:
            store.put(record).result()

    return run_threads(work_queued if queued else work, split(records, threads))


#: The write paths of the milter's record compared: label, Store.open's sync,
#: whether through the writer thread (``put().result()``).
PATHS = (("writer+fsync", "commit", True), ("commit", "commit", False),
         ("interval", "interval", False))


def write_run(folder: Path, records: Sequence[Record], threads: int, sync: str,
              queued: bool) -> tuple[float, float, int]:
    """Seconds, CPU seconds of this process and commits for ``records`` put
    by ``threads`` threads into the store in ``folder`` (closed after, so
    interval mode's last flush is counted)."""
    cpu = time.process_time()
    with Store.open(folder, sync=sync) as store:
        seconds = bench_sync(store, records, threads, queued)
        commits = store.stats()["commits"]
    return seconds, time.process_time() - cpu, commits


def _child(folder: Path, records: Sequence[Record], threads: int, sync: str, queued: bool,
           start: Any, out: Any) -> None:
    start.wait()
    out.put(write_run(folder, records, threads, sync, queued))


def write_processes(folder: Path, records: Sequence[Record], threads: int, sync: str,
                    queued: bool, processes: int = 2) -> tuple[float, float, int]:
    """As :func:`write_run` with ``processes`` processes (forked before any
    store is open) sharing the store; the slowest one's seconds, the sum of
    their CPU seconds and commits."""
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(processes), context.Queue()
    children = [context.Process(target=_child, args=(folder, share, threads, sync, queued,
                                                      start, out))
                for share in split(records, processes)]
    for child in children:
        child.start()
    results = [out.get() for _ in children]
    for child in children:
        child.join()
    return (max(r[0] for r in results), sum(r[1] for r in results),
            sum(r[2] for r in results))


def bench_write_paths(folder: Path, records: Sequence[Record], threads: int) -> None:
    print(f"{'put_sync path':<34}{'records/s':>10}  {'CPU ms/record':>13}  records/commit")
    runs = 0
    for label, sync, queued in PATHS:
        for count, processes in ((1, 1), (threads, 1), (max(threads // 2, 1), 2)):
            runs += 1
            where = folder / f"write{runs}"
            if processes == 1:
                seconds, cpu, commits = write_run(where, records, count, sync, queued)
                how = f"{count} thread{'s' if count > 1 else ''}"
            else:
                seconds, cpu, commits = write_processes(where, records, count, sync, queued,
                                                        processes)
                how = f"{processes} processes x {count} threads"
            print(f"{label + ', ' + how:<34}{len(records) / seconds:>10,.0f}  "
                  f"{cpu * 1000 / len(records):>13.3f}  {len(records) / max(commits, 1):.1f}")


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10,.0f}/s  ({count:,} in {seconds:.2f} s)"


def report_writes(label: str, store: Store, count: int, seconds: float, commits: int) -> None:
    print(f"{label:<28}{rate(count, seconds)}  {commits} commits, "
          f"{count / max(commits, 1):.1f} records/commit")


def bench_reads(store: Store, ids: list[str], threads: int, rng: random.Random) -> None:
    sample = [rng.choice(ids) for _ in range(20_000)]
    start = time.perf_counter()
    for record_id in sample:
        store.get(record_id)
    print(f"{'get, 1 thread':<28}{rate(len(sample), time.perf_counter() - start)}")

    seconds = run_threads(lambda share: [store.get(r) for r in share],  # type: ignore[arg-type]
                          [sample[n::threads] for n in range(threads)])
    print(f"{f'get, {threads} threads':<28}{rate(len(sample), seconds)}")

    chunks = [sample[n:n + 100] for n in range(0, 5_000, 100)]
    start = time.perf_counter()
    for chunk in chunks:
        store.get_many(chunk)
    print(f"{'get_many(100), records':<28}{rate(5_000, time.perf_counter() - start)}")

    start = time.perf_counter()
    for chunk in chunks:
        store.in_index("has_verified_smime", chunk)
    print(f"{'in_index(100), ids':<28}{rate(5_000, time.perf_counter() - start)}")

    start = time.perf_counter()
    changes = store.changes_since("0")
    seconds = time.perf_counter() - start
    print(f"{'changes_since(0), entries':<28}{rate(len(changes.created), seconds)}")


def environment(folder: Path) -> None:
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True, check=False)
    kind = fs.stdout.splitlines()[-1].split()[1] if fs.returncode == 0 else "?"
    print(f"environment: Python {platform.python_version()}, py-lmdb {lmdb.__version__} "
          f"(LMDB {'.'.join(map(str, lmdb.version()))}), {os.cpu_count()} CPUs, "
          f"store on {kind} ({folder})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--signers", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--write-records", type=int, default=5_000,
                        help="records per run of the put_sync comparison")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    signers = make_signers(rng, args.signers)
    first = [make_record(rng, signers, n) for n in range(args.records)]
    second = [make_record(rng, signers, n) for n in range(args.records)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        environment(folder)
        with Store.open(folder / "store") as store:
            seconds = bench_async(store, first, args.threads)
            commits = store.stats()["commits"]
            report_writes(f"put, {args.threads} threads async", store, len(first), seconds,
                          commits)
            bench_sync(store, second, args.threads)
            bench_reads(store, [r.record_id for r in first + second], args.threads, rng)
            stats = store.stats()
            sizes = [len(r.certificates) for r in first]
            print(f"store: {stats['entries']:,} records, {stats['certs']:,} certificates, "
                  f"{stats['used_bytes'] / 2**20:.1f} MiB used "
                  f"({stats['used_bytes'] / stats['entries']:.0f} bytes/record, "
                  f"{statistics.mean(sizes):.1f} certificates referenced per record)")
        bench_write_paths(folder, second[:args.write_records], args.threads)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""End-to-end Postfix throughput with smime-milter, with a null milter and with none.

Builds a live test PKI (root -> intermediate -> RSA-2048 leaf alice@example.com, valid
today), writes one multipart/signed message of a few KB and sends COUNT copies of it with
``smtp-source`` over SESSIONS parallel SMTP sessions through three throw-away Postfix
instances: (a) bare, (b) with :mod:`tests.support.nullmilter` (the milter protocol
alone), (c) with the real ``smime-milter run`` daemon (trust anchor: the root).  Each
round measures all three, in a rotating order; the medians over ROUNDS rounds are
reported with the ratios smime/bare and null/bare, and the daemon's own per-message time
(``ms=`` of its log lines).

Usage: .venv/bin/python bench/bench_milter_postfix.py [--count N] [--sessions S] [--rounds R]

Needs root and Postfix (see postfix_throughput.py).  This is a measurement, not a test:
it prints numbers and asserts nothing, except that the milter really verified (every log
line and a sample of delivered copies say ``signed/verified``), else the numbers would
describe a broken set-up.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO, REPO / "bench"):  # no install needed
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from postfix_throughput import RECIPIENT, SENDER, measure_throughput

from smime_milter.model import Status
from smime_milter.stamp.fields import STATUS_HEADER, parse_status_header
from tests.support.daemon import MilterProcess
from tests.support.nullmilter import null_milter
from tests.support.pki import TestPki, build_pki
from tests.support.postfix import make_traversable, process_group
from tests.support.smime import multipart_signed, text_entity

SIGNER = "alice@example.com"
CONFIGS = ("bare", "null", "smime")
LOG_LINE = re.compile(r"queue_id=\S+ .*?status=(\S+) .*? ms=(\d+)")
SAMPLES_PER_ROUND = 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

BODY_LINE = "The quarterly report is attached; please review the figures before Friday."


@dataclass
class Results:
    """Everything measured: rates per configuration and round, the daemon's timings."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    orders: list[tuple[str, ...]] = field(default_factory=list)
    milter_ms: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    checked: int = 0
    #: CPU seconds during the measured smime runs: the daemon process, its other processes.
    daemon_cpu: float = 0.0
    worker_cpu: float = 0.0

    def ratios(self, config: str) -> list[float]:
        """Per-round ratio config/bare (paired: same round, minutes apart)."""
        return [r / b for r, b in zip(self.rates[config], self.rates["bare"], strict=True)]


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def write_message(pki: TestPki, path: Path, body_bytes: int) -> int:
    """Write the signed message for ``smtp-source -F`` (LF line ends: it appends CRLF to
    every line, which restores exactly the signed bytes); return its size on the wire."""
    lines = [f"{BODY_LINE} ({n})" for n in range(max(1, body_bytes // (len(BODY_LINE) + 8)))]
    message = multipart_signed(
        text_entity("Hello Bob,\n\n" + "\n".join(lines) + "\n\nAlice\n"),
        pki.rsa,
        from_addr=SIGNER,
        to=RECIPIENT,
        subject="signed throughput sample",
    )
    path.write_bytes(message.replace(b"\r\n", b"\n"))
    return len(message)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def cpu_seconds(pgid: int) -> dict[int, float]:
    """User + system CPU seconds of every process in group *pgid* (all its threads)."""
    seconds = {}
    for pid in process_group(pgid):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def check_samples(samples: Sequence[bytes]) -> None:
    """Fail unless every sampled copy carries exactly one signed/verified stamp."""
    for raw in samples:
        values = message_from_bytes(raw).get_all(STATUS_HEADER, [])
        statuses = [parse_status_header(str(value))[0] for value in values]
        if statuses != [Status.SIGNED_VERIFIED]:
            sys.exit(f"broken set-up: delivered copy has {STATUS_HEADER}: {values!r}")


def rotated(round_index: int) -> tuple[str, ...]:
    """bare,null,smime / null,smime,bare / smime,bare,null / ...: every configuration
    gets every position as often as the others over three rounds."""
    shift = round_index % len(CONFIGS)
    return CONFIGS[shift:] + CONFIGS[:shift]


def measure_smime(
    args: argparse.Namespace, message: Path, daemon: MilterProcess, results: Results
) -> float:
    """One measured run through smime-milter: its rate, plus what the daemon logged and
    spent meanwhile, and the sanity check of sampled deliveries."""
    if daemon.process is None:
        raise RuntimeError("smime-milter is not running")
    pid = daemon.process.pid
    log_offset = len(daemon.log_text())
    cpu_before = cpu_seconds(pid)
    run = measure_throughput(
        message, args.count, args.sessions, daemon.postfix_socket, samples=SAMPLES_PER_ROUND
    )
    for process, seconds in cpu_seconds(pid).items():
        used = seconds - cpu_before.get(process, 0.0)
        if process == pid:
            results.daemon_cpu += used
        else:
            results.worker_cpu += used
    check_samples(run.samples)
    results.checked += len(run.samples)
    lines = LOG_LINE.findall(daemon.log_text()[log_offset:])
    results.statuses.update(status for status, _ in lines)
    results.milter_ms.extend(int(ms) for _, ms in lines)
    return run.per_second


def run_rounds(
    args: argparse.Namespace,
    message: Path,
    sockets: dict[str, str | None],
    daemon: MilterProcess,
    results: Results,
    report: Callable[[str], None],
) -> None:
    """A warm-up pass through every configuration, then ROUNDS measured rounds."""
    if args.warmup:
        for config in CONFIGS:
            measure_throughput(message, args.warmup, args.sessions, sockets[config])
    for round_index in range(args.rounds):
        order = rotated(round_index)
        results.orders.append(order)
        for config in order:
            if config == "smime":
                rate = measure_smime(args, message, daemon, results)
            else:
                rate = measure_throughput(
                    message, args.count, args.sessions, sockets[config]
                ).per_second
            results.rates[config].append(rate)
        report(
            f"round {round_index + 1}: "
            + ", ".join(f"{c} {results.rates[c][-1]:.1f}" for c in order)
            + " msgs/s"
        )


def postfix_version() -> str:
    result = subprocess.run(
        ["/usr/sbin/postconf", "-d", "-h", "mail_version"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() or "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def print_results(args: argparse.Namespace, results: Results) -> None:
    print()
    print(f"{'round':<7}{'order':<18}{'bare':>9}{'null':>9}{'smime':>9}"
          f"{'null/bare':>11}{'smime/bare':>12}")
    null_ratios, smime_ratios = results.ratios("null"), results.ratios("smime")
    for index, order in enumerate(results.orders):
        rates = "".join(f"{results.rates[c][index]:>9.1f}" for c in CONFIGS)
        print(f"{index + 1:<7}{','.join(order):<18}{rates}"
              f"{null_ratios[index]:>11.2f}{smime_ratios[index]:>12.2f}")
    medians = "".join(f"{statistics.median(results.rates[c]):>9.1f}" for c in CONFIGS)
    print(f"{'median':<25}{medians}{statistics.median(null_ratios):>11.2f}"
          f"{statistics.median(smime_ratios):>12.2f}")
    print("(msgs/s, first SMTP connection to last Maildir delivery; ratios are per round, "
          "their median in the last row)")
    print()
    ms = results.milter_ms
    if ms:
        print(f"smime-milter time per message (end of data to verdict, its ms= log field): "
              f"median {statistics.median(ms):.0f} ms, p95 {percentile(ms, 0.95):.0f} ms, "
              f"max {max(ms)} ms over {len(ms)} messages")
        print(f"smime-milter CPU per message: {1000 * results.daemon_cpu / len(ms):.2f} ms "
              f"in the daemon process (libmilter threads, pool, store), "
              f"{1000 * results.worker_cpu / len(ms):.2f} ms in its verification workers")
    print("milter verdicts in its log: "
          + ", ".join(f"{status} {n}" for status, n in results.statuses.most_common())
          + f"; {results.checked} sampled deliveries carry {STATUS_HEADER}: signed/verified")
    print(f"environment: {os.cpu_count()} CPUs ({cpu_model()}), Postfix {postfix_version()}, "
          f"Python {platform.python_version()}, load average "
          + " ".join(f"{load:.2f}" for load in os.getloadavg()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per run (2000)")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions (10)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (3)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="unmeasured messages per configuration first (200; 0: none)")
    parser.add_argument("--body-bytes", type=int, default=3000,
                        help="approximate size of the signed text (3000)")
    parser.add_argument("--workers", type=int, default=0,
                        help="smime-milter verification processes (0: its default, one per CPU)")
    args = parser.parse_args(argv)

    pki = build_pki(today())
    expected = args.rounds * args.count
    with tempfile.TemporaryDirectory(prefix="bench-milter-postfix-") as scratch:
        base = Path(scratch)
        message = base / "signed.eml"
        size = write_message(pki, message, args.body_bytes)
        anchors = base / "root.pem"
        anchors.write_bytes(pki.root.cert_pem)
        milter_dir = base / "milter"
        milter_dir.mkdir()
        make_traversable(milter_dir / "milter.sock")
        print(f"smime-milter end-to-end benchmark: {args.count} messages x {args.rounds} rounds "
              f"per configuration, {args.sessions} SMTP sessions (smtp-source), "
              f"warm-up {args.warmup}")
        print(f"message: multipart/signed, {size} bytes, From {SIGNER}, envelope "
              f"{SENDER} -> {RECIPIENT}; signer RSA-2048, root -> intermediate -> leaf, "
              f"trust anchor: root")
        with (
            null_milter(f"unix:{base}/null.sock") as null_socket,
            MilterProcess(milter_dir, anchors, workers=args.workers) as daemon,
        ):
            sockets = {"bare": None, "null": null_socket, "smime": daemon.postfix_socket}
            results = Results()
            run_rounds(args, message, sockets, daemon, results, print)
        if results.statuses != Counter({Status.SIGNED_VERIFIED.value: expected}):
            sys.exit(f"broken set-up: expected {expected} signed/verified log lines, "
                     f"got {dict(results.statuses)}")
    print_results(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""End-to-end Postfix throughput: bare, with a do-nothing milter, with smime-milter.

Builds a live test PKI (root -> intermediate -> SIGNERS RSA-2048 leaves, valid today) and
MESSAGES distinct signed messages (text bodies of 2-8 KB, two thirds multipart/signed and
one third opaque, From and envelope sender the signer's address).  Every round sends
COUNT of them (cycling through the distinct ones) over SESSIONS parallel SMTP sessions
through a fresh throw-away Postfix in each of three configurations, in an order that
rotates from round to round: **bare** (no milter), **null** (tests.support.nullmilter
with --add-headers: a pymilter that takes smime-milter's protocol steps and inserts two
header fields, nothing else) and **smime** (the real ``smime-milter run`` daemon with the
shipped defaults except its socket, store and trust anchor).  It prints msg/s per round,
the per-round ratios with their median and spread against the issue-15 goals, CPU per
message of the load generator, Postfix and both milters (smime-milter: its whole process
tree, from /proc), and then sends one 50 MB signed message through the running
smime-milter and prints the peak RSS increase of its processes.

Usage: .venv/bin/python bench/bench_milter_postfix.py [--count N] [--messages M]
           [--sessions S] [--rounds R] [--signers K] [--warmup W] [--workers N]
           [--skip-memory]

Needs root and Postfix (see postfix_throughput.py: instances on 127.0.0.1, free high
ports, their own directories; never port 25 or /etc/postfix).  This is a measurement,
not a test: it prints numbers and asserts nothing, except that the milters really
worked (every smime run logs one signed/verified line per message, sampled deliveries
carry the stamp or the null milter's fields), else the numbers would describe a broken
set-up.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

from cryptography import x509

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "milter", REPO, REPO / "bench"):  # no install needed
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from postfix_throughput import RECIPIENT, Outgoing, measure_throughput, process_cpu

from smime_milter.model import Status
from smime_milter.stamp.fields import STATUS_HEADER, parse_status_header
from tests.support.daemon import POSTFIX_GROUP, MilterProcess
from tests.support.nullmilter import ADDED_HEADERS, null_milter_process
from tests.support.pki import Identity, TestPki, build_pki, make_leaf
from tests.support.postfix import PostfixInstance, Setting
from tests.support.smime import CRLF, multipart_signed, opaque_signed, text_entity

CONFIGS = ("bare", "null", "smime")
STATUS_LINE = re.compile(r"queue_id=\S+ .*?status=(\S+)")
MS_FIELD = re.compile(r" ms=(\d+)")
SAMPLES_PER_RUN = 5
MEMORY_MESSAGE_BYTES = 50 * 1024 * 1024
MEMORY_GOAL_MB = 64
GOALS = (("smime", "null", 0.9), ("smime", "bare", 0.7))
WORD_TEXT = (
    "report figures quarterly review budget meeting agenda contract draft signed invoice "
    "project schedule delivery customer account approval minutes summary please attached "
    "regards team office update status request order payment notice policy security the "
    "and of to in for on with by from at as is are be this that we you our your will"
)
WORDS = tuple(WORD_TEXT.split())


@dataclass
class Results:
    """Everything measured: rates per configuration and round, CPU, the daemon's log."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONFIGS})
    orders: list[tuple[str, ...]] = field(default_factory=list)
    #: CPU seconds over the measured runs: the load generator, Postfix per configuration,
    #: the null milter, smime-milter's whole process tree.
    client_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CONFIGS, 0.0))
    postfix_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CONFIGS, 0.0))
    milter_cpu: dict[str, float] = field(default_factory=lambda: {"null": 0.0, "smime": 0.0})
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CONFIGS, 0.0))
    milter_ms: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    checked: int = 0

    def ratios(self, config: str, base: str) -> list[float]:
        """Per-round ratio config/base (paired: same round, a minute apart at most)."""
        return [a / b for a, b in zip(self.rates[config], self.rates[base], strict=True)]


# -- messages ----------------------------------------------------------------------------


def today() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def make_signers(pki: TestPki, count: int) -> list[Identity]:
    """*count* RSA-2048 leaves under the test intermediate, one address each."""
    return [
        make_leaf(pki.intermediate, f"signer{n:02d}@example.com", now=pki.now,
                  key_label=f"bench-e2e:signer{n}")
        for n in range(count)
    ]


def random_text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 13))).capitalize() + "."
        lines.append(line)
        total += len(line) + 2
    return "\n".join(lines)


def build_messages(signers: Sequence[Identity], count: int, seed: int) -> list[bytes]:
    """*count* distinct signed messages, round-robin over *signers*: bodies of 2-8 KB,
    every third one opaque, the others multipart/signed."""
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        signer = signers[n % len(signers)]
        address = signer_address(signer)
        body = f"Hello Bob,\n\n{random_text(rng, rng.randint(2048, 8192))}\n\n-- {address}\n"
        build = opaque_signed if n % 3 == 2 else multipart_signed
        messages.append(build(text_entity(body), signer, from_addr=address,
                              to=RECIPIENT, subject=f"bench message {n}"))
    return messages


def signer_address(signer: Identity) -> str:
    san = signer.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return str(san.value.get_values_for_type(x509.RFC822Name)[0])


def big_message(signer: Identity, size: int) -> bytes:
    """A multipart/signed message of about *size* bytes: a short text and a random
    base64 attachment, signed by *signer*."""
    raw = os.urandom(size * 57 // 78)  # 57 bytes per 76-character base64 line + CRLF
    encoded = base64.b64encode(raw)
    lines = b"".join(encoded[i : i + 76] + CRLF for i in range(0, len(encoded), 76))
    boundary = "bench-memory-boundary"
    inner = (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n"
    ).encode() + text_entity("The archive is attached.\n") + (
        f"\r\n--{boundary}\r\n"
        "Content-Type: application/octet-stream; name=archive.bin\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=archive.bin\r\n\r\n"
    ).encode() + lines + f"\r\n--{boundary}--\r\n".encode()
    address = signer_address(signer)
    return multipart_signed(inner, signer, from_addr=address, to=RECIPIENT,
                            subject="a 50 MB signed message")


# -- the daemon --------------------------------------------------------------------------


class ShippedMilter(MilterProcess):
    """``smime-milter run`` with the shipped defaults except what the benchmark must
    set: socket (and its group, for Postfix's smtpd), store, trust anchor, the anchor
    directory (so no system directory adds anchors) and ``user = "root"``: a source
    checkout's interpreter often lives where the service user cannot read it (here
    /root/.pyenv), and the user does not change the work per message.  ``--workers``
    goes on the command line when given."""

    def __init__(self, directory: Path, anchors: Path, workers: int | None) -> None:
        super().__init__(directory, anchors, user="root")
        self.run_args = () if workers is None else ("--workers", str(workers))

    def write_config(self, extra_toml: str | None = None) -> None:
        self.config.write_text(
            f'[trust]\nanchors = ["{self.anchors}"]\n'
            f'anchor_directory = "{self.anchor_directory}"\n'
            f'[milter]\nsocket = "unix:{self.socket}"\nsocket_group = "{POSTFIX_GROUP}"\n'
            'user = "root"\n'
            f'[store]\npath = "{self.store_path}"\n'
        )

    def __enter__(self) -> ShippedMilter:
        self.start()
        return self

    @property
    def pid(self) -> int:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"smime-milter is not running:\n{self.log_text()[-2000:]}")
        return self.process.pid


def process_tree(root: int) -> set[int]:
    """*root* and all its descendants (by parent PID), plus anything else in its
    session (the daemon starts one), from /proc: whatever its process layout."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = Path(entry.path, "stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2 :].split()
            parents[int(entry.name)] = int(fields[1])
            sessions[int(entry.name)] = int(fields[3])
    tree = {root} | {pid for pid, sid in sessions.items() if sid == root}
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def tree_cpu(root: int) -> float:
    """CPU seconds of *root*'s process tree (reaped children included)."""
    return process_cpu(process_tree(root))


def status_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if STATUS_LINE.search(line)]


def wait_for_status_lines(daemon: MilterProcess, offset: int, count: int,
                          timeout: float = 30.0) -> list[str]:
    """The daemon's verdict lines after *offset*, once there are *count* (it may log
    just after replying), or what there is after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        lines = status_lines(daemon.log_text()[offset:])
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# -- measuring ---------------------------------------------------------------------------


def check_stamps(samples: Sequence[bytes]) -> None:
    """Fail unless every sampled copy carries exactly one signed/verified stamp."""
    for raw in samples:
        values = message_from_bytes(raw).get_all(STATUS_HEADER, [])
        statuses = [parse_status_header(str(value))[0] for value in values]
        if statuses != [Status.SIGNED_VERIFIED]:
            sys.exit(f"broken set-up: delivered copy has {STATUS_HEADER}: {values!r}")


def check_null_fields(samples: Sequence[bytes]) -> None:
    """Fail unless every sampled copy carries the null milter's two fields."""
    for raw in samples:
        message = message_from_bytes(raw)
        if any(len(message.get_all(name, [])) != 1 for name, _ in ADDED_HEADERS):
            sys.exit("broken set-up: a delivered copy lacks the null milter's fields")


def rotated(round_index: int) -> tuple[str, ...]:
    """bare,null,smime / null,smime,bare / smime,bare,null / ...: every configuration
    gets every position as often as the others over three rounds."""
    shift = round_index % len(CONFIGS)
    return CONFIGS[shift:] + CONFIGS[:shift]


@dataclass
class Bench:
    """The running milters and the messages; one measured run per call of :meth:`run`."""

    args: argparse.Namespace
    messages: list[Outgoing]
    sockets: dict[str, str | None]
    pids: dict[str, int]
    daemon: ShippedMilter
    results: Results

    def run(self, config: str, count: int, measured: bool) -> float:
        """One run of *count* messages through *config*; its msg/s."""
        log_offset = len(self.daemon.log_text())
        pid = self.pids.get(config)
        cpu_before = tree_cpu(pid) if pid else 0.0
        run = measure_throughput(self.messages, count, self.args.sessions, self.sockets[config],
                                 samples=SAMPLES_PER_RUN)
        cpu = tree_cpu(pid) - cpu_before if pid else 0.0
        if config == "smime":
            lines = wait_for_status_lines(self.daemon, log_offset, count)
            statuses = Counter(found.group(1) for line in lines
                               if (found := STATUS_LINE.search(line)))
            if statuses != Counter({Status.SIGNED_VERIFIED.value: count}):
                sys.exit(f"broken set-up: {count} messages, smime-milter logged {dict(statuses)}")
            check_stamps(run.samples)
        elif config == "null":
            check_null_fields(run.samples)
        if measured:
            results = self.results
            results.client_cpu[config] += run.client_cpu
            results.postfix_cpu[config] += run.postfix_cpu
            results.seconds[config] += run.seconds
            results.checked += len(run.samples) if config != "bare" else 0
            if config in results.milter_cpu:
                results.milter_cpu[config] += cpu
            if config == "smime":
                results.statuses.update(statuses)
                results.milter_ms.extend(
                    int(found.group(1)) for line in lines if (found := MS_FIELD.search(line))
                )
        return run.per_second

    def rounds(self, report: Callable[[str], None]) -> None:
        """A warm-up pass through every configuration, then the measured rounds."""
        if self.args.warmup:
            for config in CONFIGS:
                self.run(config, self.args.warmup, measured=False)
        for round_index in range(self.args.rounds):
            order = rotated(round_index)
            self.results.orders.append(order)
            for config in order:
                self.results.rates[config].append(self.run(config, self.args.count, True))
            report(f"round {round_index + 1}: "
                   + ", ".join(f"{c} {self.results.rates[c][-1]:.1f}" for c in order)
                   + " msg/s")


# -- memory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryUse:
    pid: int
    name: str
    rss_before: int  # kB
    peak_after: int  # kB
    reset: bool  # VmHWM was reset before, so peak_after is the peak during the message

    @property
    def increase(self) -> int:
        return self.peak_after - self.rss_before


def memory_status(pid: int) -> dict[str, int | str]:
    values: dict[str, int | str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
            elif key == "Name":
                values[key] = value.strip()
    return values


def reset_peak(pid: int) -> bool:
    """Reset *pid*'s VmHWM to its current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_memory(daemon: ShippedMilter, message: bytes, sender: str,
                   report: Callable[[str], None]) -> tuple[list[MemoryUse], float]:
    """Send *message* through Postfix and the running daemon; per process of the daemon's
    tree: RSS before, peak RSS while it was handled.  Also the seconds it took."""
    before: dict[int, tuple[int, bool]] = {}
    for pid in process_tree(daemon.pid):
        status = memory_status(pid)
        if "VmRSS" in status:
            before[pid] = (int(status["VmRSS"]), reset_peak(pid))
    log_offset = len(daemon.log_text())
    size_limit = 2 * len(message)
    settings: dict[str, Setting] = {
        "message_size_limit": size_limit,
        "virtual_mailbox_limit": 2 * size_limit,
        "milter_content_timeout": "600s",
        "milter_command_timeout": "600s",
    }
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="postfix-bench-") as base,
        PostfixInstance(Path(base), daemon.postfix_socket, settings=settings,
                        mailboxes=[RECIPIENT]) as mta,
    ):
        reply = mta.send(message, sender, [RECIPIENT], timeout=900)
        if not reply.ok:
            sys.exit(f"broken set-up: the 50 MB message got {reply.code} {reply.text}")
        [delivered] = mta.wait_for_delivery(RECIPIENT, 1, timeout=600)
        seconds = time.monotonic() - started
    lines = wait_for_status_lines(daemon, log_offset, 1)
    if len(lines) != 1 or f"status={Status.SIGNED_VERIFIED.value}" not in lines[0]:
        sys.exit(f"broken set-up: the 50 MB message was logged as {lines!r}")
    check_stamps([delivered])
    report(f"50 MB message: signed/verified, {seconds:.1f} s from SMTP to Maildir")
    uses = []
    for pid in process_tree(daemon.pid):
        status = memory_status(pid)
        if "VmHWM" not in status:
            continue
        rss, reset = before.get(pid, (0, True))  # a process started meanwhile: all of it
        uses.append(MemoryUse(pid, str(status.get("Name", "?")), rss,
                              int(status["VmHWM"]), reset))
    return sorted(uses, key=lambda use: use.increase, reverse=True), seconds


# -- report ------------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 2) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def postfix_version() -> str:
    result = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


RATIOS = (("null", "bare"), ("smime", "bare"), ("smime", "null"))


def print_results(args: argparse.Namespace, results: Results) -> None:
    print()
    header = "".join(f"{c:>9}" for c in CONFIGS) + "".join(f"{f'{a}/{b}':>12}" for a, b in RATIOS)
    print(f"{'round':<7}{'order':<18}{header}")
    ratios = {pair: results.ratios(*pair) for pair in RATIOS}
    for index, order in enumerate(results.orders):
        rates = "".join(f"{results.rates[c][index]:>9.1f}" for c in CONFIGS)
        print(f"{index + 1:<7}{','.join(order):<18}{rates}"
              + "".join(f"{ratios[pair][index]:>12.2f}" for pair in RATIOS))
    medians = "".join(f"{statistics.median(results.rates[c]):>9.1f}" for c in CONFIGS)
    print(f"{'median':<25}{medians}"
          + "".join(f"{statistics.median(ratios[pair]):>12.2f}" for pair in RATIOS))
    print("(msg/s from the first SMTP connection to the last Maildir delivery; ratios are "
          "taken per round)")
    print()
    for config in CONFIGS:
        print(f"{config:<6} {spread(results.rates[config], 1)} msg/s (median, min-max over "
              f"rounds)")
    for pair in RATIOS:
        print(f"{pair[0]}/{pair[1]:<6} {spread(ratios[pair])} (median, min-max per round)")
    for config, base, goal in GOALS:
        value = statistics.median(ratios[(config, base)])
        print(f"goal {config}/{base} >= {goal}: {value:.2f} -- "
              + ("met" if value >= goal else "not met"))
    print()
    total = args.rounds * args.count
    print(f"CPU per message (ms of CPU time over the measured runs, from /proc; "
          f"{os.cpu_count()} CPUs):")
    print(f"  {'':<8}{'Postfix':>9}{'milter':>9}{'client':>9}{'total':>9}{'CPUs busy':>11}")
    for config in CONFIGS:
        postfix, milter, client = (1000 * cpu / total for cpu in (
            results.postfix_cpu[config], results.milter_cpu.get(config, 0.0),
            results.client_cpu[config]))
        busy = (postfix + milter + client) * total / 1000 / (
            results.seconds[config] * (os.cpu_count() or 1))
        shown = f"{milter:>9.2f}" if config in results.milter_cpu else f"{'-':>9}"
        print(f"  {config:<8}{postfix:>9.2f}{shown}{client:>9.2f}"
              f"{postfix + milter + client:>9.2f}{100 * busy:>10.0f}%")
    print(f"  (Postfix: all its daemons, start-up included; milter: the null milter's process, "
          f"smime-milter's daemon with all its processes; client: the {args.sessions} "
          f"load generator processes)")
    ms = results.milter_ms
    if ms:
        print(f"smime-milter time per message (its log's ms=: end of data to verdict): "
              f"median {statistics.median(ms):.0f} ms, p95 {percentile(ms, 0.95):.0f} ms, "
              f"max {max(ms)} ms over {len(ms)} messages")
    print("smime-milter verdicts in its log: "
          + ", ".join(f"{status} {n}" for status, n in results.statuses.most_common())
          + f"; {results.checked} sampled deliveries checked")


def print_memory(uses: Sequence[MemoryUse]) -> None:
    print()
    print("50 MB message, smime-milter's processes (kB; peak = VmHWM after, "
          "reset to RSS before the message):")
    print(f"  {'pid':>8} {'name':<16}{'RSS before':>12}{'peak':>12}{'increase':>12}")
    for use in uses[:6]:
        note = "" if use.reset else "  (VmHWM not reset: peak since start)"
        print(f"  {use.pid:>8} {use.name:<16}{use.rss_before:>12}{use.peak_after:>12}"
              f"{use.increase:>12}{note}")
    top = uses[0].increase / 1024 if uses else 0.0
    print(f"goal peak RSS increase of the process that handled it < {MEMORY_GOAL_MB} MB: "
          f"{top:.1f} MB -- " + ("met" if top < MEMORY_GOAL_MB else "not met"))


def print_environment(args: argparse.Namespace, started: float) -> None:
    print(f"environment: {os.cpu_count()} CPUs ({cpu_model()}), Postfix {postfix_version()}, "
          f"Python {platform.python_version()}, commit {git_commit()}, load average "
          + " ".join(f"{load:.2f}" for load in os.getloadavg())
          + f"; whole run {time.monotonic() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000,
                        help="messages per run and configuration (2000)")
    parser.add_argument("--messages", type=int, default=200,
                        help="distinct signed messages the runs cycle through (200)")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions (10)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--signers", type=int, default=10, help="distinct signers (10)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="unmeasured messages per configuration first (200; 0: none)")
    parser.add_argument("--workers", type=int, default=None,
                        help="smime-milter run --workers N (default: not given, the "
                             "daemon's own default)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="do not send the 50 MB message")
    parser.add_argument("--seed", type=int, default=15, help="message text seed (15)")
    args = parser.parse_args(argv)
    if min(args.count, args.messages, args.sessions, args.rounds, args.signers) < 1:
        parser.error("--count, --messages, --sessions, --rounds and --signers must be >= 1")

    pki = build_pki(today())
    signers = make_signers(pki, args.signers)
    raw = build_messages(signers, args.messages, args.seed)
    messages = [Outgoing.of(message, signer_address(signers[n % len(signers)]))
                for n, message in enumerate(raw)]
    sizes = [len(message) for message in raw]
    print(f"smime-milter end-to-end benchmark: {args.count} messages x {args.rounds} rounds "
          f"per configuration, {args.sessions} SMTP sessions, warm-up {args.warmup}")
    print(f"messages: {args.messages} distinct, {statistics.mean(sizes) / 1024:.1f} KB on "
          f"average ({min(sizes)}-{max(sizes)} bytes), 2/3 multipart/signed, 1/3 opaque, "
          f"from {args.signers} RSA-2048 signers (root -> intermediate -> leaf; trust "
          f"anchor: the root)")
    with tempfile.TemporaryDirectory(prefix="bench-milter-postfix-") as scratch:
        base = Path(scratch)
        milter_dir = base / "milter"
        milter_dir.mkdir()
        anchors = milter_dir / "root.pem"
        anchors.write_bytes(pki.root.cert_pem)
        with (
            null_milter_process(f"unix:{base}/null.sock", add_headers=True) as null,
            ShippedMilter(milter_dir, anchors, args.workers) as daemon,
        ):
            workers = "" if args.workers is None else f" --workers {args.workers}"
            print(f"smime-milter: smime-milter run{workers} (shipped defaults), "
                  f"{len(process_tree(daemon.pid))} processes at start")
            results = Results()
            bench = Bench(args, messages,
                          {"bare": None, "null": null.socket, "smime": daemon.postfix_socket},
                          {"null": null.process.pid, "smime": daemon.pid}, daemon, results)
            bench.rounds(print)
            uses: list[MemoryUse] = []
            if not args.skip_memory:
                big = big_message(signers[0], MEMORY_MESSAGE_BYTES)
                uses, _ = measure_memory(daemon, big, signer_address(signers[0]), print)
    print_results(args, results)
    if uses:
        print_memory(uses)
    print_environment(args, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The daemon's Prometheus metrics, and the endpoint that serves them.

Each milter process counts the messages it handles (:class:`MilterMetrics`,
kept across reloads) because that is where a message's fate is known; the
supervisor serves them all, summed through prometheus_client's multiprocess
mode, with its own counters and the gauges read at scrape time
(:class:`SupervisorMetrics`). The exposition is prometheus_client's, from a
registry of our own (not the library's global one, so nothing another import
registers leaks into ours). The endpoint is off unless ``[metrics] listen``
names one: ``inet``/``inet6`` through prometheus_client's
``start_http_server``, a unix socket through a small ``http.server`` on
AF_UNIX.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from smime_milter.config import metrics_address
from smime_milter.errors import SmimeMilterError
from smime_milter.mta.pipeline import RecordSink, Runtime
from smime_milter.store import Record

#: Seconds: from a cached verification (a few ms) to the verify timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0)
#: Mode of a unix metrics socket: the service user and its group.
SOCKET_MODE = 0o660


class MetricsError(SmimeMilterError, RuntimeError):
    """The metrics endpoint cannot be served or read."""


class MilterMetrics:
    """What one milter process counts (names documented in README.rst, Monitoring).

    Under the pre-forked daemon these live in every milter process and reach
    the endpoint through prometheus_client's multiprocess mode (a file per
    process in a private directory, see :func:`share_between_processes`);
    the supervisor adds its own (:class:`SupervisorMetrics`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.messages = Counter(
            "smime_milter_messages", "Messages that reached end of data, by RFC 9219 status "
            "(none: not S/MIME or not examined; error: internal error; refused: an "
            "smime-advanced request refused) and the action taken",
            ["status", "action"], registry=registry)
        self.verify_seconds = Histogram(
            "smime_milter_verify_seconds", "Verification time per message",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.eom_seconds = Histogram(
            "smime_milter_end_of_message_seconds", "Time from end of data to the reply",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.store_commit_seconds = Histogram(
            "smime_milter_store_commit_seconds", "Time until a message's record was committed",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.last_message = Gauge(
            "smime_milter_last_message_timestamp_seconds",
            "When the last message reached end of data (Unix time)", registry=registry,
            multiprocess_mode="max")

    def message(self, status: str, action: str, seconds: float) -> None:
        """One message's fate, counted where its summary line is logged."""
        self.messages.labels(status, action).inc()
        self.eom_seconds.observe(seconds)
        self.last_message.set(time.time())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def share_between_processes(directory: Path) -> None:
    """From now on, every metric value this process and its forked children
    create lives in a file under ``directory`` (prometheus_client's
    multiprocess mode, made for pre-forked servers). Called by the supervisor
    before it forks, with an empty directory of its own."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class SupervisorMetrics:
    """The endpoint's registry: every milter process's counters (from the
    multiprocess directory, when there is one), the supervisor's own reloads
    and restarts, and gauges read at each scrape (processes, store size)."""

    def __init__(self, directory: Path | None) -> None:
        self.registry = CollectorRegistry()
        per_process = self.registry if directory is None else None
        if directory is not None:
            MultiProcessCollector(self.registry, str(directory))  # type: ignore[no-untyped-call]
        self.reloads = Counter(
            "smime_milter_reloads", "Reloads of configuration and trust anchors, by result",
            ["result"], registry=per_process)
        self.worker_restarts = Counter(
            "smime_milter_worker_restarts", "Milter processes replaced after they died "
            "or hung", registry=per_process)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self._gauges = _ScrapeTimeGauges()
        self.registry.register(self._gauges)

    def watch_store(self, stats: Callable[[], Mapping[str, Any]], max_map_size: int) -> None:
        """Store size, read at each scrape."""
        self._gauges.stats = stats
        self._gauges.max_map_size = max_map_size

    def watch_workers(self, configured: Callable[[], int], alive: Callable[[], int]) -> None:
        """How many milter processes should run and how many do, at each scrape."""
        self._gauges.configured = configured
        self._gauges.alive = alive

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTimeGauges(Collector):
    """Gauges computed when scraped (the multiprocess mode has no callback gauges)."""

    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, Any]] | None = None
        self.max_map_size = 0
        self.configured: Callable[[], int] | None = None
        self.alive: Callable[[], int] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.configured is not None and self.alive is not None:
            workers = GaugeMetricFamily("smime_milter_workers", "Milter processes: "
                                        "configured, and alive now", labels=["state"])
            workers.add_metric(["configured"], float(self.configured()))
            workers.add_metric(["alive"], float(self.alive()))
            yield workers
        if self.stats is None:
            return
        try:
            stats: Mapping[str, Any] = self.stats()
        except Exception:  # a scrape must not fail for one unreadable store
            stats = {}
        size = GaugeMetricFamily("smime_milter_store_bytes", "The LMDB store: used bytes, "
                                 "current map size, and max_map_size (writes fail beyond it)",
                                 labels=["kind"])
        size.add_metric(["used"], _number(stats, "used_bytes"))
        size.add_metric(["map"], _number(stats, "map_size"))
        size.add_metric(["max_map"], float(self.max_map_size))
        yield size
        yield GaugeMetricFamily("smime_milter_store_records", "Records in the store",
                                value=_number(stats, "entries"))


def _number(stats: Mapping[str, Any], key: str) -> float:
    try:
        return float(stats[key])
    except (KeyError, TypeError, ValueError):
        return math.nan


@dataclass(frozen=True, slots=True)
class _TimedSink:
    """The store as the pipeline sees it, timing each commit."""

    sink: RecordSink
    seconds: Histogram

    def put_sync(self, record: Record, timeout: float | None = 30.0, *,
                 durable: bool = False) -> int:
        started = time.monotonic()
        try:
            return self.sink.put_sync(record, timeout, durable=durable)
        finally:
            self.seconds.observe(time.monotonic() - started)


def instrument(runtime: Runtime, metrics: MilterMetrics) -> Runtime:
    """``runtime`` with its store commits timed (done for every Runtime a
    milter process builds, reloads too)."""
    return replace(runtime, store=_TimedSink(runtime.store, metrics.store_commit_seconds))


# -- serving ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """GET anything: the exposition (a unix socket has one user, the scraper)."""

    metrics: MilterMetrics | SupervisorMetrics

    def do_GET(self) -> None:
        body = self.metrics.exposition()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class MetricsServer:
    """The endpoint's server thread; :meth:`close` stops it (and removes a unix socket)."""

    def __init__(self, listen: str, shutdown: Callable[[], None], path: str | None) -> None:
        self.listen = listen
        self._shutdown = shutdown
        self._path = path

    def close(self) -> None:
        self._shutdown()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


def serve(listen: str, metrics: MilterMetrics | SupervisorMetrics) -> MetricsServer:
    """Serve ``metrics`` on ``listen`` (a ``[metrics] listen`` value) from a
    daemon thread; MetricsError when the address cannot be bound."""
    address = metrics_address(listen)
    try:
        if isinstance(address, str):
            return _serve_unix(listen, address, metrics)
        server, _ = start_http_server(address[1], address[0], registry=metrics.registry)
    except OSError as exc:
        raise MetricsError(f"metrics.listen: cannot listen on {listen}: "
                           f"{exc.strerror or exc}") from exc
    return MetricsServer(listen, server.shutdown, None)


def _serve_unix(listen: str, path: str, metrics: MilterMetrics | SupervisorMetrics
                ) -> MetricsServer:
    with contextlib.suppress(FileNotFoundError):
        if socket_is_stale(path):
            os.unlink(path)
    handler = type("Handler", (_Handler,), {"metrics": metrics})
    server = _UnixServer(path, handler)
    try:
        os.chmod(path, SOCKET_MODE)
    except OSError:
        server.server_close()
        raise
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
    return MetricsServer(listen, shutdown, path)


def socket_is_stale(path: str) -> bool:
    """Whether ``path`` is a socket nobody listens on (left by a killed daemon)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


# -- reading (smime-milter status) -------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def scrape(listen: str, timeout: float = 5.0) -> dict[str, float]:
    """The samples a running daemon serves on ``listen``, by name with their
    labels (``smime_milter_workers{state="alive"}``); MetricsError when it
    cannot be read."""
    address = metrics_address(listen)
    connection: http.client.HTTPConnection
    if isinstance(address, str):
        connection = _UnixConnection(address, timeout)
    else:
        host = "127.0.0.1" if address[0] == "0.0.0.0" else "::1" if address[0] == "::" \
            else address[0]
        connection = http.client.HTTPConnection(host, address[1], timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        raise MetricsError(f"cannot read {listen}: {getattr(exc, 'strerror', None) or exc}"
                           ) from exc
    finally:
        connection.close()
    if response.status != 200:
        raise MetricsError(f"{listen} answered HTTP {response.status}")
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    except ValueError as exc:
        raise MetricsError(f"{listen} is not a Prometheus exposition: {exc}") from exc
    return samples

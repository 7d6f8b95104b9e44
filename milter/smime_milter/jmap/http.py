"""The JMAP read API over HTTP/1.1 on a unix socket (``smime-milter jmap --listen``).

A JMAP server that keeps its own Email objects forwards the S/MIME parts of
its Requests here instead of spawning ``smime-milter jmap`` per Request:

* ``POST /jmap/api`` (or ``POST /``) with a JMAP Request as the body
  (RFC 8620 §3.1): 200 with the Response as ``application/json``; a
  request-level error is an RFC 7807 problem (``application/problem+json``)
  with its status: ``notJSON`` 400 (also for a Content-Type other than
  ``application/json``; a missing one is tolerated), ``notRequest`` and
  ``unknownCapability`` 400, ``limit`` 413 for a body over
  :data:`MAX_SIZE_REQUEST`. Other methods on the API path are 405, a body
  without ``Content-Length`` 411 (chunked bodies are not accepted).
* ``GET /jmap/session``: a minimal Session-like document, the capabilities
  this API serves (``urn:ietf:params:jmap:smimeverify`` from
  :func:`smime_milter.jmap.capabilities`) and its core limits. It is not a
  full Session (no accounts, no URLs but ``apiUrl``): a real JMAP server
  merges these entries into its own Session object.

Trust anchors are noticed without a restart: before a request (at most every
:data:`TRUST_CHECK_INTERVAL` seconds) the ``(path, mtime_ns, size)`` of every
anchor, intermediate and CRL file is compared with the last look; when they
changed, the trust store is loaded again and, if its content differs, a new
Refresher/SmimeJmap is swapped in (statuses computed with the old anchors
become stale and are re-validated when next read). A background thread
re-validates every stale status each ``cache_lifetime / 2`` seconds (at least
:data:`MIN_REFRESH_INTERVAL`), so Email/changes reports expiry and revocation
flips even when no client asks for the records themselves.

An internal error answers 500 with a problem object and a log line; the
serving thread lives on. SIGTERM and SIGINT stop the server: no new
connections, in-flight requests finish, the socket file is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from socketserver import ThreadingUnixStreamServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from smime_milter.config import Config, check_listen, configure_logging
from smime_milter.errors import SmimeMilterError
from smime_milter.jmap.methods import SmimeJmap, capabilities
from smime_milter.jmap.protocol import (
    CORE,
    MAIL,
    MAX_CALLS_IN_REQUEST,
    MAX_OBJECTS_IN_GET,
    JmapProtocol,
    RequestError,
)
from smime_milter.revalidate import Refresher
from smime_milter.store import Store
from smime_milter.trust import TrustStoreError, trust_files

log = logging.getLogger(__name__)

API_PATHS = frozenset({"/jmap/api", "/"})
SESSION_PATH = "/jmap/session"
#: RFC 8620 ``maxSizeRequest``: larger bodies are refused unread (413).
MAX_SIZE_REQUEST = 10_000_000
#: Seconds between two looks at the trust-anchor files.
TRUST_CHECK_INTERVAL = 5.0
#: The background re-validation never runs more often than this (seconds).
MIN_REFRESH_INTERVAL = 60.0
#: Seconds a connection may stay silent (slow body, idle keep-alive).
CONNECTION_TIMEOUT = 60.0
#: Seconds shutdown waits for requests in progress.
DRAIN_TIMEOUT = 30.0

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


class ServeError(SmimeMilterError):
    """The API cannot be served (socket path taken, not bindable...)."""


def listen_argument(text: str) -> str:
    """argparse ``type`` for ``--listen``: :func:`config.check_listen`."""
    try:
        return check_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def session_document() -> dict[str, Any]:
    """What ``GET /jmap/session`` returns.

    Not a complete RFC 8620 §2 Session: a JMAP server adds
    ``capabilities`` to its own Session's ``capabilities`` (the core
    limits here bound what it may forward in one Request) and
    ``accountCapabilities`` to every account whose mail passes through
    the milter.
    """
    served = capabilities()
    return {
        "capabilities": {
            CORE: {
                "maxSizeRequest": MAX_SIZE_REQUEST,
                "maxCallsInRequest": MAX_CALLS_IN_REQUEST,
                "maxObjectsInGet": MAX_OBJECTS_IN_GET,
            },
            MAIL: {},
            **served["capabilities"],
        },
        "accountCapabilities": served["accountCapabilities"],
        "apiUrl": "/jmap/api",
        "state": "0",
    }


# --------------------------------------------------------------------------- the service



class BuildRefresher(Protocol):
    """Builds the re-validation machinery over ``store`` from ``config`` (the
    composition root's ``build_refresher``); called again whenever the trust
    files change."""

    def __call__(self, config: Config, store: Store, *, readonly: bool = ...,
                 clock: Callable[[], datetime] = ...) -> Refresher: ...


class JmapService:
    """The current :class:`JmapProtocol` over one store, kept in step with the
    trust-anchor files; thread-safe."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        build_refresher: BuildRefresher,
        readonly: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        check_interval: float = TRUST_CHECK_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self._build_refresher = build_refresher
        self.readonly = readonly
        self.clock = clock
        self.check_interval = check_interval
        self._monotonic = monotonic
        self._check_lock = threading.Lock()
        self._fingerprint = trust_files(config.trust)
        self._protocol = self._build()
        self._checked_at = monotonic()

    def _build(self) -> JmapProtocol:
        refresher = self._build_refresher(self.config, self.store, readonly=self.readonly,
                                    clock=self.clock)
        return JmapProtocol(SmimeJmap(refresher))

    @property
    def generation(self) -> str:
        return self._protocol.api.refresher.revalidator.generation

    def protocol(self) -> JmapProtocol:
        """The protocol to answer the next request with (after a look at the
        trust files when the last one is older than ``check_interval``)."""
        if self._monotonic() - self._checked_at >= self.check_interval:
            self.check_trust()
        return self._protocol

    def check_trust(self) -> bool:
        """Re-loads the trust store when its files changed; True when a new
        anchor set was swapped in. One thread looks at a time; the others
        keep answering with the current protocol meanwhile."""
        if not self._check_lock.acquire(blocking=False):
            return False
        try:
            self._checked_at = self._monotonic()
            fingerprint = trust_files(self.config.trust)
            if fingerprint == self._fingerprint:
                return False
            try:
                protocol = self._build()
            except (TrustStoreError, OSError) as exc:
                # Perhaps a file half written: keep the old anchors, look again later.
                log.error("trust anchors changed but cannot be loaded, keeping the "
                          "previous ones: %s", exc)
                return False
            self._fingerprint = fingerprint
            old = self.generation
            new = protocol.api.refresher.revalidator.generation
            if new == old:
                return False
            self._protocol = protocol
            log.info("trust anchors changed (generation %s -> %s): stored statuses are "
                     "re-validated when next read", old, new)
            return True
        finally:
            self._check_lock.release()

    def refresh_due(self) -> int:
        """The periodic job: notice anchor changes, re-validate stale statuses."""
        self.check_trust()
        return self._protocol.api.refresher.refresh_due()


class _Refresher(threading.Thread):
    """Runs :meth:`JmapService.refresh_due` every ``interval`` seconds."""

    def __init__(self, service: JmapService, interval: float) -> None:
        super().__init__(name="jmap-refresh", daemon=True)
        self.service = service
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                count = self.service.refresh_due()
            except Exception:
                log.exception("background re-validation failed")
                continue
            if count:
                log.info("re-validated %d stale status(es)", count)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=DRAIN_TIMEOUT)


def refresh_interval(config: Config) -> float:
    return max(config.jmap.cache_lifetime / 2, MIN_REFRESH_INTERVAL)


# --------------------------------------------------------------------------- HTTP


class _Problem(Exception):
    """An HTTP error answered with an RFC 7807 problem object."""

    def __init__(self, status: int, problem: dict[str, Any], *,
                 headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(problem.get("detail", ""))
        self.status = status
        self.problem = problem
        self.headers = headers or {}
        self.close = close

    @classmethod
    def plain(cls, status: HTTPStatus, detail: str, **kwargs: Any) -> _Problem:
        return cls(status, {"type": "about:blank", "title": status.phrase,
                            "status": int(status), "detail": detail}, **kwargs)

    @classmethod
    def jmap(cls, error: RequestError, **kwargs: Any) -> _Problem:
        return cls(error.status, dict(error.problem), **kwargs)


class JmapHandler(BaseHTTPRequestHandler):
    """One connection; requests on it are answered one after the other."""

    server: JmapHttpServer
    protocol_version = "HTTP/1.1"
    server_version = "smime-milter-jmap"
    timeout = CONNECTION_TIMEOUT

    # ----------------------------------------------------------------- dispatch

    def do_POST(self) -> None:
        self._serve(self._post)

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_HEAD(self) -> None:
        self._serve(self._other)

    def do_PUT(self) -> None:
        self._serve(self._other)

    def do_DELETE(self) -> None:
        self._serve(self._other)

    def do_PATCH(self) -> None:
        self._serve(self._other)

    def do_OPTIONS(self) -> None:
        self._serve(self._other)

    def _serve(self, method: Callable[[], tuple[int, str, bytes, dict[str, str]]]) -> None:
        """Runs ``method`` and writes its answer; every failure becomes a
        problem response, so no exception reaches socketserver."""
        with self.server.request_running():
            try:
                if self.server.stopping.is_set():
                    raise _Problem.plain(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down",
                                         close=True)
                status, content_type, body, headers = method()
            except _Problem as problem:
                status, content_type = problem.status, PROBLEM_JSON
                body = _json_bytes(problem.problem)
                headers = problem.headers
                if problem.close:
                    self.close_connection = True
            except Exception:
                log.exception("%s %s failed", self.command, self.path)
                status, content_type = 500, PROBLEM_JSON
                body = _json_bytes({"type": "about:blank", "title": "Internal Server Error",
                                    "status": 500,
                                    "detail": "internal error; see the server's log"})
                headers = {}
            try:
                self._answer(status, content_type, body, headers)
            except OSError as exc:  # the client went away
                log.debug("%s %s: cannot answer: %s", self.command, self.path, exc)
                self.close_connection = True

    def _answer(self, status: int, content_type: str, body: bytes,
                headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _route(self) -> str:
        return urlsplit(self.path).path

    # ----------------------------------------------------------------- methods

    def _post(self) -> tuple[int, str, bytes, dict[str, str]]:
        path = self._route()
        if path not in API_PATHS:
            return self._other()
        body = self._read_body()
        media_type = self.headers.get_content_type() if "Content-Type" in self.headers else JSON
        if media_type != JSON:
            raise _Problem.jmap(RequestError(
                "notJSON", f"the request's Content-Type is {media_type}, not {JSON}"))
        try:
            request = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Problem.jmap(RequestError("notJSON", f"the request is not JSON: {exc}")
                                ) from None
        try:
            response = self.server.service.protocol().handle(request)
        except RequestError as exc:
            raise _Problem.jmap(exc) from None
        return 200, JSON, _json_bytes(response), {}

    def _get(self) -> tuple[int, str, bytes, dict[str, str]]:
        path = self._route()
        if path == SESSION_PATH:
            return 200, JSON, _json_bytes(session_document()), {}
        return self._other()

    def _other(self) -> tuple[int, str, bytes, dict[str, str]]:
        path = self._route()
        self._discard_body()
        if path in API_PATHS:
            raise _Problem.plain(HTTPStatus.METHOD_NOT_ALLOWED,
                                 f"{self.command} is not allowed on {path}: POST a JMAP "
                                 "Request", headers={"Allow": "POST"})
        if path == SESSION_PATH:
            raise _Problem.plain(HTTPStatus.METHOD_NOT_ALLOWED,
                                 f"{self.command} is not allowed on {path}",
                                 headers={"Allow": "GET"})
        raise _Problem.plain(HTTPStatus.NOT_FOUND, f"no JMAP resource at {path}")

    # ----------------------------------------------------------------- bodies

    def _content_length(self) -> int | None:
        if self.headers.get("Transfer-Encoding"):
            raise _Problem.plain(HTTPStatus.LENGTH_REQUIRED, "send the request with a "
                                 "Content-Length (chunked bodies are not accepted)", close=True)
        text = self.headers.get("Content-Length")
        if text is None:
            return None
        if not text.strip().isdigit():
            raise _Problem.plain(HTTPStatus.BAD_REQUEST, f"bad Content-Length {text!r}",
                                 close=True)
        return int(text)

    def _read_body(self) -> bytes:
        length = self._content_length()
        if length is None:
            raise _Problem.plain(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required",
                                 close=True)
        if length > MAX_SIZE_REQUEST:
            error = RequestError("limit", f"the request has {length} octets, more than "
                                 f"maxSizeRequest ({MAX_SIZE_REQUEST})", 413)
            error.problem["limit"] = "maxSizeRequest"
            # The body stays unread: answer, then drop the connection.
            raise _Problem.jmap(error, close=True)
        body = self.rfile.read(length)
        if len(body) != length:
            raise _Problem.plain(HTTPStatus.BAD_REQUEST, "the body ended early", close=True)
        return body

    def _discard_body(self) -> None:
        """Keeps the connection usable after a request whose body is ignored."""
        length = self._content_length() or 0
        if length > MAX_SIZE_REQUEST:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    # ----------------------------------------------------------------- logging

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def log_error(self, format: str, *args: Any) -> None:
        log.info("http: " + format, *args)


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


class JmapHttpServer(ThreadingUnixStreamServer):
    """An HTTP server on a unix socket, one thread per connection.

    Not an ``http.server.HTTPServer``: that one only adds a TCP
    ``server_bind`` (replaced below) and address reuse (which an AF_UNIX
    socket has no use for); ``server_name``/``server_port`` are still set
    as it would."""

    address_family = socket.AF_UNIX
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    server_name: str
    server_port: int

    def __init__(self, path: str, service: JmapService, mode: int = 0o660) -> None:
        self.service = service
        self.mode = mode
        self.stopping = threading.Event()
        self._busy = 0
        self._idle = threading.Condition()
        self._identity: tuple[int, int] | None = None
        _remove_stale_socket(path)
        super().__init__(path, JmapHandler)

    def server_bind(self) -> None:
        """Binds, then restricts the mode before ``listen``: until then no
        client can connect, so the socket is never reachable more widely."""
        path = str(self.server_address)
        try:
            self.socket.bind(path)
            os.chmod(path, self.mode)
            info = os.stat(path)
        except OSError as exc:
            raise ServeError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from exc
        self._identity = (info.st_dev, info.st_ino)
        self.server_name = "localhost"
        self.server_port = 0

    @property
    def path(self) -> str:
        return str(self.server_address)

    @contextlib.contextmanager
    def request_running(self) -> Iterator[None]:
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """Waits until no request is being answered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def remove_socket(self) -> None:
        """Removes the socket file, unless another process has replaced it."""
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error on a JMAP connection")


def _remove_stale_socket(path: str) -> None:
    """Removes a socket file nobody listens on; refuses anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServeError(f"unix:{path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise ServeError(f"unix:{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ServeError(f"unix:{path}: {exc.strerror or exc}") from exc
    else:
        raise ServeError(f"unix:{path} is in use by another process")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("removed stale socket %s", path)


# --------------------------------------------------------------------------- entry point


def serve(
    config: Config,
    store: Store,
    listen: str,
    *,
    build_refresher: BuildRefresher,
    readonly: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Serves until SIGTERM or SIGINT; returns the exit status. The caller
    owns ``store`` and closes it after this returns."""
    configure_logging(config.milter)
    path = check_listen(listen).partition(":")[2]
    try:
        service = JmapService(config, store, build_refresher=build_refresher,
                              readonly=readonly, clock=clock)
        server = JmapHttpServer(path, service, config.jmap.listen_mode)
    except ServeError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    refresher = None
    if readonly:
        log.info("read-only store: no background re-validation")
    else:
        refresher = _Refresher(service, refresh_interval(config))
        refresher.start()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="jmap-http", daemon=True)
    thread.start()
    log.info("serving the JMAP API on unix:%s (store %s%s)", path, config.store.path,
             ", read-only" if readonly else "")
    try:
        while not stop.wait(1.0):
            if not thread.is_alive():
                log.error("the HTTP server stopped unexpectedly")
                return 1
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.remove_socket()
        if refresher is not None:
            refresher.stop()
        if not server.drain():
            log.warning("requests still running after %.0f s; closing the store anyway",
                        DRAIN_TIMEOUT)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0

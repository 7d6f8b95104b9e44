"""``smime-milter jmap --listen``: the JMAP API over HTTP on a unix socket.

The server runs as the real command in a subprocess, against a store filled
by really verifying messages (``tests/support/jmapworld.py``), and is spoken
to with ``http.client`` over AF_UNIX. The scenario was delivered on
2026-06-01 while the server uses the wall clock, so current statuses are
stale and re-validated as of now; the assertions rely on at-delivery values,
on statuses the passing of time cannot change, errors and HTTP behaviour.
The last tests drive :class:`JmapService` in-process with a pretend clock.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from smime_milter.bootstrap import build_refresher
from smime_milter.config.reader import load_config
from smime_milter.jmap import http as jmap_http
from smime_milter.jmap.http import JmapService, refresh_interval, session_document
from smime_milter.store.facade import Store
from tests.support import activity
from tests.support.jmapworld import ACCOUNT, DELIVERED, USING, World, build_world
from tests.support.pki import TestPki

pytestmark = [pytest.mark.daemon, pytest.mark.process]

VERIFIED = "signed/verified"
FAILED = "signed/failed"
AT_DELIVERY_PROPERTIES = ["smimeStatusAtDelivery", "receivedAt"]
SMIMEVERIFY = "urn:ietf:params:jmap:smimeverify"
STARTUP_TIMEOUT = 60.0


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """One ``smime-milter jmap --listen`` process."""

    def __init__(self, world: World, directory: Path, *extra: str) -> None:
        self.world = world
        self.socket = str(directory / "jmap.sock")
        self.log = directory / "jmap.log"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        activity.note("daemon")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "smime_milter.cli", "jmap", "--config",
                 str(self.world.config), "--listen", f"unix:{self.socket}", *self.extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n"
                                     f"{self.log.read_text()}")
            with contextlib.suppress(OSError):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(self.socket)
                    return
                finally:
                    probe.close()
            time.sleep(0.05)
        raise AssertionError(f"server did not listen:\n{self.log.read_text()}")

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def connect(self) -> UnixConnection:
        return UnixConnection(self.socket)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            return Answer(conn.getresponse())
        finally:
            conn.close()

    def jmap(self, calls: list[list[Any]], using: list[str] | None = None) -> dict[str, Any]:
        body = json.dumps({"using": USING if using is None else using, "methodCalls": calls})
        answer = self.request("POST", "/jmap/api", body.encode(),
                              {"Content-Type": "application/json"})
        assert answer.status == 200, answer.body
        assert answer.content_type == "application/json"
        return answer.json()

    def get(self, world: World, names: list[str], properties: list[str] | None = None
            ) -> dict[str, dict[str, Any]]:
        args: dict[str, Any] = {"accountId": ACCOUNT, "ids": [world.ids[n] for n in names]}
        if properties is not None:
            args["properties"] = properties
        name, result, _ = self.jmap([["Email/get", args, "g"]])["methodResponses"][0]
        assert name == "Email/get", result
        by_id = {v: k for k, v in world.ids.items()}
        return {by_id[item["id"]]: item for item in result["list"]}


@contextlib.contextmanager
def short_directory() -> Iterator[Path]:
    """A socket path must fit in sun_path (108 bytes): pytest's tmp_path may not."""
    directory = Path(tempfile.mkdtemp(prefix="jh-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running(world: World, *extra: str) -> Iterator[Server]:
    with short_directory() as directory:
        server = Server(world, directory, *extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def world(tmp_path: Path, pki: TestPki) -> World:
    return build_world(tmp_path / "world", pki)


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> World:
    return build_world(tmp_path_factory.mktemp("http") / "world", pki)


@pytest.fixture(scope="module")
def server(shared_world: World) -> Iterator[Server]:
    """One server for the tests that only read."""
    with running(shared_world) as started:
        yield started


def problem(answer: Answer, status: int, type_: str) -> dict[str, Any]:
    assert answer.status == status, answer.body
    assert answer.content_type == "application/problem+json"
    document = answer.json()
    assert document["type"] == type_, document
    assert document["status"] == status
    return document


# --------------------------------------------------------------------------- the API


def test_email_get_at_delivery_equals_the_stdin_modes_answer(server: Server,
                                                             shared_world: World) -> None:
    calls = [["Email/get", {"accountId": ACCOUNT, "ids": list(shared_world.ids.values()),
                            "properties": AT_DELIVERY_PROPERTIES}, "0"]]
    over_http = server.jmap(calls)
    over_stdin = shared_world.jmap(calls, now=datetime.now(UTC))
    assert over_stdin.pop("_exit") == 0
    assert over_http == over_stdin
    items = {item["id"]: item for item in over_http["methodResponses"][0][1]["list"]}
    assert items[shared_world.ids["alice"]] == {
        "id": shared_world.ids["alice"], "smimeStatusAtDelivery": VERIFIED,
        "receivedAt": "2026-06-01T00:00:00Z"}


def test_current_status_is_revalidated_as_of_now(server: Server, shared_world: World) -> None:
    """Compared with the stdin mode at the wall clock, but for smimeVerifiedAt."""
    before = datetime.now(UTC).replace(microsecond=0)
    got = server.get(shared_world, list(shared_world.ids))
    for name in ("alice", "opaque", "late"):
        assert got[name]["smimeStatus"] == VERIFIED, got[name]
    # The short-lived certificate expired two days after delivery.
    assert got["short"]["smimeStatusAtDelivery"] == VERIFIED
    assert got["short"]["smimeStatus"] == FAILED
    assert any("expired" in error for error in got["short"]["smimeErrors"])
    assert got["plain"]["smimeStatus"] is None
    verified_at = datetime.fromisoformat(got["alice"]["smimeVerifiedAt"].replace("Z", "+00:00"))
    assert verified_at >= before
    stdin = shared_world.get(list(shared_world.ids), None, now=datetime.now(UTC))
    for name, item in got.items():
        assert {k: v for k, v in item.items() if k != "smimeVerifiedAt"} == \
            {k: v for k, v in stdin[name].items() if k != "smimeVerifiedAt"}, name


def test_post_to_the_root_is_the_api_too(server: Server, shared_world: World) -> None:
    body = json.dumps({"using": USING, "methodCalls": [["Core/echo", {"hello": 1}, "e"]]})
    answer = server.request("POST", "/", body.encode())
    assert answer.status == 200
    assert answer.json()["methodResponses"] == [["Core/echo", {"hello": 1}, "e"]]


def test_session_announces_the_smimeverify_capability(server: Server) -> None:
    answer = server.request("GET", "/jmap/session")
    assert answer.status == 200 and answer.content_type == "application/json"
    session = answer.json()
    assert session == session_document()
    assert session["capabilities"][SMIMEVERIFY] == {}
    assert session["accountCapabilities"] == {SMIMEVERIFY: {}}
    core = session["capabilities"]["urn:ietf:params:jmap:core"]
    assert core["maxCallsInRequest"] == 64 and core["maxObjectsInGet"] == 100_000
    assert core["maxSizeRequest"] == jmap_http.MAX_SIZE_REQUEST
    assert session["apiUrl"] == "/jmap/api"


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_the_api_path_are_405(server: Server, method: str) -> None:
    answer = server.request(method, "/jmap/api")
    problem(answer, 405, "about:blank")
    assert answer.headers["Allow"] == "POST"


def test_unknown_paths_are_404(server: Server) -> None:
    problem(server.request("GET", "/elsewhere"), 404, "about:blank")
    problem(server.request("POST", "/jmap/upload", b"{}"), 404, "about:blank")
    answer = server.request("POST", "/jmap/session", b"{}")
    problem(answer, 405, "about:blank")
    assert answer.headers["Allow"] == "GET"


def test_not_json_is_a_400_problem_and_the_connection_lives_on(server: Server) -> None:
    conn = server.connect()
    try:
        for body in (b"this is not JSON", b"\xff\xfe{}", b'{"using": ['):
            conn.request("POST", "/jmap/api", body=body,
                         headers={"Content-Type": "application/json"})
            answer = Answer(conn.getresponse())
            document = problem(answer, 400, "urn:ietf:params:jmap:error:notJSON")
            assert document["detail"]
        # Same connection, a good request afterwards.
        conn.request("POST", "/jmap/api", body=json.dumps(
            {"using": USING, "methodCalls": [["Core/echo", {}, "0"]]}).encode())
        assert Answer(conn.getresponse()).status == 200
    finally:
        conn.close()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_request_that_is_not_application_json_is_not_json(server: Server,
                                                             content_type: str) -> None:
    body = json.dumps({"using": USING, "methodCalls": [["Core/echo", {}, "0"]]}).encode()
    answer = server.request("POST", "/jmap/api", body, {"Content-Type": content_type})
    problem(answer, 400, "urn:ietf:params:jmap:error:notJSON")
    answer = server.request("POST", "/jmap/api", body,
                            {"Content-Type": "application/json; charset=utf-8"})
    assert answer.status == 200


@pytest.mark.parametrize(("request_", "kind"), [
    ({"methodCalls": []}, "notRequest"),
    ([1, 2, 3], "notRequest"),
    ({"using": ["urn:example:nothing"], "methodCalls": []}, "unknownCapability"),
])
def test_request_errors_are_problems(server: Server, request_: Any, kind: str) -> None:
    answer = server.request("POST", "/jmap/api", json.dumps(request_).encode())
    problem(answer, 400, f"urn:ietf:params:jmap:error:{kind}")


def test_too_many_calls_is_a_limit_problem(server: Server) -> None:
    calls = [["Core/echo", {}, str(n)] for n in range(65)]
    answer = server.request("POST", "/jmap/api",
                            json.dumps({"using": USING, "methodCalls": calls}).encode())
    problem(answer, 400, "urn:ietf:params:jmap:error:limit")


def test_an_oversize_body_is_refused_unread(server: Server) -> None:
    conn = server.connect()
    try:
        conn.putrequest("POST", "/jmap/api")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(jmap_http.MAX_SIZE_REQUEST + 1))
        conn.endheaders()
        answer = Answer(conn.getresponse())
    finally:
        conn.close()
    document = problem(answer, 413, "urn:ietf:params:jmap:error:limit")
    assert document["limit"] == "maxSizeRequest"
    assert answer.headers["Connection"] == "close"


def test_a_body_needs_a_content_length(server: Server) -> None:
    conn = server.connect()
    try:
        conn.putrequest("POST", "/jmap/api")
        conn.endheaders()
        answer = Answer(conn.getresponse())
    finally:
        conn.close()
    problem(answer, 411, "about:blank")


def test_method_errors_are_200_responses(server: Server, shared_world: World) -> None:
    response = server.jmap([
        ["Email/changes", {"accountId": ACCOUNT, "sinceState": "999"}, "c"],
        ["Mailbox/get", {"accountId": ACCOUNT}, "m"],
    ])
    assert [[r[0], r[1]["type"], r[2]] for r in response["methodResponses"]] == [
        ["error", "cannotCalculateChanges", "c"], ["error", "unknownMethod", "m"]]


def test_many_concurrent_requests_are_all_answered(server: Server,
                                                   shared_world: World) -> None:
    names = list(shared_world.ids)
    expected = server.get(shared_world, names, AT_DELIVERY_PROPERTIES)
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client(number: int) -> None:
        conn = server.connect()  # keep-alive: 20 requests on one connection
        try:
            for attempt in range(20):
                name = names[(number + attempt) % len(names)]
                body = json.dumps({"using": USING, "methodCalls": [["Email/get", {
                    "accountId": ACCOUNT, "ids": [shared_world.ids[name]],
                    "properties": AT_DELIVERY_PROPERTIES}, f"{number}.{attempt}"]]})
                conn.request("POST", "/jmap/api", body=body.encode())
                answer = Answer(conn.getresponse())
                result = answer.json()["methodResponses"][0]
                if answer.status != 200 or result[2] != f"{number}.{attempt}" \
                        or result[1]["list"] != [expected[name]]:
                    with lock:
                        failures.append(f"{number}.{attempt}: {answer.status} {result}")
                with lock:
                    answered[0] += 1
        except Exception as exc:
            with lock:
                failures.append(f"client {number}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert answered[0] == 400


# --------------------------------------------------------------------------- anchors


def test_a_new_anchor_is_noticed_without_a_restart(world: World) -> None:
    with running(world) as server:
        got = server.get(world, ["newcomer"])["newcomer"]
        assert got["smimeStatus"] == got["smimeStatusAtDelivery"] == FAILED
        assert any("untrusted root" in error for error in got["smimeErrors"])
        state = server.jmap([["Email/get", {"accountId": ACCOUNT, "ids": [],
                                            "properties": ["smimeStatus"]}, "s"]]
                            )["methodResponses"][0][1]["state"]

        # What `trust add` does to the directory, by hand: a new file, atomically.
        world.anchor_dir.mkdir(exist_ok=True)
        partial = world.anchor_dir / "later.tmp"
        partial.write_bytes(world.extra["later_ca"].cert_pem)
        partial.rename(world.anchor_dir / "later.pem")

        deadline = time.monotonic() + jmap_http.TRUST_CHECK_INTERVAL * 6
        while True:
            got = server.get(world, ["newcomer"])["newcomer"]
            if got["smimeStatus"] == VERIFIED or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert got["smimeStatus"] == VERIFIED, (got, server.log.read_text())
        assert got["smimeErrors"] is None
        # Only `trust add` re-assesses the status at delivery (RFC 9219 §4.1).
        assert got["smimeStatusAtDelivery"] == FAILED
        changes = server.jmap([["Email/changes", {"accountId": ACCOUNT, "sinceState": state},
                                "c"]])["methodResponses"][0][1]
        assert world.ids["newcomer"] in changes["updated"]
        assert "trust anchors changed" in server.log.read_text()


def test_a_broken_anchor_file_keeps_the_old_anchors(world: World) -> None:
    with running(world) as server:
        world.anchor_dir.mkdir(exist_ok=True)
        (world.anchor_dir / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                                     "-----END CERTIFICATE-----\n")
        deadline = time.monotonic() + jmap_http.TRUST_CHECK_INTERVAL * 6
        while "cannot be loaded" not in server.log.read_text():
            assert time.monotonic() < deadline, server.log.read_text()
            server.get(world, ["alice"])
            time.sleep(0.25)
        assert server.get(world, ["alice"])["alice"]["smimeStatus"] == VERIFIED
        assert server.process is not None and server.process.poll() is None


# --------------------------------------------------------------------------- lifecycle


def test_sigterm_removes_the_socket_and_exits_0(world: World) -> None:
    with short_directory() as directory:
        server = Server(world, directory)
        server.start()
        mode = stat.S_IMODE(os.stat(server.socket).st_mode)
        assert stat.S_ISSOCK(os.stat(server.socket).st_mode) and mode == 0o660
        conn = server.connect()  # an idle keep-alive connection does not hold it up
        conn.request("GET", "/jmap/session")
        assert Answer(conn.getresponse()).status == 200
        try:
            assert server.stop() == 0, server.log.read_text()
        finally:
            conn.close()
        assert not os.path.exists(server.socket)
        assert "stopped" in server.log.read_text()
        # The store was closed cleanly: a writable open works at once.
        with Store.open(world.store) as store:
            assert store.state()


def test_a_stale_socket_is_replaced(world: World) -> None:
    with short_directory() as directory:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(directory / "jmap.sock"))
        stale.close()  # the file stays, nobody listens
        server = Server(world, directory)
        server.start()
        try:
            assert server.request("GET", "/jmap/session").status == 200
        finally:
            assert server.stop() == 0


def test_a_live_socket_or_another_file_is_not_removed(world: World) -> None:
    with short_directory() as directory:
        path = directory / "jmap.sock"
        path.write_text("precious")
        done = subprocess.run(
            [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(world.config),
             "--listen", f"unix:{path}"],
            capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 1
        assert "not a socket" in done.stderr
        assert path.read_text() == "precious"
        path.unlink()
        with running(world) as first:
            done = subprocess.run(
                [sys.executable, "-m", "smime_milter.cli", "jmap", "--config",
                 str(world.config), "--listen", f"unix:{first.socket}"],
                capture_output=True, text=True, timeout=60, check=False,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 1
            assert "in use" in done.stderr
            assert first.request("GET", "/jmap/session").status == 200


def test_listen_from_the_configuration(world: World) -> None:
    with short_directory() as directory:
        path = directory / "configured.sock"
        config = directory / "with-listen.toml"
        config.write_text(world.config.read_text()
                          + f'listen = "unix:{path}"\nlisten_mode = "0600"\n')
        configured = World(root=world.root, config=config, store=world.store,
                           crl_dir=world.crl_dir, anchor_dir=world.anchor_dir, pki=world.pki,
                           ids=world.ids, extra=world.extra)
        process = subprocess.Popen(
            [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(config),
             "--listen"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not path.exists():
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            server = Server(configured, directory)
            server.socket = str(path)
            got = server.get(configured, ["alice"], AT_DELIVERY_PROPERTIES)
            assert got["alice"]["smimeStatusAtDelivery"] == VERIFIED
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        assert not path.exists()


def test_configured_listen_alone_keeps_the_stdin_mode(world: World) -> None:
    """A config file with [jmap] listen must not turn every stdin call into a server."""
    config = world.root / "listen-in-config.toml"
    config.write_text(world.config.read_text() + 'listen = "unix:/nonexistent/x.sock"\n')
    request = json.dumps({"using": ["urn:ietf:params:jmap:core"],
                          "methodCalls": [["Core/echo", {"a": 1}, "0"]]})
    done = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(config)],
        input=request.encode(), capture_output=True, timeout=60, check=True,
    )
    assert json.loads(done.stdout)["methodResponses"] == [["Core/echo", {"a": 1}, "0"]]
    without = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(world.config),
         "--listen"], capture_output=True, text=True, timeout=60,
    )
    assert without.returncode == 1 and "[jmap] listen" in without.stderr


def test_listen_must_be_a_unix_socket(world: World) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "smime_milter.cli", "jmap", "--config", str(world.config),
         "--listen", "inet:8080@localhost"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "--listen" in done.stderr and "unix:/path" in done.stderr


# --------------------------------------------------------------------------- in-process


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


def test_trust_files_are_looked_at_no_more_often_than_the_interval(world: World) -> None:
    config = load_config(world.config)
    ticks = [0.0]
    with Store.open(world.store) as store:
        service = JmapService(config, store, build_refresher=build_refresher,
                              clock=Clock(DELIVERED + timedelta(minutes=1)),
                              check_interval=5.0, monotonic=lambda: ticks[0])
        first = service.protocol()
        world.anchor_dir.mkdir(exist_ok=True)
        (world.anchor_dir / "later.pem").write_bytes(world.extra["later_ca"].cert_pem)
        ticks[0] = 4.9
        assert service.protocol() is first  # not looked at yet
        ticks[0] = 5.0
        second = service.protocol()
        assert second is not first
        assert second.api.refresher.revalidator.generation != \
            first.api.refresher.revalidator.generation
        # Touching a file without changing the anchors keeps the protocol.
        os.utime(world.anchor_dir / "later.pem", ns=(1, 1))
        ticks[0] = 10.0
        assert service.protocol() is second
        ticks[0] = 10.1
        assert service.check_trust() is False


def test_background_refresh_reports_expiry_in_email_changes(world: World) -> None:
    """The periodic job re-validates stale statuses nobody asked for."""
    config = load_config(world.config)
    assert refresh_interval(config) == 1800.0  # cache_lifetime 3600 / 2
    clock = Clock(DELIVERED + timedelta(minutes=1))
    with Store.open(world.store) as store:
        service = JmapService(config, store, build_refresher=build_refresher, clock=clock)
        state = store.state()
        assert service.refresh_due() == 0  # nothing stale yet
        clock.moment = DELIVERED + timedelta(days=3)  # "short" expired on day 2
        worker = jmap_http._Refresher(service, 0.05)
        worker.start()
        try:
            deadline = time.monotonic() + 30
            while store.state() == state:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            worker.stop()
        assert not worker.is_alive()
        changes = store.changes_since(state)
        assert list(changes.updated) == [world.ids["short"]]
        assert store.views([world.ids["short"]])[world.ids["short"]].status.value == FAILED


def test_refresh_interval_is_at_least_a_minute() -> None:
    from dataclasses import replace

    from smime_milter.config.reader import Config

    config = Config()
    assert refresh_interval(replace(config, jmap=replace(config.jmap, cache_lifetime=0))) == 60
    assert refresh_interval(replace(config, jmap=replace(config.jmap,
                                                         cache_lifetime=86400))) == 43200

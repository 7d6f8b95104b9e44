"""The packaged product on a stock Debian mail server, end to end.

What an admin does, done for real on this (disposable) machine as root:
build the package with ``scripts/build-deb``, install it with apt-get, give
Debian's Postfix its stock configuration (``dpkg-reconfigure postfix`` as
"Local only": master.cf as shipped, smtpd chrooted) plus exactly the
``postconf -e`` lines README.rst shows, start the daemon as the installed
unit's ``ExecStartPre``/``ExecStart`` with its ``User=``, ``Group=``,
``UMask=``, directories and environment (there is no systemd PID 1 here),
and send signed, tampered and plain mail to 127.0.0.1:25.

Everything changed is put back afterwards: Postfix stopped, /etc/postfix,
/etc/mailname, /etc/aliases and the debconf answer restored, the test
recipient removed and the package purged (the smime-milter user stays, as
Debian leaves system users).
"""

from __future__ import annotations

import json
import mailbox
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.support import activity, processes
from tests.support.mailflow import signed_message, tampered, unique
from tests.support.pki import TestPki
from tests.support.smime import text_entity, wrap_message
from tests.support.systemd import SYSTEMD_ANALYZE, analyze_verify, complaints, parse_unit

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
UNIT_DIR = Path("/lib/systemd/system")
UNIT = UNIT_DIR / "smime-milter.service"
RECIPIENT = "smime-e2e"
SPOOL = Path("/var/spool/postfix/smime-milter")
#: What Debian's postfix postinst writes or rewrites for "Local only".
POSTFIX_FILES = (Path("/etc/mailname"), Path("/etc/aliases"), Path("/etc/aliases.db"))
#: systemd's default PATH for services.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

pytestmark = [
    pytest.mark.debian_package, pytest.mark.postfix, pytest.mark.daemon,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package and runs Postfix on port 25"),
    pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian machine"),
]


def _run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False,
                          **kwargs)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{shlex.join(argv)}:\n{output}"
    return done


def _readme_postconf_lines() -> list[list[str]]:
    """The ``postconf -e`` lines exactly as README.rst shows them."""
    lines = [shlex.split(line.strip()) for line in README.read_text().splitlines()
             if line.startswith("    postconf -e ")]
    assert lines, "README.rst shows no postconf -e lines"
    return lines


@dataclass(frozen=True)
class Installed:
    deb: Path


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """The package, built from this tree and installed with apt-get."""
    activity.note("process")
    built = _run(str(ROOT / "scripts" / "build-deb"), cwd=ROOT)
    deb = ROOT / built.stdout.strip().splitlines()[-1]
    assert deb.name.startswith("smime-milter_") and deb.suffix == ".deb", built.stdout
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "install", "-y", "-q", "--no-install-recommends", "--no-upgrade",
         f"./{deb.relative_to(ROOT)}", cwd=ROOT, env=env)
    try:
        yield Installed(deb)
    finally:
        subprocess.run(["apt-get", "purge", "-y", "-q", "smime-milter"], env=env,
                       capture_output=True, timeout=300, check=False)


def _debconf(question: str) -> str | None:
    done = subprocess.run(["debconf-show", "postfix"], capture_output=True, text=True,
                          check=False)
    for line in done.stdout.splitlines():
        name, _, value = line.lstrip("* ").partition(":")
        if name == f"postfix/{question}":
            return value.strip()
    return None


def _postfix_running() -> bool:
    return subprocess.run(["postfix", "status"], capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class StockPostfix:
    myhostname: str


@pytest.fixture(scope="module")
def stock_postfix(installed: Installed, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[StockPostfix]:
    """Debian's own Postfix configuration for a local-only mail server, with
    the README's lines added, running on 127.0.0.1:25."""
    if shutil.which("postfix") is None:
        pytest.fail("Postfix is not installed (scripts/bootstrap --test installs it)")
    saved = tmp_path_factory.mktemp("saved-postfix")
    shutil.copytree("/etc/postfix", saved / "postfix", symlinks=True)
    kept = {path: saved / path.name for path in POSTFIX_FILES if path.exists()}
    for path, copy in kept.items():
        shutil.copy2(path, copy)
    mailer_type = _debconf("main_mailer_type") or "No configuration"
    if _postfix_running():
        _run("postfix", "stop")
    try:
        subprocess.run(["debconf-set-selections"], check=True, text=True, input=(
            "postfix postfix/main_mailer_type select Local only\n"
            "postfix postfix/mailname string mx.e2e.test\n"))
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run("dpkg-reconfigure", "-f", "noninteractive", "postfix", env=env)
        assert "smtpd" in _run("postconf", "-M", "smtp/inet").stdout
        chroot = _run("postconf", "-M", "smtp/inet").stdout.split()[4]
        assert chroot == "y", "Debian's master.cf runs smtpd chrooted"
        for argv in _readme_postconf_lines():
            _run(*argv)
        if _postfix_running():  # policy-rc.d may have let the postinst start it
            _run("postfix", "reload")
        else:
            _run("postfix", "start")
        yield StockPostfix(myhostname=_run("postconf", "-h", "myhostname").stdout.strip())
    finally:
        subprocess.run(["postfix", "stop"], capture_output=True, check=False, timeout=120)
        shutil.rmtree("/etc/postfix")
        shutil.copytree(saved / "postfix", "/etc/postfix", symlinks=True)
        for path in POSTFIX_FILES:
            if path in kept:
                shutil.copy2(kept[path], path)
            else:
                path.unlink(missing_ok=True)
        subprocess.run(["debconf-set-selections"], check=False, text=True,
                       input=f"postfix postfix/main_mailer_type select {mailer_type}\n")


@dataclass(frozen=True)
class Service:
    """The daemon as the unit runs it."""

    process: subprocess.Popen[bytes]
    user: pwd.struct_passwd
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _unit_value(unit: dict[str, dict[str, list[str]]], key: str) -> str:
    [value] = unit["Service"][key]
    return value


def _as_unit(unit: dict[str, dict[str, list[str]]], argv: list[str]) -> list[str]:
    """``argv`` with the unit's user, group, umask and no-new-privileges."""
    user, group = _unit_value(unit, "User"), _unit_value(unit, "Group")
    umask = _unit_value(unit, "UMask")
    assert _unit_value(unit, "NoNewPrivileges") == "yes"
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--no-new-privs",
            "--inh-caps=-all", "/bin/sh", "-c", f'umask {umask}; exec "$@"', "sh", *argv]


def _unit_env(user: pwd.struct_passwd, unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    """What systemd gives a service with User= (no JOURNAL_STREAM: stderr is a file)."""
    return {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "USER": user.pw_name,
            "LOGNAME": user.pw_name, "HOME": user.pw_dir, "SHELL": user.pw_shell,
            "RUNTIME_DIRECTORY": f"/run/{_unit_value(unit, 'RuntimeDirectory')}",
            "STATE_DIRECTORY": f"/var/lib/{_unit_value(unit, 'StateDirectory')}"}


@pytest.fixture(scope="module")
def service(stock_postfix: StockPostfix, live_pki: TestPki,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``smime-milter.service`` started as systemd would, trusting the test
    PKI's root through ``smime-milter trust add`` as an admin does."""
    activity.note("daemon")
    unit = parse_unit(UNIT.read_text())
    user = pwd.getpwnam(_unit_value(unit, "User"))
    for base, key in (("/run", "RuntimeDirectory"), ("/var/lib", "StateDirectory")):
        directory = Path(base) / _unit_value(unit, key)
        directory.mkdir(exist_ok=True)
        os.chown(directory, user.pw_uid, user.pw_gid)
        directory.chmod(int(_unit_value(unit, f"{key}Mode"), 8))
    scratch = tmp_path_factory.mktemp("service")
    root_pem = scratch / "test-root.pem"
    root_pem.write_bytes(live_pki.root.cert_pem)
    _run("smime-milter", "trust", "add", str(root_pem))
    env = _unit_env(user, unit)
    [pre] = unit["Service"]["ExecStartPre"]
    _run(*_as_unit(unit, shlex.split(pre)), env=env, cwd="/")
    [start] = unit["Service"]["ExecStart"]
    log = scratch / "milter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_as_unit(unit, shlex.split(start)), env=env, cwd="/",
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    running = Service(process, user, log)
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in running.log_text():
            assert process.poll() is None, running.log_text()
            assert time.monotonic() < deadline, running.log_text()
            time.sleep(0.1)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def recipient() -> Iterator[str]:
    """A local user to deliver to, removed with its mailbox afterwards."""
    subprocess.run(["userdel", "-r", RECIPIENT], capture_output=True, check=False)
    _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", RECIPIENT)
    try:
        yield f"{RECIPIENT}@localhost"
    finally:
        subprocess.run(["userdel", "-r", RECIPIENT], capture_output=True, check=False)
        Path(f"/var/mail/{RECIPIENT}").unlink(missing_ok=True)


@dataclass(frozen=True)
class Deliveries:
    signed: Message
    tampered: Message
    plain: Message


def _delivered(subject: str, timeout: float = 60) -> Message:
    deadline = time.monotonic() + timeout
    path = Path(f"/var/mail/{RECIPIENT}")
    while True:
        if path.exists():
            found = [m for m in mailbox.mbox(str(path)) if subject == m["Subject"]]
            if found:
                assert len(found) == 1
                return found[0]
        if time.monotonic() > deadline:
            log = Path("/var/log/mail.log")
            raise AssertionError(f"{subject!r} not delivered; "
                                 f"queue: {_run('postqueue', '-p').stdout[-2000:]}"
                                 f"{log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def deliveries(service: Service, recipient: str, live_pki: TestPki) -> Deliveries:
    subjects = {name: unique(f"packaged {name}") for name in ("signed", "tampered", "plain")}
    messages = {
        "signed": signed_message(live_pki, subjects["signed"], recipient),
        "tampered": tampered(signed_message(live_pki, subjects["tampered"], recipient)),
        "plain": wrap_message(text_entity("Hello Bob\n"), from_addr="alice@example.com",
                              to=recipient, subject=subjects["plain"]),
    }
    with smtplib.SMTP("127.0.0.1", 25, timeout=60) as smtp:
        for data in messages.values():
            refused = smtp.sendmail("alice@example.com", [recipient], data)
            assert refused == {}
    return Deliveries(**{name: _delivered(subject) for name, subject in subjects.items()})


def _stamps(message: Message, authserv_id: str) -> tuple[str, str]:
    results = [" ".join(str(v).split()) for v in message.get_all("Authentication-Results", [])]
    ours = [r for r in results if r.split(";")[0].strip() == authserv_id]
    [status] = message.get_all("SMIME-Status-At-Delivery", [])
    assert len(ours) == 1, results
    return ours[0], " ".join(str(status).split())


def test_signed_tampered_and_plain_mail_are_stamped(
        deliveries: Deliveries, stock_postfix: StockPostfix) -> None:
    """The default authserv-id is the MTA's $j (myhostname)."""
    host = stock_postfix.myhostname
    result, status = _stamps(deliveries.signed, host)
    assert "smime=pass" in result, result
    assert status.startswith("signed/verified; record=")
    result, status = _stamps(deliveries.tampered, host)
    assert "smime=fail" in result, result
    assert status.startswith("signed/failed; record=")
    result, status = _stamps(deliveries.plain, host)
    assert result == f"{host}; smime=none"
    assert status.startswith("none; record=")


def _jmap_get(service: Service, record_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Email/get through the installed command, as the service user."""
    unit = parse_unit(UNIT.read_text())
    request = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail",
                         "urn:ietf:params:jmap:smimeverify"],
               "methodCalls": [["Email/get", {"accountId": "a1", "ids": record_ids,
                                              "properties": ["smimeStatusAtDelivery",
                                                             "smimeStatus"]}, "g"]]}
    done = _run(*_as_unit(unit, ["smime-milter", "jmap", "--read-only"]),
                input=json.dumps(request), env=_unit_env(service.user, unit), cwd="/")
    [[name, result, _]] = json.loads(done.stdout)["methodResponses"]
    assert name == "Email/get", result
    return {item["id"]: item for item in result["list"]}


def test_the_store_holds_what_the_headers_say(deliveries: Deliveries, service: Service,
                                              stock_postfix: StockPostfix) -> None:
    records = {}
    for name in ("signed", "tampered", "plain"):
        _, status = _stamps(getattr(deliveries, name), stock_postfix.myhostname)
        records[name] = status.split("record=")[1].strip()
    got = _jmap_get(service, list(records.values()))
    assert got[records["signed"]]["smimeStatusAtDelivery"] == "signed/verified"
    assert got[records["signed"]]["smimeStatus"] == "signed/verified"
    assert got[records["tampered"]]["smimeStatusAtDelivery"] == "signed/failed"
    assert got[records["plain"]]["smimeStatusAtDelivery"] is None


def _descendants(top: int) -> list[int]:
    return sorted(processes.descendants(top))


def _ids(pid: int, field: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(field)


def test_no_process_runs_as_root_and_the_socket_is_postfix_only(
        deliveries: Deliveries, service: Service) -> None:
    pids = _descendants(service.process.pid)
    # The supervisor and one milter process per CPU (the shipped workers = 0).
    assert len(pids) == 1 + (os.cpu_count() or 1), pids
    for pid in pids:
        assert _ids(pid, "Uid") == [service.user.pw_uid] * 4, pid
        assert _ids(pid, "Gid") == [service.user.pw_gid] * 4, pid
    socket = SPOOL / "smime-milter.sock"
    info = socket.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
        service.user.pw_uid, service.user.pw_gid, 0o660)
    directory = SPOOL.stat()
    assert directory.st_mode & 0o777 == 0o750 and directory.st_uid == service.user.pw_uid
    postfix_groups = _run("id", "-Gn", "postfix").stdout.split()
    assert service.user.pw_name in postfix_groups
    log = service.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log


def test_systemd_analyze_verify_accepts_the_installed_units(installed: Installed) -> None:
    if SYSTEMD_ANALYZE is None:
        pytest.fail("systemd-analyze is missing")
    for name in ("smime-milter.service", "smime-milter-jmap.service",
                 "smime-milter-refresh.service", "smime-milter-refresh.timer"):
        unit = UNIT_DIR / name
        done = analyze_verify(unit)
        assert done.returncode == 0, done.stderr
        assert complaints(done, unit) == [], done.stderr


def test_lintian_finds_nothing(installed: Installed) -> None:
    """Every tag lintian knows, pedantic ones included."""
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing (scripts/bootstrap --test installs it)")
    done = subprocess.run(["lintian", "--pedantic", "--display-info", str(installed.deb)],
                          capture_output=True, text=True, timeout=600, check=False)
    tags = [line for line in done.stdout.splitlines() if line[:2] in {"E:", "W:", "I:", "P:"}]
    assert tags == [], done.stdout


def test_start_up_says_where_the_trust_anchors_came_from(service: Service) -> None:
    """Mozilla's e-mail roots from the installed libnss3, plus the one anchor
    ``trust add`` put in the managed directory; never the TLS bundle."""
    log = service.log_text()
    found = re.search(r"trust anchors: (\d+) for e-mail from Mozilla's root program "
                      r"\((/\S+/libnssckbi\.so);.*\), 1 managed \(/etc/smime-milter/anchors\), "
                      r"0 from \[trust\] anchors", log)
    assert found is not None, log
    assert int(found.group(1)) > 50 and Path(found.group(2)).exists()
    assert "ca-certificates" not in log

"""A real, isolated, throw-away Postfix instance for tests and benchmarks.

Usage from a test module (CI always installs Postfix; a developer machine may not)::

    from tests.support.postfix import POSTFIX_MISSING, PostfixFactory, postfix_available

    pytestmark = pytest.mark.skipif(not postfix_available(), reason=POSTFIX_MISSING)

    @pytest.fixture
    def postfix(tmp_path: Path) -> Iterator[PostfixFactory]:
        with PostfixFactory(tmp_path) as factory:
            yield factory

    def test_x(postfix: PostfixFactory) -> None:
        mta = postfix(milter="unix:/path/to/sock")   # started now, stopped at teardown
        assert mta.send(MESSAGE, "a@example.org", ["b@example.org"]).code == 250
        [copy] = mta.wait_for_delivery("b@example.org", 1)

How the instance runs, and why:

* ``postfix -c DIR start`` (postfix-script) refuses a configuration directory that the
  default /etc/postfix/main.cf does not list in ``alternate_config_directories``; after
  Debian's "No configuration" install that file does not even exist.  Instead of editing
  the system configuration we start the daemon directly: ``master -c DIR -d``.  The
  directory check only guards the postfix(1) wrapper and *unsafe* (set-gid, non-root)
  callers; master(8) is not set-gid and postqueue(1) run by root is trusted, so nothing
  under /etc/postfix is read or written.  ``-d`` keeps master in the foreground, as a
  child of our supervisor (below), without a ``postfix start``/``stop`` round trip.
* postfix-script would also create the queue layout (``set-permissions``); we create the
  directories of /etc/postfix/postfix-files ourselves, in milliseconds.
* Postfix re-reads a main.cf modified within the last second every 300 ms until it
  "settles", which made every start 1.5-2.5 s slower; our configuration files are
  backdated.  start() now takes 0.1-0.2 s, stop() ~0.03 s.
* Logging goes to ``maillog_file`` through the ``postlog`` service.  Until that works
  master logs to syslog (fatal start errors: bad queue directory, port in use, ...), which
  may not even exist (no /dev/log in CI containers).  We point master's POSTLOG_SERVICE
  environment variable at a datagram socket of ours for that phase, and
  :class:`PostfixStartError` quotes what arrived there.
* virtual(8) refuses regexp substitution (``$1``) in ``virtual_mailbox_maps`` and network
  tables (socketmap, tcp) there, so no table can give *any* address its own Maildir.  The
  instance keeps a ``hash:`` table of known mailboxes instead; :meth:`PostfixInstance.send`
  adds its recipients (others: :meth:`PostfixInstance.add_mailboxes`).  Each update
  replaces the .db file, and Postfix daemons restart by themselves when a table they
  opened was replaced (DATABASE_README, "detect changes").
* Unprivileged daemons reach files by absolute path: virtual(8) writes Maildirs as uid
  65534, smtpd(8) (user ``postfix``) connects to a ``unix:`` milter socket.  pytest's
  temporary directories are mode 0700, so we add only the search bit (o+x, no listing) to
  those ancestors that we own below the temporary directory (pytest tightens its own
  again at the start of its next session) and refuse to touch anything else.  A milter
  must still make its socket itself writable for ``postfix`` (see nullmilter.py).
* Killed daemons whose master died first are reparented to PID 1, which in some
  containers never reaps them.  master therefore runs under a tiny supervisor process, a
  child subreaper that adopts and reaps them (``_SUPERVISOR``); ``stop()`` asks it to
  SIGKILL the whole process group, which takes a few milliseconds.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import secrets
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

from tests.support import activity

DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
MASTER = DAEMON_DIRECTORY / "master"
POSTQUEUE = Path("/usr/sbin/postqueue")
POSTMAP = Path("/usr/sbin/postmap")
DOMAINS = ("example.org", "example.com")
MAILBOX_UID = 65534  # "nobody": exists everywhere, owns nothing else
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
POSTFIX_MISSING = "Postfix (master, postqueue, postmap) is not installed, or we are not root"

Setting: TypeAlias = str | int | bool | list[str] | tuple[str, ...]

# Short enough that a dead milter fails a test quickly, long enough for a loaded CI box.
DEFAULT_MILTER_TIMEOUTS: dict[str, Setting] = {
    "milter_connect_timeout": "5s",
    "milter_command_timeout": "10s",
    "milter_content_timeout": "20s",
}

# queue subdirectory -> (owner, group, mode), from /etc/postfix/postfix-files.
_QUEUE_LAYOUT: dict[str, tuple[str, str, int]] = {
    "active": (MAIL_OWNER, "root", 0o700),
    "bounce": (MAIL_OWNER, "root", 0o700),
    "corrupt": (MAIL_OWNER, "root", 0o700),
    "defer": (MAIL_OWNER, "root", 0o700),
    "deferred": (MAIL_OWNER, "root", 0o700),
    "flush": (MAIL_OWNER, "root", 0o700),
    "hold": (MAIL_OWNER, "root", 0o700),
    "incoming": (MAIL_OWNER, "root", 0o700),
    "private": (MAIL_OWNER, "root", 0o700),
    "maildrop": (MAIL_OWNER, SETGID_GROUP, 0o730),
    "public": (MAIL_OWNER, SETGID_GROUP, 0o710),
    "pid": ("root", "root", 0o755),
    "saved": (MAIL_OWNER, "root", 0o700),
    "trace": (MAIL_OWNER, "root", 0o700),
}

# Only what an SMTP-in, virtual-delivery MTA needs (postqueue -f insists on pickup);
# the chroot column (5th) is "n".
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1   pickup
cleanup   unix  n - n - 0    cleanup
qmgr      unix  n - n 300 1  qmgr
rewrite   unix  - - n - -    trivial-rewrite
bounce    unix  - - n - 0    bounce
defer     unix  - - n - 0    bounce
trace     unix  - - n - 0    bounce
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - -    proxymap
showq     unix  n - n - -    showq
error     unix  - - n - -    error
retry     unix  - - n - -    error
discard   unix  - - n - -    discard
virtual   unix  - n n - -    virtual
anvil     unix  - - n - 1    anvil
scache    unix  - - n - 1    scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_available() -> bool:
    """True when a test Postfix can run here: the binaries exist and we are root."""
    binaries = (MASTER, POSTQUEUE, POSTMAP)
    return all(binary.exists() for binary in binaries) and os.geteuid() == 0


class PostfixStartError(RuntimeError):
    """Postfix did not come up; the message quotes whatever it logged."""


@dataclass(frozen=True)
class SmtpReply:
    """The reply that decided one SMTP transaction.

    ``stage`` is the command it answered: "MAIL", "RCPT" (every recipient refused), or
    "DATA" (the end-of-data reply, where milters give their verdict).
    """

    code: int
    text: str
    stage: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code // 100 == 2


def free_port() -> int:
    """A currently unused loopback TCP port (master sets SO_REUSEADDR when it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_traversable(path: Path) -> None:
    """Let unprivileged Postfix daemons reach *path*: add o+x to its ancestors.

    Only directories we own below the temporary directory are changed; any other
    ancestor that others cannot search is an error.  Missing ancestors are skipped.
    """
    temp = Path(tempfile.gettempdir()).resolve()
    for directory in path.parents:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid != os.geteuid() or temp not in [directory, *directory.parents]:
            raise PermissionError(f"{directory}: Postfix's daemons need o+x here")
        directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _format_setting(value: Setting) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(value)
    return str(value)


def process_group(pgid: int) -> set[int]:
    """PIDs (zombies included) whose process group is *pgid*, from /proc."""
    members = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(entry.path, "stat").read_bytes()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        if int(stat_line[stat_line.rindex(b")") + 2 :].split()[2]) == pgid:
            members.add(int(entry.name))
    return members


def _write_backdated(path: Path, text: str) -> None:
    """Write a config file dated a minute ago: Postfix naps 300 ms at a time until a
    main.cf modified within the last second has "settled"."""
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


# Runs master in its own process group as a child subreaper: daemons orphaned by master's
# death are adopted and reaped here, whatever PID 1 does.  SIGTERM: SIGKILL the whole
# group, reap it, exit with master's status.  A -c script with few imports starts in ~15 ms
# (this module's imports would take ten times as long).
_SUPERVISOR = """
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
master = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, setsid=True)

def kill_group(signum, frame):
    try:
        os.killpg(master, signal.SIGKILL)
    except ProcessLookupError:
        pass

signal.signal(signal.SIGTERM, kill_group)
status = 1
try:
    while True:
        pid, wait_status = os.wait()
        if pid == master:
            status = os.waitstatus_to_exitcode(wait_status)
except ChildProcessError:
    sys.exit(status)
"""


class PostfixInstance:
    """One Postfix master with its own config, queue, log, port and Maildirs under *base*.

    *settings* override any main.cf parameter we write, e.g. the milter timeouts of
    :data:`DEFAULT_MILTER_TIMEOUTS`.
    """

    def __init__(
        self,
        base: Path,
        milter: str | None = None,
        milter_default_action: str = "tempfail",
        settings: Mapping[str, Setting] | None = None,
        mailboxes: Iterable[str] = (),
        submission: bool = False,
    ) -> None:
        self.base = Path(base).resolve()
        #: Also listen on :attr:`submission_port`, a smtpd whose milter macro
        #: ``{daemon_name}`` is "submission" (the usual ``-o`` idiom of master.cf).
        self.submission = submission
        self._submission_port = 0
        self.milter = milter
        self.milter_default_action = milter_default_action
        self.settings = dict(settings or {})
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "data"
        self.mail_dir = self.base / "mail"
        self.log_file = self.base / "log" / "maillog"
        self.mailbox_table = self.config_dir / "mailboxes"
        self.mailboxes: set[str] = set()
        self._initial_mailboxes = list(mailboxes)
        self._mailbox_lock = threading.Lock()
        self.syslog_name = f"postfix-{secrets.token_hex(4)}"
        self._port = 0
        self._supervisor: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def smtp_port(self) -> int:
        if not self._port:
            raise RuntimeError("Postfix is not started")
        return self._port

    @property
    def submission_port(self) -> int:
        if not self._submission_port:
            raise RuntimeError("Postfix is not started with a submission service")
        return self._submission_port

    @property
    def master_pid(self) -> int:
        """Master's PID, which is also the process group of all this instance's daemons."""
        return int((self.queue_dir / "pid" / "master.pid").read_text())

    @property
    def running(self) -> bool:
        return self._supervisor is not None and self._supervisor.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Write the configuration and start master; return once it listens for SMTP."""
        if self._supervisor is not None:
            raise RuntimeError("Postfix is already started")
        activity.note("postfix")
        self._prepare_directories()
        self._write_main_cf()
        self.add_mailboxes(*self._initial_mailboxes)
        # A port picked by free_port() may be taken before master binds it: retry then.
        for attempt in range(3):
            self._port = free_port()
            self._submission_port = free_port() if self.submission else 0
            self._write_master_cf()
            try:
                self._start_master(timeout)
                return
            except PostfixStartError as error:
                if "Address already in use" not in str(error) or attempt == 2:
                    raise

    def stop(self) -> None:
        """Kill master and all its daemons at once, and reap them (idempotent)."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.terminate()  # see _SUPERVISOR
        try:
            supervisor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()

    # -- SMTP and Maildir ------------------------------------------------------------------

    def send(
        self, message: bytes, mail_from: str, rcpt_to: list[str], timeout: float = 60.0,
        port: int | None = None,
    ) -> SmtpReply:
        """Submit *message* over SMTP; return the deciding reply (4xx/5xx too, no raise).

        Line endings are normalised to CRLF, so the delivered copy has the same lines.
        """
        self.add_mailboxes(*rcpt_to)
        data = re.sub(rb"\r?\n", b"\r\n", message)
        options = ["BODY=8BITMIME"] if any(byte > 0x7F for byte in data) else []
        with smtplib.SMTP("127.0.0.1", port or self.smtp_port, timeout=timeout) as smtp:
            smtp.ehlo("client.test.invalid")
            code, text = smtp.mail(mail_from, options)
            if code != 250:
                return SmtpReply(code, text.decode(errors="replace"), "MAIL")
            refused: dict[str, tuple[int, str]] = {}
            for rcpt in rcpt_to:
                code, text = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, text.decode(errors="replace"))
            if len(refused) == len(rcpt_to):
                return SmtpReply(code, text.decode(errors="replace"), "RCPT", refused)
            try:
                code, text = smtp.data(data)
            except smtplib.SMTPDataError as error:  # DATA itself refused
                code, text = error.smtp_code, error.smtp_error
            return SmtpReply(code, text.decode(errors="replace"), "DATA", refused)

    def add_mailboxes(self, *addresses: str) -> None:
        """Give each address in :data:`DOMAINS` its own Maildir; other domains stay unknown."""
        with self._mailbox_lock:  # send() may be called from several threads
            new = {a.lower() for a in addresses if a.lower().rpartition("@")[2] in DOMAINS}
            new -= self.mailboxes
            if not new and self.mailbox_table.with_suffix(".db").exists():
                return
            lines = []
            for address in sorted(self.mailboxes | new):
                local, _, domain = address.rpartition("@")
                if local in ("", ".", "..") or "/" in local or any(c.isspace() for c in local):
                    raise ValueError(f"no Maildir for {address!r}")
                lines.append(f"{address} {domain}/{local}/\n")  # "/": Maildir format
            source = self.mailbox_table.with_suffix(".next")
            source.write_text("".join(lines))
            self._run(POSTMAP, f"hash:{source}")
            # A new inode: daemons holding the old table see st_nlink == 0 and restart.
            os.replace(source.with_suffix(".next.db"), self.mailbox_table.with_suffix(".db"))
            source.unlink()
            self.mailboxes |= new

    def mailbox(self, address: str) -> Path:
        """The Maildir of *address*; it exists once something was delivered there."""
        local, _, domain = address.lower().rpartition("@")
        return self.mail_dir / domain / local

    def message_paths(self, address: str) -> list[Path]:
        """Files of the messages delivered to *address* (Maildir new/ and cur/), oldest
        first: cheaper than :meth:`delivered` for big mailboxes (files never change)."""
        box = self.mailbox(address)
        paths = [
            path for sub in ("new", "cur") if (box / sub).is_dir() for path in (box / sub).iterdir()
        ]
        return sorted(paths, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def delivered_count(self, address: str) -> int:
        """How many messages *address* holds, without reading them."""
        box = self.mailbox(address)
        return sum(len(os.listdir(box / sub)) for sub in ("new", "cur") if (box / sub).is_dir())

    def delivered(self, address: str) -> list[bytes]:
        """Messages delivered to *address*, oldest first."""
        return [path.read_bytes() for path in self.message_paths(address)]

    def wait_for_delivery(self, address: str, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until *address* holds at least *count* messages; fail quoting the log."""
        deadline = time.monotonic() + timeout
        while (have := self.delivered_count(address)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{address}: {have} of {count} messages after {timeout}s\n{self._log_tail()}"
                )
            time.sleep(0.01)
        return self.delivered(address)

    # -- queue and log ---------------------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """``postqueue -j``: one dict per queued message (queue_name, queue_id, recipients…)."""
        output = self._run(POSTQUEUE, "-j")
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def flush(self) -> None:
        """``postqueue -f``: retry deferred mail now."""
        self._run(POSTQUEUE, "-f")

    def wait_until_idle(self, timeout: float = 10.0) -> None:
        """Wait until the incoming and active queues are empty (mail delivered or parked)."""
        deadline = time.monotonic() + timeout
        while any(self._queue_files(name) for name in ("incoming", "active")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"queue not idle after {timeout}s\n{self._log_tail()}")
            time.sleep(0.01)

    def log_text(self) -> str:
        """Everything this instance logged so far (its maillog_file)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until *text* is in the log (postlogd writes it a moment after the fact)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged after {timeout}s\n{self._log_tail()}")
            time.sleep(0.01)
        return log

    # -- internals -------------------------------------------------------------------------

    def _queue_files(self, name: str) -> list[str]:
        return [file for _, _, files in os.walk(self.queue_dir / name) for file in files]

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _run(self, command: Path, *args: str) -> str:
        """Run a Postfix tool on this instance's configuration; raise with its complaint."""
        result = subprocess.run(
            [str(command), "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command.name} {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _prepare_directories(self) -> None:
        for directory in (self.config_dir, self.queue_dir, self.log_file.parent):
            directory.mkdir(parents=True, exist_ok=True)
        for name, (user, group, mode) in _QUEUE_LAYOUT.items():
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
            path.chmod(mode)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, pwd.getpwnam(MAIL_OWNER).pw_uid, -1)
        self.mail_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.mail_dir, MAILBOX_UID, MAILBOX_UID)
        make_traversable(self.mail_dir)
        if self.milter and self.milter.startswith("unix:"):
            make_traversable(Path(self.milter.removeprefix("unix:")))

    def _main_cf(self) -> dict[str, Setting]:
        settings: dict[str, Setting] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "daemon_directory": str(DAEMON_DIRECTORY),
            "mail_owner": MAIL_OWNER,
            "setgid_group": SETGID_GROUP,
            "syslog_name": self.syslog_name,
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            "myhostname": "mx.test.invalid",
            "mydomain": "test.invalid",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": False,
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:local delivery is disabled",
            "default_transport": "error:outside the test domains",
            "relay_transport": "error:outside the test domains",
            "virtual_mailbox_domains": DOMAINS,
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"hash:{self.mailbox_table}",
            "virtual_uid_maps": f"static:{MAILBOX_UID}",
            "virtual_gid_maps": f"static:{MAILBOX_UID}",
            "in_flow_delay": "0s",
            "biff": False,
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": "",
            "milter_protocol": 6,
            "milter_default_action": self.milter_default_action,
            **DEFAULT_MILTER_TIMEOUTS,
        }
        settings.update(self.settings)
        return settings

    def _write_main_cf(self) -> None:
        main_cf = "".join(f"{name} = {_format_setting(v)}\n" for name, v in self._main_cf().items())
        _write_backdated(self.config_dir / "main.cf", main_cf)

    def _write_master_cf(self) -> None:
        listen = f"127.0.0.1:{self._port}"
        text = _MASTER_CF.format(listen=listen)
        if self._submission_port:
            text += (f"127.0.0.1:{self._submission_port} inet n - n - - smtpd"
                     " -o milter_macro_daemon_name=submission\n")
        _write_backdated(self.config_dir / "master.cf", text)

    def _start_master(self, timeout: float) -> None:
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        # Until master has read main.cf and set up postlogd it logs to syslog, or to the
        # POSTLOG_SERVICE socket named in its environment: ours, so failures are visible.
        early_log = self.base / "early-log.sock"
        early_log.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as early:
            early.bind(str(early_log))
            early.setblocking(False)
            self._supervisor = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _SUPERVISOR,
                    str(MASTER),
                    "-c",
                    str(self.config_dir),
                    "-d",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # no SIGINT from the terminal: stop() cleans up
                env={**os.environ, "POSTLOG_SERVICE": str(early_log), "POSTLOG_HOSTNAME": "mx"},
            )
            deadline = time.monotonic() + timeout
            while "daemon started" not in self.log_text()[offset:]:
                if self._supervisor.poll() is not None or time.monotonic() > deadline:
                    status = self._supervisor.poll()
                    self.stop()
                    early_messages = []
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            early_messages.append(early.recv(65536).decode(errors="replace"))
                    raise PostfixStartError(
                        f"Postfix in {self.base} did not start (status {status})\n"
                        + "\n".join(early_messages)
                        + f"\n{self.log_text()[offset:]}"
                    )
                time.sleep(0.005)
        early_log.unlink()


class PostfixFactory:
    """Starts any number of instances under one directory; stops them all on exit."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.instances: list[PostfixInstance] = []

    def __call__(
        self,
        milter: str | None = None,
        milter_default_action: str = "tempfail",
        settings: Mapping[str, Setting] | None = None,
        mailboxes: Iterable[str] = (),
        submission: bool = False,
    ) -> PostfixInstance:
        instance = PostfixInstance(
            self.base / f"postfix{len(self.instances)}",
            milter,
            milter_default_action,
            settings,
            mailboxes,
            submission,
        )
        self.instances.append(instance)
        instance.start()
        return instance

    def __enter__(self) -> PostfixFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for instance in reversed(self.instances):
            instance.stop()

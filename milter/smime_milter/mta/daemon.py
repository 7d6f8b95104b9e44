"""``smime-milter run``: the long-running service around libmilter.

Start-up order matters, and no process of the daemon keeps root:

1. the user and the socket's group are looked up (an unknown one stops the
   start before anything is created);
2. the socket is opened as root (its directory may be root's), given its
   group and mode, and made non-blocking (several processes accept on it);
3. still as root, the store and spool directories are prepared for the
   service user (mta/privileges.py says what is created and given to it);
4. privileges are dropped for good, and the store and spool directories are
   checked as the user; the store is created or upgraded once, here;
5. signals are blocked, before any thread or process exists;
6. the supervisor forks the milter processes (mta/prefork.py) and waits
   until every one has opened the store and built its verifier; then the
   metrics endpoint's (``[metrics] listen``, opened as the user) starts.

Signals (to the supervisor, the main PID): SIGUSR1 (``systemctl reload``)
re-reads the configuration and trust anchors in every process without
dropping a connection; SIGTERM, SIGINT and SIGHUP stop the processes
gracefully (libmilter itself treats HUP as stop, so reload uses USR1 rather
than fighting it for the signal).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import Milter

import milter as libmilter
from smime_milter.config import Config, configure_logging
from smime_milter.mta import privileges
from smime_milter.mta.app import SmimeMilter
from smime_milter.mta.metrics import (
    MetricsError,
    MetricsServer,
    SupervisorMetrics,
    serve,
    share_between_processes,
)
from smime_milter.mta.prefork import STOP_SIGNALS, Supervisor, log_trust_anchors, serving
from smime_milter.mta.privileges import ServiceUser, StartupError
from smime_milter.mta.worker import RELOAD_SIGNAL, RETIRE_SIGNAL, MakeRuntime
from smime_milter.store import Store

log = logging.getLogger("smime_milter")

MILTER_NAME = "smime-milter"
#: Postfix's queue directory, where the default socket's directory lives.
POSTFIX_QUEUE = Path("/var/spool/postfix")
#: Pending connections the kernel queues while every libmilter thread is busy.
_LISTEN_BACKLOG = 512


def _unix_socket_path(spec: str) -> Path | None:
    kind, _, rest = spec.partition(":")
    return Path(rest) if kind in ("unix", "local") else None


def _register() -> None:
    """Wire libmilter's callbacks to SmimeMilter objects (pymilter's runmilter
    does the same but also opens the socket and blocks, leaving no moment to
    set the socket's permissions and drop privileges)."""
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.register(
        MILTER_NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def _open_socket(config: Config, user: ServiceUser | None, group: int | None) -> Path | None:
    """Listen on the configured socket. A unix socket's directory is created
    when missing (the umask's mode, so the MTA can reach it) and then belongs
    to ``user``, who must be able to remove the socket at stop; an existing
    directory is left as it is."""
    spec = config.milter.socket
    path = _unix_socket_path(spec)
    if path is not None:
        try:
            privileges.make_directories(path.parent, mode=None, parent_mode=None, owner=user)
        except OSError as exc:
            raise _socket_directory_failure(path.parent, exc) from exc
    libmilter.setconn(spec)
    libmilter.settimeout(config.milter.timeout)
    libmilter.setbacklog(_LISTEN_BACKLOG)
    # A Python exception in a callback must make the MTA retry, never accept.
    libmilter.set_exception_policy(libmilter.TEMPFAIL)
    Milter.factory = SmimeMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE
                     | Milter.ADDRCPT | Milter.DELRCPT | Milter.CHGBODY)
    _register()
    try:
        libmilter.opensocket(True)
    except libmilter.error as exc:
        raise StartupError(f"cannot listen on {spec}: {exc}") from exc
    if path is not None:
        try:
            if group is not None:
                os.chown(path, -1, group)
            os.chmod(path, config.milter.socket_mode)
        except OSError as exc:
            _remove_socket(path)
            raise privileges.failure("socket", path, exc) from exc
    return path


def _socket_directory_failure(directory: Path, exc: OSError) -> StartupError:
    """The one line for a socket directory that cannot be made; for a missing
    one in Postfix's queue directory, what makes it (the package's postinst
    does when Postfix is installed, and again on dpkg-reconfigure)."""
    error = privileges.failure("socket directory", directory, exc)
    if directory.parent == POSTFIX_QUEUE and not os.path.lexists(directory):
        return StartupError(
            f"{error}: create it for the service user (the Debian package does when Postfix "
            f"is installed; after installing Postfix later: dpkg-reconfigure smime-milter)")
    return error


def _become_service_user(config: Config, user: ServiceUser | None) -> None:
    """Prepare the store and spool directories (as root, for ``user``), drop to
    ``user`` and check, as the user now, that both directories are usable."""
    store, spool = config.store.path, config.milter.spool_directory
    privileges.prepare(store, spool, user)
    if user is not None:
        privileges.drop(user)
        log.info("running as user %s", user.name)
    elif os.geteuid() == 0:
        log.warning('running as root, as milter.user = "root" says: every process of the '
                    "milter, the parsers of attacker-controlled mail included, is privileged")
    privileges.check_directory("store", store, privileges.STORE_FILES)
    if spool is not None:
        privileges.check_directory("spool directory", spool)


def _prepare_store(config: Config) -> None:
    """Create or upgrade the store once, before any milter process opens it,
    so a store that cannot be used stops the start with one clear line."""
    store = Store.open(config.store.path, map_size=config.store.map_size,
                       max_map_size=config.store.max_map_size)
    store.close()


def _open_descriptors() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


def _make_nonblocking() -> int | None:
    """Make libmilter's listening socket (the process's only listening
    descriptor at this point) non-blocking, and return it: every milter
    process waits for it with select() and then accepts; a process that lost
    the race must get EAGAIN, not sleep in accept() through a stop request."""
    for fd in sorted(_open_descriptors()):
        try:
            probe = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        finally:
            probe.detach()
        if listening:
            os.set_blocking(fd, False)
            return fd
    log.warning("could not find the listening socket to make it non-blocking; "
                "a stop may wait for the next connection")
    return None


def _metrics_directory(config: Config) -> Path | None:
    """A private, empty directory for the processes' metric files (the
    service user's; under $RUNTIME_DIRECTORY when systemd gives one)."""
    if config.metrics.listen is None:
        return None
    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    return Path(tempfile.mkdtemp(prefix="smime-milter-metrics-", dir=base))


def _serve_metrics(config: Config, metrics: SupervisorMetrics | None) -> MetricsServer | None:
    listen = config.metrics.listen
    if listen is None or metrics is None:
        return None
    try:
        server = serve(listen, metrics)
    except MetricsError as exc:
        raise StartupError(str(exc)) from exc
    log.info("metrics on %s", listen)
    return server


def _watch(metrics: SupervisorMetrics, supervisor: Supervisor, config: Config,
           fork_lock: threading.Lock) -> None:
    """The gauges read at each scrape: processes, and the store's size (opened
    read-only for the scrape, never while a process is being forked)."""
    def stats() -> dict[str, object]:
        with fork_lock:
            store = Store.open(config.store.path, readonly=True, create=False)
            try:
                return store.stats()
            finally:
                store.close()
    metrics.watch_store(stats, config.store.max_map_size)
    metrics.watch_workers(lambda: supervisor.workers, supervisor.alive)


def run(config: Config, load: Callable[[], Config], make_runtime: MakeRuntime) -> int:
    """Serve until told to stop; returns the exit status. ``load`` re-reads the
    configuration on reload, ``make_runtime`` builds what a process serves with."""
    configure_logging(config.milter)
    user = privileges.service_user(config.milter.user)
    group = privileges.group_id(config.milter.socket_group, "milter.socket_group")
    socket_path = _open_socket(config, user, group)
    listen_fd = _make_nonblocking()
    metrics_dir: Path | None = None
    fork_lock = threading.Lock()
    try:
        _become_service_user(config, user)
        _prepare_store(config)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {RELOAD_SIGNAL, RETIRE_SIGNAL})
        metrics_dir = _metrics_directory(config)
        if metrics_dir is not None:
            share_between_processes(metrics_dir)
        metrics = SupervisorMetrics(metrics_dir) if metrics_dir is not None else None
        supervisor = Supervisor(config, load, make_runtime, socket_path, listen_fd, metrics,
                                fork_lock)
        described = supervisor.start()
    except BaseException:
        _remove_socket(socket_path)
        _remove_tree(metrics_dir)
        raise
    metrics_server: MetricsServer | None = None
    try:
        if metrics is not None:
            _watch(metrics, supervisor, config, fork_lock)
        try:
            metrics_server = _serve_metrics(config, metrics)
        except BaseException:
            supervisor.stop()
            raise
        log.info("listening on %s (%s)", config.milter.socket,
                 serving(config, supervisor.workers, described))
        log_trust_anchors(described)
        status = supervisor.serve()
        log.info("stopping")
        supervisor.stop()
    finally:
        if metrics_server is not None:
            metrics_server.close()
        _remove_socket(socket_path)
        _remove_tree(metrics_dir)
    return status


def _remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _remove_socket(path: Path | None) -> None:
    """Remove our unix socket; one the service user may not remove (its
    directory is root's) stays, and the next start replaces it."""
    if path is None or not _is_socket(path):
        return
    try:
        path.unlink()
    except OSError as exc:
        log.info("socket %s left in place (%s); the next start replaces it",
                 path, exc.strerror)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False

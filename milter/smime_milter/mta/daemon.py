"""``smime-milter run``: the long-running service around libmilter.

Start-up order matters, and no process of the daemon keeps root:

1. the user and the socket's group are looked up (an unknown one stops the
   start before anything is created);
2. the socket is opened as root (its directory may be root's) and given its
   group and mode;
3. still as root, the store and spool directories are prepared for the
   service user (mta/privileges.py says what is created and given to it);
4. privileges are dropped for good, and the store and spool directories are
   checked as the user;
5. multiprocessing's helper processes (resource tracker, forkserver) start,
   as the user, from the main thread while it is still the only thread;
6. signals are blocked, before any thread exists (so only libmilter's signal
   thread and our reload thread ever receive them);
7. the store, the worker pool (forked by the forkserver, so as the user too)
   and the threads start, the metrics endpoint's (``[metrics] listen``,
   opened as the user) among them.

Signals: SIGUSR1 (``systemctl reload``) re-reads the configuration and
trust anchors without dropping a connection; SIGTERM, SIGINT and SIGHUP stop
libmilter gracefully (libmilter itself treats HUP as stop, so reload uses
USR1 rather than fighting it for the signal). All of them are blocked in
every thread and taken by sigwait, in our signal thread or libmilter's.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from multiprocessing import forkserver, resource_tracker
from pathlib import Path

import Milter

import milter as libmilter
from smime_milter.config import Config, configure_logging
from smime_milter.mta import privileges
from smime_milter.mta.app import RuntimeHolder, SmimeMilter
from smime_milter.mta.metrics import MetricsError, MetricsServer, MilterMetrics, instrument, serve
from smime_milter.mta.pipeline import Runtime
from smime_milter.mta.pool import VerifierPool
from smime_milter.mta.privileges import ServiceUser, StartupError
from smime_milter.store import Store
from smime_milter.trust import trust_files

log = logging.getLogger("smime_milter")

MILTER_NAME = "smime-milter"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
RELOAD_SIGNAL = signal.SIGUSR1
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


#: Builds a complete Runtime (verifier pool, advanced features) for a
#: configuration over the open store; the composition root supplies it.
MakeRuntime = Callable[[Config, Store], Runtime]


#: Seconds between looks at the trust files' modification times.
TRUST_CHECK_INTERVAL = 5.0


def _start_multiprocessing_helpers() -> None:
    """Start multiprocessing's helper processes now, from the main thread,
    after the privileges are dropped (the workers the forkserver forks are
    then the service user's too) and before the stop signals are blocked.

    Python's resource tracker *unblocks* SIGINT and SIGTERM in whichever thread
    first starts it; started later from the pool's manager thread, that thread
    would take a stop signal with its default action and kill the daemon in the
    middle of a message. Started here, before the main thread blocks them (and
    before any other thread exists), the unblocking changes nothing, and the
    forkserver and its workers inherit an unblocked signal mask.
    """
    resource_tracker.ensure_running()
    forkserver.ensure_running()


def _signal_loop(holder: RuntimeHolder, load: Callable[[], Config], store: Store,
                 make_runtime: MakeRuntime) -> None:
    """Wait for our signals. Stop signals stop libmilter (its own signal thread
    may take them first, with the same effect); SIGUSR1 reloads. Between
    signals, every TRUST_CHECK_INTERVAL seconds, an edited trust anchor,
    intermediate or CRL file (``smime-milter trust add``, a CRL fetch job)
    reloads too, so the milter and the JMAP API judge with the same anchors."""
    watched = trust_files(holder.current.config.trust)
    while True:
        info = signal.sigtimedwait(STOP_SIGNALS | {RELOAD_SIGNAL}, TRUST_CHECK_INTERVAL)
        if info is None:
            current = trust_files(holder.current.config.trust)
            if current == watched:
                continue
            watched = current
            log.info("trust anchor, intermediate or CRL files changed: reloading")
            _reload(holder, load, store, make_runtime)
            continue
        if info.si_signo in STOP_SIGNALS:
            log.info("%s received, finishing open connections",
                     signal.Signals(info.si_signo).name)
            libmilter.stop()
            return
        _reload(holder, load, store, make_runtime)
        watched = trust_files(holder.current.config.trust)


def _reload(holder: RuntimeHolder, load: Callable[[], Config], store: Store,
            make_runtime: MakeRuntime) -> None:
    """Build a complete new Runtime before swapping it in, so a bad edit keeps
    the running configuration and no message sees half of each."""
    old = holder.current
    try:
        config = load()
        if config.store != old.config.store or config.milter.socket != old.config.milter.socket:
            log.warning("reload: store and socket changes take effect after a restart")
        runtime = make_runtime(config, store)
    except Exception as exc:
        # One record per problem of a bad configuration, each complete.
        for line in str(exc).splitlines() or [""]:
            log.error("reload failed, keeping the running configuration: %s", line)
        _count_reload("failed")
        return
    holder.current = runtime
    _count_reload("ok")
    if config.metrics != old.config.metrics:
        log.warning("reload: [metrics] changes take effect after a restart")
    configure_logging(config.milter)
    log.info("reloaded: %s", _serving(runtime))
    _log_trust_anchors(runtime)
    # Messages still verifying on the old pool finish there.
    threading.Thread(target=_close_pool, args=(old,), daemon=True).start()


def _serving(runtime: Runtime) -> str:
    """What the start-up and reload lines say the daemon now serves with."""
    config = runtime.config
    source = config.source if config.source is not None else "built-in defaults"
    anchors = runtime.trust_anchors
    count = f", {anchors.total} trust anchors" if anchors is not None else ""
    workers = getattr(runtime.verifier, "workers", None)
    pool = f", {workers} workers" if workers is not None else ""
    return f"config {source}, store {config.store.path}{pool}{count}"


def _count_reload(result: str) -> None:
    if SmimeMilter.metrics is not None:
        SmimeMilter.metrics.reloads.labels(result).inc()


def _instrumented(make_runtime: MakeRuntime, metrics: MilterMetrics) -> MakeRuntime:
    """``make_runtime`` whose Runtimes report to ``metrics`` (at start and on reload)."""
    def make(config: Config, store: Store) -> Runtime:
        return instrument(make_runtime(config, store), metrics)
    return make


def _watch(metrics: MilterMetrics, holder: RuntimeHolder, store: Store, config: Config) -> None:
    """The gauges read at each scrape: store size and worker health."""
    metrics.watch_store(store.stats, config.store.max_map_size)

    def configured() -> int:
        return int(getattr(holder.current.verifier, "workers", 0))

    def alive() -> int:
        verifier = holder.current.verifier
        return verifier.alive() if isinstance(verifier, VerifierPool) else 0
    metrics.watch_workers(configured, alive)


def _serve_metrics(config: Config, metrics: MilterMetrics) -> MetricsServer | None:
    listen = config.metrics.listen
    if listen is None:
        return None
    try:
        server = serve(listen, metrics)
    except MetricsError as exc:
        raise StartupError(str(exc)) from exc
    log.info("metrics on %s", listen)
    return server


def _log_trust_anchors(runtime: Runtime) -> None:
    """One line saying how many anchors came from where, so an admin sees
    which roots the milter trusts for e-mail after every start and reload."""
    if runtime.trust_anchors is not None:
        log.info("trust anchors: %s", runtime.trust_anchors.describe())


def _close_pool(runtime: Runtime) -> None:
    verifier = runtime.verifier
    if isinstance(verifier, VerifierPool):
        verifier.close()


def run(config: Config, load: Callable[[], Config], make_runtime: MakeRuntime) -> int:
    """Serve until libmilter is told to stop; returns the exit status. ``load``
    re-reads the configuration on reload, ``make_runtime`` builds what serves it."""
    configure_logging(config.milter)
    user = privileges.service_user(config.milter.user)
    group = privileges.group_id(config.milter.socket_group, "milter.socket_group")
    socket_path = _open_socket(config, user, group)
    try:
        _become_service_user(config, user)
        _start_multiprocessing_helpers()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {RELOAD_SIGNAL})
        store = Store.open(config.store.path, map_size=config.store.map_size,
                           max_map_size=config.store.max_map_size)
    except BaseException:
        _remove_socket(socket_path)
        raise
    metrics = MilterMetrics()
    make_runtime = _instrumented(make_runtime, metrics)
    metrics_server: MetricsServer | None = None
    try:
        holder = RuntimeHolder(make_runtime(config, store))
        SmimeMilter.holder = holder
        SmimeMilter.metrics = metrics
        _watch(metrics, holder, store, config)
        try:
            metrics_server = _serve_metrics(config, metrics)
        except BaseException:
            _close_pool(holder.current)
            raise
        threading.Thread(target=_signal_loop, args=(holder, load, store, make_runtime), daemon=True,
                         name="signals").start()
        log.info("listening on %s (%s)", config.milter.socket, _serving(holder.current))
        _log_trust_anchors(holder.current)
        libmilter.main()
        log.info("stopping")
        _close_pool(holder.current)
    finally:
        if metrics_server is not None:
            metrics_server.close()
        store.close()
        _remove_socket(socket_path)
    return 0


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

"""Becoming the service user (``[milter] user``) and what it needs before that.

Started as root, the daemon opens its socket as root (the
socket may live in a directory only root can write), then, still as root,
creates the store directory (with any missing parents) and the spool
directory for the user (``[milter] user``, by default
``smime-milter``): owned by the user and its primary group, mode 0750.
Of what already exists only the store directory itself and its LMDB files
``data.mdb`` and ``lock.mdb`` are ours to manage and are given to the user;
a parent such as ``/var/lib``, an existing spool directory (it may be a
shared one like ``/var/tmp``) and a socket directory we did not create are
left alone. Symbolic links are never followed when changing owners: the
user may own the directory the store lives in, and must not be able to point
a name there at a file of root's.

Then the daemon drops to the user for good (initgroups, setgid, setuid, and
a check that setuid(0) now fails), and only after that starts any other
process, so none of them runs as root. Finally, as the user, it checks that
it can use the store and spool directories, so that a path the user cannot
reach is one line naming it rather than a failure deep in LMDB.

Every failure here is a :class:`StartupError` whose text names the path or
name and the reason, as one line.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from smime_milter.errors import SmimeMilterError

#: The store's files, given to the user with the store directory.
STORE_FILES = ("data.mdb", "lock.mdb")
#: Who the daemon becomes when started as root with no ``[milter] user``.
DEFAULT_USER = "smime-milter"
#: Mode of the store and spool directories (and their parents) we create.
PRIVATE_DIRECTORY = 0o750


class StartupError(SmimeMilterError, RuntimeError):
    """The daemon cannot start; the message says why."""


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The user the daemon becomes, with its primary group."""

    name: str
    uid: int
    gid: int


def service_user(name: str | None) -> ServiceUser | None:
    """The user to become, or None when the daemon stays who it is (already
    running as it, or started by an ordinary user with no ``user`` set).

    Started as root with no ``user``, the daemon becomes :data:`DEFAULT_USER`,
    the user the Debian package creates: it never keeps root by default. Only
    ``user = "root"``, written out, keeps it."""
    if name is None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(DEFAULT_USER)
        except KeyError:
            raise StartupError(
                f"milter.user: started as root, and the default service user "
                f"{DEFAULT_USER!r} does not exist: install the Debian package, or create it "
                f"(adduser --system --group --home /var/lib/smime-milter {DEFAULT_USER}), "
                f"or name another user in [milter] user"
            ) from None
        return ServiceUser(DEFAULT_USER, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(f"milter.user: no such user {name!r}") from None
    if os.geteuid() == entry.pw_uid:
        return None
    if os.geteuid() != 0:
        raise StartupError(f"milter.user: must start as root to become {name!r}")
    return ServiceUser(name, entry.pw_uid, entry.pw_gid)


def group_id(name: str | None, key: str) -> int | None:
    """The id of group ``name`` (configuration key ``key``), None for no group."""
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(f"{key}: no such group {name!r}") from None


def failure(what: str, path: Path, exc: OSError) -> StartupError:
    """``what path: reason``, adding the file that failed when it is another one."""
    reason = exc.strerror or str(exc)
    where = exc.filename
    at = f" (at {where})" if where is not None and Path(os.fsdecode(where)) != path else ""
    return StartupError(f"{what} {path}: {reason}{at}")


def make_directories(path: Path, *, mode: int | None, parent_mode: int | None,
                     owner: ServiceUser | None) -> list[Path]:
    """Create ``path`` and its missing parents; returns the directories created,
    outermost first. ``mode`` applies to ``path``, ``parent_mode`` to the
    parents (None: the umask's default); what is created goes to ``owner``."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    created: list[Path] = []
    for directory in reversed(missing):
        wanted = mode if directory == path else parent_mode
        try:
            os.mkdir(directory, 0o777 if wanted is None else wanted)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours
        if wanted is not None:
            os.chmod(directory, wanted, follow_symlinks=False)  # past the umask
        if owner is not None:
            os.chown(directory, owner.uid, owner.gid, follow_symlinks=False)
        created.append(directory)
    return created


def _adopt(path: Path, owner: ServiceUser, *, directory: bool) -> None:
    """Give an existing directory or regular file to ``owner`` unless it is the
    owner's already (its group then stays what the admin made it); anything
    else, a symbolic link above all, stays as it is."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    if kind(info.st_mode) and info.st_uid != owner.uid:
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)


def prepare(store: Path, spool: Path | None, owner: ServiceUser | None) -> None:
    """Create the store and spool directories (as root for ``owner``, when the
    daemon will become it) and give the store to ``owner``."""
    for what, path in (("store", store), ("spool directory", spool)):
        if path is None:
            continue
        try:
            make_directories(path, mode=PRIVATE_DIRECTORY,
                             parent_mode=None if owner is None else PRIVATE_DIRECTORY,
                             owner=owner)
            if owner is not None and what == "store":
                _adopt(path, owner, directory=True)
                for name in STORE_FILES:
                    _adopt(path / name, owner, directory=False)
        except OSError as exc:
            raise failure(what, path, exc) from exc


def drop(user: ServiceUser) -> None:
    """Become ``user`` for good: supplementary groups, group, user; then make
    sure real, effective and saved ids are the user's and root cannot be regained."""
    try:
        os.initgroups(user.name, user.gid)
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as exc:
        raise StartupError(f"milter.user: cannot become {user.name!r}: {exc.strerror}") from exc
    if os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3:
        raise StartupError(f"milter.user: ids after becoming {user.name!r} are "
                           f"uid {os.getresuid()}, gid {os.getresgid()}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise StartupError(f"milter.user: became {user.name!r} but could regain root")


def check_directory(what: str, path: Path, files: tuple[str, ...] = ()) -> None:
    """As the user the daemon runs as: ``path`` is a directory it can list,
    enter and write, and those of ``files`` that exist it can read and write."""
    try:
        info = os.stat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        for target, needed in ((path, os.R_OK | os.W_OK | os.X_OK),
                               *((path / name, os.R_OK | os.W_OK) for name in files)):
            if target != path and not os.path.lexists(target):
                continue
            if not os.access(target, needed):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
    except OSError as exc:
        raise failure(what, path, exc) from exc

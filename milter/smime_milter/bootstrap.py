"""Build the long-lived objects (verifier, logging) from a Config.

Shared by the command-line tools and the daemon so both read a config file
the same way.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smime_milter.advanced.addressbook import AddressBook
from smime_milter.advanced.compose import Advanced
from smime_milter.advanced.keystore import SigningKeys
from smime_milter.cms.envelope import load_decryption_key
from smime_milter.config.reader import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    MilterConfig,
    load_config,
)
from smime_milter.revalidate import Refresher, Revalidator
from smime_milter.store.facade import Store
from smime_milter.trust.chain import ChainValidator, TrustStore
from smime_milter.verify.engine import Verifier


def load_trust(config: Config) -> TrustStore:
    """The configured anchors (with the ``trust add`` directory), intermediates, CRLs."""
    trust = config.trust
    return TrustStore.load(trust.all_anchors, trust.intermediates, trust.crls)


def build_chain_validator(config: Config, trust: TrustStore | None = None) -> ChainValidator:
    """Path validation with ``trust`` (default: the configured anchors) and the
    configured revocation mode and algorithm policy."""
    return ChainValidator(
        trust or load_trust(config),
        revocation=config.verify.revocation,
        allow_sha1=config.verify.algorithms.allow_sha1,
        min_rsa_bits=config.verify.algorithms.min_rsa_bits,
    )


def build_revalidator(config: Config, trust: TrustStore | None = None) -> Revalidator:
    """Re-validation with ``trust`` (default: the configured anchors)."""
    return Revalidator(build_chain_validator(config, trust))


def build_advanced(
    config: Config,
    store: Store | None = None,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Advanced | None:
    """Server-side signing and encryption from ``[advanced]``; None when
    neither a key store nor an address book is configured (the feature is
    off, and request headers are only removed). ``store`` supplies learned
    certificates when ``learn`` is on."""
    settings = config.advanced
    if settings.keys is None and settings.addressbook is None:
        return None
    keys = (SigningKeys.load(settings.keys, settings.keys_password_file)
            if settings.keys is not None else None)
    book = AddressBook(settings.addressbook, keys, store if settings.learn else None,
                       build_chain_validator(config))
    return Advanced(keys, book, settings.may_sign_as, clock=clock)


def build_advanced_from_file(path: Path = DEFAULT_CONFIG) -> Advanced:
    """What ``advanced.apply`` uses when the embedding server configured
    nothing: the daemon's configuration and, read-only, its store."""
    config = load_config(path)
    store = None
    if config.advanced.learn and (config.store.path / "data.mdb").exists():
        store = Store.open(config.store.path, readonly=True)
    advanced = build_advanced(config, store)
    if advanced is None:
        raise ConfigError(f"{path}: [advanced] configures neither keys nor addressbook")
    return advanced


def build_refresher(
    config: Config,
    store: Store,
    *,
    readonly: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Refresher:
    """The re-validation machinery of the JMAP API over ``store``, with the
    configured anchors, revocation mode and cache lifetime."""
    return Refresher(
        store, build_revalidator(config), clock=clock,
        lifetime=timedelta(seconds=config.jmap.cache_lifetime), readonly=readonly,
    )


def build_verifier(config: Config, extra_keys: Sequence[Path] = ()) -> Verifier:
    """A Verifier over the configured trust anchors, CRLs and decryption keys."""
    trust = load_trust(config)
    keys = [load_decryption_key(k.key, k.certificate) for k in config.decrypt_keys]
    keys.extend(load_decryption_key(path) for path in extra_keys)
    return Verifier(trust, config.verify, keys)


def configure_logging(milter: MilterConfig) -> None:
    """stderr (the journal under systemd) or syslog facility mail, like other milters."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if milter.log_target == "syslog":
        handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("smime-milter[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(milter.log_level.upper())


#: ``(path, mtime_ns, size)`` of every trust file: what the daemon and the
#: JMAP service compare to notice an edited anchor, intermediate or CRL file.
TrustFiles = tuple[tuple[str, int, int], ...]


def _entries(path: Path) -> Iterator[tuple[str, int, int]]:
    """``(path, mtime_ns, size)`` of ``path`` or of the files in it; a
    missing path counts too (it may appear later)."""
    try:
        info = path.stat()
    except OSError:
        yield (str(path), -1, -1)
        return
    if not stat.S_ISDIR(info.st_mode):
        yield (str(path), info.st_mtime_ns, info.st_size)
        return
    # The directory itself: a file removed or renamed changes its mtime.
    yield (str(path), info.st_mtime_ns, -2)
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return
    for name in names:
        child = path / name
        try:
            child_info = child.stat()
        except OSError:
            continue
        yield (str(child), child_info.st_mtime_ns, child_info.st_size)


def trust_files(config: Config) -> TrustFiles:
    """What changes when any anchor, intermediate or CRL file does."""
    trust = config.trust
    paths: Iterable[Path] = (*trust.anchors, trust.anchor_directory, *trust.intermediates,
                             *trust.crls)
    return tuple(entry for path in paths for entry in _entries(Path(path)))

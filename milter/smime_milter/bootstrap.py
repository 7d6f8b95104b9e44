"""The composition root: the only place that builds long-lived objects
(verifier, store-backed re-validation, advanced features, the milter's
runtime, the JMAP API) from a Config.

Library packages below take what they need as arguments; the command-line
tools call these builders, so every process reads a config file the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smime_milter.advanced import AddressBook, Advanced, SigningKeys, compose
from smime_milter.cms import load_decryption_key
from smime_milter.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from smime_milter.jmap import SmimeJmap
from smime_milter.mta import InProcessVerifier, Runtime, hostname
from smime_milter.revalidate import Refresher, Revalidator
from smime_milter.store import Store
from smime_milter.trust import ChainValidator, LoadedTrust, TrustStore, load_trust_store
from smime_milter.verify import Verifier


def load_trust_with_sources(config: Config) -> LoadedTrust:
    """The trust store of ``[trust]`` and how many anchors came from where."""
    return load_trust_store(config.trust)


def load_trust(config: Config) -> TrustStore:
    """The system anchors (Mozilla's e-mail roots unless ``system_anchors =
    "none"``), the configured and the managed anchors, intermediates, CRLs."""
    return load_trust_with_sources(config).store


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


def build_verifier(config: Config, extra_keys: Sequence[Path] = (),
                   trust: TrustStore | None = None) -> Verifier:
    """A Verifier over ``trust`` (default: the configured trust anchors and
    CRLs) and the decryption keys."""
    trust = trust or load_trust(config)
    keys = [load_decryption_key(k.key, k.certificate) for k in config.decrypt_keys]
    keys.extend(load_decryption_key(path) for path in extra_keys)
    return Verifier(trust, config.verify, keys)


def build_runtime(config: Config, store: Store) -> Runtime:
    """Everything one configuration of the milter daemon serves with."""
    trust = load_trust_with_sources(config)
    verifier = InProcessVerifier(build_verifier(config, trust=trust.store))
    advanced = build_advanced(config, store)
    return Runtime(config=config, verifier=verifier, store=store, hostname=hostname(),
                   advanced=advanced, trust_anchors=trust.sources)


def open_jmap(
    config: Config,
    *,
    readonly: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SmimeJmap:
    """The JMAP API over the configured store, anchors and cache lifetime, for
    a JMAP server to embed; :meth:`SmimeJmap.close` (or ``with``) releases the
    store. A store that does not exist is a StoreError: the milter creates it."""
    store = Store.open(config.store.path, readonly=readonly, create=False,
                       map_size=config.store.map_size, max_map_size=config.store.max_map_size)
    try:
        return SmimeJmap(build_refresher(config, store, readonly=readonly, clock=clock))
    except BaseException:
        store.close()
        raise


def default_advanced() -> Advanced:
    """The instance ``advanced.apply`` uses, for a JMAP server that configured
    none: built on first use from the daemon's configuration file
    (``DEFAULT_CONFIG``) and its store, read-only, then kept."""
    current = compose.configured()
    if current is None:
        current = build_advanced_from_file()
        compose.configure(current)
    return current

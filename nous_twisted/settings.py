"""Application settings: ``configure()``, ``PoolSettings``.

Settings are read on every call; ``configure()`` changes what later calls see
and applies pool settings to the live pools at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.ssl import Certificate

_UNSET: Any = object()


@dataclass(frozen=True)
class PoolSettings:
    """The shared connection pool.

    :ivar max_connections: the most connections open at once per host
        (scheme, host, port); requests over it wait in FIFO order.
    :ivar timeout: idle keep-alive in milliseconds before a cached connection
        is closed.  Short by default because Twisted never retries a POST that
        fails on a stale reused connection.
    """

    max_connections: int = 50
    timeout: int = 2000

    def __post_init__(self) -> None:
        for name in ("max_connections", "timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PoolSettings.{name} must be a positive int, not {v!r}")


@dataclass(frozen=True)
class Settings:
    http_backend: Any = None
    http_stream_backend: Any = None
    pool: PoolSettings = PoolSettings()
    ca_bundle: str | None = None


_settings = Settings()


def current() -> Settings:
    """The settings in force."""
    return _settings


def configure(
    http_backend: Any = _UNSET,
    http_stream_backend: Any = _UNSET,
    pool: PoolSettings = _UNSET,
    ca_bundle: str | None = _UNSET,
) -> Settings:
    """Set the application configuration.

    Only the arguments you pass change; the others keep their current value
    (``None`` resets a backend to the default).  Backend values are checked at
    once, so a typo fails here, naming the key.  Pool settings apply to the
    live pools at once.

    :param http_backend: ``"treq"``, ``"agent"``, a dotted path, a class or an
        instance providing ``IHTTPBackend``.
    :param http_stream_backend: the same for ``IStreamBackend``.
    :param pool: a :class:`PoolSettings`.
    :param ca_bundle: a PEM file whose certificates replace the platform's
        trust roots (``SSL_CERT_FILE`` is used when this is unset).
    :return: the new settings.
    """
    global _settings
    from . import pool as _pool
    from .resolve import check_config

    new = dict(
        http_backend=_settings.http_backend,
        http_stream_backend=_settings.http_stream_backend,
        pool=_settings.pool,
        ca_bundle=_settings.ca_bundle,
    )
    if http_backend is not _UNSET:
        check_config("http_backend", http_backend)
        new["http_backend"] = http_backend
    if http_stream_backend is not _UNSET:
        check_config("http_stream_backend", http_stream_backend)
        new["http_stream_backend"] = http_stream_backend
    if pool is not _UNSET:
        if not isinstance(pool, PoolSettings):
            raise TypeError(f"pool must be a PoolSettings, not {type(pool).__name__}")
        new["pool"] = pool
    if ca_bundle is not _UNSET:
        if ca_bundle is not None:
            load_ca_bundle(ca_bundle, "configure(ca_bundle=...)")
        new["ca_bundle"] = ca_bundle
    old = _settings
    _settings = Settings(**new)
    _pool.settings_changed(old, _settings)
    return _settings


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_ca_bundle(path: str, source: str) -> list[Certificate]:
    """The certificates of a PEM file; a clear ValueError when it has none."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{source} must be a path to a PEM file, not {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{source} = {str(path)!r}: cannot read the CA bundle: {e.strerror}") from None
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise ValueError(f"{source} = {str(path)!r}: no PEM certificate found in the file")
    try:
        return [Certificate.loadPEM(b) for b in blocks]
    except Exception as e:
        raise ValueError(f"{source} = {str(path)!r}: a certificate does not parse: {e}") from None


def effective_ca_bundle() -> tuple[str, str] | None:
    """The CA bundle in force and where it came from, or None for platform trust."""
    if _settings.ca_bundle is not None:
        return _settings.ca_bundle, "configure(ca_bundle=...)"
    env = os.environ.get("SSL_CERT_FILE")
    if env:
        return env, "the environment variable SSL_CERT_FILE"
    return None

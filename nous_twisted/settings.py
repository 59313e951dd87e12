"""Application settings as values: ``Settings``, ``PoolSettings``, ``current()``.

Values only: ``configure()`` (in ``api.py``) validates new settings, swaps
them in with :func:`replace`, and tells the live pools to apply them.
Settings are read on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PoolSettings:
    """The shared connection pool.

    :ivar max_connections: the most connections open at once per host
        (scheme, host, port); requests over it wait in FIFO order.
    :ivar timeout: idle keep-alive in milliseconds before a cached connection
        is closed.  Short by default because a POST that fails on a stale
        reused connection is retried only when it provably never reached the
        server.
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
    """Everything ``configure()`` sets.

    :ivar proxy: the proxy URL for every request (None: not configured, the
        environment decides when ``trust_env``); never in the repr, since it
        may hold credentials.
    :ivar trust_env: read ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``.
    """

    http_backend: Any = None
    http_stream_backend: Any = None
    pool: PoolSettings = PoolSettings()
    ca_bundle: str | None = None
    #: the default retry policy (a ``nous_twisted.retry.RetryPolicy``), None for none
    retries: Any = None
    proxy: str | None = field(default=None, repr=False)
    trust_env: bool = True


_settings = Settings()


def current() -> Settings:
    """The settings in force."""
    return _settings


def replace(new: Settings) -> Settings:
    """Put ``new`` in force (already validated); returns the old settings."""
    global _settings
    old, _settings = _settings, new
    return old

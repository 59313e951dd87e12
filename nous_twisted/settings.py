"""Application settings as values: ``Settings``, ``PoolSettings``, ``current()``, ``UNSET``.

Values only: ``configure()`` (in ``api.py``) validates new settings, swaps
them in with :func:`replace`, and tells the live pools to apply them.
Settings are read on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Unset:
    """The default of an argument you did not pass: the current value stays.

    ``configure()`` uses its single instance, :data:`UNSET`, so that ``None``
    can mean "reset to the default" while leaving an argument out means "keep
    what is set"; its repr says so in ``help(configure)``.
    """

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unset: keep the current value>"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = Unset()


@dataclass(frozen=True, init=False)
class PoolSettings:
    """The shared connection pool.

    ``PoolSettings(max_connections=50, idle_timeout=2.0)``.

    :param max_connections: the most connections open at once per host
        (scheme, host, port); requests over it wait in FIFO order.
    :param idle_timeout: idle keep-alive in **seconds** before a cached
        connection is closed (default 2.0).  Short by default because a POST
        that fails on a stale reused connection is retried only when it
        provably never reached the server.
    :param timeout: the same limit in **milliseconds** (default 2000), the
        name of the reference design, kept as an alias: pass one or the other
        (both only when they agree).
    :raises TypeError, ValueError: for a value that is not a positive number
        (an int for ``max_connections`` and ``timeout``), or for
        ``idle_timeout`` and ``timeout`` given with different values.

    ``timeout`` (milliseconds) and ``idle_timeout`` (seconds) always describe
    the same limit: ``PoolSettings(idle_timeout=1.5).timeout == 1500``.
    """

    max_connections: int
    timeout: int
    idle_timeout: float

    def __init__(
        self,
        max_connections: int = 50,
        timeout: int | None = None,
        *,
        idle_timeout: float | None = None,
    ) -> None:
        _check_positive("max_connections", max_connections, int)
        if timeout is not None:
            _check_positive("timeout", timeout, int)
        if idle_timeout is not None:
            _check_positive("idle_timeout", idle_timeout, (int, float))
            if idle_timeout == float("inf"):
                raise ValueError("PoolSettings.idle_timeout must be a finite number of seconds, not inf")
        if timeout is not None and idle_timeout is not None and timeout != _ms(idle_timeout):
            raise ValueError(
                f"PoolSettings got idle_timeout={idle_timeout!r} (seconds) and timeout={timeout!r} "
                f"(milliseconds), which disagree: pass only one (idle_timeout is the clearer name)"
            )
        if idle_timeout is None:
            idle_timeout = (2000 if timeout is None else timeout) / 1000
        if timeout is None:
            timeout = _ms(idle_timeout)
        object.__setattr__(self, "max_connections", max_connections)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "idle_timeout", float(idle_timeout))

    def __repr__(self) -> str:
        return f"PoolSettings(max_connections={self.max_connections}, idle_timeout={self.idle_timeout!r})"


def _ms(seconds: float) -> int:
    # the millisecond alias of a sub-millisecond limit rounds up: never 0
    return max(1, round(seconds * 1000))


def _check_positive(name: str, v: object, kinds: type | tuple[type, ...]) -> None:
    if isinstance(v, bool) or not isinstance(v, kinds):
        want = "a positive int" if kinds is int else "a positive number"
        raise TypeError(f"PoolSettings.{name} must be {want}, not {type(v).__name__} {v!r}")
    if not v > 0:  # type: ignore[operator]
        unit = {"timeout": " (milliseconds)", "idle_timeout": " (seconds)"}.get(name, "")
        raise ValueError(f"PoolSettings.{name}{unit} must be positive, not {v!r}")


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

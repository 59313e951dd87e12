"""The public calls: ``configure``, and ``post`` and ``stream`` on the default Client."""

from __future__ import annotations

from typing import Any, Literal, overload

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent

from . import settings as _settings
from .client import UNSET, Client
from .eventstream import EventStream
from .proxy import parse_proxy_url
from .request import HeadersArg
from .resolve import check_config
from .response import Reply
from .retry import RetryPolicy
from .settings import UNSET as _KEEP
from .settings import PoolSettings, Settings
from .shared import settings_changed
from .tls import load_ca_bundle

_UNSET: Any = _KEEP  # its repr tells help(configure) what leaving an argument out means


def configure(
    http_backend: Any = _UNSET,
    http_stream_backend: Any = _UNSET,
    pool: PoolSettings = _UNSET,
    ca_bundle: str | None = _UNSET,
    retries: int | RetryPolicy | None = _UNSET,
    proxy: str | None = _UNSET,
    trust_env: bool = _UNSET,
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
    :param retries: the default retries of every call that sets none: an
        int (retries with the default :class:`RetryPolicy`), a policy, or
        None for no retries (the default: an SDK above usually retries).
    :param proxy: a proxy URL for every request,
        ``http://[user:password@]host:port`` (or ``https://``); None: none
        configured (the environment decides, see ``trust_env``).  Checked now.
    :param trust_env: read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and
        ``NO_PROXY`` when no proxy is set in code (default True).
    :return: the new settings.
    """
    old = _settings.current()
    new = dict(
        http_backend=old.http_backend,
        http_stream_backend=old.http_stream_backend,
        pool=old.pool,
        ca_bundle=old.ca_bundle,
        retries=old.retries,
        proxy=old.proxy,
        trust_env=old.trust_env,
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
    if retries is not _UNSET:
        new["retries"] = RetryPolicy.coerce(retries, "configure(retries=...)")
    if proxy is not _UNSET:
        if proxy is not None:
            parse_proxy_url(proxy, "configure(proxy=...)")
        new["proxy"] = proxy
    if trust_env is not _UNSET:
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be True or False, not {type(trust_env).__name__}")
        new["trust_env"] = trust_env
    settings = Settings(**new)
    _settings.replace(settings)
    settings_changed(old, settings)
    return settings


_DEFAULT = Client()


@overload
def post(
    url: str, body: Any, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
    connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
    full_response: Literal[False] = ..., proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
) -> Deferred[Any]: ...


@overload
def post(
    url: str, body: Any, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
    connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
    full_response: Literal[True], proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
) -> Deferred[Reply]: ...


def post(
    url: str,
    body: Any,
    headers: HeadersArg = (),
    *,
    backend: Any = None,
    timeout: float = 180.0,
    connect_timeout: float = 30.0,
    pool_timeout: float | None = None,
    retries: int | RetryPolicy | None = None,
    full_response: bool = False,
    proxy: str | None = UNSET,
    agent: IAgent | None = None,
    reactor: Any = None,
) -> Deferred[Any]:
    """POST ``body`` as JSON to ``url``; fire with the decoded JSON reply.

    A call on the default :class:`~nous_twisted.Client`; the same as
    ``Client().post(url, ...)``.

    :param body: a mapping or list (encoded with orjson) or bytes (sent as is).
    :param headers: a mapping or (name, value) pairs; ``Content-Type:
        application/json`` is added when missing.
    :param backend: ``"treq"``, ``"agent"``, a dotted path, a class or an
        instance providing ``IHTTPBackend``; None falls through to
        ``NOUS_HTTP_BACKEND``, then ``configure(http_backend=)``, then treq.
    :param timeout: seconds for the whole response, body included.
    :param connect_timeout: seconds for DNS, TCP connect and TLS handshake.
    :param pool_timeout: seconds to wait for a pool slot (None: as long as
        it takes, in FIFO order); over it, ``RequestTimeout("pool")``.
    :param retries: an int or a :class:`~nous_twisted.RetryPolicy`; None
        takes ``configure(retries=)``'s (no retries unless configured).
    :param proxy: a proxy URL for this call, or None for a direct
        connection; unset, ``configure(proxy=)`` and then the environment
        (``HTTPS_PROXY``, ``NO_PROXY``, ...) decide.
    :param full_response: fire with a :class:`~nous_twisted.Reply` (value,
        status, headers, request id, elapsed, attempts) instead of the value.
    :param agent: send through this ``IAgent`` instead of the shared pool.
    :param reactor: the reactor (default: the global one, resolved now).
    :return: a Deferred (awaitable from Twisted coroutines and asyncio
        tasks) firing with the decoded body (``{}`` for an empty one), or
        failing with ``HTTPStatusError``, a ``TransportError`` or
        ``DecodeError``.  Cancelling it aborts the connection.
    :raises TypeError, ValueError: at once, for bad arguments.
    """
    return _DEFAULT._send(
        b"POST", url, body, headers, backend, timeout, connect_timeout, pool_timeout, retries, full_response,
        proxy, agent, reactor,
    )


def stream(
    url: str,
    body: Any,
    headers: HeadersArg = (),
    *,
    stream_backend: Any = None,
    timeout: float = 180.0,
    connect_timeout: float = 30.0,
    pool_timeout: float | None = None,
    retries: int | RetryPolicy | None = None,
    format: str | None = None,
    proxy: str | None = UNSET,
    agent: IAgent | None = None,
    reactor: Any = None,
) -> EventStream:
    """POST ``body`` and stream the reply's events; returns at once.

    A call on the default :class:`~nous_twisted.Client`.
    ``Content-Type: application/json`` and ``Accept: text/event-stream`` are
    added when missing.  Transport failures never raise here: they arrive as
    a ``StreamError`` event.

    :param format: ``"sse"``, ``"ndjson"`` (Ollama) or ``"json-array"``
        (Gemini without ``alt=sse``); None picks from the response Content-Type.
    :param timeout: the idle limit: the longest gap between two events
        (comments and keep-alive bytes do not count), suspended while the
        consumer holds the stream paused.
    :param connect_timeout: seconds for DNS, TCP connect and TLS handshake.
    :param pool_timeout: seconds to wait for a pool slot (None: as long as it takes).
    :param retries: retries before the first event (an int or a
        ``RetryPolicy``; None: ``configure(retries=)``'s); never after one.
    :param proxy: a proxy URL for this call, or None for a direct connection.
    :param stream_backend: ``"treq"``, ``"agent"``, a dotted path, a class or
        an instance providing ``IStreamBackend``; None falls through to
        ``NOUS_HTTP_STREAM_BACKEND``, then ``configure(http_stream_backend=)``,
        then treq.
    :raises TypeError, ValueError: at once, for bad arguments.
    """
    return _DEFAULT.stream(
        url, body, headers, stream_backend=stream_backend, timeout=timeout, connect_timeout=connect_timeout,
        pool_timeout=pool_timeout, retries=retries, format=format, proxy=proxy, agent=agent, reactor=reactor,
    )

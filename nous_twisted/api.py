"""The public calls: ``post``, ``stream`` and ``configure``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent

from . import settings as _settings
from .eventstream import EventStream
from .request import HeadersArg, prepare
from .resolve import check_config, resolve_http_backend, resolve_stream_backend
from .response import to_value
from .settings import UNSET, PoolSettings, Settings
from .shared import settings_changed
from .tls import load_ca_bundle

_UNSET: Any = UNSET  # its repr tells help(configure) what leaving an argument out means


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
    old = _settings.current()
    new = dict(
        http_backend=old.http_backend,
        http_stream_backend=old.http_stream_backend,
        pool=old.pool,
        ca_bundle=old.ca_bundle,
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
    settings = Settings(**new)
    _settings.replace(settings)
    settings_changed(old, settings)
    return settings

FORMATS = (None, "sse", "ndjson", "json-array")


def check_call_options(timeout: object, connect_timeout: object, agent: object) -> None:
    for name, v in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, not {type(v).__name__}")
        if not v > 0 or v == float("inf"):
            raise ValueError(f"{name} must be a positive, finite number of seconds, not {v!r}")
    if agent is not None and not IAgent.providedBy(agent):
        raise TypeError(
            f"agent must provide twisted.web.iweb.IAgent (a twisted.web.client.Agent, say), "
            f"not {type(agent).__name__}"
        )


def post(
    url: str,
    body: Any,
    headers: HeadersArg = (),
    *,
    backend: Any = None,
    timeout: float = 180.0,
    connect_timeout: float = 30.0,
    agent: IAgent | None = None,
    reactor: Any = None,
) -> Deferred[Any]:
    """POST ``body`` as JSON to ``url``; fire with the decoded JSON reply.

    :param body: a mapping or list (encoded with orjson) or bytes (sent as is).
    :param headers: a mapping or (name, value) pairs; ``Content-Type:
        application/json`` is added when missing.
    :param backend: ``"treq"``, ``"agent"``, a dotted path, a class or an
        instance providing ``IHTTPBackend``; None falls through to
        ``NOUS_HTTP_BACKEND``, then ``configure(http_backend=)``, then treq.
    :param timeout: seconds for the whole response, body included.
    :param connect_timeout: seconds for a pool slot, TCP connect and TLS handshake.
    :param agent: send through this ``IAgent`` instead of the shared pool.
    :param reactor: the reactor (default: the global one, resolved now).
    :return: a Deferred firing with the decoded body (``{}`` for an empty one),
        or failing with ``HTTPStatusError``, a ``TransportError`` or
        ``DecodeError``.  Cancelling it aborts the connection.
    :raises TypeError, ValueError: at once, for bad arguments.
    """
    request = prepare(url, body, headers)
    check_call_options(timeout, connect_timeout, agent)
    impl = resolve_http_backend(backend)
    d: Deferred[Any] = impl.post(
        request, timeout=timeout, connect_timeout=connect_timeout, agent=agent, reactor=reactor
    )
    return d.addCallback(to_value, request.display_url, request.secrets)


def stream(
    url: str,
    body: Any,
    headers: HeadersArg = (),
    *,
    stream_backend: Any = None,
    timeout: float = 180.0,
    connect_timeout: float = 30.0,
    format: str | None = None,
    agent: IAgent | None = None,
    reactor: Any = None,
) -> EventStream:
    """POST ``body`` and stream the reply's events; returns at once.

    ``Content-Type: application/json`` and ``Accept: text/event-stream`` are
    added when missing.  Transport failures never raise here: they arrive as
    a ``StreamError`` event.

    :param format: ``"sse"``, ``"ndjson"`` (Ollama) or ``"json-array"``
        (Gemini without ``alt=sse``); None picks from the response Content-Type.
    :param timeout: the idle limit: the longest gap between two events
        (comments and keep-alive bytes do not count), suspended while the
        consumer holds the stream paused.
    :param connect_timeout: seconds for a pool slot, TCP connect and TLS handshake.
    :param stream_backend: ``"treq"``, ``"agent"``, a dotted path, a class or
        an instance providing ``IStreamBackend``; None falls through to
        ``NOUS_HTTP_STREAM_BACKEND``, then ``configure(http_stream_backend=)``,
        then treq.
    :raises TypeError, ValueError: at once, for bad arguments.
    """
    request = prepare(url, body, headers, accept=b"text/event-stream")
    check_call_options(timeout, connect_timeout, agent)
    if format not in FORMATS:
        raise ValueError(f"format must be one of 'sse', 'ndjson', 'json-array' or None, not {format!r}")
    impl = resolve_stream_backend(stream_backend)
    result: EventStream = impl.stream(
        request,
        timeout=timeout,
        connect_timeout=connect_timeout,
        format=format,
        agent=agent,
        reactor=reactor,
    )
    return result

"""The public calls: ``post`` and ``stream``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent

from .eventstream import EventStream
from .request import HeadersArg, prepare
from .resolve import resolve_http_backend, resolve_stream_backend
from .response import to_value

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
    return d.addCallback(to_value, request.display_url)


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

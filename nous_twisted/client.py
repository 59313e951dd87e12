"""The :class:`Client`: defaults for calls, and the send path every call takes.

A Client holds defaults only (base URL, headers, backends, timeouts,
retries); the connections live in the one shared pool per reactor, so a
Client costs nothing to make and nothing to drop.  It is immutable:
:meth:`Client.with_options` returns a new one.  The module-level ``post``
and ``stream`` are calls on a default Client.

The send path, one concern a layer (as httpx's ``send`` ->
``_send_handling_redirects`` -> ``_send_single_request``)::

    Client.post  -> _PostCall (retries, observers) -> backend.post (one attempt)
                 -> to_value / Reply
    Client.stream -> AttemptsCore (retries before the first event, observers)
                  -> backend.stream (one attempt) -> EventStream

Without retries and with nobody observing, a call goes straight to the
backend: the machinery costs nothing when it is not used.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal, overload

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from . import settings as _settings
from .errors import NousHTTPError
from .eventstream import EventStream
from .observers import FAILURE, RESPONSE, RETRY, START, CallEvent, emit, failure_phase, usage_of, watched
from .proxy import UNSET as NO_PROXY_GIVEN
from .proxy import Proxy, choose_proxy, with_proxy
from .reactors import AwaitableDeferred, awaitable, default_reactor
from .request import HeadersArg, HTTPRequest, check_base_url, join_url, normalize_headers, prepare
from .resolve import resolve_http_backend, resolve_stream_backend
from .response import RawResponse, Reply, request_id_of, response_headers, to_value
from .retry import RetryPolicy, gave_up
from .stream_attempts import AttemptsCore
from .streamcore import StreamCore

log = Logger(namespace="nous_twisted")

FORMATS = (None, "sse", "ndjson", "json-array")


class _Unset:
    """The default of a per-call override: "use the client's value"."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


_INF = float("inf")

#: The default of every per-call override: the client's own value applies.
UNSET: Any = _Unset()


def check_seconds(name: str, value: object) -> float:
    if type(value) is float and 0.0 < value < _INF:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value == _INF or value != value:
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


def check_pool_timeout(value: object) -> float | None:
    if value is None:
        return None
    return check_seconds("pool_timeout", value)


def check_agent(agent: object) -> Any:
    if agent is not None and not IAgent.providedBy(agent):
        raise TypeError(
            f"agent must provide twisted.web.iweb.IAgent (a twisted.web.client.Agent, say), "
            f"not {type(agent).__name__}"
        )
    return agent


def check_format(format: object) -> str | None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of 'sse', 'ndjson', 'json-array' or None, not {format!r}")
    return format


def backend_name(impl: Any) -> str:
    name = getattr(impl, "name", None)
    return name if isinstance(name, str) else type(impl).__name__


def _policy(retries: RetryPolicy | None) -> RetryPolicy | None:
    """The policy in force: the call's or client's, else ``configure()``'s;
    None when it retries nothing."""
    if retries is None:
        retries = _settings.current().retries
    if retries is None or retries.max_retries == 0:
        return None
    return retries


def _describe(
    method: str, url: str, backend: str, stream: bool, kind: str, attempt: int, **fields: Any
) -> CallEvent:
    return CallEvent(kind, method, url, backend, attempt, stream, **fields)


def _reply(raw: RawResponse, value: Any, elapsed: float, attempts: int) -> Reply:
    headers = response_headers(raw.headers)
    return Reply(value, raw.status, headers, request_id_of(headers), elapsed, attempts)


class Client:
    """Defaults for calls to one API.

    ::

        client = Client("https://api.openai.com/v1", {"Authorization": f"Bearer {key}"}, retries=2)
        reply = await client.post("/chat/completions", body)
        async for event in client.stream("/chat/completions", {**body, "stream": True}): ...

    :param base_url: prefixed to relative call URLs, keeping its path
        (``base_url`` ``.../v1`` + ``"/chat/completions"`` is
        ``.../v1/chat/completions``); a full URL in a call is used as it is.
    :param headers: sent with every call (a mapping or ``(name, value)``
        pairs); a call's header of the same name, in any case, replaces it.
    :param backend: the ``IHTTPBackend`` for ``post``/``get`` (name, class,
        instance or dotted path); None falls through to the environment,
        ``configure()``, then treq.
    :param stream_backend: the same for ``stream``.
    :param timeout: ``post``/``get``: seconds for the whole response;
        ``stream``: the longest gap between two events.
    :param connect_timeout: seconds for DNS, TCP connect and TLS handshake.
    :param pool_timeout: seconds to wait for a pool slot; None waits in FIFO
        order as long as it takes.  Over it: ``RequestTimeout("pool")``.
    :param retries: an int (retries with the default :class:`RetryPolicy`),
        a ``RetryPolicy``, or None for ``configure(retries=)``'s (no retries
        unless configured).
    :param proxy: a proxy URL (``http://[user:password@]host:port`` or
        ``https://...``) for every call, or None for direct connections;
        unset, ``configure(proxy=)`` and then the environment decide.
    :param trust_env: read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and
        ``NO_PROXY`` when no proxy is set in code; unset, ``configure()``'s
        (True unless configured).
    :param agent: send through this ``IAgent`` instead of the shared pool
        (it then decides the route: the proxy settings do not apply).
    :param reactor: the reactor (default: the global one, resolved per call).
    """

    __slots__ = (
        "_agent", "_backend", "_base_url", "_connect_timeout", "_headers", "_header_names", "_pool_timeout",
        "_proxy", "_reactor", "_retries", "_stream_backend", "_timeout", "_trust_env", "_given",
    )

    def __init__(
        self,
        base_url: str | None = None,
        headers: HeadersArg = (),
        *,
        backend: Any = None,
        stream_backend: Any = None,
        timeout: float = 180.0,
        connect_timeout: float = 30.0,
        pool_timeout: float | None = None,
        retries: int | RetryPolicy | None = None,
        proxy: str | None = UNSET,
        trust_env: bool = UNSET,
        agent: IAgent | None = None,
        reactor: Any = None,
    ) -> None:
        self._given: dict[str, Any] = dict(
            base_url=base_url, headers=headers, backend=backend, stream_backend=stream_backend, timeout=timeout,
            connect_timeout=connect_timeout, pool_timeout=pool_timeout, retries=retries, proxy=proxy,
            trust_env=trust_env, agent=agent, reactor=reactor,
        )
        self._base_url = check_base_url(base_url)
        self._headers = tuple(normalize_headers(headers))
        self._header_names = tuple(n.decode("latin-1").lower() for n, _ in self._headers)
        if backend is not None:
            resolve_http_backend(backend)  # fail now, naming the argument
        if stream_backend is not None:
            resolve_stream_backend(stream_backend)
        self._backend = backend
        self._stream_backend = stream_backend
        self._timeout = check_seconds("timeout", timeout)
        self._connect_timeout = check_seconds("connect_timeout", connect_timeout)
        self._pool_timeout = check_pool_timeout(pool_timeout)
        self._retries = RetryPolicy.coerce(retries)
        self._proxy: Proxy | None = (
            NO_PROXY_GIVEN if proxy is UNSET else None if proxy is None else Proxy.from_url(proxy, "Client(proxy=...)")
        )
        if trust_env is not UNSET and not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be True or False, not {type(trust_env).__name__}")
        self._trust_env = trust_env
        self._agent = check_agent(agent)
        self._reactor = reactor

    def with_options(self, **changes: Any) -> Client:
        """A new Client with ``changes`` applied (the same names as the
        constructor's); this one is unchanged."""
        unknown = sorted(set(changes) - set(self._given))
        if unknown:
            raise TypeError(f"with_options() got unknown option(s) {', '.join(unknown)}; accepted: {', '.join(self._given)}")
        return Client(**{**self._given, **changes})

    @property
    def base_url(self) -> str | None:
        return self._base_url

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    @property
    def pool_timeout(self) -> float | None:
        return self._pool_timeout

    @property
    def retries(self) -> RetryPolicy | None:
        return self._retries

    def __repr__(self) -> str:
        # Header names only: their values are where keys live.
        return (
            f"Client(base_url={self._base_url!r}, headers={list(self._header_names)!r}, backend={self._backend!r}, "
            f"stream_backend={self._stream_backend!r}, timeout={self._timeout:g}, "
            f"connect_timeout={self._connect_timeout:g}, pool_timeout={self._pool_timeout!r}, "
            f"retries={self._retries!r}, proxy={self._proxy!r})"
        )

    # -- calls ---------------------------------------------------------------------

    @overload
    def post(
        self, url: str, body: Any, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
        connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
        full_response: Literal[False] = ..., proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
    ) -> Deferred[Any]: ...

    @overload
    def post(
        self, url: str, body: Any, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
        connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
        full_response: Literal[True], proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
    ) -> Deferred[Reply]: ...

    def post(
        self,
        url: str,
        body: Any,
        headers: HeadersArg = (),
        *,
        backend: Any = UNSET,
        timeout: float = UNSET,
        connect_timeout: float = UNSET,
        pool_timeout: float | None = UNSET,
        retries: int | RetryPolicy | None = UNSET,
        full_response: bool = False,
        proxy: str | None = UNSET,
        agent: IAgent | None = UNSET,
        reactor: Any = UNSET,
    ) -> Deferred[Any]:
        """POST ``body`` as JSON; fire with the decoded JSON reply (or a
        :class:`Reply` with ``full_response=True``).

        Every keyword overrides the client's value for this call.  Fails
        with ``HTTPStatusError`` (or its per-status subclass), a
        ``TransportError`` or ``DecodeError``, after the retries the policy
        allows; the error's ``attempts`` says how many were made.
        Cancelling the Deferred aborts the call, during a backoff too.
        The Deferred can be awaited from Twisted coroutines and asyncio tasks.
        """
        return self._send(
            b"POST", url, body, headers, backend, timeout, connect_timeout, pool_timeout, retries, full_response,
            proxy, agent, reactor,
        )

    @overload
    def get(
        self, url: str, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
        connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
        full_response: Literal[False] = ..., proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
    ) -> Deferred[Any]: ...

    @overload
    def get(
        self, url: str, headers: HeadersArg = ..., *, backend: Any = ..., timeout: float = ...,
        connect_timeout: float = ..., pool_timeout: float | None = ..., retries: int | RetryPolicy | None = ...,
        full_response: Literal[True], proxy: str | None = ..., agent: IAgent | None = ..., reactor: Any = ...,
    ) -> Deferred[Reply]: ...

    def get(
        self,
        url: str,
        headers: HeadersArg = (),
        *,
        backend: Any = UNSET,
        timeout: float = UNSET,
        connect_timeout: float = UNSET,
        pool_timeout: float | None = UNSET,
        retries: int | RetryPolicy | None = UNSET,
        full_response: bool = False,
        proxy: str | None = UNSET,
        agent: IAgent | None = UNSET,
        reactor: Any = UNSET,
    ) -> Deferred[Any]:
        """GET ``url`` (``/v1/models``, a health check); fire with the decoded
        JSON reply.  The same options and errors as :meth:`post`."""
        return self._send(
            b"GET", url, None, headers, backend, timeout, connect_timeout, pool_timeout, retries, full_response,
            proxy, agent, reactor,
        )

    def stream(
        self,
        url: str,
        body: Any,
        headers: HeadersArg = (),
        *,
        stream_backend: Any = UNSET,
        timeout: float = UNSET,
        connect_timeout: float = UNSET,
        pool_timeout: float | None = UNSET,
        retries: int | RetryPolicy | None = UNSET,
        format: str | None = None,
        proxy: str | None = UNSET,
        agent: IAgent | None = UNSET,
        reactor: Any = UNSET,
    ) -> EventStream:
        """POST ``body`` and stream the reply's events; returns at once.

        Transport failures never raise here: they arrive as a ``StreamError``
        event.  A failure before the first data event is retried as the
        policy allows, invisibly to the reader; never after one.
        """
        request = self._route(prepare(
            join_url(self._base_url, url), body, headers, accept=b"text/event-stream", defaults=self._headers,
            pool_timeout=self._pool_timeout if pool_timeout is UNSET else check_pool_timeout(pool_timeout),
        ), proxy)
        fmt = check_format(format)
        impl = resolve_stream_backend(self._stream_backend if stream_backend is UNSET else stream_backend)
        timeout, connect_timeout, agent, policy = self._overrides(timeout, connect_timeout, agent, retries)
        reactor = self._reactor if reactor is UNSET else reactor
        observed = watched()
        if policy is None and not observed:
            plain: EventStream = impl.stream(
                request, timeout=timeout, connect_timeout=connect_timeout, format=fmt, agent=agent, reactor=reactor
            )
            return plain
        reactor = default_reactor(reactor)

        def attempt() -> StreamCore:
            handle: EventStream = impl.stream(
                request, timeout=timeout, connect_timeout=connect_timeout, format=fmt, agent=agent, reactor=reactor
            )
            # The outer handle owns the call now: this one, dropped, would
            # cancel the attempt.
            return handle._detach()  # type: ignore[return-value]

        describe = partial(_describe, "POST", request.display_url, backend_name(impl), True) if observed else None
        if describe is not None:
            emit(describe(START, 1))
        return EventStream(AttemptsCore(reactor, attempt, policy, describe), reactor)

    def _overrides(
        self, timeout: Any, connect_timeout: Any, agent: Any, retries: Any
    ) -> tuple[float, float, Any, RetryPolicy | None]:
        """A call's limits, agent and retry policy: its own values, checked,
        or the client's (already checked) where it gave none."""
        return (
            self._timeout if timeout is UNSET else check_seconds("timeout", timeout),
            self._connect_timeout if connect_timeout is UNSET else check_seconds("connect_timeout", connect_timeout),
            self._agent if agent is UNSET else check_agent(agent),
            _policy(self._retries if retries is UNSET else RetryPolicy.coerce(retries)),
        )

    def _route(self, request: HTTPRequest, proxy: Any) -> HTTPRequest:
        """``request`` with its proxy chosen: the call's, the client's,
        ``configure()``'s, then (with ``trust_env``) the environment's."""
        settings = _settings.current()
        trust_env = settings.trust_env if self._trust_env is UNSET else self._trust_env
        chosen = choose_proxy(
            request.url, NO_PROXY_GIVEN if proxy is UNSET else proxy, self._proxy, settings.proxy, trust_env
        )
        return with_proxy(request, chosen)

    def _send(
        self,
        method: bytes,
        url: str,
        body: Any,
        headers: HeadersArg,
        backend: Any,
        timeout: Any,
        connect_timeout: Any,
        pool_timeout: Any,
        retries: Any,
        full_response: bool,
        proxy: Any,
        agent: Any,
        reactor: Any,
    ) -> Deferred[Any]:
        request = self._route(prepare(
            join_url(self._base_url, url), body, headers, method=method, defaults=self._headers,
            accept=b"application/json" if method == b"GET" else None,
            pool_timeout=self._pool_timeout if pool_timeout is UNSET else check_pool_timeout(pool_timeout),
        ), proxy)
        impl = resolve_http_backend(self._backend if backend is UNSET else backend)
        timeout, connect_timeout, agent, policy = self._overrides(timeout, connect_timeout, agent, retries)
        reactor = default_reactor(self._reactor if reactor is UNSET else reactor)
        if policy is None and not watched():
            d: Deferred[Any] = impl.post(
                request, timeout=timeout, connect_timeout=connect_timeout, agent=agent, reactor=reactor
            )
            if full_response:
                d.addCallback(_fast_reply, request, reactor, reactor.seconds())
            else:
                d.addCallback(to_value, request.display_url, request.secrets)
            return awaitable(d)
        call = _PostCall(impl, request, timeout, connect_timeout, agent, reactor, policy, full_response)
        return call.start()


def _fast_reply(raw: RawResponse, request: HTTPRequest, reactor: Any, started: float) -> Reply:
    value = to_value(raw, request.display_url, request.secrets)
    return _reply(raw, value, reactor.seconds() - started, 1)


class _PostCall:
    """One ``post``/``get`` call across its attempts.

    ``_current`` is the attempt in flight, ``_timer`` the backoff before the
    next; at most one of them is set.  Cancelling :attr:`result` cancels
    whichever it is, so a cancel during a backoff ends the call at once.
    """

    __slots__ = (
        "_agent", "_attempt", "_connect_timeout", "_current", "_describe", "_full", "_impl", "_policy", "_reactor",
        "_request", "_started", "_timeout", "_timer", "result",
    )

    def __init__(
        self,
        impl: Any,
        request: HTTPRequest,
        timeout: float,
        connect_timeout: float,
        agent: Any,
        reactor: Any,
        policy: RetryPolicy | None,
        full_response: bool,
    ) -> None:
        self._impl = impl
        self._request = request
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._agent = agent
        self._reactor = reactor
        self._policy = policy
        self._full = full_response
        self._attempt = 0
        self._current: Deferred[Any] | None = None
        self._timer: Any = None
        self._started = reactor.seconds()
        self._describe = (
            partial(_describe, request.method.decode("ascii"), request.display_url, backend_name(impl), False)
            if watched()
            else None
        )
        self.result: Deferred[Any] = AwaitableDeferred(self._cancel)

    def start(self) -> Deferred[Any]:
        self._emit(START)
        self._send()
        return self.result

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._describe is not None:
            emit(
                self._describe(kind, max(self._attempt, 1), elapsed=self._reactor.seconds() - self._started, **fields)
            )

    def _send(self) -> None:
        self._timer = None
        self._attempt += 1
        d: Deferred[Any] = self._impl.post(
            self._request, timeout=self._timeout, connect_timeout=self._connect_timeout, agent=self._agent,
            reactor=self._reactor,
        )
        self._current = d
        d.addCallbacks(self._received, self._failed)

    def _received(self, raw: RawResponse) -> None:
        self._current = None
        if self.result.called:
            return
        request = self._request
        try:
            value = to_value(raw, request.display_url, request.secrets)
        except NousHTTPError:
            failure = Failure()
            self._report(raw, None)
            self._failed(failure)
            return
        self._report(raw, usage_of(value))
        if self._full:
            self.result.callback(_reply(raw, value, self._reactor.seconds() - self._started, self._attempt))
        else:
            self.result.callback(value)

    def _report(self, raw: RawResponse, usage: dict[str, int] | None) -> None:
        if self._describe is not None:
            headers = response_headers(raw.headers)
            self._emit(RESPONSE, status=raw.status, headers=headers, request_id=request_id_of(headers), usage=usage)

    def _failed(self, failure: Failure) -> None:
        self._current = None
        if self.result.called:
            return  # cancelled: the result has failed already
        error = failure.value
        assert error is not None
        self._emit(FAILURE, error_type=type(error).__name__, phase=failure_phase(error))
        policy = self._policy
        retry = (
            policy.next_retry(self._attempt - 1, error)
            if policy is not None and isinstance(error, NousHTTPError)
            else None
        )
        if retry is None:
            gave_up(error, self._attempt)
            self.result.errback(failure)
            return
        assert policy is not None
        log.info(
            "retrying {method} {url} in {delay:.2f} s (attempt {next} of {most}): {reason}",
            method=self._request.method.decode("ascii"), url=self._request.display_url, delay=retry.delay,
            next=self._attempt + 1, most=policy.max_retries + 1, reason=retry.reason,
        )
        self._emit(RETRY, reason=retry.reason, delay=retry.delay, error_type=type(error).__name__)
        self._timer = self._reactor.callLater(retry.delay, self._send)

    def _cancel(self, result: Deferred[Any]) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()
            # Deferred.cancel fails the result with CancelledError now.
            return
        current = self._current
        if current is not None:
            current.cancel()


__all__ = ["UNSET", "Client"]


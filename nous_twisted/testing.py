"""An embedded fake LLM server, for the demo, the docs and your own tests.

:class:`FakeLLMServer` is a real Twisted web server on loopback.  It speaks the
OpenAI chat-completions API (``POST /v1/chat/completions``, with
``"stream": false`` or ``true``), answers with a deterministic reply of
``reply_tokens`` tokens, ``token_delay`` seconds apart, and can be told to
fail in the ways real providers and networks do: see :class:`Fault`.

It counts connections (``connections_made``, ``open_connections``,
``max_open_connections``) so tests can check pooling and limits on the real
socket.

    async with FakeLLMServer() as server:
        reply = await post(server.url + "/v1/chat/completions", {...})
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET, Request

from .pool import default_reactor

_WORDS = ["Hello", "from", "the", "fake", "LLM", "server", ".", "Twisted", "reactors", "stream", "tokens", "one", "at", "a", "time", ",", "and", "this", "reply", "is", "deterministic", "so", "that", "tests", "can", "check", "every", "byte", "."]


_CLOSED = Failure(ConnectionDone())


def reply_tokens(n: int) -> list[str]:
    """The deterministic reply of ``n`` tokens the server sends."""
    words = itertools.islice(itertools.cycle(_WORDS), n)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass
class Fault:
    """A failure to inject into the next matching requests.

    :ivar status: answer with this status and ``error_body`` (JSON) instead.
    :ivar error_body: the JSON error body for ``status``; an OpenAI-style
        body is made when None.
    :ivar headers: extra response headers (``Retry-After``, ``Location``, ...).
    :ivar retry_after: shorthand for a ``Retry-After`` header, in seconds.
    :ivar stall_before_headers: accept the request and never answer.
    :ivar stall_after_bytes: send the headers and this many body bytes, then
        go silent (the connection stays open).
    :ivar drop_after_bytes: send the headers and this many body bytes, then
        drop the connection (the chunked body is never terminated).
    :ivar times: how many requests it applies to (None: all of them).
    :ivar raw_body: for 2xx answers, send these bytes as the body instead.
    """

    status: int | None = None
    error_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    stall_before_headers: bool = False
    stall_after_bytes: int | None = None
    drop_after_bytes: int | None = None
    times: int | None = 1
    raw_body: bytes | None = None


class _CountingProtocol(ProtocolWrapper):
    factory: _CountingFactory

    def connectionMade(self) -> None:
        self.factory.server._connection_opened()
        super().connectionMade()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = _CLOSED) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.factory.server._connection_closed()


class _CountingFactory(WrappingFactory):
    protocol = _CountingProtocol

    def __init__(self, wrapped: server.Site, fake: FakeLLMServer) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.server = fake


@dataclass
class RecordedRequest:
    """A request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class _Reply:
    """A response written over time: token pacing, stalls and drops."""

    def __init__(self, fake: FakeLLMServer, request: Request, fault: Fault | None) -> None:
        self.fake = fake
        self.request = request
        self.fault = fault
        self.sent = 0
        self.call: IDelayedCall | None = None
        self.finished = False
        request.notifyFinish().addBoth(self._gone)
        fake._replies.add(self)

    def _gone(self, _: Any) -> None:
        self.finished = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.fake._replies.discard(self)

    def write(self, data: bytes) -> bool:
        """Write respecting the fault's byte limits; False once the reply must stop."""
        if self.finished:
            return False
        f = self.fault
        limit = None
        if f is not None:
            limit = f.drop_after_bytes if f.drop_after_bytes is not None else f.stall_after_bytes
        if limit is not None and self.sent + len(data) >= limit:
            cut = max(0, limit - self.sent)
            if cut:
                self.request.write(data[:cut])
            self.sent = limit
            assert f is not None
            if f.drop_after_bytes is not None:
                # Flush what was written, then close: the body is never terminated.
                self.request.transport.loseConnection()  # type: ignore[union-attr]
            # stall: simply never write again
            self.finished = True
            return False
        self.request.write(data)
        self.sent += len(data)
        return True

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.request.finish()

    def paced(self, pieces: Iterator[bytes], delay: float, then: Callable[[], None] | None = None) -> None:
        """Write ``pieces`` ``delay`` seconds apart, then finish."""

        def step() -> None:
            self.call = None
            if self.finished:
                return
            piece = next(pieces, None)
            if piece is None:
                if then is not None:
                    then()
                self.finish()
                return
            if not self.write(piece):
                return
            if delay > 0:
                self.call = self.fake.reactor.callLater(delay, step)
            else:
                step_soon()

        def step_soon() -> None:
            # Yield to the reactor between pieces so each goes out as its own
            # HTTP chunk, as a real server's tokens would.
            self.call = self.fake.reactor.callLater(0, step)

        step()


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeLLMServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.fake = fake

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({"error": {"message": "use POST", "type": "invalid_request_error"}})

    def render_POST(self, request: Request) -> Any:
        return self.fake._handle(request)


class FakeLLMServer:
    """A real HTTP server on loopback that answers like an LLM provider.

    :param reply_tokens: tokens in each reply.
    :param token_delay: seconds between tokens (a non-streaming reply waits
        for all of them before it is sent).
    :param port: 0 (default) picks a free port.
    :param api_key: when set, requests must carry ``Authorization: Bearer
        <api_key>`` (or ``x-api-key``) or get a 401.
    :param tls: an OpenSSL server context factory (``CertificateOptions``):
        serve HTTPS instead of HTTP.
    :param host: the host name used in :attr:`url` (``"localhost"`` suits TLS
        certificates issued for it).
    """

    def __init__(
        self,
        reply_tokens: int = 12,
        token_delay: float = 0.0,
        *,
        port: int = 0,
        api_key: str | None = None,
        tls: Any = None,
        host: str = "127.0.0.1",
        reactor: Any = None,
    ) -> None:
        self.reply_tokens = reply_tokens
        self.token_delay = token_delay
        self.api_key = api_key
        self.tls = tls
        self.host = host
        self.reactor = default_reactor(reactor)
        self._want_port = port
        self._port: IListeningPort | None = None
        self._faults: deque[Fault] = deque()
        self._replies: set[_Reply] = set()
        self._ids = itertools.count(1)
        self.requests: deque[RecordedRequest] = deque(maxlen=1000)
        self.connections_made = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self._close_waiters: list[Deferred[None]] = []

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Deferred[FakeLLMServer]:
        root = _Endpoint(self)
        site = server.Site(root)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        factory = _CountingFactory(site, self)
        factory.noisy = False
        if self.tls is not None:
            self._port = self.reactor.listenSSL(self._want_port, factory, self.tls, interface="127.0.0.1")
        else:
            self._port = self.reactor.listenTCP(self._want_port, factory, interface="127.0.0.1")
        self._factory = factory
        return succeed(self)

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every open connection."""
        for reply in list(self._replies):
            reply._gone(None)
        stopped = self._port.stopListening() if self._port is not None else None
        self._port = None
        closing: list[Deferred[None]] = [stopped if stopped is not None else succeed(None)]
        if self.open_connections:
            w: Deferred[None] = Deferred()
            self._close_waiters.append(w)
            closing.append(w)
            for proto in list(self._factory.protocols):
                if proto.transport is not None:
                    proto.transport.abortConnection()
        return DeferredList(closing).addCallback(lambda _: None)

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._port is not None, "start() the server first"
        return int(self._port.getHost().port)  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT``."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def chat_url(self) -> str:
        return self.url + "/v1/chat/completions"

    # -- faults -----------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Apply ``fault`` to the next ``fault.times`` requests (queued after earlier ones)."""
        self._faults.append(fault)

    def _next_fault(self) -> Fault | None:
        if not self._faults:
            return None
        f = self._faults[0]
        if f.times is not None:
            f.times -= 1
            if f.times <= 0:
                self._faults.popleft()
        return f

    # -- connection counting ----------------------------------------------

    def _connection_opened(self) -> None:
        self.connections_made += 1
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)

    def _connection_closed(self) -> None:
        self.open_connections -= 1
        if self.open_connections == 0:
            waiters, self._close_waiters = self._close_waiters, []
            for w in waiters:
                w.callback(None)

    # -- handling ---------------------------------------------------------

    def _handle(self, request: Request) -> Any:
        raw = request.content.read() if request.content is not None else b""
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        headers = {k.decode("latin-1").lower(): b", ".join(v).decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        path = request.path.decode("latin-1")
        self.requests.append(RecordedRequest("POST", path, headers, body))
        fault = self._next_fault()
        if fault is not None and fault.stall_before_headers:
            _Reply(self, request, fault)
            return NOT_DONE_YET
        if self.api_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}" and headers.get("x-api-key") != self.api_key:
                return self._error(request, 401, {"error": {"message": "invalid api key", "type": "authentication_error"}})
        if fault is not None and fault.status is not None:
            err = fault.error_body
            if err is None:
                err = {"error": {"message": f"injected HTTP {fault.status}", "type": "fake_error", "code": fault.status}}
            for k, v in fault.headers.items():
                request.setHeader(k.encode("latin-1"), v.encode("latin-1"))
            if fault.retry_after is not None:
                request.setHeader(b"retry-after", f"{fault.retry_after:g}".encode())
            return self._error(request, fault.status, err)
        if body is None or not isinstance(body, dict):
            return self._error(request, 400, {"error": {"message": "the body is not a JSON object", "type": "invalid_request_error"}})
        if fault is not None:
            for k, v in fault.headers.items():
                request.setHeader(k.encode("latin-1"), v.encode("latin-1"))
        route = self._route(path)
        if route is None:
            return self._error(request, 404, {"error": {"message": f"no route {path}", "type": "not_found"}})
        route(request, body, _Reply(self, request, fault))
        return NOT_DONE_YET

    def _route(self, path: str) -> Callable[[Request, dict[str, Any], _Reply], None] | None:
        if path == "/v1/chat/completions":
            return self._chat_completions
        return None

    def _error(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-request-id", f"req_fake_{next(self._ids)}".encode())
        return body if isinstance(body, bytes) else orjson.dumps(body)

    def _tokens(self, body: dict[str, Any]) -> list[str]:
        n = body.get("max_tokens")
        return reply_tokens(n if isinstance(n, int) and 0 < n < self.reply_tokens else self.reply_tokens)

    # -- OpenAI chat completions --------------------------------------------

    def _chat_completions(self, request: Request, body: dict[str, Any], reply: _Reply) -> None:
        model = str(body.get("model", "fake-model"))
        tokens = self._tokens(body)
        cid = f"chatcmpl-fake-{next(self._ids)}"
        created = int(time.time())
        request.setHeader(b"x-request-id", f"req_{cid}".encode())
        if body.get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")

            def events() -> Iterator[bytes]:
                for i, tok in enumerate(tokens):
                    delta: dict[str, Any] = {"content": tok}
                    if i == 0:
                        delta["role"] = "assistant"
                    yield b"data: " + orjson.dumps({
                        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                    }) + b"\n\n"
                yield b"data: " + orjson.dumps({
                    "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }) + b"\n\n"
                yield b"data: [DONE]\n\n"

            self._send_stream(request, reply, events())
        else:
            request.setHeader(b"content-type", b"application/json")
            payload = orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": len(tokens), "total_tokens": 8 + len(tokens)},
            })
            self._send_whole(request, reply, payload, self.token_delay * len(tokens))

    # -- sending --------------------------------------------------------------

    def _send_whole(self, request: Request, reply: _Reply, payload: bytes, delay: float) -> None:
        f = reply.fault
        if f is not None and f.raw_body is not None:
            payload = f.raw_body
        sliced = f is not None and (f.stall_after_bytes is not None or f.drop_after_bytes is not None)
        if not sliced:
            # A whole body: send a Content-Length, as most APIs do for JSON.
            request.setHeader(b"content-length", str(len(payload)).encode())

        def go() -> None:
            reply.call = None
            if reply.finished:
                return
            if sliced:
                request.write(b"")  # commit the headers (chunked) before slicing
            if reply.write(payload):
                reply.finish()

        if delay > 0:
            if sliced:
                request.write(b"")
            reply.call = self.reactor.callLater(delay, go)
        else:
            go()

    def _send_stream(self, request: Request, reply: _Reply, events: Iterator[bytes]) -> None:
        f = reply.fault
        if f is not None and f.raw_body is not None:
            events = iter([f.raw_body])
        request.write(b"")  # send the headers now, as streaming APIs do
        reply.paced(events, self.token_delay)

"""An embedded fake LLM server, for the demo, the docs and your own tests.

:class:`FakeLLMServer` is a real Twisted web server on loopback.  It speaks the
OpenAI chat-completions API (``POST /v1/chat/completions``, with
``"stream": false`` or ``true``), answers with a deterministic reply of
``reply_tokens`` tokens, ``token_delay`` seconds apart, and can be told to
fail in the ways real providers and networks do: see :class:`Fault`.

It also serves Anthropic-style (``POST /v1/messages``), Ollama-style
(``POST /api/chat``, NDJSON) and Gemini-style (``:streamGenerateContent``, a
JSON array, or SSE with ``?alt=sse``) replies, and ``GET /v1/models``.

It counts connections (``connections_made``, ``open_connections``,
``max_open_connections``) so tests can check pooling and limits on the real
socket.

    async with FakeLLMServer() as server:
        reply = await post(server.url + "/v1/chat/completions", {...})
"""

from __future__ import annotations

import itertools
import socket
import struct
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

from .reactors import AwaitableDeferred, awaitable, default_reactor

_WORDS = ["Hello", "from", "the", "fake", "LLM", "server", ".", "Twisted", "reactors", "stream", "tokens", "one", "at", "a", "time", ",", "and", "this", "reply", "is", "deterministic", "so", "that", "tests", "can", "check", "every", "byte", "."]


_CLOSED = Failure(ConnectionDone())


def reply_tokens(n: int) -> list[str]:
    """The deterministic reply of ``n`` tokens the server sends."""
    words = itertools.islice(itertools.cycle(_WORDS), n)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass
class Fault:
    """A failure to inject into the next matching requests.

    Faults queue up: ``inject(Fault(status=429, retry_after=1, times=1))``
    fails the next request only, and the one after it succeeds, which is
    what retry tests need.

    :ivar status: answer with this status and ``error_body`` (JSON) instead.
    :ivar error_body: the JSON error body for ``status``; an OpenAI-style
        body is made when None.
    :ivar headers: extra response headers, sent with ``status`` and with a
        normal reply alike: ``Retry-After`` (seconds, or an HTTP date such as
        ``email.utils.formatdate(time.time() + 2, usegmt=True)``),
        ``retry-after-ms``, ``x-should-retry: false``, ``Location``...
    :ivar retry_after: shorthand for a ``Retry-After`` header, in seconds.
    :ivar stall_before_headers: accept the request and never answer.
    :ivar reset_before_headers: accept the request, then reset the
        connection (TCP RST) before any response byte: "connection lost
        before any byte of the response", which a client may retry.
    :ivar stall_after_bytes: send the headers and this many body bytes, then
        go silent (the connection stays open).
    :ivar drop_after_bytes: send the headers and this many body bytes, then
        drop the connection (the chunked body is never terminated).  0: a
        stream fails before its first event; the size of the first event or
        more: after it.
    :ivar times: how many requests it applies to (None: all of them).
    :ivar raw_body: for 2xx answers, send these bytes as the body instead.
    :ivar error_after_events: streams: after this many events, send the
        provider's in-stream error (Anthropic ``event: error`` overloaded,
        an OpenAI/Ollama/Gemini ``{"error": ...}`` object) and end the body.
        0: the error comes before the first event.
    :ivar stall_after_events: streams: after this many events, go silent
        (the connection stays open).
    :ivar keepalive: with ``stall_after_events``: send a keep-alive (an SSE
        comment ``: ping``, a blank NDJSON line) every this many seconds.
    :ivar invalid_json_at: streams: insert one event whose data is not JSON
        at this index.
    """

    status: int | None = None
    error_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    stall_before_headers: bool = False
    reset_before_headers: bool = False
    stall_after_bytes: int | None = None
    drop_after_bytes: int | None = None
    times: int | None = 1
    raw_body: bytes | None = None
    error_after_events: int | None = None
    stall_after_events: int | None = None
    keepalive: float | None = None
    invalid_json_at: int | None = None


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
    """A request the server received.

    :ivar request_id: the ``x-request-id`` its reply carried (unique per
        request; empty when the connection was reset before any reply).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    request_id: str = ""


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
        """Write ``pieces`` ``delay`` seconds apart, then finish (or call ``then`` instead)."""

        def step() -> None:
            self.call = None
            if self.finished:
                return
            piece = next(pieces, None)
            if piece is None:
                if then is not None:
                    then()
                else:
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

    def stall(self, keepalive: bytes, interval: float | None) -> None:
        """Go silent, but for a keep-alive every ``interval`` seconds."""
        if interval is None:
            return

        def ping() -> None:
            self.call = None
            if self.write(keepalive):
                self.call = self.fake.reactor.callLater(interval, ping)

        self.call = self.fake.reactor.callLater(interval, ping)

    def finish_with_error(self, body: bytes) -> None:
        self.write(body)
        self.finish()


class _Endpoint(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeLLMServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.fake = fake

    def render_GET(self, request: Request) -> bytes:
        self.fake._request_id(request)
        if request.path == b"/v1/models":
            # What a health check or a model picker polls (OpenAI's list).
            request.setHeader(b"content-type", b"application/json")
            return orjson.dumps({"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 0, "owned_by": "nous-twisted"},
            ]})
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

    def start(self) -> AwaitableDeferred[FakeLLMServer]:
        """Listen; fires with the server (at once: binding is synchronous)."""
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
        return awaitable(succeed(self))

    def stop(self) -> AwaitableDeferred[None]:
        """Stop listening and drop every open connection; fires once all are closed."""
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
        return awaitable(DeferredList(closing).addCallback(lambda _: None))

    # Not coroutines: what these return is awaited by ``async with``, and an
    # AwaitableDeferred works in a Twisted-driven coroutine and in an asyncio
    # Task alike, where a coroutine awaiting a plain Deferred would not.
    def __aenter__(self) -> AwaitableDeferred[FakeLLMServer]:
        return self.start()

    def __aexit__(self, *exc: object) -> AwaitableDeferred[None]:
        return self.stop()

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
        """OpenAI chat completions."""
        return self.url + "/v1/chat/completions"

    @property
    def anthropic_url(self) -> str:
        """Anthropic messages (``"stream": true`` for SSE)."""
        return self.url + "/v1/messages"

    @property
    def ollama_url(self) -> str:
        """Ollama chat (NDJSON unless ``"stream": false``)."""
        return self.url + "/api/chat"

    def gemini_url(self, model: str = "gemini-fake", *, stream: bool = True, sse: bool = False) -> str:
        """Gemini ``streamGenerateContent`` (a JSON array, or SSE with ``sse=True``)
        or, with ``stream=False``, ``generateContent``."""
        method = "streamGenerateContent" if stream else "generateContent"
        return f"{self.url}/v1beta/models/{model}:{method}" + ("?alt=sse" if sse and stream else "")

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
        recorded = RecordedRequest("POST", path, headers, body)
        self.requests.append(recorded)
        fault = self._next_fault()
        if fault is not None and fault.reset_before_headers:
            self._reset(request)
            return NOT_DONE_YET
        recorded.request_id = self._request_id(request)
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
        if path == "/v1/messages":
            return self._anthropic_messages
        if path == "/api/chat":
            return self._ollama_chat
        if path.startswith("/v1beta/models/") and ":" in path:
            return self._gemini
        return None

    def _error(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body if isinstance(body, bytes) else orjson.dumps(body)

    def _request_id(self, request: Request) -> str:
        """Give the reply its ``x-request-id``, unique per request, as
        providers do (OpenAI ``req_...``)."""
        rid = f"req_fake_{next(self._ids)}"
        request.setHeader(b"x-request-id", rid.encode())
        return rid

    @staticmethod
    def _reset(request: Request) -> None:
        """Close the connection with a TCP RST before any response byte."""
        transport: Any = request.channel.transport if request.channel is not None else None
        if transport is None:
            return
        sock = getattr(transport, "socket", None)
        if sock is not None:
            # SO_LINGER on, 0 s: close() sends RST rather than FIN.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # pragma: no cover - a plain close still loses the connection
                pass
        transport.abortConnection()

    def _tokens(self, body: dict[str, Any]) -> list[str]:
        n = body.get("max_tokens")
        return reply_tokens(n if isinstance(n, int) and 0 < n < self.reply_tokens else self.reply_tokens)

    # -- OpenAI chat completions --------------------------------------------

    def _chat_completions(self, request: Request, body: dict[str, Any], reply: _Reply) -> None:
        model = str(body.get("model", "fake-model"))
        tokens = self._tokens(body)
        cid = f"chatcmpl-fake-{next(self._ids)}"
        created = int(time.time())
        usage = {"prompt_tokens": 8, "completion_tokens": len(tokens), "total_tokens": 8 + len(tokens)}
        if not body.get("stream"):
            self._send_whole(request, reply, orjson.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                             "finish_reason": "stop"}],
                "usage": usage,
            }), self.token_delay * len(tokens))
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            data: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None  # as OpenAI sends it on every chunk but the last
            return b"data: " + orjson.dumps(data) + b"\n\n"

        events = [chunk({"role": "assistant", "content": t} if i == 0 else {"content": t}, None)
                  for i, t in enumerate(tokens)]
        events.append(chunk({}, "stop"))
        if include_usage:
            # stream_options.include_usage: one more chunk, with no choices
            # and the usage of the whole request, before [DONE].
            events.append(b"data: " + orjson.dumps({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage,
            }) + b"\n\n")
        self._send_stream(request, reply, "sse", events, [b"data: [DONE]\n\n"],
                          b'data: {"error": {"message": "The server had an error while processing your request.", '
                          b'"type": "server_error", "code": null}}\n\n')

    # -- Anthropic messages -------------------------------------------------

    def _anthropic_messages(self, request: Request, body: dict[str, Any], reply: _Reply) -> None:
        model = str(body.get("model", "claude-fake"))
        tokens = self._tokens(body)
        mid = f"msg_fake_{next(self._ids)}"
        # Anthropic's name for it; the same id as x-request-id, so both agree.
        rid = request.responseHeaders.getRawHeaders(b"x-request-id") or [f"req_{mid}".encode()]
        request.setHeader(b"request-id", rid[0])
        if not body.get("stream"):
            self._send_whole(request, reply, orjson.dumps({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(tokens)}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 8, "output_tokens": len(tokens)},
            }), self.token_delay * len(tokens))
            return

        def ev(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        events = [
            ev("message_start", {"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 8, "output_tokens": 1}}}),
            ev("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
            ev("ping", {"type": "ping"}),
        ]
        events += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": t}}) for t in tokens]
        events += [
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                 "usage": {"output_tokens": len(tokens)}}),
        ]
        self._send_stream(request, reply, "sse", events, [ev("message_stop", {"type": "message_stop"})],
                          ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))

    # -- Ollama chat ----------------------------------------------------------

    def _ollama_chat(self, request: Request, body: dict[str, Any], reply: _Reply) -> None:
        model = str(body.get("model", "llama-fake"))
        tokens = self._tokens(body)
        stamp = "2026-01-01T00:00:00.000000Z"
        final = {"model": model, "created_at": stamp, "message": {"role": "assistant", "content": ""},
                 "done": True, "done_reason": "stop", "total_duration": 1000, "eval_count": len(tokens)}
        if body.get("stream") is False:  # Ollama streams unless told not to
            whole = dict(final, message={"role": "assistant", "content": "".join(tokens)})
            self._send_whole(request, reply, orjson.dumps(whole), self.token_delay * len(tokens))
            return
        events = [orjson.dumps({"model": model, "created_at": stamp,
                                "message": {"role": "assistant", "content": t}, "done": False}) + b"\n"
                  for t in tokens]
        self._send_stream(request, reply, "ndjson", events, [orjson.dumps(final) + b"\n"],
                          b'{"error": "model is overloaded, please try again"}\n')

    # -- Gemini -------------------------------------------------------------------

    def _gemini(self, request: Request, body: dict[str, Any], reply: _Reply) -> None:
        path = request.path.decode("latin-1")
        model, _, method = path[len("/v1beta/models/"):].partition(":")
        config = body.get("generationConfig")
        tokens = self._tokens({"max_tokens": config.get("maxOutputTokens")} if isinstance(config, dict) else {})

        def element(text: str, finish: bool) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finish:
                cand["finishReason"] = "STOP"
            return {"candidates": [cand], "modelVersion": model,
                    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": len(tokens)}}

        error = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                           "status": "UNAVAILABLE"}}
        if method == "generateContent":
            self._send_whole(request, reply, orjson.dumps(element("".join(tokens), True)),
                             self.token_delay * len(tokens))
            return
        if method != "streamGenerateContent":
            reply.finish_with_error(self._error(request, 404, {"error": {"code": 404, "message": f"no method {method}"}}))
            return
        elements = [element(t, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        if request.args.get(b"alt") == [b"sse"]:
            events = [b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in elements]
            self._send_stream(request, reply, "sse", events, [], b"data: " + orjson.dumps(error) + b"\r\n\r\n")
        else:
            events = [(b"[" if i == 0 else b",\r\n") + orjson.dumps(e) for i, e in enumerate(elements)]
            self._send_stream(request, reply, "json-array", events, [b"]"], b",\r\n" + orjson.dumps(error) + b"]")

    # -- sending --------------------------------------------------------------

    def _send_whole(self, request: Request, reply: _Reply, payload: bytes, delay: float) -> None:
        f = reply.fault
        if f is not None and f.raw_body is not None:
            payload = f.raw_body
        sliced = f is not None and (f.stall_after_bytes is not None or f.drop_after_bytes is not None)
        if not request.responseHeaders.hasHeader(b"content-type"):
            request.setHeader(b"content-type", b"application/json")
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

    _CONTENT_TYPES = {"sse": b"text/event-stream", "ndjson": b"application/x-ndjson",
                      "json-array": b"application/json"}
    _KEEPALIVE = {"sse": b": ping\n\n", "ndjson": b"\n", "json-array": b"\n"}
    _INVALID = {"sse": b"data: {this is not json\n\n", "ndjson": b"{this is not json\n",
                "json-array": b",\r\n{this is not json}"}

    def _send_stream(
        self, request: Request, reply: _Reply, fmt: str, events: list[bytes], end: list[bytes], error: bytes
    ) -> None:
        """Send ``events`` then ``end``, applying the stream-level faults."""
        request.setHeader(b"content-type", self._CONTENT_TYPES[fmt])
        request.setHeader(b"cache-control", b"no-cache")
        f = reply.fault
        pieces: list[bytes] = events + end
        then: Callable[[], None] | None = None
        if f is not None:
            if f.raw_body is not None:
                pieces = [f.raw_body]
            if f.invalid_json_at is not None:
                invalid = self._INVALID[fmt]
                if fmt == "json-array" and f.invalid_json_at == 0:
                    invalid = b"[{this is not json}"
                    pieces[0] = b",\r\n" + pieces[0][1:]
                pieces.insert(f.invalid_json_at, invalid)
            if f.error_after_events is not None:
                pieces = pieces[: f.error_after_events] + [error]
                if fmt == "json-array" and f.error_after_events == 0:
                    pieces = [b"[" + error[3:]]
            if f.stall_after_events is not None:
                pieces = pieces[: f.stall_after_events]
                then = lambda: reply.stall(self._KEEPALIVE[fmt], f.keepalive)  # noqa: E731
        request.write(b"")  # send the headers now, as streaming APIs do
        reply.paced(iter(pieces), self.token_delay, then)

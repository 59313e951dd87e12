"""A scripted HTTP/2 server on loopback TLS, for the h2 backend's tests.

Built on ``h2`` directly so that a test can make it misbehave the way real
servers do: a GOAWAY mid-stream (graceful, serving the streams at or below
its last stream id, or not), RST_STREAM, REFUSED_STREAM, a small
SETTINGS_MAX_CONCURRENT_STREAMS.  It honours flow control, so a client that
stops crediting a stream stops it (and the bytes it sent are counted).

Paths: ``/sse?n=N&delay=D&size=S`` streams N SSE events of about S bytes, D
seconds apart, then ``data: [DONE]``; ``reset_at=K`` resets the stream
(INTERNAL_ERROR) after K events; ``/json`` answers one JSON object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, PrivateCertificate


class _SendGoawayKeepsOpen(H2ConnectionStateMachine):
    def process_input(self, input_: ConnectionInputs) -> list[Any]:
        if input_ is ConnectionInputs.SEND_GOAWAY and self.state is ConnectionState.SERVER_OPEN:
            return []
        return super().process_input(input_)


def receive(proto: Any, data: bytes) -> list[Any] | None:
    """The ``h2`` events of ``data`` for a test server's protocol (its
    ``conn``, ``server.errors``, ``flush()``), or None after a protocol
    error, recorded, the GOAWAY sent and the connection aborted."""
    try:
        events: list[Any] = proto.conn.receive_data(data)
    except H2Error as e:
        proto.server.errors.append(e)
        proto.flush()
        proto.transport.abortConnection()
        return None
    return events


def serve(proto: Any, data: bytes) -> None:
    """A test server protocol's ``dataReceived``: the events of ``data`` (see
    :func:`receive`) to its hooks - ``on_request(sid, headers)``,
    ``on_end(sid)``, ``on_reset(sid, error_code)``, ``on_window()`` - with
    received DATA acknowledged here, then what the hooks queued sent."""
    events = receive(proto, data)
    if events is None:
        return
    for ev in events:
        if isinstance(ev, RequestReceived):
            proto.on_request(ev.stream_id, dict(ev.headers))
        elif isinstance(ev, DataReceived):
            if ev.flow_controlled_length:
                proto.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, StreamEnded):
            proto.on_end(ev.stream_id)
        elif isinstance(ev, StreamReset):
            proto.on_reset(ev.stream_id, ev.error_code)
        elif isinstance(ev, WindowUpdated):
            proto.on_window()
    proto.flush()


def tls_options(ca: Any, alpn: list[bytes] | None, name: str = "localhost") -> CertificateOptions:
    cert = ca.issue_cert(name)
    pc = PrivateCertificate.loadPEM(cert.private_key_and_cert_chain_pem.bytes())
    kw: dict[str, Any] = {}
    if alpn is not None:
        kw["acceptableProtocols"] = alpn
    return CertificateOptions(privateKey=pc.privateKey.original, certificate=pc.original, **kw)


async def tls_fake(ca: Any, ca_file: str, alpn: list[bytes], reply_tokens: int) -> Any:
    """A started FakeLLMServer on TLS offering ``alpn``, its CA trusted by the library."""
    import nous_twisted
    from nous_twisted.testing import FakeLLMServer

    nous_twisted.configure(ca_bundle=ca_file)
    return await FakeLLMServer(reply_tokens=reply_tokens, tls=tls_options(ca, alpn), host="localhost").start()


class _Stream:
    def __init__(self, sid: int, path: str) -> None:
        self.sid = sid
        self.path = path
        self.pending = b""
        self.sent = 0
        self.events = 0
        self.done = False
        self.reset = False
        self.call: Any = None


class H2ServerProtocol(Protocol):
    def __init__(self, server: ScriptedH2Server) -> None:
        self.server = server
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.state_machine = _SendGoawayKeepsOpen()
        self.streams: dict[int, _Stream] = {}
        self.requests = 0
        self.goaway_sent = False
        self.closed = False
        self.max_open = 0  # the most streams open at once on this connection

    def connectionMade(self) -> None:
        self.server.connections += 1
        self.server.protocols.append(self)
        # initial_values: update() would queue them until acknowledged, and
        # initiate_connection() sends the values in force.
        self.conn.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams}
        )
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.closed:
            self.transport.write(out)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        serve(self, data)

    def on_request(self, sid: int, headers: dict[bytes, bytes]) -> None:
        self._request(sid, headers)

    def on_end(self, sid: int) -> None:
        pass

    def on_reset(self, sid: int, code: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.reset = True
            self.server.resets_received.append(code)
            if st.call is not None and st.call.active():
                st.call.cancel()

    def on_window(self) -> None:
        for st in list(self.streams.values()):
            self._push(st)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.server.open_protocols.discard(self)
        for st in self.streams.values():
            if st.call is not None and st.call.active():
                st.call.cancel()

    # -- requests --------------------------------------------------------------

    def _request(self, sid: int, headers: dict[bytes, bytes]) -> None:
        self.requests += 1
        self.server.requests += 1
        path = headers[b":path"].decode()
        self.server.paths.append(path)
        self.max_open = max(self.max_open, len(self.streams) + 1)
        self.server.max_open = max(self.server.max_open, self.max_open)
        hook = self.server.on_request
        if hook is not None and hook(self, sid, path):
            return
        st = self.streams[sid] = _Stream(sid, path)
        url = urlsplit(path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/json":
            body = orjson.dumps({"ok": True, "sid": sid})
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/json")])
            st.pending = body
            st.done = True
            self._push(st)
            return
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
        n, delay, size = int(q.get("n", "10")), float(q.get("delay", "0")), int(q.get("size", "20"))
        reset_at = int(q["reset_at"]) if "reset_at" in q else None
        pad = "x" * max(0, size - 20)

        def step() -> None:
            st.call = None
            if self.closed or st.reset:
                return
            if reset_at is not None and st.events >= reset_at:
                st.reset = True
                self.conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
                self.flush()
                return
            if st.events >= n:
                st.pending += b"data: [DONE]\n\n"
                st.done = True
                self._push(st)
                self.flush()
                return
            st.pending += b"data: " + orjson.dumps({"i": st.events, "p": pad}) + b"\n\n"
            st.events += 1
            self._push(st)
            self.flush()
            st.call = self.server.reactor.callLater(delay, step)

        step()

    def _push(self, st: _Stream) -> None:
        if st.reset or self.closed:
            return
        while st.pending:
            try:
                room = min(self.conn.local_flow_control_window(st.sid), self.conn.max_outbound_frame_size)
            except H2Error:
                return
            if room <= 0:
                return
            chunk, st.pending = st.pending[:room], st.pending[room:]
            self.conn.send_data(st.sid, chunk)
            st.sent += len(chunk)
        if st.done and not st.pending:
            try:
                self.conn.end_stream(st.sid)
            except H2Error:
                pass
            st.pending = b""
            st.reset = True  # nothing more to do for it
            self.streams.pop(st.sid, None)
            self.server.stream_finished(self)

    def goaway(self, last_sid: int, code: ErrorCodes = ErrorCodes.NO_ERROR, close: bool = False) -> None:
        self.goaway_sent = True
        self.conn.close_connection(error_code=code, last_stream_id=last_sid)
        self.flush()
        if close:
            self.transport.abortConnection()  # type: ignore[union-attr]


class ScriptedH2Server:
    """Listen with TLS offering ALPN h2; see the module docstring."""

    def __init__(self, reactor: Any, tls: CertificateOptions, max_streams: int = 100) -> None:
        self.reactor = reactor
        self.tls = tls
        self.max_streams = max_streams
        self.connections = 0
        self.requests = 0
        self.max_open = 0
        self.paths: list[str] = []
        self.protocols: list[H2ServerProtocol] = []
        self.open_protocols: set[H2ServerProtocol] = set()
        self.resets_received: list[Any] = []
        #: the protocol errors that made it drop a connection
        self.errors: list[Exception] = []
        #: called for each request; True: the hook handled it (the server does nothing more)
        self.on_request: Callable[[H2ServerProtocol, int, str], bool] | None = None
        self._port: Any = None

    def listen(self) -> ScriptedH2Server:
        server = self

        class F(Factory):
            def buildProtocol(self, addr: Any) -> H2ServerProtocol:
                p = H2ServerProtocol(server)
                server.open_protocols.add(p)
                return p

        self._port = self.reactor.listenSSL(0, F(), self.tls, interface="127.0.0.1")
        return self

    def stream_finished(self, proto: H2ServerProtocol) -> None:
        if proto.goaway_sent and not proto.streams:
            # Drained: the last bytes go out, then the connection closes.
            proto.flush()
            proto.transport.loseConnection()  # type: ignore[union-attr]

    @property
    def base(self) -> str:
        return f"https://localhost:{self._port.getHost().port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def stop(self) -> None:
        for p in list(self.open_protocols):
            p.closed = True
            if p.transport is not None:
                p.transport.abortConnection()
        await self._port.stopListening()


class NoALPNServer:
    """An HTTPS server on Python's own ``ssl`` that ignores ALPN (as servers
    that predate it do), serving a short SSE reply, in a thread.  (A Twisted
    TLS server without ``acceptableProtocols`` fails a handshake that offers
    ALPN, so it cannot stand for one.)"""

    BODY = b'data: {"i": 0}\n\ndata: {"i": 1}\n\ndata: [DONE]\n\n'

    def __init__(self, ca: Any) -> None:
        import ssl
        import tempfile
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = self.BODY
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                outer.connections += 1
                super().setup()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        cert = ca.issue_cert("localhost")
        self._tmp = tempfile.NamedTemporaryFile(suffix=".pem")
        self._tmp.write(cert.private_key_and_cert_chain_pem.bytes())
        self._tmp.flush()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self._tmp.name)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.httpd.server_address[1]}/v1/chat/completions"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._tmp.close()

"""The benchmark server: a bare asyncio HTTP/1.1 server answering from
pre-built bytes, in its own process, so that it is not the bottleneck.

Routes (any method; the request body is read and ignored):

- ``/small``: a ~1 KB JSON reply; ``/large``: a 256 KB JSON reply;
- ``/sse2000``: 2,000 chat-completion chunks and ``[DONE]``, one HTTP chunk per
  event; ``/sse2000big``: the same body in 64 KiB HTTP chunks;
- ``/paced``: 50 tokens, 20 ms apart (``?gap=MS`` changes the gap);
- ``/flood?event=N&total=M``: events of N bytes up to M bytes, written as fast
  as TCP allows (the server stops writing while the socket is full);
- ``/hold?tag=T``: the headers and one event, then nothing until
  ``/release?tag=T`` (which answers like ``/small``) ends every stream held
  under that tag with ``[DONE]``: the streams a memory measurement keeps open.

Run: ``python -m nous_twisted.bench.server [--tls CHAIN_PEM]`` prints
``PORT <n>`` (and `` TLSPORT <m>`` when ``--tls`` names a PEM file holding a
private key and its certificate chain: the same routes over TLS) and serves
until stdin closes.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from typing import Any

import orjson


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _head(ctype: bytes, length: int | None) -> bytes:
    if length is None:
        return b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % length


def _completion(content: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 200, "total_tokens": 210},
    })


def sse_event(i: int) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench",
        "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}],
    }) + b"\n\n"


SMALL_BODY = _completion("x" * 780)
LARGE_BODY = _completion("y" * (256 * 1024 - 300))
SSE_EVENTS = [sse_event(i) for i in range(2000)] + [b"data: [DONE]\n\n"]
SSE_BODY = b"".join(SSE_EVENTS)

RESPONSES: dict[str, bytes] = {
    "/small": _head(b"application/json", len(SMALL_BODY)) + SMALL_BODY,
    "/large": _head(b"application/json", len(LARGE_BODY)) + LARGE_BODY,
    "/sse2000": _head(b"text/event-stream", None) + b"".join(_chunk(e) for e in SSE_EVENTS) + b"0\r\n\r\n",
    "/sse2000big": _head(b"text/event-stream", None)
    + b"".join(_chunk(SSE_BODY[i : i + 65536]) for i in range(0, len(SSE_BODY), 65536))
    + b"0\r\n\r\n",
}
PACED_HEAD = _head(b"text/event-stream", None)
PACED_TOKENS = [_chunk(sse_event(i)) for i in range(50)] + [_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"]
PACED_GAP = 0.020
HOLD_EVENT = _chunk(sse_event(0))
END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
# tag -> the connections whose /hold stream is open under it
HELD: dict[str, list[_Conn]] = {}


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.need: int | None = None  # body bytes still to read
        self.path = ""
        self.paused = False
        self.flood: list[Any] | None = None  # [payload, remaining]

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                line, _, rest = head.partition(b"\r\n")
                self.path = line.split(b" ")[1].decode()
                length = 0
                for h in rest.split(b"\r\n"):
                    if h[:15].lower() == b"content-length:":
                        length = int(h[15:])
                self.need = length
            if len(self.buf) < self.need:
                return
            del self.buf[: self.need]
            self.need = None
            self.respond()

    def respond(self) -> None:
        path, _, query = self.path.partition("?")
        args = dict(p.split("=") for p in query.split("&") if "=" in p)
        ready = RESPONSES.get(path)
        if ready is not None:
            self.t.write(ready)
        elif path == "/paced":
            self.t.write(PACED_HEAD)
            loop = asyncio.get_running_loop()
            gap = float(args["gap"]) / 1000 if "gap" in args else PACED_GAP
            for i, tok in enumerate(PACED_TOKENS):
                loop.call_later(gap * (i + 1), self._write, tok)
        elif path == "/hold":
            self.t.write(PACED_HEAD + HOLD_EVENT)
            HELD.setdefault(args.get("tag", ""), []).append(self)
        elif path == "/release":
            for conn in HELD.pop(args.get("tag", ""), []):
                conn._write(END)
            self.t.write(RESPONSES["/small"])
        elif path == "/flood":
            size = int(args.get("event", 16384))
            pad = size - len(b'data: {"pad":""}\n\n')
            event = b'data: {"pad":"' + b"p" * pad + b'"}\n\n'
            self.flood = [_chunk(event), int(args.get("total", 200 * 1024 * 1024)), len(event)]
            self.t.write(_head(b"text/event-stream", None))
            self._pump()
        else:
            self.t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if not self.t.is_closing():
            self.t.write(data)

    def _pump(self) -> None:
        flood = self.flood
        if flood is None:
            return
        payload, remaining, per = flood
        while not self.paused and remaining > 0 and not self.t.is_closing():
            self.t.write(payload)
            remaining -= per
        flood[1] = remaining
        if remaining <= 0:
            self.flood = None
            self._write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()


async def serve(port: int = 0, tls_chain: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port, backlog=4096)
    line = f"PORT {server.sockets[0].getsockname()[1]}"
    servers = [server]
    if tls_chain is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls_chain)
        tls = await loop.create_server(_Conn, "127.0.0.1", 0, backlog=4096, ssl=ctx)
        line += f" TLSPORT {tls.sockets[0].getsockname()[1]}"
        servers.append(tls)
    print(line, flush=True)
    # Serve until the parent closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    for s in servers:
        s.close()


def _main(argv: list[str]) -> None:
    tls_chain = None
    if "--tls" in argv:
        i = argv.index("--tls")
        tls_chain = argv[i + 1]
        del argv[i : i + 2]
    asyncio.run(serve(int(argv[0]) if argv else 0, tls_chain))


if __name__ == "__main__":
    _main(sys.argv[1:])

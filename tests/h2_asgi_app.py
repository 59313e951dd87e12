"""A small ASGI app for hypercorn, the independent h2 server of the tests:
POST /v1/chat/completions streams ``n`` OpenAI-style SSE chunks (query
``n``, ``delay`` seconds apart) and ``data: [DONE]``; any other path is a 404
JSON error."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] != "/v1/chat/completions":
        payload = json.dumps({"error": {"message": "no such path", "type": "not_found"}}).encode()
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})
        return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    n, delay = int(q.get("n", "5")), float(q.get("delay", "0"))
    await send({
        "type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"text/event-stream"), (b"x-http-version", scope["http_version"].encode())],
    })
    for i in range(n):
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True})
        if delay:
            await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

"""The load test: 10,000 posts and 2,000 streams at concurrency 100 against a
loopback server that kills 5% of the requests' connections at random points.

The server (tests/faultserver.py, seeded RNG) answers each request correctly
on a keep-alive connection, except that with probability 5% it kills the
connection while answering: before the headers, in the middle of them, or in
the middle of the body, by FIN or by RST.  It records the fate of every
request id (a header), so the test knows which requests were hurt by the
server and which ones must succeed: every Deferred fires, every stream has
exactly one terminal event, every request the server answered in full
succeeds with its own reply, every request the server killed fails with a
typed TransportError, no request fails without having been killed (a
request of a healthy connection never pays for another one's fault), and
afterwards fds, pool and server connections are back to baseline.
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import (
    PoolSettings,
    StreamDone,
    StreamError,
    TransportError,
    post,
    stream,
)

from .faultserver import ABORT, CLOSE, FaultServer, SeenRequest, chunk, head, open_fds, response, write
from .helpers import wait_for_baseline

POSTS = 10_000
STREAMS = 2_000
CONCURRENCY = 100
KILL_RATE = 0.05
STREAM_EVENTS = 5
SEED = 20260107


class KillingServer:
    """Answers correctly, but kills 5% of the connections while answering."""

    def __init__(self, seed: int, points: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.points = points
        self.fates: dict[str, list[str]] = {}
        self.server = FaultServer(self.script)

    def script(self, req: SeenRequest) -> list[Any]:
        rid = req.header("x-req-id") or "?"
        is_stream = req.target.startswith("/stream")
        if is_stream:
            body = b"".join(b'data: {"id": "%s", "i": %d}\n\n' % (rid.encode(), i) for i in range(STREAM_EVENTS))
            body += b"data: [DONE]\n\n"
            whole = head() + chunk(body[: len(body) // 2]) + chunk(body[len(body) // 2 :]) + b"0\r\n\r\n"
            headers_len = len(head())
        else:
            payload = orjson.dumps({"id": rid, "pad": "x" * 200})
            whole = response(200, payload, (("Content-Type", "application/json"),))
            headers_len = len(whole) - len(payload)
        fates = self.fates.setdefault(rid, [])
        if self.rng.random() >= KILL_RATE:
            fates.append("answered")
            return [write(whole)]
        point = self.rng.choice(self.points)
        how = self.rng.choice((CLOSE, ABORT))
        if point == "after-body":
            # The reply is whole; then the connection is closed without a
            # "Connection: close" (llama-server does this): the request
            # succeeded, and the next one must not be sent on this connection.
            fates.append("answered")
            return [write(whole), CLOSE]
        cut = {"before-headers": 0, "mid-headers": headers_len // 2,
               "mid-body": headers_len + (len(whole) - headers_len) // 2}[point]
        fates.append(f"killed {point} by {'FIN' if how is CLOSE else 'RST'}")
        return [write(whole[:cut]), how] if cut else [how]


async def run_pool(n: int, one: Any) -> None:
    """Run ``one(i)`` for i in range(n), CONCURRENCY at a time."""
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await one(i)

    await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(CONCURRENCY)])


def judge(rid: str, fates: list[str], ok: bool, detail: str, problems: list[str]) -> None:
    if not fates:
        problems.append(f"{rid}: never reached the server, client: {detail}")
    elif fates[-1] == "answered" and not ok:
        problems.append(f"{rid}: answered in full by the server ({fates}) but failed: {detail}")
    elif fates[-1] != "answered" and ok:
        problems.append(f"{rid}: killed by the server ({fates}) yet reported a success: {detail}")


IN_REPLY = ("before-headers", "mid-headers", "mid-body")


@pytest.mark.parametrize(
    "points", [IN_REPLY, (*IN_REPLY, "after-body")], ids=["killed-in-reply", "also-closed-after-reply"]
)
@pytest_twisted.ensureDeferred
async def test_load_posts_and_streams_with_killed_connections(points: tuple[str, ...], clean_state: None) -> None:
    nous_twisted.configure(pool=PoolSettings(timeout=100))
    killer = KillingServer(SEED, points)
    server = killer.server.listen()
    try:
        fds = open_fds()
        problems: list[str] = []
        failed_by_kill = 0
        started = time.monotonic()

        async def one_post(i: int) -> None:
            nonlocal failed_by_kill
            rid = f"p{i}"
            backend = "treq" if i % 2 else "agent"
            try:
                value = await post(server.url("/post"), {"i": i}, {"X-Req-Id": rid}, backend=backend,
                                   timeout=10, connect_timeout=30)
            except TransportError as e:
                judge(rid, killer.fates.get(rid, []), False, f"{type(e).__name__}: {e}", problems)
                failed_by_kill += 1
                return
            except Exception as e:  # not typed as a transport failure: always a problem
                problems.append(f"{rid}: untyped or unexpected failure {type(e).__name__}: {e}")
                return
            if value.get("id") != rid:
                problems.append(f"{rid}: got another request's reply: {str(value)[:80]}")
            judge(rid, killer.fates.get(rid, []), True, "ok", problems)

        await run_pool(POSTS, one_post)
        posts_done = time.monotonic()

        async def one_stream(i: int) -> None:
            rid = f"s{i}"
            backend = "treq" if i % 2 else "agent"
            events = []
            async for e in stream(server.url("/stream"), {"i": i}, {"X-Req-Id": rid}, stream_backend=backend,
                                  timeout=10, connect_timeout=30):
                events.append(e)
            terminals = [e for e in events if isinstance(e, (StreamDone, StreamError))]
            if len(terminals) != 1 or events[-1] is not terminals[0]:
                problems.append(f"{rid}: not exactly one terminal event, last: {events[-3:]}")
                return
            last = events[-1]
            want = [{"id": rid, "i": k} for k in range(STREAM_EVENTS)]
            if isinstance(last, StreamDone):
                ok = last == StreamDone("stop") and events[:-1] == want
                judge(rid, killer.fates.get(rid, []), ok, f"events {events[:2]}... {last}", problems)
            else:
                err = last.error
                if not isinstance(err, TransportError):
                    problems.append(f"{rid}: ended by {type(err).__name__}: {err}")
                    return
                if events[:-1] != want[: len(events) - 1]:
                    problems.append(f"{rid}: events not its own before the error: {events[:2]}")
                judge(rid, killer.fates.get(rid, []), False, f"{type(err).__name__}: {err}", problems)

        await run_pool(STREAMS, one_stream)
        finished = time.monotonic()

        killed = sum(1 for f in killer.fates.values() if f and f[-1] != "answered")
        print(f"\nload {points[-1]}: {POSTS} posts in {posts_done - started:.1f} s, {STREAMS} streams in "
              f"{finished - posts_done:.1f} s; {killed} killed, {server.connections_made} connections, "
              f"{len(problems)} problems")
        assert not problems, f"{len(problems)} problems; first: " + "\n".join(problems[:10])
        assert killed > 0.02 * (POSTS + STREAMS), f"only {killed} requests were killed: the test lost its faults"
        assert len(killer.fates) == POSTS + STREAMS
        await wait_for_baseline(fds, server, timeout=5.0, what="after the load")
    finally:
        await server.stop()

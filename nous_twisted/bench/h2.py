"""The HTTP/2 scenario (issue 13): many paced SSE streams over TLS, the h2
backend against the agent backend (HTTP/1.1, one connection per stream),
same server, same events, same-run ratios.

    python -m nous_twisted.bench.h2 [--quick] [--json FILE]

Measured, each client in a fresh process, rounds alternating:

- CPU per event, whole run (handshakes included) and steady state (between
  10% and 90% of the events);
- TLS handshakes (connections the server accepted) and the client's peak
  open fds;
- memory per open stream: N streams held open after their first event,
  RSS growth / N;
- a consumer stopped for some seconds among N streams: the bytes its stream
  took off the wire meanwhile (window + one frame at most), and the others'
  completion against a run with no stop.

The server runs in a process of its own and offers ALPN h2 and http/1.1:
HTTP/1.1 is Twisted's web server; h2 is a small server on ``h2`` that writes
the frames of one reactor turn together, as production servers do, or with
``--h2-server twisted`` Twisted's own h2 server, which writes one frame per
reactor turn (and on a loaded machine then measures itself more than the
client).  It answers ``/sse?n=&gap=&size=`` with ``n`` events of ``size``
bytes ``gap`` seconds apart, then ``data: [DONE]``, and ``/stats`` (plain
HTTP) with the connections it accepted.  Public names only, except
the h2 stream's byte count read for the stopped-consumer figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from .spawn import make_ca, spawn

STEADY = (0.1, 0.9)


# -- the server process ---------------------------------------------------------


def serve(chain: str, h2_server: str = "coalescing") -> None:
    from twisted.internet import reactor as _reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions, PrivateCertificate
    from twisted.web import resource, server

    reactor: Any = _reactor  # Twisted's reactor module is typed as a bare module
    counts = {"connections": 0, "open": 0}

    class SSE(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> Any:
            q = {k.decode(): v[0].decode() for k, v in request.args.items()}
            n, gap, size = int(q.get("n", "200")), float(q.get("gap", "0.01")), int(q.get("size", "1024"))
            request.setHeader(b"content-type", b"text/event-stream")
            line = b"data: " + json.dumps({"choices": [{"delta": {"content": "x" * max(0, size - 60)}}]}).encode()
            state: dict[str, Any] = {"i": 0, "call": None}

            def gone(_: Any) -> None:
                call = state["call"]
                if call is not None and call.active():
                    call.cancel()

            def step() -> None:
                state["call"] = None
                if state["i"] >= n:
                    request.write(b"data: [DONE]\n\n")
                    request.finish()
                    return
                request.write(line + b"\n\n")
                state["i"] += 1
                state["call"] = reactor.callLater(gap, step)

            request.notifyFinish().addErrback(gone)
            step()
            return server.NOT_DONE_YET

    class Stats(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return json.dumps(counts).encode()

    pc = PrivateCertificate.loadPEM(open(chain, "rb").read())
    opts = CertificateOptions(
        privateKey=pc.privateKey.original, certificate=pc.original, acceptableProtocols=[b"h2", b"http/1.1"]
    )
    site = server.Site(SSE())  # type: ignore[no-untyped-call]
    site.log = lambda request: None  # type: ignore[method-assign]

    @implementer(IHandshakeListener)
    class Dispatch(Protocol):
        """HTTP/1.1 to Twisted's web server; h2 to :class:`_H2Server`, which
        writes each turn's frames in one go as production servers do
        (Twisted's own h2 server writes one frame per reactor turn and, on
        a loaded machine, measures itself rather than the client)."""

        inner: Any = None

        def handshakeCompleted(self) -> None:
            transport: Any = self.transport
            if transport.negotiatedProtocol == b"h2" and h2_server == "coalescing":
                self.inner = _H2Server(reactor)
            else:
                self.inner = site.buildProtocol(transport.getPeer())
            self.inner.makeConnection(transport)

        def dataReceived(self, data: bytes) -> None:
            self.inner.dataReceived(data)

        def connectionLost(self, reason: Any = None) -> None:
            counts["open"] -= 1
            if self.inner is not None:
                self.inner.connectionLost(reason)

    class Counting(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Dispatch:
            counts["connections"] += 1
            counts["open"] += 1
            return Dispatch()

    tls_port = reactor.listenSSL(0, Counting(), opts, backlog=2048, interface="127.0.0.1")
    stats_site = server.Site(Stats())  # type: ignore[no-untyped-call]
    stats_site.log = lambda request: None  # type: ignore[method-assign]
    stats_port = reactor.listenTCP(0, stats_site, interface="127.0.0.1")
    print(f"PORT {tls_port.getHost().port} {stats_port.getHost().port}", flush=True)
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Quit(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            reactor.stop()

    stdio.StandardIO(Quit())  # type: ignore[no-untyped-call]
    reactor.run()


def send_within_window(conn: Any, sid: int, buf: bytearray) -> bool:
    """Send what ``buf`` holds for stream ``sid`` on the ``h2`` connection
    ``conn``, in frames of the peer's largest size, as far as the flow
    control windows let it (what went is removed from ``buf``); True when
    all of it went."""
    while buf:
        room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
        if room <= 0:
            return False
        conn.send_data(sid, bytes(buf[:room]))
        del buf[:room]
    return True


class _H2Server:
    """The bench server's HTTP/2 side, on ``h2``: ``/sse?n=&gap=&size=`` as
    the HTTP/1.1 side answers it, flow control honoured, and every frame
    made in one reactor turn written at once."""

    def __init__(self, reactor: Any) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.settings import SettingCodes, Settings

        self.reactor = reactor
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = Settings(client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.pending: dict[int, bytearray] = {}  # per stream: bytes waiting for window
        self.ending: set[int] = set()
        self.calls: dict[int, Any] = {}
        self.flush_call: Any = None
        self.transport: Any = None
        self.lost = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.flush_call = None
        out = self.conn.data_to_send()
        if out and not self.lost:
            self.transport.write(out)

    def soon(self) -> None:
        if self.flush_call is None:
            self.flush_call = self.reactor.callLater(0, self.flush)

    def dataReceived(self, data: bytes) -> None:
        from h2.events import DataReceived, RequestReceived, StreamReset, WindowUpdated
        from h2.exceptions import H2Error

        try:
            events = self.conn.receive_data(data)
        except H2Error:
            self.transport.abortConnection()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.request(ev.stream_id, dict(ev.headers))
            elif isinstance(ev, DataReceived) and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, WindowUpdated):
                for sid in list(self.pending):
                    self.push(sid)
            elif isinstance(ev, StreamReset):
                self.forget(ev.stream_id)
        self.soon()

    def request(self, sid: int, headers: dict[bytes, bytes]) -> None:
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(headers[b":path"].decode())
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        n, gap, size = int(q.get("n", "200")), float(q.get("gap", "0.01")), int(q.get("size", "1024"))
        line = b"data: " + json.dumps({"choices": [{"delta": {"content": "x" * max(0, size - 60)}}]}).encode()
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
        self.pending[sid] = bytearray()
        count = [0]

        def step() -> None:
            self.calls.pop(sid, None)
            if self.lost or sid not in self.pending:
                return
            if count[0] >= n:
                self.pending[sid] += b"data: [DONE]\n\n"
                self.ending.add(sid)
            else:
                self.pending[sid] += line + b"\n\n"
                count[0] += 1
                self.calls[sid] = self.reactor.callLater(gap, step)
            self.push(sid)
            self.soon()

        step()

    def push(self, sid: int) -> None:
        buf = self.pending.get(sid)
        if buf is None:
            return
        conn = self.conn
        if not send_within_window(conn, sid, buf):
            return
        if sid in self.ending:
            conn.end_stream(sid)
            self.forget(sid)

    def forget(self, sid: int) -> None:
        self.pending.pop(sid, None)
        self.ending.discard(sid)
        call = self.calls.pop(sid, None)
        if call is not None and call.active():
            call.cancel()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        for call in self.calls.values():
            if call.active():
                call.cancel()
        self.calls.clear()


# -- the client process ----------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _type_sizes() -> dict[str, tuple[int, int]]:
    """Per type of the objects the collector tracks: (count, shallow bytes)."""
    out: dict[str, tuple[int, int]] = {}
    for o in gc.get_objects():
        t = type(o)
        name = f"{t.__module__}.{t.__qualname__}"
        n, b = out.get(name, (0, 0))
        out[name] = (n + 1, b + sys.getsizeof(o))
    return out


def client(params: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

    import nous_twisted

    reactor: Any = _reactor
    out: dict[str, Any] = {}

    async def main() -> None:
        # memory: a short idle timeout closes the warm-up's connection
        idle = 0.2 if params["kind"] in ("memory", "breakdown") else 2.0
        nous_twisted.configure(ca_bundle=params["ca"],
                               pool=nous_twisted.PoolSettings(max_connections=100_000, idle_timeout=idle))
        backend = params["mode"]
        url = params["url"]
        kind = params["kind"]
        streams = params["streams"]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        if kind == "cpu":
            total = streams * (params["events"] + 1)
            marks: dict[str, float] = {}
            got = [0]
            lo, hi = int(total * STEADY[0]), int(total * STEADY[1])
            fds_peak = [0]

            def on_event(e: Any) -> None:
                got[0] += 1
                if got[0] == lo:
                    marks["lo"] = time.process_time()
                    fds_peak[0] = max(fds_peak[0], _fds())
                elif got[0] == hi:
                    marks["hi"] = time.process_time()
                    fds_peak[0] = max(fds_peak[0], _fds())

            fds0 = _fds()
            t0, w0 = time.process_time(), time.monotonic()
            ds = [
                nous_twisted.stream(url, body, stream_backend=backend).consume(on_event) for _ in range(streams)
            ]
            await DeferredList(ds)
            t1, w1 = time.process_time(), time.monotonic()
            out.update(
                events=got[0], cpu_per_event_us=(t1 - t0) / got[0] * 1e6,
                steady_cpu_per_event_us=(marks["hi"] - marks["lo"]) / (hi - lo) * 1e6,
                wall_s=w1 - w0, fds_added=fds_peak[0] - fds0,
            )
        elif kind in ("memory", "breakdown"):
            if params.get("warm_url"):
                # One whole stream first, as scale_memory does (code loaded,
                # the host's TLS context made), its connection then closed
                # by the idle timeout: the connections of the held streams
                # are counted, whichever backend.
                await nous_twisted.stream(params["warm_url"], body, stream_backend=backend).consume(lambda e: None)
                d0: Deferred[None] = Deferred()
                reactor.callLater(0.5, d0.callback, None)
                await d0
            fds0 = _fds()
            gc.collect()
            if kind == "breakdown":
                import tracemalloc

                types0 = _type_sizes()  # before tracing: its own dict is not the streams'
                tracemalloc.start(params.get("frames", 1))
                snap0 = tracemalloc.take_snapshot()
            base = _rss()
            # As scale_memory holds them: consume() with a callback that
            # counts (what a held async-for adds is the caller's).
            seen = [0]
            all_open: Deferred[None] = Deferred()

            def count(event: Any) -> None:
                seen[0] += 1
                if seen[0] == streams:
                    all_open.callback(None)

            held = [nous_twisted.stream(url, body, stream_backend=backend) for _ in range(streams)]
            ends = [s.consume(count) for s in held]
            await all_open
            # Out of the read that delivered the last first event (its frames
            # are still referenced until it returns), as scale_memory does.
            d1: Deferred[None] = Deferred()
            reactor.callLater(0.05, d1.callback, None)
            await d1
            gc.collect()
            grown = _rss() - base
            out.update(bytes_per_stream=grown / streams, fds_added=_fds() - fds0)
            if kind == "breakdown":
                snap1 = tracemalloc.take_snapshot()
                out["traced_per_stream"] = sum(st.size_diff for st in snap1.compare_to(snap0, "filename")) / streams
                out["by_line"] = [
                    (str(st.traceback), st.size_diff / streams, st.count_diff / streams)
                    for st in snap1.compare_to(snap0, "lineno")[: params.get("top", 30)]
                ]
                types1 = _type_sizes()
                rows = [(name, (n1 - types0.get(name, (0, 0))[0]) / streams, (b1 - types0.get(name, (0, 0))[1]) / streams)
                        for name, (n1, b1) in types1.items()]
                out["by_type"] = sorted(rows, key=lambda r: -r[2])[: params.get("top", 30)]
                tracemalloc.stop()
            for s in held:
                s.cancel()
            await DeferredList(ends)
        elif kind == "stop":
            stop_for = params["stop"]
            done_at: list[float] = []
            start = time.monotonic()

            def finished(result: Any) -> Any:
                done_at.append(time.monotonic() - start)
                return result

            stopped = None
            received = 0
            if stop_for:
                stopped = nous_twisted.stream(url, body, stream_backend=backend)
            others = [
                nous_twisted.stream(url, body, stream_backend=backend).consume(lambda e: None)
                for _ in range(streams - (1 if stopped is not None else 0))
            ]
            for one in others:
                one.addCallback(finished)
            if stopped is not None:
                await Deferred.fromCoroutine(stopped.__anext__())
                d: Deferred[None] = Deferred()
                reactor.callLater(stop_for, d.callback, None)
                await d
                core = stopped._core
                received = core.bytes_received + getattr(getattr(core, "_source", None), "buffered_bytes", 0)
                stopped.cancel()
            await DeferredList(others)
            out.update(
                others_median_s=statistics.median(done_at), others_max_s=max(done_at),
                stopped_bytes_off_the_wire=received,
            )
        await nous_twisted.shutdown()

    def run() -> None:
        d = ensureDeferred(main())
        d.addErrback(lambda f: out.update(error=str(f.value)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    return out


# -- the parent ------------------------------------------------------------------------


def _stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        result: dict[str, int] = json.loads(r.read())
        return result


def _run_client(params: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "nous_twisted.bench.h2", "--client", json.dumps(params)],
        capture_output=True, text=True, timeout=900,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"exit {out.returncode}: {out.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


#: the scenario's sizes: quick, full
QUICK = {"streams": 100, "events": 100, "gap": 0.01, "rounds": 2, "levels": [100, 1000], "stop": 2.0,
         "stop_rounds": 1}
FULL = {"streams": 100, "events": 200, "gap": 0.01, "rounds": 5, "levels": [100, 1000], "stop": 5.0,
        "stop_rounds": 3}


def sizes_for(quick: bool, sizes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(QUICK if quick else FULL), **(sizes or {})}


def weights(quick: bool, sizes: dict[str, Any] | None = None) -> list[float]:
    """Rough seconds of each client run, in the order :func:`bench` runs
    them (for ``nous-twisted bench``'s time-left estimate)."""
    size = sizes_for(quick, sizes)
    paced = size["events"] * size["gap"] + 2.0
    cpu = [paced] * (2 * size["rounds"])
    memory = [1.0 + level / 150 for level in size["levels"] for _ in ("h2", "agent")]
    stop = [max(paced, size["stop"] + 2.0), paced] * size["stop_rounds"]
    return cpu + memory + stop


def _start_server(h2_server: str) -> tuple[subprocess.Popen[str], int, int, str]:
    """The server process, its TLS and stats ports, the CA's PEM file."""
    chain, ca_pem = make_ca("nous-twisted-bench-h2-", "localhost")
    proc, words = spawn(
        [sys.executable, "-m", "nous_twisted.bench.h2", "--serve", chain, "--h2-server", h2_server],
        "the h2 bench server",
    )
    return proc, int(words[1]), int(words[2]), ca_pem


def breakdown(streams: int, mode: str = "h2", warm: bool = True, top: int = 25, frames: int = 1) -> str:
    """What ``streams`` held-open streams allocate, per stream: RSS growth,
    Python allocations by source line (tracemalloc) and the collector's
    objects by type (count and shallow size), as text."""
    proc, tls_port, _, ca_pem = _start_server("coalescing")
    assert proc.stdin is not None
    try:
        base = f"https://localhost:{tls_port}/sse?"
        r = _run_client({"ca": ca_pem, "mode": mode, "kind": "breakdown", "streams": streams, "events": 2,
                         "url": base + "n=2&gap=120&size=1024", "warm_url": base + "n=2&gap=0.001&size=1024" if warm
                         else "", "top": top, "frames": frames})
    finally:
        proc.stdin.close()
        proc.wait(10)
    if "error" in r:
        return f"failed: {r['error']}"
    lines = [f"{mode}, {streams} streams held open after their first event ({'after' if warm else 'without'} a "
             f"warm-up stream): RSS {r['bytes_per_stream']:,.0f} B per stream, traced Python allocations "
             f"{r['traced_per_stream']:,.0f} B per stream, fds added {r['fds_added']}", "",
             "tracemalloc, per stream (bytes, blocks):"]
    lines += [f"  {b:9,.0f} {n:6.2f}  {where}" for where, b, n in r["by_line"]]
    lines += ["", "objects tracked by the collector, per stream (count, shallow bytes):"]
    lines += [f"  {n:6.2f} {b:9,.0f}  {name}" for name, n, b in r["by_type"]]
    return "\n".join(lines)


def bench(quick: bool = False, sizes: dict[str, Any] | None = None, h2_server: str = "coalescing",
          step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the scenario; the figures, as a dict.  ``sizes`` overrides
    streams, events, gap, rounds, levels, stop and stop_rounds (for tests).
    ``h2_server``: ``"coalescing"`` (each turn's frames in one write) or
    ``"twisted"`` (Twisted's own h2 server: one frame per write and turn).
    ``step`` is called with a label after each client run."""
    from ..h2conn import STREAM_WINDOW

    def done(label: str) -> None:
        if step is not None:
            step(label)

    proc, tls_port, stats_port, ca_pem = _start_server(h2_server)
    assert proc.stdin is not None
    size = sizes_for(quick, sizes)
    streams, events, gap, rounds, levels = size["streams"], size["events"], size["gap"], size["rounds"], size["levels"]
    url = f"https://localhost:{tls_port}/sse?n={events}&gap={gap}&size=1024"
    common = {"ca": ca_pem, "streams": streams, "events": events}
    result: dict[str, Any] = {"streams": streams, "events": events, "gap_s": gap, "rounds": rounds,
                              "h2_server": h2_server, "window": STREAM_WINDOW, "frame": 16384}
    try:
        cpu: dict[str, list[dict[str, Any]]] = {"h2": [], "agent": []}
        for _ in range(rounds):
            for mode in ("h2", "agent"):
                before = _stats(stats_port)["connections"]
                r = _run_client({**common, "mode": mode, "kind": "cpu", "url": url})
                r["handshakes"] = _stats(stats_port)["connections"] - before
                cpu[mode].append(r)
                done(f"h2_streams cpu {mode}")
        result["cpu"] = cpu
        memory: dict[str, dict[int, Any]] = {"h2": {}, "agent": {}}
        hold = f"https://localhost:{tls_port}/sse?n=2&gap=120&size=1024"
        warm = f"https://localhost:{tls_port}/sse?n=2&gap=0.001&size=1024"
        for level in levels:
            for mode in ("h2", "agent"):
                memory[mode][level] = _run_client({**common, "mode": mode, "kind": "memory", "url": hold,
                                                   "warm_url": warm, "streams": level})
                done(f"h2_streams memory {level} {mode}")
        result["memory"] = memory
        stop = size["stop"]
        # Alternating, because the machine's load moves the completion times
        # more than a stopped sibling should.
        stopped, unstopped = [], []
        for _ in range(size["stop_rounds"]):
            stopped.append(_run_client({**common, "mode": "h2", "kind": "stop", "url": url, "stop": stop}))
            done("h2_streams one consumer stopped")
            unstopped.append(_run_client({**common, "mode": "h2", "kind": "stop", "url": url, "stop": 0}))
            done("h2_streams no consumer stopped")
        result["stop"] = {"stopped": stopped, "unstopped": unstopped, "stop_s": stop}
    finally:
        proc.stdin.close()
        proc.wait(10)
    return result


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs if key in r))


def _median_or_none(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return float(statistics.median(values)) if values else None


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def figures(result: dict[str, Any]) -> dict[str, Any]:
    """The scenario's target figures from :func:`bench`'s result (None where
    a run failed): h2/agent ratios of CPU per event (``cpu_whole``,
    ``cpu_steady``) and of memory per open stream (``memory``: level ->
    ratio), the h2 runs' ``handshakes`` and ``fds`` (median, one host), the
    stopped stream's largest take off the wire over window + one frame
    (``stopped_vs_window``) and the others' median completion over the
    unstopped runs' (``others_vs_unstopped``)."""
    cpu = result.get("cpu", {"h2": [], "agent": []})
    out: dict[str, Any] = {
        "cpu_whole": _over(_median_or_none(cpu["h2"], "cpu_per_event_us"),
                           _median_or_none(cpu["agent"], "cpu_per_event_us")),
        "cpu_steady": _over(_median_or_none(cpu["h2"], "steady_cpu_per_event_us"),
                            _median_or_none(cpu["agent"], "steady_cpu_per_event_us")),
        "handshakes": _median_or_none(cpu["h2"], "handshakes"),
        "fds": _median_or_none(cpu["h2"], "fds_added"),
        "memory": {},
    }
    memory = result.get("memory", {"h2": {}, "agent": {}})
    for level, hm in memory["h2"].items():
        am = memory["agent"].get(level, {})
        out["memory"][int(level)] = _over(hm.get("bytes_per_stream"), am.get("bytes_per_stream"))
    stop = result.get("stop", {"stopped": [], "unstopped": []})
    s, u = stop["stopped"], stop["unstopped"]
    taken = [r["stopped_bytes_off_the_wire"] for r in s if "stopped_bytes_off_the_wire" in r]
    bound = result.get("window", 65536) + result.get("frame", 16384)
    out["stopped_vs_window"] = max(taken) / bound if taken else None
    out["others_vs_unstopped"] = _over(_median_or_none(s, "others_median_s"), _median_or_none(u, "others_median_s"))
    return out


def report(result: dict[str, Any]) -> str:
    """The figures as a markdown section."""
    cpu = result["cpu"]
    lines = [
        f"### HTTP/2: {result['streams']} streams x {result['events']} events, "
        f"{result['gap_s'] * 1000:g} ms apart, TLS ({result['rounds']} alternating rounds; h2 server: "
        f"{result.get('h2_server', 'coalescing')})",
        "",
        "| | h2 | agent (HTTP/1.1) | h2 / agent |",
        "|---|---|---|---|",
    ]
    for key, label in (("cpu_per_event_us", "CPU per event, whole run (µs)"),
                       ("steady_cpu_per_event_us", "CPU per event, steady state (µs)")):
        h, a = _median(cpu["h2"], key), _median(cpu["agent"], key)
        lines.append(f"| {label} | {h:.1f} | {a:.1f} | {h / a:.2f}x |")
    h, a = _median(cpu["h2"], "handshakes"), _median(cpu["agent"], "handshakes")
    lines.append(f"| TLS handshakes | {h:g} | {a:g} | |")
    h, a = _median(cpu["h2"], "fds_added"), _median(cpu["agent"], "fds_added")
    lines.append(f"| fds added at peak | {h:g} | {a:g} | |")
    for level, hm in result["memory"]["h2"].items():
        am = result["memory"]["agent"][level]
        if "bytes_per_stream" in hm and "bytes_per_stream" in am:
            hb, ab = hm["bytes_per_stream"], am["bytes_per_stream"]
            lines.append(f"| memory per open stream at {level} (KiB) | {hb / 1024:.1f} | {ab / 1024:.1f} | {hb / ab:.2f}x |")
    stop = result["stop"]
    s, u = stop["stopped"], stop["unstopped"]
    if all("others_median_s" in r for r in s + u):
        sm, um = _median(s, "others_median_s"), _median(u, "others_median_s")
        lines += [
            "",
            f"One consumer stopped {stop['stop_s']:g} s among {result['streams']} (h2, {len(s)} alternating runs "
            f"each way): its stream took at most {max(r['stopped_bytes_off_the_wire'] for r in s):,} bytes off the "
            f"wire (the {result.get('window', 65536):,}-byte window; one {result.get('frame', 16384):,}-byte frame "
            f"more at most); the others finished at "
            f"{sm:.3f} s median ({_median(s, 'others_max_s'):.3f} s max) against {um:.3f} s "
            f"({_median(u, 'others_max_s'):.3f} s) with no stop: {sm / um:.3f}x.  (The paced ideal is "
            f"{result['events'] * result['gap_s']:g} s; the rest is the server's time.)",
        ]
    errors = [r["error"] for runs in cpu.values() for r in runs if "error" in r]
    if errors:
        lines += ["", "Errors: " + "; ".join(errors[:3])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nous_twisted.bench.h2", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the raw figures here")
    p.add_argument("--h2-server", choices=["coalescing", "twisted"], default="coalescing",
                   help="the server's h2 side: frames of a turn written together (default), or Twisted's own "
                   "h2 server (one frame per write and reactor turn)")
    p.add_argument("--breakdown", type=int, metavar="N",
                   help="instead: what N held-open streams allocate, per stream (RSS, tracemalloc, object types)")
    p.add_argument("--mode", choices=["h2", "agent"], default="h2", help="the backend --breakdown measures")
    p.add_argument("--cold", action="store_true", help="--breakdown without the warm-up stream")
    p.add_argument("--frames", type=int, default=1, help="--breakdown: traceback depth of tracemalloc")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.h2_server)
        return 0
    if args.client:
        print(json.dumps(client(json.loads(args.client))), flush=True)
        return 0
    if args.breakdown:
        print(breakdown(args.breakdown, args.mode, warm=not args.cold, frames=args.frames))
        return 0
    result = bench(args.quick, h2_server=args.h2_server)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

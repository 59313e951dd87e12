"""The benchmark's scenarios and the clients' display names, shared by the
runner and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABELS = {
    "nous_treq": "nous_twisted treq",
    "nous_agent": "nous_twisted agent",
    "treq": "raw treq",
    "agent": "raw Agent",
    "aiohttp": "aiohttp",
    "httpx": "httpx + httpx-sse",
    "floor": "asyncio floor",
    "twisted_floor": "Twisted floor",
    "nous_treq_iter": "nous_twisted treq, async for",
    "nous_agent_iter": "nous_twisted agent, async for",
    "nous_treq_accel": "nous_twisted treq, accelerated",
    "nous_agent_accel": "nous_twisted agent, accelerated",
    "nous_treq_accel_iter": "nous_twisted treq, accelerated, async for",
    "nous_agent_accel_iter": "nous_twisted agent, accelerated, async for",
}

# The variants that run where a scenario lists them: how a stream is read, and the accelerator.
STREAM_VARIANTS = ("nous_agent_iter", "nous_treq_iter", "nous_agent_accel", "nous_treq_accel",
                   "nous_agent_accel_iter", "nous_treq_accel_iter")


@dataclass(frozen=True)
class Scenario:
    name: str
    unit: str  # "request", "event" or, for scale_memory, "stream"
    quick: dict[str, Any]
    full: dict[str, Any]
    runs_quick: int = 3
    runs_full: int = 5
    what: str = ""
    # this library's variants measured besides CLIENTS (accelerated ones only when it is installed)
    variants: tuple[str, ...] = ()
    # rough seconds per run (process start included), quick and full: weights for the time-left estimate
    cost: tuple[float, float] = (0.6, 1.5)
    tls: bool = False


SCENARIOS = [
    Scenario("small_post", "request", {"n": 300}, {"n": 2000},
             what="sequential ~1 KB JSON posts, ~1 KB JSON replies, keep-alive"),
    Scenario("parallel_50", "request", {"rounds": 6}, {"rounds": 40}, what="rounds of 50 concurrent posts"),
    Scenario("large_body", "request", {"rounds": 4}, {"rounds": 20}, runs_quick=2,
             what="rounds of 10 concurrent 256 KB posts with 256 KB replies"),
    # 9 runs: a run takes about a second, and on a shared VM single runs come out at
    # once or twice the CPU per event (every client alike); a median of 5 moved a ratio by 1.6x.
    Scenario("stream_2000", "event", {"n": 2}, {"n": 10}, runs_full=9,
             what="one OpenAI-style SSE stream of 2,000 chunks, one HTTP chunk per event",
             variants=STREAM_VARIANTS),
    Scenario("stream_2000_64k", "event", {"n": 2}, {"n": 10}, runs_quick=2, what="the same body in 64 KiB HTTP chunks"),
    Scenario("small_post_tls", "request", {"n": 300}, {"n": 2000}, runs_quick=2, tls=True,
             what="small_post over HTTPS: loopback TLS, a trustme CA made for the run, every client verifying it"),
    Scenario("stream_2000_tls", "event", {"n": 2}, {"n": 10}, runs_quick=2, tls=True,
             what="stream_2000 over HTTPS, verified as in small_post_tls"),
    Scenario("paced_streams", "event", {"streams": 200}, {"streams": 1000}, runs_quick=1, runs_full=3,
             cost=(2.0, 4.0), what="concurrent streams of 50 tokens 20 ms apart"),
    Scenario("slow_consumer", "event", {"event": 32768, "total": 20_000_000},
             {"event": 32768, "total": 200_000_000}, runs_quick=1, runs_full=3, cost=(1.5, 8.0),
             what="the server offers events of 32 KiB as fast as it can; the consumer takes 1 ms per event"),
]

# Every client, one process per (client, scaling scenario, run), every level in that process.
SCALING = [
    # 7 runs: the c=10 and c=100 targets are read here, and with 3 runs one
    # slow run of either client moved a same-run ratio by 0.3x (the treq and
    # agent backends, equal to within 8% over 8 alternating runs, came out at 1.31x).
    Scenario("scale_posts", "request", {"levels": [1, 10, 100], "n": 300}, {"levels": [1, 10, 100], "n": 2000},
             runs_quick=1, runs_full=7, cost=(1.5, 4.0),
             what="CPU per request, ~1 KB posts at concurrency c (rounds of c concurrent posts)"),
    Scenario("scale_paced", "event", {"levels": [1, 100, 300], "gap_ms": 10}, {"levels": [1, 100, 1000], "gap_ms": 20},
             runs_quick=1, runs_full=2, cost=(4.0, 6.0),
             what="CPU per event with N concurrent streams of 50 tokens (20 ms apart; 10 ms in --quick)"),
    Scenario("scale_memory", "stream", {"levels": [100, 500, 1000]}, {"levels": [100, 1000, 5000]},
             runs_quick=1, runs_full=2, cost=(2.0, 8.0),
             what="memory per concurrently open stream: N streams held open after their first event, "
             "RSS growth / N"),
]

SCALING_NAMES = {sc.name: sc for sc in SCALING}
ALL_SCENARIOS = {sc.name: sc for sc in SCENARIOS + SCALING}

#: The HTTP/2 scenario (``bench/h2.py``: its own server and client runs, h2
#: against the agent backend over TLS); the key of its result among the
#: scenarios' results, whose shape is that module's.
H2 = "h2_streams"

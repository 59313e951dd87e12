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
}


@dataclass(frozen=True)
class Scenario:
    name: str
    unit: str  # "request" or "event"
    quick: dict[str, Any]
    full: dict[str, Any]
    runs_quick: int = 3
    runs_full: int = 5
    what: str = ""


SCENARIOS = [
    Scenario("small_post", "request", {"n": 300}, {"n": 2000},
             what="sequential ~1 KB JSON posts, ~1 KB JSON replies, keep-alive"),
    Scenario("parallel_50", "request", {"rounds": 6}, {"rounds": 40}, what="rounds of 50 concurrent posts"),
    Scenario("large_body", "request", {"rounds": 4}, {"rounds": 20},
             what="rounds of 10 concurrent 256 KB posts with 256 KB replies"),
    Scenario("stream_2000", "event", {"n": 2}, {"n": 10},
             what="one OpenAI-style SSE stream of 2,000 chunks, one HTTP chunk per event"),
    Scenario("stream_2000_64k", "event", {"n": 2}, {"n": 10}, what="the same body in 64 KiB HTTP chunks"),
    Scenario("paced_streams", "event", {"streams": 200}, {"streams": 1000}, runs_quick=1, runs_full=3,
             what="concurrent streams of 50 tokens 20 ms apart"),
    Scenario("slow_consumer", "event", {"event": 32768, "total": 20_000_000},
             {"event": 32768, "total": 200_000_000}, runs_quick=1, runs_full=3,
             what="the server offers events of 32 KiB as fast as it can; the consumer takes 1 ms per event"),
]

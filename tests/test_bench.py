"""The benchmark suite stays runnable: its server and the Twisted clients,
with tiny parameters, each in its own process as `nous-twisted bench` runs them.
(The figures themselves come from `nous-twisted bench`, never from tests.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nous_twisted.bench.run import SCENARIOS, run_one, start_server, summarise

TINY = {
    "small_post": {"n": 5},
    "parallel_50": {"rounds": 1},
    "large_body": {"rounds": 1},
    "stream_2000": {"n": 1},
    "stream_2000_64k": {"n": 1},
    "paced_streams": {"streams": 5},
    "slow_consumer": {"event": 32768, "total": 1_000_000},
}


@pytest.fixture(scope="module")
def bench_server() -> Iterator[str]:
    proc, base = start_server()
    yield base
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.mark.parametrize("client", ["nous_treq", "nous_agent", "treq", "agent"])
def test_every_scenario_runs(bench_server: str, client: str) -> None:
    for scenario in SCENARIOS:
        result = run_one(client, scenario.name, bench_server, TINY[scenario.name])
        assert "error" not in result, result.get("error")
        assert result["cpu_s"] > 0 and result["wall_s"] > 0
        summary = summarise([result], scenario)
        assert summary["cpu_us"]["median"] > 0
    # strict pull keeps memory flat under the slow consumer; raw Agent does not pause
    if client == "nous_agent":
        assert result["rss_growth_mb"] < 5

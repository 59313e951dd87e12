"""The h2 bench scenario runs end to end at a tiny size and reports every
figure (no speed is asserted)."""

from __future__ import annotations

import pytest

pytest.importorskip("trustme")


@pytest.mark.parametrize("server", ["coalescing", "twisted"])
def test_the_h2_scenario_runs_and_reports(server: str) -> None:
    from nous_twisted.bench.h2 import bench, report

    result = bench(sizes={"streams": 4, "events": 5, "gap": 0.001, "rounds": 1, "levels": [3], "stop": 0.2,
                          "stop_rounds": 1}, h2_server=server)
    for mode in ("h2", "agent"):
        (run,) = result["cpu"][mode]
        assert "error" not in run, run
        assert run["events"] == 4 * 6
    assert result["cpu"]["h2"][0]["handshakes"] == 1
    assert result["cpu"]["agent"][0]["handshakes"] == 4
    assert result["memory"]["h2"][3]["bytes_per_stream"] > 0
    assert result["stop"]["stopped"][0]["stopped_bytes_off_the_wire"] > 0
    text = report(result)
    for needle in ("CPU per event, whole run", "steady state", "TLS handshakes", "memory per open stream at 3",
                   "One consumer stopped", f"h2 server: {server}"):
        assert needle in text

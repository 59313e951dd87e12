"""The h2 bench scenario runs end to end at a tiny size and reports every
figure (no speed is asserted)."""

from __future__ import annotations

import pytest

pytest.importorskip("trustme")


@pytest.mark.parametrize("server", ["coalescing", "twisted"])
def test_the_h2_scenario_runs_and_reports(server: str) -> None:
    from nous_twisted.bench.h2 import bench, figures, report, weights

    sizes = {"streams": 4, "events": 5, "gap": 0.001, "rounds": 1, "levels": [3], "stop": 0.2, "stop_rounds": 1}
    steps: list[str] = []
    result = bench(sizes=sizes, h2_server=server, step=steps.append)
    # one progress step per client run, as many as the time-left estimate weighs
    assert len(steps) == len(weights(False, sizes)) == 6, steps
    for mode in ("h2", "agent"):
        (run,) = result["cpu"][mode]
        assert "error" not in run, run
        assert run["events"] == 4 * 6
    assert result["cpu"]["h2"][0]["handshakes"] == 1
    assert result["cpu"]["agent"][0]["handshakes"] == 4
    # 3 streams' RSS growth can round to 0 pages (tox -e lowest saw 0.0): reported, not sized here
    assert result["memory"]["h2"][3]["bytes_per_stream"] >= 0
    assert result["stop"]["stopped"][0]["stopped_bytes_off_the_wire"] > 0
    f = figures(result)
    assert f["handshakes"] == 1 and f["fds"] == 1
    for key in ("cpu_whole", "cpu_steady", "stopped_vs_window", "others_vs_unstopped"):
        assert f[key] is not None and f[key] > 0, key
    assert f["memory"][3] is not None and f["memory"][3] >= 0
    text = report(result)
    for needle in ("CPU per event, whole run", "steady state", "TLS handshakes", "memory per open stream at 3",
                   "One consumer stopped", f"h2 server: {server}"):
        assert needle in text


def test_the_memory_breakdown_names_what_streams_hold() -> None:
    from nous_twisted.bench.h2 import breakdown

    text = breakdown(5, "h2")
    assert text.startswith("h2, 5 streams held open after their first event (after a warm-up stream): RSS "), text
    assert "tracemalloc, per stream" in text and "objects tracked by the collector" in text
    assert "nous_twisted.h2conn.H2Stream" in text  # one per held stream

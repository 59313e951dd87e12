"""The benchmark suite stays runnable: its server and every client, with tiny
parameters, each in its own process as `nous-twisted bench` runs them, and the
report written from those numbers has the structure the docs page relies on.
(The figures themselves come from `nous-twisted bench`, never from tests: only
the shape of the results is checked here, never their size.)"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from nous_twisted.bench import report
from nous_twisted.bench.clients import CLIENTS
from nous_twisted.bench.run import SCENARIOS, run_one, start_server, summarise
from nous_twisted.bench.scenarios import LABELS

TINY = {
    "small_post": {"n": 5},
    "parallel_50": {"rounds": 1},
    "large_body": {"rounds": 1},
    "stream_2000": {"n": 1},
    "stream_2000_64k": {"n": 1},
    "paced_streams": {"streams": 5},
    "slow_consumer": {"event": 32768, "total": 1_000_000},
}

# What each scenario counts with TINY, and the figures every result carries.
COUNTS = {
    "small_post": {"requests": 5},
    "parallel_50": {"requests": 50},
    "large_body": {"requests": 10},
    "stream_2000": {"events": 2000},
    "stream_2000_64k": {"events": 2000},
    "paced_streams": {"events": 5 * 50, "streams": 5},
    "slow_consumer": {"events": math.ceil(1_000_000 / 32768)},
}
LATENCY = {"p50_ms", "p99_ms"}
EXTRA_KEYS = {
    "small_post": LATENCY,
    "parallel_50": LATENCY,
    "large_body": LATENCY,
    "stream_2000": LATENCY,
    "stream_2000_64k": LATENCY,
    "paced_streams": {"ttft_p50_ms", "ttft_p99_ms"},
    "slow_consumer": {"rss_series", "rss_growth_mb"},
}
NUMBER = r"-?\d+(?:\.\d+)?"  # RSS growth may be slightly negative
STAT = re.compile(rf"^{NUMBER} \({NUMBER}-{NUMBER}\)$")  # "median (min-max)"


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
    """scenario -> client -> the raw result of one tiny run."""
    proc, base = start_server()
    try:
        yield {sc.name: {c: run_one(c, sc.name, base, TINY[sc.name]) for c in CLIENTS} for sc in SCENARIOS}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.mark.parametrize("client", CLIENTS)
def test_every_scenario_runs(results: dict[str, dict[str, dict[str, Any]]], client: str) -> None:
    for scenario in SCENARIOS:
        result = results[scenario.name][client]
        assert "error" not in result, f"{scenario.name}: {result.get('error')}"
        where = f"{scenario.name}/{client}"
        expected = {"cpu_s", "wall_s", "peak_rss_mb"} | set(COUNTS[scenario.name]) | EXTRA_KEYS[scenario.name]
        assert set(result) == expected, where
        for key, count in COUNTS[scenario.name].items():
            assert result[key] == count, (where, key, result[key])
        for key in expected - {"rss_series"}:
            assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), (where, key)
        summary = summarise([result], scenario)
        assert set(summary) == {"cpu_us", "throughput", "peak_rss_mb", "runs"} | EXTRA_KEYS[scenario.name], where
        assert summary["runs"] == 1
        for key, stat in summary.items():
            if key not in ("runs", "rss_series"):
                # one run: its median, min and max are that run's figure
                assert set(stat) == {"median", "min", "max"} and stat["min"] == stat["median"] == stat["max"], key
        unit = "requests" if scenario.unit == "request" else "events"
        assert summary["cpu_us"]["median"] == pytest.approx(result["cpu_s"] / result[unit] * 1e6)
        assert summary["throughput"]["median"] == pytest.approx(result[unit] / result["wall_s"])


def _table(lines: list[str], start: int) -> tuple[list[str], list[list[str]], int]:
    """The Markdown table that begins at ``lines[start]``: its header cells,
    its rows' cells, and the index of the line after it."""
    def cells(line: str) -> list[str]:
        assert line.startswith("|") and line.endswith("|"), line
        return [c.strip() for c in line[1:-1].split("|")]

    header = cells(lines[start])
    assert re.fullmatch(r"\|(---\|)+", lines[start + 1]), lines[start + 1]
    assert lines[start + 1].count("---") == len(header)
    rows = []
    i = start + 2
    while i < len(lines) and lines[i].startswith("|"):
        rows.append(cells(lines[i]))
        i += 1
    return header, rows, i


def test_report_structure(
    results: dict[str, dict[str, dict[str, Any]]], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    summaries = {sc.name: {c: summarise([results[sc.name][c]], sc) for c in CLIENTS} for sc in SCENARIOS}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        # The plots need the bench extra; the Markdown does not.
        monkeypatch.setattr(report, "_plots", lambda results, out_dir: ("img/rss.png", "img/cpu.png"))
    decoders = {"nous_twisted": 200_000.0, "httpx-sse": 50_000.0}
    path = report.write_report(summaries, decoders, {"cpu": "test", "cores": "2"}, True, 12.0, str(tmp_path))
    assert path == os.path.join(str(tmp_path), "benchmarks.md")
    with open(path) as f:
        lines = f.read().split("\n")

    headings = [ln for ln in lines if ln.startswith("## ")]
    assert headings == (
        ["## Method", "## Targets"] + [f"## {sc.name}" for sc in SCENARIOS]
        + ["## Missed targets: what remains and why", "## Plots", "## Which backend to pick"]
    )
    assert lines[0] == "# Benchmarks"
    assert "Generated by `nous-twisted bench --quick` in 12 s" in lines[2]

    # The targets: one row each, a ratio (or a size) and a verdict.
    header, rows, _ = _table(lines, lines.index("| target | measured | met |"))
    assert header == ["target", "measured", "met"]
    assert len(rows) == 8
    for _target, measured, met in rows:
        # "n/a" only where a figure is missing (a CPU time of zero)
        assert (measured, met) == ("n/a", "n/a") or (
            re.fullmatch(r"\d+\.\d\dx|-?\d+\.\d MB", measured) and met in ("yes", "no")
        ), (measured, met)
    assert rows[5][0] == "SSE decoder alone, events/s vs httpx-sse's decoder (>= 2x)" and rows[5][1:] == ["4.00x", "yes"]

    for sc in SCENARIOS:
        start = lines.index(f"## {sc.name}")
        assert lines[start + 2] == f"{sc.what}. Parameters: `{sc.quick}`."
        # The figures: the columns of the scenario, in its unit; one row per client.
        header, rows, after = _table(lines, start + 4)
        extra = {
            "paced_streams": ["TTFT p50 (ms)", "TTFT p99 (ms)"],
            "slow_consumer": ["RSS growth (MB)"],
        }.get(sc.name, ["p50 (ms)", "p99 (ms)"])
        assert header == ["client", f"CPU/{sc.unit} (µs)", f"{sc.unit}s/s", *extra, "peak RSS (MB)"]
        assert [r[0] for r in rows] == [LABELS[c] for c in CLIENTS]
        for row in rows:
            assert len(row) == len(header)
            assert all(STAT.match(cell) for cell in row[1:]), row
        # The ratios: this library's two backends against every peer.
        assert lines[after + 1] == f"Ratios of CPU per {sc.unit} (this library / peer):"
        header, rows, _ = _table(lines, after + 3)
        assert header == ["", *(LABELS[p] for p in report.PEERS)]
        assert [r[0] for r in rows] == [LABELS[o] for o in report.OURS]
        for ours, row in zip(report.OURS, rows, strict=True):
            assert len(row) == len(header)
            mine = summaries[sc.name][ours]["cpu_us"]["median"]
            for peer, cell in zip(report.PEERS, row[1:], strict=True):
                theirs = summaries[sc.name][peer]["cpu_us"]["median"]
                assert cell == (f"{mine / theirs:.2f}x" if mine and theirs else "n/a"), (sc.name, ours, peer, cell)

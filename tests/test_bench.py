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
    "small_post_tls": {"n": 5},
    "stream_2000_tls": {"n": 1},
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
    "small_post_tls": {"requests": 5},
    "stream_2000_tls": {"events": 2000},
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
    "small_post_tls": LATENCY,
    "stream_2000_tls": LATENCY,
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
        + ["## HTTP/2", "## Scaling", "## Where the time goes", "## Missed targets: what remains and why", "## Plots",
           "## Which backend to pick"]
    )
    assert lines[0] == "# Benchmarks"
    assert "Generated by `nous-twisted bench --quick` in 12 s" in lines[2]

    # The targets: one row each, a ratio (or a size) and a verdict.
    header, rows, _ = _table(lines, lines.index("| target | measured | met |"))
    assert header == ["target", "measured", "met"]
    assert len(rows) == 17
    for _target, measured, met in rows:
        # "n/a" only where a figure is missing (a CPU time of zero)
        assert (measured, met) == ("n/a", "n/a") or (
            re.fullmatch(r"\d+\.\d\dx|-?\d+\.\d MB|\d+", measured) and met in ("yes", "no")
        ), (measured, met)

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


# -- issue 8: TLS, the Twisted floor, read modes, scaling, profiles, the report, where it goes ------------

TWISTED = ["nous_treq", "nous_agent", "treq", "agent", "twisted_floor"]
SCALING_TINY = {
    "scale_posts": {"levels": [1, 4], "n": 8},
    "scale_paced": {"levels": [1, 3], "gap_ms": 1},
    "scale_memory": {"levels": [2, 5]},
}


@pytest.fixture(scope="module")
def tls_bench_server() -> Iterator[str]:
    """The bench server with its TLS listener (a trustme CA made for it)."""
    from nous_twisted.bench.run import stop_server

    proc, base = start_server(tls=True)
    yield base
    stop_server(proc)


@pytest.mark.parametrize("client", TWISTED)
def test_new_scenarios_run_on_the_twisted_clients(tls_bench_server: str, client: str) -> None:
    from nous_twisted.bench.scenarios import SCALING

    for name in ("small_post_tls", "stream_2000_tls"):
        scenario = next(sc for sc in SCENARIOS if sc.name == name)
        result = run_one(client, name, tls_bench_server, TINY[name])
        assert "error" not in result, f"{name}: {result.get('error')}"
        unit = "requests" if scenario.unit == "request" else "events"
        assert result[unit] == (5 if name == "small_post_tls" else 2000)
        assert set(summarise([result], scenario)["cpu_us"]) == {"median", "min", "max"}
    for scenario in SCALING:
        result = run_one(client, scenario.name, tls_bench_server, SCALING_TINY[scenario.name])
        assert "error" not in result, f"{scenario.name}: {result.get('error')}"
        levels = SCALING_TINY[scenario.name]["levels"]
        assert list(result["levels"]) == [str(x) for x in levels]
        for level in levels:
            figures = result["levels"][str(level)]
            if scenario.name == "scale_posts":
                assert figures["requests"] == max(3, 8 // level) * level
            elif scenario.name == "scale_paced":
                assert figures["events"] == 50 * level
            else:
                assert figures["streams"] == level
                assert figures["kib_per_stream"] == pytest.approx(figures["rss_growth_bytes"] / level / 1024)
        summary = summarise([result], scenario)
        assert set(summary["levels"]) == {str(x) for x in levels}


def test_twisted_floor_runs_every_scenario(tls_bench_server: str) -> None:
    for scenario in SCENARIOS:
        result = run_one("twisted_floor", scenario.name, tls_bench_server, TINY[scenario.name])
        assert "error" not in result, f"{scenario.name}: {result.get('error')}"
        if scenario.name == "stream_2000":
            assert result["events"] == 2000


@pytest.mark.parametrize("client", ["nous_agent_iter", "nous_treq_iter", "nous_agent_accel", "nous_treq_accel_iter"])
def test_stream_variants_run(tls_bench_server: str, client: str) -> None:
    result = run_one(client, "stream_2000", tls_bench_server, {"n": 1})
    assert "error" not in result, result.get("error")
    assert result["events"] == 2000


def test_variants_set_the_accelerator_switch() -> None:
    from nous_twisted.bench.run import client_env

    assert client_env("nous_agent")["NOUS_TWISTED_NO_SPEEDUPS"] == "1"
    assert client_env("nous_treq_iter")["NOUS_TWISTED_NO_SPEEDUPS"] == "1"
    os.environ["NOUS_TWISTED_NO_SPEEDUPS"] = "1"
    try:
        assert "NOUS_TWISTED_NO_SPEEDUPS" not in client_env("nous_agent_accel")
        assert "NOUS_TWISTED_NO_SPEEDUPS" not in client_env("nous_treq_accel_iter")
    finally:
        del os.environ["NOUS_TWISTED_NO_SPEEDUPS"]


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_verifies_the_servers_certificate(tls_bench_server: str, tmp_path: Any, client: str) -> None:
    """Against a CA that did not sign the server's certificate, every client refuses."""
    import trustme

    if client in ("aiohttp", "httpx"):
        pytest.importorskip(client)
    other = os.path.join(str(tmp_path), "other-ca.pem")
    trustme.CA().cert_pem.write_to_path(other)
    result = run_one(client, "small_post_tls", tls_bench_server, {"n": 1, "ca": other})
    assert "error" in result, result
    assert re.search(r"certificate|CERTIFICATE|verif|TLS", result["error"]), result["error"][-500:]


def test_profile_groups_the_time(tls_bench_server: str) -> None:
    from nous_twisted.bench.clients import CATEGORIES

    result = run_one("nous_agent", "stream_2000", tls_bench_server, {"n": 1, "profile": True})
    assert "error" not in result, result.get("error")
    prof = result["profile"]
    assert list(prof["categories"]) == list(CATEGORIES)
    # the agent backend in pure Python: Twisted parses the HTTP, this library the SSE, orjson the JSON
    for cat in ("reactor", "HTTP parsing", "library", "JSON"):
        assert prof["categories"][cat] > 0, cat
    assert prof["total_s"] == pytest.approx(sum(prof["categories"].values()))
    assert any(where.startswith("nous_twisted.") for where, _ in prof["top"])
    lines = report.format_profile("stream_2000", "nous_agent", "event", result, top=True, unprofiled_us=5.0)
    text = "\n".join(lines)
    assert "2,000 events under cProfile" in text
    for label in ("reactor (", "HTTP parsing (", "library (", "JSON (", "other ("):
        assert f"| {label}" in text, label
    assert "Most own time" in text


def test_profile_categories() -> None:
    from nous_twisted.bench.clients import _category

    site = "/venv/lib/python3.11/site-packages/"
    assert _category(site + "twisted/internet/tcp.py", "doRead") == "reactor"
    assert _category(site + "twisted/internet/defer.py", "callback") == "reactor"
    assert _category("/usr/lib/python3.11/asyncio/selector_events.py", "_read_ready") == "reactor"
    assert _category(site + "twisted/web/_newclient.py", "dataReceived") == "HTTP parsing"
    assert _category(site + "twisted/web/http.py", "_dataReceived_BODY") == "HTTP parsing"
    assert _category("~", "<method 'feed_data' of 'httptools.parser.parser.HttpParser' objects>") == "HTTP parsing"
    assert _category("/work/x/nous_twisted/streamcore.py", "take") == "library"
    assert _category("/work/x/nous_twisted/bench/clients.py", "on") == "other"
    assert _category("~", "<built-in method orjson.loads>") == "JSON"
    assert _category("~", "<method 'recv' of '_socket.socket' objects>") == "reactor"
    assert _category(site + "treq/client.py", "request") == "other"
    assert _category(site + "twisted/protocols/tls.py", "dataReceived") == "reactor"
    assert _category(site + "twisted/protocols/basic.py", "dataReceived") == "HTTP parsing"
    assert _category(site + "twisted/web/_abnf.py", "_hexint") == "HTTP parsing"
    # any other built-in counts with its callers
    assert _category("~", "<built-in method builtins.len>") is None


def _stat(x: float) -> dict[str, float]:
    return {"median": x, "min": x, "max": x}


def _fake_results(accel: bool) -> dict[str, dict[str, Any]]:
    """Summaries for every scenario, client and variant: CPU 10 µs for every
    client, with a few set apart so that the target ratios are known."""
    from nous_twisted.bench.scenarios import SCALING

    out: dict[str, dict[str, Any]] = {}
    for sc in SCENARIOS:
        clients = list(CLIENTS) + [v for v in sc.variants if accel or "_accel" not in v]
        out[sc.name] = {
            c: {"cpu_us": _stat(10.0), "throughput": _stat(1000.0), "peak_rss_mb": _stat(50.0), "runs": 1,
                "p50_ms": _stat(1.0), "p99_ms": _stat(2.0), "ttft_p50_ms": _stat(1.0), "ttft_p99_ms": _stat(2.0),
                "rss_growth_mb": _stat(1.0), "rss_series": [[0.0, 0], [1.0, 1000]]}
            for c in clients
        }
    for sc in SCALING:
        levels = sc.full["levels"]
        out[sc.name] = {c: {"levels": {str(x): _stat(20.0) for x in levels}, "peak_rss_mb": _stat(60.0), "runs": 1}
                        for c in CLIENTS}
    out["stream_2000"]["nous_agent_iter"]["cpu_us"] = _stat(4.0)  # 0.40x aiohttp: met
    out["stream_2000"]["aiohttp"]["cpu_us"] = _stat(10.0)
    out["small_post"]["nous_agent"]["cpu_us"] = _stat(9.0)  # 0.90x raw Agent: missed
    out["scale_memory"]["nous_treq"]["levels"]["1000"] = _stat(30.0)  # 1.50x aiohttp's 20: missed
    del out["small_post_tls"]["agent"]  # a missing figure: n/a
    out["h2_streams"] = _fake_h2()
    return out


def _fake_h2() -> dict[str, Any]:
    """A result of bench/h2.py's bench(): h2 at 0.50x the agent backend's CPU
    over the whole run, 1.20x steady (missed), memory 0.05x at 100 and a
    missing figure at 1000, one handshake and fd, the stopped stream within
    its window, the others 1.02x."""
    def cpu(whole: float, steady: float, handshakes: int) -> dict[str, Any]:
        return {"events": 20100, "cpu_per_event_us": whole, "steady_cpu_per_event_us": steady, "wall_s": 2.1,
                "fds_added": handshakes, "handshakes": handshakes}

    return {
        "streams": 100, "events": 200, "gap_s": 0.01, "rounds": 1, "h2_server": "coalescing",
        "window": 65536, "frame": 16384,
        "cpu": {"h2": [cpu(20.0, 36.0, 1)], "agent": [cpu(40.0, 30.0, 100)]},
        "memory": {"h2": {"100": {"bytes_per_stream": 5000.0, "fds_added": 1}, "1000": {"error": "exit 1"}},
                   "agent": {"100": {"bytes_per_stream": 100000.0, "fds_added": 100},
                             "1000": {"bytes_per_stream": 90000.0, "fds_added": 1000}}},
        "stop": {"stop_s": 5.0,
                 "stopped": [{"others_median_s": 2.04, "others_max_s": 2.1, "stopped_bytes_off_the_wire": 65536}],
                 "unstopped": [{"others_median_s": 2.0, "others_max_s": 2.05, "stopped_bytes_off_the_wire": 0}]},
    }


def _profile_result() -> dict[str, Any]:
    from nous_twisted.bench.clients import CATEGORIES

    cats = dict(zip(CATEGORIES, [0.001, 0.002, 0.004, 0.0005, 0.0005], strict=True))
    return {"events": 2000, "requests": 0, "cpu_s": 0.02, "wall_s": 0.03, "peak_rss_mb": 50.0,
            "profile": {"categories": cats, "total_s": 0.008, "top": [["nous_twisted.sse:feed", 0.001]],
                        "other": [["treq.client", 0.0004]]}}


EXPECTED_TARGETS = [
    "stream_2000, agent backend, async for: CPU/event vs aiohttp (<= 0.85x)",
    "stream_2000, agent backend, consume(): CPU/event vs aiohttp (<= 0.85x)",
    "stream_2000, treq backend, async for: CPU/event vs aiohttp (<= 0.85x)",
    "stream_2000, treq backend, consume(): CPU/event vs aiohttp (<= 0.85x)",
    "small_post, agent backend: CPU/request vs raw Agent (<= 0.85x)",
    "small_post, treq backend: CPU/request vs raw treq (<= 0.90x)",
    "parallel_50, agent backend: CPU/request vs raw Agent (<= 0.85x)",
    "parallel_50, treq backend: CPU/request vs raw treq (<= 0.90x)",
    "small_post, agent backend: CPU/request vs aiohttp (<= 1.25x)",
    "small_post_tls, agent backend: CPU/request vs raw Agent (<= 0.75x)",
    "paced_streams, agent backend: CPU/event vs aiohttp (<= 1.15x)",
    "posts at c=10, agent backend: CPU/request vs aiohttp (<= 1.40x)",
    "posts at c=10, treq backend: CPU/request vs agent backend (<= 1.20x)",
    "posts at c=100, agent backend: CPU/request vs aiohttp (<= 1.40x)",
    "posts at c=100, treq backend: CPU/request vs agent backend (<= 1.20x)",
    "memory per open stream (1000 open), agent backend vs aiohttp (<= 1.25x)",
    "memory per open stream (1000 open), treq backend vs aiohttp (<= 1.25x)",
]
H2_TARGETS = [
    "h2_streams, h2 backend: CPU/event vs agent backend, whole run (<= 1.00x)",
    "h2_streams, h2 backend: CPU/event vs agent backend, steady state (<= 1.15x)",
    "memory per open stream (100 open), h2 backend vs agent backend (<= 0.10x)",
    "memory per open stream (1000 open), h2 backend vs agent backend (<= 0.10x)",
    "h2_streams, h2 backend: TLS handshakes for 100 streams to one host (<= 1)",
    "h2_streams, h2 backend: fds added for 100 streams to one host (<= 1)",
    "h2_streams, one consumer stopped among 100: its bytes off the wire vs window + one frame (<= 1.00x)",
    "h2_streams, one consumer stopped among 100: the others' completion vs no stop (<= 1.05x)",
]
ACCEL_TARGETS = [
    f"stream_2000, {b} backend accelerated, {how}: CPU/event vs {peer}"
    for b in ("agent", "treq") for how in ("async for", "consume()")
    for peer in ("aiohttp (<= 0.60x)", "Twisted floor (<= 1.25x)")
]


def _write(tmp_path: Any, accel: str | None, quick: bool = False) -> list[str]:
    results = _fake_results(accel is not None)
    profiles = [{"scenario": "stream_2000", "client": "nous_agent", "unit": "event", "result": _profile_result()}]
    decoders = {"nous_twisted": 200_000.0, "httpx-sse": 50_000.0}
    path = report.write_report(results, decoders, {"cpu": "test", "cores": "2"}, quick, 12.0, str(tmp_path),
                               profiles=profiles, accel=accel)
    with open(path) as f:
        return f.read().split("\n")


def _rows_after(lines: list[str], marker: str) -> list[list[str]]:
    """The rows of the first Markdown table after the line ``marker``."""
    i = lines.index(marker) + 1
    while not lines[i].startswith("|"):
        i += 1
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line[1:-1].split("|")])
    return rows


def test_report_has_every_target_scaling_and_profile(tmp_path: Any) -> None:
    from nous_twisted.bench.scenarios import SCALING

    lines = _write(tmp_path, "httptools 0.9.0")
    headings = [ln for ln in lines if ln.startswith("## ")]
    for h in ("## Targets", "## Scaling", "## Where the time goes", "## Missed targets: what remains and why"):
        assert h in headings, h
    for sc in SCENARIOS:
        assert f"## {sc.name}" in headings
    assert headings.index("## Targets") < headings.index("## Scaling") < headings.index("## Where the time goes")

    rows = _rows_after(lines, "## Targets")
    labels = [r[0] for r in rows]
    assert sorted(labels) == sorted(EXPECTED_TARGETS + ACCEL_TARGETS + H2_TARGETS)
    got = {r[0]: (r[1], r[2]) for r in rows}
    assert got["stream_2000, agent backend, async for: CPU/event vs aiohttp (<= 0.85x)"] == ("0.40x", "yes")
    assert got["small_post, agent backend: CPU/request vs raw Agent (<= 0.85x)"] == ("0.90x", "no")
    assert got["memory per open stream (1000 open), treq backend vs aiohttp (<= 1.25x)"] == ("1.50x", "no")
    assert got["small_post_tls, agent backend: CPU/request vs raw Agent (<= 0.75x)"] == ("n/a", "n/a")
    assert got["stream_2000, agent backend, consume(): CPU/event vs aiohttp (<= 0.85x)"] == ("1.00x", "no")
    # the h2 rows: same-run ratios, counts, and a missing figure
    h2 = [got[label] for label in H2_TARGETS]
    assert h2 == [("0.50x", "yes"), ("1.20x", "no"), ("0.05x", "yes"), ("n/a", "n/a"), ("1", "yes"), ("1", "yes"),
                  ("0.80x", "yes"), ("1.02x", "yes")]
    assert any("steady state (<= 1.15x): measured 1.20x" in ln for ln in missed_lines(lines))
    # the h2 section: its own table, after the scenarios and before the scaling tables
    section = lines[lines.index("## HTTP/2") : lines.index("## Scaling")]
    table = _rows_after(section, next(ln for ln in section if ln.startswith("### HTTP/2: 100 streams x 200 events")))
    assert [r[0] for r in table] == ["CPU per event, whole run (µs)", "CPU per event, steady state (µs)",
                                     "TLS handshakes", "fds added at peak", "memory per open stream at 100 (KiB)"]
    assert table[0][1:] == ["20.0", "40.0", "0.50x"] and table[2][1:3] == ["1", "100"]
    assert any("One consumer stopped 5 s among 100" in ln and "65,536 bytes" in ln for ln in section)
    # the missed ones are listed, the met one is not
    missed = lines[lines.index("## Missed targets: what remains and why") :]
    assert any("small_post, agent backend: CPU/request vs raw Agent (<= 0.85x): measured 0.90x" in ln for ln in missed)
    assert not any("async for: CPU/event vs aiohttp (<= 0.85x): measured" in ln and "agent" in ln for ln in missed)

    # scaling: a table per scaling scenario, a column per level, a row per client
    for sc in SCALING:
        heading = next(ln for ln in lines if ln.startswith(f"### {sc.name}"))
        table = _rows_after(lines, heading)
        assert [r[0] for r in table] == [LABELS[c] for c in CLIENTS]
        assert all(len(r) == 2 + len(sc.full["levels"]) for r in table)
    memory = _rows_after(lines, next(ln for ln in lines if ln.startswith("### scale_memory")))
    assert memory[CLIENTS.index("nous_treq")][1:] == ["20.0 (20.0-20.0)", "30.0 (30.0-30.0)", "20.0 (20.0-20.0)",
                                                      "1.00x"]  # vs aiohttp at 5000
    assert os.path.exists(os.path.join(str(tmp_path), "img", "bench_scaling.png"))
    assert "![Scaling](img/bench_scaling.png)" in lines

    # where the time goes: each category's row, in the profile's order
    where = lines[lines.index("## Where the time goes") :]
    table = _rows_after(where, next(ln for ln in where if ln.startswith("**stream_2000, nous_twisted agent**")))
    assert [r[0].split(" (")[0] for r in table] == ["reactor", "HTTP parsing", "library", "JSON", "other"]
    assert [r[2] for r in table] == ["12%", "25%", "50%", "6%", "6%"]
    assert table[2][3] == "5.00"  # half of the scenario's unprofiled 10 µs/event
    # the variants' own table under stream_2000, with their ratios
    assert any(ln.startswith("| nous_twisted agent, accelerated, async for |") for ln in lines)
    assert "Accelerator: httptools 0.9.0 (installed)" in "\n".join(lines)


def missed_lines(lines: list[str]) -> list[str]:
    return lines[lines.index("## Missed targets: what remains and why") :]


def test_report_without_the_accelerator_leaves_its_rows_out(tmp_path: Any) -> None:
    lines = _write(tmp_path, None, quick=True)
    text = "\n".join(lines)
    assert "accelerator: not installed" in text.lower()
    labels = [r[0] for r in _rows_after(lines, "## Targets")]
    assert sorted(labels) == sorted(EXPECTED_TARGETS + H2_TARGETS)
    assert "accelerated" not in "\n".join(ln for ln in lines if ln.startswith("|"))
    assert "This is a `--quick` run" in text


@pytest.mark.parametrize("h2", [{"skipped": "the http2 extra is not installed (pip install 'nous-twisted[http2]')"},
                                {"error": "RuntimeError: the h2 bench server did not start"}])
def test_report_says_when_the_h2_scenario_did_not_run(tmp_path: Any, h2: dict[str, Any]) -> None:
    results = _fake_results(False)
    results["h2_streams"] = h2
    path = report.write_report(results, {"nous_twisted": 2.0, "httpx-sse": 1.0}, {"cpu": "test"}, True, 1.0,
                               str(tmp_path))
    with open(path) as f:
        lines = f.read().split("\n")
    section = lines[lines.index("## HTTP/2") : lines.index("## Scaling")]
    labels = [r[0] for r in _rows_after(lines, "## Targets")]
    if "skipped" in h2:
        assert any("was skipped: the http2 extra is not installed" in ln and "nous-twisted[http2]" in ln
                   for ln in section), section
        assert not any("h2 backend" in label for label in labels)
    else:
        assert any("failed: RuntimeError: the h2 bench server did not start" in ln for ln in section), section
        # its targets are listed, unmeasured
        assert {r[0]: r[1] for r in _rows_after(lines, "## Targets") if r[0] in H2_TARGETS} == dict.fromkeys(
            H2_TARGETS, "n/a")


def test_h2_weights_match_its_runs() -> None:
    from nous_twisted.bench import h2

    for quick in (True, False):
        size = h2.sizes_for(quick)
        assert len(h2.weights(quick)) == 2 * size["rounds"] + 2 * len(size["levels"]) + 2 * size["stop_rounds"]
        assert size["levels"] == [100, 1000] and size["streams"] == 100
    assert h2.FULL["events"] == 200 and h2.FULL["stop"] == 5.0


def test_plan_runs_every_client_everywhere_and_variants_where_named() -> None:
    from nous_twisted.bench.run import plan
    from nous_twisted.bench.scenarios import SCALING

    for accel in (None, "httptools 0.9.0"):
        jobs = plan(quick=True, runs=None, accel=accel)
        runs = {(j.scenario.name, j.client) for j in jobs if not j.profile}
        for sc in SCENARIOS + SCALING:
            assert {c for s, c in runs if s == sc.name} >= set(CLIENTS), sc.name
        stream = {c for s, c in runs if s == "stream_2000"} - set(CLIENTS)
        assert stream == ({"nous_agent_iter", "nous_treq_iter"} | (
            {"nous_agent_accel", "nous_treq_accel", "nous_agent_accel_iter", "nous_treq_accel_iter"} if accel else set()))
        profiles = [(j.scenario.name, j.client) for j in jobs if j.profile]
        assert ("stream_2000", "nous_agent") in profiles and ("small_post", "nous_agent") in profiles
        assert (("stream_2000", "nous_agent_accel") in profiles) == bool(accel)
        assert all(j.params is j.scenario.quick for j in jobs)


def test_runs_are_interleaved_round_by_round_within_a_scenario() -> None:
    """Every client's first run of a scenario comes before any client's
    second, so that load changes during the scenario fall on all alike."""
    from nous_twisted.bench.run import interleaved, plan

    jobs = plan(quick=False, runs=None, accel=None)
    order = interleaved(jobs)
    assert sorted(map(id, order)) == sorted(id(j) for j in jobs for _ in range(1 if j.profile else j.runs))
    small = [j.client for j in order if j.scenario.name == "small_post" and not j.profile]
    n = len(CLIENTS)
    runs = next(j.runs for j in jobs if j.scenario.name == "small_post" and not j.profile)
    assert runs >= 2 and len(small) == n * runs
    assert small[:n] == small[n : 2 * n] and set(small[:n]) == set(CLIENTS)
    # the scenarios keep their order, and profiled jobs come where the plan puts them (last)
    names = [j.scenario.name for j in order if not j.profile]
    assert [k for i, k in enumerate(names) if i == 0 or names[i - 1] != k] == list(
        dict.fromkeys(j.scenario.name for j in jobs if not j.profile))
    assert [j.profile for j in order][-sum(j.profile for j in jobs):] == [True] * sum(j.profile for j in jobs)


def test_progress_estimates_the_time_left() -> None:
    import io

    from nous_twisted.bench.run import Progress, _duration

    now = [100.0]
    out = io.StringIO()
    p = Progress([1.0, 1.0, 4.0], clock=lambda: now[0], out=out)
    assert p.eta() == 6.0  # before any step: the weights themselves
    now[0] += 4.0  # the first step took 4 s for a weight of 1: four times slower than thought
    p.step("a")
    assert p.eta() == pytest.approx(20.0)
    assert "~20s left" in out.getvalue() and "1/3" in out.getvalue()
    now[0] += 4.0
    p.step("b")
    assert p.eta() == pytest.approx(16.0)
    now[0] += 100.0
    p.step("c")
    assert "3/3" in out.getvalue() and "done" in out.getvalue() and out.getvalue().endswith("\n")
    assert _duration(59.4) == "59s" and _duration(61) == "1m01s" and _duration(3600) == "60m00s"


# -- where the report goes -------------------------------------------------------------------------------


def _checkout(directory: Any, name: str = "nous-twisted", package: bool = True) -> str:
    d = str(directory)
    with open(os.path.join(d, "setup.cfg"), "w") as f:
        f.write(f"[metadata]\nname = {name}\nversion = 0.1.0\n")
    if package:
        os.mkdir(os.path.join(d, "nous_twisted"))
    return d


def test_default_output_is_docs_only_in_this_checkout(tmp_path: Any) -> None:
    from nous_twisted.bench.run import default_out_dir, is_checkout

    plain = tmp_path / "elsewhere"
    plain.mkdir()
    assert not is_checkout(str(plain))
    assert default_out_dir(str(plain)) == os.path.join(str(plain), "nous-twisted-bench")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _checkout(checkout)
    assert is_checkout(str(checkout))
    assert default_out_dir(str(checkout)) == os.path.join(str(checkout), "docs")
    # another project's setup.cfg, or ours without the package: not this checkout
    other = tmp_path / "other"
    other.mkdir()
    _checkout(other, name="nous-twisted-extras")
    assert not is_checkout(str(other))
    nopkg = tmp_path / "nopkg"
    nopkg.mkdir()
    _checkout(nopkg, package=False)
    assert not is_checkout(str(nopkg))
    # the project's own checkout (where the tests run from) is one
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert is_checkout(root)


def test_an_existing_report_is_never_replaced_without_force(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from nous_twisted.bench.run import check_out_dir
    from nous_twisted.cli import main

    out = str(tmp_path)
    assert check_out_dir(os.path.join(out, "new"), force=False) is None
    report_path = os.path.join(out, "benchmarks.md")
    with open(report_path, "w") as f:
        f.write("earlier report")
    problem = check_out_dir(out, force=False)
    assert problem is not None and "--force" in problem and report_path in problem
    assert check_out_dir(out, force=True) is None
    a_file = os.path.join(out, "file")
    with open(a_file, "w") as f:
        f.write("x")
    assert "not a directory" in (check_out_dir(a_file, force=True) or "")
    # the command refuses before running anything, and leaves the report alone
    assert main(["bench", "--quick", "--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    with open(report_path) as f:
        assert f.read() == "earlier report"


def test_default_output_outside_a_checkout_refuses_to_replace_too(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nous_twisted.bench.run import main

    folder = tmp_path / "nous-twisted-bench"
    folder.mkdir()
    (folder / "benchmarks.md").write_text("kept")
    monkeypatch.chdir(tmp_path)
    assert main(quick=True) == 2
    assert "nous-twisted-bench" in capsys.readouterr().err
    assert (folder / "benchmarks.md").read_text() == "kept"


def test_profile_refuses_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    from nous_twisted.cli import main

    assert main(["bench", "--profile", "scale_memory"]) == 2
    assert "small_post" in capsys.readouterr().err


def test_the_h2_scenario_is_skipped_without_the_http2_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from nous_twisted.bench import run

    assert run.h2_unavailable() is None  # the test environment has the extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h2" else real(name, *a))
    why = run.h2_unavailable()
    assert why is not None and "pip install 'nous-twisted[http2]'" in why

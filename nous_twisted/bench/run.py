"""``nous-twisted bench``: run every scenario for every client and write the report.

The server runs in its own process and answers from pre-built bytes; each
(client, scenario, run) runs in a fresh process; each figure is the median of
the runs, with min and max.  The report (Markdown and two PNG plots) is
written from these numbers only.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson

from .clients import CLIENTS
from .scenarios import SCENARIOS, Scenario


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.start
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.0f}s {label:<40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nous_twisted.bench.server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the benchmark server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def run_one(client: str, scenario: str, base: str, params: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "nous_twisted.bench.clients", client, scenario, base, orjson.dumps(params).decode()],
        capture_output=True, text=True, timeout=900,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"exit {out.returncode}: {out.stderr[-2000:]}"}
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


def decoder_alone(repeat: int) -> dict[str, float]:
    """Events per second of the SSE decoders alone, on the same bytes."""
    from httpx._decoders import LineDecoder, TextDecoder
    from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder

    from ..sse import SSEParser
    from .server import SSE_BODY

    chunks = [SSE_BODY[i : i + 65536] for i in range(0, len(SSE_BODY), 65536)]
    n_events = SSE_BODY.count(b"\n\n")

    def ours() -> int:
        p = SSEParser()
        return sum(len(p.feed(c)) for c in chunks)

    def httpx_sse() -> int:
        # what aiter_sse runs on the body bytes: text decoding, line
        # splitting, then the SSE decoder, line by line
        text, lines, sse = TextDecoder("utf-8"), LineDecoder(), HttpxSSEDecoder()
        n = 0
        for c in chunks:
            for line in lines.decode(text.decode(c)):
                if sse.decode(line.rstrip("\n")) is not None:
                    n += 1
        return n

    out: dict[str, float] = {}
    for name, fn in (("nous_twisted", ours), ("httpx-sse", httpx_sse)):
        assert fn() == n_events, name
        best = float("inf")
        for _ in range(repeat):
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        out[name] = n_events / best
    return out


def summarise(runs: list[dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0].get("error", "no run") if runs else "no run"}
    units = "requests" if scenario.unit == "request" else "events"

    def stat(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    s: dict[str, Any] = {
        "cpu_us": stat([r["cpu_s"] / r[units] * 1e6 for r in good]),
        "throughput": stat([r[units] / r["wall_s"] for r in good]),
        "peak_rss_mb": stat([r["peak_rss_mb"] for r in good]),
        "runs": len(good),
    }
    for key in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "rss_growth_mb"):
        if key in good[0]:
            s[key] = stat([r[key] for r in good])
    if "rss_series" in good[0]:
        s["rss_series"] = good[len(good) // 2]["rss_series"]
    return s


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("twisted", "treq", "aiohttp", "httpx", "httpx_sse", "orjson"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
        except Exception:
            versions[mod] = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        **versions,
    }


def main(quick: bool = False, out_dir: str = "docs", runs: int | None = None) -> int:
    server, base = start_server()
    results: dict[str, dict[str, Any]] = {}
    try:
        plan = [(sc, c) for sc in SCENARIOS for c in CLIENTS]
        total = sum((runs or (sc.runs_quick if quick else sc.runs_full)) for sc, _ in plan)
        progress = Progress(total)
        started = time.monotonic()
        for sc, client in plan:
            n = runs or (sc.runs_quick if quick else sc.runs_full)
            params = sc.quick if quick else sc.full
            rs = []
            for _ in range(n):
                rs.append(run_one(client, sc.name, base, params))
                progress.step(f"{sc.name} {client}")
            results.setdefault(sc.name, {})[client] = summarise(rs, sc)
        decoders = decoder_alone(3 if quick else 10)
        elapsed = time.monotonic() - started
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    from .report import write_report

    path = write_report(results, decoders, machine(), quick, elapsed, out_dir)
    print(f"report written to {path} ({elapsed:.0f} s)")
    return 0

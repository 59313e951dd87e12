"""``nous-twisted bench``: run every scenario for every client and write the report.

The server runs in its own process and answers from pre-built bytes; each
(client, scenario, run) runs in a fresh process; each figure is the median of
the runs, with min and max.  The report (Markdown and two PNG plots) is
written from these numbers only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from .clients import CLIENTS
from .scenarios import ALL_SCENARIOS, H2, SCALING, SCALING_NAMES, SCENARIOS, Scenario
from .spawn import make_ca, spawn

REPORT = "benchmarks.md"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """A one-line progress bar with the time left: each step has a weight (its
    rough cost in seconds); the time left is the weight still to run at the
    pace measured so far (at the weights' own pace before the first step)."""

    def __init__(self, weights: list[float], clock: Callable[[], float] = time.monotonic, out: Any = None) -> None:
        self.weights = weights
        self.total = len(weights)
        self.done = 0
        self.done_weight = 0.0
        self.clock = clock
        self.out = out if out is not None else sys.stderr
        self.start = clock()

    def eta(self) -> float:
        """Seconds left, estimated."""
        remaining = sum(self.weights[self.done :])
        if self.done_weight <= 0:
            return remaining
        return remaining * (self.clock() - self.start) / self.done_weight

    def line(self, label: str) -> str:
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = self.clock() - self.start
        left = "done" if self.done == self.total else f"~{_duration(self.eta())} left"
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{_duration(elapsed):>6} {left:<13} {label:<44}")

    def step(self, label: str) -> None:
        self.done_weight += self.weights[self.done]
        self.done += 1
        self.out.write("\r" + self.line(label))
        self.out.flush()
        if self.done == self.total:
            self.out.write("\n")


# http base URL of a running bench server -> (its https base URL, the CA's PEM file)
_TLS: dict[str, tuple[str, str]] = {}
# http base URL -> the server's process, to say so when it has died
_SERVERS: dict[str, subprocess.Popen[str]] = {}


def start_server(tls: bool = True) -> tuple[subprocess.Popen[str], str]:
    """Start the bench server; its http base URL.  With ``tls`` it also listens
    with TLS, its certificate (for 127.0.0.1 and localhost) signed by a CA made
    for this run; :func:`run_one` sends the TLS scenarios there."""
    cmd = [sys.executable, "-m", "nous_twisted.bench.server"]
    ca_pem = None
    if tls:
        chain, ca_pem = make_ca("nous-twisted-bench-ca-", "127.0.0.1", "localhost")
        cmd += ["--tls", chain]
    proc, words = spawn(cmd, "the benchmark server")
    base = f"http://127.0.0.1:{int(words[1])}"
    if ca_pem is not None:
        _TLS[base] = (f"https://127.0.0.1:{int(words[3])}", ca_pem)
    _SERVERS[base] = proc
    return proc, base


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def client_env(client: str) -> dict[str, str]:
    """This library's clients run in pure Python unless they are an
    ``_accel`` variant, which runs with the optional accelerator when it is
    installed (whatever the caller's environment says)."""
    env = dict(os.environ)
    if client.startswith("nous_") and "_accel" not in client:
        env["NOUS_TWISTED_NO_SPEEDUPS"] = "1"
    else:
        env.pop("NOUS_TWISTED_NO_SPEEDUPS", None)
    return env


def run_one(client: str, scenario: str, base: str, params: dict[str, Any]) -> dict[str, Any]:
    """One (client, scenario) run in a fresh process; its result, or ``{"error": ...}``."""
    server = _SERVERS.get(base)
    if server is not None and server.poll() is not None:
        return {"error": f"the bench server at {base} has exited (code {server.returncode})"}
    sc = ALL_SCENARIOS.get(scenario)
    if sc is not None and sc.tls:
        if base not in _TLS:
            return {"error": f"{scenario} needs the server's TLS listener: start_server(tls=True)"}
        base, ca = _TLS[base]
        params = {"ca": ca, **params}  # an explicit "ca" wins (the tests give a wrong one)
    out = subprocess.run(
        [sys.executable, "-m", "nous_twisted.bench.clients", client, scenario, base, orjson.dumps(params).decode()],
        capture_output=True, text=True, timeout=900, env=client_env(client),
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"exit {out.returncode}: {out.stderr[-2000:]}"}
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


def accelerator() -> str | None:
    """The optional accelerator as installed ("httptools 0.6.1"), or None."""
    if importlib.util.find_spec("httptools") is None:
        return None
    try:
        return f"httptools {importlib.metadata.version('httptools')}"
    except importlib.metadata.PackageNotFoundError:
        return "httptools"


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


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0].get("error", "no run") if runs else "no run"}
    if scenario.name in SCALING_NAMES:
        return _summarise_levels(good, scenario)
    units = "requests" if scenario.unit == "request" else "events"
    stat = _stat

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


def _summarise_levels(good: list[dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    """A scaling scenario: per level, CPU per request or event (µs), or KiB per open stream."""
    levels: dict[str, dict[str, float]] = {}
    for level in good[0]["levels"]:
        if scenario.unit == "stream":
            values = [r["levels"][level]["kib_per_stream"] for r in good]
        else:
            units = "requests" if scenario.unit == "request" else "events"
            values = [r["levels"][level]["cpu_s"] / r["levels"][level][units] * 1e6 for r in good]
        levels[level] = _stat(values)
    return {"levels": levels, "peak_rss_mb": _stat([r["peak_rss_mb"] for r in good]), "runs": len(good)}


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


def is_checkout(directory: str) -> bool:
    """Whether ``directory`` is this project's checkout: its setup.cfg names
    nous-twisted and it holds the nous_twisted package."""
    try:
        with open(os.path.join(directory, "setup.cfg")) as f:
            named = re.search(r"^name\s*=\s*nous-twisted\s*$", f.read(), re.MULTILINE) is not None
    except OSError:
        return False
    return named and os.path.isdir(os.path.join(directory, "nous_twisted"))


def default_out_dir(directory: str) -> str:
    """``docs/`` in this project's checkout, else a ``nous-twisted-bench/`` folder."""
    return os.path.join(directory, "docs" if is_checkout(directory) else "nous-twisted-bench")


def check_out_dir(out_dir: str, force: bool) -> str | None:
    """Why the report may not be written to ``out_dir`` (an existing report
    without ``force``, or a file in the way), or None."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        return f"{out_dir} exists and is not a directory"
    report = os.path.join(out_dir, REPORT)
    if os.path.exists(report) and not force:
        return f"{report} already exists: pass --force to replace it, or --out DIR to write elsewhere"
    return None


@dataclass
class Job:
    scenario: Scenario
    client: str
    runs: int
    quick: bool
    profile: bool = False

    @property
    def params(self) -> dict[str, Any]:
        return self.scenario.quick if self.quick else self.scenario.full

    @property
    def weight(self) -> float:
        """Rough seconds per run, for the time-left estimate."""
        return self.scenario.cost[0 if self.quick else 1]


# The profiles the report shows: (scenario, client); the accelerated one only when it is installed.
PROFILED = (("stream_2000", "nous_agent"), ("small_post", "nous_agent"), ("stream_2000", "nous_agent_accel"))


def plan(quick: bool, runs: int | None, accel: str | None) -> list[Job]:
    """Every (scenario, client) with its runs, in the order they run."""
    jobs = []
    for sc in SCENARIOS + SCALING:
        n = runs or (sc.runs_quick if quick else sc.runs_full)
        for client in CLIENTS + tuple(v for v in sc.variants if accel or "_accel" not in v):
            jobs.append(Job(sc, client, n, quick))
    for name, client in PROFILED:
        if accel or "_accel" not in client:
            jobs.append(Job(ALL_SCENARIOS[name], client, 1, quick, profile=True))
    return jobs


def interleaved(jobs: list[Job]) -> list[Job]:
    """The runs in the order they go: within a scenario, round by round (one
    run of every client, then the next round), so that a change in the
    machine's load during a scenario falls on every client alike and the
    same-run ratios stay fair; each job appears once per run.  Profiled jobs
    keep their place."""
    order: list[Job] = []
    i = 0
    while i < len(jobs):
        job = jobs[i]
        if job.profile:
            order.append(job)
            i += 1
            continue
        group = [job]
        i += 1
        while i < len(jobs) and not jobs[i].profile and jobs[i].scenario.name == job.scenario.name:
            group.append(jobs[i])
            i += 1
        for r in range(max(j.runs for j in group)):
            order.extend(j for j in group if r < j.runs)
    return order


def h2_unavailable() -> str | None:
    """Why the HTTP/2 scenario cannot run here (the ``http2`` extra missing), or None."""
    if importlib.util.find_spec("h2") is None:
        return "the http2 extra is not installed (pip install 'nous-twisted[http2]')"
    return None


def run_h2(quick: bool, step: Callable[[str], None]) -> dict[str, Any]:
    """The HTTP/2 scenario (``bench/h2.py``: its own server, h2 against the
    agent backend over TLS): its result, or ``{"error": ...}``."""
    from . import h2 as h2_bench

    try:
        return h2_bench.bench(quick, step=step)
    except Exception as e:  # the rest of the report is still worth writing
        return {"error": f"{type(e).__name__}: {e}"}


def profile_one(server_base: str, scenario: Scenario, client: str, params: dict[str, Any]) -> dict[str, Any]:
    """One profiled run: the result with its ``profile`` breakdown."""
    return run_one(client, scenario.name, server_base, dict(params, profile=True))


def main(quick: bool = False, out_dir: str | None = None, runs: int | None = None, force: bool = False) -> int:
    out_dir = out_dir or default_out_dir(os.getcwd())
    problem = check_out_dir(out_dir, force)
    if problem:
        print(f"nous-twisted bench: {problem}", file=sys.stderr)
        return 2
    replaced = os.path.exists(os.path.join(out_dir, REPORT))
    os.makedirs(out_dir, exist_ok=True)
    accel = accelerator()
    print(f"nous-twisted bench: writing {os.path.join(out_dir, REPORT)}"
          + (" (replacing the one there)" if replaced else "")
          + f"; accelerator: {accel or 'not installed'}", file=sys.stderr)
    jobs = plan(quick, runs, accel)
    h2_missing = h2_unavailable()
    server, base = start_server()
    results: dict[str, dict[str, Any]] = {}
    profiles: list[dict[str, Any]] = []
    try:
        from . import h2 as h2_bench

        h2_weights = [] if h2_missing else h2_bench.weights(quick)
        progress = Progress([j.weight for j in jobs for _ in range(j.runs)] + h2_weights)
        started = time.monotonic()
        runs_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for job in interleaved(jobs):
            if job.profile:
                r = profile_one(base, job.scenario, job.client, job.params)
                progress.step(f"profile {job.scenario.name} {job.client}")
                profiles.append({"scenario": job.scenario.name, "client": job.client, "unit": job.scenario.unit,
                                 "result": r})
                continue
            rs = runs_of.setdefault((job.scenario.name, job.client), [])
            rs.append(run_one(job.client, job.scenario.name, base, job.params))
            progress.step(f"{job.scenario.name} {job.client}")
            if len(rs) == job.runs:
                results.setdefault(job.scenario.name, {})[job.client] = summarise(rs, job.scenario)
        results[H2] = run_h2(quick, progress.step) if h2_missing is None else {"skipped": h2_missing}
        decoders = decoder_alone(3 if quick else 10)
        elapsed = time.monotonic() - started
    finally:
        stop_server(server)
    from .report import write_report

    path = write_report(results, decoders, machine(), quick, elapsed, out_dir, profiles=profiles, accel=accel)
    print(f"report written to {path}" + (" (replaced the previous one)" if replaced else "") + f" ({elapsed:.0f} s)")
    return 0


def profile_main(scenario: str, client: str, quick: bool = False) -> int:
    """``nous-twisted bench --profile SCENARIO``: where the time goes, printed."""
    from .report import format_profile

    sc = ALL_SCENARIOS.get(scenario)
    if sc is None or sc.name in SCALING_NAMES:
        names = ", ".join(s.name for s in SCENARIOS)
        print(f"nous-twisted bench: --profile takes one of {names}, not {scenario!r}", file=sys.stderr)
        return 2
    server, base = start_server()
    try:
        r = profile_one(base, sc, client, sc.quick if quick else sc.full)
    finally:
        stop_server(server)
    if "error" in r:
        print(f"nous-twisted bench: the profiled run failed:\n{r['error']}", file=sys.stderr)
        return 1
    print("\n".join(format_profile(sc.name, client, sc.unit, r, top=True)))
    return 0

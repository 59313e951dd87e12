"""Writing ``benchmarks.md`` and its plots from one run's numbers: the target
table (computed by :func:`targets`), one section per scenario, the scaling
tables, where the time goes (cProfile breakdowns, :func:`format_profile`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .clients import CATEGORIES, CLIENTS
from .scenarios import H2, LABELS, SCALING, SCENARIOS

OURS = ("nous_treq", "nous_agent")
PEERS = ("treq", "agent", "aiohttp", "httpx", "floor", "twisted_floor")


def _cpu(results: dict[str, Any], scenario: str, client: str) -> float | None:
    r = results.get(scenario, {}).get(client, {})
    return r["cpu_us"]["median"] if "cpu_us" in r else None


def _level(results: dict[str, Any], scenario: str, client: str, level: int) -> float | None:
    """A scaling scenario's median at one level (µs per unit, or KiB per stream)."""
    r = results.get(scenario, {}).get(client, {}).get("levels", {}).get(str(level))
    return r["median"] if r else None


@dataclass(frozen=True)
class Target:
    """One row of the target table: ``value`` (a ratio of two medians of the
    same run, or None when a figure is missing) against ``limit``."""

    label: str
    value: float | None
    limit: float
    at_least: bool = False
    #: "x" for a ratio; "" for a count (handshakes, fds)
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def cells(self) -> tuple[str, str, str]:
        if self.value is None:
            return self.label, "n/a", "n/a"
        shown = f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:g}"
        return self.label, shown, "yes" if self.met else "no"


def targets(results: dict[str, Any], accel: str | None) -> list[Target]:
    """Issue 8's targets, from one run's summaries; the accelerated rows only
    when the accelerator is installed."""

    def cpu(s: str, a: str, b: str) -> float | None:
        x, y = _cpu(results, s, a), _cpu(results, s, b)
        return x / y if x and y else None

    def lvl(s: str, level: int, a: str, b: str) -> float | None:
        x, y = _level(results, s, a, level), _level(results, s, b, level)
        return x / y if x and y else None

    rows: list[Target] = []
    t = rows.append
    for backend in ("agent", "treq"):
        for client, how in ((f"nous_{backend}_iter", "async for"), (f"nous_{backend}", "consume()")):
            t(Target(f"stream_2000, {backend} backend, {how}: CPU/event vs aiohttp (<= 0.85x)",
                     cpu("stream_2000", client, "aiohttp"), 0.85))
    if accel:
        for backend in ("agent", "treq"):
            for client, how in ((f"nous_{backend}_accel_iter", "async for"), (f"nous_{backend}_accel", "consume()")):
                t(Target(f"stream_2000, {backend} backend accelerated, {how}: CPU/event vs aiohttp (<= 0.60x)",
                         cpu("stream_2000", client, "aiohttp"), 0.60))
                t(Target(f"stream_2000, {backend} backend accelerated, {how}: CPU/event vs Twisted floor (<= 1.25x)",
                         cpu("stream_2000", client, "twisted_floor"), 1.25))
    for scn in ("small_post", "parallel_50"):
        t(Target(f"{scn}, agent backend: CPU/request vs raw Agent (<= 0.85x)", cpu(scn, "nous_agent", "agent"), 0.85))
        t(Target(f"{scn}, treq backend: CPU/request vs raw treq (<= 0.90x)", cpu(scn, "nous_treq", "treq"), 0.90))
    t(Target("small_post, agent backend: CPU/request vs aiohttp (<= 1.25x)", cpu("small_post", "nous_agent", "aiohttp"),
             1.25))
    t(Target("small_post_tls, agent backend: CPU/request vs raw Agent (<= 0.75x)",
             cpu("small_post_tls", "nous_agent", "agent"), 0.75))
    t(Target("paced_streams, agent backend: CPU/event vs aiohttp (<= 1.15x)",
             cpu("paced_streams", "nous_agent", "aiohttp"), 1.15))
    for c in (10, 100):
        t(Target(f"posts at c={c}, agent backend: CPU/request vs aiohttp (<= 1.40x)",
                 lvl("scale_posts", c, "nous_agent", "aiohttp"), 1.40))
        t(Target(f"posts at c={c}, treq backend: CPU/request vs agent backend (<= 1.20x)",
                 lvl("scale_posts", c, "nous_treq", "nous_agent"), 1.20))
    for backend in ("agent", "treq"):
        t(Target(f"memory per open stream (1000 open), {backend} backend vs aiohttp (<= 1.25x)",
                 lvl("scale_memory", 1000, f"nous_{backend}", "aiohttp"), 1.25))
    rows += h2_targets(results.get(H2))
    return rows


def h2_targets(result: dict[str, Any] | None) -> list[Target]:
    """Issue 13's targets (the h2 backend against the agent backend, same
    run); none when the scenario was skipped (the http2 extra missing)."""
    if result is None or "skipped" in result:
        return []
    from .h2 import figures

    f = figures(result) if "error" not in result else {"memory": {}}
    n = result.get("streams", 100)
    rows = [
        Target(f"{H2}, h2 backend: CPU/event vs agent backend, whole run (<= 1.00x)", f.get("cpu_whole"), 1.0),
        Target(f"{H2}, h2 backend: CPU/event vs agent backend, steady state (<= 1.15x)", f.get("cpu_steady"), 1.15),
    ]
    for level in (100, 1000):
        rows.append(Target(f"memory per open stream ({level} open), h2 backend vs agent backend (<= 0.10x)",
                           f["memory"].get(level), 0.10))
    rows += [
        Target(f"{H2}, h2 backend: TLS handshakes for {n} streams to one host (<= 1)", f.get("handshakes"), 1,
               unit=""),
        Target(f"{H2}, h2 backend: fds added for {n} streams to one host (<= 1)", f.get("fds"), 1, unit=""),
        Target(f"{H2}, one consumer stopped among {n}: its bytes off the wire vs window + one frame (<= 1.00x)",
               f.get("stopped_vs_window"), 1.0),
        Target(f"{H2}, one consumer stopped among {n}: the others' completion vs no stop (<= 1.05x)",
               f.get("others_vs_unstopped"), 1.05),
    ]
    return rows


def _h2_section(w: Any, result: dict[str, Any] | None) -> None:
    """The HTTP/2 scenario's section (``bench/h2.py``'s own table), or why it did not run."""
    w("## HTTP/2")
    w("")
    if result is None or "skipped" in result:
        why = (result or {}).get("skipped", "it was not run")
        w(f"The HTTP/2 scenario ({H2}) was skipped: {why}; its targets are left out.")
        w("")
        return
    if "error" in result:
        w(f"The HTTP/2 scenario ({H2}) failed: {str(result['error']).splitlines()[-1][:200]}")
        w("")
        return
    from .h2 import report as h2_report

    w("The h2 backend (one TLS connection per host, many streams, flow control as backpressure) against the "
      "agent backend (HTTP/1.1, one TLS connection per stream): the same paced SSE streams from one server "
      "(`nous_twisted/bench/h2.py`: Twisted's web server for HTTP/1.1, an `h2` server writing each turn's "
      "frames together for HTTP/2, ALPN choosing), each client run in a fresh process, rounds alternating. "
      "Steady state is the CPU between 10% and 90% of the events; handshakes are the connections the server "
      "accepted; memory per open stream is the RSS growth with N streams held open after their first "
      "event, from a baseline taken after one whole stream to the host (code loaded, as in scale_memory).")
    w("")
    for line in h2_report(result).rstrip("\n").split("\n"):
        w(line)
    w("")


def format_profile(scenario: str, client: str, unit: str, result: dict[str, Any], top: bool = False,
                   unprofiled_us: float | None = None) -> list[str]:
    """A profiled run's breakdown as Markdown: per category, the profiled time
    per request or event and its share (and, given the unprofiled CPU per
    unit, that share of it); with ``top``, the functions with most own time."""
    prof = result["profile"]
    units = result.get("requests") or result.get("events") or 1
    total = prof["total_s"] or 1e-12
    label = LABELS.get(client, client)
    # the accelerated variants say so in their label
    mode = "" if "_accel" in client or not client.startswith("nous_") else " (pure Python)"
    lines = [f"**{scenario}, {label}**{mode}: {units:,} {unit}s under cProfile, "
             f"{total / units * 1e6:.1f} µs/{unit} profiled"
             + (f", {unprofiled_us:.1f} µs/{unit} without the profiler (the scenario's median)." if unprofiled_us
                else ".")]
    lines.append("")
    head = ["where", f"µs/{unit} (profiled)", "share"] + ([f"≈ µs/{unit} unprofiled"] if unprofiled_us else [])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    what = {
        "reactor": "reactor (twisted.internet, asyncio, TLS, system calls)",
        "HTTP parsing": "HTTP parsing (twisted.web._newclient, twisted.web.http, LineReceiver, httptools)",
        "library": "library (nous_twisted)",
        "JSON": "JSON (orjson)",
        "other": "other (twisted.web.client, treq, URL and IDNA handling, the bench's consumer, ...)",
    }
    for cat in CATEGORIES:
        sec = prof["categories"].get(cat, 0.0)
        share = sec / total
        cells = [what[cat], f"{sec / units * 1e6:.2f}", f"{share * 100:.0f}%"]
        if unprofiled_us:
            cells.append(f"{share * unprofiled_us:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    other = [(m, sec) for m, sec in prof.get("other", []) if sec / total >= 0.01]
    if other:
        lines.append("")
        lines.append("Largest in other (own time of its functions): "
                     + ", ".join(f"{m} {sec / total * 100:.0f}%" for m, sec in other) + ".")
    if top:
        lines.append("")
        lines.append(f"Most own time (µs/{unit}, profiled):")
        lines.append("")
        for where, sec in prof["top"]:
            lines.append(f"- {sec / units * 1e6:7.2f}  {where}")
    return lines


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _fmt(stat: dict[str, float] | None, digits: int = 1) -> str:
    if not stat:
        return "-"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def _plots(results: dict[str, Any], out_dir: str) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = os.path.join(out_dir, "img")
    os.makedirs(img, exist_ok=True)
    rss_png = os.path.join(img, "bench_slow_consumer_rss.png")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for client in CLIENTS:
        series = results.get("slow_consumer", {}).get(client, {}).get("rss_series")
        if series:
            ax.plot([t for t, _ in series], [v / 1e6 for _, v in series], label=LABELS[client])
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS growth (MB)")
    ax.set_title("slow_consumer: client RSS while the server floods, 1 ms per event")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(rss_png, dpi=110)
    plt.close(fig)

    cpu_png = os.path.join(img, "bench_cpu_per_event.png")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = ["stream_2000", "stream_2000_64k", "paced_streams"]
    width = 0.8 / len(CLIENTS)
    for i, client in enumerate(CLIENTS):
        values = [_cpu(results, n, client) or 0 for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=LABELS[client])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    ax.set_ylabel("client CPU per event (µs)")
    ax.set_title("CPU per event, median of the runs")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(cpu_png, dpi=110)
    plt.close(fig)
    return "img/" + os.path.basename(rss_png), "img/" + os.path.basename(cpu_png)


def _scaling_plot(results: dict[str, Any], out_dir: str) -> str | None:
    """One PNG, a panel per scaling scenario, a line per client; None when
    the run had no scaling figures."""
    if not any(sc.name in results for sc in SCALING):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = os.path.join(out_dir, "img")
    os.makedirs(img, exist_ok=True)
    png = os.path.join(img, "bench_scaling.png")
    fig, axes = plt.subplots(1, len(SCALING), figsize=(15, 4.5))
    ylabels = {"request": "CPU per request (µs)", "event": "CPU per event (µs)", "stream": "KiB per open stream"}
    xlabels = {"scale_posts": "concurrent posts (c)", "scale_paced": "concurrent paced streams",
               "scale_memory": "streams held open"}
    for ax, sc in zip(axes, SCALING, strict=True):
        for client in CLIENTS:
            levels = results.get(sc.name, {}).get(client, {}).get("levels")
            if levels:
                xs = sorted(levels, key=int)
                ax.plot([int(x) for x in xs], [levels[x]["median"] for x in xs], marker="o", label=LABELS[client])
        ax.set_xscale("log")
        if sc.unit != "stream":
            ax.set_yscale("log")  # httpx is an order of magnitude above the others
        ax.set_xlabel(xlabels.get(sc.name, "level"))
        ax.set_ylabel(ylabels[sc.unit])
        ax.set_title(sc.name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return "img/" + os.path.basename(png)


def _client_table(w: Any, res: dict[str, Any], clients: tuple[str, ...] | list[str], head: list[str],
                  extra: list[tuple[str, str]]) -> None:
    """One scenario's figures, a row per client."""
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for client in clients:
        row = res.get(client, {})
        if "error" in row:
            w(f"| {LABELS[client]} | failed: {str(row['error']).splitlines()[-1][:80]} |" + " |" * (len(head) - 2))
            continue
        cells = [LABELS[client], _fmt(row.get("cpu_us")), _fmt(row.get("throughput"), 0)]
        cells += [_fmt(row.get(k), 2) for k, _ in extra]
        cells.append(_fmt(row.get("peak_rss_mb")))
        w("| " + " | ".join(cells) + " |")


def write_report(
    results: dict[str, Any], decoders: dict[str, float], machine: dict[str, str], quick: bool, elapsed: float,
    out_dir: str, *, profiles: list[dict[str, Any]] | None = None, accel: str | None = None,
) -> str:
    """Write ``out_dir/benchmarks.md`` and its plots (under ``out_dir/img``); its path.

    :param results: scenario -> client -> ``run.summarise()`` of its runs.
    :param profiles: the profiled runs, each ``{"scenario", "client", "unit", "result"}``.
    :param accel: the accelerator as installed ("httptools 0.9.0"), or None.
    """
    rss_png, cpu_png = _plots(results, out_dir)
    scaling_png = _scaling_plot(results, out_dir)
    cmd = "nous-twisted bench" + (" --quick" if quick else "")
    L: list[str] = []
    w = L.append
    w("# Benchmarks")
    w("")
    w(f"Generated by `{cmd}` in {elapsed:.0f} s; every number on this page comes from that run. "
      f"Regenerate with `{cmd} --force` (`--force` replaces this page; without it the bench refuses to "
      "overwrite a report) after installing the `bench` extra: `pip install '.[bench]'`.")
    w("")
    w("## Method")
    w("")
    w("- The server is a separate process: a bare asyncio HTTP/1.1 server answering from pre-built bytes "
      "(`nous_twisted/bench/server.py`), so that it is not the bottleneck. It also listens with TLS for the "
      "`_tls` scenarios: its certificate, for 127.0.0.1 and localhost, is signed by a `trustme` CA made for "
      "the run, and every client verifies it (this library through `configure(ca_bundle=...)`, raw treq and "
      "Agent through a `BrowserLikePolicyForHTTPS` with that trust root, aiohttp, httpx and the floors "
      "through an `ssl` context or Twisted's `optionsForClientTLS` with the CA).")
    w("- Each client runs each scenario in a fresh process (`nous_twisted/bench/clients.py`); the same "
      "scenario code drives every client. CPU is the client process's user+system time from `getrusage`, "
      "over the measured part only (after a warm-up request or stream). Within a scenario the runs go "
      "round by round (one run of every client, then the next), so that a change in the machine's load "
      "falls on every client alike.")
    w("- Each figure is the median of the runs, with (min-max). CPU is per request or per event; "
      "throughput is requests or events per second of wall time; latencies are p50/p99 inside a run. "
      "Ratios compare medians of the same run.")
    w("- Clients: this library's `treq` and `agent` backends (posts with `post()`; streams counted with "
      "`consume()` and a plain callback, or read with `async for` where the consumer awaits per event; "
      "stream_2000 also measures `async for` on counted streams, one await per event); raw "
      "treq (`HTTPClient` on a persistent pool, `collect()` and a hand-written SSE split); raw `Agent` "
      "(`readBody`, `deliverBody` and the same split); aiohttp; httpx with httpx-sse; and two floors, "
      "the least a client can cost on each event loop: a bare asyncio `Protocol` and a bare Twisted "
      "`Protocol` on Twisted's reactor, with a pre-built request and the least parsing that works. "
      "Every client decodes JSON with orjson. Twisted clients run on the default (epoll) reactor.")
    w("- This library's rows run in pure Python (`NOUS_TWISTED_NO_SPEEDUPS=1`); the rows marked "
      "*accelerated* run with the optional accelerator (`pip install 'nous-twisted[speed]'`). "
      f"Accelerator: {accel + ' (installed)' if accel else 'not installed (its rows are left out)'}.")
    scaling_params = "; ".join(
        f"{sc.name} at {', '.join(str(x) for x in (sc.quick if quick else sc.full)['levels'])}" for sc in SCALING)
    w(f"- Scaling (every client, all levels of a scenario in one process): {scaling_params}."
      + (" This is a `--quick` run: fewer runs and smaller scenarios, the largest scaling levels smaller "
         f"than a full run's ({'; '.join(f'{sc.name} at ' + ', '.join(str(x) for x in sc.full['levels']) for sc in SCALING)})."
         if quick else ""))
    w("")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".")
    w("")
    w("## Targets")
    w("")
    w("Each ratio is this library's median CPU (or memory) over the peer's, from this run.")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    rows = targets(results, accel)
    for row in rows:
        w("| " + " | ".join(row.cells()) + " |")
    if not accel:
        w("")
        w("Accelerator: not installed; its targets (stream_2000 <= 0.60x aiohttp and <= 1.25x the Twisted "
          "floor) are not measured.")
    w("")
    w("Earlier targets, kept:")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    if decoders.get("httpx-sse"):
        earlier = Target("SSE decoder alone, events/s vs httpx-sse's decoder (>= 2x)",
                         decoders["nous_twisted"] / decoders["httpx-sse"], 2.0, at_least=True)
        w("| " + " | ".join(earlier.cells()) + " |")
    sc = results.get("slow_consumer", {})
    for client, limit, label in (("nous_agent", 5.0, "under 5 MB"),
                                 ("nous_treq", 1000 * 32768 / 1e6 + 10, "bounded by its watermarks (1000 x 32 KiB + slack)")):
        g = sc.get(client, {}).get("rss_growth_mb")
        if g:
            w(f"| slow_consumer, {LABELS[client]}: RSS growth {label} | {g['median']:.1f} MB | "
              f"{'yes' if g['max'] <= limit else 'no'} |")
    w("")
    w(f"SSE decoder alone (the same 2,000-event body in 64 KiB pieces): nous_twisted "
      f"{decoders.get('nous_twisted', 0):,.0f} events/s, httpx-sse {decoders.get('httpx-sse', 0):,.0f} events/s.")
    w("")
    for scn in SCENARIOS:
        res = results.get(scn.name, {})
        w(f"## {scn.name}")
        w("")
        w(f"{scn.what}. Parameters: `{scn.quick if quick else scn.full}`.")
        w("")
        extra = []
        if scn.name == "paced_streams":
            extra = [("ttft_p50_ms", "TTFT p50 (ms)"), ("ttft_p99_ms", "TTFT p99 (ms)")]
        elif scn.name == "slow_consumer":
            extra = [("rss_growth_mb", "RSS growth (MB)")]
        else:
            extra = [("p50_ms", "p50 (ms)"), ("p99_ms", "p99 (ms)")]
        head = ["client", f"CPU/{scn.unit} (µs)", f"{scn.unit}s/s"] + [h for _, h in extra] + ["peak RSS (MB)"]

        _client_table(w, res, CLIENTS, head, extra)
        w("")
        w("Ratios of CPU per " + scn.unit + " (this library / peer):")
        w("")
        w("| | " + " | ".join(LABELS[p] for p in PEERS) + " |")
        w("|---|" + "---|" * len(PEERS))
        for ours in OURS:
            w(f"| {LABELS[ours]} | " + " | ".join(_ratio(_cpu(results, scn.name, ours), _cpu(results, scn.name, p)) for p in PEERS) + " |")
        w("")
        variants = [v for v in scn.variants if v in res]
        if variants:
            w("How the stream is read (`async for`: one await per event) and the accelerator:")
            w("")
            _client_table(w, res, variants, head, extra)
            w("")
            w("| | " + " | ".join(LABELS[p] for p in ("aiohttp", "twisted_floor", "floor")) + " |")
            w("|---|---|---|---|")
            for v in variants:
                w(f"| {LABELS[v]} | " + " | ".join(
                    _ratio(_cpu(results, scn.name, v), _cpu(results, scn.name, p))
                    for p in ("aiohttp", "twisted_floor", "floor")) + " |")
            w("")
    _h2_section(w, results.get(H2))
    w("## Scaling")
    w("")
    w("Every client, each scaling scenario in one process per run (levels one after the other), "
      "medians of the runs.")
    w("")
    for scn in SCALING:
        res = results.get(scn.name, {})
        levels = (scn.quick if quick else scn.full)["levels"]
        unit = {"request": "CPU per request (µs)", "event": "CPU per event (µs)",
                "stream": "memory per open stream (KiB)"}[scn.unit]
        name = {"scale_posts": "c", "scale_paced": "streams", "scale_memory": "open"}.get(scn.name, "N")
        w(f"### {scn.name}: {unit}")
        w("")
        w(f"{scn.what}.")
        w("")
        head = ["client"] + [f"{name}={x}" for x in levels] + [f"vs aiohttp at {levels[-1]}"]
        w("| " + " | ".join(head) + " |")
        w("|" + "---|" * len(head))
        for client in CLIENTS:
            row = res.get(client, {})
            if "error" in row:
                w(f"| {LABELS[client]} | failed: {str(row['error']).splitlines()[-1][:80]} |" + " |" * (len(head) - 2))
                continue
            cells = [LABELS[client]] + [_fmt(row.get("levels", {}).get(str(x))) for x in levels]
            cells.append(_ratio(_level(results, scn.name, client, levels[-1]),
                                _level(results, scn.name, "aiohttp", levels[-1])))
            w("| " + " | ".join(cells) + " |")
        w("")
    if scaling_png:
        w(f"![Scaling]({scaling_png})")
        w("")
    w("## Where the time goes")
    w("")
    if profiles:
        w("The client process of the scenario, run once more under cProfile (`nous-twisted bench --profile "
          "SCENARIO --client CLIENT` prints the same, with the functions that cost most). Each function's own "
          "time is grouped by where it lives; built-ins count with their callers, except system calls "
          "and TLS (reactor), orjson (JSON) and httptools (HTTP parsing). The profiler inflates every figure (it "
          "costs time per call): read the shares, and the last column, which spreads the scenario's "
          "unprofiled CPU by them.")
        w("")
        for prof in profiles:
            r = prof["result"]
            if "error" in r or "profile" not in r:
                w(f"**{prof['scenario']}, {LABELS.get(prof['client'], prof['client'])}**: the profiled run failed.")
                w("")
                continue
            for line in format_profile(prof["scenario"], prof["client"], prof["unit"], r,
                                       unprofiled_us=_cpu(results, prof["scenario"], prof["client"])):
                w(line)
            w("")
    else:
        w("No profile in this run.")
        w("")
    w("## Missed targets: what remains and why")
    w("")
    missed = [t for t in rows if t.met is False]
    unmeasured = [t for t in rows if t.met is None]
    if not missed:
        w("Every target measured in this run is met.")
    else:
        w("Targets missed in this run (the breakdowns above show where the time goes):")
        w("")
        for miss in missed:
            w(f"- {miss.label}: measured {miss.value:.2f}x.")
            why = explanation(miss.label)
            if why:
                w(f"  {why}")
    if unmeasured:
        w("")
        w("Not measured in this run (a figure is missing): " + "; ".join(u.label for u in unmeasured) + ".")
    w("")
    w("## Plots")
    w("")
    w(f"![RSS over time under slow_consumer]({rss_png})")
    w("")
    w(f"![CPU per event]({cpu_png})")
    w("")
    if scaling_png:
        w(f"![Scaling: CPU per request, CPU per event, memory per open stream]({scaling_png})")
        w("")
    w("## Which backend to pick")
    w("")
    a = _cpu(results, "small_post", "nous_agent")
    t = _cpu(results, "small_post", "nous_treq")
    w(f"- Non-streaming: the agent backend costs {a or 0:.0f} µs of CPU per small request against "
      f"{t or 0:.0f} µs for the treq backend (the same request, and treq's response object on top). Both are far from the bottleneck of an LLM call, whose latency is seconds: stay "
      "with the default unless you issue many small calls per second from one process.")
    ga = sc.get("nous_agent", {}).get("rss_growth_mb", {}).get("median")
    gt = sc.get("nous_treq", {}).get("rss_growth_mb", {}).get("median")
    w(f"- Streaming: with a consumer slower than the network, the agent backend's strict pull kept RSS "
      f"growth at {ga or 0:.1f} MB, where the treq backend's read-ahead grew to {gt or 0:.1f} MB (bounded "
      "by its watermarks), and raw treq or raw Agent grow with everything the server sends. Pick the agent "
      "stream backend when consumers can block per event; otherwise the default is fine, since tokens "
      "arrive far slower than either backend can decode them.")
    w("- The scenarios measure the transport on loopback; against a real endpoint the model's token rate "
      "dominates and the backends are indistinguishable in wall time.")
    w("")
    path = os.path.join(out_dir, "benchmarks.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path


# Why a target is missed: prose shown under the row in "Missed targets" when it
# is missed (nothing here is shown for a met target), keyed by the target's
# label up to its limit (" (<= ...") or, for all of a row's targets, up to its
# colon.  Written from profiles of the scenarios (`nous-twisted bench --profile
# SCENARIO --client CLIENT`, and the same runs under a CPU-time profiler) and
# from same-run A/B measurements; what is measured today is in the tables.
_LIBRARY_LAYERS = (
    "What this library does per request and raw Agent does not: checking the call's arguments "
    "(`request.prepare`: the URL and the header set are checked once and cached, the body encoded), "
    "choosing the route (the proxy environment, read in one pass), its receive time limit (an entry in a "
    "set of timeouts of the same length, `deadlines.py`), the pool's reuse check (a zero-timeout `poll()` "
    "on the idle socket) and two Deferreds of its own. What it no longer pays and raw Agent does: a new "
    "`HostnameEndpoint` with IDNA encoding, new `Headers` and a copy of them per request, the request head "
    "built and checked per request (`SharedAgent.send` makes it once per method, URL and header set), the "
    "body written through a length-enforcing consumer with three "
    "Deferreds (`body.OneWriteRequest` writes head and body at once), the response head parsed line by "
    "line (`head.take_head` reads a head that came in one read in one pass), a `callLater` and a cancel "
    "for the pool's idle timer (reset instead), two `epoll_ctl` around every write and the reactor "
    "iteration in which Twisted sends, two more around the end of every response head, and the cyclic "
    "garbage a post used to leave."
)
EXPLANATIONS: dict[str, str] = {
    "small_post, agent backend: CPU/request vs raw Agent": _LIBRARY_LAYERS,
    "parallel_50, agent backend: CPU/request vs raw Agent": (
        _LIBRARY_LAYERS + " With 50 requests in flight raw Agent's own cost per request falls (the reactor "
        "sends its 50 queued writes in one iteration), so the same savings are a smaller share of it; and "
        "both clients pay the cyclic garbage collector at this concurrency (about 25 µs per request for "
        "each, measured by running both with `gc.disable()`), a cost common to both that pulls the ratio "
        "towards 1."
    ),
    "small_post, agent backend: CPU/request vs aiohttp": (
        "aiohttp parses the response head in C (llhttp) and resumes one coroutine per request; this library "
        "runs Twisted's HTTP/1.1 client: the head is read in Python (in one pass, `head.take_head`), each "
        "request and response passes through four Deferreds and Twisted's state machines "
        "(`HTTP11ClientProtocol`, `HTTPClientParser`, `Response`), and every read goes through Twisted's "
        "reactor, whose own cost per request at c=1 is the Twisted floor's. The optional accelerator "
        "parses chunk framing only."
    ),
    "small_post_tls, agent backend: CPU/request vs raw Agent": (
        "Over TLS the library saves what it saves over http (above), plus a new OpenSSL context per request "
        "(one per host instead) and Twisted's `callLater(0)` write aggregation (one TLS record per request, "
        "sent at once); but the encryption and the pure-Python TLS layer (`TLSMemoryBIOProtocol`) are paid "
        "by both clients and are most of the difference between small_post and small_post_tls, which "
        "pulls the ratio towards 1."
    ),
    "posts at c=10, agent backend: CPU/request vs aiohttp": (
        "As for small_post against aiohttp: Twisted's client state machines, Python head reading and "
        "Deferreds against aiohttp's C parser and coroutines."
    ),
    "posts at c=100, agent backend: CPU/request vs aiohttp": (
        "As for small_post against aiohttp (Twisted's client state machines and Deferreds), plus the "
        "cyclic garbage collector, which runs more often with 100 requests' objects alive at once."
    ),
    "posts at c=10, treq backend: CPU/request vs agent backend": (
        "The treq backend sends what the agent backend sends (`StatelessHTTPClient.send`, the same "
        "prepared request heads, without the cookie jar, `CookieAgent`, `ContentDecoderAgent` and URL "
        "rendering that `HTTPClient.request` rebuilds per call) and adds treq's response wrapper; a larger "
        "gap than that comes from the run."
    ),
    "posts at c=100, treq backend: CPU/request vs agent backend": (
        "The treq backend sends what the agent backend sends (`StatelessHTTPClient.send`) and adds treq's "
        "response wrapper; a larger gap than that comes from the run."
    ),
}


def explanation(label: str) -> str | None:
    """The prose for a missed target: by its label up to the limit, else up to the colon."""
    return EXPLANATIONS.get(label.split(" (")[0]) or EXPLANATIONS.get(label.split(":")[0])

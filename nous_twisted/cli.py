"""The ``nous-twisted`` command: ``demo`` (and ``bench`` with the extra installed)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="call an LLM through each backend (the embedded fake server by default)",
        description="Start the embedded fake LLM server (or use --base-url), call it "
        "through each backend and print the replies and a summary.",
    )
    p.add_argument("--base-url", help="an OpenAI-compatible base URL, e.g. https://api.openai.com/v1; "
                   "the key is read from OPENAI_API_KEY")
    p.add_argument("--model", default="gpt-4o-mini", help="the model name (default: %(default)s)")
    p.add_argument("--prompt", default="Say hello to a Twisted reactor in one sentence.")
    p.add_argument("--reactor", choices=("default", "asyncio"), default="default",
                   help="the Twisted reactor to run under (default: %(default)s)")


async def _stream_once(reactor: Any, url: str, body: dict[str, Any], headers: dict[str, str], backend: str) -> tuple[str, float | None, float, int]:
    """Stream one reply, printing tokens as they arrive; (status, ttft, total, tokens)."""
    from . import StreamDone, StreamError, stream

    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    status = "?"
    sys.stdout.write(f"[{backend}] ")
    async for event in stream(url, dict(body, stream=True), headers, stream_backend=backend, reactor=reactor):
        if isinstance(event, StreamDone):
            status = f"done ({event.reason})"
        elif isinstance(event, StreamError):
            status = f"error: {type(event.error).__name__}"
            sys.stdout.write(f"\n[{backend}] {event.error}")
        else:
            choices = event.get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                if first is None:
                    first = time.perf_counter() - start
                tokens += 1
                sys.stdout.write(piece)
                sys.stdout.flush()
    sys.stdout.write("\n\n")
    return status, first, time.perf_counter() - start, tokens


async def _demo(reactor: Any, args: argparse.Namespace) -> int:
    from . import NousHTTPError, post, shutdown
    from .testing import FakeLLMServer

    fake = None
    headers: dict[str, str] = {}
    if args.base_url:
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            print("nous-twisted demo: --base-url needs the API key in OPENAI_API_KEY", file=sys.stderr)
            return 2
        headers["Authorization"] = f"Bearer {key}"
        url = args.base_url.rstrip("/") + "/chat/completions"
        where = args.base_url
    else:
        fake = await FakeLLMServer(reply_tokens=16, token_delay=0.005).start()
        url = fake.chat_url
        where = f"the embedded fake LLM server at {fake.url}"
    print(f"nous-twisted demo: {args.model} via {where}\n")
    print("post: one reply per backend\n")
    body = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}], "stream": False}
    rows = []
    failed = False
    try:
        for backend in ("treq", "agent"):
            start = time.perf_counter()
            try:
                reply = await post(url, body, headers, backend=backend, reactor=reactor)
            except NousHTTPError as e:
                rows.append((backend, f"error: {type(e).__name__}", time.perf_counter() - start))
                print(f"[{backend}] {e}\n")
                failed = True
                continue
            elapsed = time.perf_counter() - start
            text = reply["choices"][0]["message"]["content"]
            print(f"[{backend}] {text}\n")
            rows.append((backend, "200 OK", elapsed))
        print("stream: tokens as they arrive\n")
        streamed = []
        for backend in ("treq", "agent"):
            status, first, total, tokens = await _stream_once(reactor, url, body, headers, backend)
            failed = failed or not status.startswith("done")
            streamed.append((backend, status, first, total, tokens))
    finally:
        if fake is not None:
            await fake.stop()
        await shutdown(reactor)
    print(f"{'post':<8} {'status':<28} {'latency':>10}")
    for backend, status, elapsed in rows:
        print(f"{backend:<8} {status:<28} {elapsed * 1000:>8.1f} ms")
    print(f"\n{'stream':<8} {'status':<28} {'first token':>12} {'tokens/s':>10}")
    for backend, status, first, total, tokens in streamed:
        ttft = f"{first * 1000:.1f} ms" if first is not None else "-"
        rate = f"{tokens / total:.1f}" if total > 0 and tokens else "-"
        print(f"{backend:<8} {status:<28} {ttft:>12} {rate:>10}")
    return 1 if failed else 0


def _bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark both backends against raw treq, raw Agent, aiohttp, httpx and two floors",
        description="Run every benchmark scenario for every client (needs the 'bench' extra: "
        "pip install 'nous-twisted[bench]') and write benchmarks.md with its plots. By default the report "
        "goes to ./docs/ when run from this project's checkout, else to ./nous-twisted-bench/; an existing "
        "report is never replaced without --force.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smaller scenarios, fewer runs and smaller scaling levels (about 2-3 minutes on 2 cores)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where to write benchmarks.md and img/ (default: ./docs in this project's checkout, "
                   "else ./nous-twisted-bench)")
    p.add_argument("--force", action="store_true", help="replace an existing benchmarks.md in the output directory")
    p.add_argument("--runs", type=int, help="runs per scenario and client (default: 3 quick, 5 full; fewer for the long ones)")
    p.add_argument("--profile", metavar="SCENARIO",
                   help="instead of the whole bench: run SCENARIO's client once under cProfile and print where "
                   "the time goes per request or event (reactor, HTTP parsing, library, JSON, other)")
    p.add_argument("--client", default="nous_agent",
                   help="the client --profile runs (default: %(default)s; e.g. nous_treq, nous_agent_iter, "
                   "nous_agent_accel, agent, aiohttp, twisted_floor)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nous-twisted", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _bench_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "bench":
        try:
            import aiohttp  # noqa: F401
            import httpx_sse  # noqa: F401
            import matplotlib  # noqa: F401
            import trustme  # noqa: F401
        except ImportError as e:
            print(f"nous-twisted bench needs the 'bench' extra ({e.name} is missing): "
                  "pip install 'nous-twisted[bench]'", file=sys.stderr)
            return 2
        if args.profile:
            from .bench.run import profile_main

            return profile_main(args.profile, args.client, quick=args.quick)
        from .bench.run import main as bench_main

        return bench_main(quick=args.quick, out_dir=args.out, runs=args.runs, force=args.force)
    if args.command == "demo":
        if args.reactor == "asyncio":
            from twisted.internet import asyncioreactor

            asyncioreactor.install()
        from twisted.internet import task

        async def run(reactor: Any) -> None:
            code = await _demo(reactor, args)
            if code:
                raise SystemExit(code)

        # react() exits the process itself, with the code run() raised.
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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
    print(f"nous-twisted demo: POST {args.model} via {where}\n")
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
    finally:
        if fake is not None:
            await fake.stop()
        await shutdown(reactor)
    print(f"{'backend':<8} {'status':<28} {'latency':>10}")
    for backend, status, elapsed in rows:
        print(f"{backend:<8} {status:<28} {elapsed * 1000:>8.1f} ms")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nous-twisted", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    args = parser.parse_args(argv)
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

"""The nous-twisted command: chat, demo and bench (also run as python -m nous_twisted).

Plain text on purpose: this docstring is the --help description, and argparse
prints it as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import ensureDeferred

PROG = "nous-twisted"
DESCRIPTION = "A Twisted-native HTTP transport for LLM APIs: chat with an endpoint, run the demo or the benchmarks."
EPILOG = "Run 'nous-twisted COMMAND --help' for a command's options. Also runs as 'python -m nous_twisted'."

OPENAI_DEFAULT = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT = "https://api.anthropic.com/v1"
ANTHROPIC_VERSION = "2023-06-01"


def _version() -> str:
    from . import __version__

    return __version__


def check_base_url(base_url: str) -> str | None:
    """The one-line reason ``base_url`` cannot be used, or None when it can."""
    from .request import prepare

    try:
        prepare(base_url, b"", ())
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def _install_reactor(name: str) -> None:
    if name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()


def _run(coro_fn: Any) -> int:
    """Run ``coro_fn(reactor)`` under the installed reactor; exit with the code it returns."""
    from twisted.internet import task

    async def run(reactor: Any) -> None:
        code = await coro_fn(reactor)
        if code:
            raise SystemExit(code)

    # react() exits the process itself, with the code run() raised.
    task.react(lambda reactor: ensureDeferred(run(reactor)))
    return 0  # pragma: no cover (react never returns)


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="call an LLM through each backend (the embedded fake server by default)",
        description="Start the embedded fake LLM server (or use --base-url), call it "
        "through each backend and print the replies and a summary.",
    )
    p.add_argument("--base-url", metavar="URL",
                   help="an OpenAI-compatible base URL, e.g. https://api.openai.com/v1, instead of the embedded "
                   "fake server; the key is read from OPENAI_API_KEY")
    p.add_argument("--model", default="gpt-4o-mini", help="the model name (default: %(default)s)")
    p.add_argument("--prompt", default="Say hello to a Twisted reactor in one sentence.",
                   help="the user message sent (default: %(default)r)")
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
        problem = check_base_url(args.base_url)
        if problem:
            print(f"nous-twisted demo: bad --base-url: {problem}", file=sys.stderr)
            return 2
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


def _chat_parser(sub: Any) -> None:
    p = sub.add_parser(
        "chat",
        help="stream one reply from an OpenAI-compatible or Anthropic endpoint",
        description="Send PROMPT (or, without it, everything read from standard input) as one user message "
        "and print the reply as it streams. The key is read from OPENAI_API_KEY, or ANTHROPIC_API_KEY for "
        "Anthropic (no key is sent when it is unset: local servers such as Ollama, vLLM or llama.cpp need none). "
        "Exits 0 when the reply completed, 1 when the call failed, 2 for bad arguments.",
    )
    p.add_argument("prompt", nargs="?", metavar="PROMPT",
                   help="the user message (default: read standard input to its end)")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help=f"the API base URL (default: $OPENAI_BASE_URL, else {OPENAI_DEFAULT}; "
                   f"$ANTHROPIC_BASE_URL, else {ANTHROPIC_DEFAULT}, with --api anthropic); the request goes to "
                   "URL/chat/completions, or URL/messages for Anthropic")
    p.add_argument("--api", choices=("auto", "openai", "anthropic"), default="auto",
                   help="the request and event format: 'openai' (chat completions, also vLLM, llama.cpp, LiteLLM, "
                   "Ollama's /v1) or 'anthropic' (messages); 'auto' picks anthropic when the base URL's host "
                   "contains 'anthropic' (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="the model name (default: gpt-4o-mini, or claude-sonnet-4-5 for Anthropic)")
    p.add_argument("--system", metavar="TEXT", default=None, help="a system prompt (default: none)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="the most tokens in the reply (default: %(default)s)")
    p.add_argument("--backend", choices=("treq", "agent"), default=None,
                   help="the stream backend (default: $NOUS_HTTP_STREAM_BACKEND, else treq)")
    p.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                   help="the longest wait for the next event (default: %(default)s)")
    p.add_argument("--reactor", choices=("default", "asyncio"), default="default",
                   help="the Twisted reactor to run under (default: %(default)s)")


def chat_request(args: argparse.Namespace, prompt: str) -> tuple[str, str, dict[str, Any], dict[str, str]]:
    """(api, url, body, headers) of the chat call ``args`` describe."""
    from urllib.parse import urlsplit

    base = args.base_url
    api = args.api
    if api == "auto":
        if base is None:
            api = "openai" if os.environ.get("OPENAI_BASE_URL") or not os.environ.get("ANTHROPIC_BASE_URL") else "anthropic"
        else:
            api = "anthropic" if "anthropic" in (urlsplit(base).hostname or "") else "openai"
    if base is None:
        if api == "anthropic":
            base = os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_DEFAULT
        else:
            base = os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT
    base = base.rstrip("/")
    headers: dict[str, str] = {}
    messages: list[dict[str, str]] = []
    if api == "anthropic":
        key = os.environ.get("ANTHROPIC_API_KEY")
        if key:
            headers["x-api-key"] = key
        headers["anthropic-version"] = ANTHROPIC_VERSION
        body: dict[str, Any] = {"model": args.model or "claude-sonnet-4-5", "max_tokens": args.max_tokens, "stream": True}
        if args.system:
            body["system"] = args.system
        body["messages"] = [{"role": "user", "content": prompt}]
        return api, base + "/messages", body, headers
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    body = {"model": args.model or "gpt-4o-mini", "max_tokens": args.max_tokens, "stream": True, "messages": messages}
    return api, base + "/chat/completions", body, headers


def event_text(api: str, event: Any) -> str:
    """The reply text one data event carries ('' for the others)."""
    if not isinstance(event, dict):
        return ""
    if api == "anthropic":
        if event.get("type") == "content_block_delta":
            return str((event.get("delta") or {}).get("text") or "")
        return ""
    choices = event.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


async def _chat(reactor: Any, args: argparse.Namespace, prompt: str) -> int:
    from . import HTTPStatusError, StreamDone, StreamError, shutdown, stream

    api, url, body, headers = chat_request(args, prompt)
    problem = check_base_url(url)
    if problem:
        print(f"nous-twisted chat: bad --base-url: {problem}", file=sys.stderr)
        return 2
    code = 1
    wrote = False
    try:
        async with stream(url, body, headers, stream_backend=args.backend, timeout=args.timeout, reactor=reactor) as s:
            async for event in s:
                if isinstance(event, StreamDone):
                    code = 0 if event.reason in ("stop", "eof") else 1
                elif isinstance(event, StreamError):
                    if wrote:
                        sys.stdout.write("\n")
                        sys.stdout.flush()
                    error = event.error
                    hint = ""
                    if isinstance(error, HTTPStatusError) and error.status in (401, 403):
                        hint = f" (is {'ANTHROPIC_API_KEY' if api == 'anthropic' else 'OPENAI_API_KEY'} set and valid?)"
                    print(f"nous-twisted chat: {type(error).__name__}: {error}{hint}", file=sys.stderr)
                    return 1
                else:
                    text = event_text(api, event)
                    if text:
                        sys.stdout.write(text)
                        sys.stdout.flush()
                        wrote = True
    finally:
        await shutdown(reactor)
    if wrote:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return code


def _read_prompt(args: argparse.Namespace) -> str | None:
    if args.prompt is not None:
        return str(args.prompt)
    if sys.stdin is None:
        return None
    if sys.stdin.isatty():
        print("nous-twisted chat: reading the prompt from standard input (end it with Ctrl-D)", file=sys.stderr)
    return sys.stdin.read()


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
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _chat_parser(sub)
    _demo_parser(sub)
    _bench_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "chat":
        if args.base_url is not None:
            problem = check_base_url(args.base_url)
            if problem:
                print(f"nous-twisted chat: bad --base-url: {problem}", file=sys.stderr)
                return 2
        if args.max_tokens < 1:
            parser.error("--max-tokens must be at least 1")
        if not args.timeout > 0 or args.timeout == float("inf"):
            parser.error("--timeout must be a positive, finite number of seconds")
        prompt = _read_prompt(args)
        if not prompt or not prompt.strip():
            print("nous-twisted chat: no prompt: give one as an argument or on standard input", file=sys.stderr)
            return 2
        _install_reactor(args.reactor)
        return _run(lambda reactor: _chat(reactor, args, prompt))
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
        if args.base_url is not None:
            problem = check_base_url(args.base_url)
            if problem:
                print(f"nous-twisted demo: bad --base-url: {problem}", file=sys.stderr)
                return 2
        _install_reactor(args.reactor)
        return _run(lambda reactor: _demo(reactor, args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

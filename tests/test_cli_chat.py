"""The command line as a user runs it (a separate process): --version, python -m,
help texts, bad --base-url, and ``chat`` against the fake LLM server under both reactors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from nous_twisted import __version__
from nous_twisted.testing import FakeLLMServer, Fault, reply_tokens

from .helpers import refused_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "NOUS_HTTP_STREAM_BACKEND")


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in KEYS}
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def run(*args: str, stdin: str | None = None, extra_env: dict[str, str] | None = None,
        module: str = "nous_twisted") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=60, input=stdin if stdin is not None else "",
        env=env(**(extra_env or {})),
    )


def current_reactor() -> str:
    from twisted.internet import reactor

    return "asyncio" if "asyncio" in type(reactor).__module__ else "default"


def run_in_thread(*args: str, **kw: Any) -> Any:
    """Run the command without blocking the reactor serving the fake server."""
    return deferToThread(run, *args, **kw)


REPLY = "".join(reply_tokens(6))


def test_version_both_ways() -> None:
    for module in ("nous_twisted", "nous_twisted.cli"):
        result = run("--version", module=module)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"nous-twisted {__version__}\n"


def test_no_command_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: nous-twisted" in result.stderr


@pytest.mark.parametrize("command", [None, "chat", "demo", "bench"])
def test_every_option_has_help_in_plain_text(command: str | None) -> None:
    result = run(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: nous-twisted")
    # no raw reStructuredText roles or literals
    assert "``" not in out and ":class:" not in out and ":func:" not in out
    # every option line (two-space indent, a dash) is followed by its help on
    # the same line or the next, more indented, line
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^  -", line):
            has_text = re.match(r"^  \S.*?\S {2,}\S", line) is not None
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            assert has_text or re.match(r"^ {4,}\S", nxt), f"no help for {line.strip()!r}"


BAD_URLS = [
    ("api.openai.com/v1", "has no scheme"),
    ("ftp://example.com/v1", "scheme 'ftp'"),
    ("http://user:hunter2@example.com/v1", "user info"),
    ("http://example.com:99999/v1", "outside 1-65535"),
    ("https://exa mple.com/v1", "whitespace"),
]


def check_bad_url_output(command: str, why: str, code: int, out: str, err: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nous-twisted {command}: bad --base-url: ")
    assert why in lines[0]
    assert "Traceback" not in err
    assert "hunter2" not in err and "SECRET" not in err
    assert "/chat/completions" not in err  # the URL given, not one the command made from it


@pytest.mark.parametrize("command", ["chat", "demo"])
@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_a_bad_base_url_is_one_line(command: str, url: str, why: str, capsys: Any, monkeypatch: Any) -> None:
    from nous_twisted.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET")
    code = main([command, "--base-url", url, *(["hello"] if command == "chat" else [])])
    captured = capsys.readouterr()
    check_bad_url_output(command, why, code, captured.out, captured.err)


@pytest.mark.parametrize("command", ["chat", "demo"])
def test_a_bad_base_url_is_one_line_in_a_process(command: str) -> None:
    url, why = BAD_URLS[2]
    result = run(command, "--base-url", url, *(["hello"] if command == "chat" else []),
                 extra_env={"OPENAI_API_KEY": "sk-SECRET"})
    check_bad_url_output(command, why, result.returncode, result.stdout, result.stderr)


def test_chat_without_a_prompt_is_an_error() -> None:
    result = run("chat", "--base-url", "http://127.0.0.1:9/v1", stdin="  \n")
    assert result.returncode == 2
    assert "no prompt" in result.stderr


@pytest.mark.parametrize("args", [["--max-tokens", "0"], ["--timeout", "-1"], ["--api", "cohere"]])
def test_chat_bad_options(args: list[str]) -> None:
    result = run("chat", "--base-url", "http://127.0.0.1:9/v1", *args, "hi")
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_chat_openai_prompt_argument(backend: str) -> None:
    # the command runs under the reactor of this test run: each reactor in its run
    reactor = current_reactor()
    async with FakeLLMServer(reply_tokens=6, api_key="sk-test-SECRET") as server:
        result = await run_in_thread(
            "chat", "--base-url", server.url + "/v1", "--model", "m-1", "--backend", backend,
            "--reactor", reactor, "--system", "be brief", "Hello there",
            extra_env={"OPENAI_API_KEY": "sk-test-SECRET"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == REPLY + "\n"
        assert result.stderr == ""
        (req,) = server.requests
        assert req.path == "/v1/chat/completions"
        assert req.headers["authorization"] == "Bearer sk-test-SECRET"
        assert req.body["model"] == "m-1" and req.body["stream"] is True
        assert req.body["messages"] == [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Hello there"},
        ]


@pytest_twisted.ensureDeferred
async def test_chat_prompt_from_stdin_and_base_url_from_environment() -> None:
    reactor = current_reactor()
    async with FakeLLMServer(reply_tokens=6) as server:
        result = await run_in_thread(
            "chat", "--reactor", reactor, stdin="a prompt\nof two lines\n",
            extra_env={"OPENAI_BASE_URL": server.url + "/v1/"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == REPLY + "\n"
        (req,) = server.requests
        assert req.body["messages"] == [{"role": "user", "content": "a prompt\nof two lines\n"}]
        assert "authorization" not in req.headers  # no key set: none sent
        assert req.body["model"] == "gpt-4o-mini"


@pytest_twisted.ensureDeferred
async def test_chat_anthropic() -> None:
    reactor = current_reactor()
    async with FakeLLMServer(reply_tokens=6, api_key="sk-ant-SECRET") as server:
        result = await run_in_thread(
            "chat", "--api", "anthropic", "--base-url", server.url + "/v1", "--max-tokens", "64",
            "--reactor", reactor, "Bonjour",
            extra_env={"ANTHROPIC_API_KEY": "sk-ant-SECRET", "OPENAI_API_KEY": "sk-wrong"},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == REPLY + "\n"
        (req,) = server.requests
        assert req.path == "/v1/messages"
        assert req.headers["x-api-key"] == "sk-ant-SECRET"
        assert req.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in req.headers
        assert req.body["max_tokens"] == 64 and req.body["model"].startswith("claude")
        assert req.body["messages"] == [{"role": "user", "content": "Bonjour"}]


@pytest_twisted.ensureDeferred
async def test_chat_anthropic_from_the_environment_base_url() -> None:
    async with FakeLLMServer(reply_tokens=6) as server:
        result = await run_in_thread("chat", "hi", extra_env={"ANTHROPIC_BASE_URL": server.url + "/v1"})
        assert result.returncode == 0, result.stderr
        assert result.stdout == REPLY + "\n"
        assert server.requests[0].path == "/v1/messages"


def test_chat_auto_picks_anthropic_by_host() -> None:
    import argparse

    from nous_twisted.cli import chat_request, main  # noqa: F401

    def ns(base: str | None, api: str = "auto") -> argparse.Namespace:
        return argparse.Namespace(base_url=base, api=api, model=None, system=None, max_tokens=5)

    assert chat_request(ns("https://api.anthropic.com/v1"), "x")[:2] == ("anthropic", "https://api.anthropic.com/v1/messages")
    assert chat_request(ns("https://anthropic.example/v1/"), "x")[0] == "anthropic"
    assert chat_request(ns("https://example.com/anthropic/v1"), "x")[0] == "openai"  # the host decides, not the path
    assert chat_request(ns("https://api.openai.com/v1", "anthropic"), "x")[0] == "anthropic"
    assert chat_request(ns("https://api.anthropic.com/v1", "openai"), "x")[:2] == (
        "openai", "https://api.anthropic.com/v1/chat/completions")


@pytest_twisted.ensureDeferred
async def test_chat_http_error_exits_1_with_one_line_and_a_hint() -> None:
    reactor = current_reactor()
    async with FakeLLMServer(api_key="right") as server:
        result = await run_in_thread("chat", "--base-url", server.url + "/v1", "--reactor", reactor, "hi",
                                     extra_env={"OPENAI_API_KEY": "sk-wrong-SECRET"})
        assert result.returncode == 1
        assert result.stdout == ""
        err = result.stderr.strip().splitlines()
        assert len(err) == 1, result.stderr
        assert err[0].startswith("nous-twisted chat: AuthenticationError: HTTP 401")
        assert "OPENAI_API_KEY set and valid" in err[0]
        assert "SECRET" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_chat_provider_error_mid_stream_exits_1_after_the_text_so_far() -> None:
    async with FakeLLMServer(reply_tokens=6) as server:
        server.inject(Fault(error_after_events=2))
        result = await run_in_thread("chat", "--base-url", server.url + "/v1", "hi")
        assert result.returncode == 1
        assert result.stdout.endswith("\n") and result.stdout.strip()
        assert "ProviderError" in result.stderr and "Traceback" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_chat_connection_refused_exits_1() -> None:
    url = (await refused_url("")) + "/v1"
    result = await run_in_thread("chat", "--base-url", url, "--backend", "agent", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith("nous-twisted chat: ConnectError:")
    assert "Traceback" not in result.stderr


@pytest_twisted.ensureDeferred
async def test_chat_idle_timeout_exits_1() -> None:
    async with FakeLLMServer(reply_tokens=6) as server:
        server.inject(Fault(stall_after_events=1))
        result = await run_in_thread("chat", "--base-url", server.url + "/v1", "--timeout", "0.3", "hi")
        assert result.returncode == 1
        assert "RequestTimeout" in result.stderr

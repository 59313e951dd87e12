"""The demo, as a user runs it: a separate process, both reactors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nous_twisted.cli", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


@pytest.mark.parametrize("reactor", ["default", "asyncio"])
def test_demo_against_the_fake_server(reactor: str) -> None:
    result = run("demo", "--reactor", reactor)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Hello from the fake LLM server") == 4  # two posts, two streams
    for backend in ("treq", "agent"):
        assert f"{backend:<8} 200 OK" in out
    assert out.count("done (stop)") == 2
    assert "first token" in out and "tokens/s" in out


def test_demo_base_url_needs_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = run("demo", "--base-url", "http://127.0.0.1:9/v1", env=env)
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr


def test_demo_reports_failure_with_exit_code() -> None:
    env = dict(os.environ, OPENAI_API_KEY="sk-test-SECRET")
    # nothing listens on port 9 of loopback: every call fails, clearly, and the
    # key never shows
    result = run("demo", "--base-url", "http://127.0.0.1:9/v1", env=env)
    assert result.returncode == 1
    assert "ConnectError" in result.stdout
    assert "SECRET" not in result.stdout + result.stderr


def test_plain_asyncio_without_a_reactor_fails_clearly() -> None:
    """Scrapy's reactorless mode: no Twisted reactor to run the calls."""
    code = (
        "import asyncio, nous_twisted\n"
        "async def main():\n"
        "    try:\n"
        "        nous_twisted.post('http://127.0.0.1:9/v1/chat/completions', {})\n"
        "    except RuntimeError as e:\n"
        "        print('refused:', e)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "refused: nous_twisted needs a running Twisted reactor" in result.stdout

"""Every code example in README.md and docs/*.md runs, against FakeLLMServer, under both reactors.

The rules (also in docs/contributing-docs.md, so authors of new pages know them):

- Every ```` ```python ```` block of README.md and of every ``docs/**/*.md`` page is collected,
  pages added later included.  Each runs in its own process, after these substitutions:
  the provider base URLs ``https://api.openai.com``, ``https://api.anthropic.com``,
  ``https://generativelanguage.googleapis.com`` and any ``http://localhost:PORT`` or
  ``http://127.0.0.1:PORT`` become the fake server's URL (it serves the OpenAI, Anthropic,
  Ollama and Gemini paths); ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY`` and ``GEMINI_API_KEY``
  are set to dummies, and ``NOUS_DOCS_BASE_URL`` holds the fake server's URL.
- An unmarked block is a **complete program**: it must run to its end with exit status 0.
  A program that defines coroutines must also run them (``task.react``), else it fails: an
  example that only defines a function would test nothing.
- A block defining ``test_*`` functions is a pytest module: it is run by pytest.
- ``<!-- example: fragment -->`` on the line(s) before a block marks a **fragment**: it runs
  as the body of ``async def main(reactor)``, under ``task.react``, with these names ready:
  everything from ``nous_twisted`` and ``nous_twisted.testing``, ``task``, ``defer``,
  ``BASE`` (the fake server's URL), ``url`` (its chat completions URL), ``headers`` (an
  Authorization header), ``body`` (a small chat request, with ``"stream": true`` when the
  fragment calls ``stream(`` and not ``post(``).  Lines after
  ``fragment`` inside the comment are set-up code run first, in the same scope.
- ``<!-- example: skip REASON -->`` leaves a block out; the reason is required.
- ``<!-- output: nous-twisted ARGS -->`` before a ```` ```text ```` block: the command is run
  and its output must match the block line for line, numbers aside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from nous_twisted.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)])

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
MARKER = re.compile(r"<!--\s*(?P<kind>example|output):(?P<text>.*?)-->", re.S)
PROVIDERS = re.compile(
    r"https://api\.openai\.com|https://api\.anthropic\.com|https://generativelanguage\.googleapis\.com"
    r"|http://localhost:\d+|http://127\.0\.0\.1:\d+"
)
PYTHON = {"python", "py", "python3"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    code: str
    marker: str | None  # "fragment", "skip", "output" or None
    marker_text: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the marker comment just before it."""
    text = page.read_text(encoding="utf-8")
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        i += 1
        # the marker: an HTML comment ending on the last non-blank line before the fence
        before = "\n".join(lines[:start]).rstrip()
        marker, marker_text = None, ""
        if before.endswith("-->"):
            opening = before.rfind("<!--")
            mm = MARKER.fullmatch(before[opening:]) if opening >= 0 else None
            if mm:
                words = mm["text"].strip()
                if mm["kind"] == "output":
                    marker, marker_text = "output", words
                else:
                    first, _, rest = words.partition("\n")
                    kind, _, reason = first.strip().partition(" ")
                    marker = kind
                    marker_text = rest if kind == "fragment" else reason.strip()
        blocks.append(Block(page, start + 1, info.split()[0] if info else "", "\n".join(body) + "\n", marker, marker_text))
    return blocks


ALL = [b for page in PAGES for b in parse(page)]
PY = [b for b in ALL if b.info in PYTHON]
OUTPUTS = [b for b in ALL if b.marker == "output"]

FRAGMENT = '''\
import os
from twisted.internet import defer, task
import nous_twisted
from nous_twisted import *
from nous_twisted.testing import *

BASE = os.environ["NOUS_DOCS_BASE_URL"]
url = BASE + "/v1/chat/completions"
headers = {{"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}}
body = {{"model": "gpt-4o-mini", "stream": {streams}, "messages": [{{"role": "user", "content": "Hi"}}]}}


async def main(reactor):
{setup}
{code}

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''

# Runs a complete program: installs the reactor asked for, notes whether the
# reactor ever ran, and fails a program whose coroutines never ran.
RUNNER = '''\
import ast, os, sys
if os.environ.get("NOUS_DOCS_REACTOR") == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from twisted.internet import reactor
ran = []
reactor.callWhenRunning(ran.append, True)
path = sys.argv[1]
source = open(path, encoding="utf-8").read()
defines_coroutines = any(isinstance(n, ast.AsyncFunctionDef) for n in ast.parse(source).body)
sys.argv = [path]
try:
    exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path})
except SystemExit as e:
    if e.code not in (None, 0):
        raise
if defines_coroutines and not ran:
    sys.exit("this example defines coroutines but never runs them: run them (task.react) or mark the "
             "block <!-- example: fragment -->")
'''


def substitute(code: str, base: str) -> str:
    return PROVIDERS.sub(base, code)


def indent(code: str) -> str:
    return textwrap.indent(code, "    ") if code.strip() else "    pass\n"


def program_for(block: Block, base: str) -> str:
    code = substitute(block.code, base)
    if block.marker == "fragment":
        streams = "stream(" in code and "post(" not in code
        return FRAGMENT.format(setup=indent(textwrap.dedent(block.marker_text)), code=indent(code), streams=streams)
    return code


def child_env(base: str, reactor: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOUS_HTTP", "OPENAI_", "ANTHROPIC_", "GEMINI_"))}
    env.update(
        NOUS_DOCS_BASE_URL=base,
        NOUS_DOCS_REACTOR=reactor,
        OPENAI_API_KEY="sk-docs-test",
        ANTHROPIC_API_KEY="sk-ant-docs-test",
        GEMINI_API_KEY="docs-test",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def current_reactor() -> str:
    from twisted.internet import reactor

    return "asyncio" if "asyncio" in type(reactor).__module__ else "default"


def test_the_pages_have_examples() -> None:
    """The collector sees the examples: a broken parser must not pass by finding nothing."""
    pages = {b.page.name for b in PY}
    assert {"README.md", "quickstart.md", "streaming.md", "testing.md", "cookbook.md"} <= pages
    assert len(PY) >= 20
    assert OUTPUTS, "quickstart's demo output is checked"


def test_every_skip_says_why() -> None:
    for b in ALL:
        if b.marker == "skip":
            assert b.marker_text, f"{b.id}: <!-- example: skip --> needs a reason"
        assert b.marker in (None, "fragment", "skip", "output"), f"{b.id}: unknown marker {b.marker!r}"
        if b.marker == "fragment":
            assert b.info in PYTHON, f"{b.id}: only python blocks can be fragments"


def test_marker_parsing() -> None:
    page = ROOT / "tests" / "_docs_marker_sample.md"
    try:
        page.write_text(
            "```python\nprint(1)\n```\n\n<!-- example: fragment\nx = 1\n-->\n```python\nprint(x)\n```\n"
            "<!-- example: skip needs a GPU -->\n\n````py\n```\n````\n<!-- output: nous-twisted demo -->\n"
            "```text\nhi\n```\n<!-- just a comment -->\n```python\npass\n```\n",
            encoding="utf-8",
        )
        got = [(b.line, b.info, b.code, b.marker, b.marker_text) for b in parse(page)]
    finally:
        page.unlink()
    assert got == [
        (1, "python", "print(1)\n", None, ""),
        (8, "python", "print(x)\n", "fragment", "x = 1"),
        (13, "py", "```\n", "skip", "needs a GPU"),
        (17, "text", "hi\n", "output", "nous-twisted demo"),
        (21, "python", "pass\n", None, ""),
    ]


def test_substitution() -> None:
    code = (
        '"https://api.openai.com/v1/chat/completions" "https://api.anthropic.com/v1/messages" '
        '"http://localhost:11434/api/chat" "http://127.0.0.1:8000/v1" '
        '"https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent?alt=sse"'
    )
    assert substitute(code, "http://F") == (
        '"http://F/v1/chat/completions" "http://F/v1/messages" "http://F/api/chat" "http://F/v1" '
        '"http://F/v1beta/models/g:streamGenerateContent?alt=sse"'
    )


@pytest.mark.parametrize("block", PY, ids=[b.id for b in PY])
@pytest_twisted.ensureDeferred
async def test_example_runs(block: Block, tmp_path: Path) -> None:
    if block.marker == "skip":
        pytest.skip(f"marked skip: {block.marker_text}")
    reactor = current_reactor()
    async with FakeLLMServer(reply_tokens=8) as server:
        program = program_for(block, server.url)
        path = tmp_path / ("test_example.py" if re.search(r"^(async )?def test_", program, re.M) else "example.py")
        path.write_text(program, encoding="utf-8")
        env = child_env(server.url, reactor)
        if path.name.startswith("test_"):
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                   f"--reactor={reactor}", str(path)]
        else:
            cmd = [sys.executable, "-c", RUNNER, str(path)]
        result = await deferToThread(run, cmd, env, tmp_path)
    assert result.returncode == 0, (
        f"{block.id} failed under the {reactor} reactor (exit {result.returncode}):\n"
        f"--- program ---\n{program}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Unhandled error" not in result.stdout + result.stderr, result.stdout + result.stderr


def normalize(text: str) -> list[str]:
    """Lines with every number made N and runs of spaces one: timings and ports vary."""
    out = [re.sub(r" +", " ", re.sub(r"\d+(\.\d+)?", "N", line)).rstrip() for line in text.strip("\n").split("\n")]
    return out


@pytest.mark.parametrize("block", OUTPUTS, ids=[b.id for b in OUTPUTS])
@pytest_twisted.ensureDeferred
async def test_shown_output_is_what_the_command_prints(block: Block, tmp_path: Path) -> None:
    words = block.marker_text.split()
    assert words[0] == "nous-twisted", f"{block.id}: only nous-twisted commands are run"
    reactor = current_reactor()
    cmd = [sys.executable, "-m", "nous_twisted", *words[1:], *(["--reactor", reactor] if reactor != "default" else [])]
    result: Any = await deferToThread(run, cmd, child_env("http://unused", reactor), tmp_path)
    assert result.returncode == 0, result.stderr
    assert normalize(result.stdout) == normalize(block.code), (
        f"{block.id}: the page shows output that `{block.marker_text}` no longer prints; it prints:\n{result.stdout}"
    )


def documented_names(page: str) -> set[str]:
    """The names in the first column of the page's tables, backticks removed."""
    names = set()
    for line in (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([^`]+)`", line)
        if m:
            names.add(m[1])
    return names


def test_configuration_reference_is_complete() -> None:
    """Every parameter and environment variable has a row in docs/configuration.md."""
    import inspect

    import nous_twisted
    from nous_twisted import AgentStreamBackend, PoolSettings, TreqStreamBackend

    documented = documented_names("configuration.md")
    wanted: set[str] = set()
    for fn in (nous_twisted.configure, nous_twisted.post, nous_twisted.stream, PoolSettings,
               TreqStreamBackend, AgentStreamBackend):
        wanted |= {p for p in inspect.signature(fn).parameters if p not in ("self", "request")}
    # the environment variables the package reads
    for path in (ROOT / "nous_twisted").rglob("*.py"):
        if "bench" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        wanted |= set(re.findall(r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""", source))
        wanted |= set(re.findall(r"""env_name\s*=\s*["']([A-Z][A-Z0-9_]+)["']""", source))
    wanted |= {"NOUS_HTTP_BACKEND", "NOUS_HTTP_STREAM_BACKEND"}
    assert {"timeout", "idle_timeout", "SSL_CERT_FILE", "NOUS_TWISTED_NO_SPEEDUPS", "OPENAI_API_KEY"} <= wanted
    missing = sorted(wanted - documented)
    assert not missing, f"docs/configuration.md has no row for: {', '.join(missing)}"


def test_every_page_is_in_the_toctree() -> None:
    """A new page must be linked from index.md (Sphinx -W would fail the docs build anyway)."""
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    toctree = index[index.index("```{toctree}"):]
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert re.search(rf"^{re.escape(page.stem)}$", toctree, re.M), f"{page.name} is not in index.md's toctree"


@pytest.mark.parametrize(
    ("program", "ok", "says"),
    [
        ("async def main(reactor):\n    pass\n", False, "never runs them"),
        ("from twisted.internet import defer, task\nasync def main(reactor):\n    pass\n"
         "task.react(lambda r: defer.ensureDeferred(main(r)))\n", True, ""),
        ("print('no coroutines: nothing to run')\n", True, ""),
        ("raise SystemExit(3)\n", False, ""),
    ],
)
def test_the_runner_fails_what_it_should(program: str, ok: bool, says: str, tmp_path: Path) -> None:
    path = tmp_path / "example.py"
    path.write_text(program, encoding="utf-8")
    result = run([sys.executable, "-c", RUNNER, str(path)], child_env("http://127.0.0.1:9", current_reactor()), tmp_path)
    assert (result.returncode == 0) is ok, result.stderr
    assert says in result.stderr


def test_a_fragment_is_completed_into_a_program() -> None:
    block = Block(ROOT / "README.md", 1, "python", 'reply = await post(url, body, headers)\n', "fragment", "x = 1\n")
    program = program_for(block, "http://F")
    compile(program, "fragment", "exec")
    assert "    x = 1\n" in program and "    reply = await post(url, body, headers)\n" in program
    assert '"stream": False' in program  # post: a non-streaming body
    block.code = "async for e in stream(url, body, headers):\n    pass\n"
    assert '"stream": True' in program_for(block, "http://F")

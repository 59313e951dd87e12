"""Real Scrapy crawls of a loopback HTML site, enriched through FakeLLMServer.

Each test runs ``scrapy crawl`` of the example project (tests/scrapy_project,
the one docs/scrapy.md shows) in a subprocess, under the reactor this test
session runs (``pytest``: the default reactor; ``pytest --reactor=asyncio``:
the asyncio one), while this process serves the pages and the fake LLM.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.web import resource, server

from nous_twisted.testing import FakeLLMServer, Fault, reply_tokens

pytest.importorskip("scrapy", reason="Scrapy is not installed: pip install 'nous-twisted[scrapy]' to run the crawl tests")

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().parent / "scrapy_project"
PAGES = 200


def get_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def asyncio_session() -> bool:
    return type(get_reactor()).__name__ == "AsyncioSelectorReactor"


class _Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        if path == "/":
            links = "".join(f'<li><a class="page" href="/page/{i}">page {i}</a></li>' for i in range(PAGES))
            return f"<html><body><ul>{links}</ul></body></html>".encode()
        n = path.rsplit("/", 1)[-1]
        return (
            f"<html><body><h1>Page {n}</h1><p>Twisted reactors and Scrapy spiders, page {n}.</p>"
            f"<p>Second paragraph.</p></body></html>"
        ).encode()


class Site:
    def __init__(self) -> None:
        site = server.Site(_Page())
        site.log = lambda request: None  # type: ignore[method-assign]
        self.port = get_reactor().listenTCP(0, site, interface="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/"


class Crawl:
    """What a finished ``scrapy crawl`` left: exit code, log, stats, items."""

    def __init__(self, proc: subprocess.CompletedProcess[str], items_file: Path) -> None:
        self.returncode = proc.returncode
        self.log = proc.stdout + proc.stderr
        self.items = [json.loads(line) for line in items_file.read_text().splitlines()] if items_file.exists() else []
        self.stats = parse_stats(self.log)

    def nous(self) -> dict[str, Any]:
        return {k: v for k, v in self.stats.items() if k.startswith("nous/")}


def parse_stats(log: str) -> dict[str, Any]:
    m = re.search(r"Dumping Scrapy stats:\n(\{.*?\})\n(?=\d{4}-\d\d-\d\d |\Z)", log, re.S)
    if m is None:
        return {}
    text = re.sub(r"datetime\.\w+\([^)]*\)", "None", m.group(1))
    stats: dict[str, Any] = ast.literal_eval(text)
    return stats


def scrapy_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOUS_", "SCRAPY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), str(ROOT), env.get("PYTHONPATH", "")])
    env["OPENAI_API_KEY"] = "sk-test"
    env.update(extra or {})
    return env


def reactor_setting() -> str:
    # Scrapy's default is the asyncio reactor; an empty value installs Twisted's default one.
    return "twisted.internet.asyncioreactor.AsyncioSelectorReactor" if asyncio_session() else ""


async def crawl(
    tmp_path: Path, settings: dict[str, Any], *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Crawl:
    items = tmp_path / "items.jsonl"
    cmd = [sys.executable, "-m", "scrapy", "crawl", "pages", "-O", str(items), *args]
    every = {"LOG_LEVEL": "INFO", "TWISTED_REACTOR": reactor_setting(), "TELNETCONSOLE_ENABLED": "False", **settings}
    for name, value in every.items():
        cmd += ["-s", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    proc = await deferToThread(
        subprocess.run, cmd, cwd=PROJECT, env=scrapy_env(env), capture_output=True, text=True, timeout=100
    )
    return Crawl(proc, items)


def assert_clean(result: Crawl) -> None:
    assert result.returncode == 0, result.log[-3000:]
    assert "Unhandled error in Deferred" not in result.log, result.log[-3000:]
    assert "Traceback" not in result.log, result.log[-3000:]
    assert "Spider closed (finished)" in result.log, result.log[-3000:]


ONLY_LABELS = json.dumps({"llm_enrich.pipelines.LabelPipeline": 300})
ONLY_SUMMARIES = json.dumps({"llm_enrich.pipelines.SummaryPipeline": 400})


def faults(server: FakeLLMServer) -> None:
    server.inject(Fault(status=429, retry_after=0.1, times=5))
    server.inject(Fault(status=500, times=3))
    server.inject(Fault(stall_before_headers=True, times=2))


@pytest_twisted.ensureDeferred
async def test_post_pipeline_enriches_every_item_through_faults(tmp_path: Path) -> None:
    site = Site()
    async with FakeLLMServer() as llm:
        faults(llm)
        result = await crawl(tmp_path, {
            "NOUS_BASE_URL": llm.url + "/v1", "ITEM_PIPELINES": ONLY_LABELS, "NOUS_TIMEOUT": "1.5",
        }, args=("-a", f"start_url={site.url}"))
    await site.port.stopListening()
    assert_clean(result)
    assert len(result.items) == PAGES
    failed = [i for i in result.items if "nous_error" in i]
    assert len(failed) == 2
    assert {f["nous_error"]["type"] for f in failed} == {"RequestTimeout"}
    labelled = [i for i in result.items if "label" in i]
    assert len(labelled) == PAGES - 2
    assert all(i["label"] == "".join(reply_tokens(5)) for i in labelled)
    # Each reply's own x-request-id, through Reply.request_id.
    assert len({i["request_id"] for i in labelled}) == PAGES - 2
    assert all(i["request_id"].startswith("req_") for i in labelled)
    assert result.nous() == {
        "nous/request_count": PAGES,
        "nous/response_count": PAGES - 2 + 8,
        "nous/response_status_count/200": PAGES - 2,
        "nous/response_status_count/429": 5,
        "nous/response_status_count/500": 3,
        "nous/retry/count": 8,
        "nous/retry/reason_count/HTTP 429": 5,
        "nous/retry/reason_count/HTTP 500": 3,
        "nous/exception_count": 2,
        "nous/exception_type_count/RequestTimeout": 2,
        "nous/usage/prompt_tokens": 8 * (PAGES - 2),
        "nous/usage/completion_tokens": 5 * (PAGES - 2),
        **pool_stats_expected(result),
    }
    assert result.stats["item_scraped_count"] == PAGES
    # Scrapy sends Twisted's log to the logger "twisted" at ERROR, where the
    # retry lines would vanish: they arrive under the library's name, once each.
    assert result.log.count("[nous_twisted] INFO: retrying POST") == 8
    assert "[twisted]" not in result.log
    assert "Starting factory" not in result.log


def pool_stats_expected(result: Crawl) -> dict[str, Any]:
    """The pool keys, when this version of the library reports them."""
    import nous_twisted

    if not hasattr(nous_twisted, "pool_stats"):
        return {}
    opened = result.stats.get("nous/pool/max_open")
    assert isinstance(opened, int) and 1 <= opened <= 8
    return {"nous/pool/max_open": opened, "nous/pool/max_waiting": result.stats.get("nous/pool/max_waiting")}


@pytest_twisted.ensureDeferred
async def test_stream_pipeline_enriches_every_item_through_faults(tmp_path: Path) -> None:
    site = Site()
    async with FakeLLMServer() as llm:
        faults(llm)
        result = await crawl(tmp_path, {
            "NOUS_BASE_URL": llm.url + "/v1", "ITEM_PIPELINES": ONLY_SUMMARIES, "NOUS_TIMEOUT": "1.5",
        }, args=("-a", f"start_url={site.url}"))
    await site.port.stopListening()
    assert_clean(result)
    assert len(result.items) == PAGES
    failed = [i for i in result.items if "nous_error" in i]
    assert len(failed) == 2
    assert {f["nous_error"]["type"] for f in failed} == {"RequestTimeout"}
    summarised = [i for i in result.items if "summary" in i]
    assert len(summarised) == PAGES - 2
    assert {i["summary"] for i in summarised} == {"".join(reply_tokens(12))}
    nous = result.nous()
    assert {k: v for k, v in nous.items() if not k.startswith("nous/pool/")} == {
        "nous/request_count": PAGES,
        "nous/response_count": PAGES - 2 + 8,
        "nous/response_status_count/200": PAGES - 2,
        "nous/response_status_count/429": 5,
        "nous/response_status_count/500": 3,
        "nous/retry/count": 8,
        "nous/retry/reason_count/HTTP 429": 5,
        "nous/retry/reason_count/HTTP 500": 3,
        "nous/exception_count": 2,
        "nous/exception_type_count/RequestTimeout": 2,
        # 12 tokens, the finish chunk and the usage chunk (include_usage).
        "nous/stream/event_count": 14 * (PAGES - 2),
        "nous/stream/terminal_count/stop": PAGES - 2,
        "nous/stream/terminal_count/RequestTimeout": 2,
        "nous/usage/prompt_tokens": 8 * (PAGES - 2),
        "nous/usage/completion_tokens": 12 * (PAGES - 2),
    }


@pytest_twisted.ensureDeferred
async def test_reactorless_crawl_is_refused_once_at_start(tmp_path: Path) -> None:
    site = Site()
    result = await crawl(tmp_path, {"TWISTED_REACTOR_ENABLED": "False", "TWISTED_REACTOR": None},
                         args=("-a", f"start_url={site.url}"))
    await site.port.stopListening()
    assert result.returncode != 0
    # Once: the add-on refuses the crawl before any item (asyncio prints the
    # error's repr and then its traceback, whose last line is the message).
    assert result.log.count("NousScrapyError: nous_twisted needs a Twisted reactor") == 1, result.log[-3000:]
    assert result.items == []
    assert "Error processing" not in result.log


@pytest_twisted.ensureDeferred
async def test_pool_limit_with_slow_calls_no_timeouts_and_bounded_waiting(tmp_path: Path) -> None:
    site = Site()
    # 5 tokens 20 ms apart: 0.1 s a call, 200 calls over 8 connections.  The
    # wait for a connection is not part of NOUS_TIMEOUT: none may time out.
    async with FakeLLMServer(token_delay=0.02) as llm:
        llm.inject(Fault(status=429, retry_after=0.1, times=1))
        result = await crawl(tmp_path, {
            "NOUS_BASE_URL": llm.url + "/v1", "ITEM_PIPELINES": ONLY_LABELS, "NOUS_MAX_CONNECTIONS": 8,
            "NOUS_TIMEOUT": "2", "NOUS_RETRY_TIMES": 1, "NOUS_LOG_LEVEL": "WARNING",
        }, args=("-a", f"start_url={site.url}"))
        most_open = llm.max_open_connections
    await site.port.stopListening()
    assert_clean(result)
    assert len(result.items) == PAGES
    assert all("label" in i and "nous_error" not in i for i in result.items)
    assert "nous/exception_count" not in result.stats
    assert result.stats["nous/response_status_count/200"] == PAGES
    assert 1 <= most_open <= 8
    # NOUS_LOG_LEVEL = "WARNING": the retry's INFO line is not shown.
    assert result.stats["nous/retry/count"] == 1
    assert "[nous_twisted] INFO" not in result.log
    import nous_twisted

    if hasattr(nous_twisted, "pool_stats"):
        assert 1 <= result.stats["nous/pool/max_open"] <= 8
        # SCRAPER_SLOT_MAX_ACTIVE_SIZE = 64 KiB counts each small page as
        # 1 KiB: about 64 pages' items, plus the downloads under way
        # (CONCURRENT_REQUESTS, 16), are in the pipeline at once.
        assert result.stats["nous/pool/max_waiting"] <= 64 + 16


@pytest_twisted.ensureDeferred
async def test_close_reports_calls_in_flight_and_aborts_them_after_close_timeout(tmp_path: Path) -> None:
    site = Site()
    async with FakeLLMServer() as llm:
        llm.inject(Fault(stall_before_headers=True, times=None))
        result = await crawl(tmp_path, {
            "NOUS_BASE_URL": llm.url + "/v1", "ITEM_PIPELINES": ONLY_LABELS, "NOUS_TIMEOUT": "120",
            "NOUS_CLOSE_TIMEOUT": "1", "CLOSESPIDER_TIMEOUT": "2",
        }, args=("-a", f"start_url={site.url}"))
    await site.port.stopListening()
    assert result.returncode == 0, result.log[-3000:]
    assert "Unhandled error in Deferred" not in result.log
    assert "Traceback" not in result.log, result.log[-3000:]
    assert "Spider closed (closespider_timeout)" in result.log
    m = re.search(r"closing: (\d+) LLM call\(s\) still in flight, the longest may take (\d+\.\d) s more; "
                  r"aborting those left in 1 s \(NOUS_CLOSE_TIMEOUT\)", result.log)
    assert m is not None, result.log[-3000:]
    in_flight = int(m.group(1))
    assert 115 <= float(m.group(2)) <= 120
    assert f"NOUS_CLOSE_TIMEOUT (1 s) passed: aborted {in_flight} LLM call(s)" in result.log
    assert result.stats["nous/close_aborted_count"] == in_flight
    # Every item whose call was cut short went on, the error recorded.
    assert len(result.items) == in_flight
    assert {i["nous_error"]["type"] for i in result.items} == {"CancelledError"}


@pytest_twisted.ensureDeferred
async def test_a_stalled_call_at_the_end_is_explained_in_the_log(tmp_path: Path) -> None:
    site = Site()
    async with FakeLLMServer() as llm:
        llm.inject(Fault(stall_before_headers=True, times=1))
        result = await crawl(tmp_path, {
            # Long enough that, on a loaded machine, the downloads end before the
            # stalled call's timeout does: the message is about that wait.
            "NOUS_BASE_URL": llm.url + "/v1", "ITEM_PIPELINES": ONLY_LABELS, "NOUS_TIMEOUT": "10",
        }, args=("-a", f"start_url={site.url}"))
    await site.port.stopListening()
    assert_clean(result)
    # Logged once, at the first look after the downloads end (1 s): the
    # stalled call, and on a busy machine some calls still under way.
    m = re.search(r"downloads are done; waiting for (\d+) LLM call\(s\) in item pipelines, "
                  r"the longest for up to (\d+\.\d) s more \(NOUS_TIMEOUT\)", result.log)
    assert m is not None, result.log[-3000:]
    assert int(m.group(1)) >= 1
    assert 0 <= float(m.group(2)) <= 10
    assert result.log.count("downloads are done") == 1
    assert [i["nous_error"]["type"] for i in result.items if "nous_error" in i] == ["RequestTimeout"]
    assert len(result.items) == PAGES


TWO_CRAWLS = '''
import sys
from scrapy.crawler import {runner}, Crawler
from scrapy.utils.project import get_project_settings
from llm_enrich.spiders.pages import PagesSpider

settings = get_project_settings()
settings.setdict({{"LOG_LEVEL": "INFO", "TWISTED_REACTOR": {reactor!r}, "TELNETCONSOLE_ENABLED": False,
                  "NOUS_BASE_URL": {base!r}, "NOUS_HTTP_BACKEND": "treq"}}, priority="cmdline")
process = {runner}(settings)
for most in (4, 6):
    one = settings.copy()
    one.set("NOUS_MAX_CONNECTIONS", most, priority="cmdline")
    # CrawlerProcess installs the reactor with its first crawler.
    process.crawl(Crawler(PagesSpider, one, init_reactor=most == 4), start_url={start!r})
process.start()
'''


@pytest_twisted.ensureDeferred
async def test_two_crawls_in_one_process_and_an_environment_override_are_logged(tmp_path: Path) -> None:
    """Two crawls of the example project as it is, in one process."""
    site = Site()
    runner = "AsyncCrawlerProcess" if asyncio_session() else "CrawlerProcess"
    async with FakeLLMServer() as llm:
        script = tmp_path / "two.py"
        script.write_text(TWO_CRAWLS.format(
            runner=runner, reactor=reactor_setting(), base=llm.url + "/v1", start=site.url,
        ))
        proc = await deferToThread(
            subprocess.run, [sys.executable, str(script)], cwd=PROJECT, capture_output=True, text=True, timeout=100,
            env=scrapy_env({"NOUS_HTTP_BACKEND": "agent"}),
        )
    await site.port.stopListening()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Unhandled error in Deferred" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("Spider closed (finished)") == 2
    # The project as it is: both pipelines, a post and a stream per item.
    assert log.count("'item_scraped_count': 200") == 2
    assert "nous_error" not in log and "ERROR" not in log, log[-3000:]
    assert log.count(
        "[nous_twisted] WARNING: NOUS_MAX_CONNECTIONS differs between crawls in this process: 4 (spider 'pages') "
        "and 6 (spider 'pages')"
    ) == 1, log[-3000:]
    assert log.count(
        "[nous_twisted] INFO: the environment variable NOUS_HTTP_BACKEND='agent' overrides the crawl setting "
        "NOUS_HTTP_BACKEND='treq'"
    ) == 2

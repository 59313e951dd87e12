"""The Scrapy integration's parts, in this process: settings, the client's
record of calls in flight, the pipeline's error modes, stats from events,
and the example project as docs/scrapy.md shows it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import CancelledError

import nous_twisted
from nous_twisted import PoolSettings, RetryPolicy
from nous_twisted import settings as settings_module
from nous_twisted.testing import FakeLLMServer, Fault, reply_tokens

pytest.importorskip("scrapy", reason="Scrapy is not installed: pip install 'nous-twisted[scrapy]' to run these tests")

from scrapy import Spider  # noqa: E402
from scrapy.exceptions import DropItem  # noqa: E402
from scrapy.settings import Settings  # noqa: E402
from scrapy.utils.test import get_crawler  # noqa: E402

from nous_twisted.scrapy import (  # noqa: E402
    DEFAULTS,
    LLMPipeline,
    NousAddon,
    NousClient,
    NousExtension,
    NousScrapyError,
    client_options,
    pool_settings,
    retry_policy,
)

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path(__file__).resolve().parent / "scrapy_project"


@pytest.fixture(autouse=True)
def no_crawl_left() -> Any:
    yield
    # Extensions made here never see their engine stop.
    NousExtension.running.clear()
    logging.getLogger("nous_twisted").setLevel(logging.NOTSET)


def get_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# -- settings ------------------------------------------------------------------------


def test_defaults_are_the_librarys() -> None:
    s = Settings()
    assert pool_settings(s) == PoolSettings()
    assert retry_policy(s) is None
    options = client_options(s)
    assert options == {
        "base_url": None, "headers": {}, "timeout": 180.0, "connect_timeout": 30.0, "pool_timeout": None,
        "retries": None,
    }
    assert DEFAULTS["NOUS_RETRY_HTTP_CODES"] == list(RetryPolicy().statuses)
    assert DEFAULTS["NOUS_POOL_IDLE_TIMEOUT"] == PoolSettings().timeout / 1000


def test_settings_from_the_command_line_are_strings() -> None:
    # scrapy crawl -s NAME=VALUE gives strings: each is read as its type.
    s = Settings({
        "NOUS_MAX_CONNECTIONS": "8", "NOUS_POOL_IDLE_TIMEOUT": "0.5", "NOUS_RETRY_TIMES": "2",
        "NOUS_RETRY_HTTP_CODES": "429,503", "NOUS_RETRY_MAX_DELAY": "3", "NOUS_TIMEOUT": "20",
        "NOUS_POOL_TIMEOUT": "5", "NOUS_HEADERS": '{"Authorization": "Bearer k"}', "NOUS_BASE_URL": "http://h/v1",
    })
    assert pool_settings(s) == PoolSettings(max_connections=8, timeout=500)
    assert retry_policy(s) == RetryPolicy(max_retries=2, statuses=(429, 503), max_delay=3.0)
    options = client_options(s)
    assert options["headers"] == {"Authorization": "Bearer k"}
    assert options["timeout"] == 20.0 and options["pool_timeout"] == 5.0 and options["base_url"] == "http://h/v1"
    assert options["retries"] == RetryPolicy(max_retries=2, statuses=(429, 503), max_delay=3.0)


def test_retry_codes_as_a_list_of_ints() -> None:
    policy = retry_policy(Settings({"NOUS_RETRY_TIMES": 1, "NOUS_RETRY_HTTP_CODES": [500]}))
    assert policy is not None and policy.statuses == (500,) and policy.max_retries == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOUS_TIMEOUT", "soon"),
        ("NOUS_TIMEOUT", 0),
        ("NOUS_CONNECT_TIMEOUT", -1),
        ("NOUS_POOL_IDLE_TIMEOUT", "inf"),
        ("NOUS_MAX_CONNECTIONS", 0),
        ("NOUS_MAX_CONNECTIONS", "many"),
        ("NOUS_RETRY_TIMES", -1),
    ],
)
def test_a_bad_value_names_its_setting(name: str, value: Any) -> None:
    s = Settings({name: value, "NOUS_RETRY_TIMES": 1} if name != "NOUS_RETRY_TIMES" else {name: value})
    with pytest.raises(NousScrapyError, match=name):
        pool_settings(s)
        client_options(s)


def test_bad_retry_codes() -> None:
    with pytest.raises(NousScrapyError, match="NOUS_RETRY_HTTP_CODES"):
        retry_policy(Settings({"NOUS_RETRY_TIMES": 1, "NOUS_RETRY_HTTP_CODES": "429,soon"}))


def test_on_error_must_be_known() -> None:
    with pytest.raises(NousScrapyError, match="NOUS_ON_ERROR must be one of 'keep', 'drop' or 'raise', not 'ignore'"):
        LLMPipeline(NousClient(), "ignore")


# -- the pipeline --------------------------------------------------------------------


class Label(LLMPipeline):
    def build_request(self, item: dict[str, Any]) -> tuple[str, Any] | None:
        if item.get("skip"):
            return None
        return "/chat/completions", {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}

    def handle_reply(self, item: dict[str, Any], reply: Any) -> dict[str, Any]:
        item["label"] = reply.value["choices"][0]["message"]["content"]
        item["attempts"] = reply.attempts
        return item


class Summary(Label):
    stream = True

    def build_request(self, item: dict[str, Any]) -> tuple[str, Any] | None:
        request = super().build_request(item)
        return None if request is None else (request[0], {**request[1], "stream": True})

    def handle_reply(self, item: dict[str, Any], events: Any) -> dict[str, Any]:
        item["summary"] = "".join(c["delta"].get("content", "") for e in events for c in e.get("choices", ()))
        return item


@pytest_twisted.ensureDeferred
async def test_pipeline_post_and_stream() -> None:
    async with FakeLLMServer() as llm:
        client = NousClient(llm.url + "/v1")
        item = await Label(client).process_item({"n": 1})
        assert item == {"n": 1, "label": "".join(reply_tokens(3)), "attempts": 1}
        item = await Summary(client).process_item({"n": 2})
        assert item == {"n": 2, "summary": "".join(reply_tokens(3))}
        skipped = await Label(client).process_item({"skip": True})
        assert skipped == {"skip": True}
        assert len(llm.requests) == 2


@pytest_twisted.ensureDeferred
async def test_pipeline_error_modes() -> None:
    async with FakeLLMServer() as llm:
        client = NousClient(llm.url + "/v1")
        llm.inject(Fault(status=400, times=3))
        kept = await Label(client, "keep").process_item({"n": 1})
        assert kept == {"n": 1, "nous_error": {
            "type": "BadRequestError", "message": kept["nous_error"]["message"], "status": 400, "attempts": 1,
        }}
        assert "400" in kept["nous_error"]["message"]
        with pytest.raises(DropItem, match="LLM call failed: BadRequestError"):
            await Label(client, "drop").process_item({"n": 2})
        with pytest.raises(nous_twisted.BadRequestError):
            await Label(client, "raise").process_item({"n": 3})
        # A stream's error ends the same way.
        llm.inject(Fault(status=500, times=1))
        kept = await Summary(client, "keep").process_item({"n": 4})
        assert kept["nous_error"]["type"] == "InternalServerError" and "summary" not in kept


# -- calls in flight and the abort ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_records_calls_in_flight_and_aborts_them() -> None:
    from nous_twisted.scrapy import _Calls

    reactor = get_reactor()
    calls = _Calls(reactor.seconds)
    async with FakeLLMServer() as llm:
        llm.inject(Fault(stall_before_headers=True, times=2))
        client = NousClient(llm.url + "/v1", calls=calls, timeout=50)
        assert client.with_options(timeout=40)._calls is calls
        d = client.post("/chat/completions", {"model": "m", "messages": []})
        s = client.with_options(timeout=40).stream("/chat/completions", {"model": "m", "stream": True})
        assert calls.count() == 2
        assert 49 < calls.longest_remaining() <= 50
        while len(llm.requests) < 2:  # both stalled at the server
            await task.deferLater(reactor, 0.05)
        assert calls.abort() == 2
        with pytest.raises(CancelledError):
            await d
        events = [e async for e in s]
        assert events == [nous_twisted.StreamDone("cancelled")]
        assert calls.count() == 0 and calls.longest_remaining() == 0.0
        # Once aborting (the close timeout passed), a new call is cut at once.
        with pytest.raises(CancelledError):
            await client.post("/chat/completions", {"model": "m", "messages": []})
        ok = NousClient(llm.url + "/v1", calls=None, timeout=10)
        assert (await ok.post("/chat/completions", {"model": "m", "messages": []}))["object"] == "chat.completion"


# -- the extension -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extension_counts_calls_into_stats_and_configures() -> None:
    async with FakeLLMServer() as llm:
        crawler = get_crawler(Spider, {
            "ADDONS": {"nous_twisted.scrapy.NousAddon": 300}, "NOUS_BASE_URL": llm.url + "/v1",
            "NOUS_RETRY_TIMES": 1, "NOUS_MAX_CONNECTIONS": 3, "NOUS_POOL_IDLE_TIMEOUT": 1,
        })
        ext = crawler.get_extension(NousExtension)
        assert ext is not None
        assert settings_module.current().pool == PoolSettings(max_connections=3, timeout=1000)
        ext.spider_opened()
        try:
            client = NousClient.from_crawler(crawler)
            assert client._calls is ext.calls
            llm.inject(Fault(status=429, retry_after=0.01, times=1))
            reply = await client.post("/chat/completions", {"model": "m", "messages": []}, full_response=True)
            assert reply.attempts == 2
            llm.inject(Fault(status=429, retry_after=0.01, times=1))
            with pytest.raises(nous_twisted.RateLimitError):
                await client.post("/chat/completions", {"model": "m", "messages": []}, retries=0)
            llm.inject(Fault(status=429, retry_after=0.01, times=2))
            with pytest.raises(nous_twisted.RateLimitError):
                await client.post("/chat/completions", {"model": "m", "messages": []})
            events = [e async for e in client.stream("/chat/completions", {"model": "m", "stream": True})]
            assert isinstance(events[-1], nous_twisted.StreamDone)
        finally:
            ext.engine_stopped()
        stats = {k: v for k, v in crawler.stats.get_stats().items() if k.startswith("nous/")}
        assert {k: v for k, v in stats.items() if not k.startswith("nous/pool/")} == {
            "nous/request_count": 4,
            "nous/response_count": 6,
            "nous/response_status_count/200": 2,
            "nous/response_status_count/429": 4,
            "nous/retry/count": 2,
            "nous/retry/reason_count/HTTP 429": 2,
            "nous/retry/max_reached": 1,
            "nous/usage/prompt_tokens": 8,
            "nous/usage/completion_tokens": 12,
            "nous/stream/event_count": 13,
            "nous/stream/terminal_count/stop": 1,
        }


# -- the docs show the project the tests crawl ---------------------------------------


def test_docs_show_the_example_project_verbatim() -> None:
    page = (ROOT / "docs" / "scrapy.md").read_text()
    blocks = re.findall(r"```(?:python|ini)\n# (\S+)\n(.*?)```", page, re.S)
    shown = {name: code for name, code in blocks}
    files = sorted(
        str(p.relative_to(PROJECT)) for p in PROJECT.rglob("*") if p.is_file() and p.suffix in (".py", ".cfg")
        and p.stat().st_size > 0 and "__pycache__" not in p.parts and p.name != "__init__.py"
    )
    assert files == sorted(shown), "docs/scrapy.md must show every file of tests/scrapy_project"
    for name in files:
        assert (PROJECT / name).read_text() == shown[name], f"docs/scrapy.md shows another {name}"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("NOUS_LOG_LEVEL", "LOUD", "NOUS_LOG_LEVEL must be a logging level"),
        ("NOUS_ON_ERROR", "ignore", "NOUS_ON_ERROR must be one of 'keep', 'drop' or 'raise', not 'ignore'"),
        ("NOUS_POOL_TIMEOUT", "-1", "NOUS_POOL_TIMEOUT must be a positive"),
        ("NOUS_HTTP_BACKEND", "nosuch", "nosuch"),
    ],
)
def test_a_bad_setting_stops_the_crawl_at_start(name: str, value: str, message: str) -> None:
    # get_crawler() applies the settings, as a crawl does at start.
    with pytest.raises((NousScrapyError, nous_twisted.BackendConfigError), match=re.escape(message)):
        get_crawler(Spider, {"ADDONS": {"nous_twisted.scrapy.NousAddon": 300}, name: value})


def test_the_add_on_refuses_a_crawl_without_reactor() -> None:
    with pytest.raises(NousScrapyError, match="nous_twisted needs a Twisted reactor, and this crawl sets "
                                              "TWISTED_REACTOR_ENABLED = False"):
        NousAddon().update_settings(Settings({"TWISTED_REACTOR_ENABLED": False}))
    settings = Settings()
    NousAddon().update_settings(settings)
    assert settings.getdict("EXTENSIONS") == {NousExtension: 0}
    # Also when EXTENSIONS came from the command line, as a JSON string.
    settings = Settings({"EXTENSIONS": '{"scrapy.extensions.logstats.LogStats": 10}'})
    NousAddon().update_settings(settings)
    assert settings.getdict("EXTENSIONS") == {"scrapy.extensions.logstats.LogStats": 10, NousExtension: 0}


def test_log_level_setting() -> None:
    get_crawler(Spider, {"ADDONS": {"nous_twisted.scrapy.NousAddon": 300}, "NOUS_LOG_LEVEL": "warning"})
    assert logging.getLogger("nous_twisted").level == logging.WARNING
    get_crawler(Spider, {"ADDONS": {"nous_twisted.scrapy.NousAddon": 300}})
    assert logging.getLogger("nous_twisted").level == logging.NOTSET

"""Scrapy, first class: an add-on, ``NOUS_*`` settings, stats, logs and a pipeline base.

Enable it in a project's settings::

    ADDONS = {"nous_twisted.scrapy.NousAddon": 300}
    NOUS_BASE_URL = "https://api.openai.com/v1"
    NOUS_HEADERS = {"Authorization": "Bearer ..."}

- :class:`NousAddon` registers :class:`NousExtension`, and refuses a crawl
  without a Twisted reactor (``TWISTED_REACTOR_ENABLED = False``) once, at
  start: every call of this library runs on the reactor.
- :class:`NousExtension` applies the crawl's settings (``configure()``),
  counts every call into the crawl's stats (``nous/...``, through
  :func:`~nous_twisted.observe`), sends the library's log lines to the Python
  logger ``nous_twisted`` (so ``LOG_LEVEL`` applies to them), and explains,
  bounds and if asked cuts short the wait for calls still running when the
  spider closes.
- :meth:`NousClient.from_crawler` is the :class:`~nous_twisted.Client` for
  pipelines and spiders, built from the settings; the extension sees its calls.
- :class:`LLMPipeline` is an optional base: write ``build_request(item)`` and
  ``handle_reply(item, reply)``.

An integration is a user: this module imports only names that
``nous_twisted`` exports, and nothing in the library imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import DropItem
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogLevel, STDLibLogObserver, globalLogPublisher
from zope.interface import provider

import nous_twisted
from nous_twisted import (
    CallEvent,
    Client,
    EventStream,
    NousHTTPError,
    PoolSettings,
    RetryPolicy,
    StreamDone,
    StreamError,
    configure,
    observe,
)

logger = logging.getLogger("nous_twisted")

#: Every setting the integration reads, with its default (the library's).
DEFAULTS: dict[str, Any] = {
    "NOUS_HTTP_BACKEND": None,
    "NOUS_HTTP_STREAM_BACKEND": None,
    "NOUS_BASE_URL": None,
    "NOUS_HEADERS": {},
    "NOUS_MAX_CONNECTIONS": PoolSettings().max_connections,
    "NOUS_POOL_IDLE_TIMEOUT": PoolSettings().timeout / 1000.0,
    "NOUS_CA_BUNDLE": None,
    "NOUS_TIMEOUT": 180.0,
    "NOUS_CONNECT_TIMEOUT": 30.0,
    "NOUS_POOL_TIMEOUT": None,
    "NOUS_RETRY_TIMES": 0,
    "NOUS_RETRY_HTTP_CODES": list(RetryPolicy().statuses),
    "NOUS_RETRY_MAX_DELAY": RetryPolicy().max_delay,
    "NOUS_CLOSE_TIMEOUT": None,
    "NOUS_LOG_LEVEL": None,
    "NOUS_ON_ERROR": "keep",
}

#: Settings that configure the process (one pool per reactor), not one crawl.
PROCESS_WIDE = (
    "NOUS_HTTP_BACKEND", "NOUS_HTTP_STREAM_BACKEND", "NOUS_MAX_CONNECTIONS", "NOUS_POOL_IDLE_TIMEOUT",
    "NOUS_CA_BUNDLE", "NOUS_RETRY_TIMES", "NOUS_RETRY_HTTP_CODES", "NOUS_RETRY_MAX_DELAY",
)

#: Environment variables the library reads on every call, over ``configure()``.
ENVIRONMENT = ("NOUS_HTTP_BACKEND", "NOUS_HTTP_STREAM_BACKEND")

#: How often the extension looks at a closing crawl, in seconds.
WATCH_INTERVAL = 1.0

ON_ERROR = ("keep", "drop", "raise")


class NousScrapyError(RuntimeError):
    """The crawl cannot use nous_twisted as configured (raised at start)."""


# -- settings ----------------------------------------------------------------------


def _get(settings: Any, name: str) -> Any:
    value = settings.get(name)
    return DEFAULTS[name] if value is None else value


def _number(settings: Any, name: str, *, optional: bool = False) -> float | None:
    value = settings.get(name)
    if value is None or value == "":
        if optional:
            return None
        value = DEFAULTS[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NousScrapyError(f"{name} must be a number of seconds, not {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise NousScrapyError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    return number


def _int(settings: Any, name: str, minimum: int) -> int:
    value = _get(settings, name)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NousScrapyError(f"{name} must be an int, not {value!r}") from None
    if number < minimum:
        raise NousScrapyError(f"{name} must be {minimum} or more, not {number}")
    return number


def retry_policy(settings: Any) -> RetryPolicy | None:
    """The retry policy the settings describe (None: no retries)."""
    times = _int(settings, "NOUS_RETRY_TIMES", 0)
    if times == 0:
        return None
    codes = settings.getlist("NOUS_RETRY_HTTP_CODES") if settings.get("NOUS_RETRY_HTTP_CODES") is not None else None
    try:
        statuses = tuple(int(c) for c in codes) if codes is not None else RetryPolicy().statuses
    except (TypeError, ValueError):
        raise NousScrapyError(f"NOUS_RETRY_HTTP_CODES must be a list of ints, not {codes!r}") from None
    max_delay = _number(settings, "NOUS_RETRY_MAX_DELAY")
    assert max_delay is not None
    return RetryPolicy(max_retries=times, statuses=statuses, max_delay=max_delay)


def pool_settings(settings: Any) -> PoolSettings:
    """The pool the settings describe (``NOUS_POOL_IDLE_TIMEOUT`` is in seconds)."""
    idle = _number(settings, "NOUS_POOL_IDLE_TIMEOUT")
    assert idle is not None
    return PoolSettings(max_connections=_int(settings, "NOUS_MAX_CONNECTIONS", 1), timeout=max(1, round(idle * 1000)))


def _process_values(settings: Any) -> dict[str, Any]:
    return {name: _get(settings, name) for name in PROCESS_WIDE}


# -- logs --------------------------------------------------------------------------

_bridge_installed = False
_FACTORY_NOISE = ("Starting factory", "Stopping factory")


def _ours(event: Mapping[str, Any]) -> bool:
    return str(event.get("log_namespace", "")).startswith("nous_twisted")


class _NotTwice(logging.Filter):
    """Keeps the library's events off Scrapy's ``twisted`` logger: they go
    to ``nous_twisted`` instead, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record.msg, "event", None)
        return not (isinstance(event, Mapping) and _ours(event))


def install_log_bridge() -> None:
    """Send the library's Twisted log events to the Python logger
    ``nous_twisted`` (once per process).

    Scrapy sends all of Twisted's log to the Python logger ``twisted`` at
    ERROR, where the library's warnings would vanish; under their own name,
    ``LOG_LEVEL`` (and ``NOUS_LOG_LEVEL``) applies to them.
    """
    global _bridge_installed
    if _bridge_installed:
        return
    _bridge_installed = True
    forward = STDLibLogObserver(name="nous_twisted")

    @provider(ILogObserver)
    def bridge(event: Any) -> None:
        if _ours(event):
            if str(event.get("log_format", "")).startswith(_FACTORY_NOISE):
                # Twisted's factories say this once per connection: not news in a crawl log.
                event = {**event, "log_level": LogLevel.debug}
            forward(event)

    globalLogPublisher.addObserver(bridge)
    logging.getLogger("twisted").addFilter(_NotTwice())


# -- calls in flight ---------------------------------------------------------------


class _Calls:
    """The calls a crawl's :class:`NousClient` made that have not ended, so
    the close can say what it waits for, and abort them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._posts: dict[Deferred[Any], float] = {}  # -> the time its timeout runs out
        self._streams: weakref.WeakKeyDictionary[EventStream, float] = weakref.WeakKeyDictionary()
        self.aborting = False

    def post(self, d: Deferred[Any], timeout: float) -> Deferred[Any]:
        if d.called:
            return d
        self._posts[d] = self._clock() + timeout

        def ended(result: Any) -> Any:
            self._posts.pop(d, None)
            return result

        d.addBoth(ended)
        if self.aborting:
            d.cancel()
        return d

    def stream(self, s: EventStream, timeout: float) -> EventStream:
        self._streams[s] = timeout
        if self.aborting:
            s.cancel()
        return s

    def count(self) -> int:
        return len(self._posts) + sum(1 for s in list(self._streams) if not s.done)

    def longest_remaining(self) -> float:
        """Seconds until the last of them times out: a post's whole-response
        timeout, a stream's idle timeout (which restarts at each event)."""
        now = self._clock()
        # A post's timeout starts once it has a connection, so one that waited
        # for the pool may run past the deadline counted from its start.
        waits = [max(deadline - now, 0.0) for deadline in self._posts.values()]
        waits += [timeout for s, timeout in list(self._streams.items()) if not s.done]
        return max(waits, default=0.0)

    def abort(self) -> int:
        self.aborting = True
        posts = list(self._posts)
        streams = [s for s in list(self._streams) if not s.done]
        for d in posts:
            d.cancel()
        for s in streams:
            s.cancel()
        return len(posts) + len(streams)


# -- the add-on and the extension --------------------------------------------------


class NousAddon:
    """``ADDONS = {"nous_twisted.scrapy.NousAddon": 300}``: registers
    :class:`NousExtension`; refuses a crawl without a Twisted reactor."""

    def update_settings(self, settings: Any) -> None:
        """Scrapy's add-on hook: refuse reactorless mode, register the extension."""
        if not settings.getbool("TWISTED_REACTOR_ENABLED", True):
            raise NousScrapyError(
                "nous_twisted needs a Twisted reactor, and this crawl sets TWISTED_REACTOR_ENABLED = False. "
                "Remove that setting (the asyncio reactor, Scrapy's default, works), or remove "
                "'nous_twisted.scrapy.NousAddon' from ADDONS."
            )
        add = getattr(settings, "setdefault_in_component_priority_dict", None)
        if add is not None:
            add("EXTENSIONS", NousExtension, 0)
        else:  # pragma: no cover - Scrapy before the component-dict helpers
            settings["EXTENSIONS"]["nous_twisted.scrapy.NousExtension"] = 0


class NousExtension:
    """Settings to ``configure()``, calls to stats, library logs to the
    ``nous_twisted`` logger, and a watched close.  Registered by
    :class:`NousAddon`; one per crawler."""

    #: the extensions of the crawlers running in this process
    running: weakref.WeakSet[NousExtension] = weakref.WeakSet()

    def __init__(self, crawler: Any) -> None:
        if not crawler.settings.getbool("TWISTED_REACTOR_ENABLED", True):
            raise NousScrapyError(
                "nous_twisted needs a Twisted reactor, and this crawl sets TWISTED_REACTOR_ENABLED = False."
            )
        from twisted.internet import reactor

        self.crawler = crawler
        self.reactor: Any = reactor
        self.name = getattr(crawler.spidercls, "name", None) or crawler.spidercls.__name__
        settings = crawler.settings
        self.stats = crawler.stats
        self.policy = retry_policy(settings)
        self.close_timeout = _number(settings, "NOUS_CLOSE_TIMEOUT", optional=True)
        self.values = _process_values(settings)
        # A bad value stops the crawl here, at start, naming the setting, not
        # at the first item of a pipeline built later.
        client_options(settings)
        on_error = _get(settings, "NOUS_ON_ERROR")
        if on_error not in ON_ERROR:
            raise NousScrapyError(f"NOUS_ON_ERROR must be one of 'keep', 'drop' or 'raise', not {on_error!r}")
        self.calls = _Calls(reactor.seconds)
        self._unsubscribe: Callable[[], None] | None = None
        self._watch: LoopingCall | None = None
        self._waiting_logged = False
        self._closing_since: float | None = None
        self._abort_timer: Any = None
        self._apply(settings)

    @classmethod
    def from_crawler(cls, crawler: Any) -> NousExtension:
        """Scrapy's constructor: check and apply the settings, connect the signals."""
        ext = cls(crawler)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    # -- settings ----------------------------------------------------------------

    def _apply(self, settings: Any) -> None:
        level = settings.get("NOUS_LOG_LEVEL")
        if level:
            name = str(level).upper()
            if not isinstance(logging.getLevelName(name), int):
                raise NousScrapyError(
                    f"NOUS_LOG_LEVEL must be a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL), not {level!r}"
                )
            logger.setLevel(name)
        else:
            logger.setLevel(logging.NOTSET)  # LOG_LEVEL decides, through Scrapy's handler
        install_log_bridge()
        for name in ENVIRONMENT:
            env = os.environ.get(name)
            if env:
                crawl = settings.get(name)
                if crawl is not None and crawl != env:
                    logger.info(
                        "the environment variable %s=%r overrides the crawl setting %s=%r "
                        "(precedence: a per-call argument, then the environment, then the crawl's settings)",
                        name, env, name, crawl,
                    )
                elif crawl is None:
                    logger.info("the environment variable %s=%r applies (the crawl does not set %s)", name, env, name)
        for other in list(NousExtension.running):
            if other is self:
                continue
            for name in PROCESS_WIDE:
                mine, theirs = self.values[name], other.values[name]
                if mine != theirs:
                    logger.warning(
                        "%s differs between crawls in this process: %r (spider %r) and %r (spider %r); "
                        "the pool and these settings are per process, so the later one, %r, now applies to both",
                        name, theirs, other.name, mine, self.name, mine,
                    )
        NousExtension.running.add(self)
        configure(
            http_backend=settings.get("NOUS_HTTP_BACKEND"),
            http_stream_backend=settings.get("NOUS_HTTP_STREAM_BACKEND"),
            pool=pool_settings(settings),
            ca_bundle=settings.get("NOUS_CA_BUNDLE"),
            retries=self.policy,
        )

    # -- stats -------------------------------------------------------------------

    def count(self, event: CallEvent) -> None:
        """One :class:`~nous_twisted.CallEvent` into the crawl's stats."""
        stats = self.stats
        kind = event.kind
        if kind == "start":
            stats.inc_value("nous/request_count")
        elif kind == "response":
            stats.inc_value("nous/response_count")
            stats.inc_value(f"nous/response_status_count/{event.status}")
            self._usage(event.usage)
        elif kind == "failure":
            if event.phase != "status":
                stats.inc_value("nous/exception_count")
                stats.inc_value(f"nous/exception_type_count/{event.error_type}")
            policy = self.policy
            if policy is not None and event.attempt == policy.max_retries + 1:
                stats.inc_value("nous/retry/max_reached")
        elif kind == "retry":
            stats.inc_value("nous/retry/count")
            stats.inc_value(f"nous/retry/reason_count/{event.reason}")
        elif kind == "stream_end":
            stats.inc_value("nous/stream/event_count", event.events or 0)
            stats.inc_value(f"nous/stream/terminal_count/{event.reason}")
            self._usage(event.usage)

    def _usage(self, usage: Mapping[str, int] | None) -> None:
        if usage:
            for name in ("prompt_tokens", "completion_tokens"):
                if name in usage:
                    self.stats.inc_value(f"nous/usage/{name}", usage[name])

    def _pool(self) -> None:
        stats_of = getattr(nous_twisted, "pool_stats", None)
        if stats_of is None:
            return
        for host in _hosts(stats_of()):
            for ours, theirs in (("max_open", "max_open"), ("max_waiting", "max_waiting")):
                value = _field(host, theirs)
                if isinstance(value, int):
                    self.stats.max_value(f"nous/pool/{ours}", value)

    # -- life --------------------------------------------------------------------

    def spider_opened(self, spider: Any = None) -> None:
        """Start counting calls and watching for the close."""
        self._unsubscribe = observe(self.count)
        self._watch = LoopingCall(self._look)
        self._watch.clock = self.reactor
        self._watch.start(WATCH_INTERVAL, now=False)

    def _look(self) -> None:
        self._pool()
        if self.calls.count() == 0:
            return
        try:
            engine = self.crawler.engine
        except RuntimeError:  # not started yet
            return
        slot = getattr(engine, "_slot", None) or getattr(engine, "slot", None)
        if slot is not None and getattr(slot, "closing", None) is not None:
            self._closing()
        elif not self._waiting_logged and _only_items_left(engine):
            self._waiting_logged = True
            logger.info(
                "downloads are done; waiting for %d LLM call(s) in item pipelines, the longest for up to %.1f s more "
                "(NOUS_TIMEOUT)",
                self.calls.count(), self.calls.longest_remaining(),
            )

    def _closing(self) -> None:
        if self._closing_since is not None:
            return
        self._closing_since = self.reactor.seconds()
        n, longest = self.calls.count(), self.calls.longest_remaining()
        if self.close_timeout is None:
            logger.info(
                "closing: %d LLM call(s) still in flight, the longest may take %.1f s more (NOUS_TIMEOUT); "
                "set NOUS_CLOSE_TIMEOUT to abort them sooner",
                n, longest,
            )
            return
        logger.info(
            "closing: %d LLM call(s) still in flight, the longest may take %.1f s more; "
            "aborting those left in %g s (NOUS_CLOSE_TIMEOUT)",
            n, longest, self.close_timeout,
        )
        self._abort_timer = self.reactor.callLater(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        aborted = self.calls.abort()
        if aborted:
            logger.warning("NOUS_CLOSE_TIMEOUT (%g s) passed: aborted %d LLM call(s)", self.close_timeout, aborted)
            self.stats.inc_value("nous/close_aborted_count", aborted)

    def spider_closed(self, spider: Any = None, reason: str = "") -> None:
        """Record the pool's numbers; warn about calls nobody awaited."""
        self._pool()
        left = self.calls.count()
        if left:
            logger.warning(
                "spider closed with %d LLM call(s) still in flight (not awaited by a pipeline?), "
                "the longest may take %.1f s more",
                left, self.calls.longest_remaining(),
            )
        self._stop()

    def engine_stopped(self) -> None:
        """Stop counting; this crawl no longer shares the process's settings."""
        self._stop()
        NousExtension.running.discard(self)

    def _stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        self._abort_timer = None


def _only_items_left(engine: Any) -> bool:
    """Nothing left to download or schedule: only item pipelines work."""
    try:
        if engine.downloader.active or getattr(engine, "_start", None) is not None:
            return False
        scheduler = getattr(engine, "_slot", None) and engine._slot.scheduler
        return scheduler is not None and not scheduler.has_pending_requests()
    except AttributeError:  # another Scrapy's insides: say nothing
        return False


def _hosts(stats: Any) -> list[Any]:
    if isinstance(stats, Mapping):
        return list(stats.values())
    if isinstance(stats, (list, tuple)):
        return list(stats)
    return []


def _field(host: Any, name: str) -> Any:
    if isinstance(host, Mapping):
        return host.get(name)
    return getattr(host, name, None)


# -- the client --------------------------------------------------------------------


def client_options(settings: Any) -> dict[str, Any]:
    """The :class:`~nous_twisted.Client` arguments the settings describe."""
    headers = settings.getdict("NOUS_HEADERS") if settings.get("NOUS_HEADERS") else {}
    return dict(
        base_url=settings.get("NOUS_BASE_URL") or None,
        headers=headers,
        timeout=_number(settings, "NOUS_TIMEOUT"),
        connect_timeout=_number(settings, "NOUS_CONNECT_TIMEOUT"),
        pool_timeout=_number(settings, "NOUS_POOL_TIMEOUT", optional=True),
        retries=retry_policy(settings),
    )


class NousClient(Client):
    """A :class:`~nous_twisted.Client` built from a crawl's settings
    (``NOUS_BASE_URL``, ``NOUS_HEADERS``, the timeouts and retries); the
    crawl's :class:`NousExtension` sees its calls, so the close can report and
    abort them.  Make it with :meth:`from_crawler`."""

    __slots__ = ("_calls", "_options")

    def __init__(self, *args: Any, calls: _Calls | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        names = ("base_url", "headers")
        self._options = {**dict(zip(names, args, strict=False)), **options}
        self._calls = calls

    @classmethod
    def from_crawler(cls, crawler: Any) -> NousClient:
        """The client the crawl's settings describe, its calls seen by the
        crawl's :class:`NousExtension` (when the add-on is enabled)."""
        ext = crawler.get_extension(NousExtension) if hasattr(crawler, "get_extension") else None
        return cls(**client_options(crawler.settings), calls=ext.calls if ext is not None else None)

    @property
    def aborting(self) -> bool:
        """True once the crawl's close has aborted the calls in flight
        (``NOUS_CLOSE_TIMEOUT``): calls made from then on are aborted at once."""
        return self._calls is not None and self._calls.aborting

    def with_options(self, **changes: Any) -> NousClient:
        """A new client with ``changes``, its calls still seen by the crawl."""
        return NousClient(**{**self._options, **changes}, calls=self._calls)

    def post(self, url: str, body: Any, headers: Any = (), **options: Any) -> Deferred[Any]:
        d: Deferred[Any] = super().post(url, body, headers, **options)
        if self._calls is not None:
            self._calls.post(d, options.get("timeout", self.timeout))
        return d

    def get(self, url: str, headers: Any = (), **options: Any) -> Deferred[Any]:
        d: Deferred[Any] = super().get(url, headers, **options)
        if self._calls is not None:
            self._calls.post(d, options.get("timeout", self.timeout))
        return d

    def stream(self, url: str, body: Any, headers: Any = (), **options: Any) -> EventStream:
        s = super().stream(url, body, headers, **options)
        if self._calls is not None:
            self._calls.stream(s, options.get("timeout", self.timeout))
        return s


# -- the pipeline ------------------------------------------------------------------


class LLMPipeline:
    """A base for item pipelines that make one LLM call per item.

    Subclasses write :meth:`build_request` and :meth:`handle_reply`; set
    ``stream = True`` to call :meth:`NousClient.stream` instead of ``post``.
    ``NOUS_ON_ERROR`` says what a failed call does to its item: ``"keep"``
    (the default: the item goes on, with the error in :attr:`error_field`),
    ``"drop"`` (``DropItem``) or ``"raise"`` (the error goes to Scrapy).
    """

    #: the item field where ``NOUS_ON_ERROR = "keep"`` records a failed call
    error_field = "nous_error"
    #: True: ``handle_reply`` receives the stream's data events, in a list
    stream = False

    def __init__(self, client: Client, on_error: str = "keep") -> None:
        if on_error not in ON_ERROR:
            raise NousScrapyError(f"NOUS_ON_ERROR must be one of 'keep', 'drop' or 'raise', not {on_error!r}")
        self.client = client
        self.on_error = on_error

    @classmethod
    def from_crawler(cls, crawler: Any) -> LLMPipeline:
        """The pipeline with the crawl's :class:`NousClient` and ``NOUS_ON_ERROR``."""
        return cls(NousClient.from_crawler(crawler), str(_get(crawler.settings, "NOUS_ON_ERROR")))

    def build_request(self, item: Any) -> tuple[str, Any] | None:
        """The path (or URL) and JSON body of the item's call; None skips it."""
        raise NotImplementedError(f"{type(self).__name__} must define build_request(item)")

    def handle_reply(self, item: Any, reply: Any) -> Any:
        """Put the reply into the item and return it.  ``reply`` is a
        :class:`~nous_twisted.Reply` (post) or the list of data events (stream)."""
        raise NotImplementedError(f"{type(self).__name__} must define handle_reply(item, reply)")

    async def process_item(self, item: Any, spider: Any = None) -> Any:
        """Make the item's call and hand the reply to :meth:`handle_reply`;
        a failed call does what ``NOUS_ON_ERROR`` says."""
        request = self.build_request(item)
        if request is None:
            return item
        url, body = request
        try:
            reply = await self._call(url, body)
        except (NousHTTPError, CancelledError) as error:
            return self._failed(item, error)
        except asyncio.CancelledError:
            # Under the asyncio reactor a cancelled Deferred raises asyncio's
            # CancelledError in the task.  When the close aborted the call,
            # it is the call that failed, not the task: the item goes on.
            if not (isinstance(self.client, NousClient) and self.client.aborting):
                raise
            return self._failed(item, CancelledError())
        return self.handle_reply(item, reply)

    async def _call(self, url: str, body: Any) -> Any:
        if not self.stream:
            return await self.client.post(url, body, full_response=True)
        events: list[Any] = []
        async for event in self.client.stream(url, body):
            if isinstance(event, StreamError):
                raise event.error
            if isinstance(event, StreamDone):
                if event.reason == "cancelled":
                    raise CancelledError()
                break
            events.append(event)
        return events

    def _failed(self, item: Any, error: BaseException) -> Any:
        if self.on_error == "raise":
            raise error
        described = describe_error(error)
        if self.on_error == "drop":
            raise DropItem(f"LLM call failed: {described['type']}: {described['message']}")
        ItemAdapter(item)[self.error_field] = described
        return item


def describe_error(error: BaseException) -> dict[str, Any]:
    """What ``NOUS_ON_ERROR = "keep"`` records: ``type``, ``message``,
    ``status`` (HTTP errors, else None) and ``attempts``."""
    return {
        "type": type(error).__name__,
        "message": str(error) or (
            "the call was aborted (NOUS_CLOSE_TIMEOUT passed while the spider closed)"
            if isinstance(error, CancelledError) else ""
        ),
        "status": getattr(error, "status", None),
        "attempts": getattr(error, "attempts", None),
    }


__all__ = ["DEFAULTS", "LLMPipeline", "NousAddon", "NousClient", "NousExtension", "NousScrapyError"]

"""PoolSettings.idle_timeout (seconds) and its millisecond alias timeout; the UNSET sentinel."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import pydoc

import pytest
import pytest_twisted

import nous_twisted
from nous_twisted import PoolSettings, post
from nous_twisted.settings import UNSET
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .helpers import wait_for

CHAT = {"model": "m", "messages": []}


def test_defaults_are_two_seconds_both_ways() -> None:
    p = PoolSettings()
    assert (p.max_connections, p.idle_timeout, p.timeout) == (50, 2.0, 2000)


@pytest.mark.parametrize(
    ("kwargs", "seconds", "ms"),
    [
        ({"idle_timeout": 1.5}, 1.5, 1500),
        ({"idle_timeout": 3}, 3.0, 3000),
        ({"timeout": 250}, 0.25, 250),
        ({"timeout": 1}, 0.001, 1),
        ({"idle_timeout": 0.0001}, 0.0001, 1),  # the ms alias never reads 0
        ({"idle_timeout": 0.0015}, 0.0015, 2),
        ({"idle_timeout": 2.0, "timeout": 2000}, 2.0, 2000),  # both, agreeing
    ],
)
def test_seconds_and_milliseconds_describe_one_limit(kwargs: dict[str, float], seconds: float, ms: int) -> None:
    p = PoolSettings(**kwargs)  # type: ignore[arg-type]
    assert p.idle_timeout == seconds
    assert isinstance(p.idle_timeout, float)
    assert p.timeout == ms
    assert isinstance(p.timeout, int)


def test_the_two_names_compare_equal_and_survive_replace_copy_pickle() -> None:
    a, b = PoolSettings(idle_timeout=0.75), PoolSettings(timeout=750)
    assert a == b and hash(a) == hash(b)
    assert PoolSettings(idle_timeout=0.75) != PoolSettings(idle_timeout=0.8)
    assert dataclasses.replace(a, max_connections=3) == PoolSettings(3, idle_timeout=0.75)
    # a sub-millisecond limit rounds in the alias, yet replace() still accepts its own output
    odd = PoolSettings(idle_timeout=0.0015)
    assert dataclasses.replace(odd, max_connections=2).idle_timeout == 0.0015
    assert copy.copy(a) == a and pickle.loads(pickle.dumps(a)) == a
    assert repr(a) == "PoolSettings(max_connections=50, idle_timeout=0.75)"


def test_both_given_and_disagreeing_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as e:
        PoolSettings(idle_timeout=1, timeout=2)
    msg = str(e.value)
    assert "idle_timeout=1 (seconds)" in msg and "timeout=2 (milliseconds)" in msg and "pass only one" in msg


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"idle_timeout": 0}, ValueError, "idle_timeout (seconds) must be positive, not 0"),
        ({"idle_timeout": -1.0}, ValueError, "idle_timeout (seconds) must be positive"),
        ({"idle_timeout": float("nan")}, ValueError, "idle_timeout (seconds) must be positive"),
        ({"idle_timeout": float("inf")}, ValueError, "finite"),
        ({"idle_timeout": "1"}, TypeError, "idle_timeout must be a positive number, not str"),
        ({"idle_timeout": True}, TypeError, "idle_timeout must be a positive number, not bool"),
        ({"timeout": 0}, ValueError, "timeout (milliseconds) must be positive, not 0"),
        ({"timeout": 1.5}, TypeError, "timeout must be a positive int, not float"),
        ({"max_connections": 0}, ValueError, "max_connections must be positive"),
        ({"max_connections": 2.0}, TypeError, "max_connections must be a positive int"),
    ],
)
def test_bad_values(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error) as e:
        PoolSettings(**kwargs)  # type: ignore[arg-type]
    assert text in str(e.value)
    assert "PoolSettings." in str(e.value)


def test_idle_timeout_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        PoolSettings(5, 100, 0.1)  # type: ignore[misc]


def test_unset_says_what_it_means_in_help() -> None:
    text = pydoc.render_doc(nous_twisted.configure, renderer=pydoc.plaintext)
    assert "object object at" not in text
    assert "<unset: keep the current value>" in text
    assert type(UNSET)() is UNSET
    assert copy.deepcopy(UNSET) is UNSET and pickle.loads(pickle.dumps(UNSET)) is UNSET


@pytest_twisted.ensureDeferred
async def test_idle_timeout_in_seconds_closes_the_cached_connection() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=0.15))
    async with FakeLLMServer() as server:
        await post(server.chat_url, CHAT)
        assert server.open_connections == 1
        assert get_shared().pool.idle_connections() == 1
        await wait_for(lambda: server.open_connections == 0, timeout=2.0)
        await post(server.chat_url, CHAT)
        assert server.connections_made == 2


@pytest_twisted.ensureDeferred
async def test_a_long_idle_timeout_keeps_the_connection() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=30))
    async with FakeLLMServer() as server:
        await post(server.chat_url, CHAT)
        await post(server.chat_url, CHAT)
        assert server.connections_made == 1
        assert get_shared().pool.idle_connections() == 1
